"""Item text from one item table, in every paper's format.

Each paper feeds items to its language model in a different shape:

* Harte et al. (LLMSeqSim): the bare product name -> ``"{title}"``
* A-LLMRec: ``"Title: {title}, Description: {description}"``
* LANCER: ``"{description} : genres : {genres} : title : {title}"``
* RecFormer / Elephant: key-value pairs (:func:`item_attributes`)

All of them come from :func:`item_texts` with a template. Fields: ``title``,
``year``, ``genres`` (joined by ", "), ``description``, ``brand``, ``raw_id``, and
``title_year`` ("Toy Story (1995)"). A missing value becomes "" and the separators
around it are tidied up.
"""

from __future__ import annotations

import re

import pandas as pd

TEMPLATES = {
    "title": "{title}",
    "title_year": "{title_year}",
    "allmrec": "Title: {title_year}, Description: {description}",
    "lancer": "{description} : genres : {genres} : title : {title}",
    "full": "{title_year}. Genres: {genres}. {description}",
}


def readable_title(title: str) -> str:
    """MovieLens writes 'Usual Suspects, The'; turn it into 'The Usual Suspects'."""
    m = re.match(r"^(.*), (The|A|An|Les|La|Le|Il|Das|Der|Die|El)$", title)
    return f"{m.group(2)} {m.group(1)}" if m else title


def _fields(row) -> dict[str, str]:
    year = "" if pd.isna(row.year) else str(int(row.year))
    title = readable_title(row.title)
    return {
        "title": title,
        "year": year,
        "title_year": f"{title} ({year})" if year else title,
        "genres": ", ".join(row.genres),
        "description": row.description,
        "brand": row.brand,
        "raw_id": str(row.raw_id),
    }


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"(Description|Genres|genres|Brand): ?(?=[,.]|$)", "", text)
    text = re.sub(r"\s*([,.])(\s*[,.])+", r"\1", text)
    return text.strip(" ,:")


def item_texts(items: pd.DataFrame, template: str = "{title}") -> list[str]:
    """One string per row of ``items`` (row 0, the padding item, gives "").

    ``template`` is a key of :data:`TEMPLATES` or a ``str.format`` pattern over the fields
    listed in this module's docstring.
    """
    pattern = TEMPLATES.get(template, template)
    out = []
    for row in items.itertuples(index=False):
        if row.raw_id == "<pad>":
            out.append("")
            continue
        try:
            text = pattern.format(**_fields(row))
        except KeyError as e:
            raise KeyError(f"template {pattern!r} uses unknown field {e}; known: "
                           "title, year, title_year, genres, description, brand, raw_id") from None
        out.append(_tidy(text))
    return out


def item_attributes(items: pd.DataFrame, fields: tuple[str, ...] = ("title", "genres", "year"),
                    ) -> list[list[tuple[str, str]]]:
    """Key-value pairs per item (RecFormer's input format); empty values are left out."""
    out = []
    for row in items.itertuples(index=False):
        if row.raw_id == "<pad>":
            out.append([])
            continue
        f = _fields(row)
        out.append([(k, f[k]) for k in fields if f.get(k)])
    return out
