"""LANCER: LANguage modeling for Content-Enriched Recommendation (Jiang et al., 2023).

A frozen causal LM learns domain knowledge through a trainable prefix (the *knowledge prompt*,
eq. 1-4), an attention layer mixes that knowledge with the user's history into a per-user
prefix (the *reasoning prompt*, eq. 5), the LM generates the next title with beam search
(eq. 6-7), and every generated text is mapped to a catalogue item by the cosine similarity
of max-pooled token embeddings (eq. 8-9).

Pieces (all prefixes are per-layer key/value pairs handed to the LM as a ``DynamicCache``):

* :class:`PrefixEncoder`: ``n`` virtual tokens -> ``Emb`` -> MLP (Linear, Tanh, Linear) ->
  one key and one value per layer and virtual token (eq. 1-2);
* :class:`ReasoningPrompt`: the history item representations ``H`` are the queries, the
  knowledge tokens ``Emb(s)`` the keys and values; ``tanh(W_r A + b_r)`` (eq. 5, plus a
  residual from the query, our choice) is expanded by an MLP into one prefix slot per
  history item;
* :class:`LANCER`: the LM forward under a prefix, the LM loss on completion tokens only
  (padding and prompt excluded), the item representation ``h_i`` (last-layer hidden state
  at the last *real* token of the item text under the knowledge prefix: not the embedding
  layer and not a padding position, which is the public code's bug), and a beam search
  that shares one prompt pre-fill between the beams.

Defaults (commented where they differ from the public code): 20 knowledge tokens, MLP
width 256, attention width 256, dropout 0.2 on the prefixes, one SmolLM2 copy shared by
the knowledge and reasoning roles (the public code holds two GPT-2 copies; the knowledge
role is the frozen LM, the reasoning role adds LoRA in stage 2).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from recutils.data.text import readable_title
from recutils.decoding import TokenTrie
from recutils.progress import track

# --- text -----------------------------------------------------------------------------------

ARROW = " ->"
PROMPT_HEAD = "A user watched the following movies :"
PROMPT_TAIL = " ... now the user may want to watch :"
# A real sentence whose keys/values (read by the frozen LM) initialise both prefixes, so the
# LM starts from a state it knows instead of random keys/values (ours; see LANCER.anchor).
ANCHOR_TEXT = ("Here is a list of movies that people watched, one after another. Each movie "
               "has a title, a year of release and its genres, such as comedy, drama, action "
               "or romance, and people who like one movie often like similar movies.")


def item_title(title: str) -> str:
    """The title the LM learns to write: the readable form ("The Usual Suspects")."""
    return readable_title(title).strip()


def knowledge_prompt(title: str, year, genres: Sequence[str], description: str = "",
                     max_desc_words: int = 24) -> tuple[str, str]:
    """(prompt, completion) for knowledge training: content text -> the title (eq. 4).

    ``"{description} : genres : {genres} : released in {year} : title :"`` then
    ``" {title}"``; empty fields are left out (ML-100k has no description). The year follows
    "in", never the " :" that precedes the title: an LM trained on "year : 1995" learns to
    write numbers after " :" and so would start titles with years.
    """
    parts = []
    if description:
        parts.append(" ".join(description.split()[:max_desc_words]))
    if len(genres):
        parts.append("genres : " + ", ".join(genres))
    if year is not None and not (isinstance(year, float) and math.isnan(year)) and str(year) != "<NA>":
        parts.append(f"released in {int(year)}")
    return " : ".join(parts + ["title :"]), " " + item_title(title)


def history_prompt(titles: Sequence[str], genres: Sequence[Sequence[str]], max_genres: int = 2,
                   ) -> str:
    """The reasoning input: ``"A user watched ... : genres : title -> ... now the user may want to watch :"``."""
    if len(titles) != len(genres):
        raise ValueError(f"{len(titles)} titles but {len(genres)} genre lists")
    steps = [f" {'/'.join(list(g)[:max_genres]) or 'unknown'} : {item_title(t)}"
             for t, g in zip(titles, genres)]
    return PROMPT_HEAD + ARROW.join(steps) + PROMPT_TAIL


def first_item(text: str) -> str:
    """Keep the first generated item of a beam (the text before any ``->``)."""
    return text.split("->")[0].split("\n")[0].strip(" :.")


# --- prefixes as per-layer key/value pairs -------------------------------------------------------

def kv_shape(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a causal LM config (Llama, GPT-2, ...)."""
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return layers, kv_heads, head_dim


def split_layers(flat: torch.Tensor, config) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[B, P, 2 * layers * kv_heads * head_dim] -> per layer (key, value), each [B, kv_heads, P, head_dim]."""
    layers, kv_heads, head_dim = kv_shape(config)
    b, p, width = flat.shape
    if width != 2 * layers * kv_heads * head_dim:
        raise ValueError(f"prefix width {width} does not match 2 x {layers} layers x {kv_heads} "
                         f"heads x {head_dim}")
    x = flat.view(b, p, layers, 2, kv_heads, head_dim).permute(2, 3, 0, 4, 1, 5)
    return [(x[layer, 0], x[layer, 1]) for layer in range(layers)]


def join_layers(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Inverse of :func:`split_layers`: per layer (key, value) [B, H, P, D] -> [B, P, width]."""
    x = torch.stack([torch.stack([k, v]) for k, v in pairs])          # [L, 2, B, H, P, D]
    b, p = x.shape[2], x.shape[4]
    return x.permute(2, 4, 0, 1, 3, 5).reshape(b, p, -1)


def cache_pairs(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (key, value) tensors of every layer of a ``DynamicCache``."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def make_cache(flat: torch.Tensor, config):
    """A ``DynamicCache`` holding the prefix (fresh for every forward: the LM appends to it)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for layer, (k, v) in enumerate(split_layers(flat, config)):
        cache.update(k.contiguous(), v.contiguous(), layer)
    return cache


class PrefixEncoder(nn.Module):
    """Knowledge prompt (eq. 1): ``n`` virtual tokens -> Emb -> MLP -> per-layer key/value pairs.

    The prefix is ``base + MLP(Emb(s))``: ``base`` holds keys/values the frozen LM itself
    computed for a real sentence and the MLP's last layer starts at zero (:meth:`LANCER.anchor`),
    so at step 0 the LM reads the prefix like text it has seen, not random keys/values
    (which raise the title NLL: the reason of this design).
    """

    def __init__(self, config, n_tokens: int = 20, mlp_hidden: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        layers, kv_heads, head_dim = kv_shape(config)
        width = 2 * layers * kv_heads * head_dim
        self.n_tokens = n_tokens
        self.embedding = nn.Embedding(n_tokens, config.hidden_size)  # Emb(s^(k))
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.mlp = nn.Sequential(nn.Linear(config.hidden_size, mlp_hidden), nn.Tanh(),
                                 nn.Linear(mlp_hidden, width))
        self.base = nn.Parameter(torch.zeros(n_tokens, width))  # set by LANCER.anchor
        self.dropout = nn.Dropout(dropout)

    def tokens(self) -> torch.Tensor:
        """The knowledge token embeddings [n, hidden] (keys and values of the reasoning attention)."""
        return self.embedding.weight

    def forward(self, batch_size: int) -> torch.Tensor:
        """[batch_size, n, 2 * layers * kv_heads * head_dim]."""
        flat = self.base + self.dropout(self.mlp(self.embedding.weight))
        return flat.unsqueeze(0).expand(batch_size, -1, -1)


class ReasoningPrompt(nn.Module):
    """Reasoning prompt (eq. 5): history representations attend to the knowledge tokens.

    Queries ``W_q H`` (one per history item), keys ``W_k E`` and values ``W_v E`` from the
    knowledge token embeddings ``E``; ``A = softmax(QK^T / sqrt(d)) V``;
    ``psi = tanh(W_r (A + Q) + b_r)`` (the ``+ Q`` residual is ours: without it every slot is
    a mixture of the same ``n`` vectors), then an MLP gives each history item one prefix
    key/value slot for every layer.
    """

    def __init__(self, config, attn_dim: int = 256, mlp_hidden: int = 256, dropout: float = 0.2,
                 n_slots: int = 10, qk_std: float = 0.03) -> None:
        super().__init__()
        layers, kv_heads, head_dim = kv_shape(config)
        d = config.hidden_size
        width = 2 * layers * kv_heads * head_dim
        self.q, self.k, self.v = nn.Linear(d, attn_dim), nn.Linear(d, attn_dim), nn.Linear(d, attn_dim)
        for lin in (self.q, self.k):  # logits of std ~ (qk_std * sqrt(d)) ** 2: not uniform at start
            nn.init.normal_(lin.weight, std=qk_std)
        self.norm = nn.LayerNorm(d)  # h_i of a 30-layer LM has a large norm
        self.knorm = nn.LayerNorm(d)  # the knowledge tokens live in the LM's embedding space
        self.r = nn.Linear(attn_dim, mlp_hidden)  # W_r, b_r
        self.out = nn.Linear(mlp_hidden, width)
        self.base = nn.Parameter(torch.zeros(n_slots, width))  # slot keys/values at step 0
        self.dropout = nn.Dropout(dropout)

    def forward(self, history: torch.Tensor, knowledge: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """history [B, N, d], knowledge [n, d] -> (prefix [B, N, width], attention [B, N, n])."""
        n = history.shape[1]
        if n > self.base.shape[0]:
            raise ValueError(f"{n} history slots but the reasoning prompt has {self.base.shape[0]}")
        q = self.q(self.norm(history))
        kn = self.knorm(knowledge)
        k, v = self.k(kn), self.v(kn)
        attn = torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), dim=-1)
        psi = torch.tanh(self.r(attn @ v + q))
        return self.base[-n:] + self.dropout(self.out(psi)), attn


# --- the model ------------------------------------------------------------------------------

@dataclass(frozen=True)
class LANCERConfig:
    """LANCER's hyper-parameters (the paper's / public code's value in each comment)."""

    n_prefix: int = 20            # knowledge-prompt virtual tokens n (public code: 20)
    mlp_hidden: int = 256         # hidden width of the prefix MLPs Linear-Tanh-Linear (ours)
    attn_dim: int = 256           # width of the reasoning attention W_q, W_k, W_v (ours)
    dropout: float = 0.2          # dropout on both prefixes (public code: 0.2)
    max_items: int = 10           # history items listed in the reasoning prompt (paper: <= 10)
    max_slots: int | None = None  # last history items that get a reasoning slot (None: all)
    max_genres: int = 3           # genres per history item in the prompt text (ours)
    max_length: int = 512         # token limit of a reasoning example (prompt + title)
    embed_batch: int = 32         # item texts per forward when computing h_i
    beams: int = 10               # beam width w of generation (paper: 10)
    max_new_tokens: int = 32      # generated tokens per beam (public code: 32 per item)
    length_penalty: float = 1.0   # beam score = log-prob / length ** penalty (Hugging Face: 1.0)
    top_k: int = 10               # items in the ranked list (one per finished beam; paper: @10)
    anchor: bool = True           # prefixes start as the LM's keys/values of ANCHOR_TEXT (ours;
    #                               public code: random prefix embeddings)
    qk_std: float = 0.03          # init std of the reasoning attention's W_q, W_k (ours)
    bf16: bool = False            # bf16 autocast of the LM's matmuls (paper: fp32; True at default)
    score_chunk: int = 32         # candidate titles per forward in candidate scoring (ours)


def title_paths(tokenizer, names: Sequence[str]) -> dict[int, list[int]]:
    """Token path of every catalogue item (row = item id; "" = no item): ``" title"`` + eos."""
    return {i: tokenizer(" " + n, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for i, n in enumerate(names) if n}


def title_trie(tokenizer, names: Sequence[str]) -> TokenTrie:
    """The :class:`~recutils.decoding.TokenTrie` over the catalogue titles (done token: eos)."""
    return TokenTrie(title_paths(tokenizer, names), done_token=tokenizer.eos_token_id)


class LANCER(nn.Module):
    """Knowledge prompt + reasoning prompt around a causal LM (frozen unless LoRA is added).

    The paper's two ablations (set up by :mod:`recutils.pipelines.lancer`): without the
    knowledge prompt the reasoning LM's prefix starts from scratch and the item
    representations come from the LM without a prefix; ``use_reasoning=False`` drops the
    per-user reasoning slots (one shared prefix for everybody).
    """

    def __init__(self, lm, tokenizer, config: LANCERConfig | None = None,
                 use_reasoning: bool = True) -> None:
        super().__init__()
        cfg = config or LANCERConfig()
        self.lm, self.tokenizer, self.cfg = lm, tokenizer, cfg
        for p in lm.parameters():
            p.requires_grad_(False)
        self.config = lm.config
        self.knowledge = PrefixEncoder(lm.config, cfg.n_prefix, cfg.mlp_hidden, cfg.dropout)
        self.reasoning = ReasoningPrompt(lm.config, cfg.attn_dim, cfg.mlp_hidden, cfg.dropout,
                                         n_slots=cfg.max_slots or cfg.max_items, qk_std=cfg.qk_std)
        self.use_reasoning = use_reasoning
        self.register_buffer("item_reps", torch.zeros(0), persistent=False)
        if cfg.anchor:
            self.anchor(ANCHOR_TEXT)

    def autocast(self):
        """bf16 autocast on the model's device when ``cfg.bf16`` (a no-op context otherwise)."""
        if not self.cfg.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.knowledge.base.device.type, dtype=torch.bfloat16)

    @torch.no_grad()
    def anchor(self, text: str, init_scale: float = 0.01) -> None:
        """Initialise both prefixes from the frozen LM reading ``text`` (repeated if short).

        Knowledge prefix base = the LM's keys/values of the first ``n`` tokens, knowledge
        token embeddings = those tokens' input embeddings (the LM's embedding space), reasoning
        slot bases = the keys/values of the next tokens. The MLPs' last layers are scaled by
        ``init_scale`` (small, so gradients still reach every layer) and the knowledge base
        absorbs the MLP's initial output: the knowledge prefix at step 0 (without dropout) is
        exactly the cache of a real sentence, each reasoning slot that plus a small term.
        """
        n, s = self.knowledge.n_tokens, self.reasoning.base.shape[0]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = (list(ids) * ((n + s) // len(ids) + 1))[:n + s]
        dev = self.knowledge.base.device
        ids_t = torch.as_tensor([ids], device=dev)
        out = self.lm.base_model(input_ids=ids_t, use_cache=True)
        flat = join_layers(cache_pairs(out.cache)).float()[0]
        self.knowledge.embedding.weight.copy_(self.lm.get_input_embeddings()(ids_t[0, :n]))
        for lin in (self.knowledge.mlp[-1], self.reasoning.out):
            lin.weight.mul_(init_scale)
            lin.bias.zero_()
        self.knowledge.base.copy_(flat[:n] - self.knowledge.mlp(self.knowledge.embedding.weight))
        self.reasoning.base.copy_(flat[n:])

    # --- LM under a prefix ------------------------------------------------------------------
    def _run(self, input_ids, attention_mask, prefix, prefix_mask, cache=None):
        """Base-model forward of text tokens after a prefix; returns (hidden [B, L, d], cache)."""
        full_mask = torch.cat([prefix_mask, attention_mask], dim=1)
        pos = (full_mask.cumsum(1) - 1).clamp(min=0)[:, prefix.shape[1]:]
        if cache is None:
            cache = make_cache(prefix, self.config)
        with self.autocast():
            out = self.lm.base_model(input_ids=input_ids, attention_mask=full_mask,
                                     position_ids=pos, cache=cache, use_cache=True)
        return out.last_hidden_state, out.cache

    def _logp(self, hidden: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            logits = self.lm.get_output_embeddings()(hidden)
        return torch.log_softmax(logits.float(), -1)

    def prefix_lm_loss(self, batch: dict, prefix: torch.Tensor, prefix_mask: torch.Tensor) -> torch.Tensor:
        """Mean next-token NLL over completion tokens (labels != -100): padding never counts."""
        hidden, _ = self._run(batch["input_ids"], batch["attention_mask"], prefix, prefix_mask)
        labels = batch["labels"][:, 1:]
        keep = labels != -100
        if not keep.any():
            raise ValueError("no completion token in the batch: every label is -100")
        with self.autocast():
            logits = self.lm.get_output_embeddings()(hidden[:, :-1][keep])
        return F.cross_entropy(logits.float(), labels[keep])

    def knowledge_prefix(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = self.knowledge(batch_size)
        return prefix, torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)

    def empty_prefix(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A prefix of length 0 (the LM alone)."""
        dev = self.knowledge.base.device
        prefix = torch.zeros(batch_size, 0, self.knowledge.base.shape[1], device=dev)
        return prefix, torch.zeros(prefix.shape[:2], dtype=torch.long, device=dev)

    def user_prefix(self, history_reps: torch.Tensor, history_mask: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The reasoning LM's prefix for a batch of users: [knowledge tokens ; one slot per history item].

        ``history_reps`` [B, N, d] (left-padded), ``history_mask`` [B, N]. Returns (prefix,
        prefix mask, reasoning attention [B, N, n] or None).
        """
        b = history_reps.shape[0]
        parts, masks, attn = [], [], None
        k_prefix, k_mask = self.knowledge_prefix(b)
        parts.append(k_prefix)
        masks.append(k_mask)
        if self.use_reasoning:
            slots, attn = self.reasoning(history_reps, self.knowledge.tokens())
            parts.append(slots)
            masks.append(history_mask.long())
        return torch.cat(parts, 1), torch.cat(masks, 1), attn

    # --- item representations h_i (eq. 3) ----------------------------------------------------
    @torch.no_grad()
    def embed_titles(self, texts: list[str], with_prefix: bool = True,
                     progress: bool = False) -> torch.Tensor:
        """h_i: last-layer hidden state at the last real token of each item text [n, d].

        Texts are left-padded, so the last real token is the last position; the prefix is the
        knowledge prompt (``with_prefix``) or nothing (the no-knowledge ablation).
        """
        was = self.training
        self.eval()
        dev = self.knowledge.base.device
        out, batch_size = [], self.cfg.embed_batch
        for s in track(range(0, len(texts), batch_size), "h_i (item representations)",
                       unit="batch", disable=not progress):
            enc = self.tokenizer(texts[s:s + batch_size], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(dev)
            if self.tokenizer.padding_side != "left":
                raise ValueError("embed_titles needs a left-padding tokenizer")
            b = enc["input_ids"].shape[0]
            prefix, pmask = self.knowledge_prefix(b) if with_prefix else self.empty_prefix(b)
            hidden, _ = self._run(enc["input_ids"], enc["attention_mask"], prefix, pmask)
            out.append(hidden[:, -1].float())
        self.train(was)
        return torch.cat(out)

    # --- reasoning: loss and generation ----------------------------------------------------------
    def reasoning_loss(self, batch: dict) -> torch.Tensor:
        """LM loss of the next title given the history prompt and the user's prefix."""
        prefix, pmask, _ = self.user_prefix(batch["history_reps"], batch["history_mask"])
        return self.prefix_lm_loss(batch, prefix, pmask)

    @torch.no_grad()
    def beam_search(self, batch: dict, trie: TokenTrie,
                    exclude: Sequence[Collection[int]] | None = None,
                    num_beams: int | None = None, max_new_tokens: int | None = None,
                    length_penalty: float | None = None,
                    ) -> tuple[list[list[int]], list[list[str]]]:
        """Beam search (eq. 6-7) constrained to catalogue titles: (items, texts) per user, best first.

        Every step keeps only the tokens that continue some title of ``trie`` whose item is not
        in ``exclude[user]`` (the history), so a beam is a catalogue title or nothing; a beam ends
        at the end-of-text token that closes its first title. Finished beams keep their score;
        the final order is by log-probability / length ** ``length_penalty``. The prompt is
        pre-filled once per user and its cache copied to the beams. Distinct beams are distinct
        token paths, hence distinct items; a beam still unfinished after ``max_new_tokens``
        (default: the longest title) is dropped.
        """
        self.eval()
        w = num_beams or self.cfg.beams
        steps = max_new_tokens or max(self.cfg.max_new_tokens, trie.longest)
        length_penalty = self.cfg.length_penalty if length_penalty is None else length_penalty
        ids, mask = batch["input_ids"], batch["attention_mask"]
        b, dev = ids.shape[0], ids.device
        exclude = [set(e) for e in exclude] if exclude is not None else [set()] * b
        eos = trie.done_token
        prefix, pmask, _ = self.user_prefix(batch["history_reps"], batch["history_mask"])
        hidden, cache = self._run(ids, mask, prefix, pmask)
        logp = self._logp(hidden[:, -1])
        vocab = logp.shape[-1]

        def constrain(lp: torch.Tensor, rows: list[list[int]], owners: list[int]) -> torch.Tensor:
            allowed = torch.zeros_like(lp, dtype=torch.bool)
            for r, (seq, u) in enumerate(zip(rows, owners)):
                allowed[r, trie.allowed(seq, exclude[u])] = True
            return lp.masked_fill(~allowed, float("-inf"))

        logp = constrain(logp, [[]] * b, list(range(b)))
        scores, tokens = logp.topk(min(w, vocab), dim=-1)                        # [B, w]
        seqs = tokens.reshape(b * w, 1)
        scores = scores.reshape(b * w)
        owners = [r // w for r in range(b * w)]
        done = (seqs[:, -1] == eos) | torch.isinf(scores)
        lengths = torch.ones(b * w, device=dev)
        cache.batch_repeat_interleave(w)
        full_mask = torch.cat([pmask, mask], 1).repeat_interleave(w, 0)
        last_pos = (full_mask.cumsum(1) - 1)[:, -1]
        for step in range(1, steps):
            if bool(done.all()):
                break
            full_mask = torch.cat([full_mask, torch.ones_like(full_mask[:, :1])], 1)
            with self.autocast():
                out = self.lm.base_model(input_ids=seqs[:, -1:], attention_mask=full_mask,
                                         position_ids=(last_pos + step).unsqueeze(1),
                                         cache=cache, use_cache=True)
            cache = out.cache
            logp = constrain(self._logp(out.last_hidden_state[:, -1]), seqs.tolist(), owners)
            frozen = torch.full_like(logp, float("-inf"))
            frozen[:, eos] = 0.0
            logp = torch.where(done.unsqueeze(1), frozen, logp)
            cand = (scores.unsqueeze(1) + logp).view(b, w * vocab)
            top, idx = cand.topk(w, dim=-1)
            beam = (idx // vocab) + torch.arange(b, device=dev).unsqueeze(1) * w
            beam, tok = beam.reshape(-1), (idx % vocab).reshape(-1)
            cache.reorder_cache(beam)
            lengths = lengths[beam] + (~done[beam]).float()
            scores = top.reshape(-1)
            done = done[beam] | (tok == eos) | torch.isinf(scores)
            seqs = torch.cat([seqs[beam], tok.unsqueeze(1)], 1)
        final = (scores / lengths.pow(length_penalty)).view(b, w)
        order = final.argsort(dim=1, descending=True)
        rows = seqs.tolist()
        items, texts = [], []
        for u in range(b):
            its, txt = [], []
            for j in order[u].tolist():
                r = u * w + j
                item = trie.item(rows[r]) if bool(done[r]) and not math.isinf(float(scores[r])) else None
                if item is not None and item not in its:
                    its.append(item)
                    txt.append(self.tokenizer.batch_decode([rows[r]], skip_special_tokens=True)[0].strip())
            items.append(its)
            texts.append(txt)
        return items, texts

    def predict(self, batch: dict, trie: TokenTrie,
                exclude: Sequence[Collection[int]] | None = None) -> list[list[int]]:
        """Ranked item ids per user (eq. 6-7 under the catalogue trie; at most ``cfg.top_k``)."""
        return [its[:self.cfg.top_k] for its in self.beam_search(batch, trie, exclude)[0]]

    # --- candidate scoring: log-likelihood of given titles -------------------------------------
    @torch.no_grad()
    def score_candidates(self, batch: dict, candidates: Sequence[Sequence[int]],
                         paths: dict[int, list[int]], reuse_cache: bool = True,
                         chunk: int | None = None) -> list[np.ndarray]:
        """Log-likelihood of each candidate's title (``paths[item]``, eos included) given the
        user's prompt and prefix: one array per user, in ``candidates`` order.

        With ``reuse_cache`` the prompt is encoded once per user and its key/value cache is
        copied to every chunk of candidates (only the title tokens run through the LM);
        without it every candidate re-reads prompt + title (the reference the reuse must match).
        """
        self.eval()
        chunk = chunk or self.cfg.score_chunk
        prefix, pmask, _ = self.user_prefix(batch["history_reps"], batch["history_mask"])
        out = []
        for u, cands in enumerate(candidates):
            keep = batch["attention_mask"][u].bool()
            ids_u = batch["input_ids"][u][keep].unsqueeze(0)
            p_u, m_u = prefix[u:u + 1], pmask[u:u + 1]
            full = torch.cat([m_u, torch.ones_like(ids_u)], 1)
            if reuse_cache:
                hidden, cache = self._run(ids_u, torch.ones_like(ids_u), p_u, m_u)
                first = self._logp(hidden[0, -1])
                pairs = [(k.detach(), v.detach()) for k, v in cache_pairs(cache)]
            scores = []
            for s in range(0, len(cands), chunk):
                part = [paths[int(i)] for i in cands[s:s + chunk]]
                c, t = len(part), max(len(p) for p in part)
                tok = torch.zeros(c, t, dtype=torch.long, device=ids_u.device)
                tmask = torch.zeros(c, t, dtype=torch.long, device=ids_u.device)
                for r, p in enumerate(part):
                    tok[r, :len(p)] = torch.as_tensor(p)
                    tmask[r, :len(p)] = 1
                if reuse_cache:
                    from transformers import DynamicCache

                    cc = DynamicCache(config=self.config)
                    for layer, (k, v) in enumerate(pairs):
                        cc.update(k.expand(c, -1, -1, -1).contiguous(),
                                  v.expand(c, -1, -1, -1).contiguous(), layer)
                    pos = full.sum(1) + torch.arange(t, device=tok.device).unsqueeze(0)
                    with self.autocast():
                        h = self.lm.base_model(input_ids=tok, attention_mask=torch.cat(
                            [full.expand(c, -1), tmask], 1), position_ids=pos.expand(c, -1),
                            cache=cc, use_cache=True).last_hidden_state
                    lp = torch.cat([first.expand(c, 1, -1), self._logp(h[:, :-1])], 1)
                else:
                    seq = torch.cat([ids_u.expand(c, -1), tok], 1)
                    smask = torch.cat([torch.ones_like(ids_u).expand(c, -1), tmask], 1)
                    h, _ = self._run(seq, smask, p_u.expand(c, -1, -1), m_u.expand(c, -1))
                    lp = self._logp(h[:, ids_u.shape[1] - 1:-1])
                tok_lp = lp.gather(2, tok.unsqueeze(2)).squeeze(2)
                scores.append((tok_lp * tmask).sum(1).cpu().numpy())
            out.append(np.concatenate(scores))
        return out

# --- batches ----------------------------------------------------------------------------------

def reasoning_batch(tokenizer, item_reps: torch.Tensor, histories: Sequence[Sequence[int]],
                    titles: Sequence[str], genres: Sequence[Sequence[str]],
                    targets: Sequence[int] | None = None, max_items: int = 10,
                    max_slots: int | None = None, max_length: int = 256) -> dict[str, torch.Tensor]:
    """Tokenised reasoning examples plus the history representations.

    ``histories`` hold item ids (index into ``titles``/``genres``/``item_reps``); with
    ``targets`` the batch has labels (the target title and end-of-text), without them it is
    a generation batch (prompts only). The prompt text lists the last ``max_items`` items;
    the representations (the reasoning prompt's queries) cover the last ``max_slots`` of
    them (all when None), left-padded to the longest history of the batch.
    """
    from recutils.lm import completion_batch

    hists = [list(h)[-max_items:] for h in histories]
    if any(len(h) == 0 for h in hists):
        raise ValueError("every user needs at least one history item")
    prompts = [history_prompt([titles[i] for i in h], [genres[i] for i in h]) for h in hists]
    if targets is None:
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    else:
        completions = [" " + item_title(titles[t]) + tokenizer.eos_token for t in targets]
        batch = completion_batch(tokenizer, prompts, completions, max_length=max_length)
    if max_slots is not None:
        hists = [h[-max_slots:] for h in hists]
    n = max(len(h) for h in hists)
    reps = torch.zeros(len(hists), n, item_reps.shape[1])
    hmask = torch.zeros(len(hists), n, dtype=torch.long)
    for row, h in enumerate(hists):
        reps[row, n - len(h):] = item_reps[torch.as_tensor(h)]
        hmask[row, n - len(h):] = 1
    batch["history_reps"], batch["history_mask"] = reps, hmask
    return batch


# --- item mapping (eq. 8-9) ----------------------------------------------------------------------

@torch.no_grad()
def pooled_token_embeddings(texts: Sequence[str], tokenizer, embedding: nn.Embedding) -> np.ndarray:
    """Max over the token embeddings of each text (eq. 8): [len(texts), d]; "" gives zeros."""
    out = np.zeros((len(texts), embedding.weight.shape[1]), dtype=np.float32)
    for row, t in enumerate(texts):
        ids = tokenizer(" " + t.strip(), add_special_tokens=False)["input_ids"] if t.strip() else []
        if ids:
            e = embedding(torch.as_tensor(ids, device=embedding.weight.device)).float()
            out[row] = e.max(0).values.cpu().numpy()
    return out


def map_generations(generations: Sequence[Sequence[str]], gen_emb: np.ndarray,
                    item_emb: np.ndarray, k: int = 10, per_text: int = 10) -> list[list[int]]:
    """Ranked item lists from beam outputs (eq. 9, duplicates removed).

    ``gen_emb`` holds one row per generated text, users' texts in order (best beam first);
    each text maps to its ``per_text`` nearest items by cosine similarity; the list takes
    every text's nearest item first, then every text's second nearest, ... (no duplicates).
    """
    from recutils.mapping import nearest_items, rank_from_generations

    nearest = nearest_items(gen_emb, item_emb, k=per_text)
    out, row = [], 0
    for texts in generations:
        out.append(rank_from_generations(nearest[row:row + len(texts)], k))
        row += len(texts)
    if row != len(gen_emb):
        raise ValueError(f"{len(gen_emb)} embeddings for {row} generated texts")
    return out
