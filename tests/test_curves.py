"""recutils.curves: the budget curve and its reference rows, checked by hand."""

import matplotlib
import numpy as np
import pytest
from conftest import make_raw

from recutils.curves import BudgetCurve, reference_rows
from recutils.data import prepare
from recutils.evaluation import EvalResult, Evaluator

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def data():
    return prepare(make_raw(n_users=30, n_items=40))


def hand_metrics(lists, targets, k=10):
    """HR@k and NDCG@k of ranked lists (target absent: a miss), computed here directly."""
    hits, gains = [], []
    for items, t in zip(lists, targets):
        top = list(items[:k])
        hits.append(t in top)
        gains.append(1 / np.log2(top.index(t) + 2) if t in top else 0.0)
    return float(np.mean(hits)), float(np.mean(gains))


def test_points_match_a_hand_computation_and_references_repeat(data):
    users = np.arange(0, 30, 3)
    ev = Evaluator(data, "valid", protocols=("full_masked",), users=users, seed=0)
    curve = BudgetCurve(ev, "pairs")
    targets = [int(t) for t in data.targets("valid")[users]]
    rng = np.random.default_rng(0)
    for x, n_right in ((0, 0), (8, 3), (16, 6)):
        lists = []
        for row, t in enumerate(targets):
            unseen = [i for i in range(1, data.n_items + 1)
                      if i != t and i not in set(ev.histories[row].tolist())]
            items = list(rng.choice(unseen, 10, replace=False))
            if row < n_right:        # the first n_right users get the target at rank row % 3
                items.insert(row % 3, t)
            lists.append(items[:10])
        point = curve.add(x, lists)
        hr, ndcg = hand_metrics(lists, targets)
        assert point["pairs"] == x
        assert point["full_masked/HR@10"] == pytest.approx(hr)
        assert point["full_masked/NDCG@10"] == pytest.approx(ndcg)
    assert [p["full_masked/HR@10"] for p in curve.points] == pytest.approx([0, 0.3, 0.6])
    with pytest.raises(ValueError, match="ranked lists"):
        curve.add(24, lists[:-1])
    table = curve.table(seed=0, method="M")
    assert list(table["method"].unique()) == ["M", "Random list", "Popularity"]
    ref = reference_rows(data, ev, seed=0)
    for name, r in ref.items():
        part = table[table["method"] == name]
        assert part["pairs"].tolist() == [0, 8, 16]
        assert (part["full_masked/HR@10"] == r.metrics()["full_masked/HR@10"]).all()
    ax = curve.plot(table, "full_masked/NDCG@10")
    assert len(ax.get_lines()) == 3 and ax.get_xlabel() == "pairs"


def test_reference_rows_are_seeded_per_user_and_popularity_ranks_by_counts(data):
    ev = Evaluator(data, "test", protocols=("full",), seed=0)
    rows, again = reference_rows(data, ev, seed=0), reference_rows(data, ev, seed=0)
    assert np.array_equal(rows["Random list"].ranks["full"], again["Random list"].ranks["full"])
    # a user's random rank does not depend on which other users are evaluated
    few = Evaluator(data, "test", protocols=("full",), users=ev.users[5:9], seed=0)
    assert np.array_equal(reference_rows(data, few, seed=0)["Random list"].ranks["full"],
                          rows["Random list"].ranks["full"][5:9])
    counts = data.item_counts()
    for r, t in zip(rows["Popularity"].ranks["full"], data.targets("test")[ev.users]):
        above = int((counts[1:] > counts[t]).sum())
        tied = int((counts[1:] == counts[t]).sum()) - 1
        assert above <= r <= above + tied


def test_add_result_takes_sampled_ranks_and_rejects_other_users(data):
    users = np.arange(0, 20, 2)
    ev = Evaluator(data, "valid", protocols=("sampled19",), users=users, seed=0)
    curve = BudgetCurve(ev, "examples", keys=("sampled19/HR@5", "sampled19/NDCG@10"))
    ranks = np.array([0, 1, 4, 5, 9, 10, 19, 0, 2, 7])  # 0-based rank of the target among 20
    point = curve.add_result(40, EvalResult({"sampled19": ranks}, users.copy()))
    assert point["examples"] == 40
    assert point["sampled19/HR@5"] == pytest.approx(0.5)  # ranks 0, 1, 4, 0, 2: 5 of 10
    # by hand: ranks 0, 1, 4, 5, 9, 0, 2, 7 are in the top 10; gain 1 / log2(rank + 2)
    hand = (2 * 1 + 1 / np.log2(3) + 1 / np.log2(6) + 1 / np.log2(7) + 1 / np.log2(11)
            + 1 / np.log2(4) + 1 / np.log2(9)) / 10
    assert point["sampled19/NDCG@10"] == pytest.approx(hand)
    with pytest.raises(ValueError, match="users"):
        curve.add_result(80, EvalResult({"sampled19": ranks}, users + 1))
    table = curve.table(seed=0, method="M")
    assert set(table["method"]) == {"M", "Random list", "Popularity"}
    assert "sampled19/HR@5" in table.columns
