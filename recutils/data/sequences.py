"""From interactions to per-user item sequences, and the leave-one-out split.

Pipeline (each step a function, composed by :func:`prepare`):

1. optional rating threshold,
2. a filter: iterative k-core (users *and* items keep >= k interactions, repeated until
   stable: SASRec, RecFormer, GenRec, Harte et al. on Amazon) or a single-pass min-count
   (LANCER drops users with < 5 items once),
3. time order with a stable tie-break (timestamp, then the original row order: 50,561 of
   ML-100k's ratings share a (user, timestamp) with another one),
4. id remapping: items 1..n (0 is padding), users 0..m-1,
5. optional truncation to each user's most recent ``max_len`` items.

The split is chronological leave-one-out: for a sequence ``s`` the last item is the test
target, the second-to-last the validation target, the rest is training data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from recutils.batching import seeded_subset
from recutils.data.registry import RawDataset

STAGES = ("valid", "test")


def rating_threshold(inter: pd.DataFrame, min_rating: float | None) -> pd.DataFrame:
    """Keep interactions with ``rating >= min_rating`` (all when None)."""
    return inter if min_rating is None else inter[inter["rating"] >= min_rating]


def kcore(inter: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iterative k-core: drop users and items with fewer than ``k`` interactions until none remain."""
    while True:
        u = inter.groupby("user")["item"].transform("size")
        i = inter.groupby("item")["user"].transform("size")
        keep = (u >= k) & (i >= k)
        if keep.all():
            return inter
        inter = inter[keep]


def min_count(inter: pd.DataFrame, min_user: int = 0, min_item: int = 0) -> pd.DataFrame:
    """Single pass: drop items with < ``min_item`` interactions, then users with < ``min_user``."""
    if min_item:
        inter = inter[inter.groupby("item")["user"].transform("size") >= min_item]
    if min_user:
        inter = inter[inter.groupby("user")["item"].transform("size") >= min_user]
    return inter


def time_order(inter: pd.DataFrame) -> pd.DataFrame:
    """Sort by user, timestamp and original row order (a stable, explicit tie-break)."""
    inter = inter.assign(_row=np.arange(len(inter)))
    return inter.sort_values(["user", "timestamp", "_row"], kind="stable").drop(columns="_row")


@dataclass
class SequenceData:
    """Chronological item sequences, one per user, with the item table aligned to item ids.

    ``sequences[u]`` holds internal item ids (1..n_items) in time order; ``items`` has one
    row per internal id, row 0 being the padding item; ``item_ids``/``user_ids`` map
    internal ids back to the dataset's raw ids.
    """

    name: str
    sequences: list[np.ndarray]
    timestamps: list[np.ndarray]
    user_ids: np.ndarray
    item_ids: np.ndarray
    items: pd.DataFrame

    @property
    def n_users(self) -> int:
        return len(self.sequences)

    @property
    def n_items(self) -> int:
        """Number of real items (ids 1..n_items); score tensors have n_items + 1 columns."""
        return len(self.item_ids) - 1

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def __repr__(self) -> str:
        return (f"SequenceData({self.name!r}: {self.n_users:,} users, {self.n_items:,} items, "
                f"{self.n_interactions:,} interactions)")

    # --- the leave-one-out split -------------------------------------------------------
    def train_sequences(self) -> list[np.ndarray]:
        """Training part of every sequence: all but the last two items."""
        return [s[:-2] for s in self.sequences]

    def inputs(self, stage: str) -> list[np.ndarray]:
        """The history a model sees when predicting the ``stage`` target ("valid" or "test")."""
        _check_stage(stage)
        cut = 2 if stage == "valid" else 1
        return [s[:-cut] for s in self.sequences]

    def targets(self, stage: str) -> np.ndarray:
        """The held-out item of every user for ``stage``: second-to-last ("valid") or last ("test")."""
        _check_stage(stage)
        pos = -2 if stage == "valid" else -1
        return np.array([s[pos] for s in self.sequences], dtype=np.int64)

    def item_counts(self) -> np.ndarray:
        """Interactions per item id in the training part (index 0 = padding, always 0)."""
        counts = np.zeros(self.n_items + 1, dtype=np.int64)
        for s in self.train_sequences():
            np.add.at(counts, s, 1)
        return counts

    # --- helpers ------------------------------------------------------------------------
    def subsample_users(self, n: int, seed: int = 0) -> SequenceData:
        """A copy with ``n`` users drawn at random (fixed ``seed``); items are kept as they are."""
        if n >= self.n_users:
            return self
        idx = seeded_subset(self.n_users, n, seed)
        return replace(self, sequences=[self.sequences[i] for i in idx],
                       timestamps=[self.timestamps[i] for i in idx], user_ids=self.user_ids[idx])

    def titles(self, ids) -> list[str]:
        """Titles of internal item ids."""
        return self.items["title"].to_numpy()[np.asarray(ids, dtype=np.int64)].tolist()


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r} (the test split is never "
                         "used for model selection: pass 'valid' while tuning)")


def prepare(
    raw: RawDataset,
    *,
    kcore_k: int | None = None,
    min_user: int = 0,
    min_item: int = 0,
    min_rating: float | None = None,
    max_len: int | None = None,
    min_len: int = 3,
) -> SequenceData:
    """Filter, order and remap a :class:`RawDataset` into :class:`SequenceData`.

    ``kcore_k`` applies the iterative k-core, ``min_user``/``min_item`` a single-pass
    min-count filter; ``max_len`` keeps each user's most recent items; users with fewer
    than ``min_len`` items (3 is the least a leave-one-out split needs) are dropped. Items
    without a title (no metadata, or an empty one) are titled ``"item <raw id>"``.
    """
    if min_len < 3:
        raise ValueError(f"min_len={min_len}: the leave-one-out split needs at least 3 items per "
                         "user (training, validation and test); use min_len >= 3.")
    if max_len is not None and max_len < min_len:
        raise ValueError(f"max_len={max_len} is below min_len={min_len}: every user would be "
                         "dropped; use max_len >= min_len (or None for whole sequences).")
    inter = rating_threshold(raw.interactions, min_rating)
    if kcore_k:
        inter = kcore(inter, kcore_k)
    if min_user or min_item:
        inter = min_count(inter, min_user, min_item)
    inter = time_order(inter)
    if max_len:
        inter = inter.groupby("user", sort=False).tail(max_len)
    inter = inter[inter.groupby("user")["item"].transform("size") >= min_len]
    if inter.empty:
        raise ValueError(f"{raw.name}: no user is left after filtering; loosen the filters.")

    item_ids = np.array(["<pad>"] + sorted(inter["item"].unique(), key=_natural_key), dtype=object)
    index = {raw_id: i for i, raw_id in enumerate(item_ids)}
    internal = inter["item"].map(index).to_numpy(dtype=np.int64)
    users, starts = np.unique(inter["user"].to_numpy(), return_index=True)
    # inter is sorted by user, so each user's rows are contiguous starting at `starts`.
    order = np.argsort(starts)
    users, starts = users[order], starts[order]
    bounds = list(starts) + [len(inter)]
    ts = inter["timestamp"].to_numpy(dtype=np.int64)
    sequences = [internal[a:b].copy() for a, b in zip(bounds[:-1], bounds[1:])]
    timestamps = [ts[a:b].copy() for a, b in zip(bounds[:-1], bounds[1:])]

    table = raw.items.drop_duplicates("item").set_index("item").reindex(item_ids[1:])
    table["title"] = table["title"].fillna("").astype(str).str.strip()
    missing = table["title"] == ""  # no metadata, or an empty title: a readable placeholder
    table.loc[missing, "title"] = [f"item {i}" for i in table.index[missing]]
    table["genres"] = [g if isinstance(g, list) else [] for g in table["genres"]]
    for col in ("description", "brand"):
        table[col] = table[col].fillna("").astype(str)
    pad = pd.DataFrame({"title": ["<pad>"], "year": pd.array([pd.NA], dtype="Int64"),
                        "genres": [[]], "description": [""], "brand": [""]}, index=["<pad>"])
    items = pd.concat([pad, table[pad.columns]]).reset_index(names="raw_id")
    items["year"] = items["year"].astype("Int64")
    return SequenceData(raw.name, sequences, timestamps, users.astype(str), item_ids, items)


def _natural_key(raw_id: str):
    return (0, int(raw_id), "") if raw_id.isdigit() else (1, 0, raw_id)
