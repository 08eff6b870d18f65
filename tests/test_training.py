import numpy as np
import pytest
import torch

from recutils.models import SASRec
from recutils.reproducibility import seed_everything
from recutils.training import fit, fit_sequential, resolve_device, sequence_scorer


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")


def test_early_stopping_restores_best_weights():
    model = torch.nn.Linear(1, 1)
    scores = iter([0.1, 0.5, 0.3, 0.2, 0.1, 0.9])
    snapshots = []

    def valid(m):
        snapshots.append(m.weight.detach().clone())
        return next(scores)

    hist = fit(model, lambda e: [torch.ones(4, 1)], epochs=6, lr=0.1, valid_fn=valid, patience=2,
               loss_fn=lambda m, b: m(b).pow(2).mean(), progress=False)
    assert len(hist.epochs) == 4 and hist.best_epoch == 1  # stopped 2 epochs after the best
    assert torch.equal(model.weight.detach(), snapshots[1])


def test_nothing_to_train_is_an_error():
    model = torch.nn.Linear(1, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        fit(model, lambda e: [], epochs=1, loss_fn=lambda m, b: b, progress=False)


def test_same_seed_same_model(tiny):
    def run():
        seed_everything(7)
        m = SASRec(tiny.n_items, hidden=16, max_len=10)
        fit_sequential(m, tiny, epochs=2, batch_size=4, seed=7, progress=False)
        return torch.cat([p.detach().flatten() for p in m.parameters()])
    assert torch.equal(run(), run())


def test_fit_sequential_selects_on_validation_only(tiny, monkeypatch):
    seen_stages = []
    orig = tiny.targets

    def spy(stage):
        seen_stages.append(stage)
        return orig(stage)
    monkeypatch.setattr(tiny, "targets", spy)
    m = SASRec(tiny.n_items, hidden=16, max_len=10)
    hist = fit_sequential(m, tiny, epochs=2, batch_size=4, progress=False)
    assert set(seen_stages) == {"valid"} and len(hist.epochs) == 2
    scorer = sequence_scorer(m, tiny, "test")
    assert scorer(np.array([0, 1])).shape == (2, tiny.n_items + 1)
