import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from recutils.plots import attention_panels, metric_bars, rank_shift  # noqa: E402


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
