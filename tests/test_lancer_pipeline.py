"""recutils.pipelines.lancer on a toy dataset with a 2-layer random Llama and a character tokenizer."""

import numpy as np
import pytest
import torch
from conftest import make_raw, tiny_llama
from test_lancer import CharTokenizer

from recutils.data import prepare
from recutils.evaluation import EvalResult, Evaluator
from recutils.models.lancer import LANCERConfig
from recutils.pipelines import lancer as pipe
from recutils.training import fit


def test_stage_config_undoes_a_stage_that_does_not_help():
    """A LANCER stage keeps the untrained weights when validation only gets worse."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 1)
    before = [p.detach().clone() for p in lin.parameters()]
    x = torch.randn(8, 3)
    calls = iter([1.0, 2.0, 3.0])  # before, epoch 0, epoch 1: lower is better

    def loss(m, b):
        return (m(b["x"]) - 5).pow(2).mean()

    cfg = pipe.stage_config(epochs=2, lr=0.1, batch_size=8)
    assert (cfg.schedule, cfg.select, cfg.eval_before, cfg.grad_clip) == ("linear", "min", True, 1.0)
    hist = fit(lin, lambda epoch: [{"x": x}], cfg, loss_fn=loss, valid_fn=lambda m: next(calls))
    assert hist.best_epoch == -1 and hist.before == {"valid": 1.0} and len(hist.steps) == 2
    assert all(torch.equal(a, b) for a, b in zip(before, lin.parameters()))
    assert "1.000 -> 1.000 (best epoch 0;" in pipe.stage_summary(hist)


def test_sample_users_draws_test_then_validation_users_from_one_generator():
    setup = pipe.LANCERSetup(eval_users=5, valid_users=3)
    ev, va = pipe.sample_users(20, setup, seed=7)
    rng = np.random.default_rng(7)
    assert ev.tolist() == sorted(rng.choice(20, size=5, replace=False).tolist())
    assert va.tolist() == sorted(rng.choice(20, size=3, replace=False).tolist())
    ev_all, _ = pipe.sample_users(4, pipe.LANCERSetup(eval_users=None, valid_users=10), seed=0)
    assert ev_all.tolist() == [0, 1, 2, 3]


def test_item_content_writes_year_and_genres_and_the_title_as_completion():
    data = prepare(make_raw(n_users=6, n_items=20))
    i = 3
    prompt, completion = pipe.item_content(data.items, i, description=False)
    row = data.items.iloc[i]
    assert completion == " " + row["title"]
    assert f"released in {int(row['year'])}" in prompt and prompt.endswith("title :")
    assert "genres : " + ", ".join(row["genres"]) in prompt
    # the year never follows the " :" that precedes the title
    assert f": {int(row['year'])}" not in prompt


@pytest.fixture(scope="module")
def lancer_run():
    """Every stage of a LANCER run on 8 toy users (two chunks each, LoRA in stage 2, ablations)."""
    data = prepare(make_raw(n_users=8, n_items=40, length=(5, 8)))
    setup = pipe.LANCERSetup(knowledge_items=6, valid_items=4, train_examples=6, chunks=2,
                             valid_users=2, curve_users=2, eval_users=3, eval_batch=2,
                             description=False, lora_r=2)
    config = LANCERConfig(n_prefix=3, mlp_hidden=16, attn_dim=8, dropout=0.0, max_slots=2,
                          max_genres=1, beams=3, top_k=3)
    ev, va = pipe.sample_users(data.n_users, setup, seed=0)
    run = pipe.LANCERRun(data, tiny_llama(), CharTokenizer(), config, setup, ev, va,
                         device="cpu", seed=0)
    stage = pipe.stage_config(2, 1e-2, 2)
    init = run.init_check()
    run.train_knowledge(pipe.stage_config(1, 1e-2, 4))
    cos = run.embed_items()
    stage1 = run.train_stage1(stage)
    for name in pipe.STAGE1:
        run.generate(name)
    run.train_stage2(stage)
    run.generate("LANCER")
    return run, cos, stage1, init


def test_knowledge_validation_items_are_held_out(lancer_run):
    run = lancer_run[0]
    k_items, valid_items = run.knowledge_items()
    assert len(k_items) == 6 and len(valid_items) == 4
    assert not set(k_items) & set(valid_items)
    train_items = set(np.concatenate(run.train_seqs).tolist())
    assert set(k_items) <= train_items and set(valid_items) <= train_items


def test_initial_prefix_check_reports_the_three_title_losses(lancer_run):
    init = lancer_run[3]
    assert set(init) == {"title NLL, no prefix", "title NLL, random prefix",
                         "title NLL, initial prefix"}
    assert all(np.isfinite(v) and v > 0 for v in init.values())
    after = lancer_run[0].init_check()
    assert "next-title NLL, initial user prefix" in after


def test_item_representations_cover_exactly_the_slot_items(lancer_run):
    run, cos = lancer_run[:2]
    used = {int(i) for u in run.eval_users for i in run.test_in[u][-2:]}
    nonzero = set(torch.nonzero(run.reps[True].abs().sum(1)).flatten().tolist())
    assert used <= nonzero and 0 not in nonzero and len(nonzero) == run.n_encoded
    assert -1 <= cos["with"] <= 1 and -1 <= cos["without"] <= 1
    # without the knowledge prompt the representations differ
    assert not torch.allclose(run.reps[True], run.reps[False])


def test_variants_switch_prefixes_and_reasoning_slots(lancer_run):
    run, _, stage1, _ = lancer_run
    assert list(stage1) == list(pipe.STAGE1)
    assert all(h.before is not None and len(h.epochs) == 2 for h in stage1.values())
    reps = run.set_variant("w/o knowledge prompt", trained=False)
    assert reps is run.reps[False] and run.model.use_reasoning
    for k, v in run.model.knowledge.state_dict().items():
        assert torch.equal(v, run.knowledge_init[k])
    run.set_variant("w/o reasoning prompt")
    assert not run.model.use_reasoning
    saved = run.states["w/o reasoning prompt"]
    for k, v in run.model.knowledge.state_dict().items():
        assert torch.equal(v, saved["knowledge." + k])


def test_chunks_cut_one_pass_and_the_budget_counts_examples(lancer_run):
    run = lancer_run[0]
    make = run._reasoning_batches(run.reps[True], batch_size=2)
    seen = [len(b["input_ids"]) for e in (0, 1) for b in make(e)]
    assert sum(seen) == len(run.examples) == 6
    budget = run.budget()
    lancer = budget[budget["stage"] == "LANCER"]
    assert lancer["examples"].tolist() == [0, 3, 6]


def test_budget_curve_spans_both_stages_and_its_last_point_is_the_final_model(lancer_run):
    run = lancer_run[0]
    curve = run.ranking_curve()
    lancer = curve[curve["method"] == "LANCER"]
    hr, ndcg = "sampled19/HR@5", "sampled19/NDCG@10"
    # before stage 1, after each of its 2 chunks (3 examples each), then stage 2's chunks
    assert lancer["examples"].tolist() == [0, 3, 6, 9, 12]
    assert run.n_stage1 == 6
    assert set(curve["method"]) == {"LANCER", "Random list", "Popularity"}
    for name in ("Random list", "Popularity"):
        part = curve[curve["method"] == name]
        assert part["examples"].tolist() == [0, 3, 6, 9, 12] and part[hr].nunique() == 1
    assert ((curve[hr] >= 0) & (curve[hr] <= 1)).all()
    ev = run.curve_evaluator()
    assert len(ev.users) == 2 and list(ev.negatives) == [19]
    # the point of the selected stage-2 epoch is the kept model's candidate scoring
    ranks, _ = run._candidate_ranks(ev, [run.valid_in[u] for u in ev.users], 19,
                                    run.set_variant("LANCER"))
    kept = EvalResult({"sampled19": ranks}, ev.users).metrics()
    point = lancer[lancer["examples"] == int(round(run.n_selected))]
    assert len(point) == 1 and 6 <= run.n_selected <= 12
    assert point[ndcg].iloc[0] == pytest.approx(kept[ndcg])
    assert point[hr].iloc[0] == pytest.approx(kept[hr])
    fig = run.ranking_curve_figure(curve)
    assert [len(ax.get_lines()) for ax in fig.axes] == [5, 5]  # 3 rows, stage line, kept star
    # the curve's scoring is not counted as stage time
    assert run.timer["ranking_curve"] > 0
    assert run.timer["reasoning_stage2"] < run.histories["LANCER"].seconds


def test_stage2_adds_lora_only_and_generation_gives_unseen_catalogue_items(lancer_run):
    run = lancer_run[0]
    assert run.lm_params and all(p.requires_grad for p in run.lm_params)
    names = [n for n, p in run.lm.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert set(run.ranked) == set(pipe.VARIANTS)
    for lists in run.ranked.values():
        assert len(lists) == 3
        for u, r in zip(run.eval_users, lists):
            assert len(r) == len(set(r)) == 3
            assert all(1 <= i <= run.data.n_items for i in r)
            assert not set(r) & set(run.test_in[u].tolist())
    stats = run.list_stats()
    assert stats["catalogue items"] == 1.0 and stats["history items"] == 0.0
    # predict() on one user's batch = the list generate() stored for that user
    u = run.eval_users[0]
    batch = run.batch([run.test_in[u]], reps=run.set_variant("LANCER"))
    assert run.model.predict(batch, run.trie, exclude=[run.test_in[u]]) == [run.ranked["LANCER"][0]]
    results = run.evaluate(Evaluator(run.data, "test", protocols=("full", "full_masked"),
                                     users=run.eval_users, seed=0))
    m = results["LANCER"].metrics()
    assert m["full/NDCG@10"] == m["full_masked/NDCG@10"]  # no history item is ever listed


def test_candidate_scoring_ranks_the_target_among_sampled_items(lancer_run):
    run = lancer_run[0]
    ev, res = run.candidate_scoring(n_neg=19)
    assert len(res.users) == 3 and set(res.ranks) == {"sampled19"}
    assert all(0 <= r <= 19 for r in res.ranks["sampled19"])
    # the same ranks from an explicit scoring of target + the evaluator's negatives
    reps = run.set_variant("LANCER")
    u = res.users[0]
    cands = [int(ev.targets[0])] + ev.negatives[19][0].tolist()
    sc = run.model.score_candidates(run.batch([run.test_in[u]], reps=reps), [cands], run.paths,
                                    reuse_cache=False)[0]
    assert res.ranks["sampled19"][0] == int((sc[1:] >= sc[0]).sum())


def test_intervals_and_separability():
    from recutils.evaluation import EvalResult

    zeros = EvalResult({"full": np.full(50, 100)}, np.arange(50))
    hits = EvalResult({"full": np.zeros(50, dtype=int)}, np.arange(50))
    lo, hi = pipe.interval(zeros, "full/HR@10")
    assert lo == 0.0 and 0.05 < hi < 0.1       # Wilson: 0/50 is not certainly 0
    assert pipe.separable(hits, zeros, "full/HR@10") == "above"
    assert pipe.separable(zeros, zeros, "full/NDCG@10") == "not separable at this scale"
    table = pipe.results_table({"a": hits, "b": zeros}, ["full/HR@10"])
    assert table.loc["a", "full/R@10"].startswith("1.0000 [") and table.loc["b", "users"] == 50


def test_derangement_moves_every_row():
    for n in (2, 3, 10):
        d = pipe.derangement(n, seed=n)
        assert sorted(d.tolist()) == list(range(n)) and (d != np.arange(n)).all()
    with pytest.raises(ValueError):
        pipe.derangement(1, seed=0)


def test_paired_difference_matches_a_hand_computation():
    from recutils.evaluation import EvalResult

    users = np.arange(4)
    a = EvalResult({"sampled19": np.array([0, 0, 1, 19])}, users)   # NDCG@10: 1, 1, 1/log2(3), 0
    b = EvalResult({"sampled19": np.array([0, 19, 19, 19])}, users)  # 1, 0, 0, 0
    d = np.array([0.0, 1.0, 1 / np.log2(3), 0.0])
    mean, lo, hi = pipe.paired_difference(a, b, "sampled19/NDCG@10")
    half = 1.96 * d.std(ddof=1) / 2
    assert mean == pytest.approx(d.mean()) and (lo, hi) == pytest.approx((d.mean() - half,
                                                                          d.mean() + half))
    with pytest.raises(ValueError):
        pipe.paired_difference(a, EvalResult(b.ranks, users[::-1]), "sampled19/NDCG@10")


def test_overfit_check_drives_the_loss_down_and_restores_the_prefixes():
    """On a tiny Llama with weights large enough for a prefix to move its logits (at the
    default init scale 0.02 the logits stay near uniform whatever the prefix)."""
    data = prepare(make_raw(n_users=8, n_items=40, length=(5, 8)))
    setup = pipe.LANCERSetup(train_examples=6, valid_users=2, eval_users=3, eval_batch=2,
                             description=False, ablations=False)
    config = LANCERConfig(n_prefix=3, mlp_hidden=16, attn_dim=8, dropout=0.3, max_slots=2,
                          max_genres=1, beams=3, top_k=3)
    ev, va = pipe.sample_users(data.n_users, setup, seed=0)
    run = pipe.LANCERRun(data, tiny_llama(initializer_range=0.2), CharTokenizer(), config, setup,
                         ev, va, device="cpu", seed=0)
    run.embed_items()
    k0 = {k: v.clone() for k, v in run.model.knowledge.state_dict().items()}
    r0 = {k: v.clone() for k, v in run.model.reasoning.state_dict().items()}
    # the loss before = the eval-mode (no dropout) loss of the same examples, whatever the mode
    seen, picked = set(), []
    for u, t in run.examples:
        if u not in seen:
            seen.add(u)
            picked.append((u, t))
    hists = [run.train_seqs[u][:t] for u, t in picked[:3]]
    targets = [int(run.train_seqs[u][t]) for u, t in picked[:3]]
    batches = [run.batch(hists[s:s + 2], targets[s:s + 2], run.reps[True]) for s in (0, 2)]
    run.model.eval()
    with torch.no_grad():
        expected = float(np.mean([run.model.reasoning_loss(b).item() for b in batches]))
    run.model.train()
    out = run.overfit_check(n_examples=3, epochs=60, lr=3e-2, batch_size=2)
    assert out["next-title NLL before"] == pytest.approx(expected, rel=1e-6)
    assert out["examples"] == 3 and out["steps"] == 120
    assert out["next-title NLL after"] < 0.6 * out["next-title NLL before"]  # dropout 0.3 is on
    assert 0 <= out["HR@1 (beam search)"] <= out["HR@10 (beam search)"] <= 1
    assert all(torch.equal(v, k0[k]) for k, v in run.model.knowledge.state_dict().items())
    assert all(torch.equal(v, r0[k]) for k, v in run.model.reasoning.state_dict().items())
    assert run.model.use_reasoning


def test_history_control_rows_and_the_own_history_ranks(lancer_run):
    run = lancer_run[0]
    rows, loglik, refs = run.history_control(n_neg=19)
    assert list(rows) == ["own history", "another user's history",
                          "own history, no reasoning slots"]
    assert set(refs) == {"Random list", "Popularity"} and set(loglik) == set(rows)
    assert all(len(v) == 2 and (v < 0).all() for v in loglik.values())
    users = run.valid_users
    for r in list(rows.values()) + list(refs.values()):
        assert np.array_equal(r.users, users) and ((r.ranks["sampled19"] >= 0)
                                                   & (r.ranks["sampled19"] <= 19)).all()
    # the own-history row = an explicit scoring of the validation target + the same negatives
    ev = Evaluator(run.data, "valid", protocols=("sampled19",), users=users, seed=0)
    reps = run.set_variant("LANCER")
    u = users[0]
    sc = run.model.score_candidates(run.batch([run.valid_in[u]], reps=reps),
                                    [[int(ev.targets[0])] + ev.negatives[19][0].tolist()],
                                    run.paths, reuse_cache=False)[0]
    assert rows["own history"].ranks["sampled19"][0] == int((sc[1:] >= sc[0]).sum())
    assert loglik["own history"][0] == pytest.approx(sc[0], abs=1e-4)
    assert run.model.use_reasoning  # the variant is restored
    table = pipe.control_table(rows, loglik, refs)
    assert table.loc["own history", "own minus this row, NDCG@10"] == ""
    assert table.loc["another user's history", "own minus this row, NDCG@10"].startswith(("+", "-"))
    claims = pipe.sanity_claims({"examples": 3, "steps": 6, "next-title NLL before": 4.0,
                                 "next-title NLL after": 0.2, "HR@1 (beam search)": 1.0},
                                rows, loglik, run.init_check())
    assert len(claims) == 6 and claims[1]["holds"] == "yes"
