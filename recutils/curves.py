"""Budget curves: a model's validation ranking metrics as its training budget grows, beside
the random-list and popularity rows on the same users.

The course's answer to "does it learn, and would more training help?" when a model is not
(yet) above popularity: the metric after each stretch of training (at least four points,
the untrained model first), on seeded *validation* users, never the test users.

>>> curve = BudgetCurve(Evaluator(data, "valid", protocols=("full_masked",), users=u), "pairs")
>>> curve.add(0, ranked_lists)          # one point: the model's ranked lists for those users
>>> curve.add_result(8, result)         # or an EvalResult on the same users (sampled protocols)
>>> curve.table(seed=0)                 # method / pairs / metrics, references repeated
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from recutils.data.sequences import SequenceData
from recutils.evaluation import EvalResult, Evaluator
from recutils.models.popularity import Popularity, RandomScores
from recutils.training import sequence_scorer

CURVE_KEYS = ("full_masked/HR@10", "full_masked/NDCG@10")


def reference_rows(data: SequenceData, evaluator: Evaluator, seed: int,
                   models: dict[str, torch.nn.Module] | None = None, device="cpu",
                   ) -> dict[str, EvalResult]:
    """The random-list (:class:`RandomScores`, seeded per user) and popularity rows on
    ``evaluator``'s users, every protocol it has, and any trained sequential ``models``
    (name -> model) on the same users."""
    out = {"Random list": evaluator.evaluate(RandomScores(data.n_items, seed)),
           "Popularity": evaluator.evaluate(Popularity(data))}
    for name, model in (models or {}).items():
        out[name] = evaluator.evaluate(sequence_scorer(model, data, evaluator.stage, device))
    return out


@dataclass
class BudgetCurve:
    """Points (budget, metrics) of one model on ``evaluator``'s users, in the order added.

    ``x_name`` names the budget axis ("pairs", "examples", "steps"); ``keys`` are the
    :meth:`EvalResult.metrics` entries kept (full ranking with the history removed).
    """

    evaluator: Evaluator
    x_name: str = "examples"
    keys: tuple[str, ...] = CURVE_KEYS
    points: list[dict] = field(default_factory=list)

    def add(self, x: int, ranked: Sequence[Sequence[int]]) -> dict:
        """Score the model's ranked item lists (one per evaluator user, in order) at budget ``x``."""
        return self.add_result(x, self.evaluator.evaluate_ranked(ranked))

    def add_result(self, x: int, result: EvalResult) -> dict:
        """Add the point of an already computed result on the evaluator's users (e.g. the
        target's rank among sampled candidates) at budget ``x``."""
        if not np.array_equal(result.users, self.evaluator.users):
            raise ValueError("the result's users are not the curve evaluator's users "
                             f"({len(result.users)} vs {len(self.evaluator.users)})")
        m = result.metrics()
        self.points.append({self.x_name: int(x), **{k: float(m[k]) for k in self.keys}})
        return self.points[-1]

    def table(self, seed: int, method: str = "model") -> pd.DataFrame:
        """Long table (method, budget, keys): the model's points, then the random-list and
        popularity rows on the same users repeated at every budget (flat references)."""
        rows = [{"method": method, **p} for p in self.points]
        data = self.evaluator.data
        for name, r in reference_rows(data, self.evaluator, seed).items():
            m = r.metrics()
            rows += [{"method": name, self.x_name: p[self.x_name],
                      **{k: float(m[k]) for k in self.keys}} for p in self.points]
        return pd.DataFrame(rows)

    def plot(self, table: pd.DataFrame, key: str, ax=None, xlabel: str | None = None,
             title: str | None = None):
        """One panel: ``key`` vs budget, the model solid with markers, references dashed."""
        ax = ax if ax is not None else plt.subplots(figsize=(5, 3.4))[1]
        for name, part in table.groupby("method", sort=False):
            model = name not in ("Random list", "Popularity")
            ax.plot(part[self.x_name], part[key], marker="o" if model else None,
                    ls="-" if model else "--", label=name)
        ax.set(xlabel=xlabel or self.x_name, ylabel=f"validation {key.split('/')[-1]}",
               title=title or f"Budget curve ({len(self.evaluator.users)} validation users)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        return ax
