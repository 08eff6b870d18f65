"""What RecFormer's [CLS] attends to: the measures behind the Elephant paper's Fig. 1 (Qu et al., Sec. 3).

* :func:`cls_attention`: the [CLS] row of every layer's attention, [B, layers, heads, T];
* :func:`attention_per_item`: that row summed over each item's tokens;
* :func:`js_divergence` / :func:`divergence_matrix`: how alike two layers (or heads) attend;
  :func:`strata_contrast` and :func:`strata_summary` compare pairs inside and across strata
  of layers (the paper: layers 0-3 / 4-7 / 8-11 of 12 attend alike);
* :func:`attention_stats`: all of these over a set of histories, the [CLS] self-attention
  and the share on items' first tokens set apart;
* :func:`sasrec_position_profile` / :func:`recency_table`: SASRec's attention over the same
  items, the reference for "top layers focus on recent items";
* :func:`instance_maps`: one history's maps, for :func:`recutils.plots.attention_comparison`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from recutils.batching import pad_sequences, to_device
from recutils.models.recformer import RecFormer, sequence_batch


@torch.no_grad()
def cls_attention(model: RecFormer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Attention of [CLS] to every token: [B, layers, heads, T] (each row sums to 1 over real tokens).

    The same layout for every backbone. A BERT-like backbone returns full [T, T] maps and
    [CLS] is row 0. Longformer (RecFormer's backbone at ``SCALE="paper"``) returns banded
    local maps, in which a token sees only its window; [CLS] has global attention there, and
    its row over every token is the first column of ``global_attentions`` (cut back from the
    backbone's padding to a multiple of the attention window). Switches the backbone to eager
    attention for the call (fused kernels return no weights).
    """
    was_training, impl = model.training, model.backbone.config._attn_implementation
    model.eval()
    if impl != "eager":  # fused attention kernels return no weights
        model.backbone.set_attn_implementation("eager")
    try:
        out = model.backbone_output(batch, output_attentions=True)
    finally:
        model.train(was_training)
        if impl != "eager":
            model.backbone.set_attn_implementation(impl)
    length = batch["input_ids"].shape[1]
    banded = getattr(out, "global_attentions", None)
    atts = out.attentions if banded is None else banded
    if atts is None or any(a is None for a in atts):
        raise RuntimeError("the backbone returned no attention weights (it needs eager attention)")
    if banded is None:
        return torch.stack([a[:, :, 0, :] for a in atts], dim=1)
    return torch.stack([g[:, :, :length, 0] for g in banded], dim=1)  # global token 0 = [CLS]


def attention_per_item(att: torch.Tensor, item_positions: torch.Tensor, max_items: int) -> torch.Tensor:
    """Sum token attention over each item: [..., T] -> [..., max_items + 1] (column 0 = [CLS] itself).

    ``item_positions`` [B, T] says which item (1 = most recent) each token belongs to;
    padding tokens (position 0, no attention) add nothing.
    """
    shape = att.shape
    flat = att.reshape(shape[0], -1, shape[-1])
    index = item_positions.clamp(max=max_items)[:, None, :].expand_as(flat)
    out = torch.zeros(flat.shape[0], flat.shape[1], max_items + 1, dtype=att.dtype, device=att.device)
    out.scatter_add_(2, index, flat)
    return out.reshape(*shape[:-1], max_items + 1)


def js_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Jensen-Shannon divergence (natural log, between 0 and ln 2) over the last axis."""
    m = (p + q) / 2
    kl = lambda a, b: (a * (torch.log(a + eps) - torch.log(b + eps))).sum(-1)  # noqa: E731
    return (kl(p, m) + kl(q, m)) / 2


def divergence_matrix(dists: torch.Tensor) -> torch.Tensor:
    """Mean JS divergence between every pair of distributions: [B, N, T] -> [N, N] (mean over B)."""
    return js_divergence(dists[:, :, None, :], dists[:, None, :, :]).mean(0)


def strata_contrast(matrix: np.ndarray, strata: Sequence[Sequence[int]]) -> tuple[float, float]:
    """(mean divergence within strata, mean divergence between strata) of a layer x layer matrix."""
    matrix = np.asarray(matrix)
    group = {layer: g for g, members in enumerate(strata) for layer in members}
    within, between = [], []
    for i in group:
        for j in group:
            if i < j:
                (within if group[i] == group[j] else between).append(matrix[i, j])
    return float(np.mean(within)), float(np.mean(between))


def instance_maps(model: RecFormer, item_tokens, history: np.ndarray, cls_id: int, pad_id: int,
                  n_items: int = 3, device: torch.device | str = "cpu"):
    """[CLS] attention [layers, heads, T] for the last ``n_items`` items of one history, and the
    token index where each item starts (for the boundaries of the plot)."""
    b = sequence_batch(item_tokens, [history[-n_items:]], cls_id, pad_id, n_items)
    att = cls_attention(model, to_device(b, device))[0].cpu().numpy()
    pos = b["item_positions"][0].numpy()
    starts = [int(np.argmax(pos == k)) for k in range(1, pos.max() + 1)]
    return att, starts


@torch.no_grad()
def attention_stats(model: RecFormer, histories: Sequence[np.ndarray], item_tokens, cls_id: int,
                    pad_id: int, batch_size: int = 16, device: torch.device | str = "cpu") -> dict:
    """[CLS] attention measures of ``model`` over ``histories`` (each cut to its last
    ``model.max_items`` items), means over the histories:

    * ``cls_self_share`` [layers]: attention of [CLS] on itself (heads averaged);
    * over the item tokens only (the [CLS] column dropped, rows renormalised to sum to one):
      ``layers`` [layers, layers] and ``heads`` [layers * heads, layers * heads] JS
      divergences, ``position_profile`` [layers, max_items] (attention per item, most recent
      first, heads averaged) and ``first_token_share`` [layers] (on each item's first token).
    """
    n_l, n_h = model.n_layers, model.backbone.config.num_attention_heads
    layer_div, head_div = torch.zeros(n_l, n_l), torch.zeros(n_l * n_h, n_l * n_h)
    per_item, first_share, self_share = [], [], []
    for s in range(0, len(histories), batch_size):
        hist = list(histories[s:s + batch_size])
        b = to_device(sequence_batch(item_tokens, hist, cls_id, pad_id, model.max_items), device)
        att = cls_attention(model, b).float().cpu()                      # [B, layers, heads, T]
        self_share.append(att[..., 0].mean(2))                           # [CLS] -> [CLS], [B, layers]
        att = att.clone()
        att[..., 0] = 0                                                  # item tokens only, renormalised
        att = att / att.sum(-1, keepdim=True)
        layer_div += divergence_matrix(att.mean(2)) * len(hist)
        head_div += divergence_matrix(att.flatten(1, 2)) * len(hist)
        pos = b["item_positions"].cpu()
        per_item.append(attention_per_item(att, pos, model.max_items))  # [B, layers, heads, items + 1]
        first = (pos > 0) & (pos != torch.roll(pos, 1, dims=1))          # first token of each item
        first_share.append((att * first[:, None, None, :]).sum(-1).mean(2))  # [B, layers]
    per_item = torch.cat(per_item).mean(2)                               # heads averaged
    items_only = per_item[..., 1:] / per_item[..., 1:].sum(-1, keepdim=True)
    n = len(histories)
    return {"layers": (layer_div / n).numpy(), "heads": (head_div / n).numpy(),
            "position_profile": items_only.mean(0).numpy(),             # [layers, items]
            "first_token_share": torch.cat(first_share).mean(0).numpy(),
            "cls_self_share": torch.cat(self_share).mean(0).numpy()}


def layer_strata(n_layers: int, n_strata: int = 3) -> list[list[int]]:
    """Consecutive groups of layers: 12 layers -> 0-3 / 4-7 / 8-11 (the paper's), 6 -> pairs."""
    return [[int(i) for i in s] for s in np.array_split(np.arange(n_layers), n_strata)]


def strata_summary(stats: dict, strata: Sequence[Sequence[int]], n_heads: int) -> dict[str, float]:
    """Mean JS divergences of one model's :func:`attention_stats`: adjacent layers inside a
    stratum vs adjacent layers across a boundary, all pairs inside vs across, and pairs of
    heads of one layer."""
    m, hd = stats["layers"], stats["heads"]
    inside = [(s[i], s[i + 1]) for s in strata for i in range(len(s) - 1)]
    across = [(strata[g][-1], strata[g + 1][0]) for g in range(len(strata) - 1)]
    within, between = strata_contrast(m, strata)
    same_layer = np.mean([hd[i, j] for i in range(len(hd)) for j in range(len(hd))
                          if i < j and i // n_heads == j // n_heads])
    return {"adjacent, inside strata": np.mean([m[i, j] for i, j in inside]),
            "adjacent, across strata": np.mean([m[i, j] for i, j in across]),
            "all pairs inside strata": within, "all pairs across strata": between,
            "heads of one layer": same_layer}


@torch.no_grad()
def sasrec_position_profile(sasrec: torch.nn.Module, histories: Sequence[np.ndarray],
                            max_items: int, device: torch.device | str = "cpu") -> np.ndarray:
    """SASRec's top-block attention from the last position over each history's last
    ``max_items`` items, heads averaged, renormalised, most recent first, mean over histories."""
    seqs = pad_sequences([h[-max_items:] for h in histories], sasrec.max_len).to(device)
    _, maps = sasrec(seqs, return_attention=True)
    last = maps[-1][:, :, -1, -max_items:].mean(1).flip(-1).cpu()      # most recent first
    return (last / last.sum(-1, keepdim=True)).mean(0).numpy()


def recency_table(profiles: dict[str, np.ndarray], reference: np.ndarray) -> dict[str, dict]:
    """Per model: the share on the most recent item and the Pearson r of its profile with
    ``reference`` (SASRec's)."""
    return {name: {"most recent item": float(p[0]),
                   "pearson r with SASRec": float(np.corrcoef(p, reference)[0, 1])}
            for name, p in profiles.items()}
