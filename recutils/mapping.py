"""From generated text back to catalogue items.

Generative recommenders (LLMSeqPrompt, LANCER, A-LLMRec) emit titles, not item ids. A
generated title may match a catalogue title exactly, nearly ("the usual suspects" for
"Usual Suspects, The (1995)"), or not at all (a hallucination). This module

* normalises titles so that spelling variants compare equal (:func:`normalize_title`),
* finds exact matches (:class:`TitleIndex`),
* maps any text to its nearest items by embedding similarity (:func:`nearest_items`),
  which is how Harte et al. and LANCER (eq. 8-9) handle texts that match no item.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from recutils.data.text import readable_title

_PUNCT = re.compile(r"[^\w\s]")
_YEAR = re.compile(r"\(\d{4}\)")


def normalize_title(text: str) -> str:
    """Lower-case, accents and punctuation removed, year and leading article dropped.

    ``"Usual Suspects, The (1995)"``, ``"The Usual Suspects"`` and ``"the usual suspects!"``
    all become ``"usual suspects"``.
    """
    text = readable_title(_YEAR.sub(" ", text).strip())
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = _PUNCT.sub(" ", text.lower())
    words = text.split()
    if words and words[0] in ("the", "a", "an"):
        words = words[1:]
    return " ".join(words)


class TitleIndex:
    """Exact (normalised) title lookup over a catalogue.

    ``titles[i]`` is the title of item id ``i`` (row 0, padding, is skipped). Items that
    share a normalised title map to the lowest id; :attr:`ambiguous` counts them.
    """

    def __init__(self, titles: Sequence[str]) -> None:
        self.lookup: dict[str, int] = {}
        self.ambiguous = 0
        for i, t in enumerate(titles):
            if i == 0:
                continue
            key = normalize_title(t)
            if not key:
                continue
            if key in self.lookup:
                self.ambiguous += 1
            else:
                self.lookup[key] = i

    def match(self, text: str) -> int | None:
        """Item id whose normalised title equals the normalised ``text``, else None."""
        return self.lookup.get(normalize_title(text))

    def mentions(self, text: str, item: int, titles: Sequence[str]) -> bool:
        """Does ``text`` name item ``item``: equal titles, or the title inside the text?

        Used for A-LLMRec's Hit@1, where the answer may wrap the title in a sentence.
        """
        target = normalize_title(titles[item])
        got = normalize_title(text)
        return bool(target) and (got == target or f" {target} " in f" {got} ")


def nearest_items(queries: np.ndarray | torch.Tensor, item_embeddings: np.ndarray | torch.Tensor,
                  k: int = 1, exclude: Sequence[Iterable[int]] | None = None) -> np.ndarray:
    """Ids of the ``k`` items most cosine-similar to each query: [n_queries, k].

    ``item_embeddings`` has one row per item id (row 0, padding, is never returned);
    ``exclude[q]`` lists ids to skip for query ``q`` (e.g. items already recommended or
    already in the user's history).
    """
    q = torch.nn.functional.normalize(torch.as_tensor(np.asarray(queries), dtype=torch.float32), dim=-1)
    e = torch.nn.functional.normalize(torch.as_tensor(np.asarray(item_embeddings), dtype=torch.float32), dim=-1)
    sim = q @ e.T
    sim[:, 0] = float("-inf")
    if exclude is not None:
        for row, ids in enumerate(exclude):
            ids = list(ids)
            if ids:
                sim[row, ids] = float("-inf")
    return sim.topk(k, dim=1).indices.numpy()


def rank_from_generations(mapped: Sequence[Sequence[int]], k: int,
                          fill: Sequence[int] = (), exclude: Iterable[int] = ()) -> list[int]:
    """Merge per-generation item lists into one ranked list of ``k`` distinct items.

    ``mapped`` holds, best generation first, the items each generation maps to (nearest
    first). Items are taken round by round (every generation's best, then every second
    best, ...), duplicates and ``exclude`` skipped, then ``fill`` (e.g. popularity) tops
    the list up to ``k``.
    """
    seen = set(exclude)
    out: list[int] = []
    depth = max((len(m) for m in mapped), default=0)
    for level in range(depth):
        for m in mapped:
            if level < len(m):
                i = int(m[level])
                if i not in seen and i != 0:
                    seen.add(i)
                    out.append(i)
                    if len(out) == k:
                        return out
    for i in fill:
        if int(i) not in seen and int(i) != 0:
            seen.add(int(i))
            out.append(int(i))
            if len(out) == k:
                break
    return out
