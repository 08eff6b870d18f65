"""Figures shared by the notebooks: metric bars, protocol rank shifts, attention panels.

Every function draws on a matplotlib Axes/Figure and returns it; saving goes through
:meth:`recutils.notebook.Recorder.save_fig` so file names follow ``NN_slug.png``.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def metric_bars(values: pd.DataFrame, errors: pd.DataFrame | None = None, ax=None,
                ylabel: str = "", title: str = ""):
    """Grouped bars: rows of ``values`` are groups (e.g. metrics), columns are methods.

    ``errors`` (same shape) gives symmetric error bars, e.g. the std over seeds.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 + 1.1 * len(values) * max(1, len(values.columns)) / 3, 3.6))
    n = len(values.columns)
    width = 0.8 / max(n, 1)
    x = np.arange(len(values))
    for j, col in enumerate(values.columns):
        err = None if errors is None else errors[col].to_numpy()
        ax.bar(x + (j - (n - 1) / 2) * width, values[col].to_numpy(), width, yerr=err,
               label=str(col), capsize=3)
    ax.set_xticks(x, [str(i) for i in values.index])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return ax


def rank_shift(table: pd.DataFrame, ax=None, title: str = "Rank of each model under each protocol"):
    """Slope chart: ``table`` has models as rows, protocols as columns (higher value = better).

    Each line follows one model's rank (1 = best) from protocol to protocol; crossing lines
    are protocols that disagree about which model is better.
    """
    ranks = table.rank(axis=0, ascending=False, method="min")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.8 + 1.6 * len(table.columns), 0.6 + 0.45 * len(table)))
    x = np.arange(len(table.columns))
    for model, row in ranks.iterrows():
        ax.plot(x, row.to_numpy(), marker="o")
        ax.annotate(str(model), (x[-1], row.iloc[-1]), xytext=(6, 0), textcoords="offset points",
                    va="center", fontsize=9)
        for xi, (r, v) in enumerate(zip(row.to_numpy(), table.loc[model].to_numpy())):
            ax.annotate(f"{v:.3f}", (xi, r), xytext=(0, 7), textcoords="offset points",
                        ha="center", fontsize=7, color="0.35")
    ax.set_xticks(x, [str(c) for c in table.columns])
    ax.set_yticks(range(1, len(table) + 1))
    ax.set_ylim(len(table) + 0.5, 0.5)
    ax.set_ylabel("rank (1 = best)")
    ax.set_title(title)
    ax.set_xlim(-0.3, len(x) - 0.3 + 0.8)
    return ax


def attention_panels(attention: np.ndarray, boundaries: Sequence[int] = (),
                     layer_names: Sequence[str] | None = None, title: str = "",
                     cmap: str = "viridis", vmax_quantile: float = 0.99):
    """Attention of one query token (e.g. [CLS]) to every token, one panel per layer.

    ``attention`` is [layers, heads, tokens]; in each panel the heads are stacked on the
    vertical axis and the tokens run along the horizontal axis (the layout of Fig. 1 of
    the Elephant paper). ``boundaries`` are token indices where a new item starts; they
    are drawn as white vertical lines.
    """
    attention = np.asarray(attention, dtype=np.float64)
    n_layers, n_heads, n_tokens = attention.shape
    fig, axes = plt.subplots(n_layers, 1, figsize=(min(16, 2 + n_tokens * 0.08), 0.9 + 0.28 * n_heads * n_layers),
                             sharex=True, squeeze=False)
    vmax = np.quantile(attention, vmax_quantile)
    for i, ax in enumerate(axes[:, 0]):
        im = ax.imshow(attention[i], aspect="auto", cmap=cmap, vmin=0, vmax=vmax,
                       interpolation="nearest")
        for b in boundaries:
            ax.axvline(b - 0.5, color="white", lw=0.8)
        ax.set_ylabel(layer_names[i] if layer_names else f"layer {i}", rotation=0, ha="right",
                      va="center", fontsize=8)
        ax.set_yticks([])
    axes[-1, 0].set_xlabel("token position")
    fig.colorbar(im, ax=axes[:, 0].tolist(), fraction=0.02, pad=0.01, label="attention")
    if title:
        fig.suptitle(title)
    return fig
