"""A small Transformer block shared by SASRec (causal) and BERT4Rec (bidirectional).

Written out by hand, minGPT-style, so that attention weights can be returned for plots.
Pre-LayerNorm residual blocks; masks are boolean, True = may attend.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention with an explicit softmax (so the weights can be inspected)."""

    def __init__(self, hidden: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % n_heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [B, L, H], ``allowed`` [B, 1, L, L] bool -> (output [B, L, H], weights [B, heads, L, L])."""
        b, length, h = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.n_heads, h // self.n_heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        att = att.masked_fill(~allowed, float("-inf")).softmax(-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(b, length, h)
        return self.out(y), att


class Block(nn.Module):
    """Pre-LN Transformer block: x + attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, hidden: int, n_heads: int, inner: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = SelfAttention(hidden, n_heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, hidden),
                                 nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, att = self.attn(self.ln1(x), allowed)
        x = x + self.drop(y)
        return x + self.ffn(self.ln2(x)), att


class SequenceEncoder(nn.Module):
    """Position embeddings, dropout, a stack of :class:`Block` and a final LayerNorm.

    Shared by SASRec (``causal=True``) and BERT4Rec (``causal=False``); the item vectors
    come from the model's own item table. Positions count from the right end, so a shorter
    (unpadded) input is read exactly like the same input left-padded to ``max_len``.
    """

    def __init__(self, max_len: int, hidden: int, n_layers: int, n_heads: int, inner: int,
                 dropout: float, causal: bool) -> None:
        super().__init__()
        self.max_len, self.causal = max_len, causal
        self.pos = nn.Embedding(max_len, hidden)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(hidden, n_heads, inner, dropout) for _ in range(n_layers))
        self.ln = nn.LayerNorm(hidden)

    def forward(self, item_vectors: torch.Tensor, seq: torch.Tensor,
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``item_vectors`` [B, L, H] of the ids ``seq`` [B, L] -> (hidden [B, L, H], attention maps)."""
        positions = torch.arange(self.max_len - seq.size(1), self.max_len, device=seq.device)
        x = self.drop(item_vectors + self.pos(positions))
        x = x * (seq > 0).unsqueeze(-1)
        allowed = attention_mask(seq, causal=self.causal)
        maps = []
        for block in self.blocks:
            x, att = block(x, allowed)
            maps.append(att)
        return self.ln(x), maps


def attention_mask(seq: torch.Tensor, causal: bool) -> torch.Tensor:
    """Boolean [B, 1, L, L]: which key each query may attend to (padding id 0 is never a key).

    Every query may attend to itself, so a row is never empty (padding positions then
    produce finite, ignored outputs instead of NaN).
    """
    length = seq.size(1)
    allowed = (seq > 0)[:, None, None, :].expand(-1, 1, length, -1)
    if causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
    eye = torch.eye(length, dtype=torch.bool, device=seq.device)
    return allowed | eye


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """N(0, std) for linear and embedding weights, zeros for biases, ones for LayerNorm.

    The small normal initialisation matters: PyTorch's default embedding init scaled by
    sqrt(d) trains SASRec far worse on ML-100k (see REFERENCE.md, measured).
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
