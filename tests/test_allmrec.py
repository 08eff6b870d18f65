"""A-LLMRec: stage-1 losses by hand, soft-token placement, frozen parts, answer-only loss."""

import numpy as np
import pytest
import torch
from conftest import CharTokenizer, tiny_llama  # tiny test tokenizer and 2-layer Llama

from recutils.models.allmrec import (
    ALLMRec,
    ALLMRecConfig,
    SoftToken,
    Stage1Aligner,
    Stage1Config,
    answer,
    cut_answer,
    encode_segments,
    map_to_candidates,
    matching_loss,
    prompt_batch,
    recommendation_prompt,
)


@pytest.fixture(scope="module")
def tiny_lm():
    return tiny_llama(initializer_range=0.3, max_positions=512)  # large enough for the logits to move


def test_matching_loss_by_hand():
    e = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    q = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    # squared errors 1, 0, 1, 4 -> mean 1.5
    assert matching_loss(e, q).item() == pytest.approx(1.5)


def test_stage1_total_is_the_weighted_sum_and_switches_drop_terms():
    torch.manual_seed(0)
    b, d, t = 6, 5, 7
    args = (torch.randn(b, d), torch.randn(b, d), torch.randn(b, d), torch.randn(b, t), torch.randn(b, t))
    m = Stage1Aligner(d, t, Stage1Config(latent=4, hidden=8, alpha=0.5, beta=0.2))
    out = m.losses(*args)
    expected = out["matching"] + 0.5 * out["item_recon"] + 0.2 * out["text_recon"] + out["rec"]
    assert out["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    # the matching term is the MSE between the two encoders' codes of the same items
    items, texts = torch.cat([args[1], args[2]]), torch.cat([args[3], args[4]])
    assert out["matching"].item() == pytest.approx(
        ((m.item_enc(items) - m.text_enc(texts)) ** 2).mean().item(), rel=1e-6)
    assert m.joint(args[1]).shape == (b, 4) and m.joint_text(args[3]).shape == (b, 4)
    m.use_matching = m.use_recon = False
    assert m.losses(*args)["total"].item() == pytest.approx(out["rec"].item(), rel=1e-6)


def test_stage1_overfits_a_tiny_problem():
    torch.manual_seed(0)
    b, d, t = 16, 6, 10
    user, pos, neg = torch.randn(b, d), torch.randn(b, d), torch.randn(b, d)
    pt, nt = torch.randn(b, t), torch.randn(b, t)
    m = Stage1Aligner(d, t, Stage1Config(latent=8, hidden=32))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = m.losses(user, pos, neg, pt, nt)
    for _ in range(300):
        loss = m.loss((user, pos, neg, pt, nt))
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = m.losses(user, pos, neg, pt, nt)
    assert last["total"] < 0.5 * first["total"]
    assert last["item_recon"] < 0.5 * first["item_recon"]


def test_prompt_has_one_soft_token_per_title_and_the_user_first():
    seg = recommendation_prompt(["A", "B"], ["C", "D", "E"], [3, 4], [5, 6, 7])
    soft = [s for s in seg if isinstance(s, SoftToken)]
    assert soft[0] == SoftToken("user") and seg[0] == SoftToken("user")
    assert [s.item for s in soft[1:]] == [3, 4, 5, 6, 7]
    # each item soft token comes right after its quoted title
    for k, s in enumerate(seg):
        if isinstance(s, SoftToken) and s.kind == "item":
            assert seg[k - 1].endswith('"')
    plain = recommendation_prompt(["A", "B"], ["C", "D", "E"], soft=False)
    assert not any(isinstance(s, SoftToken) for s in plain)
    assert "".join(plain).endswith('The recommendation is "')
    with pytest.raises(ValueError):
        recommendation_prompt(["A"], ["C"], soft=True)


def test_encode_segments_positions():
    tok = CharTokenizer()
    ids, slots = encode_segments(tok, [SoftToken("user"), "ab", SoftToken("item", 9), "c"])
    assert len(ids) == 5
    assert slots == [(0, SoftToken("user")), (3, SoftToken("item", 9))]
    assert ids[1:3] == tok("ab")["input_ids"] and ids[4:] == tok("c")["input_ids"]


def test_prompt_batch_left_pads_and_labels_only_the_answer():
    tok = CharTokenizer()
    p1 = [SoftToken("user"), "xy", SoftToken("item", 2), "z"]
    p2 = ["longer prompt", SoftToken("item", 1)]
    b = prompt_batch(tok, [p1, p2], [answer("Q"), answer("RS")])
    width = b["input_ids"].shape[1]
    # row 1: 13 + 1 prompt tokens + 3 answer tokens + eos = 18, no padding
    assert width == 18 and b["attention_mask"][1].all()
    n1 = 1 + 2 + 1 + 1 + 2 + 1  # prompt + 'Q"' + eos
    assert b["attention_mask"][0].sum() == n1 and not b["attention_mask"][0, :width - n1].any()
    lab = b["labels"][0]
    assert (lab[:width - 3] == -100).all()
    assert lab[-3:].tolist() == tok('Q"')["input_ids"] + [tok.eos_token_id]
    assert (b["labels"][1] != -100).sum() == 4
    off = width - n1
    assert (0, off, SoftToken("user")) in b["slots"] and (0, off + 3, SoftToken("item", 2)) in b["slots"]
    assert (1, 13, SoftToken("item", 1)) in b["slots"]


def test_soft_tokens_land_at_their_positions(tiny_lm):
    tok = CharTokenizer()
    torch.manual_seed(0)
    table = torch.randn(10, 6)
    model = ALLMRec(tiny_lm, tok, table, user_dim=5, config=ALLMRecConfig(proj_hidden=16))
    b = prompt_batch(tok, [[SoftToken("user"), "ab", SoftToken("item", 3)], ["abcd", SoftToken("item", 7)]])
    users = torch.randn(2, 5)
    emb = model.inputs_embeds(b, users)
    words = tiny_lm.get_input_embeddings()(b["input_ids"])
    soft = {(r, p): s for r, p, s in b["slots"]}
    for r in range(2):
        for p in range(b["input_ids"].shape[1]):
            if (r, p) in soft:
                s = soft[(r, p)]
                want = model.projector.user(users[r]) if s.kind == "user" else model.projector.item(table[s.item])
            else:
                want = words[r, p]
            assert torch.allclose(emb[r, p], want, atol=1e-6), (r, p)


def test_only_the_projectors_get_gradients(tiny_lm):
    tok = CharTokenizer()
    model = ALLMRec(tiny_lm, tok, torch.randn(10, 6), user_dim=5, config=ALLMRecConfig(proj_hidden=16))
    prompts = [recommendation_prompt(["a", "b"], ["c", "d"], [1, 2], [3, 4]) for _ in range(2)]
    b = prompt_batch(tok, prompts, [answer("c"), answer("d")])
    b["user_vecs"] = torch.randn(2, 5)
    model.loss(b).backward()
    assert all(p.grad is None for p in tiny_lm.parameters())
    assert not model.item_table.requires_grad
    grads = [p.grad for p in model.projector.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(p.grad.abs().sum() > 0 for p in model.projector.user.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.projector.item.parameters())
    model.zero_grad()


def test_loss_covers_only_answer_tokens(tiny_lm):
    tok = CharTokenizer()
    model = ALLMRec(tiny_lm, tok, torch.randn(10, 6), user_dim=5, config=ALLMRecConfig(proj_hidden=16))
    b = prompt_batch(tok, [recommendation_prompt(["a"], ["c", "d"], [1], [3, 4])], [answer("c")])
    b["user_vecs"] = torch.randn(1, 5)
    with torch.no_grad():
        logits = tiny_lm(inputs_embeds=model.inputs_embeds(b, b["user_vecs"])).logits
        lab = b["labels"]
        keep = lab[0, 1:] != -100
        by_hand = torch.nn.functional.cross_entropy(logits[0, :-1][keep], lab[0, 1:][keep])
        assert model.loss(b).item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_projectors_overfit_one_answer(tiny_lm):
    tok = CharTokenizer()
    torch.manual_seed(0)
    model = ALLMRec(tiny_lm, tok, torch.randn(10, 6), user_dim=5, config=ALLMRecConfig(proj_hidden=32))
    b = prompt_batch(tok, [recommendation_prompt(["a"], ["xq", "yz"], [1], [3, 4])], [answer("yz")])
    b["user_vecs"] = torch.randn(1, 5)
    opt = torch.optim.Adam(model.projector.parameters(), lr=1e-2)
    first = model.loss(b).item()
    for _ in range(60):
        loss = model.loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_generate_returns_one_text_per_prompt(tiny_lm):
    tok = CharTokenizer()
    model = ALLMRec(tiny_lm, tok, torch.randn(10, 6), user_dim=5, config=ALLMRecConfig(proj_hidden=16))
    prompts = [recommendation_prompt(["a"], ["c", "d"], [1], [3, 4]),
               recommendation_prompt(["ab", "c"], ["d", "e"], [1, 2], [3, 4])]
    b = prompt_batch(tok, prompts)
    b["user_vecs"] = torch.randn(2, 5)
    out = model.generate(b, max_new_tokens=4)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)


def test_cut_answer_and_mapping_to_candidates():
    assert cut_answer('Heat" and more') == "Heat"
    titles = ["<pad>", "Heat (1995)", "Usual Suspects, The (1995)", "Heat Wave (1990)", "Alien (1979)"]
    mapped, exact = map_to_candidates(["The Usual Suspects", "Heat Wave", "nothing at all"],
                                      [[1, 2], [1, 3], [1, 4]], titles)
    assert mapped == [2, 3, 0] and exact == [True, True, False]
    # without an exact name, the nearest candidate by embedding (never a non-candidate)
    item_emb = np.eye(5, dtype=np.float32)
    text_emb = np.array([[0, 0, 0, 0.9, 0.1]], dtype=np.float32)
    mapped, exact = map_to_candidates(["???"], [[1, 4]], titles, text_emb, item_emb)
    assert mapped == [4] and exact == [False]


def test_short_title_and_wilson_interval():
    from recutils.models.allmrec import short_title, wilson_interval
    assert short_title("Shanghai Triad (Yao a yao yao dao waipo qiao)") == "Shanghai Triad"
    assert short_title("Usual Suspects, The") == "The Usual Suspects"
    assert short_title("(500) Days") == "(500) Days"
    lo, hi = wilson_interval([1, 0, 0, 0])
    assert 0.0 < lo < 0.25 < hi < 1.0
    # textbook value: 5 hits out of 10 -> [0.237, 0.763]
    lo, hi = wilson_interval([1] * 5 + [0] * 5)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson_interval([0, 0])[0] == 0.0


def tiny_opt():
    """A 2-layer OPT (the architecture of the paper's OPT-6.7B) built from a config, random weights."""
    from transformers import OPTConfig, OPTForCausalLM
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=64, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=512, word_embed_proj_dim=32,
                       pad_token_id=0, bos_token_id=1, eos_token_id=1, init_std=0.3)
    return OPTForCausalLM(config).eval()


def test_paper_backbone_opt_soft_tokens_gradients_and_generation():
    """SCALE=paper runs A-LLMRec on OPT: the same code on a tiny random OPT (no download)."""
    lm, tok = tiny_opt(), CharTokenizer()
    torch.manual_seed(0)
    table = torch.randn(10, 6)
    model = ALLMRec(lm, tok, table, user_dim=5, config=ALLMRecConfig(proj_hidden=16))
    prompts = [recommendation_prompt(["a"], ["c", "d"], [1], [3, 4]),
               recommendation_prompt(["ab", "c"], ["d", "e"], [1, 2], [3, 4])]
    b = prompt_batch(tok, prompts, [answer("c"), answer("e")])
    b["user_vecs"] = torch.randn(2, 5)
    emb = model.inputs_embeds(b, b["user_vecs"])
    r, p, s = b["slots"][0]
    want = model.projector.user(b["user_vecs"][r]) if s.kind == "user" else model.projector.item(table[s.item])
    assert torch.allclose(emb[r, p], want, atol=1e-6)
    model.loss(b).backward()
    assert all(q.grad is None for q in lm.parameters()), "the LM stays frozen"
    assert all(q.grad is not None for q in model.projector.parameters())
    model.zero_grad()
    out = model.generate(prompt_batch(tok, prompts) | {"user_vecs": b["user_vecs"]}, max_new_tokens=4)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
