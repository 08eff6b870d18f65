"""BERT4Rec: bidirectional Transformer trained with the cloze task (Sun et al., CIKM 2019).

Random items of a training window are replaced by [MASK] (id ``n_items + 1``) and
predicted from both sides. At inference [MASK] is appended after the history and the
output at that position scores every item. The [MASK] row stays randomly initialised
when the item table starts from a given matrix (as in LLM2BERT4Rec).

Hyper-parameters live in :class:`BERT4RecConfig`.
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
class BERT4RecConfig:
    """BERT4Rec's hyper-parameters (defaults: RecBole-like; Sun et al.'s in comments)."""

    hidden: int = 64        # embedding width (paper: 64; Harte et al. tuned 208 for LLM2BERT4Rec)
    n_layers: int = 2       # Transformer blocks (paper: 2)
    n_heads: int = 2        # attention heads (paper: 2)
    inner: int = 256        # feed-forward width (paper: 4 x hidden)
    dropout: float = 0.2    # (paper: 0.1)
    max_len: int = 50       # positions, including the appended [MASK] (paper: 200 on ML-1M)
    mask_prob: float = 0.2  # cloze masking rate (RecBole 0.2; paper 0.2 on ML-1M; Elephant 0.15)


class BERT4Rec(nn.Module):
    """``BERT4Rec(n_items, BERT4RecConfig(...))``; ``item_init`` optionally fills the item table."""

    def __init__(self, n_items: int, config: BERT4RecConfig | None = None,
                 item_init: torch.Tensor | np.ndarray | None = None, freeze_init: bool = False) -> None:
        super().__init__()
        c = self.config = config or BERT4RecConfig()
        self.n_items, self.max_len, self.mask_prob = n_items, c.max_len, c.mask_prob
        self.mask_id = n_items + 1
        self.encoder = SequenceEncoder(c.max_len, c.hidden, c.n_layers, c.n_heads, c.inner,
                                       c.dropout, causal=False)
        self.head = nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.GELU(), nn.LayerNorm(c.hidden))
        init_weights(self)
        self.items = ItemEmbedding(n_items, c.hidden, init=item_init, freeze=freeze_init,
                                   extra_rows=1)
        self.bias = nn.Parameter(torch.zeros(n_items + 1))

    def forward(self, seq: torch.Tensor, return_attention: bool = False):
        """``seq`` [B, L] left-padded ids (may contain [MASK]) -> hidden states [B, L, hidden]."""
        seq = seq[:, -self.max_len:]
        x, maps = self.encoder(self.items(seq), seq)
        return (x, maps) if return_attention else x

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Scores over ids 0..n_items (the [MASK] row is never a prediction)."""
        return self.head(h) @ self.items.weight[: self.n_items + 1].T + self.bias

    def predict(self, seq: torch.Tensor) -> torch.Tensor:
        """Scores [B, n_items + 1] for the next item: [MASK] is appended to each history."""
        mask = torch.full((seq.size(0), 1), self.mask_id, dtype=seq.dtype, device=seq.device)
        seq = torch.cat([seq[:, -(self.max_len - 1):], mask], dim=1)
        return self.logits(self.forward(seq)[:, -1])

    def loss(self, window: torch.Tensor) -> torch.Tensor:
        """Cloze loss on training windows [B, L]: mask items with prob ``mask_prob``.

        Each window gets at least one masked item (its last one if the draw masked none).
        """
        window = window[:, -self.max_len:]
        real = window > 0
        masked = (torch.rand(window.shape, device=window.device) < self.mask_prob) & real
        none = ~masked.any(1)
        masked[none, -1] = real[none, -1]
        inp = window.masked_fill(masked, self.mask_id)
        h = self.forward(inp)
        return F.cross_entropy(self.logits(h[masked]), window[masked])
