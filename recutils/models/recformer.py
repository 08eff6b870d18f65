"""A RecFormer-style recommender on a BERT encoder: tokenisation, model, losses, checkpoints.

RecFormer (Li et al., KDD 2023) reads items as text. Each item is a list of ``key value``
attribute pairs ("title Toy Story genres Animation year 1995"); a user's history is the
concatenation of its items, **most recent first**, after one [CLS] token. Two embeddings
are added to the backbone's word embeddings:

* a *role* (token-type) embedding: 0 = [CLS], 1 = attribute key, 2 = attribute value, 3 = pad;
* an *item-position* embedding: 0 for [CLS] and padding, ``k`` for every token of the k-th
  most recent item (1 = the most recent).

Both start at zero, so the untrained model *is* the backbone (the "vanilla" model of the
paper's Fig. 1). The [CLS] output is the user vector; an item vector is the [CLS] output of
the same encoder on that item alone; score = cosine / temperature (:meth:`RecFormer.predict`;
:class:`RecFormerRecommender` gives the evaluator its ``predict(users)``).

Training (Qu et al., RecSys 2024, Sec. 3.1, after RecFormer):

* **pre-training** (:func:`pretrain_loss`): item-item contrastive loss, the next item against
  the other next items of the batch, plus ``mlm_weight`` x masked-language-model loss;
* **fine-tuning stage 1** (:func:`finetune_loss`): all items are re-encoded
  (:func:`encode_items`) into a frozen table at the start of every epoch; the loss is the
  softmax over the whole table.

:func:`example_batches` feeds either stage to :func:`recutils.training.fit`;
:func:`set_trainable_layers` freezes all but chosen layers (the layer-redundancy table).
The attention analyses are in :mod:`recutils.analysis.recformer_attention`, the command
line that redraws attention maps from a checkpoint in :mod:`recutils.recformer_cli`.
``recutils.models.embedding.pca_init`` turns item vectors into an initial item table for
SASRec/BERT4Rec.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recutils.batching import IGNORE_INDEX, collate, seeded_batches, to_device
from recutils.progress import track

CLS, KEY, VALUE, PAD = 0, 1, 2, 3  # token roles


@dataclass(frozen=True)
class RecFormerConfig:
    """RecFormer's hyper-parameters (defaults: this course's CPU setting; RecFormer's in comments)."""

    max_items: int = 20                          # most recent history items read (RecFormer: 50)
    item_tokens: int = 32                        # tokens per item (RecFormer: 32)
    fields: tuple[str, ...] = ("title", "genres")  # item attributes as text (paper: title, brand, category)
    temperature: float = 0.05                    # score = cosine / temperature (RecFormer: 0.05)
    mlm_weight: float = 0.1                      # weight of the MLM loss in pre-training (RecFormer: 0.1)
    mlm_prob: float = 0.15                       # share of value tokens masked (RecFormer: 0.15)
    pooling: str = "cls"                         # item vector: "cls" (RecFormer) or "mean" of the tokens

    def __post_init__(self) -> None:
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")
        if self.max_items < 1 or self.item_tokens < 1:
            raise ValueError(f"need max_items >= 1 and item_tokens >= 1; got {self}")
        object.__setattr__(self, "fields", tuple(self.fields))

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
        rows.append({"input_ids": ids, "roles": roles, "item_positions": pos,
                     "attention_mask": [1] * len(ids)})
    pad = {"input_ids": pad_id, "roles": PAD, "item_positions": 0, "attention_mask": 0}
    return collate(rows, pad, side="right")


def item_batch(item_tokens, items: Iterable[int], cls_id: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Tensors for encoding single items (each one a history of length one)."""
    return sequence_batch(item_tokens, [np.array([int(i)]) for i in items], cls_id, pad_id, max_items=1)


# --- the model --------------------------------------------------------------------------------

class RecFormer(nn.Module):
    """``RecFormer(backbone, RecFormerConfig(...))``: a BERT-like ``backbone`` (``transformers``
    AutoModel) with RecFormer's two extra embeddings."""

    def __init__(self, backbone: nn.Module, config: RecFormerConfig | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        c = self.config = config or RecFormerConfig()
        self.max_items, self.temperature = c.max_items, c.temperature
        hidden = backbone.config.hidden_size
        self.roles = nn.Embedding(4, hidden)
        self.item_positions = nn.Embedding(c.max_items + 1, hidden)
        nn.init.zeros_(self.roles.weight)            # zero: the untrained model is the backbone
        nn.init.zeros_(self.item_positions.weight)
        # MLM head for pre-training, decoder tied to the word embeddings
        self.mlm_transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.mlm_bias = nn.Parameter(torch.zeros(backbone.config.vocab_size))

    @property
    def n_layers(self) -> int:
        return self.backbone.config.num_hidden_layers

    def backbone_output(self, batch: dict[str, torch.Tensor], output_attentions: bool = False):
        """The backbone's output (``transformers`` ModelOutput) on the RecFormer embeddings.

        A Longformer backbone gets global attention on [CLS] (RecFormer's setting); its
        attention weights then come as ``attentions`` (banded, local) and
        ``global_attentions`` (what [CLS] attends to; see
        :func:`recutils.analysis.recformer_attention.cls_attention`).
        """
        words = self.backbone.embeddings.word_embeddings(batch["input_ids"])
        pos = batch["item_positions"].clamp(max=self.max_items)
        x = words + self.roles(batch["roles"]) + self.item_positions(pos)
        extra = {}
        if self.backbone.config.model_type == "longformer":  # RecFormer: global attention on [CLS]
            extra["global_attention_mask"] = (batch["roles"] == CLS).long()
        return self.backbone(inputs_embeds=x, attention_mask=batch["attention_mask"],
                             output_attentions=output_attentions, **extra)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Last hidden states [B, T, H]."""
        return self.backbone_output(batch).last_hidden_state

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[CLS] vectors [B, H]: the user vector of a history, the item vector of a single item."""
        return self.forward(batch)[:, 0]

    def predict(self, batch: dict[str, torch.Tensor], table: torch.Tensor) -> torch.Tensor:
        """Scores [B, n] of a batch of histories against an item ``table`` [n, H]: the cosine
        of the [CLS] user vector and each item vector, divided by the temperature."""
        users = self.encode(batch)
        return F.normalize(users, dim=-1) @ F.normalize(table, dim=-1).T / self.temperature

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlm_transform(hidden) @ self.backbone.embeddings.word_embeddings.weight.T + self.mlm_bias


@torch.no_grad()
def encode_items(model: RecFormer, item_tokens, cls_id: int, pad_id: int, batch_size: int = 256,
                 device: torch.device | str = "cpu", pooling: str | None = None,
                 progress: bool = False) -> torch.Tensor:
    """Item table [n_items + 1, H] (row 0, the padding item, is zero), in eval mode.

    ``pooling`` (default: the model config's) ``"cls"`` is RecFormer's item vector; ``"mean"``
    averages the token outputs (the sentence-transformers way, i.e. plain LM text features).
    ``progress`` reports the batches (:mod:`recutils.progress`).
    """
    pooling = model.config.pooling if pooling is None else pooling
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
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
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


def pretrain_loss(model: RecFormer, batch: dict, mask_id: int) -> torch.Tensor:
    """Item-item contrastive loss on (history, next item) + ``mlm_weight`` x MLM, from one forward.

    As in RecFormer the history is masked first (a share ``mlm_prob`` of its value tokens);
    its [CLS] output is the user vector of the contrastive loss and its masked positions give
    the MLM loss. ``mlm_weight`` and ``mlm_prob`` come from the model's config.
    """
    mlm_weight, mlm_prob = model.config.mlm_weight, model.config.mlm_prob
    history, labels = batch["history"], None
    if mlm_weight:
        history, labels = mask_tokens(history, mask_id, mlm_prob)
    hidden = model(history)
    loss = contrastive_loss(hidden[:, 0], model.encode(batch["item"]), batch["target"], model.temperature)
    if labels is not None and (labels != IGNORE_INDEX).any():
        chosen = labels != IGNORE_INDEX
        loss = loss + mlm_weight * F.cross_entropy(model.mlm_logits(hidden[chosen]), labels[chosen])
    return loss


def finetune_loss(model: RecFormer, batch: dict, table: torch.Tensor) -> torch.Tensor:
    """Softmax over the (frozen) item table; the padding row 0 is never a candidate."""
    logits = model.predict(batch["history"], table)
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits, batch["target"])


def example_batches(examples: list[tuple[int, int]], sequences, item_tokens, cls_id: int, pad_id: int,
                    max_items: int, batch_size: int, seed: int, with_items: bool):
    """``batches(epoch)`` for :func:`recutils.training.fit`: (history, target) batches of the
    ``(user, t)`` examples, shuffled by ``default_rng(seed + epoch)``
    (:func:`recutils.batching.seeded_batches`); ``with_items`` adds the encoded targets."""
    def make(chunk: list[tuple[int, int]]) -> dict:
        hist = [sequences[u][:t] for u, t in chunk]
        target = torch.tensor([int(sequences[u][t]) for u, t in chunk])
        b = {"history": sequence_batch(item_tokens, hist, cls_id, pad_id, max_items), "target": target}
        if with_items:
            b["item"] = item_batch(item_tokens, target.tolist(), cls_id, pad_id)
        return b
    return seeded_batches(examples, batch_size, seed, make)


class RecFormerRecommender:
    """``predict(users)`` for :class:`recutils.evaluation.Evaluator`: each user's history
    (``histories[user]``) scored against a fixed item ``table`` by :meth:`RecFormer.predict`."""

    def __init__(self, model: RecFormer, histories: Sequence[np.ndarray], table: torch.Tensor,
                 item_tokens, cls_id: int, pad_id: int, device: torch.device | str = "cpu") -> None:
        self.model, self.histories, self.table = model, histories, table
        self.item_tokens, self.cls_id, self.pad_id, self.device = item_tokens, cls_id, pad_id, device

    @torch.no_grad()
    def predict(self, users: np.ndarray) -> torch.Tensor:
        """Scores [len(users), n_items + 1] (row 0 of the table is the padding item)."""
        b = sequence_batch(self.item_tokens, [self.histories[u] for u in users], self.cls_id,
                           self.pad_id, self.model.max_items)
        return self.model.predict(to_device(b, self.device), self.table)


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


# --- checkpoints ---------------------------------------------------------

def save_checkpoint(model: RecFormer, path: str | Path, **meta) -> Path:
    """Save weights + settings (plain types only, so ``torch.load(weights_only=True)`` reads it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {**asdict(model.config), "fields": list(model.config.fields)}
    torch.save({"state_dict": model.state_dict(), "config": config, "meta": meta}, path)
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
    if "config" in ckpt:
        config = RecFormerConfig(**ckpt["config"])
    else:  # written before RecFormerConfig: only these two were saved
        config = RecFormerConfig(max_items=ckpt["max_items"], temperature=ckpt["temperature"])
    model = RecFormer(backbone, config)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), tok, meta
