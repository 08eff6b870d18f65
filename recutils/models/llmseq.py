"""Harte et al. (RecSys 2023): three ways to use LLM item-name embeddings for sequential recs.

* **LLMSeqSim** (:class:`LLMSeqSim`): embed every item name with a sentence encoder, combine
  the embeddings of the user's history into one session vector, rank every item by its
  similarity to that vector, never recommending an item the user already has.
* **LLMSeqPrompt** (:class:`LLMSeqPrompt`): fine-tune a causal LM (LoRA) on prompts that
  list the history titles and end with a separator; the completion is the next title.
  Generated titles are mapped to the nearest catalogue items by embedding, so invented
  titles (hallucinations) and duplicates still give a ranked list of real items.
* **LLM2SASRec / LLM2BERT4Rec** (:func:`llm2sasrec`, :func:`llm2bertrec`): the usual
  ID-based model whose item table starts from the PCA of the item-name embeddings
  (:func:`pca_init`) and keeps training; BERT4Rec's [MASK] row stays random.

Hyper-parameters live in :class:`LLMSeqSimConfig` and :class:`LLMSeqPromptConfig` (a
comment per field, the paper's value in brackets). Outside them (the paper's in brackets)::

    encoder: all-MiniLM-L6-v2, 384-d        [OpenAI text-embedding-ada-002, 1536-d]
    lm: SmolLM2-135M-Instruct + LoRA         [OpenAI ada/GPT-3.5 fine-tuning API]
    pca std: 0.02, the scale of random init  [PCA output written as is]

Inference is ``predict(histories)`` for both: scores over all items (LLMSeqSim) or one
ranked list of item ids per history (LLMSeqPrompt; ``generate`` gives its raw texts).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from recutils.batching import IGNORE_INDEX, seeded_subset, to_device
from recutils.decoding import TokenTrie
from recutils.mapping import TitleIndex, nearest_items, rank_from_generations
from recutils.models.bert4rec import BERT4Rec, BERT4RecConfig
from recutils.models.embedding import pca_init
from recutils.models.sasrec import SASRec, SASRecConfig

COMBINATIONS = ("last", "mean", "linear", "harmonic", "exponential")
SIMILARITIES = ("cosine", "dot")


# --- evaluation users of the paper's temporal split ---------------------------------------

def latest_users(data, share: float | None = None) -> np.ndarray:
    """Users whose last interaction is among the latest ``share`` of users (all when None).

    Harte et al. hold out the most recent 20% of sessions as test sessions; with one
    sequence per user, evaluating on the users that ended latest is the closest match
    under the leave-one-out split.
    """
    if share is None:
        return np.arange(data.n_users)
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    last = np.array([t[-1] for t in data.timestamps])
    n = max(1, int(round(share * data.n_users)))
    return np.sort(np.argsort(-last, kind="stable")[:n])


# --- LLMSeqSim -------------------------------------------------------------------------------

def recency_weights(n: int, combine: str, decay: float = 0.8) -> np.ndarray:
    """Weights of the ``n`` history items, oldest first, summing to 1.

    ``last``: only the most recent item; ``mean``: uniform; ``linear``: w_j proportional to
    j (1..n); ``harmonic``: to 1 / (n - j + 1), i.e. 1, 1/2, 1/3 ... counted from the most
    recent item; ``exponential``: to ``decay ** (n - j)``.
    """
    if combine not in COMBINATIONS:
        raise ValueError(f"combine must be one of {COMBINATIONS}, got {combine!r}")
    if n < 1:
        raise ValueError("a session needs at least one item")
    j = np.arange(1, n + 1, dtype=np.float64)
    w = {"last": (j == n).astype(np.float64), "mean": np.ones(n), "linear": j,
         "harmonic": 1.0 / (n - j + 1), "exponential": decay ** (n - j)}[combine]
    return w / w.sum()


def session_embeddings(histories: Sequence[Sequence[int]], item_emb: np.ndarray | torch.Tensor,
                       combine: str = "last", decay: float = 0.8,
                       max_items: int | None = None) -> torch.Tensor:
    """One vector per history: the weighted mean of its items' embeddings [len(histories), d].

    ``item_emb`` has one row per item id (row 0 = padding). ``max_items`` keeps only the
    most recent items of each history.
    """
    emb = torch.as_tensor(np.asarray(item_emb), dtype=torch.float32)
    out = torch.zeros(len(histories), emb.shape[1])
    for row, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)
        if max_items:
            h = h[-max_items:]
        w = torch.as_tensor(recency_weights(len(h), combine, decay), dtype=torch.float32)
        out[row] = w @ emb[torch.as_tensor(h)]
    return out


@dataclass(frozen=True)
class LLMSeqSimConfig:
    """How :class:`LLMSeqSim` turns a session into scores (nothing is trained)."""

    combine: str = "last"         # session vector from its items (COMBINATIONS) ["last" best
                                  # on Beauty; mean and recency-weighted means also tried]
    similarity: str = "cosine"    # "cosine" | "dot" [cosine, dot and euclidean tried]
    decay: float = 0.8            # weight per step back for combine="exponential"
    max_items: int | None = None  # only the most recent items of a session; None: all [all]
    exclude_seen: bool = True     # never recommend an item of the session [excluded]

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        recency_weights(1, self.combine)  # validates ``combine``


class LLMSeqSim:
    """Rank all items by their similarity to the session embedding (no training).

    >>> sim = LLMSeqSim(item_emb, LLMSeqSimConfig(combine="last"))
    >>> scores = sim.predict([[3, 8, 5]])    # [1, n_items + 1], seen items and padding -inf

    ``predict`` takes histories (item ids), not user indices: wrap it (e.g. ``lambda users:
    sim.predict([inputs[u] for u in users])``) to hand it to an ``Evaluator``.
    """

    def __init__(self, item_emb: np.ndarray | torch.Tensor,
                 config: LLMSeqSimConfig | None = None) -> None:
        self.config = config or LLMSeqSimConfig()
        self.item_emb = torch.as_tensor(np.asarray(item_emb), dtype=torch.float32)

    def predict(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Scores [len(histories), n_items + 1]; padding and (by default) seen items get -inf."""
        c = self.config
        s = session_embeddings(histories, self.item_emb, c.combine, c.decay, c.max_items)
        e = self.item_emb
        if c.similarity == "cosine":
            s, e = F.normalize(s, dim=-1), F.normalize(e, dim=-1)
        scores = s @ e.T
        scores[:, 0] = float("-inf")
        if c.exclude_seen:
            for row, h in enumerate(histories):
                scores[row, torch.as_tensor(np.asarray(h, dtype=np.int64))] = float("-inf")
        return scores


# --- LLM2SASRec / LLM2BERT4Rec ---------------------------------------------------------------

def llm2sasrec(item_emb: np.ndarray, config: SASRecConfig | None = None,
               std: float | None = 0.02) -> SASRec:
    """SASRec whose item table starts from the PCA of LLM item embeddings (trainable)."""
    config = config or SASRecConfig()
    return SASRec(len(item_emb) - 1, config, item_init=pca_init(item_emb, config.hidden, std))


def llm2bertrec(item_emb: np.ndarray, config: BERT4RecConfig | None = None,
                std: float | None = 0.02) -> BERT4Rec:
    """LLM2BERT4Rec: BERT4Rec with a PCA-initialised item table; the [MASK] row stays random."""
    config = config or BERT4RecConfig()
    return BERT4Rec(len(item_emb) - 1, config, item_init=pca_init(item_emb, config.hidden, std))


# --- LLMSeqPrompt ----------------------------------------------------------------------------

SEPARATOR = "\n\n###\n\n"  # ends every prompt (the paper's prompt/completion separator)
_NUMBERING = re.compile(r"^\s*\d+\.\s+")
_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
# What each completion token is: the title's words, its year "(1995)", the end marker.
TITLE, YEAR, END = 1, 2, 3
PARTS = {"title": TITLE, "year": YEAR, "end": END}


def completion_parts(tokenizer, title: str, end: str) -> list[int]:
    """The part (TITLE, YEAR or END) of every token of the completion ``title + end``.

    The words are the title without a trailing ``(year)``. When the tokens of the words (or
    of the title) are not a prefix of the completion's tokens, the boundary cannot be drawn
    and those tokens count as TITLE.
    """
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    full, with_year = ids(title + end), ids(title)
    words = ids(_YEAR.sub("", title))
    if full[:len(with_year)] != with_year:
        return [TITLE] * len(full)
    n_words = len(words) if with_year[:len(words)] == words else len(with_year)
    return ([TITLE] * n_words + [YEAR] * (len(with_year) - n_words)
            + [END] * (len(full) - len(with_year)))


def part_losses(logits: torch.Tensor, labels: torch.Tensor, parts: torch.Tensor
                ) -> dict[str, torch.Tensor]:
    """Next-token cross-entropy of the completion: "loss" over every labelled token (as the LM's
    own loss), and its mean over the TITLE, YEAR and END tokens apart (NaN for an absent part).

    ``logits`` [B, T, V] predict position t + 1 from t; ``labels`` [B, T] hold -100 outside
    the completion; ``parts`` [B, T] the part of each labelled token (0 elsewhere).
    """
    logits, labels, parts = logits[:, :-1].float(), labels[:, 1:], parts[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                          reduction="none")
    keep = labels != IGNORE_INDEX
    out = {"loss": nll[keep].mean()}
    for name, code in PARTS.items():
        m = keep & (parts == code)
        out[name] = nll[m].mean() if bool(m.any()) else torch.tensor(float("nan"))
    return out


def clean_generation(text: str) -> str:
    """Drop a list number the LM may echo from the prompt ("11. Heat (1995)" -> "Heat (1995)")."""
    return _NUMBERING.sub("", text.strip(), count=1).strip()


def seq_prompt(titles: Sequence[str], max_items: int | None = 10) -> str:
    """The numbered history, most recent last, then the separator: ``"1. A\\n2. B\\n\\n###\\n\\n"``."""
    titles = list(titles)[-max_items:] if max_items else list(titles)
    return "\n".join(f"{i}. {t}" for i, t in enumerate(titles, 1)) + SEPARATOR


def prompt_examples(sequences: Sequence[np.ndarray], titles: Sequence[str], max_items: int = 10,
                    min_history: int = 2, n: int | None = None, seed: int = 0,
                    ) -> list[tuple[str, int]]:
    """(prompt, next item) pairs from every position of the given (training) sequences.

    Position t of a sequence gives the prompt of items < t and the target item t (at least
    ``min_history`` items of history). ``n`` keeps a seeded random sample of the pairs.
    """
    pairs = [(u, t) for u, s in enumerate(sequences) for t in range(min_history, len(s))]
    if n is not None and n < len(pairs):
        pairs = [pairs[i] for i in seeded_subset(len(pairs), n, seed)]
    return [(seq_prompt([titles[i] for i in sequences[u][:t]], max_items), int(sequences[u][t]))
            for u, t in pairs]


@dataclass(frozen=True)
class LLMSeqPromptConfig:
    """LLMSeqPrompt's prompt, LoRA adapter and generation (the optimiser is a TrainConfig)."""

    max_items: int = 10             # history titles in a prompt, most recent last [paper:
                                    # the whole session]
    lora_r: int = 8                 # LoRA rank on the attention projections [OpenAI's
                                    # fine-tuning API: no adapter, hidden settings]
    lora_alpha: int | None = None   # LoRA scale numerator; None: 2 * lora_r
    lora_dropout: float = 0.05      # dropout on the LoRA input (training only)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")  # layers that get an adapter
    max_length: int = 256           # tokens of prompt + completion (the prompt's start is cut)
    loss_batch_size: int = 8        # pairs per forward pass when a loss is only measured
    num_beams: int = 5              # beams = titles generated per history [paper: 20]
    max_new_tokens: int = 20        # longest generated title, in tokens (unconstrained)
    generate_batch_size: int = 4    # prompts per generate() call
    top_k: int = 20                 # length of the ranked item list [paper: 20, NDCG@20]
    constrained: bool = True        # beams restricted to unseen catalogue titles (a trie);
                                    # False: free text mapped by embedding [paper: free text]


class LLMSeqPrompt:
    """A causal LM fine-tuned (LoRA) to write the next title; generations mapped to items.

    ``titles[i]`` is the text of item id ``i`` (row 0 padding) the LM reads and writes;
    ``item_emb`` (one row per item id) is the sentence embedding used to map generated text
    to items; ``encode(texts) -> array`` embeds generated text the same way.

    >>> prompter = LLMSeqPrompt(lm, tokenizer, titles, item_emb, encode, LLMSeqPromptConfig())
    >>> prompter.predict([[3, 8, 5]])       # [[top item, ...]]: top_k item ids per history
    """

    def __init__(self, lm, tokenizer, titles: Sequence[str], item_emb: np.ndarray,
                 encode: Callable[[list[str]], np.ndarray],
                 config: LLMSeqPromptConfig | None = None) -> None:
        from peft import LoraConfig, get_peft_model

        self.config = c = config or LLMSeqPromptConfig()
        self.tokenizer, self.titles, self.encode = tokenizer, list(titles), encode
        self.item_emb = np.asarray(item_emb, dtype=np.float32)
        self.index = TitleIndex(self.titles)
        self.end = tokenizer.eos_token  # end marker of every completion
        lora = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha or 2 * c.lora_r,
                          lora_dropout=c.lora_dropout, target_modules=list(c.target_modules),
                          task_type="CAUSAL_LM")
        self.model = get_peft_model(lm, lora)
        self.stats: dict[str, float] = {}
        self._trie: TokenTrie | None = None
        self._paths: dict[int, list[int]] | None = None

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def prompt(self, history: Sequence[int]) -> str:
        """The prompt for a history of item ids (its last ``max_items`` titles)."""
        return seq_prompt([self.titles[i] for i in history], self.config.max_items)

    def batch(self, examples: Sequence[tuple[str, int]]) -> dict[str, torch.Tensor]:
        """Tokenised prompt + " title<end>" pairs; the loss covers the completion only.

        ``parts`` marks each completion token as TITLE, YEAR or END (0 elsewhere), so the
        loss can be read apart (:func:`part_losses`).
        """
        from recutils.lm import completion_batch

        b = completion_batch(self.tokenizer, [p for p, _ in examples],
                             [f"{self.titles[i]}{self.end}" for _, i in examples],
                             self.config.max_length)
        parts = torch.zeros_like(b["labels"])
        for row, (_, i) in enumerate(examples):
            codes = completion_parts(self.tokenizer, self.titles[i], self.end)
            parts[row, parts.shape[1] - len(codes):] = torch.tensor(codes)
        b["parts"] = parts
        return b

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:func:`part_losses` of a :meth:`batch`: "loss" (all completion tokens), "title",
        "year", "end"."""
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "parts")}
        logits = self.model(**inputs).logits
        return part_losses(logits, batch["labels"], batch["parts"])

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean next-token cross-entropy of the completion tokens."""
        return self.losses(batch)["loss"]

    @torch.no_grad()
    def mean_losses(self, examples: Sequence[tuple[str, int]]) -> dict[str, float]:
        """Every term of :meth:`losses`, each a mean over its tokens of all ``examples``."""
        self.model.eval()
        device = next(self.model.parameters()).device
        size, sums, counts = self.config.loss_batch_size, {}, {}
        for i in range(0, len(examples), size):
            b = to_device(self.batch(examples[i:i + size]), device)
            out = self.losses(b)
            keep = b["labels"][:, 1:] != IGNORE_INDEX
            n = {"loss": int(keep.sum())}
            for name, code in PARTS.items():
                n[name] = int((keep & (b["parts"][:, 1:] == code)).sum())
            for k, v in out.items():
                if n[k]:
                    sums[k] = sums.get(k, 0.0) + float(v) * n[k]
                    counts[k] = counts.get(k, 0) + n[k]
        return {k: sums[k] / counts[k] if counts.get(k) else float("nan")
                for k in ("loss", *PARTS)}

    def mean_loss(self, examples: Sequence[tuple[str, int]]) -> float:
        """The mean completion-token loss of ``examples`` (every token), in eval mode."""
        return self.mean_losses(examples)["loss"]

    # --- scoring titles by likelihood ----------------------------------------------------

    @torch.no_grad()
    def title_logprobs(self, history: Sequence[int], items: Sequence[int]) -> np.ndarray:
        """log p(title + end | prompt) of each of ``items`` after ``history`` (summed over tokens).

        The prompt is run once and its key/value cache shared by every candidate.
        """
        self.model.eval()
        device = next(self.model.parameters()).device
        tok = self.tokenizer
        prompt = tok(self.prompt(history), add_special_tokens=False)["input_ids"]
        prompt = prompt[-(self.config.max_length - self.trie.longest):]
        out = self.model(input_ids=torch.tensor([prompt], device=device), use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), -1)
        paths = [self.trie_paths[int(i)] for i in items]
        width = max(len(p) for p in paths)
        cand = torch.full((len(paths), width), self.pad_id, dtype=torch.long)
        for r, p in enumerate(paths):
            cand[r, :len(p)] = torch.tensor(p)
        cache = out.cache
        cache.batch_repeat_interleave(len(paths))
        mask = torch.ones(len(paths), len(prompt) + width, dtype=torch.long, device=device)
        logits = self.model(input_ids=cand.to(device), cache=cache,
                            attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits, -1).cpu()
        scores = np.empty(len(paths))
        for r, p in enumerate(paths):
            s = float(first[p[0]])
            for t in range(1, len(p)):
                s += float(logp[r, t - 1, p[t]])
            scores[r] = s
        return scores

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @property
    def trie(self) -> TokenTrie:
        """The :class:`~recutils.decoding.TokenTrie` of every title's path ``title + end``."""
        if self._trie is None:
            self._trie = TokenTrie(self.trie_paths, done_token=self.tokenizer.eos_token_id)
        return self._trie

    @property
    def trie_paths(self) -> dict[int, list[int]]:
        """Item id -> the token ids of its completion ``title + end`` (what training teaches)."""
        if self._paths is None:
            tok = self.tokenizer
            self._paths = {i: tok(f"{t}{self.end}", add_special_tokens=False)["input_ids"]
                           for i, t in enumerate(self.titles) if i > 0 and t}
        return self._paths

    @torch.no_grad()
    def generate_items(self, histories: Sequence[Sequence[int]]) -> list[list[int]]:
        """Beam search restricted to unseen catalogue titles: ``num_beams`` distinct items per
        history, best first (beams ranked by the summed log-probability of their tokens).

        Each step may only continue the token path of a title not in the history
        (:meth:`TokenTrie.allowed` with the history excluded), so every beam is a real item
        the user has not seen.
        """
        c, tok, trie = self.config, self.tokenizer, self.trie
        self.model.eval()
        device = next(self.model.parameters()).device
        out: list[list[int]] = []
        for start in range(0, len(histories), c.generate_batch_size):
            chunk = histories[start:start + c.generate_batch_size]
            enc = tok([self.prompt(h) for h in chunk], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(device)
            width = enc["input_ids"].shape[1]
            allowed = trie.hf_prefix_fn(width, exclude=[{int(i) for i in h} for h in chunk])
            gen = self.model.generate(**enc, max_new_tokens=trie.longest, num_beams=c.num_beams,
                                      num_return_sequences=c.num_beams, do_sample=False,
                                      prefix_allowed_tokens_fn=allowed, length_penalty=0.0,
                                      early_stopping=True, eos_token_id=tok.eos_token_id,
                                      pad_token_id=self.pad_id)
            rows = gen[:, width:].tolist()
            for b in range(len(chunk)):
                items: list[int] = []
                for seq in rows[b * c.num_beams:(b + 1) * c.num_beams]:
                    i = trie.item(seq)
                    if i is not None and i not in items:
                        items.append(i)
                out.append(items)
        return out

    def fill_from_items(self, beams: Sequence[Sequence[int]], histories: Sequence[Sequence[int]],
                        k: int | None = None) -> list[list[int]]:
        """Top ``k`` lists: the beam items first, then their nearest unseen items by embedding
        (round by round, best beam first), so a list is as long as the other methods'."""
        k = k or self.config.top_k
        out = []
        for items, h in zip(beams, histories):
            seen = [int(i) for i in h]
            near = nearest_items(self.item_emb[list(items)], self.item_emb, k=k,
                                 exclude=[seen] * len(items)) if len(items) else []
            out.append(rank_from_generations([[i, *n] for i, n in zip(items, near)], k,
                                             exclude=seen))
        return out

    def generate(self, histories: Sequence[Sequence[int]]) -> list[list[str]]:
        """``num_beams`` freely generated titles per history, best beam first."""
        from recutils.lm import generate_texts

        c = self.config
        self.model.eval()
        return generate_texts(self.model, self.tokenizer, [self.prompt(h) for h in histories],
                              max_new_tokens=c.max_new_tokens, num_beams=c.num_beams,
                              num_return_sequences=c.num_beams, batch_size=c.generate_batch_size)

    def predict(self, histories: Sequence[Sequence[int]]) -> list[list[int]]:
        """Ranked lists of ``top_k`` unseen items per history.

        ``config.constrained``: :meth:`generate_items` then :meth:`fill_from_items`; else
        :meth:`generate` then :meth:`map_to_items` (free text mapped by embedding).
        """
        if self.config.constrained:
            return self.fill_from_items(self.generate_items(histories), histories)
        return self.map_to_items(self.generate(histories), histories)

    def map_to_items(self, generations: Sequence[Sequence[str]],
                     histories: Sequence[Sequence[int]], k: int | None = None) -> list[list[int]]:
        """Ranked lists of ``k`` (default ``top_k``) distinct unseen items from generated texts.

        Each text (without an echoed list number) goes to its ``k`` nearest items by cosine
        similarity (seen items skipped); lists are merged round by round, best beam first
        (:func:`rank_from_generations`). Also sets ``stats["hallucination_rate"]``: the share
        of generated texts that are not exactly (after normalisation) a catalogue title.
        """
        k = k or self.config.top_k
        flat = [clean_generation(t) for g in generations for t in g]
        emb = self.encode(flat) if flat else np.zeros((0, self.item_emb.shape[1]), np.float32)
        exact = [self.index.match(t) is not None for t in flat]
        self.stats["hallucination_rate"] = 1.0 - float(np.mean(exact)) if exact else float("nan")
        out, pos = [], 0
        for g, h in zip(generations, histories):
            seen = [int(i) for i in h]
            near = nearest_items(emb[pos:pos + len(g)], self.item_emb, k=k,
                                 exclude=[seen] * len(g)) if len(g) else []
            pos += len(g)
            out.append(rank_from_generations([list(n) for n in near], k, exclude=seen))
        return out
