"""A-LLMRec's side scenarios (issue 14): the topped-up cold/warm sample, TALLRec (LoRA on a
copy of the LM), fixed-budget side runs, the few-shot data and run, the stage-2 ablation
without item tokens and the favourite-genre generation, on tiny random LMs and tiny data."""

import numpy as np
import pytest
import torch
from conftest import tiny_llama
from test_allmrec_choice import LetterTokenizer

from recutils.evaluation import Evaluator
from recutils.models import SASRecConfig
from recutils.models.allmrec import ALLMRecConfig, SoftToken, Stage1Config
from recutils.pipelines.allmrec import (
    ChoicePrompter,
    ChoiceRecommender,
    choice_batch,
    choice_batches,
    cold_warm_sample,
    evaluation_examples,
    favourite_genres,
    few_shot_data,
    few_shot_run,
    genre_names,
    genre_prompt,
    genre_scores,
    names_genre,
    side_record,
    side_sample,
    side_stage2,
    stage2_examples,
    tallrec_model,
    usable_users,
)
from recutils.training import TrainConfig, fit


class FewCold:
    """What :func:`cold_warm_sample` reads of a dataset: 30 test users, 4 with a cold target."""

    n_users = 30

    def item_counts(self):
        return np.r_[0, np.arange(1, 21)]  # items 1..20, item i seen i times in training

    def targets(self, split):
        return np.r_[[1, 2, 3, 4], np.full(20, 20), np.full(6, 10)]  # 4 cold, 20 warm, 6 middle


def test_cold_warm_sample_tops_up_with_warm_users():
    s = cold_warm_sample(FewCold(), 20, seed=0)
    assert len(s.eval_users) == 20 == len(set(s.eval_users.tolist()))
    assert (s.group == "cold").sum() == 4 and (s.group == "warm").sum() == 16
    assert np.array_equal(s.eval_users, np.sort(s.eval_users))
    assert np.array_equal(cold_warm_sample(FewCold(), 20, seed=0).eval_users, s.eval_users)
    every = cold_warm_sample(FewCold(), 28, seed=0)  # more than cold + warm: all of both
    assert len(every.eval_users) == 24
    even = cold_warm_sample(FewCold(), 8, seed=0)  # enough cold users: half and half
    assert (even.group == "cold").sum() == (even.group == "warm").sum() == 4


def _examples():
    return [{"user": 0, "history": [1], "candidates": [3, 4, 5], "target": 4},
            {"user": 1, "history": [1, 2], "candidates": [6, 7, 8], "target": 8}]


def test_tallrec_trains_lora_on_a_copy_and_leaves_the_shared_lm_alone():
    lm, tok = tiny_llama(), LetterTokenizer()
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    cfg = ALLMRecConfig(proj_hidden=16, n_candidates=3, loss="choice")
    model, params = tallrec_model(lm, tok, cfg, r=2)
    assert params and all("lora_" in n for n, p in model.lm.named_parameters() if p.requires_grad)
    assert not any("lora_" in n for n, _ in lm.named_parameters()), "the shared LM got adapters"
    pr = ChoicePrompter([""] + list("abcdefghi"))
    b = choice_batch(tok, pr, _examples(), torch.zeros(2, 1), soft=False)
    assert not b["slots"], "TALLRec reads the text-only prompt"
    with torch.no_grad():  # LoRA's B starts at zero: the untrained TALLRec is the LM itself
        base = lm(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, -1]
        model.eval()
        _, same = model.choice_logits(b, full=True)
    assert torch.allclose(base, same, atol=1e-5)
    batches = choice_batches(tok, pr, _examples(), torch.zeros(2, 1), 2, 3, seed=0, soft=False)
    fit(model, batches, TrainConfig(epochs=1, lr=1e-2, batch_size=2), params=params)
    assert all(p.grad is None or not p.requires_grad for p in model.projector.parameters())
    for n, p in lm.named_parameters():
        assert torch.equal(p, before[n]), n
    with torch.no_grad():
        model.eval()
        _, after = model.choice_logits(b, full=True)
    assert not torch.allclose(base, after, atol=1e-4), "the LoRA weights trained"


def test_prompter_without_item_tokens_keeps_the_words_and_the_user_tokens():
    titles = [""] + list("abcdefghi")
    ex = _examples()[1]
    full = ChoicePrompter(titles, user_at_end=True, user_in_candidates=True).prompt(ex)
    bare = ChoicePrompter(titles, user_at_end=True, user_in_candidates=True,
                          item_tokens=False).prompt(ex)
    assert [s for s in bare if isinstance(s, SoftToken)] == [SoftToken("user")] * 2
    words = [s for s in full if isinstance(s, str)]
    assert [s for s in bare if isinstance(s, str)] == words


def test_side_stage2_is_a_fixed_deterministic_budget(tiny):
    lm, tok = tiny_llama(), LetterTokenizer()
    exs = stage2_examples(tiny, usable_users(tiny), None, 2, 3, seed=0)
    titles = [""] + [f"t{i}" for i in range(1, tiny.n_items + 1)]
    pr, vecs = ChoicePrompter(titles, max_words=1), torch.randn(len(exs), 5)
    table = torch.randn(tiny.n_items + 1, 6)
    cfg, train = ALLMRecConfig(proj_hidden=16, n_candidates=3, loss="choice"), TrainConfig(
        epochs=7, lr=1e-2, batch_size=2, eval_before=True)
    m1, h1 = side_stage2(lm, tok, table, 5, cfg, pr, exs, vecs, 3, train, 0, "cpu", "a")
    m2, _ = side_stage2(lm, tok, table, 5, cfg, pr, exs, vecs, 3, train, 0, "cpu", "b")
    assert len(h1.epochs) == 1 and h1.best_epoch == -1
    for a, b in zip(m1.projector.parameters(), m2.projector.parameters()):
        assert torch.equal(a, b)
    assert all(p.grad is None for p in lm.parameters())


def test_side_sample_and_few_shot_data(tiny):
    users = np.arange(0, 30, 2)
    rows = side_sample(users, 5, seed=0)
    assert len(rows) == 5 and np.array_equal(rows, np.sort(rows))
    assert np.array_equal(side_sample(users, None, 0), np.arange(len(users)))
    small, big = few_shot_data(tiny, 5, users, 0), few_shot_data(tiny, 10, users, 0)
    assert small.n_users == 5 and big.n_users == 10 and small.n_items == tiny.n_items
    assert set(small.user_ids.tolist()) <= set(big.user_ids.tolist()), "K=128 inside K=256"
    assert not set(big.user_ids.tolist()) & set(tiny.user_ids[users].tolist())


def test_few_shot_run_end_to_end(tiny):
    lm, tok = tiny_llama(max_positions=512), LetterTokenizer()
    data_k = few_shot_data(tiny, 12, np.arange(5), 0)
    Q = torch.randn(tiny.n_items + 1, 8)
    titles = [""] + [f"t{i}" for i in range(1, tiny.n_items + 1)]
    cfg = ALLMRecConfig(proj_hidden=16, n_candidates=20, n_history=2, loss="choice")
    run = few_shot_run(data_k, SASRecConfig(hidden=8, n_layers=1, n_heads=1, inner=8, max_len=10),
                       TrainConfig(epochs=1, batch_size=16), Stage1Config(latent=6, hidden=12),
                       TrainConfig(epochs=1, batch_size=8), Q, lm, tok, cfg,
                       ChoicePrompter(titles, max_words=1), 2, TrainConfig(epochs=1, lr=1e-2, batch_size=2),
                       0, "cpu")
    assert set(run.seconds) == {"sasrec", "stage1", "stage2"}
    assert run.stage1.e_table.shape == (tiny.n_items + 1, 6)
    users = np.arange(5)
    ev = Evaluator(tiny, "test", protocols=("sampled19",), users=users, seed=0)
    exs = evaluation_examples(tiny, users, ev.negatives[19].numpy(), 2, seed=0)
    r = ChoiceRecommender(run.model, ChoicePrompter(titles, max_words=1), exs, torch.randn(5, 8),
                          tiny.n_items, "cpu", item_table=run.stage1.q_table)
    res = {"A-LLMRec (SBERT)": ev.evaluate(r, batch_size=5)}
    rec = side_record(res, np.array(["cold", "warm", "cold", "warm", "cold"]), k=12)
    assert rec["A-LLMRec (SBERT)"]["n_users"] == 5 and rec["A-LLMRec (SBERT)"]["k"] == 12
    lo, hi = rec["A-LLMRec (SBERT)"]["hit1_wilson_95"]
    assert 0.0 <= lo <= rec["A-LLMRec (SBERT)"]["hit1"] <= hi <= 1.0


def test_genre_prompt_names_and_scores(tiny):
    assert genre_names(tiny.items) == ["Comedy", "Drama"]
    genres = ["Children's", "Drama", "Film-Noir", "Sci-Fi", "War"]
    assert names_genre("Science fiction and drama", genres) == ["Drama", "Sci-Fi"]
    assert names_genre("children, noir", genres) == ["Children's"]
    assert names_genre("Warm dramas", genres) == []
    seg = genre_prompt(["a", "b"], [3, 4])
    assert [s for s in seg if isinstance(s, SoftToken)] == [SoftToken("user"), SoftToken("item", 3),
                                                            SoftToken("item", 4)]
    assert not any(isinstance(s, SoftToken) for s in genre_prompt(["a"], [3], soft=False))
    exs = [{"history": [1, 2]}, {"history": [3]}, {"history": [5]}]
    sc = genre_scores(["Comedy", "horror", "drama!"], exs, tiny.items)
    assert sc["names_genre"] == pytest.approx(2 / 3) and sc["n_users"] == 3
    want = np.mean(["Comedy" in tiny.items["genres"].iloc[1] + tiny.items["genres"].iloc[2], False, True])
    assert sc["names_history_genre"] == pytest.approx(want)


def test_favourite_genres_generates_for_every_user():
    from recutils.models.allmrec import ALLMRec

    lm, tok = tiny_llama(), LetterTokenizer()
    model = ALLMRec(lm, tok, torch.randn(10, 6), user_dim=5,
                    config=ALLMRecConfig(proj_hidden=16, n_candidates=3))
    exs = [{"user": u, "history": [1, 2], "candidates": [3], "target": 3} for u in range(5)]
    titles = [""] + list("abcdefghi")
    ans, sec = favourite_genres(model, titles, exs, torch.randn(5, 5), "cpu", max_new_tokens=3,
                                batch_size=2)
    plain, _ = favourite_genres(model, titles, exs, torch.randn(5, 5), "cpu", soft=False,
                                max_new_tokens=3)
    assert len(ans) == len(plain) == 5 and sec >= 0.0
    assert all(isinstance(a, str) for a in ans)
