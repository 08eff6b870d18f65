"""Harte et al.: LLMSeqSim session vectors and ranking, PCA item init, LLMSeqPrompt on a tiny LM."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_llama  # the 2-layer Llama every LM test uses
from test_lancer import CharTokenizer  # the tiny character tokenizer of the LANCER tests

from recutils.batching import pad_sequences
from recutils.data import RawDataset, prepare
from recutils.evaluation import Evaluator
from recutils.models import BERT4RecConfig, SASRecConfig
from recutils.models.llmseq import (
    SEPARATOR,
    LLMSeqPrompt,
    LLMSeqPromptConfig,
    LLMSeqSim,
    LLMSeqSimConfig,
    clean_generation,
    llm2bertrec,
    llm2sasrec,
    pca_init,
    prompt_examples,
    recency_weights,
    seq_prompt,
    session_embeddings,
)
from recutils.training import TrainConfig, fit_sequential


def test_recency_weights_hand_computed():
    np.testing.assert_allclose(recency_weights(3, "last"), [0, 0, 1])
    np.testing.assert_allclose(recency_weights(4, "mean"), [0.25] * 4)
    np.testing.assert_allclose(recency_weights(3, "linear"), [1 / 6, 2 / 6, 3 / 6])
    np.testing.assert_allclose(recency_weights(3, "harmonic"), np.array([1 / 3, 1 / 2, 1]) / (11 / 6))
    np.testing.assert_allclose(recency_weights(3, "exponential", decay=0.5), np.array([.25, .5, 1]) / 1.75)
    with pytest.raises(ValueError, match="combine"):
        recency_weights(3, "median")


def test_session_embedding_is_the_weighted_mean():
    emb = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float32)
    out = session_embeddings([[1, 2], [3, 1, 2]], emb, combine="linear").numpy()
    np.testing.assert_allclose(out[0], (1 * emb[1] + 2 * emb[2]) / 3, rtol=1e-6)
    np.testing.assert_allclose(out[1], (1 * emb[3] + 2 * emb[1] + 3 * emb[2]) / 6, rtol=1e-6)
    last = session_embeddings([[3, 1, 2]], emb, combine="mean", max_items=1).numpy()
    np.testing.assert_allclose(last[0], emb[2])


def test_llmseqsim_ranks_by_cosine_and_never_recommends_seen_items():
    emb = np.array([[0, 0], [1, 0], [0.9, 0.1], [0, 1], [5, 0.2]], dtype=np.float32)
    scores = LLMSeqSim(emb, LLMSeqSimConfig(combine="last")).predict([[3, 1]])
    assert torch.isinf(scores[0, [0, 1, 3]]).all()
    assert scores[0].argmax().item() == 4  # (5, .2) is more aligned with (1, 0) than (.9, .1)
    # dot product prefers the long vector even more; cosine cross-check with numpy
    cos = (emb[1:] @ emb[1]) / np.linalg.norm(emb[1:], axis=1) / np.linalg.norm(emb[1])
    free = [2, 4]
    np.testing.assert_allclose(scores[0, free].numpy(), cos[np.array(free) - 1], rtol=1e-5)
    with pytest.raises(ValueError, match="similarity"):
        LLMSeqSimConfig(similarity="euclid")
    with pytest.raises(ValueError, match="combine"):
        LLMSeqSimConfig(combine="median")
    kept = LLMSeqSim(emb, LLMSeqSimConfig(exclude_seen=False)).predict([[3, 1]])
    assert torch.isinf(kept[0, 0]) and torch.isfinite(kept[0, 1:]).all()
    assert kept[0].argmax().item() == 1  # the last item (1) is its own nearest


def test_llmseqsim_finds_the_next_item_of_a_chain():
    """Items on a circle, each user walks it in order: the nearest unseen item is the next one."""
    n = 30
    angles = 2 * np.pi * np.arange(n + 1) / n
    emb = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    emb[0] = 0
    rows = [(f"u{u}", str(1 + (s + t) % n), 4.0, t) for u, s in enumerate(range(0, n, 3)) for t in range(6)]
    inter = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    items = pd.DataFrame({"item": [str(i) for i in range(1, n + 1)], "title": [f"m{i}" for i in range(1, n + 1)],
                          "year": pd.array([2000] * n, dtype="Int64"), "genres": [[]] * n,
                          "description": "", "brand": ""})
    data = prepare(RawDataset("ring", inter, items))
    assert data.item_ids[1:].tolist() == [str(i) for i in range(1, n + 1)]  # ids kept in order
    sim = LLMSeqSim(emb, LLMSeqSimConfig(combine="last"))
    inputs = data.inputs("test")
    result = Evaluator(data, "test", protocols=("full", "full_masked")).evaluate(
        lambda users: sim.predict([inputs[u] for u in users]))
    # the item after the last is as near as the one before, but that one is seen: rank 0
    assert result.metrics()["full_masked/HR@1"] == 1.0


def test_pca_init_matches_sklearn_up_to_sign_and_scale():
    from sklearn.decomposition import PCA
    rng = np.random.default_rng(0)
    emb = np.vstack([np.zeros((1, 12)), rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12))])
    out = pca_init(emb, 4, std=None)
    assert out.shape == (41, 4) and np.all(out[0] == 0)
    ref = PCA(4).fit_transform(emb[1:])
    for j in range(4):
        c = np.corrcoef(out[1:, j], ref[:, j])[0, 1]
        assert abs(c) == pytest.approx(1.0, abs=1e-5)
    scaled = pca_init(emb, 4, std=0.02)
    assert scaled[1:].std() == pytest.approx(0.02, rel=1e-4)
    with pytest.raises(ValueError, match="components"):
        pca_init(emb, 20)


def test_llm2_models_start_from_the_pca_table_and_train_it(tiny):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(tiny.n_items + 1, 24)).astype(np.float32)
    init = torch.as_tensor(pca_init(emb, 16))
    sas = llm2sasrec(emb, SASRecConfig(hidden=16, n_heads=2, max_len=8))
    bert = llm2bertrec(emb, BERT4RecConfig(hidden=16, n_heads=2, max_len=8))
    for model in (sas, bert):
        assert torch.allclose(model.items.table.detach(), init)
        assert model.items.table.requires_grad
    # the [MASK] row is random, not part of the PCA table
    assert bert.items.weight.shape == (tiny.n_items + 2, 16) and bert.items.extra.abs().sum() > 0
    seq = pad_sequences(tiny.inputs("test")[:3], 8)
    assert sas.predict(seq).shape == bert.predict(seq).shape == (3, tiny.n_items + 1)
    torch.manual_seed(0)
    hist = fit_sequential(sas, tiny, TrainConfig(epochs=3, batch_size=16, lr=5e-3, patience=10,
                                                 progress=False))
    assert hist.epochs[-1]["loss"] < hist.epochs[0]["loss"]
    assert not torch.allclose(sas.items.table.detach(), init)  # kept trainable


def test_prompt_format_and_examples_never_show_the_target():
    titles = ["<pad>", "A (1990)", "B (1991)", "C (1992)", "D (1993)"]
    assert seq_prompt(["A", "B"]) == "1. A\n2. B" + SEPARATOR
    assert seq_prompt(["A", "B", "C"], max_items=2) == "1. B\n2. C" + SEPARATOR
    seqs = [np.array([1, 2, 3, 4]), np.array([4, 3])]
    ex = prompt_examples(seqs, titles, min_history=2)
    assert [t for _, t in ex] == [3, 4]  # positions 2 and 3 of the first user; the second is too short
    assert ex[0][0] == "1. A (1990)\n2. B (1991)" + SEPARATOR
    assert all(titles[t] not in p for p, t in ex)
    assert len(prompt_examples(seqs, titles, min_history=1, n=2, seed=1)) == 2


@pytest.fixture(scope="module")
def tiny_lm():
    return tiny_llama(initializer_range=0.2)  # large enough weights for LoRA (q, v) to matter


def test_llmseqprompt_lora_learns_a_title_and_maps_generations(tiny_lm):
    titles = ["<pad>", "ab", "cd", "ef", "gh"]
    emb = np.eye(5, dtype=np.float32)
    emb[0] = 0

    def encode(texts):  # a toy "sentence encoder": one-hot of the exact title, else item 4's axis
        return np.stack([emb[titles.index(t)] if t in titles else emb[4] for t in texts])

    config = LLMSeqPromptConfig(lora_r=4, num_beams=2, max_new_tokens=4, top_k=3,
                                constrained=False)  # free text, mapped by embedding
    model = LLMSeqPrompt(tiny_lm, CharTokenizer(), titles, emb, encode, config)
    assert model.tokenizer is not None and model.prompt([1, 2]) == seq_prompt(["ab", "cd"])
    trainable = [n for n, p in model.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    batch = model.batch([(seq_prompt(["ab", "cd"]), 3)])
    assert (batch["labels"] != -100).sum() == len("ef#")  # the loss sees the completion only
    opt = torch.optim.AdamW([p for p in model.model.parameters() if p.requires_grad], lr=5e-2)
    model.model.train()
    losses = []
    for _ in range(40):
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    gens = model.generate([[1, 2]])
    assert len(gens) == 1 and len(gens[0]) == 2
    predicted = model.predict([[1, 2]])  # generate + map: up to top_k unseen items
    assert sorted(predicted[0]) == [3, 4]  # only two items are unseen
    assert predicted == model.map_to_items(gens, [[1, 2]])
    assert model.mean_loss([(seq_prompt(["ab", "cd"]), 3)]) == pytest.approx(model.loss(batch).item())
    ranked = model.map_to_items([["ef", "zz"], ["gh"]], [[1, 2], [4]])
    assert ranked[0][:2] == [3, 4]            # exact title first, then the hallucination's nearest
    assert 4 not in ranked[1] and len(set(ranked[1])) == 3
    assert model.stats["hallucination_rate"] == pytest.approx(1 / 3)
    assert model.map_to_items([["3. ef"]], [[1]], k=1) == [[3]]
    assert model.stats["hallucination_rate"] == 0.0


def test_clean_generation_only_drops_a_leading_list_number():
    assert clean_generation(" 11. Heat (1995)") == "Heat (1995)"
    assert clean_generation("2001: A Space Odyssey (1968)") == "2001: A Space Odyssey (1968)"
    assert clean_generation("1. 1994") == "1994"


# --- LLMSeqPrompt: loss by part, title trie, likelihood of titles ---------------------------------


def test_completion_parts_split_words_year_and_end():
    from recutils.models.llmseq import END, TITLE, YEAR, completion_parts

    tok = CharTokenizer()
    assert completion_parts(tok, "Ab (1995)", "#") == [TITLE] * 2 + [YEAR] * 7 + [END]
    assert completion_parts(tok, "Heat", "#") == [TITLE] * 4 + [END]          # no year


def test_part_losses_by_hand():
    from recutils.models.llmseq import END, TITLE, YEAR, part_losses

    # one row, 4 positions: logits at t predict label t + 1; labels 1..3 are the completion
    logits = torch.zeros(1, 4, 3)
    logits[0, 0, 1] = logits[0, 1, 2] = 2.0            # confident and right on the first two
    labels = torch.tensor([[-100, 1, 2, 0]])
    parts = torch.tensor([[0, TITLE, YEAR, END]])
    out = part_losses(logits, labels, parts)
    right = -torch.log_softmax(torch.tensor([0.0, 2.0, 0.0]), 0)[1]
    uniform = torch.log(torch.tensor(3.0))
    assert out["title"] == pytest.approx(float(right)) and out["year"] == pytest.approx(float(right))
    assert out["end"] == pytest.approx(float(uniform))
    assert out["loss"] == pytest.approx(float((2 * right + uniform) / 3))
    assert torch.isnan(part_losses(logits, labels, torch.zeros_like(parts) + TITLE)["year"])


@pytest.fixture
def prompter():
    tiny_lm = tiny_llama(initializer_range=0.2)  # a fresh LM: each prompter adds its own LoRA
    titles = ["<pad>", "ab", "abc", "cd", "ef"]
    emb = np.eye(5, dtype=np.float32)
    emb[0] = 0
    config = LLMSeqPromptConfig(lora_r=4, num_beams=3, max_new_tokens=4, top_k=4)
    return LLMSeqPrompt(tiny_lm, CharTokenizer(), titles, emb, lambda t: emb[:len(t)], config)


def test_constrained_beams_are_unseen_catalogue_titles(prompter):
    histories = [[1, 3], [2], [1, 2, 3]]
    beams = prompter.generate_items(histories)
    for items, h in zip(beams, histories):
        assert items and len(set(items)) == len(items) <= 3
        assert all(1 <= i <= 4 and i not in h for i in items)
    assert sorted(beams[2]) == [4]                  # only one unseen title is left
    filled = prompter.fill_from_items(beams, histories)
    assert all(f[:len(b)] == b for f, b in zip(filled, beams))   # beams first, then neighbours
    assert sorted(filled[0]) == [2, 4] and all(i not in h for f, h in zip(filled, histories)
                                               for i in f)
    assert prompter.predict(histories) == filled


def test_title_logprobs_with_a_shared_cache_match_a_full_forward(prompter):
    history, items = [1, 3], [2, 4, 1]
    got = prompter.title_logprobs(history, items)
    tok, model = prompter.tokenizer, prompter.model
    prompt = tok(prompter.prompt(history))["input_ids"]
    for score, i in zip(got, items):
        path = tok(prompter.titles[i] + "#")["input_ids"]
        ids = torch.tensor([prompt + path])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        want = sum(float(logp[len(prompt) - 1 + t, path[t]]) for t in range(len(path)))
        assert score == pytest.approx(want, abs=1e-4)


def test_mean_losses_weigh_tokens_and_report_parts(prompter):
    pairs = [(seq_prompt(["ab"]), 3), (seq_prompt(["cd", "ab"]), 2)]
    one = [prompter.mean_losses([p]) for p in pairs]
    both = prompter.mean_losses(pairs)
    # "cd#" has 2 title tokens, "abc#" 3: the title loss is their token-weighted mean
    assert both["title"] == pytest.approx((2 * one[0]["title"] + 3 * one[1]["title"]) / 5)
    assert both["end"] == pytest.approx((one[0]["end"] + one[1]["end"]) / 2)
    assert np.isnan(both["year"]) and both["loss"] == pytest.approx(prompter.mean_loss(pairs))
