"""Notebook 05's pipeline (recutils.pipelines.elephant) and the attention measures it uses, on
the tiny dataset of conftest with a tiny random BERT: which weights each stage trains, the
stage-1 item table re-encoded before every epoch after the first, state bookkeeping, and
hand-checked helpers."""

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertModel

from recutils.analysis import recformer_attention as ra
from recutils.evaluation import EvalResult, Evaluator
from recutils.models import BERT4RecConfig, SASRecConfig
from recutils.models.popularity import RandomScores
from recutils.models.recformer import RecFormer, RecFormerConfig
from recutils.pipelines import elephant as el
from recutils.training import TrainConfig


class WordTokenizer:
    """One id per whitespace-separated word (ids from 3 up); [PAD] 0, [CLS] 1, [MASK] 2."""

    pad_token_id, cls_token_id, mask_token_id = 0, 1, 2

    def __init__(self):
        self.vocab = {}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab.setdefault(w, 3 + len(self.vocab)) for w in text.split()]}


def tiny_bert(layers=3, heads=2, hidden=16, vocab=512, seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=32, max_position_embeddings=256,
                     attn_implementation="eager", hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, initializer_range=0.3)
    return BertModel(cfg, add_pooling_layer=False).eval()


CONFIG = RecFormerConfig(max_items=3, item_tokens=6, fields=("title", "genres"))
TRAIN = TrainConfig(epochs=1, lr=1e-3, batch_size=8, log_steps=True, progress=False)


@pytest.fixture
def study(tiny):
    catalogue = el.TextCatalogue.build(WordTokenizer(), tiny.items, CONFIG.fields,
                                       CONFIG.item_tokens)
    return el.RecFormerStudy(RecFormer(tiny_bert(), CONFIG), catalogue, tiny, seed=0)


def test_subsample_is_seeded_sorted_and_keeps_all_when_asked():
    xs = list(range(100, 120))
    assert el.subsample(xs, None, 0) is xs and el.subsample(xs, 50, 0) is xs
    a, b = el.subsample(xs, 5, seed=3), el.subsample(xs, 5, seed=3)
    assert a == b and len(set(a)) == 5 and a == sorted(a) and set(a) <= set(xs)
    assert el.subsample(xs, 5, seed=4) != a


def test_reencoded_table_encodes_before_every_epoch_after_the_first():
    calls = []

    def encode():
        calls.append(len(calls))
        return torch.full((2, 2), float(len(calls)))

    first = torch.zeros(2, 2)
    seen = []
    batches = el.ReencodedTable(lambda e: [e * 10, e * 10 + 1], first, encode)
    for epoch in range(3):
        for b in batches(epoch):
            seen.append((b, float(batches.table[0, 0])))
    # epoch 0 on the given table, epochs 1 and 2 each re-encode once, before their first batch
    assert calls == [0, 1]
    assert seen == [(0, 0.0), (1, 0.0), (10, 1.0), (11, 1.0), (20, 2.0), (21, 2.0)]


def test_catalogue_keeps_the_tokenizer_ids_and_the_padding_item(study, tiny):
    c = study.catalogue
    assert (c.cls_id, c.pad_id, c.mask_id) == (1, 0, 2)
    assert len(c.tokens) == tiny.n_items + 1 and c.tokens[0] == ([], [])
    assert all(0 < len(ids) <= CONFIG.item_tokens for ids, _ in c.tokens[1:])
    b = c.batch([np.array([1, 2, 3, 4])], CONFIG.max_items)
    assert b["item_positions"].max() == CONFIG.max_items   # only the last 3 items are read


def test_pretrain_trains_backbone_and_mlm_head_and_logs_every_step(study):
    examples = study.examples(20, per_user=1, pick_seed=0)
    assert len(examples) == 20 and len(set(examples)) == 20
    before = el.clone_state(study.model)
    h = study.pretrain(examples, TRAIN)
    assert study.curves["PT"] == h.steps and len(h.steps) == 3       # ceil(20 / 8) steps
    after = study.model.state_dict()
    for name in ("backbone.encoder.layer.0.attention.self.query.weight", "mlm_bias",
                 "mlm_transform.0.weight", "roles.weight"):
        assert not torch.equal(before[name], after[name]), name
    study.load_state("vanilla")
    assert all(torch.equal(v, study.model.state_dict()[k]) for k, v in before.items())


def test_finetune_trains_only_the_chosen_layers_from_pt(study):
    study.pretrain(study.examples(16, 1, 0), TRAIN)
    pt = study.save_state("PT")
    table = study.table()
    h, params = study.finetune(study.examples(16, 1, 1), [2], "2", TRAIN, table)
    now = study.model.state_dict()
    changed = {k for k in pt if not torch.equal(pt[k], now[k])}
    assert changed and all(k.startswith(("backbone.encoder.layer.2.", "roles.", "item_positions."))
                           for k in changed)
    assert study.curves["2"] == h.steps and len(h.steps) == 2
    assert sum(p.numel() for p in params) == sum(
        p.numel() for p in study.model.backbone.encoder.layer[2].parameters()
    ) + study.model.roles.weight.numel() + study.model.item_positions.weight.numel()


def test_variants_and_untuned_rows_fill_the_layer_table(study, tiny):
    evaluator = Evaluator(tiny, "test", protocols=("full",), ks=(5, 10), users=np.arange(12))
    study.pretrain(study.examples(16, 1, 0), TRAIN)
    study.save_state("PT")
    pt_table = study.table()
    study.evaluate_as("none (PT only)", evaluator, pt_table, train_seconds=1.5)
    result, tuned = study.variant(evaluator, study.examples(16, 1, 1), "all", TRAIN, pt_table)
    study.variant(evaluator, study.examples(16, 1, 1), [0, 2], TRAIN, pt_table)
    assert list(study.results) == ["none (PT only)", "all", "0,2"]
    assert tuned.shape == pt_table.shape and not torch.allclose(tuned, pt_table)
    assert (tuned[0] == 0).all()    # the padding item stays zero
    table = study.layer_table(["full/HR@10", "full/NDCG@10"], ci_key="full/NDCG@10")
    assert table.loc["none (PT only)", "trainable params"] == 0
    assert table.loc["all", "trainable params"] > table.loc["0,2", "trainable params"] > 0
    assert study.costs["none (PT only)"]["train_seconds"] == 1.5
    assert 0 <= table.loc["all", "full/HR@10"] <= 1 and len(result.users) == 12
    assert study.tuning_seconds() == pytest.approx(sum(
        study.costs[k]["train_seconds"] + study.costs[k]["eval_seconds"] for k in ("all", "0,2")))


def test_recommender_predicts_cosine_over_the_table(study):
    table = study.table()
    scores = study.recommender(table).predict(np.array([0, 3]))
    b = study.catalogue.batch([study.test_in[0], study.test_in[3]], CONFIG.max_items)
    with torch.no_grad():
        users = study.model.encode(b)
    manual = torch.nn.functional.cosine_similarity(users[:, None], table[None], dim=-1) / 0.05
    assert scores.shape == (2, len(study.catalogue.tokens))
    assert torch.allclose(scores[:, 1:], manual[:, 1:], atol=1e-4)


def test_item_init_study_freeze_keeps_the_table_and_further_train_unfreezes_it(tiny):
    evaluator = Evaluator(tiny, "test", protocols=("full", "sampled100"), ks=(10,))
    users = np.arange(tiny.n_users)
    ids = el.ItemInitStudy(tiny, evaluator, users,
                           SASRecConfig(hidden=8, n_layers=1, n_heads=1, inner=16, max_len=10),
                           BERT4RecConfig(hidden=8, n_layers=1, n_heads=2, inner=16, max_len=10),
                           TrainConfig(epochs=2, batch_size=64, lr=1e-2, patience=2, progress=False))
    vectors = torch.randn(tiny.n_items + 1, 12)
    frozen = ids.run("SASRec", "FT", vectors, True, seed=0)
    start = frozen.items.table.detach().clone()
    assert frozen.items.table.shape[1] == 12 and not frozen.items.table.requires_grad
    ids.further_train("Emb", seed=0)
    assert torch.equal(frozen.items.table, start), "further-training works on a copy"
    ids.run("BERT4Rec", "random", None, False, seed=0)
    runs = ids.runs(["full/NDCG@10"])
    assert list(zip(runs["model"], runs["init"], runs["mode"])) == [
        ("SASRec", "FT", "freeze"), ("SASRec", "FT further-train (Emb)", "trainable"),
        ("BERT4Rec", "random", "trainable")]
    assert ids.costs[("SASRec", "FT", "freeze", 0)]["params"][1] < ids.costs[
        ("SASRec", "FT", "freeze", 0)]["params"][0]


def test_mean_metric_seed_spread_and_restrict_by_hand():
    runs = pd.DataFrame({"model": ["SASRec"] * 3 + ["BERT4Rec"], "init": ["random"] * 4,
                         "mode": ["trainable"] * 4, "m": [0.1, 0.2, 0.3, 0.9]})
    assert el.mean_metric(runs, "random", key="m") == pytest.approx(0.2)
    assert el.mean_metric(runs, "random", kind="BERT4Rec", key="m") == pytest.approx(0.9)
    assert el.seed_spread(runs, key="m") == pytest.approx(0.1)
    assert el.seed_spread(runs.iloc[:1], key="m") == 0.0
    # 0-based ranks: user 7's target is ranked 21st, the others in the top 5
    result = EvalResult({"full": np.array([1, 0, 20, 2])}, np.array([2, 4, 7, 9]), (5,))
    part = el.restrict(result, result.users, np.array([4, 9]))
    assert part.users.tolist() == [4, 9] and part.ranks["full"].tolist() == [0, 2]
    assert part.metrics()["full/HR@5"] == 1.0 and result.metrics()["full/HR@5"] == 0.75


def test_layer_strata_and_strata_summary_by_hand():
    assert ra.layer_strata(12) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert ra.layer_strata(6) == [[0, 1], [2, 3], [4, 5]]
    m = np.array([[0, 1, 5, 5], [1, 0, 3, 5], [5, 3, 0, 2], [5, 5, 2, 0]], dtype=float)
    heads = np.zeros((8, 8))
    heads[0, 1] = 0.4      # the two heads of layer 0
    heads[2, 3] = 0.2      # ... of layer 1; pairs across layers do not count
    heads[0, 7] = 9.0
    s = ra.strata_summary({"layers": m, "heads": heads}, [[0, 1], [2, 3]], n_heads=2)
    assert s["adjacent, inside strata"] == 1.5 and s["adjacent, across strata"] == 3.0
    assert s["all pairs inside strata"] == 1.5 and s["all pairs across strata"] == 4.5
    assert s["heads of one layer"] == pytest.approx(0.15)


def test_attention_stats_are_distributions_and_recency_table():
    model = RecFormer(tiny_bert(layers=2), RecFormerConfig(max_items=3))
    items = [([], []), ([5, 6], [1, 2]), ([7, 8, 9], [1, 2, 2]), ([10], [2])]
    hists = [np.array([1, 2, 3]), np.array([2, 3]), np.array([3, 1, 2, 3])]
    st = ra.attention_stats(model, hists, items, cls_id=1, pad_id=0, batch_size=2)
    assert st["layers"].shape == (2, 2) and st["heads"].shape == (4, 4)
    assert np.allclose(st["layers"], st["layers"].T) and np.allclose(np.diag(st["layers"]), 0)
    assert np.allclose(st["position_profile"].sum(-1), 1) and st["position_profile"].shape == (2, 3)
    assert ((st["cls_self_share"] > 0) & (st["cls_self_share"] < 1)).all()
    assert ((st["first_token_share"] > 0) & (st["first_token_share"] <= 1 + 1e-6)).all()
    ref = np.array([0.5, 0.3, 0.2])
    rec = ra.recency_table({"same": ref, "reversed": ref[::-1]}, ref)
    assert rec["same"]["pearson r with SASRec"] == pytest.approx(1.0)
    assert rec["reversed"]["pearson r with SASRec"] < 0 and rec["same"]["most recent item"] == 0.5


def test_refresh_is_reused_by_the_next_epoch_and_fixed_table_never_encodes():
    calls = []

    def encode():
        calls.append(len(calls))
        return torch.full((2, 2), float(len(calls)))

    batches = el.ReencodedTable(lambda e: [e], torch.zeros(2, 2), encode)
    list(batches(0))
    assert float(batches.refresh()[0, 0]) == 1.0        # e.g. to validate after epoch 0
    list(batches(1))                                    # ... epoch 1 reuses it
    list(batches(2))                                    # epoch 2 re-encodes again
    assert calls == [0, 1] and float(batches.table[0, 0]) == 2.0
    fixed = el.FixedTable(lambda e: [e, e + 1], torch.ones(2, 2))
    assert [b for e in range(3) for b in fixed(e)] == [0, 1, 1, 2, 2, 3]
    assert torch.equal(fixed.table, torch.ones(2, 2))


def test_stage2_keeps_the_item_table_and_fills_the_budget_curve(study, tiny):
    valid = Evaluator(tiny, "valid", protocols=("sampled100",), ks=(10,), users=np.arange(10))
    test = Evaluator(tiny, "test", protocols=("full",), ks=(10,), users=np.arange(10))
    study.pretrain(study.examples(16, 1, 0), TRAIN)
    study.save_state("PT")
    table = study.table()
    study.budget_point("PT", 2, valid, table)
    frozen = table.clone()
    train = TrainConfig(epochs=3, lr=1e-3, batch_size=8, log_steps=True, progress=False)
    result, used = study.variant(test, study.examples(16, 1, 1), "all", train, table,
                                 label="s2", stage=2, start="PT", valid=valid)
    assert used is table and torch.equal(table, frozen)    # stage 2 never re-encodes
    assert not torch.allclose(study.table(), frozen)       # although the encoder moved
    budget = study.budget_table()
    assert list(budget["stage"]) == ["PT", "s2", "s2", "s2"]
    assert list(budget["steps"]) == [2, 4, 6, 8]           # 2 steps per epoch of 16 / 8
    assert budget["valid"].between(0, 1).all()
    assert study.costs["s2"]["stage"] == 2 and len(result.users) == 10


def test_stage2_fits_a_handful_of_users(study):
    """Overfit check: on 12 training pairs, repeated, stage 2's loss falls by over a nat (the
    fixed table of a random encoder puts items close together, which bounds how far it can fall)."""
    examples = study.examples(12, 1, 0)
    table = study.table()
    train = TrainConfig(epochs=30, lr=3e-3, batch_size=12, log_steps=True, progress=False)
    h, _ = study.finetune(examples, "all", "overfit", train, table, start="vanilla", stage=2)
    assert np.mean(h.steps[-3:]) < h.steps[0] - 1.0
    assert all(a >= b - 0.05 for a, b in zip(h.steps, h.steps[5:]))   # and keeps falling


def test_random_weights_control_has_the_shape_but_not_the_weights(study):
    control = study.random_weights(seed=3)
    again = study.random_weights(seed=3)
    a, m = control.state_dict(), study.model.state_dict()
    assert a.keys() == m.keys() and all(a[k].shape == m[k].shape for k in a)
    key = "backbone.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(a[key], m[key]) and torch.equal(a[key], again.state_dict()[key])


def test_random_scores_and_reference_rows(study, tiny):
    r = RandomScores(tiny.n_items, seed=1).predict(np.arange(4))
    assert r.shape == (4, tiny.n_items + 1)
    assert torch.equal(r, RandomScores(tiny.n_items, seed=1).predict(np.arange(4)))
    ev = Evaluator(tiny, "test", protocols=("full",), ks=(10,), users=np.arange(8))
    study.reference("random", ev, RandomScores(tiny.n_items, 0))
    assert study.costs["random"]["reference"] and study.tuning_seconds() == 0
