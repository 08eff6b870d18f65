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


# --- notebook 05 ---

def attention_comparison(maps: dict[str, np.ndarray], boundaries: Sequence[int] = (),
                         item_names: Sequence[str] = (), title: str = "", cmap: str = "viridis",
                         skip_first: bool = True):
    """[CLS] attention of several models side by side (the layout of Fig. 1 of Qu et al.).

    ``maps`` is {model name: [layers, heads, tokens]}; one column per model, one row per
    layer, heads stacked vertically inside a panel, tokens along the horizontal axis.
    ``boundaries`` are the token indices where items start (white lines); ``item_names``
    label the items in that order. Each panel has its own colour scale (the 99th
    percentile), so the pattern, not the absolute level, is compared; with ``skip_first``
    that scale ignores token 0 ([CLS] attending to itself, often most of the mass), which
    then shows saturated.
    """
    names = list(maps)
    n_layers, n_heads, n_tokens = np.asarray(maps[names[0]]).shape
    fig, axes = plt.subplots(n_layers, len(names), squeeze=False, sharex=True,
                             figsize=(min(7.5, 1.5 + n_tokens * 0.09) * len(names), 0.6 + 0.9 * n_layers))
    for col, name in enumerate(names):
        att = np.asarray(maps[name], dtype=np.float64)
        for layer in range(n_layers):
            ax = axes[layer, col]
            scale = att[layer][:, 1:] if skip_first and n_tokens > 1 else att[layer]
            ax.imshow(att[layer], aspect="auto", cmap=cmap, vmin=0,
                      vmax=max(np.quantile(scale, 0.99), 1e-9), interpolation="nearest")
            for b in boundaries:
                ax.axvline(b - 0.5, color="white", lw=1.0)
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"layer {layer}", rotation=0, ha="right", va="center", fontsize=8)
        axes[0, col].set_title(name, fontsize=10)
        ends = list(boundaries[1:]) + [n_tokens]
        for k, (a, b) in enumerate(zip(boundaries, ends)):
            if k < len(item_names):
                axes[-1, col].text((a + b - 1) / 2, n_heads + 1.5, f"{k + 1}: {item_names[k][:18]}",
                                   ha="center", va="top", fontsize=6, rotation=20)
        axes[-1, col].set_xlabel("token ([CLS], then items)", labelpad=22)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def divergence_heatmaps(matrices: dict[str, np.ndarray], labels: Sequence[str] | None = None,
                        title: str = "", cmap: str = "magma_r", block: int = 1):
    """One heatmap per model of a (layer x layer) divergence matrix, values written in small cells.

    With ``block`` > 1 (e.g. the heads per layer of a head x head matrix) the ticks mark
    blocks of that size, labelled by block index, and thin lines separate them.
    """
    names = list(matrices)
    vmax = max(float(np.max(m)) for m in matrices.values())
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        m = np.asarray(matrices[name])
        im = ax.imshow(m, cmap=cmap, vmin=0, vmax=vmax)
        if block > 1:
            centres = np.arange(block / 2 - 0.5, len(m), block)
            ticks = labels or [str(i) for i in range(len(centres))]
            ax.set_xticks(centres, ticks)
            ax.set_yticks(centres, ticks)
            for edge in np.arange(block - 0.5, len(m) - 1, block):
                ax.axhline(edge, color="0.5", lw=0.4)
                ax.axvline(edge, color="0.5", lw=0.4)
        else:
            ticks = labels or [str(i) for i in range(len(m))]
            ax.set_xticks(range(len(m)), ticks)
            ax.set_yticks(range(len(m)), ticks)
        if len(m) <= 12:
            for i in range(len(m)):
                for j in range(len(m)):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > vmax / 2 else "black")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("layer")
    axes[0, 0].set_ylabel("layer")
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.03, pad=0.02, label="JS divergence")
    if title:
        fig.suptitle(title)
    return fig


def position_profiles(profiles: dict[str, np.ndarray], ax=None, title: str = "",
                      xlabel: str = "item position (1 = most recent)"):
    """Lines of attention mass per item position (one per model), positions from 1."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.4))
    for name, p in profiles.items():
        p = np.asarray(p, dtype=np.float64)
        ax.plot(np.arange(1, len(p) + 1), p, marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of attention")
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return ax
