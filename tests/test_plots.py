import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from recutils import plots  # noqa: E402
from recutils.plots import attention_panels, metric_bars, rank_shift  # noqa: E402

# Every function of recutils.plots that draws a figure has a test below (checked here).
FIGURE_HELPERS = {"metric_bars", "rank_shift", "cost_quality", "attention_panels",
                  "attention_comparison", "divergence_heatmaps", "position_profiles", "log_ticks"}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_every_public_plot_helper_is_tested():
    import inspect
    public = {n for n, f in inspect.getmembers(plots, inspect.isfunction)
              if not n.startswith("_") and f.__module__ == plots.__name__}
    assert public == FIGURE_HELPERS, f"add a test for {public - FIGURE_HELPERS}"


def test_rank_shift_ranks_models_per_protocol():
    table = pd.DataFrame({"full": [0.05, 0.06, 0.02], "sampled100": [0.45, 0.40, 0.22]},
                         index=["SASRec", "BERT4Rec", "Pop"])
    ax = rank_shift(table)
    ys = {line.get_ydata()[0]: line.get_ydata()[1] for line in ax.get_lines()}
    assert ys == {2.0: 1.0, 1.0: 2.0, 3.0: 3.0}  # SASRec 2nd then 1st, BERT4Rec 1st then 2nd


def test_attention_panels_one_panel_per_layer():
    att = np.random.default_rng(0).random((3, 4, 20))
    fig = attention_panels(att, boundaries=[1, 8, 14])
    images = [a for a in fig.axes if a.images]
    assert len(images) == 3 and images[0].images[0].get_array().shape == (4, 20)


def test_metric_bars_with_errors():
    vals = pd.DataFrame({"a": [0.1, 0.2], "b": [0.15, 0.1]}, index=["NDCG@10", "HR@10"])
    ax = metric_bars(vals, errors=vals * 0.1)
    assert len(ax.patches) == 4


def _no_overlap(texts, fig):
    fig.canvas.draw()
    return plots._overlaps(texts, fig.canvas.get_renderer())


def test_rank_shift_labels_do_not_overlap_even_with_ties():
    rng = np.random.default_rng(0)
    models = [f"{nb:02d} model with a long name {i}" for nb in range(3) for i in range(6)]
    table = pd.DataFrame(rng.random((len(models), 4)).round(2), index=models,
                         columns=["full", "full_masked", "sampled100", "sampled19"])
    table.iloc[1] = table.iloc[0]  # a tie in every protocol: same rank, same values
    table.iloc[5, 3] = table.iloc[4, 3]
    fig, ax = plt.subplots(figsize=(10, 8))
    rank_shift(table, ax=ax, metric="NDCG@10")
    names = [t for t in ax.texts if t.get_text() in models]
    values = [t for t in ax.texts if t.get_text() not in models]
    assert len(names) == len(models)
    assert len(values) < 4 * len(models), "tied points should share one value label"
    assert not _no_overlap(names, fig), "model names overlap"
    for xi in range(4):
        column = [t for t in values if abs(t.get_position()[0] - xi) < 0.5]
        assert not _no_overlap(column, fig), f"value labels overlap in column {xi}"
    assert ax.get_xlabel() == "protocol" and "NDCG@10" in ax.get_ylabel()


def test_metric_bars_axis_labels():
    vals = pd.DataFrame({"a": [0.1, 0.2]}, index=["full", "sampled100"])
    ax = metric_bars(vals, xlabel="protocol", ylabel="NDCG@10")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("protocol", "NDCG@10")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["full", "sampled100"]


def _cost_table():
    rng = np.random.default_rng(1)
    n = 14
    return pd.DataFrame({
        "notebook": [f"0{i % 3}" for i in range(n)],
        "NDCG@10 masked": np.r_[rng.random(n - 4) * 0.1, [0.0, 0.0, 0.001, np.nan]],
        "train_seconds": 10 ** rng.uniform(1, 2.5, n),           # 1.5 decades: 1-2-5 ticks
        "infer_seconds_per_user": 10 ** rng.uniform(-5, 1, n),   # 6 decades: decade ticks
        "params_trainable": np.r_[10 ** rng.uniform(4, 7, n - 2), [0, 1e5]],
    }, index=[f"method {i} with a name" for i in range(n)])


def test_cost_quality_readable_log_ticks_and_labels():
    table = _cost_table()
    fig = plots.cost_quality(table, "NDCG@10 masked", {"train_seconds": "training seconds",
                                                      "infer_seconds_per_user": "inference s/user",
                                                      "params_trainable": "trainable parameters"})
    axes = fig.axes
    assert len(axes) == 3 and all(ax.get_xscale() == "log" for ax in axes)
    fig.canvas.draw()

    def visible_ticks(ax):
        lo, hi = ax.get_xlim()
        return [t.get_text() for t, v in zip(ax.get_xticklabels(), ax.get_xticks()) if lo <= v <= hi]

    train, infer, params = (visible_ticks(ax) for ax in axes)
    assert len(train) >= 3 and all(t.replace(".", "").isdigit() for t in train), train  # 20 50 100
    assert all("10^{" in t for t in infer) and len(infer) >= 5, infer                  # decades
    assert any(t.endswith("k") for t in params) and any(t.endswith("M") for t in params), params
    for ax in axes:
        boxes = [t.get_window_extent() for t in ax.get_xticklabels() if t.get_text()]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), "ticks overlap"
        labels = [t for t in ax.texts if t.get_text().startswith("method")]
        assert not _no_overlap(labels, fig), f"method labels overlap in {ax.get_xlabel()}"
        assert "log scale" in ax.get_xlabel() and ax.get_ylabel() == "NDCG@10 masked"
    assert len([t for t in axes[0].texts if t.get_text().startswith("method")]) == 13  # NaN left out
    assert len([t for t in axes[2].texts if t.get_text().startswith("method")]) == 12  # and cost 0
    legend = axes[0].get_legend()
    assert legend is not None and sorted(t.get_text() for t in legend.get_texts()) == ["00", "01", "02"]


def test_attention_comparison_one_column_per_model():
    rng = np.random.default_rng(0)
    maps = {"vanilla": rng.random((3, 4, 12)), "tuned": rng.random((3, 4, 12))}
    fig = plots.attention_comparison(maps, boundaries=[1, 5, 9], item_names=["a", "b", "c"], title="t")
    panels = [a for a in fig.axes if a.images]
    assert len(panels) == 6 and panels[0].images[0].get_array().shape == (4, 12)
    assert {a.get_title() for a in panels} >= {"vanilla", "tuned"}


def test_divergence_heatmaps_write_values_in_cells():
    m = np.array([[0.0, 0.2, 0.4], [0.2, 0.0, 0.1], [0.4, 0.1, 0.0]])
    fig = plots.divergence_heatmaps({"a": m, "b": m / 2})
    panels = [a for a in fig.axes if a.images]
    assert len(panels) == 2 and len(panels[0].texts) == 9
    assert panels[0].texts[1].get_text() == "0.20"
    blocks = plots.divergence_heatmaps({"heads": np.random.default_rng(0).random((12, 12))}, block=4)
    assert [t.get_text() for t in blocks.axes[0].get_xticklabels()] == ["0", "1", "2"]


def test_position_profiles_one_line_per_model():
    ax = plots.position_profiles({"SASRec": [0.5, 0.3, 0.2], "RecFormer": [0.2, 0.3, 0.5]})
    assert len(ax.get_lines()) == 2
    assert list(ax.get_lines()[0].get_xdata()) == [1, 2, 3]
    assert ax.get_ylabel() == "share of attention"


def test_log_ticks_are_plain_numbers_on_a_narrow_range_and_never_overlap():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.hist(np.geomspace(20, 737, 50), bins=np.geomspace(20, 737, 20))
    ax.set_xscale("log")
    plots.log_ticks(ax.xaxis, 20, 737)
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    shown = [(t.get_text(), t.get_window_extent()) for t, v in zip(ax.get_xticklabels(), ax.get_xticks())
             if lo <= v <= hi and t.get_text()]
    assert [s for s, _ in shown] == ["20", "50", "100", "200", "500"]
    assert not any(a.overlaps(b) for i, (_, a) in enumerate(shown) for _, b in shown[i + 1:])
    assert not any(t.get_text() for t in ax.xaxis.get_minorticklabels())


def test_rank_shift_leaves_names_beside_their_line_when_nothing_overlaps():
    table = pd.DataFrame({"full": [0.05, 0.06, 0.02], "sampled100": [0.45, 0.40, 0.22]},
                         index=["SASRec", "BERT4Rec", "Pop"])
    ax = rank_shift(table)
    ends = {line.get_color(): line.get_ydata()[-1] for line in ax.get_lines()}
    for t in ax.texts:
        if t.get_text() in table.index:
            assert t.get_position() == (1.08, ends[t.get_color()]), t.get_text()
