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
from collections.abc import Callable, Iterator
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


class ParseError(ValueError):
    """A line of a dataset file is not in the file's format; the message names file and line."""


def _interactions_frame(rows: list[tuple]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=INTERACTION_COLUMNS)
    return pd.DataFrame({
        "user": df["user"].astype(str),
        "item": df["item"].astype(str),
        "rating": df["rating"].astype(float),
        "timestamp": df["timestamp"].astype("int64"),
    })


def _open_text(path: str | Path, encoding: str = "utf-8") -> io.TextIOBase:
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding)
    return open(path, encoding=encoding)


def _records(path: str | Path, parse: Callable[[str], object], what: str,
             encoding: str = "utf-8", skip: int = 0) -> Iterator:
    """``parse(line)`` for every non-blank line after the first ``skip`` lines.

    Any error in ``parse`` (a wrong field count, a number that is not one, a missing key)
    becomes a :class:`ParseError` naming the file, the line number and what was expected.
    """
    with _open_text(path, encoding) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if n <= skip or not line.strip():
                continue
            try:
                yield parse(line)
            except (ValueError, SyntaxError, KeyError, TypeError, AttributeError) as e:
                detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
                raise ParseError(f"{path}, line {n}: not {what} ({detail}): {line[:120]!r}") from e


def _fields(line: str, sep: str, n: int) -> list[str]:
    parts = line.split(sep)
    if len(parts) != n:
        raise ValueError(f"expected {n} {sep!r}-separated fields, got {len(parts)}")
    if not all(p.strip() for p in parts[:2]):
        raise ValueError("empty user or item id")
    return parts


def _interaction(line: str, sep: str) -> tuple[str, str, float, int]:
    user, item, rating, ts = _fields(line, sep, 4)
    return user.strip(), item.strip(), float(rating), int(float(ts))


def split_title_year(title: str) -> tuple[str, int | None]:
    """'Toy Story (1995)' -> ('Toy Story', 1995); titles without a year are kept whole."""
    m = _YEAR_IN_TITLE.search(title)
    if not m:
        return title.strip(), None
    return title[: m.start()].strip(), int(m.group(1))


# --- MovieLens-100k ------------------------------------------------------------------------

def parse_ml100k_udata(path: str | Path) -> pd.DataFrame:
    """GroupLens ``u.data``: tab-separated ``user item rating timestamp``, no header."""
    rows = _records(path, lambda line: _interaction(line, "\t"),
                    "a tab-separated 'user item rating timestamp' line", encoding="latin-1")
    return _interactions_frame(list(rows))


def _ml100k_item(line: str) -> dict:
    parts = line.split("|")
    if len(parts) != 5 + len(ML100K_GENRES):
        raise ValueError(f"expected {5 + len(ML100K_GENRES)} '|'-separated fields, got {len(parts)}")
    title, year = split_title_year(parts[1])
    if year is None and parts[2][-4:].isdigit():
        year = int(parts[2][-4:])  # release date like 01-Jan-1995
    genres = [g for g, flag in zip(ML100K_GENRES, parts[5:]) if flag == "1"]
    return {"item": parts[0], "title": title, "year": year, "genres": genres,
            "description": "", "brand": ""}


def parse_ml100k_uitem(path: str | Path) -> pd.DataFrame:
    """GroupLens ``u.item``: ``|``-separated latin-1, 5 fields then 19 genre flags."""
    return _items_frame(list(_records(path, _ml100k_item, "a u.item line", encoding="latin-1")))


def read_recbole_atomic(path: str | Path) -> pd.DataFrame:
    """A RecBole atomic file (``.inter``, ``.item``): tab-separated, headers like ``user_id:token``.

    The ``:type`` suffix of every header is stripped; all values are read as strings (no
    quote processing). A row with the wrong number of fields is a :class:`ParseError`.
    """
    with _open_text(path) as f:
        header = f.readline().rstrip("\r\n").split("\t")
    columns = [c.split(":", 1)[0] for c in header]
    rows = _records(path, lambda line: _fields(line, "\t", len(columns)),
                    f"a row of {len(columns)} tab-separated fields", skip=1)
    return pd.DataFrame(list(rows), columns=columns, dtype=str)


def _require(df: pd.DataFrame, path: str | Path, columns: list[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ParseError(f"{path}: no column {missing} in the header (have {list(df.columns)})")


def parse_recbole_ml100k(inter_path: str | Path, item_path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MovieLens-100k as shipped in the recbole wheel (``ml-100k.inter`` / ``ml-100k.item``)."""
    inter = read_recbole_atomic(inter_path)
    _require(inter, inter_path, ["user_id", "item_id", "rating", "timestamp"])
    rows = []
    for n, r in enumerate(inter.itertuples(index=False), 2):
        try:
            rows.append((r.user_id, r.item_id, float(r.rating), int(float(r.timestamp))))
        except ValueError as e:
            raise ParseError(f"{inter_path}, line {n}: rating or timestamp is not a number ({e})") from e
    raw = read_recbole_atomic(item_path)
    _require(raw, item_path, ["item_id", "movie_title", "release_year"])
    genres = raw["class"] if "class" in raw.columns else pd.Series([""] * len(raw))
    items = []
    for r, g in zip(raw.itertuples(index=False), genres):
        year = int(r.release_year) if r.release_year.isdigit() else None
        # Genres are space-separated tokens; "Children's" and "Film-Noir" stay whole.
        items.append({"item": r.item_id, "title": r.movie_title, "year": year, "genres": g.split(),
                      "description": "", "brand": ""})
    return _interactions_frame(rows), _items_frame(items)


# --- MovieLens-1M --------------------------------------------------------------------------

def parse_ml1m_ratings(path: str | Path) -> pd.DataFrame:
    """GroupLens ml-1m ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``."""
    rows = _records(path, lambda line: _interaction(line, "::"),
                    "a 'UserID::MovieID::Rating::Timestamp' line", encoding="latin-1")
    return _interactions_frame(list(rows))


def _ml1m_movie(line: str) -> dict:
    item, title, genres = _fields(line, "::", 3)
    title, year = split_title_year(title)
    return {"item": item, "title": title, "year": year,
            "genres": genres.split("|") if genres else [], "description": "", "brand": ""}


def parse_ml1m_movies(path: str | Path) -> pd.DataFrame:
    """GroupLens ml-1m ``movies.dat``: ``MovieID::Title (Year)::Genre|Genre``, latin-1."""
    return _items_frame(list(_records(path, _ml1m_movie, "a 'MovieID::Title::Genres' line",
                                      encoding="latin-1")))


# --- Amazon reviews (2014 and 2018 releases) -------------------------------------------------

def _dict(value) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"a {type(value).__name__}, not a dict")
    return value


def _review(line: str) -> tuple[str, str, float, int]:
    r = _dict(json.loads(line))
    return str(r["reviewerID"]), str(r["asin"]), float(r.get("overall", 0.0)), int(r["unixReviewTime"])


def parse_amazon_reviews(path: str | Path) -> pd.DataFrame:
    """Amazon 5-core review file (2014 ``reviews_X_5.json.gz`` or 2018 ``X_5.json.gz``): JSON lines."""
    rows = _records(path, _review, "a JSON review with reviewerID, asin and unixReviewTime")
    return _interactions_frame(list(rows))


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
        "item": str(record["asin"]),
        "title": _clean_text(record.get("title")),
        "year": None,
        "genres": categories,
        "description": _clean_text(record.get("description")),
        "brand": _clean_text(record.get("brand")),
    }


def _meta2014(line: str) -> dict:
    # ast.literal_eval reads literals only: a line holding code is an error, never executed
    rec = _dict(ast.literal_eval(line))
    cats = rec.get("categories") or [[]]
    path0 = [_clean_text(c) for c in cats[0]]
    return _amazon_item(rec, path0[1:] if len(path0) > 1 else path0)


def parse_amazon2014_meta(path: str | Path) -> pd.DataFrame:
    """Amazon 2014 ``meta_X.json.gz``: one Python dict literal per line (``ast.literal_eval``).

    ``categories`` is a list of category paths; the first path, minus its root (the
    department name every item shares), becomes ``genres``.
    """
    return _items_frame(list(_records(path, _meta2014, "a Python dict literal with an asin")))


def _meta2018(line: str) -> dict:
    rec = _dict(json.loads(line))
    cats = [_clean_text(c) for c in (rec.get("category") or [])]
    return _amazon_item(rec, cats[1:] if len(cats) > 1 else cats)


def parse_amazon2018_meta(path: str | Path) -> pd.DataFrame:
    """Amazon 2018 ``meta_X.json.gz``: JSON lines; missing fields become empty values.

    ``category`` is one category path; its root is dropped as for 2014. Titles often
    carry HTML entities (``&amp;``) and sometimes markup, which are cleaned.
    """
    items = _items_frame(list(_records(path, _meta2018, "a JSON object with an asin")))
    # The 2018 dumps contain duplicate asins; keep the first complete record.
    return items.drop_duplicates("item", keep="first").reset_index(drop=True)
