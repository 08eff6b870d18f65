"""recutils.pipelines.lancer on a toy dataset with a 2-layer random Llama and a character tokenizer."""

import numpy as np
import pytest
import torch
from conftest import make_raw, tiny_llama
from test_lancer import CharTokenizer

from recutils.data import prepare
from recutils.evaluation import Evaluator
from recutils.models.lancer import LANCERConfig, map_generations, pooled_token_embeddings
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
    assert f"year : {int(row['year'])}" in prompt and prompt.endswith("title :")
    assert "genres : " + ", ".join(row["genres"]) in prompt


@pytest.fixture(scope="module")
def lancer_run():
    """Every stage of a LANCER run on 8 toy users (one epoch each, LoRA in stage 2)."""
    data = prepare(make_raw(n_users=8, n_items=24, length=(5, 8)))
    setup = pipe.LANCERSetup(knowledge_items=6, valid_items=4, train_examples=6, valid_users=2,
                             eval_users=3, eval_batch=2, description=False, lora_r=2)
    config = LANCERConfig(n_prefix=3, mlp_hidden=16, attn_dim=8, dropout=0.0, max_slots=2,
                          max_genres=1, beams=2, max_new_tokens=3, top_k=4)
    ev, va = pipe.sample_users(data.n_users, setup, seed=0)
    run = pipe.LANCERRun(data, tiny_llama(), CharTokenizer(), config, setup, ev, va,
                         device="cpu", seed=0)
    stage = pipe.stage_config(1, 1e-2, 4)
    run.train_knowledge(stage)
    cos = run.embed_items()
    stage1 = run.train_stage1(stage)
    for name in pipe.STAGE1:
        run.generate(name)
    run.train_stage2(stage)
    run.generate("LANCER")
    return run, cos, stage1


def test_knowledge_validation_items_are_held_out(lancer_run):
    run, _, _ = lancer_run
    k_items, valid_items = run.knowledge_items()
    assert len(k_items) == 6 and len(valid_items) == 4
    assert not set(k_items) & set(valid_items)
    train_items = set(np.concatenate(run.train_seqs).tolist())
    assert set(k_items) <= train_items and set(valid_items) <= train_items


def test_item_representations_cover_exactly_the_slot_items(lancer_run):
    run, cos, _ = lancer_run
    used = {int(i) for u in run.eval_users for i in run.test_in[u][-2:]}
    nonzero = set(torch.nonzero(run.reps[True].abs().sum(1)).flatten().tolist())
    assert used <= nonzero and 0 not in nonzero and len(nonzero) == run.n_encoded
    assert -1 <= cos["with"] <= 1 and -1 <= cos["without"] <= 1
    # without the knowledge prompt the representations differ
    assert not torch.allclose(run.reps[True], run.reps[False])


def test_variants_switch_prefixes_and_reasoning_slots(lancer_run):
    run, _, stage1 = lancer_run
    assert list(stage1) == list(pipe.STAGE1)
    assert all(h.before is not None and len(h.epochs) == 1 for h in stage1.values())
    reps = run.set_variant("w/o knowledge prompt", trained=False)
    assert reps is run.reps[False] and run.model.use_reasoning
    for k, v in run.model.knowledge.state_dict().items():
        assert torch.equal(v, run.knowledge_init[k])
    run.set_variant("w/o reasoning prompt")
    assert not run.model.use_reasoning
    saved = run.states["w/o reasoning prompt"]
    for k, v in run.model.knowledge.state_dict().items():
        assert torch.equal(v, saved["knowledge." + k])


def test_stage2_adds_lora_only_and_generation_maps_to_items(lancer_run):
    run, _, _ = lancer_run
    assert run.lm_params and all(p.requires_grad for p in run.lm_params)
    names = [n for n, p in run.lm.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert set(run.generations) == set(pipe.VARIANTS)
    for gens in run.generations.values():
        assert len(gens) == 3 and all(len(g) == 2 for g in gens)
    # predict() ranks the same beams that generate() wrote, mapped by token embeddings
    item_emb = pooled_token_embeddings(run.item_names, run.tokenizer, run.lm.get_input_embeddings())
    users = run.eval_users[:2]
    batch = run.batch([run.test_in[u] for u in users], reps=run.set_variant("LANCER"))
    gens = run.generations["LANCER"][:2]
    flat = [t for g in gens for t in g]
    expected = map_generations(gens, pooled_token_embeddings(flat, run.tokenizer,
                                                             run.lm.get_input_embeddings()),
                               item_emb, k=4)
    assert run.model.predict(batch, item_emb) == expected
    result = Evaluator(run.data, "test", protocols=("full",), ks=(10,), users=run.eval_users,
                       seed=0).evaluate_ranked(
        [run.model.predict(run.batch([run.test_in[u]], reps=run.reps[True]), item_emb)[0]
         for u in run.eval_users])
    assert 0.0 <= result.metrics()["full/NDCG@10"] <= 1.0
