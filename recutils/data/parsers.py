"""Parsers for each dataset's original file format.

Every parser returns plain pandas tables with the same columns, whatever the source:

* interactions: ``user`` (str), ``item`` (str), ``rating`` (float), ``timestamp`` (int, s)
* items: ``item`` (str), ``title`` (str), ``year`` (Int64, may be <NA>), ``genres``
  (list of str), ``description`` (str, may be ""), ``brand`` (str, may be "")

Item tables may list items that never occur in the interactions and vice versa; the
preprocessing step reconciles them.
"""

from __future__ import annotations

import ast
import gzip
import html
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

INTERACTION_COLUMNS = ["user", "item", "rating", "timestamp"]
ITEM_COLUMNS = ["item", "title", "year", "genres", "description", "brand"]

# The 19 genre flags of ml-100k's u.item, in file order.
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]

_YEAR_IN_TITLE = re.compile(r"\s*\((\d{4})\)\s*$")


def _items_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=ITEM_COLUMNS)
    df["item"] = df["item"].astype(str)
    df["title"] = df["title"].fillna("").astype(str)
    df["year"] = pd.array(df["year"], dtype="Int64")
    df["description"] = df["description"].fillna("").astype(str)
    df["brand"] = df["brand"].fillna("").astype(str)
    return df.reset_index(drop=True)


def _interactions_frame(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "user": df["user"].astype(str),
        "item": df["item"].astype(str),
        "rating": df["rating"].astype(float),
        "timestamp": df["timestamp"].astype("int64"),
    })
    return out.reset_index(drop=True)


def _lines(path: str | Path, encoding: str = "latin-1") -> Iterator[str]:
    """Non-empty lines of a text file, without their line ending (GroupLens files are latin-1)."""
    with open(path, encoding=encoding) as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                yield line


def split_title_year(title: str) -> tuple[str, int | None]:
    """'Toy Story (1995)' -> ('Toy Story', 1995); titles without a year are kept whole."""
    m = _YEAR_IN_TITLE.search(title)
    if not m:
        return title.strip(), None
    return title[: m.start()].strip(), int(m.group(1))


# --- MovieLens-100k ------------------------------------------------------------------------

def parse_ml100k_udata(path: str | Path) -> pd.DataFrame:
    """GroupLens ``u.data``: tab-separated ``user item rating timestamp``, no header."""
    df = pd.read_csv(path, sep="\t", header=None, names=INTERACTION_COLUMNS, dtype=str)
    return _interactions_frame(df)


def parse_ml100k_uitem(path: str | Path) -> pd.DataFrame:
    """GroupLens ``u.item``: ``|``-separated latin-1, 5 fields then 19 genre flags."""
    rows = []
    for line in _lines(path):
        parts = line.split("|")
        if len(parts) != 5 + len(ML100K_GENRES):
            raise ValueError(f"{path}: expected 24 '|'-separated fields, got {len(parts)}: {line!r}")
        title, year = split_title_year(parts[1])
        if year is None and parts[2][-4:].isdigit():
            year = int(parts[2][-4:])  # release date like 01-Jan-1995
        genres = [g for g, flag in zip(ML100K_GENRES, parts[5:]) if flag == "1"]
        rows.append({"item": parts[0], "title": title, "year": year, "genres": genres,
                     "description": "", "brand": ""})
    return _items_frame(rows)


def read_recbole_atomic(path: str | Path) -> pd.DataFrame:
    """A RecBole atomic file (``.inter``, ``.item``): tab-separated, headers like ``user_id:token``.

    The ``:type`` suffix of every header is stripped; all values are read as strings.
    """
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    df.columns = [c.split(":", 1)[0] for c in df.columns]
    return df


def parse_recbole_ml100k(inter_path: str | Path, item_path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MovieLens-100k as shipped in the recbole wheel (``ml-100k.inter`` / ``ml-100k.item``)."""
    inter = read_recbole_atomic(inter_path).rename(columns={"user_id": "user", "item_id": "item"})
    inter = _interactions_frame(inter.astype({"timestamp": float}))
    raw = read_recbole_atomic(item_path)
    rows = []
    for r in raw.itertuples(index=False):
        year = int(r.release_year) if r.release_year.isdigit() else None
        # Genres are space-separated tokens; "Children's" and "Film-Noir" stay whole.
        rows.append({"item": r.item_id, "title": r.movie_title, "year": year,
                     "genres": r[3].split() if len(r) > 3 else [], "description": "", "brand": ""})
    return inter, _items_frame(rows)


# --- MovieLens-1M --------------------------------------------------------------------------

def parse_ml1m_ratings(path: str | Path) -> pd.DataFrame:
    """GroupLens ml-1m ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``."""
    df = pd.DataFrame([line.split("::") for line in _lines(path)], columns=INTERACTION_COLUMNS)
    return _interactions_frame(df)


def parse_ml1m_movies(path: str | Path) -> pd.DataFrame:
    """GroupLens ml-1m ``movies.dat``: ``MovieID::Title (Year)::Genre|Genre``, latin-1."""
    rows = []
    for line in _lines(path):
        item, title, genres = line.split("::")
        title, year = split_title_year(title)
        rows.append({"item": item, "title": title, "year": year,
                     "genres": genres.split("|") if genres else [], "description": "", "brand": ""})
    return _items_frame(rows)


# --- Amazon reviews (2014 and 2018 releases) -------------------------------------------------

def _open_text(path: str | Path) -> io.TextIOBase:
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _parsed_lines(path: str | Path, parse, errors: tuple[type[Exception], ...], what: str) -> Iterator:
    """``parse`` applied to every non-empty line; a bad line is reported with its number."""
    with _open_text(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield parse(line)
            except errors as e:
                raise ValueError(f"{path}, line {n}: not {what} ({e})") from e


def _json_lines(path: str | Path) -> Iterator[dict]:
    return _parsed_lines(path, json.loads, (json.JSONDecodeError,), "valid JSON")


def parse_amazon_reviews(path: str | Path) -> pd.DataFrame:
    """Amazon 5-core review file (2014 ``reviews_X_5.json.gz`` or 2018 ``X_5.json.gz``): JSON lines."""
    rows = [
        (r["reviewerID"], r["asin"], float(r.get("overall", 0.0)), int(r["unixReviewTime"]))
        for r in _json_lines(path)
    ]
    return _interactions_frame(pd.DataFrame(rows, columns=INTERACTION_COLUMNS))


def _clean_text(value) -> str:
    """Join list-valued fields, unescape HTML entities, drop tags and squeeze whitespace."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    text = html.unescape(str(value))
    text = re.sub(r"<[^>]+>", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _amazon_item(record: dict, categories: list[str]) -> dict:
    return {
        "item": record["asin"],
        "title": _clean_text(record.get("title")),
        "year": None,
        "genres": categories,
        "description": _clean_text(record.get("description")),
        "brand": _clean_text(record.get("brand")),
    }


def parse_amazon2014_meta(path: str | Path) -> pd.DataFrame:
    """Amazon 2014 ``meta_X.json.gz``: one Python dict literal per line (``ast.literal_eval``).

    ``categories`` is a list of category paths; the first path, minus its root (the
    department name every item shares), becomes ``genres``.
    """
    rows = []
    # ast.literal_eval reads literals only: a line holding code is an error, never executed
    for rec in _parsed_lines(path, ast.literal_eval, (ValueError, SyntaxError), "a Python literal"):
        cats = rec.get("categories") or [[]]
        path0 = [_clean_text(c) for c in cats[0]]
        rows.append(_amazon_item(rec, path0[1:] if len(path0) > 1 else path0))
    return _items_frame(rows)


def parse_amazon2018_meta(path: str | Path) -> pd.DataFrame:
    """Amazon 2018 ``meta_X.json.gz``: JSON lines; missing fields become empty values.

    ``category`` is one category path; its root is dropped as for 2014. Titles often
    carry HTML entities (``&amp;``) and sometimes markup, which are cleaned.
    """
    rows = []
    for rec in _json_lines(path):
        cats = [_clean_text(c) for c in (rec.get("category") or [])]
        rows.append(_amazon_item(rec, cats[1:] if len(cats) > 1 else cats))
    items = _items_frame(rows)
    # The 2018 dumps contain duplicate asins; keep the first complete record.
    return items.drop_duplicates("item", keep="first").reset_index(drop=True)
