"""RecFormer-style model: token/role/item-position alignment, attention extraction on a tiny
random BERT (checked against a hand computation), divergences, layer freezing, PCA init,
a tiny overfit, and the checkpoint + command line that redraw the attention maps."""

import math

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from recutils import recformer_cli
from recutils.analysis import recformer_attention as ra
from recutils.models import recformer as rf
from recutils.models.embedding import pca_init

CLS_ID, PAD_ID, MASK_ID = 1, 0, 2


class WordTokenizer:
    """One id per whitespace-separated word (ids from 3 up), the HF call signature RecFormer uses."""

    def __init__(self):
        self.vocab = {}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab.setdefault(w, 3 + len(self.vocab)) for w in text.split()]}


def tiny_bert(layers=3, heads=2, hidden=16, vocab=64, seed=0, init=0.02):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=32, max_position_embeddings=128, attn_implementation="eager",
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=init)
    return BertModel(cfg, add_pooling_layer=False).eval()


ATTRS = [[], [("title", "a b"), ("genre", "x")], [("title", "c"), ("genre", "y z")], [("title", "d e f")]]


def test_tokenize_items_roles_and_truncation():
    tok = WordTokenizer()
    items = rf.tokenize_items(tok, ATTRS, max_tokens=4)
    assert items[0] == ([], [])
    ids, roles = items[1]
    assert roles == [rf.KEY, rf.VALUE, rf.VALUE, rf.KEY]  # "title a b genre" cut at 4 (x dropped)
    assert ids[0] == tok.vocab["title"] and ids[3] == tok.vocab["genre"]
    assert items[3][1] == [rf.KEY, rf.VALUE, rf.VALUE, rf.VALUE]


def test_sequence_batch_puts_the_most_recent_item_first():
    items = rf.tokenize_items(WordTokenizer(), ATTRS, max_tokens=8)
    b = rf.sequence_batch(items, [np.array([1, 2, 3]), np.array([2])], CLS_ID, PAD_ID, max_items=2)
    # user 0 keeps its last two items, 3 (newest) then 2; user 1 only item 2, then padding
    len3, len2 = len(items[3][0]), len(items[2][0])
    assert b["input_ids"].shape == (2, 1 + len3 + len2)
    assert b["input_ids"][0].tolist() == [CLS_ID] + items[3][0] + items[2][0]
    assert b["item_positions"][0].tolist() == [0] + [1] * len3 + [2] * len2
    assert b["roles"][0].tolist() == [rf.CLS] + items[3][1] + items[2][1]
    n1 = 1 + len2
    assert b["attention_mask"][1].tolist() == [1] * n1 + [0] * (b["input_ids"].shape[1] - n1)
    assert (b["roles"][1, n1:] == rf.PAD).all() and (b["item_positions"][1, n1:] == 0).all()
    assert (b["input_ids"][1, n1:] == PAD_ID).all()
    single = rf.item_batch(items, [3], CLS_ID, PAD_ID)
    assert single["item_positions"][0].tolist() == [0] + [1] * len3


def test_untrained_model_is_the_backbone_and_extra_embeddings_matter_after_training():
    bert = tiny_bert()
    model = rf.RecFormer(bert, rf.RecFormerConfig(max_items=4)).eval()
    items = rf.tokenize_items(WordTokenizer(), ATTRS, 8)
    b = rf.sequence_batch(items, [np.array([1, 2, 3])], CLS_ID, PAD_ID, 4)
    with torch.no_grad():
        ref = bert(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        assert torch.allclose(model(b), ref, atol=1e-6)
        model.item_positions.weight[2] += torch.randn(16)  # (a constant shift would vanish in LayerNorm)
        assert not torch.allclose(model.encode(b), ref[:, 0], atol=1e-4)


@torch.no_grad()
def cls_row_by_hand(model, b, query, key):
    """Layer 0's [CLS] attention [B, heads, T]: embeddings -> q, k -> masked softmax."""
    bb = model.backbone
    x = (bb.embeddings.word_embeddings(b["input_ids"]) + model.roles(b["roles"])
         + model.item_positions(b["item_positions"]))
    h = bb.embeddings(inputs_embeds=x)
    heads = bb.config.num_attention_heads
    d = bb.config.hidden_size // heads
    q = query(h)[:, 0].view(len(h), heads, d)                      # [B, heads, d]
    k = key(h).view(len(h), -1, heads, d).transpose(1, 2)        # [B, heads, T, d]
    logits = (k @ q[..., None]).squeeze(-1) / math.sqrt(d)
    logits = logits.masked_fill(~b["attention_mask"].bool()[:, None], float("-inf"))
    return logits.softmax(-1)


def test_cls_attention_matches_a_hand_computation():
    bert = tiny_bert(layers=2, heads=2, hidden=8)
    bert.set_attn_implementation("sdpa")
    model = rf.RecFormer(bert, rf.RecFormerConfig(max_items=4))
    with torch.no_grad():
        model.roles.weight.normal_(0, 0.5)
        model.item_positions.weight.normal_(0, 0.5)
    items = rf.tokenize_items(WordTokenizer(), ATTRS, 8)
    b = rf.sequence_batch(items, [np.array([1, 2, 3]), np.array([1])], CLS_ID, PAD_ID, 4)
    att = ra.cls_attention(model, b)
    assert att.shape == (2, 2, 2, b["input_ids"].shape[1])
    assert bert.config._attn_implementation == "sdpa", "the backbone's attention is restored"
    real = b["attention_mask"].bool()
    assert torch.allclose(att.sum(-1), torch.ones(2, 2, 2), atol=1e-5)
    assert (att[1][:, :, ~real[1]] == 0).all(), "padding gets no attention"
    # layer 0 by hand: embeddings -> q, k -> masked softmax of the [CLS] row
    sa = bert.encoder.layer[0].attention.self
    assert torch.allclose(att[:, 0], cls_row_by_hand(model, b, sa.query, sa.key), atol=1e-5)


def test_attention_per_item_sums_each_items_tokens():
    att = torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25, 0.0]])           # [B=1, T=6]
    pos = torch.tensor([[0, 1, 1, 2, 2, 0]])
    out = ra.attention_per_item(att, pos, max_items=3)
    assert torch.allclose(out, torch.tensor([[0.1, 0.5, 0.4, 0.0]]))
    many = ra.attention_per_item(att[:, None, None].expand(1, 2, 3, 6), pos, 3)  # [B, L, H, T]
    assert many.shape == (1, 2, 3, 4) and torch.allclose(many[0, 1, 2], out[0])


def test_js_divergence_and_divergence_matrix():
    p = torch.tensor([0.5, 0.5, 0.0])
    q = torch.tensor([0.0, 0.0, 1.0])
    assert ra.js_divergence(p, p).item() == pytest.approx(0.0, abs=1e-9)
    assert ra.js_divergence(p, q).item() == pytest.approx(math.log(2), abs=1e-6)
    r = torch.tensor([0.25, 0.25, 0.5])
    # independent: scipy-free closed form with natural logs
    m = (p + r) / 2
    expected = 0.5 * sum(a * math.log(a / c) for a, c in zip(p.tolist(), m.tolist()) if a > 0) \
        + 0.5 * sum(a * math.log(a / c) for a, c in zip(r.tolist(), m.tolist()) if a > 0)
    assert ra.js_divergence(p, r).item() == pytest.approx(expected, rel=1e-5)
    dists = torch.stack([p, q, r])[None].expand(4, 3, 3)
    mat = ra.divergence_matrix(dists)
    assert mat.shape == (3, 3) and torch.allclose(mat, mat.T) and torch.allclose(mat.diagonal(), torch.zeros(3), atol=1e-9)
    within, between = ra.strata_contrast(np.array([[0, 1, 5, 5], [1, 0, 5, 5], [5, 5, 0, 2], [5, 5, 2, 0]]),
                                         [[0, 1], [2, 3]])
    assert (within, between) == (1.5, 5.0)


def test_contrastive_loss_by_hand_and_duplicate_targets_are_not_negatives():
    torch.manual_seed(0)
    users, items = torch.randn(3, 4), torch.randn(3, 4)
    t = 0.5
    loss = rf.contrastive_loss(users, items, torch.tensor([5, 6, 7]), t)
    sims = torch.nn.functional.cosine_similarity(users[:, None], items[None], dim=-1) / t
    manual = -(sims.diagonal() - sims.logsumexp(1)).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    dup = rf.contrastive_loss(users, items, torch.tensor([5, 5, 7]), t)
    row0 = -(sims[0, 0] - torch.logsumexp(sims[0, [0, 2]], 0))
    row1 = -(sims[1, 1] - torch.logsumexp(sims[1, [1, 2]], 0))
    row2 = -(sims[2, 2] - sims[2].logsumexp(0))
    assert dup.item() == pytest.approx(((row0 + row1 + row2) / 3).item(), rel=1e-5)


def test_mask_tokens_only_masks_values_and_pretrain_loss_is_finite():
    model = rf.RecFormer(tiny_bert(), rf.RecFormerConfig(max_items=4))
    items = rf.tokenize_items(WordTokenizer(), ATTRS, 8)
    hist = rf.sequence_batch(items, [np.array([1, 2]), np.array([2, 3])], CLS_ID, PAD_ID, 4)
    masked, labels = rf.mask_tokens(hist, MASK_ID, prob=1.0)
    values = hist["roles"] == rf.VALUE
    assert (masked["input_ids"][values] == MASK_ID).all() and (masked["input_ids"][~values] == hist["input_ids"][~values]).all()
    assert (labels[values] == hist["input_ids"][values]).all() and (labels[~values] == -100).all()
    batch = {"history": hist, "item": rf.item_batch(items, [3, 1], CLS_ID, PAD_ID), "target": torch.tensor([3, 1])}
    loss = rf.pretrain_loss(model, batch, MASK_ID)
    loss.backward()
    assert torch.isfinite(loss) and model.mlm_bias.grad is not None and model.roles.weight.grad is not None


def test_set_trainable_layers():
    model = rf.RecFormer(tiny_bert(layers=3), rf.RecFormerConfig(max_items=4))
    params = rf.set_trainable_layers(model, [2])
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("backbone.encoder.layer.2.", "roles.", "item_positions.")) for n in names)
    assert len(params) == len([p for p in model.parameters() if p.requires_grad])
    assert rf.set_trainable_layers(model, None) == [] and not any(p.requires_grad for p in model.parameters())
    rf.set_trainable_layers(model, "all")
    assert model.backbone.embeddings.word_embeddings.weight.requires_grad and not model.mlm_bias.requires_grad
    with pytest.raises(ValueError, match="do not exist"):
        rf.set_trainable_layers(model, [3])


def test_pca_init_matches_numpy():
    rng = np.random.default_rng(0)
    vectors = np.vstack([np.zeros(6), rng.normal(size=(20, 6)) @ np.diag([5, 3, 1, 0.5, 0.1, 0.01])])
    table = pca_init(torch.as_tensor(vectors), 2, std=0.02)
    assert table.shape == (21, 2) and (table[0] == 0).all()
    assert table[1:].std() == pytest.approx(0.02, rel=1e-4)
    x = vectors[1:] - vectors[1:].mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    z = x @ vt[:2].T
    z = z / z.std() * 0.02
    for c in range(2):  # components agree up to sign
        assert np.allclose(np.abs(table[1:, c]), np.abs(z[:, c]), atol=1e-6)
    with pytest.raises(ValueError):
        pca_init(vectors, 7)
    full = pca_init(vectors, None, std=0.5)   # no reduction: centred and scaled only
    assert full.shape == (21, 6) and (full[0] == 0).all()
    assert np.allclose(full[1:], x / x.std() * 0.5, atol=1e-6)


def test_finetuning_learns_a_deterministic_next_item():
    """Toy catalogue of 6 items; the next item is always (last + 1) mod 6: a few steps get it right."""
    tok = WordTokenizer()
    words = ["red", "green", "blue", "cyan", "pink", "gray"]
    attrs = [[]] + [[("color", w)] for w in words]
    items = rf.tokenize_items(tok, attrs, 4)
    # a random BERT with the usual 0.02 init gives every item the same [CLS]; start wider
    model = rf.RecFormer(tiny_bert(layers=2, hidden=32, seed=1, init=0.3), rf.RecFormerConfig(max_items=3, temperature=0.1))
    seqs = [np.array([(s + k) % 6 + 1 for k in range(4)]) for s in range(6)]
    hist = [s[:-1] for s in seqs]
    target = torch.tensor([int(s[-1]) for s in seqs])
    batch = {"history": rf.sequence_batch(items, hist, CLS_ID, PAD_ID, 3), "target": target}
    opt = torch.optim.AdamW(rf.set_trainable_layers(model, "all"), lr=1e-3)
    model.train()
    first = None
    for _ in range(100):
        table = rf.encode_items(model, items, CLS_ID, PAD_ID)  # re-encoded every step (stage 1 per epoch)
        loss = rf.finetune_loss(model, batch, table)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first / 4
    table = rf.encode_items(model, items, CLS_ID, PAD_ID)
    score = rf.RecFormerRecommender(model, hist, table, items, CLS_ID, PAD_ID).predict(np.arange(6))
    score[:, 0] = -1e9
    assert (score.argmax(1) == target).float().mean() >= 5 / 6


def test_checkpoint_loads_with_weights_only_and_the_cli_draws_maps(tmp_path):
    pytest.importorskip("recbole")
    from transformers import AutoTokenizer

    from recutils.lm import minilm_path
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=128)
    backbone_dir = tmp_path / "tiny-bert"
    BertModel(cfg, add_pooling_layer=False).save_pretrained(backbone_dir)
    tok.save_pretrained(backbone_dir)
    from recutils.lm import load_text_encoder
    bert, _ = load_text_encoder(str(backbone_dir))
    model = rf.RecFormer(bert, rf.RecFormerConfig(max_items=5))
    with torch.no_grad():
        model.roles.weight.normal_()
    path = rf.save_checkpoint(model, tmp_path / "build" / "ckpt.pt", backbone=str(backbone_dir), dataset="ml-100k",
                              min_user=0, min_item=0, max_len=20, fields=["title", "genres"], item_tokens=8,
                              label="tuned")
    raw = torch.load(path, weights_only=True)
    assert raw["meta"]["label"] == "tuned"
    loaded, _, meta = rf.load_checkpoint(path)
    assert torch.equal(loaded.roles.weight, model.roles.weight) and meta["item_tokens"] == 8
    assert loaded.config == model.config, "the config round-trips through weights_only loading"
    out = tmp_path / "maps.png"
    assert recformer_cli.main([str(path), "--user", "7", "--out", str(out)]) == 0
    assert out.exists() and out.stat().st_size > 1000


def test_longformer_backbone_gives_cls_global_attention():
    """At SCALE=paper the backbone is Longformer: [CLS] must see tokens beyond its local window."""
    from transformers import LongformerConfig, LongformerModel
    torch.manual_seed(0)
    cfg = LongformerConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=130, attention_window=[4],
                           pad_token_id=0, initializer_range=0.3)
    model = rf.RecFormer(LongformerModel(cfg, add_pooling_layer=False).eval(), rf.RecFormerConfig(max_items=4))
    items = [([], []), ([5, 6, 7], [1, 2, 2]), ([8, 9, 10], [1, 2, 2]), ([11, 12, 13], [1, 2, 2])]
    b = rf.sequence_batch(items, [np.array([1, 2, 3])], CLS_ID, PAD_ID, 4)
    far = b["input_ids"].clone()
    far[0, -1] = 20      # the oldest item's last token, far outside the +-2 tokens [CLS] would see locally
    with torch.no_grad():
        cls, cls_far = model.encode(b), model.encode({**b, "input_ids": far})
    assert cls.shape == (1, 16) and torch.isfinite(cls).all()
    assert not torch.allclose(cls, cls_far, atol=1e-5)


def tiny_longformer(layers=2, window=4, hidden=16, heads=2, vocab=64, seed=0):
    """A random Longformer built from a config (no download); ``window`` tokens of local attention."""
    from transformers import LongformerConfig, LongformerModel
    torch.manual_seed(seed)
    cfg = LongformerConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=2 * hidden,
                           max_position_embeddings=130, attention_window=[window] * layers,
                           pad_token_id=0, initializer_range=0.3)
    return LongformerModel(cfg, add_pooling_layer=False).eval()


def test_longformer_cls_attention_is_unbanded_to_every_token():
    """Longformer's banded maps: [CLS]'s row over all T tokens, as a hand computation gives it."""
    lf = tiny_longformer(layers=2, window=4)
    model = rf.RecFormer(lf, rf.RecFormerConfig(max_items=4)).eval()  # no dropout by hand below
    items = rf.tokenize_items(WordTokenizer(), ATTRS, 8)
    b = rf.sequence_batch(items, [np.array([1, 2, 3]), np.array([1])], CLS_ID, PAD_ID, 4)
    length = b["input_ids"].shape[1]
    assert length > 2 + 4, "the sequence must be longer than [CLS]'s local window"
    att = ra.cls_attention(model, b)
    assert att.shape == (2, 2, 2, length)              # [B, layers, heads, T], like BERT's
    real = b["attention_mask"].bool()
    assert torch.allclose(att.sum(-1), torch.ones(2, 2, 2), atol=1e-5)
    assert (att[1][:, :, ~real[1]] == 0).all(), "padding gets no attention"
    assert (att[0, :, :, 4:][:, :, real[0, 4:]] > 0).all(), "tokens beyond the window are seen"
    # layer 0 by hand: [CLS] uses the global projections over every real token
    sa = lf.encoder.layer[0].attention.self
    assert torch.allclose(att[:, 0], cls_row_by_hand(model, b, sa.query_global, sa.key_global),
                          atol=1e-5)
    # the figure helpers take it as they take BERT's
    maps, starts = ra.instance_maps(model, items, np.array([1, 2, 3]), CLS_ID, PAD_ID, 3)
    assert maps.shape[:2] == (2, 2) and starts == sorted(starts) and len(starts) == 3


def test_cli_draws_longformer_maps_and_names_a_missing_checkpoint(tmp_path, capsys):
    pytest.importorskip("recbole")
    from transformers import AutoTokenizer

    from recutils.lm import load_text_encoder, minilm_path
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    backbone_dir = tmp_path / "tiny-longformer"
    tiny_longformer(layers=2, window=8, vocab=tok.vocab_size).save_pretrained(backbone_dir)
    tok.save_pretrained(backbone_dir)
    lf, _ = load_text_encoder(str(backbone_dir), output_attentions=True)
    assert lf.config.model_type == "longformer"
    model = rf.RecFormer(lf, rf.RecFormerConfig(max_items=5))
    path = rf.save_checkpoint(model, tmp_path / "ckpt.pt", backbone=str(backbone_dir),
                              dataset="ml-100k", min_user=0, min_item=0, max_len=20,
                              fields=["title", "genres"], item_tokens=8, label="tuned")
    out = tmp_path / "maps.png"
    assert recformer_cli.main([str(path), "--user", "7", "--out", str(out)]) == 0
    assert out.exists() and out.stat().st_size > 1000
    assert recformer_cli.main([str(tmp_path / "nope.pt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no RecFormer checkpoint" in err and "make notebook NB=05" in err


def test_recformer_config_validates_and_chooses_the_item_vector():
    with pytest.raises(ValueError, match="pooling"):
        rf.RecFormerConfig(pooling="max")
    assert rf.RecFormerConfig(fields=["title"]).fields == ("title",)   # hashable, frozen
    bert = tiny_bert()
    items = rf.tokenize_items(WordTokenizer(), ATTRS, 8)
    cls_model = rf.RecFormer(bert, rf.RecFormerConfig(max_items=4))
    mean_model = rf.RecFormer(bert, rf.RecFormerConfig(max_items=4, pooling="mean"))
    t_cls = rf.encode_items(cls_model, items, CLS_ID, PAD_ID)
    t_mean = rf.encode_items(mean_model, items, CLS_ID, PAD_ID)
    assert torch.allclose(t_mean, rf.encode_items(cls_model, items, CLS_ID, PAD_ID, pooling="mean"))
    with torch.no_grad():   # item 3 alone: the mean of its [CLS] + token outputs, vs the [CLS] output
        out = cls_model(rf.item_batch(items, [3], CLS_ID, PAD_ID))[0]
    assert torch.allclose(t_mean[3], out.mean(0), atol=1e-6) and torch.allclose(t_cls[3], out[0], atol=1e-6)
    assert (t_cls[0] == 0).all() and (t_mean[0] == 0).all()
