"""A RecFormer-style recommender on a BERT encoder, and the tools of the Elephant paper's analyses.

RecFormer (Li et al., KDD 2023) reads items as text. Each item is a list of ``key value``
attribute pairs ("title Toy Story genres Animation year 1995"); a user's history is the
concatenation of its items, **most recent first**, after one [CLS] token. Two embeddings
are added to the backbone's word embeddings:

* a *role* (token-type) embedding: 0 = [CLS], 1 = attribute key, 2 = attribute value, 3 = pad;
* an *item-position* embedding: 0 for [CLS] and padding, ``k`` for every token of the k-th
  most recent item (1 = the most recent).

Both start at zero, so the untrained model *is* the backbone (the "vanilla" model of the
paper's Fig. 1). The [CLS] output is the user vector; an item vector is the [CLS] output of
the same encoder on that item alone; score = cosine / temperature.

Training (Qu et al., RecSys 2024, Sec. 3.1, after RecFormer):

* **pre-training** (:func:`pretrain_loss`): item-item contrastive loss, the next item against
  the other next items of the batch, plus ``mlm_weight`` x masked-language-model loss;
* **fine-tuning stage 1** (:func:`finetune_loss`): all items are re-encoded
  (:func:`encode_items`) into a frozen table at the start of every epoch; the loss is the
  softmax over the whole table.

:func:`example_batches` feeds either stage to :func:`recutils.training.fit`.

Analyses (Qu et al., Sec. 3): :func:`cls_attention` returns the [CLS] row of every layer's
attention, :func:`attention_per_item` sums it over each item's tokens,
:func:`divergence_matrix` measures how alike layers (or heads) attend, and
:func:`set_trainable_layers` freezes all but chosen layers (the layer-redundancy table).
``recutils.models.embedding.pca_init`` turns item vectors into an initial item table for
SASRec/BERT4Rec.

Defaults::

    backbone: all-MiniLM-L6-v2   # 6 layers x 12 heads, 384-d (paper: Longformer-base, 12 x 12, 768-d)
    max_items: 20                # most recent history items read (RecFormer: 50)
    item_tokens: 32              # tokens per item (RecFormer: 32)
    temperature: 0.05            # cosine / temperature (RecFormer: 0.05)
    mlm_weight: 0.1              # weight of the MLM loss in pre-training (RecFormer: 0.1)
    mlm_prob: 0.15               # share of value tokens masked

Command line: regenerate the attention maps of a saved checkpoint (``build/*.pt``)::

    python -m recutils.models.recformer build/05_recformer_default.pt --user 7 --out maps.png
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recutils.progress import track
from recutils.training import to_device

CLS, KEY, VALUE, PAD = 0, 1, 2, 3  # token roles


# --- text -> tokens ---------------------------------------------------------------------------

def tokenize_items(tokenizer, attributes: Sequence[Sequence[tuple[str, str]]], max_tokens: int = 32,
                   ) -> list[tuple[list[int], list[int]]]:
    """(token ids, roles) of every item, from its ``(key, value)`` pairs, cut to ``max_tokens``.

    Row 0 (the padding item) has no attributes and gives empty lists.
    """
    out = []
    for pairs in attributes:
        ids: list[int] = []
        roles: list[int] = []
        for key, value in pairs:
            k = tokenizer(key, add_special_tokens=False)["input_ids"]
            v = tokenizer(value, add_special_tokens=False)["input_ids"]
            ids += k + v
            roles += [KEY] * len(k) + [VALUE] * len(v)
        out.append((ids[:max_tokens], roles[:max_tokens]))
    return out


def sequence_batch(item_tokens: Sequence[tuple[list[int], list[int]]], histories: Sequence[np.ndarray],
                   cls_id: int, pad_id: int, max_items: int = 20) -> dict[str, torch.Tensor]:
    """Tensors for a batch of histories: [CLS] + the last ``max_items`` items, most recent first.

    Returns ``input_ids``, ``roles``, ``item_positions`` (1 = most recent item, 0 = [CLS]/pad)
    and ``attention_mask``, all [B, T], right-padded. A one-item history is how single items
    are encoded (:func:`item_batch`).
    """
    rows = []
    for hist in histories:
        ids, roles, pos = [cls_id], [CLS], [0]
        recent = list(hist[-max_items:])[::-1] if max_items else []
        for k, item in enumerate(recent, start=1):
            t, r = item_tokens[int(item)]
            ids += t
            roles += r
            pos += [k] * len(t)
        rows.append((ids, roles, pos))
    width = max(len(r[0]) for r in rows)
    batch = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "roles": torch.full((len(rows), width), PAD, dtype=torch.long),
        "item_positions": torch.zeros((len(rows), width), dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
    }
    for i, (ids, roles, pos) in enumerate(rows):
        n = len(ids)
        batch["input_ids"][i, :n] = torch.tensor(ids)
        batch["roles"][i, :n] = torch.tensor(roles)
        batch["item_positions"][i, :n] = torch.tensor(pos)
        batch["attention_mask"][i, :n] = 1
    return batch


def item_batch(item_tokens, items: Iterable[int], cls_id: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Tensors for encoding single items (each one a history of length one)."""
    return sequence_batch(item_tokens, [np.array([int(i)]) for i in items], cls_id, pad_id, max_items=1)


# --- the model --------------------------------------------------------------------------------

class RecFormer(nn.Module):
    """A BERT-like ``backbone`` (``transformers`` AutoModel) with RecFormer's two extra embeddings."""

    def __init__(self, backbone: nn.Module, max_items: int = 20, temperature: float = 0.05) -> None:
        super().__init__()
        self.backbone = backbone
        self.max_items, self.temperature = max_items, temperature
        hidden = backbone.config.hidden_size
        self.roles = nn.Embedding(4, hidden)
        self.item_positions = nn.Embedding(max_items + 1, hidden)
        nn.init.zeros_(self.roles.weight)            # zero: the untrained model is the backbone
        nn.init.zeros_(self.item_positions.weight)
        # MLM head for pre-training, decoder tied to the word embeddings
        self.mlm_transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.mlm_bias = nn.Parameter(torch.zeros(backbone.config.vocab_size))

    @property
    def n_layers(self) -> int:
        return self.backbone.config.num_hidden_layers

    def forward(self, batch: dict[str, torch.Tensor], output_attentions: bool = False):
        """Last hidden states [B, T, H] (and, when asked, one attention tensor [B, heads, T, T] per layer)."""
        words = self.backbone.embeddings.word_embeddings(batch["input_ids"])
        pos = batch["item_positions"].clamp(max=self.max_items)
        x = words + self.roles(batch["roles"]) + self.item_positions(pos)
        extra = {}
        if self.backbone.config.model_type == "longformer":  # RecFormer: global attention on [CLS]
            extra["global_attention_mask"] = (batch["roles"] == CLS).long()
        out = self.backbone(inputs_embeds=x, attention_mask=batch["attention_mask"],
                            output_attentions=output_attentions, **extra)
        return (out.last_hidden_state, out.attentions) if output_attentions else out.last_hidden_state

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[CLS] vectors [B, H]: the user vector of a history, the item vector of a single item."""
        return self.forward(batch)[:, 0]

    def scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Cosine similarity / temperature, [B, n]."""
        return F.normalize(users, dim=-1) @ F.normalize(items, dim=-1).T / self.temperature

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlm_transform(hidden) @ self.backbone.embeddings.word_embeddings.weight.T + self.mlm_bias


@torch.no_grad()
def encode_items(model: RecFormer, item_tokens, cls_id: int, pad_id: int, batch_size: int = 256,
                 device: torch.device | str = "cpu", pooling: str = "cls",
                 progress: bool = False) -> torch.Tensor:
    """Item table [n_items + 1, H] (row 0, the padding item, is zero), in eval mode.

    ``pooling="cls"`` is RecFormer's item vector; ``"mean"`` averages the token outputs (the
    sentence-transformers way, i.e. plain LM text features). ``progress`` reports the batches
    (:mod:`recutils.progress`).
    """
    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
    was_training = model.training
    model.eval()
    ids = np.arange(1, len(item_tokens))
    out = [torch.zeros(1, model.backbone.config.hidden_size, device=device)]
    for s in track(range(0, len(ids), batch_size), "encode items", unit="batch",
                   disable=not progress):
        b = to_device(item_batch(item_tokens, ids[s:s + batch_size], cls_id, pad_id), device)
        if pooling == "cls":
            out.append(model.encode(b))
        else:
            mask = b["attention_mask"].unsqueeze(-1).float()
            out.append((model(b) * mask).sum(1) / mask.sum(1))
    model.train(was_training)
    return torch.cat(out)


def contrastive_loss(users: torch.Tensor, items: torch.Tensor, targets: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """In-batch item-item contrastive loss: row b's positive is ``items[b]``, the rest negatives.

    A negative that is the same item as the positive (two users with one next item) is
    left out, so it is not pushed away from itself.
    """
    logits = F.normalize(users, dim=-1) @ F.normalize(items, dim=-1).T / temperature
    same = (targets[:, None] == targets[None, :]) & ~torch.eye(len(targets), dtype=torch.bool,
                                                                   device=targets.device)
    logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(targets), device=targets.device))


def mask_tokens(batch: dict[str, torch.Tensor], mask_id: int, prob: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Replace a share ``prob`` of the *value* tokens by [MASK]; labels are -100 elsewhere."""
    ids = batch["input_ids"]
    draw = torch.rand(ids.shape, generator=generator).to(ids.device)
    chosen = (draw < prob) & (batch["roles"] == VALUE)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return {**batch, "input_ids": ids.masked_fill(chosen, mask_id)}, labels


# --- training stages (driven by recutils.training.fit) -----------------------------------------

def training_examples(sequences: Sequence[np.ndarray], per_user: int = 1, min_history: int = 1,
                      seed: int = 0) -> list[tuple[int, int]]:
    """(user, t) pairs: predict ``sequences[user][t]`` from the items before it.

    Always the last position of each (training) sequence, plus ``per_user - 1`` random
    earlier ones; positions with fewer than ``min_history`` items before them are skipped.
    """
    rng = np.random.default_rng(seed)
    out = []
    for u, s in enumerate(sequences):
        ts = np.arange(min_history, len(s))
        if not len(ts):
            continue
        pick = [ts[-1]] + list(rng.choice(ts[:-1], size=min(per_user - 1, len(ts) - 1), replace=False))
        out += [(u, int(t)) for t in pick]
    return out


def pretrain_loss(model: RecFormer, batch: dict, mask_id: int, mlm_weight: float = 0.1,
                  mlm_prob: float = 0.15) -> torch.Tensor:
    """Item-item contrastive loss on (history, next item) + ``mlm_weight`` x MLM, from one forward.

    As in RecFormer the history is masked first; its [CLS] output is the user vector of the
    contrastive loss and its masked positions give the MLM loss.
    """
    history, labels = batch["history"], None
    if mlm_weight:
        history, labels = mask_tokens(history, mask_id, mlm_prob)
    hidden = model(history)
    loss = contrastive_loss(hidden[:, 0], model.encode(batch["item"]), batch["target"], model.temperature)
    if labels is not None and (labels != -100).any():
        chosen = labels != -100
        loss = loss + mlm_weight * F.cross_entropy(model.mlm_logits(hidden[chosen]), labels[chosen])
    return loss


def finetune_loss(model: RecFormer, batch: dict, table: torch.Tensor) -> torch.Tensor:
    """Softmax over the (frozen) item table; the padding row 0 is never a candidate."""
    logits = model.scores(model.encode(batch["history"]), table)
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits, batch["target"])


def example_batches(examples: list[tuple[int, int]], sequences, item_tokens, cls_id: int, pad_id: int,
                    max_items: int, batch_size: int, seed: int, with_items: bool):
    """``batches(epoch)`` for :func:`recutils.training.fit`: shuffled (history, target) batches."""
    def batches(epoch: int):
        order = np.random.default_rng(seed + epoch).permutation(len(examples))
        for s in range(0, len(order), batch_size):
            chunk = [examples[i] for i in order[s:s + batch_size]]
            hist = [sequences[u][:t] for u, t in chunk]
            target = torch.tensor([int(sequences[u][t]) for u, t in chunk])
            b = {"history": sequence_batch(item_tokens, hist, cls_id, pad_id, max_items), "target": target}
            if with_items:
                b["item"] = item_batch(item_tokens, target.tolist(), cls_id, pad_id)
            yield b
    return batches


def recformer_scorer(model: RecFormer, histories: Sequence[np.ndarray], table: torch.Tensor, item_tokens,
                     cls_id: int, pad_id: int, device: torch.device | str = "cpu"):
    """A ``score_fn`` for :class:`recutils.evaluation.Evaluator` (cosine / temperature over ``table``)."""
    def score(users: np.ndarray) -> torch.Tensor:
        b = sequence_batch(item_tokens, [histories[u] for u in users], cls_id, pad_id, model.max_items)
        with torch.no_grad():
            return model.scores(model.encode(to_device(b, device)), table)
    return score


def set_trainable_layers(model: RecFormer, layers: Iterable[int] | str | None) -> list[nn.Parameter]:
    """Train only the chosen encoder layers (and RecFormer's own role/item-position embeddings).

    ``"all"`` trains every backbone weight too (word/position embeddings included); ``None`` or
    an empty list trains nothing. The MLM head is never trained here. Returns the trainable
    parameters.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    if layers is None or (not isinstance(layers, str) and not list(layers)):
        return []
    if layers == "all":
        params = list(model.backbone.parameters())
    else:
        layers = list(layers)
        bad = [i for i in layers if not 0 <= i < model.n_layers]
        if bad:
            raise ValueError(f"layers {bad} do not exist; the backbone has {model.n_layers}")
        params = [p for i in layers for p in model.backbone.encoder.layer[i].parameters()]
    params += list(model.roles.parameters()) + list(model.item_positions.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


# --- attention analyses -----------------------------------------------------------------------

@torch.no_grad()
def cls_attention(model: RecFormer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Attention of [CLS] to every token: [B, layers, heads, T] (each row sums to 1 over real tokens).

    Switches the backbone to eager attention for the call (fused kernels return no weights).
    """
    was_training, impl = model.training, model.backbone.config._attn_implementation
    model.eval()
    if impl != "eager":  # fused attention kernels return no weights
        model.backbone.set_attn_implementation("eager")
    try:
        _, atts = model(batch, output_attentions=True)
    finally:
        model.train(was_training)
        if impl != "eager":
            model.backbone.set_attn_implementation(impl)
    if atts is None or any(a is None for a in atts):
        raise RuntimeError("the backbone returned no attention weights (it needs eager attention)")
    return torch.stack([a[:, :, 0, :] for a in atts], dim=1)


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


# --- checkpoints and the command line ---------------------------------------------------------

def save_checkpoint(model: RecFormer, path: str | Path, **meta) -> Path:
    """Save weights + settings (plain types only, so ``torch.load(weights_only=True)`` reads it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "max_items": model.max_items,
                "temperature": model.temperature, "meta": meta}, path)
    return path


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu"):
    """(model, tokenizer, meta) from :func:`save_checkpoint`; the backbone loads with eager attention."""
    from recutils.lm import load_text_encoder

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no RecFormer checkpoint at {path}. Notebook 05 writes one at "
            "build/05_recformer_<scale>.pt (run `make notebook NB=05`, about 8 minutes), or save "
            "your own with recutils.models.recformer.save_checkpoint.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        meta = ckpt["meta"]
    except Exception as e:  # not a torch file, a truncated one, or another kind of checkpoint
        raise ValueError(f"{path} is not a checkpoint written by save_checkpoint "
                         f"({type(e).__name__}: {e})") from e
    backbone, tok = load_text_encoder(meta.get("backbone", "all-MiniLM-L6-v2"), output_attentions=True)
    model = RecFormer(backbone, max_items=ckpt["max_items"], temperature=ckpt["temperature"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), tok, meta


def instance_maps(model: RecFormer, item_tokens, history: np.ndarray, cls_id: int, pad_id: int,
                  n_items: int = 3, device: torch.device | str = "cpu"):
    """[CLS] attention [layers, heads, T] for the last ``n_items`` items of one history, and the
    token index where each item starts (for the boundaries of the plot)."""
    b = sequence_batch(item_tokens, [history[-n_items:]], cls_id, pad_id, n_items)
    att = cls_attention(model, to_device(b, device))[0].cpu().numpy()
    pos = b["item_positions"][0].numpy()
    starts = [int(np.argmax(pos == k)) for k in range(1, pos.max() + 1)]
    return att, starts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Draw [CLS] attention maps (vanilla backbone vs a "
                                             "checkpoint) for one user, as in Fig. 1 of Qu et al.")
    ap.add_argument("checkpoint", help="a file written by save_checkpoint (e.g. build/05_recformer_default.pt)")
    ap.add_argument("--user", default="7", help="raw user id of the dataset (default 7)")
    ap.add_argument("--items", type=int, default=3, help="most recent history items shown (default 3)")
    ap.add_argument("--out", default="maps.png", help="output image (default maps.png)")
    ap.add_argument("--no-vanilla", action="store_true", help="draw only the checkpoint's maps")
    args = ap.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    from recutils.data import item_attributes, load, prepare
    from recutils.lm import load_text_encoder
    from recutils.plots import attention_comparison

    try:
        model, tok, meta = load_checkpoint(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data = prepare(load(meta.get("dataset", "ml-100k")), min_user=meta.get("min_user", 0),
                   min_item=meta.get("min_item", 0), max_len=meta.get("max_len"))
    users = {str(u): i for i, u in enumerate(data.user_ids)}
    if str(args.user) not in users:
        raise SystemExit(f"user {args.user!r} is not in {data.name} (raw ids such as {data.user_ids[0]!r})")
    history = data.inputs("test")[users[str(args.user)]]
    tokens = tokenize_items(tok, item_attributes(data.items, tuple(meta.get("fields", ("title", "genres", "year")))),
                            meta.get("item_tokens", 32))
    maps = {}
    if not args.no_vanilla:
        vanilla = RecFormer(load_text_encoder(meta.get("backbone", "all-MiniLM-L6-v2"), output_attentions=True)[0],
                            max_items=model.max_items)
        maps["vanilla backbone"], starts = instance_maps(vanilla, tokens, history, tok.cls_token_id,
                                                         tok.pad_token_id, args.items)
    maps[meta.get("label", "checkpoint")], starts = instance_maps(model, tokens, history, tok.cls_token_id,
                                                                  tok.pad_token_id, args.items)
    names = [data.titles([i])[0] for i in history[-args.items:][::-1]]
    fig = attention_comparison(maps, starts, item_names=names,
                               title=f"[CLS] attention, user {args.user} (most recent item first)")
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
