"""Notebook 04's pipeline: seeded samples and batches, the stage-1 loss callback, the
evaluator-facing ``predict`` of the LLM methods, and the Hit@1 analyses on tiny data."""

import numpy as np
import pytest
import torch
from conftest import CharTokenizer, tiny_llama

from recutils.evaluation import EvalResult, Evaluator
from recutils.models.allmrec import ALLMRec, ALLMRecConfig, Stage1Config
from recutils.pipelines.allmrec import (
    LLMRecommender,
    LossTerms,
    Prompter,
    claim_rows,
    cold_warm_sample,
    evaluation_examples,
    stage1_batches,
    stage2_batches,
    stage2_examples,
    summary_table,
    train_stage1,
    unseen,
    usable_users,
)
from recutils.training import TrainConfig


class BagEncoder:
    """A sentence encoder stand-in: character counts (same text -> same vector)."""

    def encode(self, texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
               show_progress_bar=False):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for r, t in enumerate(texts):
            for c in t.lower():
                out[r, ord(c) % 64] += 1.0
        n = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(n > 0, n, 1.0) if normalize_embeddings else out


def test_cold_warm_sample_is_stratified_and_seeded(tiny):
    s = cold_warm_sample(tiny, 10, seed=0)
    assert len(s.eval_users) == 10 and np.all(np.diff(s.eval_users) > 0)
    n_cold = min(5, int(s.is_cold.sum()))
    assert (s.group == "cold").sum() == n_cold
    assert (s.group == "warm").sum() == min(10 - 5, int(s.is_warm.sum()))
    counts, target = tiny.item_counts(), tiny.targets("test")
    cold = s.eval_users[s.group == "cold"]
    assert np.all(counts[target[cold]] <= s.q_cold)
    assert np.array_equal(cold_warm_sample(tiny, 10, seed=0).eval_users, s.eval_users)
    every = cold_warm_sample(tiny, None, seed=0)
    assert np.array_equal(every.eval_users, np.arange(tiny.n_users))
    assert every.record()["eval_users"] == tiny.n_users


def test_unseen_items_are_new_and_distinct(tiny):
    rng = np.random.default_rng(0)
    got = unseen(tiny, 3, 15, rng)
    assert len(set(got)) == 15
    assert not set(got) & set(tiny.sequences[3].tolist())
    assert all(1 <= i <= tiny.n_items for i in got)


def test_stage1_batches_follow_the_epoch_seed():
    x = torch.arange(10)[:, None].float()
    tensors = (x, 10 * x)
    batches = stage1_batches(tensors, 4, seed=7)
    for epoch in (0, 1):
        out = list(batches(epoch))
        assert [len(b[0]) for b in out] == [4, 4, 2]
        order = torch.cat([b[0][:, 0] for b in out]).long()
        want = np.random.default_rng(7 + epoch).permutation(10)
        assert order.tolist() == want.tolist()
        assert all(torch.equal(b[1], 10 * b[0]) for b in out)  # rows stay aligned


def test_loss_terms_are_recomputed_on_the_whole_set():
    torch.manual_seed(0)
    n, d, t = 12, 5, 7
    tensors = (torch.randn(n, d), torch.randn(n, d), torch.randn(n, d), torch.randn(n, t),
               torch.randn(n, t))
    E, Q = torch.randn(9, d), torch.randn(9, t)
    s1 = train_stage1(E, Q, tensors, Stage1Config(latent=4, hidden=8),
                      TrainConfig(epochs=2, lr=1e-2, batch_size=5, progress=False), 0, "cpu")
    row = s1.history.epochs[-1]
    with torch.no_grad():
        want = s1.aligner.losses(*tensors)
    for k in ("matching", "item_recon", "text_recon", "rec", "total"):
        assert row[k] == pytest.approx(want[k].item(), rel=1e-6)
    # the whole-set total differs from the mean of the batch losses during the epoch
    assert row["total"] != pytest.approx(row["loss"], rel=1e-9)
    assert s1.e_table.shape == (9, 4) and torch.all(s1.e_table[0] == 0)
    assert isinstance(LossTerms(tensors, "cpu"), LossTerms)


def test_stage2_examples_hold_the_target_and_unseen_candidates(tiny):
    users = usable_users(tiny)
    ex = stage2_examples(tiny, users, 6, n_history=3, n_candidates=8, seed=0)
    assert len(ex) == 6 and [e["user"] for e in ex] == sorted(e["user"] for e in ex)
    train = tiny.train_sequences()
    for e in ex:
        u = e["user"]
        assert e["target"] == int(train[u][-1])
        assert e["history"] == [int(i) for i in train[u][:-1][-3:]]
        assert len(set(e["candidates"])) == 8 and e["target"] in e["candidates"]
        others = set(e["candidates"]) - {e["target"]}
        assert not others & set(tiny.sequences[u].tolist())
    assert ex == stage2_examples(tiny, users, 6, 3, 8, seed=0)
    assert len(stage2_examples(tiny, users, None, 3, 8, seed=0)) == len(users)


def test_stage2_batches_label_only_answers_and_follow_the_seed(tiny):
    titles = [f"t{i}" for i in range(tiny.n_items + 1)]
    ex = stage2_examples(tiny, usable_users(tiny), 5, 2, 4, seed=0)
    x = torch.arange(5)[:, None].float()
    out = stage2_batches(CharTokenizer(), Prompter(titles), ex, x, 2, seed=3)(0)
    order = torch.cat([b["user_vecs"][:, 0] for b in out]).long().tolist()
    assert order == np.random.default_rng(3 + 10).permutation(5).tolist()
    b = out[0]
    for r, k in enumerate(order[:2]):
        labelled = b["labels"][r][b["labels"][r] != -100].tolist()
        want = CharTokenizer()(f'{titles[ex[k]["target"]]}"')["input_ids"] + [1]
        assert labelled == want


class EchoModel:
    """Answers every prompt with the title of its candidate at ``position`` (1-based)."""

    def __init__(self, examples, titles, position):
        self.config, self.tokenizer = ALLMRecConfig(batch_size=3), CharTokenizer()
        self.examples, self.titles, self.position = examples, titles, position
        self.item_table, self.calls = torch.zeros(3, 2), 0

    def set_item_table(self, table):
        self.item_table = table

    def generate(self, batch):
        n = batch["input_ids"].shape[0]
        out = [self.titles[self.examples[self.calls + r]["candidates"][self.position - 1]]
               for r in range(n)]
        self.calls += n
        return out


def test_predict_returns_the_named_candidate_for_the_evaluator(tiny):
    titles = ["", *[f"movie {i:03d}" for i in range(1, tiny.n_items + 1)]]
    users = np.arange(7)
    ev = Evaluator(tiny, "test", protocols=("sampled19",), users=users, seed=0)
    ex = evaluation_examples(tiny, users, ev.negatives[19].numpy(), n_history=3, seed=0)
    model = EchoModel(ex, titles, position=2)
    enc = BagEncoder()
    title_emb = np.stack([enc.encode([t])[0] for t in titles])
    rec = LLMRecommender(model, Prompter(titles), ex, torch.zeros(7, 4), enc, title_emb, "cpu",
                         item_table=torch.ones(3, 2))
    result = ev.evaluate(rec, batch_size=len(users))
    assert rec.mapped == [e["candidates"][1] for e in ex] and all(rec.exact)
    assert rec.positions == [2] * 7
    hit = np.array([e["candidates"][1] == e["target"] for e in ex], float)
    assert np.array_equal((result.ranks["sampled19"] == 0).astype(float), hit)
    assert torch.equal(model.item_table, torch.zeros(3, 2))  # the swapped table is put back
    for e in ex:
        assert sorted(e["candidates"]) == sorted([e["target"], *ev.negatives[19][
            list(users).index(e["user"])].tolist()])


def test_predict_with_a_real_lm_maps_every_answer_to_a_candidate(tiny):
    titles = ["", *[f"m{i}" for i in range(1, tiny.n_items + 1)]]
    users = np.arange(5)
    ev = Evaluator(tiny, "test", protocols=("sampled19",), users=users, seed=0)
    ex = evaluation_examples(tiny, users, ev.negatives[19].numpy(), n_history=2, seed=0)
    torch.manual_seed(0)
    model = ALLMRec(tiny_llama(max_positions=1024), CharTokenizer(), torch.randn(tiny.n_items + 1, 6),
                    user_dim=4, config=ALLMRecConfig(proj_hidden=8, max_new_tokens=3, batch_size=2))
    enc = BagEncoder()
    title_emb = np.stack([enc.encode([t])[0] for t in titles])
    for soft in (True, False):
        rec = LLMRecommender(model, Prompter(titles), ex, torch.randn(5, 4), enc, title_emb, "cpu",
                             soft=soft)
        ranked = rec.predict(users)
        assert len(rec.answers) == 5 and len(ranked) == 5
        assert all(r[0] in e["candidates"] for r, e in zip(ranked, ex))
        assert all(1 <= p <= 20 for p in rec.positions)


def test_summary_table_and_claims_by_hand():
    group = np.array(["cold", "cold", "warm", "warm"])
    res = {"SASRec": EvalResult({"sampled19": np.array([0, 3, 0, 0])}, np.arange(4)),
           "A-LLMRec": EvalResult({"sampled19": np.array([0, 0, 5, 0])}, np.arange(4)),
           "LLM-Only": EvalResult({"sampled19": np.array([1, 1, 1, 0])}, np.arange(4))}
    t = summary_table(res, ["SASRec", "A-LLMRec"], group, {"A-LLMRec": 0.5},
                      {"A-LLMRec": [3, 3, 1, 3]})
    assert t.loc["SASRec", "Hit@1"] == 0.75 and t.loc["SASRec", "cold"] == 0.5
    assert t.loc["A-LLMRec", "cold"] == 1.0 and t.loc["A-LLMRec", "warm"] == 0.5
    assert t.loc["A-LLMRec", "most chosen list position"] == "3 (75%)"
    rows = claim_rows(res, group, trainable=10, total=100, lm_grads=0)
    by_claim = {r["claim"]: r for r in rows}
    # 4 users: every pair of Wilson intervals overlaps, so no ordering is a verdict
    assert by_claim["A-LLMRec beats SASRec (Hit@1)"]["holds"] == "not separable at this scale"
    assert by_claim["A-LLMRec beats SASRec on cold items"]["ours"].startswith("1.000 vs 0.500")
    assert by_claim["SASRec beats LLM-Only"]["holds"] == "not separable at this scale"
    # the same hit rates on 200 users: .75 vs .25 separates, .75 vs .75 still does not
    big = {n: EvalResult({"sampled19": np.tile(r.ranks["sampled19"], 50)}, np.arange(200))
           for n, r in res.items()}
    by_big = {r["claim"]: r for r in claim_rows(big, np.tile(group, 50), 10, 100, 0)}
    assert by_big["SASRec beats LLM-Only"]["holds"] == "yes"
    assert by_big["A-LLMRec beats SASRec (Hit@1)"]["holds"] == "not separable at this scale"
    assert by_claim["A-LLMRec beats MLP-LLM (stage 1 helps)"]["holds"] == "n/a"
    assert rows[-1]["holds"] == "yes"


def test_prompter_shows_soft_tokens():
    p = Prompter(["", "A", "B", "C"])
    shown = p.shown({"history": [1], "candidates": [2, 3], "target": 3})
    assert shown.startswith("<U> is a user representation.")
    assert shown.count("<I>") == 3 and shown.endswith('"C"')
