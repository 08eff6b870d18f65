"""LANCER: prefix shapes on a tiny random Llama, the LM loss mask, beam search and item mapping."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_llama  # the 2-layer Llama every LM test uses

from recutils.models.lancer import (
    ANCHOR_TEXT,
    LANCER,
    LANCERConfig,
    PrefixEncoder,
    first_item,
    history_prompt,
    join_layers,
    kv_shape,
    map_generations,
    pooled_token_embeddings,
    reasoning_batch,
    split_layers,
    title_paths,
    title_trie,
)

TINY = LANCERConfig(n_prefix=4, mlp_hidden=16, attn_dim=8, dropout=0.0)
TITLES = ["", "Alpha", "Beta", "Gamma", "Delta", "Eps", "Zeta", "Eta", "Theta", "Iota",
          "Kappa", "Lambda", "Mu", "Alphabet", "Al"]
GENRES = [[]] + [["Drama"], ["Comedy"], []] * 4 + [["Horror"], []]


class CharTokenizer:
    """A tiny tokenizer (one id per character) with the parts of the HF API LANCER uses."""

    eos_token, eos_token_id, pad_token_id, padding_side = "#", 1, 0, "left"

    def _ids(self, text):
        return [1 if c == "#" else 2 + (ord(c) % 60) for c in text]

    def __call__(self, texts, return_tensors=None, padding=False, add_special_tokens=False):
        if isinstance(texts, str):
            return {"input_ids": self._ids(texts)}
        rows = [self._ids(t) for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1

        class Enc(dict):
            def to(self, device):
                return Enc({k: v.to(device) for k, v in self.items()})
        return Enc(input_ids=ids, attention_mask=mask)

    def batch_decode(self, seqs, skip_special_tokens=True):
        return ["".join(chr(48 + int(t) % 60) for t in s if int(t) > 1) for s in seqs]


@pytest.fixture(scope="module")
def tiny_lm():
    return tiny_llama()


def test_prefix_shapes_follow_the_lm(tiny_lm):
    layers, kv_heads, head_dim = kv_shape(tiny_lm.config)
    assert (layers, kv_heads, head_dim) == (2, 2, 8)
    enc = PrefixEncoder(tiny_lm.config, n_tokens=5, mlp_hidden=16)
    flat = enc(3)
    assert flat.shape == (3, 5, 2 * 2 * 2 * 8)
    pairs = split_layers(flat, tiny_lm.config)
    assert len(pairs) == 2 and all(k.shape == v.shape == (3, 2, 5, 8) for k, v in pairs)
    with pytest.raises(ValueError, match="prefix width"):
        split_layers(flat[..., :-1], tiny_lm.config)


def test_prefix_changes_the_lm_output_and_only_the_prefix_trains(tiny_lm):
    tok = CharTokenizer()
    model = LANCER(tiny_lm, tok, TINY)
    assert not any(p.requires_grad for p in tiny_lm.parameters())
    ids = torch.randint(2, 60, (2, 7))
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :4] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    prefix, pmask = model.knowledge_prefix(2)
    loss = model.prefix_lm_loss(batch, prefix, pmask)
    loss.backward()
    assert model.knowledge.embedding.weight.grad is not None
    assert model.knowledge.embedding.weight.grad.abs().sum() > 0
    no_prefix = torch.zeros(2, 0, prefix.shape[-1])
    h0, _ = model._run(ids, mask, no_prefix, torch.zeros(2, 0, dtype=torch.long))
    h1, _ = model._run(ids, mask, prefix.detach(), pmask)
    assert h0.shape == h1.shape == (2, 7, 32)
    assert not torch.allclose(h0, h1)


def test_item_representation_ignores_left_padding(tiny_lm):
    """h_i of a text is the same alone and in a batch where it is left-padded."""
    tok = CharTokenizer()
    model = LANCER(tiny_lm, tok, TINY).eval()
    alone = model.embed_titles(["ab : cd"])
    padded = model.embed_titles(["ab : cd", "a much longer item text"])
    assert torch.allclose(alone[0], padded[0], atol=1e-5)
    assert not torch.allclose(padded[0], padded[1])


def test_loss_ignores_padding_labels(tiny_lm):
    tok = CharTokenizer()
    model = LANCER(tiny_lm, tok, TINY).eval()
    ids = torch.randint(2, 60, (1, 6))
    labels = torch.full_like(ids, -100)
    with pytest.raises(ValueError, match="no completion token"):
        model.prefix_lm_loss({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels},
                      *model.knowledge_prefix(1))


def test_reasoning_prefix_and_beam_search(tiny_lm):
    tok = CharTokenizer()
    model = LANCER(tiny_lm, tok, TINY).eval()
    reps = torch.randn(6, 32)
    titles = ["", "Alpha", "Beta", "Gamma", "Delta", "Eps"]
    genres = [[], ["Drama"], ["Comedy"], ["Drama"], [], ["Horror"]]
    batch = reasoning_batch(tok, reps, [[1, 2], [3, 4, 5]], titles, genres, targets=[3, 1])
    assert batch["history_reps"].shape == (2, 3, 32)
    assert batch["history_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    prefix, pmask, attn = model.user_prefix(batch["history_reps"], batch["history_mask"])
    assert prefix.shape[:2] == (2, 4 + 3) and pmask[0].tolist() == [1] * 4 + [0, 1, 1]
    assert attn.shape == (2, 3, 4) and torch.allclose(attn.sum(-1), torch.ones(2, 3))
    assert torch.isfinite(model.reasoning_loss(batch))



def _naive_constrained_greedy(model, gen, trie, exclude, steps):
    """Greedy decoding that re-reads the whole prompt every step (no cache), under the trie."""
    prefix, pmask, _ = model.user_prefix(gen["history_reps"], gen["history_mask"])
    out = []
    for u in range(len(gen["input_ids"])):
        ids, mask = gen["input_ids"][u:u + 1], gen["attention_mask"][u:u + 1]
        seq = []
        for _ in range(steps):
            hidden, _ = model._run(ids, mask, prefix[u:u + 1], pmask[u:u + 1])
            logits = model.lm.get_output_embeddings()(hidden[0, -1])
            allowed = trie.allowed(seq, exclude[u])
            nxt = allowed[int(logits[allowed].argmax())]
            seq.append(nxt)
            if nxt == trie.done_token:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out.append(trie.item(seq))
    return out


def test_greedy_beam_search_under_the_trie_matches_a_naive_rerun(tiny_lm):
    tok = CharTokenizer()
    model = LANCER(tiny_lm, tok, TINY).eval()
    trie = title_trie(tok, TITLES)
    hist = [[1, 2], [3, 4, 5]]
    gen = reasoning_batch(tok, torch.randn(len(TITLES), 32), hist, TITLES, GENRES)
    items, _ = model.beam_search(gen, trie, exclude=hist, num_beams=1)
    naive = _naive_constrained_greedy(model, gen, trie, hist, trie.longest)
    assert [i[0] for i in items] == naive


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_constrained_beams_are_distinct_unseen_catalogue_items(tiny_lm, seed):
    """No output is a history item or a non-item; each beam stops after its first title."""
    torch.manual_seed(seed)
    tok = CharTokenizer()
    model = LANCER(tiny_lm, tok, replace(TINY, beams=6, top_k=5)).eval()
    model.reasoning.out.weight.data.normal_(std=1.0)  # make users differ
    trie = title_trie(tok, TITLES)
    hist = [[1, 13], [3, 4, 5, 6], [2, 8, 9, 10, 11, 12]]
    gen = reasoning_batch(tok, torch.randn(len(TITLES), 32), hist, TITLES, GENRES)
    items, texts = model.beam_search(gen, trie, exclude=hist)
    ranked = model.predict(gen, trie, exclude=hist)
    for h, its, txt, r in zip(hist, items, texts, ranked):
        assert len(its) == len(set(its)) == len(txt) == 6   # 14 titles, <= 6 seen: 6 beams
        assert all(1 <= i < len(TITLES) for i in its) and not set(its) & set(h)
        assert txt == [tok.batch_decode([tok(" " + TITLES[i])["input_ids"]])[0] for i in its]
        assert r == its[:5]
    # with an unconstrained prefix, "Al" (a prefix of "Alpha", "Alphabet") is still reachable
    all_items = model.beam_search(gen, trie, exclude=[[], [], []], num_beams=14)[0]
    assert all(sorted(its) == list(range(1, 15)) for its in all_items)


def test_candidate_scoring_with_a_reused_prompt_cache_matches_full_rereads(tiny_lm):
    tok = CharTokenizer()
    model = LANCER(tiny_lm, tok, replace(TINY, score_chunk=4)).eval()
    model.reasoning.out.weight.data.normal_(std=1.0)
    paths = title_paths(tok, TITLES)
    hist = [[1, 2], [3, 4, 5]]
    gen = reasoning_batch(tok, torch.randn(len(TITLES), 32), hist, TITLES, GENRES)
    cands = [[5, 6, 7, 13, 14, 9], [1, 2, 11, 12, 10]]
    fast = model.score_candidates(gen, cands, paths, reuse_cache=True)
    slow = model.score_candidates(gen, cands, paths, reuse_cache=False, chunk=2)
    # an independent sum of next-token log-probabilities of prompt + title + eos
    prefix, pmask, _ = model.user_prefix(gen["history_reps"], gen["history_mask"])
    for u in range(2):
        keep = gen["attention_mask"][u].bool()
        prompt = gen["input_ids"][u][keep]
        for c, item in enumerate(cands[u]):
            seq = torch.cat([prompt, torch.tensor(paths[item])]).unsqueeze(0)
            hidden, _ = model._run(seq, torch.ones_like(seq), prefix[u:u + 1], pmask[u:u + 1])
            lp = torch.log_softmax(model.lm.get_output_embeddings()(hidden[0]), -1)
            n = len(prompt)
            ref = sum(float(lp[n - 1 + t, tok_id]) for t, tok_id in enumerate(paths[item]))
            assert fast[u][c] == pytest.approx(ref, abs=1e-4)
            assert slow[u][c] == pytest.approx(ref, abs=1e-4)


def test_ablation_without_reasoning_has_no_user_slots(tiny_lm):
    model = LANCER(tiny_lm, CharTokenizer(), LANCERConfig(n_prefix=4, mlp_hidden=16, attn_dim=8),
                   use_reasoning=False)
    prefix, pmask, attn = model.user_prefix(torch.randn(2, 3, 32), torch.ones(2, 3))
    assert prefix.shape[1] == 4 and attn is None


def test_history_prompt_and_first_item():
    p = history_prompt(["Toy Story", "Usual Suspects, The"], [["Animation", "Comedy", "Kids"], []])
    assert "Animation/Comedy : Toy Story -> unknown : The Usual Suspects" in p
    assert p.endswith("may want to watch :")
    assert first_item(" Heat -> Drama : Swim") == "Heat"
    with pytest.raises(ValueError):
        history_prompt(["a"], [])


def test_item_mapping_by_max_pooled_token_embeddings():
    tok = CharTokenizer()
    emb = torch.nn.Embedding(64, 8)
    titles = ["", "abc", "xyz", "abd"]
    item_emb = pooled_token_embeddings(titles, tok, emb)
    assert np.allclose(item_emb[0], 0)
    manual = emb(torch.tensor(tok(" abc")["input_ids"])).max(0).values.detach().numpy()
    assert np.allclose(item_emb[1], manual)
    # an exact title maps to its item; duplicates are removed; padding never appears
    gens = [["xyz", "xyz", "abc"]]
    ranked = map_generations(gens, pooled_token_embeddings(gens[0], tok, emb), item_emb, k=3,
                             per_text=3)
    assert ranked[0][0] == 2 and sorted(ranked[0]) == [1, 2, 3]
    with pytest.raises(ValueError):
        map_generations([["abc"]], item_emb[:3], item_emb, k=2, per_text=2)


def test_anchored_knowledge_prefix_is_the_lm_reading_a_real_sentence(tiny_lm):
    """At step 0 the LM under the knowledge prefix = the LM after reading the anchor tokens."""
    tok = CharTokenizer()
    model = LANCER(tiny_lm, tok, TINY).eval()
    anchor = tok(ANCHOR_TEXT)["input_ids"][:TINY.n_prefix]
    text = torch.tensor([tok(" : Alpha")["input_ids"]])
    h_prefix, _ = model._run(text, torch.ones_like(text), *model.knowledge_prefix(1))
    full = torch.cat([torch.tensor([anchor]), text], 1)
    h_read = tiny_lm.model(input_ids=full).last_hidden_state[:, len(anchor):]
    assert torch.allclose(h_prefix, h_read, atol=1e-5)
    # the knowledge tokens are the anchor's input embeddings (the LM's embedding space)
    assert torch.allclose(model.knowledge.tokens(), tiny_lm.get_input_embeddings()(torch.tensor(anchor)))
    # and the flat prefix layout round-trips through split_layers / join_layers
    flat = model.knowledge(2)
    assert torch.equal(join_layers(split_layers(flat, tiny_lm.config)), flat)


def test_paper_backbone_gpt2_runs_the_same_code():
    """SCALE=paper uses GPT-2: a tiny random GPT-2 from a config (no download) through the
    anchor, the loss, the constrained beam search and candidate scoring."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=256, n_embd=32, n_layer=2,
                                      n_head=4)).eval()
    tok = CharTokenizer()
    model = LANCER(gpt2, tok, TINY).eval()
    assert kv_shape(gpt2.config) == (2, 4, 8)
    anchor = tok(ANCHOR_TEXT)["input_ids"][:TINY.n_prefix]
    text = torch.tensor([tok(" : Alpha")["input_ids"]])
    h_prefix, _ = model._run(text, torch.ones_like(text), *model.knowledge_prefix(1))
    h_read = gpt2.transformer(input_ids=torch.cat([torch.tensor([anchor]), text], 1)
                              ).last_hidden_state[:, len(anchor):]
    assert torch.allclose(h_prefix, h_read, atol=1e-5)
    hist = [[1, 2], [3, 4, 5]]
    reps = torch.randn(len(TITLES), 32)
    batch = reasoning_batch(tok, reps, hist, TITLES, GENRES, targets=[6, 7])
    loss = model.reasoning_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.reasoning.q.weight.grad.abs().sum() > 0
    gen = reasoning_batch(tok, reps, hist, TITLES, GENRES)
    trie = title_trie(tok, TITLES)
    items, _ = model.beam_search(gen, trie, exclude=hist, num_beams=4)
    assert all(len(i) == len(set(i)) == 4 and not set(i) & set(h) for i, h in zip(items, hist))
    assert [i[0] for i in model.beam_search(gen, trie, exclude=hist, num_beams=1)[0]] == \
        _naive_constrained_greedy(model, gen, trie, hist, trie.longest)
    paths = title_paths(tok, TITLES)
    fast = model.score_candidates(gen, [[6, 7, 8], [9, 13]], paths)
    slow = model.score_candidates(gen, [[6, 7, 8], [9, 13]], paths, reuse_cache=False)
    assert all(np.allclose(a, b, atol=1e-4) for a, b in zip(fast, slow))
