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

Defaults (the paper's in brackets)::

    encoder: all-MiniLM-L6-v2, 384-d        [OpenAI text-embedding-ada-002, 1536-d]
    combine: "last"                          ["last" best on Beauty; mean and decayed means]
    similarity: "cosine"                     [cosine, dot, euclidean tried]
    lm: SmolLM2-135M-Instruct + LoRA r=8     [OpenAI ada/GPT-3.5 fine-tuning API]
    pca std: 0.02, the scale of random init  [PCA output written as is]
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

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


class LLMSeqSim:
    """Rank all items by their similarity to the session embedding (no training).

    >>> sim = LLMSeqSim(item_emb, combine="last")
    >>> scores = sim.score([[3, 8, 5]])      # [1, n_items + 1], seen items and padding -inf
    """

    def __init__(self, item_emb: np.ndarray | torch.Tensor, combine: str = "last",
                 similarity: str = "cosine", decay: float = 0.8, max_items: int | None = None,
                 exclude_seen: bool = True) -> None:
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        recency_weights(1, combine)  # validates ``combine``
        self.item_emb = torch.as_tensor(np.asarray(item_emb), dtype=torch.float32)
        self.combine, self.similarity, self.decay = combine, similarity, decay
        self.max_items, self.exclude_seen = max_items, exclude_seen

    def score(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Scores [len(histories), n_items + 1]; padding and (by default) seen items get -inf."""
        s = session_embeddings(histories, self.item_emb, self.combine, self.decay, self.max_items)
        e = self.item_emb
        if self.similarity == "cosine":
            s, e = F.normalize(s, dim=-1), F.normalize(e, dim=-1)
        scores = s @ e.T
        scores[:, 0] = float("-inf")
        if self.exclude_seen:
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
        pick = np.random.default_rng(seed).choice(len(pairs), size=n, replace=False)
        pairs = [pairs[i] for i in np.sort(pick)]
    return [(seq_prompt([titles[i] for i in sequences[u][:t]], max_items), int(sequences[u][t]))
            for u, t in pairs]


class LLMSeqPrompt:
    """A causal LM fine-tuned (LoRA) to write the next title; generations mapped to items.

    ``titles[i]`` is the text of item id ``i`` (row 0 padding) the LM reads and writes;
    ``item_emb`` (one row per item id) is the sentence embedding used to map generated text
    to items; ``encode(texts) -> array`` embeds generated text the same way.
    """

    def __init__(self, lm, tokenizer, titles: Sequence[str], item_emb: np.ndarray, encode,
                 lora_r: int = 8, lora_alpha: int | None = None, max_items: int = 10) -> None:
        from peft import LoraConfig, get_peft_model

        self.tok, self.titles, self.encode = tokenizer, list(titles), encode
        self.item_emb = np.asarray(item_emb, dtype=np.float32)
        self.max_items = max_items
        self.index = TitleIndex(self.titles)
        self.end = tokenizer.eos_token  # end marker of every completion
        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha or 2 * lora_r, lora_dropout=0.05,
                            target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        self.model = get_peft_model(lm, config)
        self.stats: dict[str, float] = {}

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def batch(self, examples: Sequence[tuple[str, int]], max_length: int = 256) -> dict[str, torch.Tensor]:
        """Tokenised prompt + " title<end>" pairs; the loss covers the completion only."""
        from recutils.lm import completion_batch

        return completion_batch(self.tok, [p for p, _ in examples],
                                [f"{self.titles[i]}{self.end}" for _, i in examples], max_length)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean next-token cross-entropy of the completion tokens."""
        return self.model(**batch).loss

    def generate(self, histories: Sequence[Sequence[int]], num_beams: int = 5,
                 max_new_tokens: int = 20, batch_size: int = 4) -> list[list[str]]:
        """``num_beams`` generated titles per history, best beam first."""
        from recutils.lm import generate_texts

        self.model.eval()
        prompts = [seq_prompt([self.titles[i] for i in h], self.max_items) for h in histories]
        return generate_texts(self.model, self.tok, prompts, max_new_tokens=max_new_tokens,
                              num_beams=num_beams, num_return_sequences=num_beams,
                              batch_size=batch_size)

    def map_to_items(self, generations: Sequence[Sequence[str]],
                     histories: Sequence[Sequence[int]], k: int = 20) -> list[list[int]]:
        """Ranked lists of ``k`` distinct unseen items from the generated texts.

        Each text (without an echoed list number) goes to its ``k`` nearest items by cosine similarity (seen items skipped);
        lists are merged round by round, best beam first (:func:`rank_from_generations`).
        Also sets ``stats["hallucination_rate"]``: the share of generated texts that are not
        exactly (after normalisation) a catalogue title.
        """
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
