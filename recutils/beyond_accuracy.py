"""Beyond-accuracy measures of top-k lists (Harte et al., RecSys 2023, after Ge et al. 2010).

``topk`` is an array [users, k] of recommended item ids (best first; ids 1..n_items).

* **catalogue coverage@k**: the share of the catalogue that appears in at least one list.
* **novelty@k** (self-information, Zhou et al. 2010): the mean of ``-log2 p(i)`` over the
  recommended items, with ``p(i) = c_i / sum_j c_j`` the item's share of the training
  interactions. An item never seen in training counts as seen once (so it stays finite
  and is the most novel).
* **serendipity@k** (Ge et al. 2010): a relevant item is *unexpected* when a primitive
  recommender, the k most popular items, would not have recommended it. Per user: the
  unexpected relevant items found in the list, divided by min(#unexpected relevant, k);
  0 when every relevant item is expected. With one held-out item this is 1 when the target
  is in the list and not among the k most popular items, else 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def catalogue_coverage(topk: np.ndarray, n_items: int) -> float:
    """Distinct recommended items (ids 1..n_items) / n_items."""
    ids = np.unique(np.asarray(topk).ravel())
    return float(((ids >= 1) & (ids <= n_items)).sum() / n_items)


def novelty(topk: np.ndarray, item_counts: np.ndarray) -> float:
    """Mean self-information ``-log2(c_i / sum c)`` of the recommended items.

    ``item_counts[i]`` is item i's number of training interactions (index 0 = padding).
    """
    counts = np.maximum(np.asarray(item_counts, dtype=np.float64), 1.0)
    counts[0] = 0.0
    total = np.asarray(item_counts, dtype=np.float64)[1:].sum()
    info = -np.log2(counts[np.asarray(topk)] / total)
    return float(info.mean())


def popular_items(item_counts: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` most interacted-with items (ties broken by the lower id)."""
    counts = np.asarray(item_counts).copy()
    counts[0] = -1
    return np.argsort(-counts, kind="stable")[:k]


def serendipity(topk: np.ndarray, relevant: Sequence[Sequence[int]] | np.ndarray,
                item_counts: np.ndarray) -> float:
    """Mean over users of (unexpected relevant items recommended) / min(#unexpected, k).

    ``relevant[u]`` lists user u's relevant items (the held-out target: pass
    ``targets[:, None]``); "expected" are the k most popular training items.
    """
    topk = np.asarray(topk)
    k = topk.shape[1]
    expected = set(popular_items(item_counts, k).tolist())
    scores = []
    for rec, rel in zip(topk, relevant):
        unexpected = {int(i) for i in np.atleast_1d(rel)} - expected
        denom = min(len(unexpected), k)
        hits = sum(int(i) in unexpected for i in rec)
        scores.append(hits / denom if denom else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


def beyond_accuracy(topk: np.ndarray, targets: np.ndarray, item_counts: np.ndarray,
                    n_items: int, ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """Coverage, novelty and serendipity at each k.

    Keys: ``coverage@k``, ``serendipity@k`` (rates in [0, 1]) and ``novelty_bits_top{k}``
    (bits, not a rate, hence no "@" in its name).
    """
    topk = np.asarray(topk)
    out = {}
    for k in ks:
        if k > topk.shape[1]:
            raise ValueError(f"lists have {topk.shape[1]} items; cannot measure @{k}")
        top = topk[:, :k]
        out[f"coverage@{k}"] = catalogue_coverage(top, n_items)
        out[f"novelty_bits_top{k}"] = novelty(top, item_counts)
        out[f"serendipity@{k}"] = serendipity(top, np.asarray(targets)[:, None], item_counts)
    return out
