"""Notebook 06: every method of notebooks 00-05 side by side, read from their results files.

Nothing is trained here: :func:`methods_table` flattens the ``methods`` records of each
notebook, :func:`protocol_table` keeps the methods that report every protocol, and
:func:`swapped_pairs` lists the pairs whose order differs between two protocols (the
Krichene & Rendle effect of sampled metrics).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Metric key in the results files -> column label in the comparison.
PROTOCOL_COLUMNS = {"full/NDCG@10": "NDCG@10 full", "full_masked/NDCG@10": "NDCG@10 history removed",
                    "sampled100/NDCG@10": "NDCG@10 100 negatives", "sampled19/HR@1": "Hit@1 of 20"}
COST_COLUMNS = ("train_seconds", "infer_seconds_per_user", "params_total", "params_trainable")


def methods_table(records: dict[str, dict]) -> pd.DataFrame:
    """One row per test-split method of every notebook ("NN name"), protocols and costs as columns."""
    rows = []
    for nb, rec in records.items():
        for name, m in rec.get("methods", {}).items():
            if m.get("stage", "test") != "test":
                continue
            row = {"method": f"{nb} {name}", "notebook": nb, "users": m.get("n_users")}
            row.update({label: m["metrics"].get(key, np.nan) for key, label in PROTOCOL_COLUMNS.items()})
            row.update({c: m.get(c) for c in COST_COLUMNS})
            rows.append(row)
    columns = ["method", "notebook", "users", *PROTOCOL_COLUMNS.values(), *COST_COLUMNS]
    return pd.DataFrame(rows, columns=columns).set_index("method")


def protocol_table(table: pd.DataFrame, top: int) -> pd.DataFrame:
    """The ``top`` methods by full-ranking NDCG@10 among those that report every protocol."""
    labels = list(PROTOCOL_COLUMNS.values())
    complete = table.dropna(subset=labels).sort_values("NDCG@10 full", ascending=False)
    return complete.head(top)[labels]


def swapped_pairs(a: pd.Series, b: pd.Series) -> tuple[list[tuple[str, str]], int]:
    """Pairs of methods ordered one way by ``a`` and the other way by ``b``; and how many pairs."""
    names = list(a.index)
    pairs = [(x, y) for i, x in enumerate(names) for y in names[i + 1:]]
    return [(x, y) for x, y in pairs if (a[x] - a[y]) * (b[x] - b[y]) < 0], len(pairs)


def claims_table(records: dict[str, dict]) -> pd.DataFrame:
    """Every claim of every notebook with its notebook number."""
    return pd.DataFrame([{"notebook": nb, **c} for nb, r in records.items() for c in r.get("claims", [])])
