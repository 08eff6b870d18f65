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
