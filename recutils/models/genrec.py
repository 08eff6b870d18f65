"""GenRec: generative sequential recommendation with an encoder-decoder (Cao & Lio, 2024).

The user's history is written as words, ``user_15 item_343 item_52 ...``, and read by a
BART encoder; the decoder writes the next item's word, token by token. Three pieces:

1. **Input embedding** (paper eq. 1-2). The word sequence is wrapped in ``<s> ... </s>`` and
   tokenised; every token gets token + position embedding (BART's own) plus the ID embedding
   of the *word* it belongs to: a user table for the tokens of ``user_15``, a separate item
   table for the tokens of ``item_343`` (the public code looks items up in the user table),
   nothing for special tokens (``<s>``, ``</s>``, ``<mask>``, padding).
2. **Cloze objectives.** Pre-training masks one whole item of a training sequence (one
   ``<mask>`` token replaces the word; with probability ``p_last`` the last one, as in the
   public code, else a uniformly random one) and the decoder writes the masked word.
   Fine-tuning appends ``<mask>`` after the history and the decoder writes the next item.
3. **Inference.** Beam search (20 beams) returning 20 item words. Decoding is constrained
   by a prefix trie of the catalogue's token sequences, so every beam is a real item (the
   public code decodes freely and maps invalid outputs to item 0).

Tokenisers. :class:`DigitPieceTokenizer` is a word-level vocabulary for ID words made
offline: ``item_1234`` -> ``item`` ``_`` ``12`` ``34`` (digits in pieces of two, like the
paper's example of BART's BPE splitting ``item_1234`` into ``item``, ``_``, ``12``, ``34``),
so tokens of one word share the word's ID embedding and the trie has real branching, with
a vocabulary of about 120 tokens. :class:`HFWordTokenizer` wraps a pretrained BPE tokenizer
(``facebook/bart-base`` at ``SCALE="paper"``, which needs a network).

Hyper-parameters live in :class:`GenRecConfig` (defaults: a small BART from scratch; the
paper's values, ``facebook/bart-base``, in the comments). Inference is :meth:`GenRec.predict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recutils.batching import IGNORE_INDEX, collate, pad_rows
from recutils.decoding import TokenTrie


@dataclass(frozen=True)
class GenRecConfig:
    """GenRec's hyper-parameters (defaults: a small BART from scratch; the paper's in comments).

    The sizes shape a from-scratch BART only; a pretrained ``backbone`` keeps its own.
    """

    backbone: str | None = None       # None: BART built from this config (paper: "facebook/bart-base")
    d_model: int = 128                # hidden width (bart-base: 768)
    layers: int = 2                   # encoder layers, and as many decoder layers (bart-base: 6 + 6)
    heads: int = 4                    # attention heads (bart-base: 12)
    ffn: int = 256                    # feed-forward width (bart-base: 3072)
    dropout: float = 0.1              # on hidden states and attention weights (bart-base: 0.1)
    max_positions: int | None = None  # position table; None: fits max_items items (bart-base: 1024)
    max_items: int = 20               # most recent history items in the input (paper: <= 512 tokens)
    p_last: float = 0.3               # pre-training: P(the masked item is the last one) (code: 0.3)
    beams: int = 20                   # beam width = items returned per user (paper: 20; code: 21)

    def __post_init__(self) -> None:
        if self.max_items < 2 or self.beams < 1 or not 0.0 <= self.p_last <= 1.0:
            raise ValueError(f"need max_items >= 2, beams >= 1, 0 <= p_last <= 1; got {self}")


# --- tokenisers -------------------------------------------------------------------------------

class DigitPieceTokenizer:
    """Word-level tokens for ID words: ``user_15`` -> ``user _ 15``; ``item_1234`` -> ``item _ 12 34``.

    Vocabulary: BART's four special tokens (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<mask>`` 3,
    the same ids as BART's), ``user``, ``item``, ``_``, and every digit piece of one or two
    characters (``0``..``9``, ``00``..``99``). Numbers are cut into pieces of ``piece``
    digits from the left, so ``123`` -> ``12 3`` and decoding is concatenation.
    """

    bos_token_id, pad_token_id, eos_token_id, mask_token_id = 0, 1, 2, 3

    def __init__(self, piece: int = 2) -> None:
        self.piece = piece
        self.vocab = ["<s>", "<pad>", "</s>", "<mask>", "user", "item", "_"]
        for width in range(1, piece + 1):
            self.vocab += [str(n).zfill(width) for n in range(10 ** width)]
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.special_ids = {0, 1, 2, 3}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def word_tokens(self, word: str, first: bool = False) -> list[int]:
        """Token ids of one word such as ``item_1234`` (``first`` is unused: no leading space)."""
        prefix, _, number = word.partition("_")
        if prefix not in ("user", "item") or not number.isdigit():
            raise ValueError(f"not an ID word: {word!r} (expected user_<n> or item_<n>)")
        pieces = [number[i:i + self.piece] for i in range(0, len(number), self.piece)]
        return [self.index[prefix], self.index["_"]] + [self.index[p] for p in pieces]

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """The token strings of ``ids`` (for display)."""
        return [self.vocab[int(i)] for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """Tokens back to words: pieces join, a new ``user``/``item`` token starts a new word."""
        words: list[str] = []
        for i in ids:
            i = int(i)
            if i in self.special_ids:
                continue
            tok = self.vocab[i]
            if tok in ("user", "item"):
                words.append(tok)
            elif words:
                words[-1] += tok
        return " ".join(words)


class HFWordTokenizer:
    """The same interface over a pretrained Hugging Face tokenizer (BART's BPE at ``paper`` scale).

    Each word is tokenised on its own, with a leading space except at the start of the text
    (BPE marks word starts), so token-to-word alignment is exact.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.bos_token_id, self.pad_token_id = tokenizer.bos_token_id, tokenizer.pad_token_id
        self.eos_token_id, self.mask_token_id = tokenizer.eos_token_id, tokenizer.mask_token_id
        self.special_ids = set(tokenizer.all_special_ids)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def word_tokens(self, word: str, first: bool = False) -> list[int]:
        return self.tokenizer((word if first else " " + word), add_special_tokens=False)["input_ids"]

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """The token strings of ``ids`` (for display)."""
        return self.tokenizer.convert_ids_to_tokens([int(i) for i in ids])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()


def item_word(item: int) -> str:
    return f"item_{int(item)}"


def user_word(user: int) -> str:
    return f"user_{int(user)}"


# --- batches ----------------------------------------------------------------------------------

def encode_inputs(tokenizer, users: Sequence[int], histories: Sequence[Sequence[int]],
                  mask_at: Sequence[int | None] | None = None, append_mask: bool = False,
                  ) -> dict[str, torch.Tensor]:
    """Encoder inputs ``<s> user_u item_i1 ... </s>`` with per-token user and item ids.

    ``users`` are 0-based user indices (ID embedding row ``u + 1``); ``histories`` item ids
    (row = item id). ``mask_at[b]`` replaces the history item at that index by one
    ``<mask>`` token; ``append_mask`` adds ``<mask>`` after the history (fine-tuning and
    inference). Masked and special tokens get ID 0 (no ID embedding). Right-padded.
    """
    rows, uids, iids = [], [], []
    for b, (u, hist) in enumerate(zip(users, histories)):
        toks, urow, irow = [tokenizer.bos_token_id], [0], [0]
        words = tokenizer.word_tokens(user_word(u), first=True)
        toks += words
        urow += [int(u) + 1] * len(words)
        irow += [0] * len(words)
        masked = None if mask_at is None else mask_at[b]
        for j, item in enumerate(hist):
            if masked is not None and j == masked:
                toks.append(tokenizer.mask_token_id)
                urow.append(0)
                irow.append(0)
                continue
            words = tokenizer.word_tokens(item_word(item))
            toks += words
            urow += [0] * len(words)
            irow += [int(item)] * len(words)
        if append_mask:
            toks.append(tokenizer.mask_token_id)
            urow.append(0)
            irow.append(0)
        toks.append(tokenizer.eos_token_id)
        urow.append(0)
        irow.append(0)
        rows.append(toks)
        uids.append(urow)
        iids.append(irow)
    examples = [{"input_ids": r, "attention_mask": [1] * len(r), "user_ids": ur, "item_ids": ir}
                for r, ur, ir in zip(rows, uids, iids)]
    pads = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0, "user_ids": 0, "item_ids": 0}
    return collate(examples, pads, side="right")


def encode_targets(tokenizer, items: Sequence[int]) -> torch.Tensor:
    """Decoder labels: the tokens of ``item_i`` then ``</s>``, padded with ``IGNORE_INDEX``."""
    rows = [tokenizer.word_tokens(item_word(i), first=True) + [tokenizer.eos_token_id]
            for i in items]
    return pad_rows(rows, IGNORE_INDEX, side="right")


def pretrain_batch(tokenizer, users: Sequence[int], sequences: Sequence[np.ndarray],
                   rng: np.random.Generator, max_items: int, p_last: float = 0.3) -> dict:
    """One cloze pre-training batch: a random window of ``max_items`` items per user, one item masked.

    The masked item is the window's last with probability ``p_last``, else uniform.
    """
    hists, mask_at, targets = [], [], []
    for s in sequences:
        s = np.asarray(s)
        start = int(rng.integers(0, max(1, len(s) - max_items + 1)))
        window = s[start:start + max_items]
        j = len(window) - 1 if rng.random() < p_last else int(rng.integers(len(window)))
        hists.append(window)
        mask_at.append(j)
        targets.append(int(window[j]))
    batch = encode_inputs(tokenizer, users, hists, mask_at=mask_at)
    batch["labels"] = encode_targets(tokenizer, targets)
    return batch


def next_item_batch(tokenizer, users: Sequence[int], histories: Sequence[Sequence[int]],
                    targets: Sequence[int] | None, max_items: int) -> dict:
    """Fine-tuning / inference batch: the last ``max_items - 1`` history items, then ``<mask>``."""
    hists = [np.asarray(h)[-(max_items - 1):] for h in histories]
    batch = encode_inputs(tokenizer, users, hists, append_mask=True)
    if targets is not None:
        batch["labels"] = encode_targets(tokenizer, targets)
    return batch


def sample_next_item(sequences: Sequence[np.ndarray], rng: np.random.Generator,
                     ) -> tuple[list[np.ndarray], list[int]]:
    """One (history, next item) pair per sequence, the cut point uniform over positions 1..n-1."""
    hists, targets = [], []
    for s in sequences:
        t = int(rng.integers(1, len(s)))
        hists.append(s[:t])
        targets.append(int(s[t]))
    return hists, targets


# --- constrained decoding ---------------------------------------------------------------------

def item_trie(tokenizer, items: Sequence[int]) -> TokenTrie:
    """A :class:`recutils.decoding.TokenTrie` over the paths ``item_i </s>`` of ``items``.

    After a complete item only padding is allowed; ``item(tokens)`` maps a finished beam
    back to its item id (None for anything else).
    """
    paths = {int(i): tokenizer.word_tokens(item_word(i), first=True) + [tokenizer.eos_token_id]
             for i in items}
    return TokenTrie(paths, done_token=tokenizer.pad_token_id)


# --- the model --------------------------------------------------------------------------------

def bart_config(vocab_size: int, config: GenRecConfig, tokenizer, max_positions: int):
    """A small :class:`transformers.BartConfig` shaped by ``config`` (built locally, no download)."""
    from transformers import BartConfig

    c, tok = config, tokenizer
    return BartConfig(vocab_size=vocab_size, d_model=c.d_model, encoder_layers=c.layers,
                      decoder_layers=c.layers, encoder_attention_heads=c.heads,
                      decoder_attention_heads=c.heads, encoder_ffn_dim=c.ffn, decoder_ffn_dim=c.ffn,
                      dropout=c.dropout, attention_dropout=c.dropout,
                      max_position_embeddings=max_positions,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id,
                      forced_bos_token_id=None, forced_eos_token_id=None)


class GenRec(nn.Module):
    """BART encoder-decoder + user and item ID embeddings, trained with the cloze objectives.

    ``bart`` is a :class:`transformers.BartForConditionalGeneration` (from a config at
    default scale, ``from_pretrained("facebook/bart-base")`` at paper scale). Use
    :func:`build_genrec` to make one from a :class:`GenRecConfig`.
    """

    def __init__(self, bart, tokenizer, n_users: int, n_items: int,
                 config: GenRecConfig | None = None) -> None:
        super().__init__()
        self.config = config or GenRecConfig()
        self.bart, self.tokenizer = bart, tokenizer
        self.n_users, self.n_items, self.max_items = n_users, n_items, self.config.max_items
        d = bart.config.d_model
        # row 0 = "no ID" (special and masked tokens) stays zero; users are shifted by one
        self.user_emb = nn.Embedding(n_users + 1, d, padding_idx=0)
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        for emb in (self.user_emb, self.item_emb):
            nn.init.normal_(emb.weight, 0.0, bart.config.init_std)
            with torch.no_grad():
                emb.weight[0].zero_()
        self.trie = item_trie(tokenizer, range(1, n_items + 1))

    @property
    def device(self) -> torch.device:
        return self.item_emb.weight.device

    def embed(self, batch: dict) -> torch.Tensor:
        """Token embedding + user-ID or item-ID embedding (eq. 2; BART adds the positions)."""
        tokens = self.bart.get_input_embeddings()(batch["input_ids"])
        return tokens + self.user_emb(batch["user_ids"]) + self.item_emb(batch["item_ids"])

    def forward(self, batch: dict, output_attentions: bool = False):
        return self.bart(inputs_embeds=self.embed(batch), attention_mask=batch["attention_mask"],
                         labels=batch.get("labels"), output_attentions=output_attentions)

    def loss(self, batch: dict) -> torch.Tensor:
        """Cross-entropy of the target item's tokens (the decoder is teacher-forced)."""
        return self.forward(batch).loss

    @torch.no_grad()
    def target_nll(self, batch: dict) -> torch.Tensor:
        """Negative log-likelihood of each row's target item word [B] (for model selection)."""
        logits = self.forward(batch).logits
        labels = batch["labels"]
        nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                              reduction="none")
        return nll.sum(1)

    @torch.no_grad()
    def predict(self, batch: dict, beams: int | None = None, k: int | None = None
                ) -> list[list[int]]:
        """Top ``k`` (default: all beams) items per row by trie-constrained beam search, best first.

        ``beams`` defaults to ``config.beams``. Beams are ranked by the summed
        log-probability of their tokens (no length penalty, so an item's score is the
        model's probability of its word).
        """
        beams = beams or self.config.beams
        k = k or beams
        trie = self.trie
        allowed = trie.hf_prefix_fn(prompt_length=1)  # after the decoder start token
        longest = trie.longest
        was_training = self.training
        self.eval()
        out = self.bart.generate(
            inputs_embeds=self.embed(batch), attention_mask=batch["attention_mask"],
            num_beams=beams, num_return_sequences=beams, max_new_tokens=longest + 1,
            prefix_allowed_tokens_fn=allowed, length_penalty=0.0, early_stopping=False,
            do_sample=False, decoder_start_token_id=self.bart.config.decoder_start_token_id)
        self.train(was_training)
        seqs = out.view(len(batch["input_ids"]), beams, -1)[:, :, 1:].tolist()
        ranked = []
        for row in seqs:
            items = []
            for s in row:
                i = trie.item(s)
                if i is not None and i not in items:
                    items.append(i)
            ranked.append(items[:k])
        return ranked


def _pretrained(load, backbone: str):
    """``load()`` without moving the seeded generators; a clear error when offline."""
    from recutils.lm import ModelNotAvailableError
    from recutils.reproducibility import preserved_rng
    try:
        with preserved_rng():  # loading must not move the seeded generators
            return load()
    except (OSError, ValueError) as e:
        raise ModelNotAvailableError(
            f"Could not load {backbone!r} ({type(e).__name__}: {e}). No pretrained BART is "
            "embedded for offline use: SCALE='paper' needs the Hugging Face hub; the default "
            "scale builds a small BART from a config instead.") from e


def make_tokenizer(config: GenRecConfig | None = None):
    """The tokenizer that goes with ``config``: digit pieces from scratch, the backbone's BPE else."""
    config = config or GenRecConfig()
    if config.backbone is None:
        return DigitPieceTokenizer()
    from transformers import AutoTokenizer

    return HFWordTokenizer(_pretrained(lambda: AutoTokenizer.from_pretrained(config.backbone),
                                       config.backbone))


def build_genrec(n_users: int, n_items: int, config: GenRecConfig | None = None,
                 tokenizer=None) -> GenRec:
    """A :class:`GenRec` with a from-scratch BART (``config.backbone`` None) or a pretrained one.

    A pretrained ``backbone`` (e.g. ``"facebook/bart-base"``) needs the Hugging Face hub;
    offline it raises :class:`recutils.lm.ModelNotAvailableError`. ``tokenizer`` defaults
    to :func:`make_tokenizer` of the config.
    """
    from transformers import BartForConditionalGeneration

    config = config or GenRecConfig()
    tokenizer = tokenizer or make_tokenizer(config)
    if config.backbone is None:
        longest = 4 + len(tokenizer.word_tokens(user_word(n_users))) + \
            config.max_items * len(tokenizer.word_tokens(item_word(n_items)))
        positions = config.max_positions or max(64, longest)
        cfg = bart_config(tokenizer.vocab_size, config, tokenizer, positions)
        cfg._attn_implementation = "eager"  # attention weights for the figures
        bart = BartForConditionalGeneration(cfg)
    else:
        bart = _pretrained(lambda: BartForConditionalGeneration.from_pretrained(
            config.backbone, attn_implementation="eager"), config.backbone)
    return GenRec(bart, tokenizer, n_users, n_items, config)


def item_attention(attentions: Sequence[torch.Tensor], item_ids: torch.Tensor,
                   input_ids: torch.Tensor, mask_id: int) -> tuple[np.ndarray, list[str]]:
    """Encoder self-attention of one sequence aggregated from tokens to words.

    ``attentions``: per layer [1, heads, T, T]. Averaged over layers and heads; a word's row
    is the mean over its query tokens, its column the sum over its key tokens. Words are
    the history items (by position) and the ``<mask>`` slot; special and user tokens are
    left out. Returns (matrix [words, words], labels).
    """
    att = torch.stack([a[0] for a in attentions]).mean((0, 1)).cpu().numpy()  # [T, T]
    ids, toks = item_ids[0].tolist(), input_ids[0].tolist()
    groups, labels = [], []
    for t, (i, tok) in enumerate(zip(ids, toks)):
        if i and (groups and labels[-1] == f"item_{i}" and groups[-1][-1] == t - 1):
            groups[-1].append(t)
        elif i:
            groups.append([t])
            labels.append(f"item_{i}")
        elif tok == mask_id:
            groups.append([t])
            labels.append("<mask>")
    m = np.array([[att[np.ix_(q, k)].sum(1).mean() for k in groups] for q in groups])
    return m, labels
