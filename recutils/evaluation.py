"""Ranking protocols and metrics: every paper's protocol from one set of scores.

A model gives, for each evaluated user, either scores over all items (a tensor with
``n_items + 1`` columns; column 0 is padding) or a ranked list of item ids (generative
models). :class:`Evaluator` turns either into the rank of the held-out item under each
protocol, and the rank into metrics:

=============  ==============================================================  ===========
protocol       candidates                                                      used by
=============  ==============================================================  ===========
full           all items; the user's history is *not* removed                  RecBole, RecFormer
full_masked    all items except the user's history                            Harte et al.
sampled100     target + 100 random items the user never interacted with       SASRec, Elephant
sampled19      target + 19 such items (A-LLMRec's 20 candidates)               A-LLMRec (Hit@1)
=============  ==============================================================  ===========

Ranks are 0-based and *pessimistic on ties*: an item scored equal to the target counts as
ranked above it, so a model that scores everything the same gets no credit. With one
relevant item per user: ``HR@k = [rank < k]`` (= Recall@k), ``NDCG@k = 1/log2(rank + 2)``
if ``rank < k``, ``MRR@k = 1/(rank + 1)`` if ``rank < k``. Negatives are sampled
uniformly, without replacement, from the items the user never interacted with (the whole
sequence, test item included), with a fixed seed, so every model sees the same ones. A NaN
score is an error (a diverged model), never a rank.

Sampled metrics are inflated and can reorder models (Krichene & Rendle, KDD 2020); the
course reports them beside full ranking, never alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from recutils.batching import pad_sequences
from recutils.data.sequences import SequenceData
from recutils.progress import Progress

PROTOCOLS = ("full", "full_masked", "sampled100", "sampled19")
DEFAULT_KS = (1, 5, 10, 20)
NEG_INF = float("-inf")
UNLISTED = -1e9  # score given to items a ranked list does not contain


# --- metrics from ranks ---------------------------------------------------------------------

def _checked(ranks: np.ndarray) -> np.ndarray:
    ranks = np.asarray(ranks, dtype=np.float64)
    if not np.all(ranks >= 0):  # also catches NaN
        raise ValueError("ranks must be finite and >= 0 (0 = the target is first); got "
                         f"{ranks[~(ranks >= 0)][:5].tolist()}")
    return ranks


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """HR@k, NDCG@k, MRR@k for each k and the untruncated MRR, averaged over users."""
    ranks = _checked(ranks)
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2), 0.0).mean())
        out[f"MRR@{k}"] = float(np.where(hit, 1.0 / (ranks + 1), 0.0).mean())
    out["MRR"] = float((1.0 / (ranks + 1)).mean())
    return out


def per_user_metric(ranks: np.ndarray, metric: str) -> np.ndarray:
    """One metric (e.g. "NDCG@10", "HR@1", "MRR") per user, for confidence intervals and tests."""
    ranks = _checked(ranks)
    name, _, k = metric.partition("@")
    hit = ranks < int(k) if k else np.ones_like(ranks, dtype=bool)
    if name == "HR":
        return hit.astype(np.float64)
    if name == "NDCG":
        return np.where(hit, 1.0 / np.log2(ranks + 2), 0.0)
    if name == "MRR":
        return np.where(hit, 1.0 / (ranks + 1), 0.0)
    raise ValueError(f"unknown metric {metric!r}: use HR@k, NDCG@k, MRR@k or MRR")


def rank_of_target(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of ``targets[b]`` within ``scores[b]``, ties counted against the target."""
    t = scores.gather(1, targets.view(-1, 1))
    return (scores > t).sum(1) + (scores == t).sum(1) - 1


# --- the evaluator ---------------------------------------------------------------------------

@dataclass
class EvalResult:
    """Per-user ranks under each protocol, and the metrics they give."""

    ranks: dict[str, np.ndarray]
    users: np.ndarray
    ks: tuple[int, ...] = DEFAULT_KS
    topk: dict[str, np.ndarray] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat dict like ``{"full/NDCG@10": 0.07, "sampled19/HR@1": 0.4, ...}``."""
        return {f"{p}/{m}": v for p, r in self.ranks.items()
                for m, v in metrics_from_ranks(r, self.ks).items()}

    def table(self) -> pd.DataFrame:
        """Protocols as rows, metrics as columns."""
        return pd.DataFrame({p: metrics_from_ranks(r, self.ks) for p, r in self.ranks.items()}).T

    def ci(self, key: str, level: float = 0.95) -> tuple[float, float]:
        """Normal-approximation confidence interval of the mean of ``"protocol/metric"``."""
        protocol, metric = key.split("/")
        x = per_user_metric(self.ranks[protocol], metric)
        z = {0.9: 1.645, 0.95: 1.96, 0.99: 2.576}[level]
        half = z * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else float("nan")
        return float(x.mean() - half), float(x.mean() + half)


class Evaluator:
    """Evaluate a model on one split (``stage`` "valid" or "test") under several protocols.

    >>> ev = Evaluator(data, stage="valid")
    >>> result = ev.evaluate(recommender)   # anything with predict(users), or a function
    >>> result.metrics()["full/NDCG@10"]
    """

    def __init__(
        self,
        data: SequenceData,
        stage: str = "test",
        protocols: Sequence[str] = PROTOCOLS,
        ks: Sequence[int] = DEFAULT_KS,
        users: Sequence[int] | None = None,
        seed: int = 0,
    ) -> None:
        unknown = set(protocols) - set(PROTOCOLS)
        if unknown:
            raise ValueError(f"unknown protocols {sorted(unknown)}; known: {PROTOCOLS}")
        self.data, self.stage = data, stage
        self.protocols, self.ks = tuple(protocols), tuple(ks)
        self.users = np.arange(data.n_users) if users is None else np.asarray(users, dtype=np.int64)
        self.targets = torch.as_tensor(data.targets(stage)[self.users])
        inputs = data.inputs(stage)
        self.histories = [inputs[u] for u in self.users]
        self._history = pad_sequences(self.histories, max(1, max(len(h) for h in self.histories)))
        self.negatives = {
            n: sample_negatives(data, self.users, n, seed=seed + n)
            for n in (100, 19) if f"sampled{n}" in self.protocols
        }

    def ranks(self, scores: torch.Tensor, rows: slice) -> dict[str, torch.Tensor]:
        """Ranks under every protocol for the evaluator's users ``rows`` given their ``scores``."""
        scores = scores.float().clone()
        scores[:, 0] = NEG_INF
        bad = torch.isnan(scores).any(1)
        if bool(bad.any()):
            users = self.users[rows][bad.cpu().numpy()]
            raise ValueError(
                f"scores contain NaN for {len(users)} of {len(bad)} users (dataset users "
                f"{users[:5].tolist()}{' ...' if len(users) > 5 else ''}): a NaN cannot be ranked. "
                "The model has probably diverged (check its training loss; lower the learning rate).")
        dev = scores.device
        targets = self.targets[rows].to(dev)
        out = {}
        if "full" in self.protocols:
            out["full"] = rank_of_target(scores, targets)
        if "full_masked" in self.protocols:
            hist = self._history[rows].to(dev)
            masked = scores.clone()
            target_scores = masked.gather(1, targets.view(-1, 1))
            masked.scatter_(1, hist, NEG_INF)
            masked.scatter_(1, targets.view(-1, 1), target_scores)  # a re-consumed target stays
            masked[:, 0] = NEG_INF
            out["full_masked"] = rank_of_target(masked, targets)
        for n, neg in self.negatives.items():
            cand = torch.cat([targets.view(-1, 1), neg[rows].to(dev)], dim=1)
            out[f"sampled{n}"] = rank_of_target(scores.gather(1, cand),
                                                torch.zeros_like(targets))
        return out

    def evaluate(
        self,
        model: Recommender | Callable[[np.ndarray], Predictions],
        batch_size: int = 256,
        keep_topk: int = 0,
        progress: bool = False,
        desc: str = "evaluate",
    ) -> EvalResult:
        """Call ``model.predict(user_indices)`` (or ``model(users)``) batch by batch; rank targets.

        It receives dataset user indices (rows of ``data.sequences``) and returns scores
        ``[len(users), n_items + 1]`` on any device, or one ranked item list per user (best
        first; see :meth:`evaluate_ranked`). With ``keep_topk`` the top items with the
        history removed are kept (for coverage, case studies). ``progress`` reports the users
        scored so far (:mod:`recutils.progress`; for slow models).
        """
        predict = model.predict if hasattr(model, "predict") else model

        def score_fn(users: np.ndarray) -> torch.Tensor:
            out = predict(users)
            if isinstance(out, torch.Tensor):
                return out
            return scores_from_ranked_lists(out, self.data.n_items)

        ranks: dict[str, list[torch.Tensor]] = {p: [] for p in self.protocols}
        tops = []
        with torch.no_grad(), Progress(desc, total=len(self.users), unit="user",
                                       disable=not progress) as bar:
            for start in range(0, len(self.users), batch_size):
                rows = slice(start, start + batch_size)
                scores = score_fn(self.users[rows])
                bar.update(len(self.users[rows]))
                for p, r in self.ranks(scores, rows).items():
                    ranks[p].append(r.cpu())
                if keep_topk:
                    tops.append(self.top_items(scores, rows, keep_topk).cpu())
        result = EvalResult({p: torch.cat(r).numpy() for p, r in ranks.items()},
                            self.users.copy(), self.ks)
        if keep_topk:
            result.topk["full_masked"] = torch.cat(tops).numpy()
        return result

    def top_items(self, scores: torch.Tensor, rows: slice, k: int) -> torch.Tensor:
        """The ``k`` best items per user with padding and the user's history removed."""
        scores = scores.float().clone()
        hist = self._history[rows].to(scores.device)
        scores.scatter_(1, hist, NEG_INF)
        scores[:, 0] = NEG_INF
        return scores.topk(k, dim=1).indices

    def evaluate_ranked(self, ranked: Sequence[Sequence[int]], keep_topk: int = 0) -> EvalResult:
        """Evaluate ranked item lists (one per evaluator user, best first; e.g. beam outputs).

        Items absent from a list score below every listed one and tie among themselves, so
        a target missing from its list is ranked behind all of them (a miss at any cut-off
        shorter than the catalogue).
        """
        if len(ranked) != len(self.users):
            raise ValueError(f"got {len(ranked)} ranked lists for {len(self.users)} users")
        scores = scores_from_ranked_lists(ranked, self.data.n_items)
        lookup = {int(u): i for i, u in enumerate(self.users)}
        return self.evaluate(lambda users: scores[[lookup[int(u)] for u in users]],
                             keep_topk=keep_topk)


# What a recommender returns for a batch of users: scores over ids 0..n_items, or one
# ranked list of item ids per user (generative models).
Predictions = torch.Tensor | Sequence[Sequence[int]]


class Recommender(Protocol):
    """The one inference interface of the course: ``predict(users)`` -> :data:`Predictions`."""

    def predict(self, users: np.ndarray) -> Predictions: ...


def scores_from_ranked_lists(ranked: Sequence[Sequence[int]], n_items: int) -> torch.Tensor:
    """Turn ranked lists into a score matrix: position p gets ``-p``, unlisted items ``UNLISTED``.

    Repeated items keep their first (best) position; ids outside 1..n_items are ignored.
    """
    scores = torch.full((len(ranked), n_items + 1), UNLISTED)
    for row, items in enumerate(ranked):
        for pos, item in reversed(list(enumerate(items))):
            if 1 <= int(item) <= n_items:
                scores[row, int(item)] = -float(pos)
    return scores


def sample_negatives(data: SequenceData, users: np.ndarray, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` items per user, uniform without replacement, never an item of the user's sequence."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(users), n), dtype=np.int64)
    for row, u in enumerate(users):
        seen = set(data.sequences[u].tolist())
        if data.n_items - len(seen) < n:
            raise ValueError(f"user {u} has interacted with all but {data.n_items - len(seen)} "
                             f"items; cannot sample {n} negatives")
        picked: list[int] = []
        while len(picked) < n:
            draw = rng.integers(1, data.n_items + 1, size=2 * n)
            for i in draw.tolist():
                if i not in seen:
                    seen.add(i)
                    picked.append(i)
                    if len(picked) == n:
                        break
        out[row] = picked
    return torch.as_tensor(out)
