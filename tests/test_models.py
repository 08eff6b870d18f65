import numpy as np
import pytest
import torch

from recutils.models import (
    BERT4Rec,
    BERT4RecConfig,
    ItemEmbedding,
    Popularity,
    SASRec,
    SASRecConfig,
)
from recutils.models.transformer import attention_mask
from recutils.training import TrainConfig, fit, training_windows


def test_sasrec_shapes_and_causality():
    torch.manual_seed(0)
    m = SASRec(20, SASRecConfig(hidden=16, n_heads=2, max_len=6, dropout=0.0)).eval()
    seq = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7]])
    h = m(seq)
    assert h.shape == (2, 6, 16) and m.predict(seq).shape == (2, 21)
    changed = seq.clone()
    changed[:, -1] = 9  # changing the last item must not change earlier positions
    assert torch.allclose(m(changed)[:, :-1], h[:, :-1], atol=1e-6)
    assert not torch.allclose(m(changed)[:, -1], h[:, -1])


def test_sasrec_ignores_padding_length():
    torch.manual_seed(0)
    m = SASRec(20, SASRecConfig(hidden=16, max_len=8, dropout=0.0)).eval()
    a = m.predict(torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5]]))
    b = m.predict(torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0, 3, 4, 5]]))  # longer input, cut to max_len
    assert torch.allclose(a, b, atol=1e-6)
    _, maps = m(torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5]]), return_attention=True)
    assert maps[0].shape == (1, 2, 8, 8)
    assert torch.allclose(maps[0][0, :, -1, :5], torch.zeros(2, 5))  # no attention to padding


def test_attention_mask_rows_never_empty():
    allowed = attention_mask(torch.tensor([[0, 0, 1, 2]]), causal=True)[0, 0]
    assert allowed.any(1).all()
    assert allowed[3].tolist() == [False, False, True, True]


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_sasrec_learns_a_deterministic_successor(loss):
    """On sequences where item i is always followed by i + 1 the loss drops and HR@1 is high."""
    torch.manual_seed(0)
    n = 30
    seqs = [np.arange(s, s + 12) % n + 1 for s in range(n)] * 4
    windows = training_windows(seqs, 9)
    m = SASRec(n, SASRecConfig(hidden=32, max_len=8, dropout=0.1, loss=loss))
    hist = fit(m, lambda e: (windows[i:i + 32] for i in range(0, len(windows), 32)),
               TrainConfig(epochs=40, lr=5e-3, progress=False))
    losses = hist.column("loss")
    assert losses[-1] < 0.5 * losses[0]
    seq = torch.tensor([[5, 6, 7, 8]])
    assert m.predict(seq)[0, 1:].argmax().item() + 1 == 9


def test_bert4rec_masks_and_learns():
    torch.manual_seed(0)
    n = 30
    seqs = [np.arange(s, s + 12) % n + 1 for s in range(n)] * 4
    windows = training_windows(seqs, 8)
    m = BERT4Rec(n, BERT4RecConfig(hidden=32, max_len=8, mask_prob=0.3, dropout=0.0))
    assert m.items.weight.shape == (n + 2, 32)  # padding + items + [MASK]
    hist = fit(m, lambda e: (windows[i:i + 32] for i in range(0, len(windows), 32)),
               TrainConfig(epochs=150, lr=3e-3, progress=False))
    assert hist.column("loss")[-1] < 0.5 * hist.column("loss")[0]
    scores = m.predict(torch.tensor([[0, 3, 4, 5, 6]]))
    assert scores.shape == (1, n + 1) and scores[0, 1:].argmax().item() + 1 == 7


def test_item_init_frozen_trainable_projected():
    init = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)  # no padding row
    frozen = ItemEmbedding(10, 8, init=init, freeze=True)
    assert not frozen.table.requires_grad
    assert torch.allclose(frozen.weight[1:], torch.as_tensor(init)) and frozen.weight[0].abs().sum() == 0
    trainable = ItemEmbedding(10, 8, init=init, freeze=False)
    assert trainable.table.requires_grad
    projected = ItemEmbedding(10, 4, init=init, freeze=True, extra_rows=1)
    assert projected.weight.shape == (12, 4) and projected.proj is not None
    assert projected.extra.requires_grad  # [MASK] row stays trainable and random
    with pytest.raises(ValueError, match="rows"):
        ItemEmbedding(10, 8, init=init[:5])


def test_frozen_init_survives_training():
    torch.manual_seed(0)
    init = torch.randn(21, 16)
    init[0] = 0
    m = SASRec(20, SASRecConfig(hidden=16, max_len=5), item_init=init, freeze_init=True)
    windows = training_windows([np.arange(1, 20)] * 4, 6)
    fit(m, lambda e: [windows], TrainConfig(epochs=3, lr=1e-2, progress=False))
    assert torch.equal(m.items.table.detach(), init)
    m2 = BERT4Rec(20, BERT4RecConfig(hidden=16, max_len=5), item_init=init, freeze_init=False)
    fit(m2, lambda e: [windows], TrainConfig(epochs=3, lr=1e-2, progress=False))
    assert not torch.equal(m2.items.table.detach(), init)


def test_popularity_scores_training_counts(tiny):
    pop = Popularity(tiny)
    s = pop.predict(np.arange(3))
    assert s.shape == (3, tiny.n_items + 1)
    assert torch.equal(s[0], torch.as_tensor(tiny.item_counts(), dtype=torch.float32))


def test_random_scores_are_per_user_and_at_chance(tiny):
    from recutils.evaluation import Evaluator
    from recutils.models import RandomScores

    r = RandomScores(tiny.n_items, seed=3)
    a, b = r.predict(np.array([0, 1, 2])), r.predict(np.array([2, 0]))
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])   # a user's scores: the same
    assert not torch.equal(a[0], a[1])                           # in any batch, per user
    assert not torch.equal(a, RandomScores(tiny.n_items, seed=4).predict(np.array([0, 1, 2])))
    # over many users a random ranking hits the target at about 10 / n_items of them at 10
    ev = Evaluator(tiny, "test", protocols=("full",), ks=(10,))
    hits = np.mean([ev.evaluate(RandomScores(tiny.n_items, seed=s)).metrics()["full/HR@10"]
                    for s in range(20)])
    assert abs(hits - 10 / tiny.n_items) < 0.03
