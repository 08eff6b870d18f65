"""Notebook 04's pipeline (A-LLMRec, Kim et al., KDD 2024): the steps a cell calls.

The order of the random draws is part of the results: the cold/warm evaluation sample
draws from ``default_rng(seed)``, stage 1's negatives from ``default_rng(seed + 1)``,
stage 2's users and candidates from ``default_rng(seed + 2)``, the order of the test
candidates from ``default_rng(seed + 3)``; stage 1's epoch ``e`` is shuffled by
``default_rng(seed + e)``, stage 2's by ``default_rng(seed + 10 + e)``.

* :func:`cold_warm_sample`: the stratified test sample of the paper's Table 2.
* :func:`stage1_data`, :func:`stage1_batches`, :class:`LossTerms`, :func:`train_stage1`: eq. 2-6.
* :class:`Prompter`, :func:`stage2_examples`, :func:`stage2_batches`, :func:`train_stage2`: eq. 7-8.
* :func:`evaluation_examples`, :class:`LLMRecommender`: generate, map to a candidate, ``predict(users)``.
* :func:`summary_table`, :func:`record_methods`, :func:`plot_hit_at_1`,
  :func:`plot_training_curves`, :func:`claim_rows`: the analyses.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from recutils.batching import pad_sequences, seeded_batches, to_device
from recutils.data import SequenceData
from recutils.evaluation import EvalResult
from recutils.lm import encode_texts
from recutils.models.allmrec import (
    ALLMRec,
    ALLMRecConfig,
    Segment,
    SoftToken,
    Stage1Aligner,
    Stage1Config,
    _user_and_history,
    answer,
    choice_labels,
    choice_prompt,
    clip_title,
    map_to_candidates,
    prompt_batch,
    recommendation_prompt,
    wilson_interval,
)
from recutils.notebook import Recorder, claim
from recutils.progress import track
from recutils.reproducibility import seed_everything
from recutils.training import Callback, History, TrainConfig, count_parameters, fit

# --- the evaluation sample: cold and warm target items (Table 2) ----------------------------


@dataclass
class ColdWarm:
    """The test users the LLM methods see and whether each one's target is cold or warm."""

    eval_users: np.ndarray  # sorted dataset user indices
    group: np.ndarray       # "cold" | "warm" | "middle", one per evaluation user
    q_cold: float           # an item with at most this many training interactions is cold
    q_warm: float           # an item with at least this many is warm
    is_cold: np.ndarray     # per test user (all users)
    is_warm: np.ndarray

    def record(self) -> dict:
        """The numbers the notebook records under ``cold_warm``."""
        return {"cold_max_count": float(self.q_cold), "warm_min_count": float(self.q_warm),
                "test_users_cold": int(self.is_cold.sum()), "test_users_warm": int(self.is_warm.sum()),
                "eval_users": len(self.eval_users), "eval_cold": int((self.group == "cold").sum()),
                "eval_warm": int((self.group == "warm").sum())}


def cold_warm_sample(data: SequenceData, n_eval: int | None, seed: int,
                     quantile: float = 0.35) -> ColdWarm:
    """Cold = bottom ``quantile`` of items by training count, warm = top; a seeded sample of
    ``n_eval`` test users, half cold and half warm; where fewer than half the test users have
    a cold target, all of them and warm users for the rest (None: every test user, unstratified)."""
    counts = data.item_counts()
    q_cold, q_warm = np.quantile(counts[1:], quantile), np.quantile(counts[1:], 1 - quantile)
    target = data.targets("test")
    is_cold, is_warm = counts[target] <= q_cold, counts[target] >= q_warm
    rng = np.random.default_rng(seed)
    if n_eval is None:
        eval_users = np.arange(data.n_users)
    else:
        half = n_eval // 2
        cold_users, warm_users = np.flatnonzero(is_cold), np.flatnonzero(is_warm)
        cold = rng.choice(cold_users, min(half, len(cold_users)), replace=False)
        # too few cold targets: warm users fill the sample up to n_eval
        warm = rng.choice(warm_users, min(n_eval - len(cold), len(warm_users)), replace=False)
        eval_users = np.sort(np.concatenate([cold, warm]))
    group = np.where(is_cold[eval_users], "cold", np.where(is_warm[eval_users], "warm", "middle"))
    return ColdWarm(eval_users, group, float(q_cold), float(q_warm), is_cold, is_warm)


# --- helpers shared by both stages ----------------------------------------------------------


def user_vectors(sasrec: torch.nn.Module, histories: Sequence[np.ndarray],
                 device: torch.device | str, batch_size: int = 256) -> torch.Tensor:
    """The frozen SASRec user vector ``x_u`` (last hidden state) after each history, on CPU."""
    out = []
    with torch.no_grad():
        for s in range(0, len(histories), batch_size):
            seq = pad_sequences(histories[s:s + batch_size], sasrec.max_len).to(device)
            out.append(sasrec.user_vector(seq).cpu())
    return torch.cat(out)


def unseen(data: SequenceData, user: int, n: int, rng: np.random.Generator) -> list[int]:
    """``n`` distinct items ``user`` never interacted with, drawn uniformly by ``rng``."""
    seen, out = set(data.sequences[user].tolist()), []
    while len(out) < n:
        i = int(rng.integers(1, data.n_items + 1))
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def usable_users(data: SequenceData) -> list[int]:
    """Users with at least two training items (a history and a positive)."""
    train_seqs = data.train_sequences()
    return [u for u in range(data.n_users) if len(train_seqs[u]) >= 2]


# --- stage 1 (eq. 2-6) ----------------------------------------------------------------------


def stage1_data(data: SequenceData, sasrec: torch.nn.Module, E: torch.Tensor, Q: torch.Tensor,
                users: Sequence[int], seed: int, device: torch.device | str) -> tuple[torch.Tensor, ...]:
    """``(x_u, E[pos], E[neg], Q[pos], Q[neg])``: per user, the last training item is the
    positive, one unseen item (``default_rng(seed + 1)``) the negative, ``x_u`` the SASRec
    vector after the items before the positive."""
    train_seqs = data.train_sequences()
    rng1 = np.random.default_rng(seed + 1)
    x1 = user_vectors(sasrec, [train_seqs[u][:-1] for u in users], device)
    pos = torch.as_tensor([int(train_seqs[u][-1]) for u in users])
    neg = torch.as_tensor([unseen(data, u, 1, rng1)[0] for u in users])
    return x1, E[pos], E[neg], Q[pos], Q[neg]


def stage1_batches(tensors: Sequence[torch.Tensor], batch_size: int, seed: int):
    """``batches(epoch)`` for :func:`fit`: epoch ``e`` shuffled by ``default_rng(seed + e)``."""
    def make(rows: list[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(rows)
        return tuple(t[idx] for t in tensors)
    return seeded_batches(list(range(len(tensors[0]))), batch_size, seed, make)


class LossTerms(Callback):
    """After each epoch, every term of eq. 6 recomputed on the whole stage-1 set (in the row)."""

    def __init__(self, tensors: Sequence[torch.Tensor], device: torch.device | str) -> None:
        self.tensors, self.device = tensors, device

    def on_epoch(self, model: torch.nn.Module, row: dict) -> None:
        with torch.no_grad():
            terms = model.losses(*(t.to(self.device) for t in self.tensors))
        row.update({k: v.item() for k, v in terms.items()})


@dataclass
class Stage1Result:
    """What stage 1 leaves for stage 2: the trained aligner and its two item tables."""

    aligner: Stage1Aligner
    history: History
    e_table: torch.Tensor  # [n_items + 1, latent] joint embeddings e_i (row 0 = 0)
    q_table: torch.Tensor  # [n_items + 1, latent] text codes q_i (row 0 = 0)
    cosine: float          # mean cosine(e_i, q_i) over the items


def train_stage1(E: torch.Tensor, Q: torch.Tensor, tensors: Sequence[torch.Tensor],
                 config: Stage1Config, train: TrainConfig, seed: int,
                 device: torch.device | str) -> Stage1Result:
    """Train the :class:`Stage1Aligner` on ``tensors`` (:func:`stage1_data`); the tables."""
    seed_everything(seed)
    aligner = Stage1Aligner(E.shape[1], Q.shape[1], config)
    hist = fit(aligner, stage1_batches(tensors, train.batch_size, seed), train, device=device,
               callbacks=[LossTerms(tensors, device)], desc="stage 1")
    with torch.no_grad():
        e_table = aligner.joint(E.to(device)).cpu()
        q_table = aligner.joint_text(Q.to(device)).cpu()
    e_table[0] = q_table[0] = 0.0
    cos = torch.nn.functional.cosine_similarity(e_table[1:], q_table[1:]).mean().item()
    return Stage1Result(aligner, hist, e_table, q_table, cos)


# --- stage 2 (eq. 7-8) ----------------------------------------------------------------------


@dataclass
class Prompter:
    """Prompts of examples ``{"user", "history", "candidates", "target"}`` (item ids)."""

    titles: Sequence[str]  # title shown in the prompt, by item id

    def prompt(self, ex: dict, soft: bool = True) -> list[Segment]:
        """The paper's prompt for ``ex`` (``soft=False``: without soft tokens, LLM-Only)."""
        return recommendation_prompt([self.titles[i] for i in ex["history"]],
                                     [self.titles[i] for i in ex["candidates"]],
                                     ex["history"], ex["candidates"], soft=soft)

    def answer(self, ex: dict) -> str:
        """What the LM is trained to write for ``ex``: the target's title and a closing quote."""
        return answer(self.titles[ex["target"]])

    def shown(self, ex: dict) -> str:
        """The prompt as text with ``<U>`` / ``<I>`` for the soft tokens, and its answer."""
        return "".join(s if isinstance(s, str) else ("<U>" if s.kind == "user" else "<I>")
                       for s in self.prompt(ex)) + self.answer(ex)


@dataclass
class ChoicePrompter:
    """Choice-format prompts (:func:`~recutils.models.allmrec.choice_prompt`) of examples.

    ``titles`` by item id, clipped to ``max_words`` words. ``soft_ids(ex)`` decides which
    item vector each soft token shows: the item's own (default); with ``mark_target`` a
    two-row table's row 1 for the target and row 2 for every other item (the positive
    control: a soft token that marks the right candidate); with ``shuffle_seed`` the
    candidates' vectors permuted among the candidates of each prompt (the control that
    cuts the tie between a title and its collaborative vector).
    """

    titles: Sequence[str]
    max_words: int | None = None
    user_at_end: bool = False
    user_in_candidates: bool = False
    mark_target: bool = False
    shuffle_seed: int | None = None
    item_tokens: bool = True  # False: no item soft tokens, only the user's (Table 7, row 3)

    def soft_ids(self, ex: dict) -> tuple[list[int], list[int]]:
        """Item ids behind the history's and the candidates' soft tokens."""
        hist, cands = list(ex["history"]), list(ex["candidates"])
        if self.mark_target:
            return [2] * len(hist), [1 if c == ex["target"] else 2 for c in cands]
        if self.shuffle_seed is not None:
            rng = np.random.default_rng([self.shuffle_seed, int(ex["user"])])
            perm = rng.permutation(len(cands))
            while len(cands) > 1 and (perm == np.arange(len(cands))).any():
                perm = rng.permutation(len(cands))  # every candidate gets another's vector
            cands = [cands[k] for k in perm]
        return hist, cands

    def prompt(self, ex: dict, soft: bool = True) -> list[Segment]:
        """The choice prompt of ``ex`` (``soft=False``: the words alone, LLM-Only)."""
        hist_ids, cand_ids = self.soft_ids(ex)
        title = [clip_title(t, self.max_words) for t in self.titles]
        seg = choice_prompt([title[i] for i in ex["history"]], [title[i] for i in ex["candidates"]],
                            hist_ids, cand_ids, soft=soft, user_at_end=self.user_at_end,
                            user_in_candidates=self.user_in_candidates)
        if not self.item_tokens:  # the same text pieces, the item tokens left out
            seg = [x for x in seg if not (isinstance(x, SoftToken) and x.kind == "item")]
        return seg

    def answer(self, ex: dict) -> str:
        """The answer text for the answer-token loss: the target's letter, title, end."""
        k = ex["candidates"].index(ex["target"])
        return f" {choice_labels(len(ex['candidates']))[k]}. {clip_title(self.titles[ex['target']], self.max_words)}"

    def shown(self, ex: dict) -> str:
        """The prompt as text with ``<U>`` / ``<I>`` for the soft tokens, and its answer."""
        return "".join(s if isinstance(s, str) else ("<U>" if s.kind == "user" else "<I>")
                       for s in self.prompt(ex)) + self.answer(ex)


def choice_batch(tokenizer, prompter: ChoicePrompter, examples: Sequence[dict],
                 user_vecs: torch.Tensor, soft: bool = True, answers: bool = False) -> dict:
    """A left-padded batch of choice prompts with ``user_vecs`` and ``target_index`` (the
    target's place among the candidates); ``answers=True`` appends the answer text and its
    labels (for the answer-token loss)."""
    b = prompt_batch(tokenizer, [prompter.prompt(ex, soft) for ex in examples],
                     [prompter.answer(ex) for ex in examples] if answers else None)
    b["user_vecs"] = user_vecs
    b["target_index"] = torch.as_tensor([ex["candidates"].index(ex["target"]) for ex in examples])
    return b


def example(data: SequenceData, user: int, history: Sequence[int], target: int,
            rng: np.random.Generator, n_history: int, n_candidates: int) -> dict:
    """One stage-2 example: ``target`` and ``n_candidates - 1`` unseen items, shuffled."""
    cands = [int(target)] + unseen(data, user, n_candidates - 1, rng)
    cands = [cands[i] for i in rng.permutation(len(cands))]
    hist = [int(i) for i in history[-n_history:]]
    return {"user": user, "history": hist, "candidates": cands, "target": int(target)}


def stage2_examples(data: SequenceData, users: Sequence[int], n_users: int | None, n_history: int,
                    n_candidates: int, seed: int) -> list[dict]:
    """One example per sampled user (``default_rng(seed + 2)``): the last training item is
    the answer, the items before it the history."""
    train_seqs = data.train_sequences()
    rng2 = np.random.default_rng(seed + 2)
    chosen = users if n_users is None else sorted(
        rng2.choice(users, min(n_users, len(users)), replace=False).tolist())
    return [example(data, u, train_seqs[u][:-1], train_seqs[u][-1], rng2, n_history, n_candidates)
            for u in chosen]


def stage2_batches(tokenizer, prompter: Prompter, examples: Sequence[dict], user_vecs: torch.Tensor,
                   batch_size: int, seed: int):
    """``batches(epoch)`` of prompts + answers; epoch ``e`` shuffled by ``default_rng(seed + 10 + e)``."""
    def make(rows: list[int]) -> dict:
        b = prompt_batch(tokenizer, [prompter.prompt(examples[i]) for i in rows],
                    [prompter.answer(examples[i]) for i in rows])
        b["user_vecs"] = user_vecs[rows]
        return b
    return seeded_batches(list(range(len(examples))), batch_size, seed + 10, make)


def train_stage2(model: ALLMRec, batches, train: TrainConfig, seed: int,
                 device: torch.device | str, desc: str) -> History:
    """Train only ``model.projector`` (the LM stays frozen); ``History.steps`` with log_steps."""
    seed_everything(seed)
    return fit(model, batches, train, device=device, params=model.projector.parameters(), desc=desc)


# --- stage 2 in the choice format: chunks of steps, validation, both-way evaluation ----------


def choice_batches(tokenizer, prompter: ChoicePrompter, examples: Sequence[dict],
                   user_vecs: torch.Tensor, batch_size: int, steps: int, seed: int,
                   answers: bool = False, soft: bool = True):
    """``batches(chunk)`` for :func:`fit`: chunk ``c`` is ``steps`` steps of ``batch_size``
    examples, read from a stream of permutations of ``examples`` (permutation ``e`` by
    ``default_rng(seed + 10 + e)``), so every "epoch" of ``fit`` is one point of a budget
    curve and a run of ``k`` chunks is the first ``k`` chunks of a longer run."""
    per_chunk = steps * batch_size

    def order(upto: int) -> list[int]:
        out, e = [], 0
        while len(out) < upto:
            out += np.random.default_rng(seed + 10 + e).permutation(len(examples)).tolist()
            e += 1
        return out

    def make(chunk: int) -> list[dict]:
        rows = order((chunk + 1) * per_chunk)[chunk * per_chunk:]
        out = []
        for s in range(0, per_chunk, batch_size):
            idx = rows[s:s + batch_size]
            out.append(choice_batch(tokenizer, prompter, [examples[i] for i in idx], user_vecs[idx],
                                    soft=soft, answers=answers))
        return out
    return make


def choice_scores(model: ALLMRec, prompter: ChoicePrompter, examples: Sequence[dict],
                  user_vecs: torch.Tensor, device: torch.device | str, soft: bool = True,
                  batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """One forward pass per prompt: the index letters' logits [n, n_candidates] (the LM's
    ranking of the candidates) and the greedy first answer token's candidate position
    [n] (-1 where the LM's most likely next token is not an index letter)."""
    logits, greedy = [], []
    ids = model.label_ids()
    model.eval()
    with torch.no_grad():
        for s in range(0, len(examples), batch_size):
            b = choice_batch(model.tokenizer, prompter, examples[s:s + batch_size],
                             user_vecs[s:s + batch_size], soft=soft)
            lg, g = model.choice_logits(to_device(b, device))
            logits.append(lg.cpu().numpy())
            greedy += [ids.index(t) if t in ids else -1 for t in g.tolist()]
    return np.concatenate(logits), np.asarray(greedy)


def choice_validation(prompter: ChoicePrompter, examples: Sequence[dict], user_vecs: torch.Tensor,
                      device: torch.device | str, batch_size: int = 8, soft: bool = True):
    """``valid_fn`` for :func:`fit`: Hit@1 of the letter ranking on validation examples
    (``soft=False``: the text-only prompts, for TALLRec)."""
    target = np.asarray([ex["candidates"].index(ex["target"]) for ex in examples])

    def valid(model: ALLMRec) -> float:
        logits, _ = choice_scores(model, prompter, examples, user_vecs, device, soft=soft,
                                  batch_size=batch_size)
        return float((logits.argmax(1) == target).mean())
    return valid


def validation_examples(data: SequenceData, users: Sequence[int], n_history: int, n_candidates: int,
                        seed: int) -> list[dict]:
    """Validation prompts of ``users`` (history before the validation item, 19 unseen items
    from ``default_rng(seed + 4)``): what budget curves and selection read, never the test item."""
    vin, vt = data.inputs("valid"), data.targets("valid")
    rng = np.random.default_rng(seed + 4)
    return [example(data, int(u), vin[u], vt[u], rng, n_history, n_candidates) for u in users]


class ChoiceRecommender:
    """``predict(users)`` for the :class:`~recutils.evaluation.Evaluator`, both ways at once.

    Ranking: each candidate is scored by its index letter's logit (the other items get
    -inf), so the evaluator's ``sampled19`` ranks give Hit@1 and NDCG@20 over the 20.
    Generation: the greedy first answer token mapped to the candidate whose letter it is;
    after a call ``greedy_hit`` (per user), ``mapped`` (share of answers that name a
    letter), ``positions`` (1-based place of the greedy choice, 0 = none) and
    ``seconds_per_user``. ``soft=False`` is LLM-Only; ``prompter`` decides the soft tokens
    (e.g. shuffled across candidates for the control).
    """

    def __init__(self, model: ALLMRec, prompter: ChoicePrompter, examples: Sequence[dict],
                 user_vecs: torch.Tensor, n_items: int, device: torch.device | str,
                 soft: bool = True, item_table: torch.Tensor | None = None) -> None:
        self.model, self.prompter, self.examples = model, prompter, list(examples)
        self.user_vecs, self.n_items, self.device = user_vecs, n_items, device
        self.soft, self.item_table = soft, item_table
        self.row = {ex["user"]: k for k, ex in enumerate(self.examples)}

    def predict(self, users: np.ndarray) -> torch.Tensor:
        rows = [self.row[int(u)] for u in users]
        exs = [self.examples[r] for r in rows]
        saved = self.model.item_table
        if self.item_table is not None:
            self.model.set_item_table(self.item_table)
        t0 = time.perf_counter()
        try:
            logits, greedy = choice_scores(self.model, self.prompter, exs, self.user_vecs[rows],
                                           self.device, soft=self.soft)
        finally:
            self.model.item_table = saved
        self.seconds_per_user = (time.perf_counter() - t0) / max(len(rows), 1)
        target = np.asarray([ex["candidates"].index(ex["target"]) for ex in exs])
        self.greedy_hit = (greedy == target).astype(float)
        self.mapped = float((greedy >= 0).mean())
        self.positions = (greedy + 1).tolist()
        scores = torch.full((len(rows), self.n_items + 1), float("-inf"))
        for k, ex in enumerate(exs):
            scores[k, ex["candidates"]] = torch.as_tensor(logits[k], dtype=torch.float32)
        return scores


def choice_table(results: dict[str, EvalResult], recs: dict[str, ChoiceRecommender],
                 group: np.ndarray, rows: Sequence[str]) -> pd.DataFrame:
    """Both evaluations per method: ranking Hit@1 (Wilson interval), NDCG@20 over the 20
    candidates, cold / warm Hit@1, and for the LM methods greedy Hit@1 and the share of
    greedy answers that name a candidate."""
    out = {}
    for n in rows:
        h = hits(results[n])
        lo, hi = wilson_interval(h)
        m = results[n].metrics()
        r = {"Hit@1 (ranking)": h.mean(), "95% CI": f"[{lo:.3f}, {hi:.3f}]",
             "NDCG@20": m["sampled19/NDCG@20"],
             "cold": h[group == "cold"].mean() if (group == "cold").any() else np.nan,
             "warm": h[group == "warm"].mean() if (group == "warm").any() else np.nan,
             "users": len(h)}
        if n in recs:
            g = recs[n].greedy_hit
            glo, ghi = wilson_interval(g)
            r.update({"Hit@1 (greedy)": g.mean(), "greedy 95% CI": f"[{glo:.3f}, {ghi:.3f}]",
                      "greedy names a candidate": recs[n].mapped})
        out[n] = r
    return pd.DataFrame(out).T


# --- evaluation: generate, map to a candidate -----------------------------------------------


def evaluation_examples(data: SequenceData, users: np.ndarray, negatives: np.ndarray, n_history: int,
                  seed: int) -> list[dict]:
    """One example per evaluation user: the target and its evaluator negatives (the same
    candidates SASRec ranks), shuffled by ``default_rng(seed + 3)``."""
    test_in, target = data.inputs("test"), data.targets("test")
    rng3 = np.random.default_rng(seed + 3)
    out = []
    for row, u in enumerate(users):
        cands = [int(target[u])] + negatives[row].tolist()
        cands = [cands[i] for i in rng3.permutation(len(cands))]
        out.append({"user": int(u), "history": [int(i) for i in test_in[u][-n_history:]],
                    "candidates": cands, "target": int(target[u])})
    return out


class LLMRecommender:
    """``predict(users)`` for the :class:`~recutils.evaluation.Evaluator` from an :class:`ALLMRec`.

    Greedy answers to each user's prompt (``soft=False``: the same words without soft
    tokens, the LLM-Only baseline), mapped to a candidate by :func:`map_to_candidates`
    (exact title, else nearest by the sentence encoder); the prediction is that one item.
    ``item_table`` swaps the soft tokens' item vectors for the call (the SBERT variant).
    After a call: ``answers``, ``exact``, ``mapped``, ``positions`` (1-based place of the
    chosen title in the candidate list), ``seconds_per_user`` (generation only).
    """

    def __init__(self, model: ALLMRec, prompter: Prompter, examples: Sequence[dict],
                 user_vecs: torch.Tensor, encoder, title_emb: np.ndarray,
                 device: torch.device | str, soft: bool = True,
                 item_table: torch.Tensor | None = None) -> None:
        self.model, self.prompter, self.examples = model, prompter, list(examples)
        self.user_vecs, self.encoder, self.title_emb = user_vecs, encoder, title_emb
        self.device, self.soft, self.item_table = device, soft, item_table
        self.row = {ex["user"]: k for k, ex in enumerate(self.examples)}

    def generate(self, rows: Sequence[int]) -> list[str]:
        """Answers for the examples ``rows``, in batches of the model config's ``batch_size``."""
        bs, out = self.model.config.batch_size, []
        for s in track(range(0, len(rows), bs), "generate answers", unit="batch"):
            idx = list(rows[s:s + bs])
            b = prompt_batch(self.model.tokenizer, [self.prompter.prompt(self.examples[i], self.soft)
                                               for i in idx])
            b["user_vecs"] = self.user_vecs[idx]
            out += self.model.generate(to_device(b, self.device))
        return out

    def predict(self, users: np.ndarray) -> list[list[int]]:
        """One ranked list per user: the candidate the answer names (empty if none)."""
        rows = [self.row[int(u)] for u in users]
        saved = self.model.item_table
        if self.item_table is not None:
            self.model.set_item_table(self.item_table)
        t0 = time.perf_counter()
        try:
            self.answers = self.generate(rows)
        finally:
            self.model.item_table = saved
        self.seconds_per_user = (time.perf_counter() - t0) / max(len(rows), 1)
        cands = [self.examples[r]["candidates"] for r in rows]
        self.mapped, self.exact = map_to_candidates(
            self.answers, cands, self.prompter.titles,
            encode_texts(self.answers, encoder=self.encoder, device=self.device), self.title_emb)
        self.positions = [c.index(m) + 1 if m in c else 0 for m, c in zip(self.mapped, cands)]
        return [[m] if m else [] for m in self.mapped]


def candidate_title_embeddings(examples: Sequence[dict], titles: Sequence[str], n_items: int,
                               dim: int, encoder, device: torch.device | str) -> np.ndarray:
    """[n_items + 1, dim] sentence embeddings of every title shown as a candidate (0 elsewhere)."""
    shown = sorted({i for ex in examples for i in ex["candidates"]})
    emb = np.zeros((n_items + 1, dim), dtype=np.float32)
    emb[shown] = encode_texts([titles[i] for i in shown], encoder=encoder, device=device)
    return emb


# --- analyses -------------------------------------------------------------------------------


def hits(result: EvalResult) -> np.ndarray:
    """1.0 where the target is ranked first among the 20 candidates (Hit@1), per user."""
    return (result.ranks["sampled19"] == 0).astype(float)


def summary_table(results: dict[str, EvalResult], methods: Sequence[str], group: np.ndarray,
                  exact: dict[str, float], positions: dict[str, list[int]]) -> pd.DataFrame:
    """Hit@1, its Wilson interval, cold / warm Hit@1, exact-title rate, most chosen position."""
    rows = {}
    for n in methods:
        h = hits(results[n])
        lo, hi = wilson_interval(h)
        rows[n] = {"Hit@1": h.mean(), "95% CI": f"[{lo:.3f}, {hi:.3f}]",
                   "cold": h[group == "cold"].mean() if (group == "cold").any() else np.nan,
                   "warm": h[group == "warm"].mean() if (group == "warm").any() else np.nan,
                   "exact title": exact.get(n, np.nan), "users": len(h)}
        if n in positions:
            top = np.bincount(positions[n]).argmax()
            share = np.mean(np.array(positions[n]) == top)
            rows[n]["most chosen list position"] = f"{top} ({share:.0%})"
    return pd.DataFrame(rows).T


def record_methods(rec: Recorder, results: dict[str, EvalResult], methods: Sequence[str],
                   group: np.ndarray, timer: dict, infer: dict, exact: dict, positions: dict,
                   sasrec: torch.nn.Module, aligner: torch.nn.Module, models: dict[str, ALLMRec],
                   n_lm: int, n_users: int) -> None:
    """Record SASRec on all users and every method on the evaluation sample (with costs)."""
    n_sasrec = count_parameters(sasrec)[0]
    n_aligner = sum(p.numel() for p in aligner.parameters())
    stage_seconds = {"A-LLMRec": timer["stage1_train"] + timer["stage2_train"],
                     "A-LLMRec (SBERT)": timer["stage1_train"] + timer["stage2_train"],
                     "MLP-LLM": timer.get("stage2_train_mlp_llm")}
    rec.record_method("SASRec (all users)", results["SASRec (all users)"].metrics(),
                      train_seconds=timer["sasrec_train"], params_total=n_sasrec,
                      params_trainable=n_sasrec, n_users=n_users)
    for n in methods:
        h = hits(results[n])
        m = dict(results[n].metrics())
        for g in ("cold", "warm"):
            if (group == g).any():
                m[f"sampled19_{g}/HR@1"] = float(h[group == g].mean())
        lo, hi = wilson_interval(h)
        if n == "SASRec":
            ptot, ptr = n_sasrec, n_sasrec
        else:
            ptot = n_lm + n_aligner + n_sasrec
            projector = models["MLP-LLM" if n == "MLP-LLM" else "A-LLMRec"].projector
            ptr = 0 if n == "LLM-Only" else sum(p.numel() for p in projector.parameters())
            ptr += n_aligner if n.startswith("A-LLMRec") else 0
        train_s = 0.0 if n == "LLM-Only" else timer["sasrec_train"] + (stage_seconds.get(n) or 0.0)
        rec.record_method(n, m, train_seconds=train_s, infer_seconds_per_user=infer[n],
                          params_total=ptot, params_trainable=ptr, n_users=len(h),
                          hit1_wilson_95=[lo, hi], exact_title_rate=exact.get(n),
                          n_cold=int((group == "cold").sum()), n_warm=int((group == "warm").sum()),
                          chosen_positions=positions.get(n))


def plot_hit_at_1(results: dict[str, EvalResult], group: np.ndarray,
                  show: Sequence[str] = ("SASRec", "LLM-Only", "MLP-LLM", "A-LLMRec",
                                         "A-LLMRec (SBERT)")) -> plt.Figure:
    """Hit@1 of the methods ``show`` on all / cold / warm users, with 95% Wilson intervals."""
    show = [n for n in show if n in results]
    groups = [("all", np.ones(len(group), bool)), ("cold items", group == "cold"),
              ("warm items", group == "warm")]
    groups = [(g, mask) for g, mask in groups if mask.any()]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(show)
    for j, n in enumerate(show):
        h = hits(results[n])
        mean = np.array([h[mask].mean() for _, mask in groups])
        ci = np.array([wilson_interval(h[mask]) for _, mask in groups])
        ax.bar(np.arange(len(groups)) + (j - (len(show) - 1) / 2) * width, mean, width, label=n,
               yerr=[mean - ci[:, 0], ci[:, 1] - mean], capsize=3)
    ax.set_xticks(np.arange(len(groups)), [f"{g} ({mask.sum()} users)" for g, mask in groups])
    ax.axhline(0.05, color="0.5", ls=":", lw=1)
    ax.set(ylabel="Hit@1 (20 candidates)",
           title="Hit@1 on the same users and candidates (95% Wilson interval); dotted: chance")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_training_curves(hist1: History, steps: dict[str, list[float]], n_examples: int,
                         batch_size: int) -> plt.Figure:
    """Stage 1's loss terms per epoch and stage 2's per-step answer NLL."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
    for k in ("matching", "item_recon", "text_recon", "rec"):
        axes[0].plot(hist1.column(k), label=k)
    axes[0].set(xlabel="epoch", ylabel="loss (whole training set)", yscale="log",
                title="Stage 1: the terms of eq. 6")
    axes[0].legend(fontsize=8)
    for n, s in steps.items():
        axes[1].plot(s, label=n, alpha=0.8)
    axes[1].set(xlabel="step", ylabel="answer NLL",
                title=f"Stage 2: projectors only ({n_examples} users, batch {batch_size})")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def separated(a: np.ndarray, b: np.ndarray) -> tuple[bool, bool]:
    """(mean of ``a`` above ``b``, the two 95% Wilson intervals do not overlap)."""
    (la, ua), (lb, ub) = wilson_interval(a), wilson_interval(b)
    return bool(a.mean() > b.mean()), bool(la > ub or lb > ua)


def _group_hits(results: dict[str, EvalResult], group: np.ndarray, n: str,
                g: str | None = None) -> np.ndarray:
    h = hits(results[n])
    return h if g is None else h[group == g]


def ordering_row(results: dict[str, EvalResult], group: np.ndarray, text: str, paper: str,
                 a: str, b: str, g: str | None = None) -> dict:
    """Claim row "``a`` above ``b``" on Hit@1 (users of group ``g``, or all): yes / no when
    the 95% Wilson intervals separate, else not separable; not run when a side is missing."""
    if a not in results or b not in results or len(_group_hits(results, group, a, g)) == 0:
        return claim(text, paper, "not run at this scale", None)
    ha, hb = _group_hits(results, group, a, g), _group_hits(results, group, b, g)
    above, sep = separated(ha, hb)
    return claim(text, paper, f"{ha.mean():.3f} vs {hb.mean():.3f} ({len(ha)} users)", above,
                 "intervals separate" if sep else "intervals overlap", separable=sep)


def claim_rows(results: dict[str, EvalResult], group: np.ndarray, trainable: int, total: int,
               lm_grads: int) -> list[dict]:
    """The claims table: each paper ordering on the same users, with the intervals' overlap."""
    def hit(n: str, g: str | None = None) -> np.ndarray:
        return _group_hits(results, group, n, g)

    def row(text: str, paper: str, a: str, b: str, g: str | None = None) -> dict:
        return ordering_row(results, group, text, paper, a, b, g)

    rows = [
        row("A-LLMRec beats SASRec (Hit@1)", "Beauty .5809 vs .5298", "A-LLMRec", "SASRec"),
        row("SASRec beats LLM-Only", "Beauty .5298 vs .0120", "SASRec", "LLM-Only"),
        row("A-LLMRec beats MLP-LLM (stage 1 helps)", "Beauty .5809 vs .5548", "A-LLMRec", "MLP-LLM"),
        row("A-LLMRec beats SASRec on cold items", "Beauty .5605 vs .1190", "A-LLMRec", "SASRec",
            "cold"),
        row("A-LLMRec beats SASRec on warm items", "Beauty .6414 vs .6312", "A-LLMRec", "SASRec",
            "warm"),
    ]
    if "A-LLMRec (SBERT)" in results and (group == "cold").any():
        a, b = hit("A-LLMRec (SBERT)", "cold").mean(), hit("A-LLMRec", "cold").mean()
        rows.append(claim("Text codes q work as well as e on cold items (A-LLMRec (SBERT))",
                          "Beauty .5591 vs .5605, Movies .5772 vs .5714", f"{a:.3f} vs {b:.3f}",
                          bool(a >= b), "holds = SBERT variant not below A-LLMRec on cold items"))
    rows.append(claim("Neither the LLM nor SASRec is fine-tuned; only the alignment networks train",
                      "by design", f"{trainable:,} trainable of {total:,} stage-2 parameters; "
                      f"{lm_grads} LM tensors got a gradient", lm_grads == 0))
    return rows


# --- analyses of the choice-format runs -----------------------------------------------------




def record_choice_methods(rec: Recorder, results: dict[str, EvalResult],
                          recs: dict[str, ChoiceRecommender], group: np.ndarray,
                          train_seconds: dict[str, float], infer: dict[str, float],
                          params: dict[str, tuple[int, int]]) -> None:
    """Every method on the evaluation sample: the evaluator's metrics (ranking), Hit@1's
    Wilson interval, cold / warm Hit@1 and, for the LM methods, greedy Hit@1 and the
    share of greedy answers naming a candidate; costs where known."""
    for n, res in results.items():
        h = hits(res)
        m = dict(res.metrics())
        for g in ("cold", "warm"):
            if (group == g).any() and len(h) == len(group):
                m[f"sampled19_{g}/HR@1"] = float(h[group == g].mean())
        extra = {"hit1_wilson_95": list(wilson_interval(h))}
        if n in recs:
            extra.update(greedy_hit1=float(recs[n].greedy_hit.mean()),
                         greedy_hit1_wilson_95=list(wilson_interval(recs[n].greedy_hit)),
                         greedy_names_candidate=recs[n].mapped,
                         chosen_positions=recs[n].positions)
        total, trainable = params.get(n, (None, None))
        rec.record_method(n, m, train_seconds=train_seconds.get(n), infer_seconds_per_user=infer.get(n),
                          params_total=total, params_trainable=trainable, n_users=len(h), **extra)


def plot_budget_curves(histories: dict[str, History], steps_per_chunk: int,
                       refs: dict[str, float], n_valid: int) -> plt.Figure:
    """Validation Hit@1 (letter ranking) after every chunk of stage-2 steps, per run,
    beside reference lines (SASRec, popularity, chance) on the same validation prompts."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for n, h in histories.items():
        y = ([h.before["valid"]] if h.before else []) + h.column("valid")
        x = np.arange(len(y)) * steps_per_chunk if h.before else np.arange(1, len(y) + 1) * steps_per_chunk
        ax.plot(x, y, marker="o", label=n)
    for k, (n, v) in enumerate(refs.items()):
        ax.axhline(v, color=f"C{len(histories) + k}", ls=":", lw=1.2, label=n)
    ax.set(xlabel="stage-2 steps (batch 4)", ylabel=f"validation Hit@1 ({n_valid} users)",
           title="Budget curve: Hit@1 over 20 candidates vs stage-2 steps")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return fig


def choice_claim_rows(results: dict[str, EvalResult], group: np.ndarray, control: dict,
                      trainable: int, total: int, lm_grads: int) -> list[dict]:
    """The claims of the choice-format runs, each on the same users and candidates."""
    def hit(n: str, g: str | None = None) -> np.ndarray:
        return _group_hits(results, group, n, g)

    def row(text: str, paper: str, a: str, b: str, g: str | None = None) -> dict:
        return ordering_row(results, group, text, paper, a, b, g)

    rows = [
        row("A-LLMRec beats LLM-Only (the LM reads the soft tokens)", "Beauty .5809 vs .0120",
            "A-LLMRec", "LLM-Only"),
        row("A-LLMRec beats chance (random ranking)", "-", "A-LLMRec", "random"),
        row("Shuffling the soft tokens across candidates hurts A-LLMRec", "Table 7 row 4 (random joint "
            "embedding): Beauty .5809 -> .5427", "A-LLMRec", "A-LLMRec, soft tokens shuffled"),
        row("A-LLMRec beats SASRec (Hit@1)", "Beauty .5809 vs .5298", "A-LLMRec", "SASRec"),
        row("A-LLMRec beats MLP-LLM (stage 1 helps)", "Beauty .5809 vs .5548", "A-LLMRec", "MLP-LLM"),
        row("A-LLMRec beats SASRec on cold items", "Beauty .5605 vs .1190", "A-LLMRec", "SASRec", "cold"),
        row("A-LLMRec beats SASRec on warm items", "Beauty .6414 vs .6312", "A-LLMRec", "SASRec", "warm"),
        row("Choice loss beats the answer-token loss (ours, not the paper's)", "-", "A-LLMRec",
            "A-LLMRec (answer-token loss)"),
        row("A-LLMRec beats popularity on the same candidates", "-", "A-LLMRec", "popularity"),
    ]
    if "A-LLMRec (SBERT)" in results and (group == "cold").any():
        a, b = hit("A-LLMRec (SBERT)", "cold"), hit("A-LLMRec", "cold")
        _, sep = separated(a, b)
        rows.append(claim("Text codes q work as well as e on cold items (A-LLMRec (SBERT))",
                          "Beauty .5591 vs .5605", f"{a.mean():.3f} vs {b.mean():.3f}",
                          bool(a.mean() >= b.mean()), "holds = SBERT variant not below A-LLMRec on "
                          "cold items", separable=sep))
    rows.append(claim("Positive control: a soft token marking the right candidate is learned",
                      "- (our check)", f"validation Hit@1 {control['before']:.3f} -> {control['after']:.3f} "
                      f"after {control['steps']} steps", control["after"] >= 0.5))
    rows.append(claim("Neither the LLM nor SASRec is fine-tuned; only the alignment networks train",
                      "by design", f"{trainable:,} trainable of {total:,} stage-2 parameters; "
                      f"{lm_grads} LM tensors got a gradient", lm_grads == 0))
    return rows


# --- side runs: TALLRec, few-shot, ablations, favourite genre (issue 14) ---------------------


def side_sample(eval_users: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Rows (sorted) of ``n`` evaluation users drawn by ``default_rng(seed + 8)``, for the
    costlier side tables; every row with None or ``n >= len(eval_users)``."""
    if n is None or n >= len(eval_users):
        return np.arange(len(eval_users))
    return np.sort(np.random.default_rng(seed + 8).choice(len(eval_users), n, replace=False))


def tallrec_model(lm, tokenizer, config: ALLMRecConfig, r: int = 8,
                  targets: Sequence[str] = ("q_proj", "v_proj"),
                  dropout: float = 0.05) -> tuple[ALLMRec, list[torch.nn.Parameter]]:
    """TALLRec (Bao et al., 2023) in the choice format: LoRA of rank ``r`` on a **copy** of
    ``lm`` (the shared frozen LM is left untouched), read through the text-only prompt
    (``soft=False``); returns the model and the LoRA parameters, the only trainable ones."""
    from peft import LoraConfig, inject_adapter_in_model

    model = ALLMRec(copy.deepcopy(lm), tokenizer, torch.zeros(1, 1), user_dim=1, config=config)
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=dropout,
                                       target_modules=list(targets)), model.lm)
    params = [p for n, p in model.lm.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return model, params


def side_stage2(lm, tokenizer, table: torch.Tensor, user_dim: int, config: ALLMRecConfig,
                prompter: ChoicePrompter, examples: Sequence[dict], user_vecs: torch.Tensor,
                steps: int, train: TrainConfig, seed: int, device: torch.device | str,
                desc: str) -> tuple[ALLMRec, History]:
    """Stage 2 for exactly ``steps`` steps, no selection (the last weights are kept): the same
    initialisation and batch stream as the main run, so with A-LLMRec's own table and
    prompter it is the main run's first ``steps`` steps."""
    seed_everything(seed)
    model = ALLMRec(lm, tokenizer, table, user_dim=user_dim, config=config).to(device)
    batches = choice_batches(tokenizer, prompter, examples, user_vecs, train.batch_size, steps, seed)
    hist = fit(model, batches, replace(train, epochs=1, eval_before=False), device=device,
               params=model.projector.parameters(), desc=desc)
    return model, hist


def few_shot_data(data: SequenceData, k: int, exclude: np.ndarray, seed: int) -> SequenceData:
    """The training set of the few-shot scenario (Table 4): ``k`` users with at least two
    training items, none of them in ``exclude`` (the evaluation users), the first ``k`` of
    one ``default_rng(seed + 7)`` permutation (so the 128 users are inside the 256)."""
    pool = np.setdiff1d(np.asarray(usable_users(data)), exclude)
    idx = np.sort(np.random.default_rng(seed + 7).permutation(pool)[:k])
    return replace(data, sequences=[data.sequences[i] for i in idx],
                   timestamps=[data.timestamps[i] for i in idx], user_ids=data.user_ids[idx])


@dataclass
class FewShotRun:
    """SASRec, stage 1 and stage 2 trained on the few-shot users only."""

    data: SequenceData
    sasrec: torch.nn.Module
    stage1: Stage1Result
    model: ALLMRec
    seconds: dict[str, float]


def few_shot_run(data_k: SequenceData, sasrec_config, sasrec_train: TrainConfig,
                 stage1_config: Stage1Config, stage1_train: TrainConfig, Q: torch.Tensor, lm,
                 tokenizer, config: ALLMRecConfig, prompter: ChoicePrompter, steps: int,
                 stage2_train: TrainConfig, seed: int, device: torch.device | str) -> FewShotRun:
    """The whole A-LLMRec pipeline on ``data_k`` (:func:`few_shot_data`): SASRec (selected on
    the few-shot users' validation items, then frozen), stage 1, and ``steps`` stage-2 steps."""
    from recutils.models import SASRec
    from recutils.training import fit_sequential

    seed_everything(seed)
    t0 = time.perf_counter()
    sasrec = SASRec(data_k.n_items, sasrec_config)
    fit_sequential(sasrec, data_k, sasrec_train, device=device, seed=seed,
                   valid_metric="sampled19/NDCG@10", desc=f"SASRec ({data_k.n_users} users)")
    for p in sasrec.parameters():
        p.requires_grad_(False)
    sasrec.eval()
    seconds = {"sasrec": time.perf_counter() - t0}
    E, users = sasrec.items.weight.detach().cpu(), usable_users(data_k)
    s1 = train_stage1(E, Q, stage1_data(data_k, sasrec, E, Q, users, seed, device), stage1_config,
                      stage1_train, seed, device)
    seconds["stage1"] = s1.history.seconds
    train_ex = stage2_examples(data_k, users, None, config.n_history, config.n_candidates, seed)
    seqs = data_k.train_sequences()
    x2 = user_vectors(sasrec, [seqs[ex["user"]][:-1] for ex in train_ex], device)
    model, hist = side_stage2(lm, tokenizer, s1.e_table, E.shape[1], config, prompter, train_ex, x2,
                              steps, stage2_train, seed, device, f"stage 2 ({data_k.n_users} users)")
    seconds["stage2"] = hist.seconds
    return FewShotRun(data_k, sasrec, s1, model, seconds)


def side_record(results: dict[str, EvalResult], group: np.ndarray, **extra) -> dict:
    """Hit@1, its 95% Wilson interval, cold / warm Hit@1 and the users, per method."""
    out = {}
    for n, r in results.items():
        h = hits(r)
        out[n] = {"hit1": float(h.mean()), "hit1_wilson_95": list(wilson_interval(h)),
                  "n_users": len(h), **extra}
        for g in ("cold", "warm"):
            if (group == g).any():
                out[n][f"hit1_{g}"] = float(h[group == g].mean())
    return out


# --- favourite-genre generation (Fig. 4) -----------------------------------------------------


def genre_prompt(history: Sequence[str], history_ids: Sequence[int], soft: bool = True) -> list[Segment]:
    """The opening of the recommendation prompt (user token, watched titles with their item
    tokens) followed by a question about the user's favourite genre instead of candidates."""
    seg = _user_and_history(history, [], history_ids, [], soft)  # no candidates here
    seg.append(" in the previous. Name the movie genre this user likes most, in one or two words.\n"
               "Genre:")
    return seg


def genre_names(items: pd.DataFrame) -> list[str]:
    """The dataset's genre labels (every ``genres`` entry of the item table, "unknown" left out)."""
    return sorted({g for gs in items["genres"] for g in gs if g and g.lower() != "unknown"})


def names_genre(text: str, genres: Sequence[str]) -> list[str]:
    """The labels of ``genres`` that ``text`` names (whole words, case and "'s" ignored;
    "science fiction" counts as Sci-Fi)."""
    low = text.lower().replace("science fiction", "sci-fi")
    return [g for g in genres
            if re.search(r"(?<![a-z])" + re.escape(g.lower().replace("'s", "")) + r"(?![a-z])", low)]


def favourite_genres(model: ALLMRec, titles: Sequence[str], examples: Sequence[dict],
                     user_vecs: torch.Tensor, device: torch.device | str, soft: bool = True,
                     max_new_tokens: int = 6, max_words: int | None = None,
                     batch_size: int = 4) -> tuple[list[str], float]:
    """Greedy answers to :func:`genre_prompt` (the examples' histories) and the seconds per user."""
    model.eval()
    out, t0 = [], time.perf_counter()
    for s in range(0, len(examples), batch_size):
        exs = examples[s:s + batch_size]
        b = prompt_batch(model.tokenizer, [genre_prompt([clip_title(titles[i], max_words)
                                                        for i in ex["history"]], ex["history"], soft)
                                           for ex in exs])
        b["user_vecs"] = user_vecs[s:s + batch_size]
        out += model.generate(to_device(b, device), max_new_tokens=max_new_tokens)
    return out, (time.perf_counter() - t0) / max(len(examples), 1)


def genre_scores(answers: Sequence[str], examples: Sequence[dict], items: pd.DataFrame) -> dict:
    """Share of answers naming a real genre of the dataset, and naming one of the genres of
    the titles in the prompt's history; each with its 95% Wilson interval."""
    genres = genre_names(items)
    named = [names_genre(a, genres) for a in answers]
    real = np.asarray([bool(n) for n in named], float)
    own = np.asarray([bool(set(n) & {g for i in ex["history"] for g in items["genres"].iloc[i]})
                      for n, ex in zip(named, examples)], float)
    return {"names_genre": float(real.mean()), "names_genre_wilson_95": list(wilson_interval(real)),
            "names_history_genre": float(own.mean()),
            "names_history_genre_wilson_95": list(wilson_interval(own)),
            "n_users": len(answers), "answers": list(answers)}


def side_claim_rows(few: dict[int, dict[str, EvalResult]], few_group: np.ndarray,
                    ablation: dict[str, EvalResult], abl_group: np.ndarray,
                    genre: dict[str, dict]) -> list[dict]:
    """Claims of the side scenarios: few-shot (Table 4), stage ablations (Tables 6-7) and the
    favourite-genre generation (Fig. 4), each on the same users."""
    rows = []
    paper_fs = {256: (".3467 vs .2243", ".3605 vs .3467"), 128: (".3099 vs .1813", ".3486 vs .3099")}
    for k, res in few.items():
        a, b = paper_fs.get(k, ("-", "-"))
        rows.append(ordering_row(res, few_group, f"Few-shot K={k}: A-LLMRec beats SASRec",
                                 f"Beauty {a}", "A-LLMRec", "SASRec"))
        rows.append(ordering_row(res, few_group, f"Few-shot K={k}: A-LLMRec (SBERT) beats A-LLMRec",
                                 f"Beauty {b}", "A-LLMRec (SBERT)", "A-LLMRec"))
    paper_abl = {"w/o matching loss": ("Table 6", ".5809 vs .5548"),
                 "w/o reconstruction losses": ("Table 6", ".5809 vs .5327"),
                 "w/o recommendation loss": ("Table 6", ".5809 vs .5523"),
                 "w/o joint embedding": ("Table 7 row 3", ".5809 vs .5213")}
    for n, (table, num) in paper_abl.items():
        if n in ablation:
            rows.append(ordering_row(ablation, abl_group, f"A-LLMRec beats its ablation {n}",
                                     f"{table}, Beauty {num}", "A-LLMRec", n))
    if "A-LLMRec" in genre and "LLM-Only" in genre:
        a, b = genre["A-LLMRec"], genre["LLM-Only"]
        n = a["n_users"]
        ha = np.r_[np.ones(round(a["names_genre"] * n)), np.zeros(n - round(a["names_genre"] * n))]
        hb = np.r_[np.ones(round(b["names_genre"] * n)), np.zeros(n - round(b["names_genre"] * n))]
        above, sep = separated(ha, hb)
        rows.append(claim("Favourite genre: A-LLMRec names a real genre more often than LLM-Only",
                          "Fig. 4 (examples, no rate)", f"{a['names_genre']:.2f} vs "
                          f"{b['names_genre']:.2f} ({n} users)", above,
                          "intervals separate" if sep else "intervals overlap", separable=sep))
    return rows
