"""GenRec: tokeniser, ID-embedding alignment, cloze masking, trie-constrained beam search, overfit."""

import numpy as np
import pytest
import torch

from recutils.batching import IGNORE_INDEX as IGNORE
from recutils.models.genrec import (
    DigitPieceTokenizer,
    GenRecConfig,
    build_genrec,
    encode_inputs,
    encode_targets,
    item_attention,
    item_trie,
    next_item_batch,
    pretrain_batch,
    sample_next_item,
)

TOK = DigitPieceTokenizer()


def tiny_model(n_users=4, n_items=30, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(d_model=32, layers=1, heads=2, ffn=64, dropout=0.0, max_items=6)
    cfg.update(kw)
    return build_genrec(n_users, n_items, GenRecConfig(**cfg)).eval()


# --- tokeniser ---------------------------------------------------------------------------------

@pytest.mark.parametrize("word", ["item_1", "item_10", "item_123", "item_1234", "item_12345",
                                  "user_0", "user_907", "item_100", "item_1005"])
def test_tokenizer_round_trip(word):
    ids = TOK.word_tokens(word)
    assert TOK.decode(ids) == word
    assert all(i not in TOK.special_ids for i in ids)


def test_tokenizer_splits_like_the_papers_example():
    assert [TOK.vocab[i] for i in TOK.word_tokens("item_1234")] == ["item", "_", "12", "34"]
    assert [TOK.vocab[i] for i in TOK.word_tokens("item_105")] == ["item", "_", "10", "5"]
    # "05" and "5" are different tokens, so item_1005 and item_105 stay distinct
    assert TOK.word_tokens("item_1005") != TOK.word_tokens("item_105")
    assert TOK.decode(TOK.word_tokens("user_3") + TOK.word_tokens("item_77")) == "user_3 item_77"


def test_tokenizer_rejects_other_words():
    with pytest.raises(ValueError, match="not an ID word"):
        TOK.word_tokens("movie_12")


# --- inputs and ID alignment -------------------------------------------------------------------

def test_encoder_input_aligns_ids_with_words_by_hand():
    b = encode_inputs(TOK, [3], [[12, 5]], append_mask=True)
    toks = TOK.tokens(b["input_ids"][0].tolist())
    assert toks == ["<s>", "user", "_", "3", "item", "_", "12", "item", "_", "5", "<mask>", "</s>"]
    assert b["user_ids"][0].tolist() == [0, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0]   # user 3 -> row 4
    assert b["item_ids"][0].tolist() == [0, 0, 0, 0, 12, 12, 12, 5, 5, 5, 0, 0]
    assert b["attention_mask"][0].tolist() == [1] * 12


def test_padding_is_right_and_has_no_ids():
    b = encode_inputs(TOK, [0, 1], [[7], [7, 8, 9]])
    short = b["attention_mask"][0] == 0
    assert short.sum() == 6 and not short[:-6].any()
    assert (b["input_ids"][0][short] == TOK.pad_token_id).all()
    assert (b["user_ids"][0][short] == 0).all() and (b["item_ids"][0][short] == 0).all()


def test_embedding_is_token_plus_word_id_vectors():
    m = tiny_model()
    b = encode_inputs(TOK, [2], [[11, 4, 29]], append_mask=True)
    x = m.embed(b)
    expected = (m.bart.get_input_embeddings()(b["input_ids"]) + m.user_emb.weight[b["user_ids"]]
                + m.item_emb.weight[b["item_ids"]])
    assert torch.allclose(x, expected)
    # moving item 4's ID vector changes exactly the tokens of the word item_4
    with torch.no_grad():
        m.item_emb.weight[4] += 1.0
    changed = (m.embed(b) - x).abs().sum(-1)[0] > 0
    assert changed.tolist() == (b["item_ids"][0] == 4).tolist()
    assert changed.sum() == len(TOK.word_tokens("item_4"))
    # row 0 ("no ID") is zero, so special and masked tokens carry no ID information
    assert m.user_emb.weight[0].abs().sum() == 0 and m.item_emb.weight[0].abs().sum() == 0


# --- masking -----------------------------------------------------------------------------------

def test_pretraining_masks_one_whole_item_without_its_id():
    rng = np.random.default_rng(0)
    seqs = [np.array([5, 9, 13, 21, 8]), np.array([30, 2, 17])]
    for _ in range(20):
        b = pretrain_batch(TOK, [0, 1], seqs, rng, max_items=4, p_last=0.3)
        for row in range(2):
            ids = b["input_ids"][row]
            is_mask = ids == TOK.mask_token_id
            assert is_mask.sum() == 1
            assert b["item_ids"][row][is_mask].item() == 0 and b["user_ids"][row][is_mask].item() == 0
            label = b["labels"][row][b["labels"][row] != IGNORE].tolist()
            target = int(TOK.decode(label).split("_")[1])
            assert target in seqs[row].tolist()
            assert target not in b["item_ids"][row].tolist()       # the masked item is gone
            assert label[-1] == TOK.eos_token_id
            n_items = len(set(b["item_ids"][row].tolist()) - {0})
            assert n_items == min(4, len(seqs[row])) - 1            # window of max_items, one masked


def test_pretraining_mask_position_follows_p_last():
    seq = [np.arange(1, 11)]
    last = [pretrain_batch(TOK, [0], seq, np.random.default_rng(s), 10, p_last=1.0) for s in range(5)]
    for b in last:  # <mask> right before </s>: the window's last item
        assert b["input_ids"][0][-2] == TOK.mask_token_id
    rng = np.random.default_rng(1)
    positions = set()
    for _ in range(60):
        b = pretrain_batch(TOK, [0], seq, rng, 10, p_last=0.0)
        positions.add(int((b["input_ids"][0] == TOK.mask_token_id).nonzero()[0]))
    assert len(positions) > 5  # uniform over the window, not just the end


def test_next_item_batch_appends_mask_and_truncates():
    hist = [np.arange(1, 20)]
    b = next_item_batch(TOK, [0], hist, [20], max_items=5)
    items = [i for i in dict.fromkeys(b["item_ids"][0].tolist()) if i]
    assert items == [16, 17, 18, 19]                       # the 4 most recent + <mask> = 5 slots
    assert b["input_ids"][0][-2] == TOK.mask_token_id and b["input_ids"][0][-1] == TOK.eos_token_id
    assert TOK.decode(b["labels"][0][b["labels"][0] != IGNORE].tolist()) == "item_20"


def test_sample_next_item_never_uses_the_first_item_as_target():
    rng = np.random.default_rng(0)
    for _ in range(50):
        (h,), (t,) = sample_next_item([np.array([4, 5, 6])], rng)
        assert len(h) >= 1 and t == [4, 5, 6][len(h)]


# --- constrained decoding ----------------------------------------------------------------------

def test_trie_walks_only_to_real_items():
    items = [1, 7, 10, 12, 105, 1005, 1200]
    trie = item_trie(TOK, items)
    rng = np.random.default_rng(0)
    found = set()
    for _ in range(200):  # random walks through the allowed tokens always end at a real item
        path = []
        while True:
            options = trie.allowed(path)
            if options == [TOK.pad_token_id]:
                break
            path.append(int(rng.choice(options)))
        found.add(trie.item(path))
    assert found == set(items)
    assert trie.allowed([]) == TOK.word_tokens("item_1")[:1]
    assert trie.item(TOK.word_tokens("item_13") + [TOK.eos_token_id]) is None
    assert trie.allowed(TOK.word_tokens("item_99")) == [TOK.pad_token_id]  # off the trie


def test_beam_search_returns_only_valid_distinct_items():
    m = tiny_model(n_users=5, n_items=57)
    b = next_item_batch(TOK, [0, 1, 2, 3, 4], [[3, 9], [57], [1, 2, 3, 4], [40, 41], [10]], None, 6)
    for beams in (5, 20):
        ranked = m.predict(b, beams=beams)
        assert len(ranked) == 5
        for r in ranked:
            assert len(r) == beams and len(set(r)) == beams
            assert all(1 <= i <= 57 for i in r)


def test_beam_ranking_matches_exact_item_likelihoods():
    """With at least as many beams as items the search is exhaustive: the order must be the
    order of the teacher-forced log-likelihood of every item word (computed independently)."""
    n_items = 112  # items 100-112 take two digit pieces: words of different lengths
    m = tiny_model(n_users=2, n_items=n_items, seed=3)
    hist = [11, 3, 20]
    b = next_item_batch(TOK, [1], [hist], None, 6)
    ranked = m.predict(b, beams=n_items)[0]
    items = list(range(1, n_items + 1))
    scored = next_item_batch(TOK, [1] * n_items, [hist] * n_items, items, 6)
    nll = m.target_nll(scored).numpy()
    assert ranked == [items[i] for i in np.argsort(nll, kind="stable")]


# --- training ----------------------------------------------------------------------------------

def test_tiny_overfit_generates_each_users_next_item():
    torch.manual_seed(0)
    m = tiny_model(n_users=4, n_items=40, d_model=48, ffn=96).train()
    users = [0, 1, 2, 3]
    hists = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 5, 9]]
    targets = [33, 12, 7, 40]
    batch = next_item_batch(TOK, users, hists, targets, 6)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = m.loss(batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first
    top1 = [r[0] for r in m.eval().predict(batch, beams=5)]
    assert top1 == targets


def test_item_attention_aggregates_tokens_to_words():
    b = encode_inputs(TOK, [0], [[12, 5]], append_mask=True)  # 12 tokens: 3 special/user + 2 words
    T = b["input_ids"].shape[1]
    uniform = torch.full((1, 2, T, T), 1.0 / T)
    mat, labels = item_attention([uniform, uniform], b["item_ids"], b["input_ids"], TOK.mask_token_id)
    assert labels == ["item_12", "item_5", "<mask>"]
    # each word has 3 tokens as keys, <mask> one; rows average over the query tokens
    assert np.allclose(mat, np.array([[3, 3, 1]] * 3) / T)


def test_encode_targets_pads_with_ignore():
    t = encode_targets(TOK, [5, 1234])
    assert t.shape == (2, 5)
    assert t[0].tolist()[-1] == IGNORE and t[1].tolist()[-1] == TOK.eos_token_id


class StubBPE:
    """A stand-in for BART's tokenizer: one token per character, a leading space its own token."""

    bos_token_id, pad_token_id, eos_token_id, mask_token_id = 0, 1, 2, 3
    all_special_ids = [0, 1, 2, 3]

    def __len__(self):
        return 4 + 128

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [4 + ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - 4) for i in ids if i >= 4)

    def convert_ids_to_tokens(self, ids):
        return [chr(i - 4) if i >= 4 else f"<{i}>" for i in ids]


def test_pretrained_tokenizer_wrapper_keeps_words_aligned():
    from recutils.models.genrec import HFWordTokenizer

    tok = HFWordTokenizer(StubBPE())
    b = encode_inputs(tok, [6], [[12, 345]], append_mask=True)
    words = tok.decode(b["input_ids"][0].tolist())
    assert words == "user_6 item_12 item_345"                # later words carry a leading space
    assert "".join(tok.tokens(b["input_ids"][0].tolist())) == "<0>user_6 item_12 item_345<3><2>"
    ids = b["item_ids"][0].tolist()
    assert ids.count(12) == len(" item_12") and ids.count(345) == len(" item_345")
    assert b["user_ids"][0].tolist().count(7) == len("user_6")
    trie = item_trie(tok, [12, 345])
    assert trie.item(tok.word_tokens("item_345", first=True) + [tok.eos_token_id]) == 345


def test_paper_path_loads_a_pretrained_bart_and_its_bpe_from_a_folder(tmp_path, tiny):
    """SCALE="paper" names ``facebook/bart-base``: the same code path (AutoTokenizer, BPE words,
    ``from_pretrained``) on a tiny random BART saved from a config, with a byte-level BPE
    trained here on ID words (no network)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import BartConfig, BartForConditionalGeneration, BartTokenizerFast

    from recutils.pipelines.genrec import GenRecPipeline, Variant
    from recutils.training import TrainConfig

    words = [f"user_{u}" for u in range(tiny.n_users + 1)] + [
        f"item_{i}" for i in range(tiny.n_items + 1)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(words)] * 3, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok = BartTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", pad_token="<pad>",
                            eos_token="</s>", unk_token="<unk>", mask_token="<mask>")
    tok.save_pretrained(tmp_path)
    torch.manual_seed(0)
    cfg = BartConfig(vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1,
                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                     decoder_ffn_dim=32, max_position_embeddings=128, pad_token_id=1,
                     bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                     forced_bos_token_id=None, forced_eos_token_id=None)
    BartForConditionalGeneration(cfg).save_pretrained(tmp_path)

    config = GenRecConfig(backbone=str(tmp_path), max_items=5, beams=5)
    stage = TrainConfig(epochs=2, patience=2, lr=1e-2, batch_size=16, select="min",
                        warmup=0.05, schedule="linear", progress=False)
    pipe = GenRecPipeline(tiny, config, stage, stage, per_user=1)
    assert type(pipe.tokenizer).__name__ == "HFWordTokenizer"
    assert pipe.tokenizer.mask_token_id == tok.mask_token_id
    model, log = pipe.train(0, Variant("GenRec", True, 1))
    assert model.bart.config.d_model == 16
    assert min(e["valid"] for e in log["finetune"]) < log["before"]   # it learns something
    users = np.arange(4)
    ranked = pipe.recommend(model, users)
    assert all(len(r) == 5 == len(set(r)) and all(1 <= i <= tiny.n_items for i in r)
               for r in ranked)
