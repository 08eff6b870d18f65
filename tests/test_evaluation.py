import math

import ir_measures
import numpy as np
import pytest
import torch
from ir_measures import RR, Qrel, ScoredDoc, Success, nDCG

from recutils.evaluation import (
    Evaluator,
    metrics_from_ranks,
    per_user_metric,
    rank_of_target,
    sample_negatives,
    scores_from_ranked_lists,
)


def test_hand_computed_case():
    # ranks 0, 2, 12: HR@10 = 2/3, NDCG@10 = (1 + 1/log2(4) + 0)/3, MRR = (1 + 1/3 + 1/13)/3
    m = metrics_from_ranks(np.array([0, 2, 12]), ks=(1, 10))
    assert m["HR@1"] == pytest.approx(1 / 3)
    assert m["HR@10"] == pytest.approx(2 / 3)
    assert m["NDCG@10"] == pytest.approx((1 + 0.5) / 3)
    assert m["MRR@10"] == pytest.approx((1 + 1 / 3) / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 13) / 3)
    assert per_user_metric(np.array([0, 2, 12]), "NDCG@10")[1] == pytest.approx(0.5)


def test_ties_count_against_the_target():
    scores = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.5]])
    assert rank_of_target(scores, torch.tensor([2])).item() == 2  # two equal others
    assert rank_of_target(scores, torch.tensor([4])).item() == 3


def test_protocols_on_a_hand_made_user(tiny):
    ev = Evaluator(tiny, "test", ks=(1, 5))
    u = 0
    hist, target = tiny.inputs("test")[u], tiny.targets("test")[u]
    scores = torch.zeros(1, tiny.n_items + 1)
    scores[0, hist] = 10.0 + torch.arange(len(hist), dtype=torch.float)  # history ranked first
    scores[0, target] = 5.0
    others = [i for i in range(1, tiny.n_items + 1) if i not in set(hist) | {target}]
    scores[0, others] = torch.linspace(-1, 0, len(others))
    r = ev.ranks(scores, slice(u, u + 1))
    assert r["full"].item() == len(hist)          # only the history beats the target
    assert r["full_masked"].item() == 0           # history removed: the target is first
    assert r["sampled19"].item() == 0 and r["sampled100"].shape == (1,)


def test_padding_column_never_counts(tiny):
    ev = Evaluator(tiny, "test", protocols=("full",))
    scores = torch.zeros(1, tiny.n_items + 1)
    scores[0, 0] = 100.0
    scores[0, tiny.targets("test")[0]] = 1.0
    assert ev.ranks(scores, slice(0, 1))["full"].item() == 0


def test_negatives_exclude_seen_items_and_are_reproducible(tiny):
    users = np.arange(tiny.n_users)
    a, b = sample_negatives(tiny, users, 10, seed=3), sample_negatives(tiny, users, 10, seed=3)
    assert torch.equal(a, b)
    for u in users:
        row = a[u].tolist()
        assert len(set(row)) == 10 and not set(row) & set(tiny.sequences[u].tolist())
        assert min(row) >= 1 and max(row) <= tiny.n_items
    with pytest.raises(ValueError, match="cannot sample"):
        sample_negatives(tiny, users, tiny.n_items, seed=0)


def test_matches_ir_measures_on_random_scores(tiny):
    """Full-ranking metrics agree with trec_eval (via ir-measures) on tie-free scores."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(tiny.n_users, tiny.n_items + 1, generator=gen)
    ev = Evaluator(tiny, "test", protocols=("full",), ks=(1, 5, 10))
    ours = ev.evaluate(lambda users: scores[users]).metrics()
    targets = tiny.targets("test")
    qrels = [Qrel(str(u), str(targets[u]), 1) for u in range(tiny.n_users)]
    run = [ScoredDoc(str(u), str(i), float(scores[u, i])) for u in range(tiny.n_users)
           for i in range(1, tiny.n_items + 1)]
    ref = ir_measures.calc_aggregate([nDCG @ 10, nDCG @ 5, RR @ 10, RR, Success @ 1, Success @ 5,
                                      Success @ 10], qrels, run)
    assert ours["full/NDCG@10"] == pytest.approx(ref[nDCG @ 10])
    assert ours["full/NDCG@5"] == pytest.approx(ref[nDCG @ 5])
    assert ours["full/MRR@10"] == pytest.approx(ref[RR @ 10])
    assert ours["full/MRR"] == pytest.approx(ref[RR])
    for k in (1, 5, 10):
        assert ours[f"full/HR@{k}"] == pytest.approx(ref[Success @ k])


def test_batching_does_not_change_results(tiny):
    scores = torch.randn(tiny.n_users, tiny.n_items + 1, generator=torch.Generator().manual_seed(1))
    ev = Evaluator(tiny, "valid")
    a = ev.evaluate(lambda u: scores[u], batch_size=3).metrics()
    b = ev.evaluate(lambda u: scores[u], batch_size=1000).metrics()
    assert a == b


def test_ranked_lists_equal_scores_from_their_order(tiny):
    gen = torch.Generator().manual_seed(2)
    scores = torch.rand(tiny.n_users, tiny.n_items + 1, generator=gen)
    scores[:, 0] = -1
    full_lists = scores.argsort(dim=1, descending=True)[:, :-1].tolist()  # every item, best first
    ev = Evaluator(tiny, "test")
    assert ev.evaluate_ranked(full_lists).metrics() == ev.evaluate(lambda u: scores[u]).metrics()


def test_short_ranked_lists_and_invalid_ids(tiny):
    t = tiny.targets("test")
    lists = [[t[0], 0, 9999], [], *[[t[u], t[u]] for u in range(2, tiny.n_users)]]
    lists[1] = [i for i in range(1, 6) if i != t[1]]  # target missing
    s = scores_from_ranked_lists(lists, tiny.n_items)
    assert s[0, t[0]] == 0 and s[0, 0] < -1e8  # id 0 and out-of-range ids are ignored
    r = Evaluator(tiny, "test", protocols=("full", "sampled19")).evaluate_ranked(lists)
    assert r.ranks["full"][0] == 0 and r.ranks["full"][1] >= 4
    assert r.ranks["sampled19"][1] == 19  # a missing target ties with every unlisted negative
    with pytest.raises(ValueError, match="ranked lists"):
        Evaluator(tiny, "test").evaluate_ranked(lists[:2])


def test_confidence_interval_contains_mean(tiny):
    scores = torch.rand(tiny.n_users, tiny.n_items + 1, generator=torch.Generator().manual_seed(3))
    res = Evaluator(tiny, "test").evaluate(lambda u: scores[u])
    lo, hi = res.ci("full/HR@10")
    mean = res.metrics()["full/HR@10"]
    assert lo <= mean <= hi and not math.isnan(lo)
    assert list(res.table().index) == ["full", "full_masked", "sampled100", "sampled19"]


def test_keep_topk_excludes_history(tiny):
    scores = torch.rand(tiny.n_users, tiny.n_items + 1, generator=torch.Generator().manual_seed(4))
    res = Evaluator(tiny, "test").evaluate(lambda u: scores[u], keep_topk=5)
    top = res.topk["full_masked"]
    assert top.shape == (tiny.n_users, 5)
    for u in range(tiny.n_users):
        assert not set(top[u].tolist()) & set(tiny.inputs("test")[u].tolist()) and 0 not in top[u]


def test_unknown_protocol():
    with pytest.raises(ValueError, match="unknown protocols"):
        Evaluator(None, protocols=("sampled50",))
