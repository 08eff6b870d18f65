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

from recutils.batching import seeded_subset, to_device
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
    max_new_tokens: int = 20        # longest generated title, in tokens
    generate_batch_size: int = 4    # prompts per generate() call
    top_k: int = 20                 # length of the ranked item list [paper: 20, NDCG@20]


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

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def prompt(self, history: Sequence[int]) -> str:
        """The prompt for a history of item ids (its last ``max_items`` titles)."""
        return seq_prompt([self.titles[i] for i in history], self.config.max_items)

    def batch(self, examples: Sequence[tuple[str, int]]) -> dict[str, torch.Tensor]:
        """Tokenised prompt + " title<end>" pairs; the loss covers the completion only."""
        from recutils.lm import completion_batch

        return completion_batch(self.tokenizer, [p for p, _ in examples],
                                [f"{self.titles[i]}{self.end}" for _, i in examples],
                                self.config.max_length)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean next-token cross-entropy of the completion tokens."""
        return self.model(**batch).loss

    @torch.no_grad()
    def mean_loss(self, examples: Sequence[tuple[str, int]]) -> float:
        """The mean over batches of ``loss_batch_size`` pairs of :meth:`loss`, in eval mode."""
        self.model.eval()
        device = next(self.model.parameters()).device
        size = self.config.loss_batch_size
        return float(np.mean([self.loss(to_device(self.batch(examples[i:i + size]), device)).item()
                              for i in range(0, len(examples), size)]))

    def generate(self, histories: Sequence[Sequence[int]]) -> list[list[str]]:
        """``num_beams`` generated titles per history, best beam first."""
        from recutils.lm import generate_texts

        c = self.config
        self.model.eval()
        return generate_texts(self.model, self.tokenizer, [self.prompt(h) for h in histories],
                              max_new_tokens=c.max_new_tokens, num_beams=c.num_beams,
                              num_return_sequences=c.num_beams, batch_size=c.generate_batch_size)

    def predict(self, histories: Sequence[Sequence[int]]) -> list[list[int]]:
        """Ranked lists of ``top_k`` unseen items per history: :meth:`generate`, then :meth:`map_to_items`."""
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
