"""Most-popular baseline: every user gets the items ranked by training interactions."""

from __future__ import annotations

import numpy as np
import torch

from recutils.data.sequences import SequenceData


class Popularity:
    """Scores each item by how often it occurs in the training part of the sequences."""

    def __init__(self, data: SequenceData) -> None:
        self.counts = torch.as_tensor(data.item_counts(), dtype=torch.float32)

    def predict(self, users: np.ndarray) -> torch.Tensor:
        """The same popularity scores for every user in ``users``: [len(users), n_items + 1]."""
        return self.counts.expand(len(users), -1)


class RandomScores:
    """A chance baseline: every user gets random scores, fixed by ``seed`` and the user index.

    A user's scores do not depend on which other users are in the batch, so the same users
    get the same ranking in any evaluator (e.g. beside a generative model's user sample).
    """

    def __init__(self, n_items: int, seed: int = 0) -> None:
        self.n_items, self.seed = n_items, seed

    def predict(self, users: np.ndarray) -> torch.Tensor:
        """Uniform random scores [len(users), n_items + 1], one seeded generator per user."""
        out = torch.empty(len(users), self.n_items + 1)
        for row, u in enumerate(users):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(u))
            out[row] = torch.rand(self.n_items + 1, generator=g)
        return out
