"""Item embedding tables that can start from a given matrix (LLM or PLM item embeddings).

Used by SASRec and BERT4Rec for the initialisation studies of Harte et al. (LLM2BERT4Rec)
and of the Elephant paper (LF / PT / FT item init):

* ``init=None``: random N(0, 0.02)
* ``init=M, freeze=True``: the rows of M, kept fixed ("embedding-init freeze")
* ``init=M, freeze=False``: the rows of M, trained further ("embedding-init trainable")

When M is wider or narrower than the model, a trainable linear projection maps it to the
model width (PCA beforehand is the alternative Harte et al. used).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import nn


class ItemEmbedding(nn.Module):
    """Table of ``n_items + 1 + extra_rows`` vectors; row 0 is padding, extra rows (e.g. [MASK]) are random."""

    def __init__(self, n_items: int, dim: int, init: torch.Tensor | np.ndarray | None = None,
                 freeze: bool = False, extra_rows: int = 0, std: float = 0.02) -> None:
        super().__init__()
        if init is None:
            table = torch.randn(n_items + 1, dim) * std
            self.table = nn.Parameter(table)
            self.proj = None
            width = dim
        else:
            table = torch.as_tensor(np.asarray(init), dtype=torch.float32).clone()
            if table.shape[0] == n_items:
                table = torch.cat([torch.zeros(1, table.shape[1]), table])
            if table.shape[0] != n_items + 1:
                raise ValueError(f"init has {table.shape[0]} rows; expected {n_items + 1} "
                                 f"(padding row first) or {n_items}")
            table[0] = 0.0
            self.table = nn.Parameter(table, requires_grad=not freeze)
            width = table.shape[1]
            self.proj = nn.Linear(width, dim, bias=False) if width != dim else None
            if self.proj is not None:
                nn.init.normal_(self.proj.weight, 0.0, 1.0 / width**0.5)
        self.extra = nn.Parameter(torch.randn(extra_rows, width) * std) if extra_rows else None

    @property
    def weight(self) -> torch.Tensor:
        """The full table at model width: [n_items + 1 + extra_rows, dim]."""
        w = self.table if self.extra is None else torch.cat([self.table, self.extra])
        return w if self.proj is None else self.proj(w)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight, padding_idx=0)


def pca_init(vectors: torch.Tensor | np.ndarray, dim: int | None, std: float | None = 0.02,
             ) -> np.ndarray:
    """An initial item table from item vectors [n + 1, H] (row 0 padding): [n + 1, dim].

    The real items are centred and projected on their top ``dim`` principal axes (the PCA of
    Harte et al.; ``dim=None`` keeps all H columns as they are, centred only), with a
    deterministic sign per axis (its largest-magnitude coordinate positive). The result is
    rescaled so its entries have standard deviation ``std`` (that of the random N(0, 0.02)
    init; ``None`` keeps the PCA scale). Row 0 stays zero.
    """
    x = np.asarray(vectors, dtype=np.float64)[1:]
    x = x - x.mean(0)
    if dim is None:
        z = x
    else:
        if dim > min(x.shape):
            raise ValueError(f"cannot keep {dim} components of a {x.shape[0]} x {x.shape[1]} matrix")
        with threadpool_limits(1, user_api="blas"):  # one thread: the same bits every run
            _, _, vt = np.linalg.svd(x, full_matrices=False)
        z = x @ vt[:dim].T
        signs = np.sign(z[np.abs(z).argmax(0), np.arange(dim)])
        z = z * np.where(signs == 0, 1.0, signs)
    if std is not None:
        z = z * (std / z.std())
    return np.vstack([np.zeros((1, z.shape[1])), z]).astype(np.float32)
