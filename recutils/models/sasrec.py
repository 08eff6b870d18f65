"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

A causal Transformer over the user's item sequence; the hidden state at position t,
dotted with every item embedding, scores the item at t + 1. Trained on every position of
every training window in one pass (not on copied prefixes, which is 25x slower for the
same result).

Hyper-parameters live in :class:`SASRecConfig` (defaults: RecBole's; the paper's values in
the comments).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recutils.models.embedding import ItemEmbedding
from recutils.models.transformer import SequenceEncoder, init_weights


@dataclass(frozen=True)
class SASRecConfig:
    """SASRec's hyper-parameters (defaults: RecBole 1.2.1's; Kang & McAuley's in comments)."""

    hidden: int = 64      # item and position embedding width (paper: 50; A-LLMRec: 50)
    n_layers: int = 2     # Transformer blocks (paper: 2)
    n_heads: int = 2      # attention heads (paper: 1)
    inner: int = 256      # feed-forward width (paper: = hidden)
    dropout: float = 0.5  # on embeddings, attention and blocks (paper: 0.2 on ML-1M, 0.5 sparse)
    max_len: int = 50     # most recent items the model sees (paper: 200 on ML-1M, 50 otherwise)
    loss: str = "ce"      # "ce": softmax over all items | "bce": one random negative (the paper)

    def __post_init__(self) -> None:
        if self.loss not in ("ce", "bce"):
            raise ValueError(f"loss must be 'ce' or 'bce', got {self.loss!r}")


class SASRec(nn.Module):
    """``SASRec(n_items, SASRecConfig(...))``; ``item_init`` optionally fills the item table."""

    def __init__(self, n_items: int, config: SASRecConfig | None = None,
                 item_init: torch.Tensor | np.ndarray | None = None, freeze_init: bool = False) -> None:
        super().__init__()
        c = self.config = config or SASRecConfig()
        self.n_items, self.max_len, self.loss_type = n_items, c.max_len, c.loss
        self.encoder = SequenceEncoder(c.max_len, c.hidden, c.n_layers, c.n_heads, c.inner,
                                       c.dropout, causal=True)
        init_weights(self)
        # after init_weights, so a given initialisation is not overwritten
        self.items = ItemEmbedding(n_items, c.hidden, init=item_init, freeze=freeze_init)

    def forward(self, seq: torch.Tensor, return_attention: bool = False):
        """``seq`` [B, L] left-padded item ids -> hidden states [B, L, hidden] (+ attention maps)."""
        seq = seq[:, -self.max_len:]
        x, maps = self.encoder(self.items(seq), seq)
        return (x, maps) if return_attention else x

    def predict(self, seq: torch.Tensor) -> torch.Tensor:
        """Scores [B, n_items + 1] for the item after the last one of each sequence."""
        return self.forward(seq)[:, -1] @ self.items.weight.T

    def user_vector(self, seq: torch.Tensor) -> torch.Tensor:
        """The sequence representation [B, hidden] (A-LLMRec's user embedding)."""
        return self.forward(seq)[:, -1]

    def loss(self, window: torch.Tensor) -> torch.Tensor:
        """Next-item loss on a batch of training windows [B, max_len + 1] (left-padded)."""
        inp, target = window[:, :-1], window[:, 1:]
        h = self.forward(inp)
        valid = target > 0
        if self.loss_type == "ce":
            logits = h[valid] @ self.items.weight.T
            return F.cross_entropy(logits, target[valid])
        neg = torch.randint(1, self.n_items + 1, target.shape, device=target.device)
        neg = torch.where(neg == target, neg % self.n_items + 1, neg)
        w = self.items.weight
        # F.embedding, not w[target]: its backward sums repeated rows in a fixed order, while
        # advanced indexing accumulates from several CPU threads in a run-dependent order
        pos_logit = (h * F.embedding(target, w)).sum(-1)[valid]
        neg_logit = (h * F.embedding(neg, w)).sum(-1)[valid]
        return (F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit))
                + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit)))
