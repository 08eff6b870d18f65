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
                ylabel: str = "", title: str = "", xlabel: str = ""):
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
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return ax


def _overlaps(texts, renderer) -> list[tuple[int, int]]:
    """Pairs of texts whose drawn bounding boxes overlap (after ``fig.canvas.draw()``)."""
    boxes = [t.get_window_extent(renderer) for t in texts]
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
            if boxes[i].overlaps(boxes[j])]


def _spread(texts, ax, min_gap_px: float = 1.0, vertical: bool = True) -> None:
    """Push apart texts that still overlap after adjustText, along one axis, in pixels."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_data = ax.transData.inverted()
    for _ in range(200):
        pairs = _overlaps(texts, renderer)
        if not pairs:
            return
        for i, j in pairs:
            bi, bj = texts[i].get_window_extent(renderer), texts[j].get_window_extent(renderer)
            if vertical:
                shift = (min(bi.y1, bj.y1) - max(bi.y0, bj.y0)) / 2 + min_gap_px
                lower, upper = (texts[i], texts[j]) if bi.y0 <= bj.y0 else (texts[j], texts[i])
                for t, sign in ((lower, -1), (upper, 1)):
                    x, y = ax.transData.transform(t.get_position())
                    t.set_position(to_data.transform((x, y + sign * shift)))
            else:
                shift = (min(bi.x1, bj.x1) - max(bi.x0, bj.x0)) / 2 + min_gap_px
                left, right = (texts[i], texts[j]) if bi.x0 <= bj.x0 else (texts[j], texts[i])
                for t, sign in ((left, -1), (right, 1)):
                    x, y = ax.transData.transform(t.get_position())
                    t.set_position(to_data.transform((x + sign * shift, y)))


def rank_shift(table: pd.DataFrame, ax=None, title: str = "Rank of each model under each protocol",
               metric: str = "", values: bool = True):
    """Slope chart: ``table`` has models as rows, protocols as columns (higher value = better).

    Each line follows one model's rank (1 = best) from protocol to protocol; crossing lines
    are protocols that disagree about which model is better. Model names sit at the right
    end, each point carries its value (``values``); adjustText (then a vertical nudge) keeps
    labels from overlapping, and tied points share one value label. ``metric`` names what
    the ranks are by, on the y axis.
    """
    from adjustText import adjust_text

    ranks = table.rank(axis=0, ascending=False, method="min")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.8 + 1.6 * len(table.columns), 0.6 + 0.45 * len(table)))
    x = np.arange(len(table.columns))
    names, numbers, seen = [], [], set()
    for model, row in ranks.iterrows():
        (line,) = ax.plot(x, row.to_numpy(), marker="o")
        names.append(ax.text(x[-1] + 0.08, row.iloc[-1], str(model), va="center", ha="left",
                             fontsize=9, color=line.get_color()))
        if values:
            for xi, (r, v) in enumerate(zip(row.to_numpy(), table.loc[model].to_numpy())):
                label = f"{v:.3f}"
                if (xi, r, label) in seen:  # a tie: one label for the shared point
                    continue
                seen.add((xi, r, label))
                numbers.append(ax.text(xi, r - 0.3, label, ha="center", va="bottom", fontsize=7,
                                       color="0.35"))
    ax.set_xticks(x, [str(c) for c in table.columns])
    ax.set_yticks(range(1, len(table) + 1))
    ax.set_ylim(len(table) + 0.5, 0.2)
    ax.set_xlabel("protocol")
    ax.set_ylabel(f"rank by {metric} (1 = best)" if metric else "rank (1 = best)")
    ax.set_title(title)
    ax.set_xlim(-0.3, len(x) - 0.3 + 0.8)
    ax.figure.canvas.draw()
    if len(names) > 1 and _overlaps(names, ax.figure.canvas.get_renderer()):  # else leave them
        adjust_text(names, ax=ax, only_move={"text": "y", "static": "y", "explode": "y", "pull": "y"},
                    ensure_inside_axes=False, arrowprops=dict(arrowstyle="-", color="0.6", lw=0.5))
    _spread(names, ax)
    # value labels: each column on its own (they never collide across columns)
    for xi in range(len(x)):
        column = [t for t in numbers if t.get_position()[0] == xi]
        if len(column) > 1:
            _spread(column, ax)
    return ax


def log_ticks(axis, lo: float, hi: float, si: bool = False) -> None:
    """Readable log ticks: decades (10^-4, 10^-3 or 1k, 10k, 1M with ``si``), and 1-2-5 steps in
    plain numbers when the data span less than two decades; no minor tick labels."""
    from matplotlib.ticker import (
        EngFormatter,
        FuncFormatter,
        LogFormatterSciNotation,
        LogLocator,
        NullFormatter,
    )

    narrow = hi / max(lo, 1e-300) < 100
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if narrow else (1.0,), numticks=12))
    if si:
        axis.set_major_formatter(EngFormatter(sep=""))
    elif narrow:
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        axis.set_major_formatter(LogFormatterSciNotation())
    axis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10) * 0.1, numticks=12))
    axis.set_minor_formatter(NullFormatter())


def cost_quality(table: pd.DataFrame, quality: str, costs: dict[str, str], group: str = "notebook",
                 title: str = "", label_min_quality: float | None = None):
    """One panel per cost (log x axis, decade ticks) against ``quality``, one colour per ``group``.

    ``table`` has one row per method (the index names it) with the cost columns, ``quality``
    and ``group``; ``costs`` maps a cost column to its axis label (a column named
    ``params_*`` gets SI ticks: 1k, 1M). Rows without a positive cost are left out of that
    panel. Method names are placed with adjustText; ``label_min_quality`` labels only the
    methods at least that good (the rest stay unlabelled points).
    """
    import seaborn as sns
    from adjustText import adjust_text

    fig, axes = plt.subplots(1, len(costs), figsize=(5.2 * len(costs), 5.0), squeeze=False)
    groups = sorted(table.dropna(subset=[quality])[group].astype(str).unique())
    palette = dict(zip(groups, sns.color_palette("tab10", len(groups))))
    for ax, (col, label) in zip(axes[0], costs.items()):
        sub = table[[col, quality, group]].dropna()
        sub = sub.astype({col: float, quality: float, group: str})
        sub = sub[sub[col] > 0]
        sns.scatterplot(data=sub, x=col, y=quality, hue=group, hue_order=groups, palette=palette,
                        s=36, ax=ax, legend="auto" if ax is axes[0, 0] else False)
        ax.set_xscale("log")
        ax.margins(x=0.08, y=0.12)  # room for the labels inside the frame
        log_ticks(ax.xaxis, sub[col].min(), sub[col].max(), si=col.startswith("params"))
        texts = [ax.text(r[col], r[quality], str(name), fontsize=6.5, color="0.2")
                 for name, r in sub.iterrows()
                 if label_min_quality is None or r[quality] >= label_min_quality]
        if texts:
            adjust_text(texts, x=sub[col].to_numpy(), y=sub[quality].to_numpy(), ax=ax,
                        arrowprops=dict(arrowstyle="-", color="0.6", lw=0.5))
            _spread(texts, ax)
        ax.set(xlabel=f"{label} (log scale)", ylabel=quality)
        ax.grid(alpha=0.3, which="major")
    if axes[0, 0].get_legend() is not None:
        axes[0, 0].legend(title=group, fontsize=7, title_fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


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
                         skip_first: bool = True, strata: Sequence[Sequence[int]] = ()):
    """[CLS] attention of several models side by side (the layout of Fig. 1 of Qu et al.).

    ``maps`` is {model name: [layers, heads, tokens]}; one column per model, one row per
    layer, heads stacked vertically inside a panel, tokens along the horizontal axis.
    ``boundaries`` are the token indices where items start (white lines); ``item_names``
    label the items in that order. Each panel has its own colour scale (the 99th
    percentile), so the pattern, not the absolute level, is compared; with ``skip_first``
    that scale ignores token 0 ([CLS] attending to itself, often most of the mass), which
    then shows saturated. ``strata`` (lists of layers) groups the rows: each stratum's layers
    are labelled with its number and colour, and a coloured bar marks them on the left.
    """
    names = list(maps)
    stratum_of = {layer: k for k, group in enumerate(strata) for layer in group}
    colours = plt.get_cmap("tab10").colors
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
                k = stratum_of.get(layer)
                label = f"layer {layer}" if k is None else f"S{k + 1} · layer {layer}"
                colour = "black" if k is None else colours[k % len(colours)]
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8, color=colour)
                if k is not None:
                    ax.spines["left"].set(color=colour, linewidth=4)
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
