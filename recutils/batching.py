"""Batching below every model: padding, collating, moving to a device, seeded batch order.

This module depends on torch and numpy only, so ``recutils.models`` and ``recutils.data``
can use it without importing the trainer.

>>> pad_sequences([np.array([3, 4]), np.array([5])], 3)        # left: the latest item last
tensor([[0, 3, 4],
        [0, 0, 5]])
>>> pad_rows([[1, 2], [3]], pad_value=0, side="right")
tensor([[1, 2],
        [3, 0]])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

# The label value torch's cross-entropy ignores (prompt tokens, padding).
IGNORE_INDEX = -100


def pad_sequences(seqs: Sequence[np.ndarray], max_len: int, pad_value: int = 0) -> torch.Tensor:
    """Left-pad (or left-truncate) each sequence to ``max_len``: the most recent item is last."""
    out = torch.full((len(seqs), max_len), pad_value, dtype=torch.long)
    for row, s in enumerate(seqs):
        s = s[-max_len:]
        if len(s):
            out[row, max_len - len(s):] = torch.tensor(np.asarray(s, dtype=np.int64))
    return out


def pad_rows(rows: Sequence[Sequence[int]], pad_value: int = 0, side: str = "left",
             length: int | None = None, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Stack rows of different lengths into one tensor, padding on ``side`` ("left"/"right").

    ``length`` defaults to the longest row; longer rows are an error (truncate first, so
    that which end is cut stays the caller's decision).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max((len(r) for r in rows), default=0) if length is None else length
    out = torch.full((len(rows), width), pad_value, dtype=dtype)
    for i, r in enumerate(rows):
        if len(r) > width:
            raise ValueError(f"row {i} has {len(r)} entries, more than length={width}")
        if len(r):
            values = torch.as_tensor(list(r), dtype=dtype)
            if side == "left":
                out[i, width - len(r):] = values
            else:
                out[i, :len(r)] = values
    return out


def collate(rows: Sequence[Mapping[str, Sequence[int]]], pad_values: Mapping[str, int],
            side: str = "left") -> dict[str, torch.Tensor]:
    """Pad each field of a list of examples (dicts of token lists) into one batch dict.

    ``pad_values`` names the fields and their padding value, e.g. ``{"input_ids": pad_id,
    "attention_mask": 0, "labels": IGNORE_INDEX}``; every field is padded on ``side`` to the
    longest row of the batch (decoder-only LMs generate after the last token: pad left).
    """
    return {key: pad_rows([r[key] for r in rows], pad, side) for key, pad in pad_values.items()}


def to_device(batch, device: torch.device | str):
    """``batch`` with every tensor in it (also inside dicts, lists, tuples) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


def batch_indices(n: int, batch_size: int, rng: np.random.Generator | None = None
                  ) -> Iterator[np.ndarray]:
    """Indices ``0..n-1`` in batches of ``batch_size``: shuffled by ``rng``, in order without.

    One ``rng.permutation(n)`` per call, so an epoch's order depends only on the generator's
    state: pass the same generator every epoch for a fresh order each time.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.arange(n) if rng is None else rng.permutation(n)
    yield from batch_indices_of(order, batch_size)


def seeded_batches(examples: Sequence, batch_size: int, seed: int,
                   make: Callable[[list], object]) -> Callable[[int], list]:
    """A ``batches(epoch)`` factory for :func:`recutils.training.fit`.

    Epoch ``e`` shuffles ``examples`` with ``numpy.random.default_rng(seed + e)`` (so every
    epoch's order is fixed by the seed alone, whatever ran before) and turns each slice of
    ``batch_size`` examples into a batch with ``make(list_of_examples)``.
    """
    def batches(epoch: int) -> list:
        order = np.random.default_rng(seed + epoch).permutation(len(examples))
        return [make([examples[i] for i in idx]) for idx in batch_indices_of(order, batch_size)]
    return batches


def seeded_subset(pool: int | np.ndarray, n: int, seed: int, sort: bool = True) -> np.ndarray:
    """``n`` distinct entries of ``pool`` (an array, or ``range(pool)`` for an int) drawn by
    ``numpy.random.default_rng(seed)``, sorted unless ``sort`` is False (then in draw order).

    The one way the course draws a seeded sample of users, items or examples; the draw
    depends on the seed and the pool alone, whatever ran before.
    """
    size = pool if isinstance(pool, (int, np.integer)) else len(pool)
    if not 0 <= n <= size:
        raise ValueError(f"cannot draw {n} distinct entries from a pool of {size}")
    out = np.random.default_rng(seed).choice(pool, size=n, replace=False)
    return np.sort(out) if sort else out


def batch_indices_of(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive slices of ``batch_size`` from an index order."""
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]
