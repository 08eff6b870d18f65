"""A-LLMRec's choice format (issue 14): index-letter prompts, the choice loss, the soft
tokens' placement, the positive and shuffled controls, chunked stage-2 batches and the
both-way evaluation, on tiny random LMs (Llama and the paper's OPT) and tiny data."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CharTokenizer, tiny_llama

from recutils.evaluation import Evaluator
from recutils.models.allmrec import (
    ALLMRec,
    ALLMRecConfig,
    SoftToken,
    choice_labels,
    choice_prompt,
    clip_title,
    label_token_ids,
)
from recutils.pipelines.allmrec import (
    ChoicePrompter,
    ChoiceRecommender,
    choice_batch,
    choice_batches,
    choice_scores,
    choice_table,
    choice_validation,
    evaluation_examples,
    separated,
    stage2_examples,
    usable_users,
    validation_examples,
)


class LetterTokenizer(CharTokenizer):
    """CharTokenizer, except that " X" (space + capital letter) is one token, as in a BPE."""

    def __call__(self, text, add_special_tokens=False):
        if len(text) == 2 and text[0] == " " and text[1].isupper():
            return {"input_ids": [2 + (ord(text[1]) % 60)]}
        return super().__call__(text, add_special_tokens)


def test_choice_labels_clip_and_label_tokens():
    assert choice_labels(3) == ["A", "B", "C"] and len(choice_labels(20)) == 20
    with pytest.raises(ValueError):
        choice_labels(27)
    assert clip_title("The Usual Suspects Again", 3) == "The Usual Suspects"
    assert clip_title("Heat", 3) == "Heat" and clip_title("a b c d", None) == "a b c d"
    tok = LetterTokenizer()
    assert label_token_ids(tok, 2) == [2 + ord("A") % 60, 2 + ord("B") % 60]
    with pytest.raises(ValueError, match="tokens"):
        label_token_ids(CharTokenizer(), 2)  # " A" is two characters there


def test_choice_prompt_places_each_item_token_before_its_letter():
    seg = choice_prompt(["h1", "h2"], ["c1", "c2", "c3"], [7, 8], [4, 5, 6], user_at_end=True,
                        user_in_candidates=True)
    soft = [(k, s) for k, s in enumerate(seg) if isinstance(s, SoftToken)]
    assert soft[0][1] == SoftToken("user") and soft[-1][1] == SoftToken("user")
    items = [s for _, s in soft if s.kind == "item"]
    assert [s.item for s in items] == [7, 8, 4, 5, 6]
    # only the candidates carry the user vector, and each is followed by its letter and title
    assert [s.with_user for s in items] == [False, False, True, True, True]
    for lab, (k, _) in zip("ABC", [x for x in soft if x[1].kind == "item"][2:]):
        assert seg[k + 1].startswith(f" {lab}. c")
    text = "".join(s for s in seg if isinstance(s, str))
    assert text.endswith("\nAnswer for this user:")
    plain = choice_prompt(["h1"], ["c1", "c2"], soft=False)
    assert not any(isinstance(s, SoftToken) for s in plain)
    assert "".join(plain).endswith("\n B. c2\nAnswer:")
    with pytest.raises(ValueError):
        choice_prompt(["h1"], ["c1"], [1], [2, 3])


def test_prompter_controls_mark_and_shuffle():
    titles = [""] + [f"t{i}" for i in range(1, 30)]
    ex = {"user": 3, "history": [1, 2], "candidates": [5, 9, 11, 13], "target": 11}
    mark = ChoicePrompter(titles, mark_target=True)
    assert mark.soft_ids(ex) == ([2, 2], [2, 2, 1, 2])
    shuf = ChoicePrompter(titles, shuffle_seed=0)
    hist, cands = shuf.soft_ids(ex)
    assert hist == [1, 2] and sorted(cands) == sorted(ex["candidates"])
    assert all(a != b for a, b in zip(cands, ex["candidates"])), "every candidate gets another's vector"
    assert shuf.soft_ids(ex) == (hist, cands), "seeded by the user"
    assert ChoicePrompter(titles).answer(ex) == " C. t11"
    assert ChoicePrompter(titles).shown(ex).count("<I>") == 6


def test_user_vector_is_added_to_candidate_tokens_only():
    lm, tok = tiny_llama(), LetterTokenizer()
    table = torch.randn(10, 6)
    model = ALLMRec(lm, tok, table, user_dim=5, config=ALLMRecConfig(proj_hidden=16, n_candidates=2))
    ex = [{"user": 0, "history": [1], "candidates": [3, 4], "target": 4}]
    pr = ChoicePrompter([""] + list("abcdefghi"), user_in_candidates=True, user_at_end=True)
    b = choice_batch(tok, pr, ex, torch.randn(1, 5))
    emb = model.inputs_embeds(b, b["user_vecs"])
    u = model.projector.user(b["user_vecs"])[0]
    for r, p, s in b["slots"]:
        want = u if s.kind == "user" else model.projector.item(table[s.item]) + (u if s.with_user else 0)
        assert torch.allclose(emb[r, p], want, atol=1e-6)
    assert sum(s.with_user for _, _, s in b["slots"]) == 2


def test_choice_loss_by_hand_and_only_projectors_learn():
    lm, tok = tiny_llama(), LetterTokenizer()
    table = torch.randn(10, 6)
    model = ALLMRec(lm, tok, table, user_dim=5,
                    config=ALLMRecConfig(proj_hidden=16, n_candidates=3, loss="choice"))
    exs = [{"user": 0, "history": [1], "candidates": [3, 4, 5], "target": 4},
           {"user": 1, "history": [1, 2], "candidates": [6, 7, 8], "target": 8}]
    pr = ChoicePrompter([""] + list("abcdefghi"), user_at_end=True, user_in_candidates=True)
    b = choice_batch(tok, pr, exs, torch.randn(2, 5))
    assert b["target_index"].tolist() == [1, 2]
    loss = model.loss(b)
    with torch.no_grad():  # by hand: the last position's logits of the whole LM
        full = lm(inputs_embeds=model.inputs_embeds(b, b["user_vecs"]),
                  attention_mask=b["attention_mask"]).logits[:, -1]
    ids = torch.as_tensor(label_token_ids(tok, 3))
    want = F.cross_entropy(full[:, ids], b["target_index"]) + F.cross_entropy(full, ids[b["target_index"]])
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in lm.parameters())
    assert all(p.grad is not None for p in model.projector.parameters())


def test_marked_target_is_learned_by_the_projectors():
    """The positive control on a tiny LM: a two-row table marking the target is learned."""
    lm, tok = tiny_llama(initializer_range=0.3, max_positions=512), LetterTokenizer()
    model = ALLMRec(lm, tok, torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), user_dim=5,
                    config=ALLMRecConfig(proj_hidden=32, n_candidates=3, loss="choice"))
    rng = np.random.default_rng(0)
    exs = []
    for u in range(12):
        c = (rng.permutation(8) + 1).tolist()[:3]
        exs.append({"user": u, "history": [1], "candidates": c, "target": c[u % 3]})
    pr = ChoicePrompter([""] + list("abcdefgh"), mark_target=True)
    vecs = torch.zeros(12, 5)
    opt = torch.optim.Adam(model.projector.parameters(), lr=3e-2)
    first = model.loss(choice_batch(tok, pr, exs, vecs)).item()
    for _ in range(100):
        opt.zero_grad()
        loss = model.loss(choice_batch(tok, pr, exs, vecs))
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert choice_validation(pr, exs, vecs, "cpu")(model) == 1.0
    shuffled = ChoicePrompter([""] + list("abcdefgh"))  # item ids instead of the marker: no signal
    model.set_item_table(torch.zeros(10, 2))
    assert choice_validation(shuffled, exs, vecs, "cpu")(model) < 1.0


def test_choice_batches_are_chunks_of_one_seeded_stream(tiny):
    tok = LetterTokenizer()
    users = usable_users(tiny)
    exs = stage2_examples(tiny, users, None, 2, 3, seed=0)
    pr = ChoicePrompter([""] + [f"t{i}" for i in range(1, tiny.n_items + 1)])
    vecs = torch.arange(len(exs), dtype=torch.float32)[:, None].repeat(1, 5)
    make = choice_batches(tok, pr, exs, vecs, batch_size=2, steps=3, seed=0)
    c0, c1 = make(0), make(1)
    assert len(c0) == len(c1) == 3 and all(b["input_ids"].shape[0] == 2 for b in c0)
    rows = [int(v) for b in c0 + c1 for v in b["user_vecs"][:, 0]]
    stream = []
    for e in range(3):
        stream += np.random.default_rng(10 + e).permutation(len(exs)).tolist()
    assert rows == stream[:12]
    again = choice_batches(tok, pr, exs, vecs, batch_size=2, steps=3, seed=0)(1)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(c1, again))


def test_recommender_ranks_both_ways_for_the_evaluator(tiny):
    lm, tok = tiny_llama(), LetterTokenizer()
    model = ALLMRec(lm, tok, torch.randn(tiny.n_items + 1, 6), user_dim=5,
                    config=ALLMRecConfig(proj_hidden=16, n_candidates=20, loss="choice"))
    users = np.arange(5)
    ev = Evaluator(tiny, "test", protocols=("sampled19",), users=users, seed=0)
    exs = evaluation_examples(tiny, users, ev.negatives[19].numpy(), 2, seed=0)
    titles = [""] + [f"t{i}" for i in range(1, tiny.n_items + 1)]
    r = ChoiceRecommender(model, ChoicePrompter(titles, max_words=1), exs, torch.randn(5, 5),
                          tiny.n_items, "cpu")
    res = ev.evaluate(r, batch_size=5)
    logits, greedy = choice_scores(model, ChoicePrompter(titles, max_words=1), exs, r.user_vecs, "cpu")
    target = np.asarray([ex["candidates"].index(ex["target"]) for ex in exs])
    # the evaluator's rank of the target = how many candidates have a larger letter logit
    want = (logits > logits[np.arange(5), target][:, None]).sum(1)
    assert np.array_equal(res.ranks["sampled19"], want)
    assert np.array_equal(r.greedy_hit, (greedy == target).astype(float))
    assert r.mapped == pytest.approx(float((greedy >= 0).mean()))
    scores = r.predict(users)
    assert torch.isinf(scores[0, [i for i in range(tiny.n_items + 1) if i not in exs[0]["candidates"]]]).all()
    table = choice_table({"A": res}, {"A": r}, np.array(["cold", "warm", "cold", "warm", "cold"]), ["A"])
    assert table.loc["A", "Hit@1 (ranking)"] == pytest.approx(float((want == 0).mean()))
    assert table.loc["A", "users"] == 5


def test_validation_examples_use_the_validation_item(tiny):
    exs = validation_examples(tiny, [0, 1], 3, 5, seed=0)
    vt = tiny.targets("valid")
    assert [ex["target"] for ex in exs] == [int(vt[0]), int(vt[1])]
    assert all(ex["target"] in ex["candidates"] and len(set(ex["candidates"])) == 5 for ex in exs)
    assert separated(np.ones(50), np.zeros(50)) == (True, True)
    assert separated(np.array([1, 0, 0, 0]), np.array([0, 1, 0, 0])) == (False, False)


def test_paper_backbone_opt_choice_logits():
    from test_allmrec import tiny_opt
    lm, tok = tiny_opt(), LetterTokenizer()
    model = ALLMRec(lm, tok, torch.randn(10, 6), user_dim=5,
                    config=ALLMRecConfig(proj_hidden=16, n_candidates=3, loss="choice", bf16=True))
    exs = [{"user": 0, "history": [1], "candidates": [3, 4, 5], "target": 4}]
    pr = ChoicePrompter([""] + list("abcdefghi"), user_at_end=True, user_in_candidates=True)
    b = choice_batch(tok, pr, exs, torch.randn(1, 5))
    logits, greedy = model.choice_logits(b)
    assert logits.shape == (1, 3) and greedy.shape == (1,)
    model.loss(b).backward()
    assert all(p.grad is None for p in lm.parameters())
