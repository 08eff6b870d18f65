import numpy as np
import pytest
import torch

from recutils.models import SASRec, SASRecConfig
from recutils.reproducibility import seed_everything
from recutils.training import (
    Callback,
    TrainConfig,
    fit,
    fit_sequential,
    resolve_device,
    sequence_scorer,
)


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

    hist = fit(model, lambda e: [torch.ones(4, 1)], TrainConfig(epochs=6, lr=0.1, patience=2, progress=False),
               valid_fn=valid, loss_fn=lambda m, b: m(b).pow(2).mean())
    assert len(hist.epochs) == 4 and hist.best_epoch == 1  # stopped 2 epochs after the best
    assert torch.equal(model.weight.detach(), snapshots[1])


def test_nothing_to_train_is_an_error():
    model = torch.nn.Linear(1, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        fit(model, lambda e: [], TrainConfig(epochs=1, progress=False), loss_fn=lambda m, b: b)


def test_same_seed_same_model(tiny):
    def run():
        seed_everything(7)
        m = SASRec(tiny.n_items, SASRecConfig(hidden=16, max_len=10))
        fit_sequential(m, tiny, TrainConfig(epochs=2, batch_size=4, progress=False), seed=7)
        return torch.cat([p.detach().flatten() for p in m.parameters()])
    assert torch.equal(run(), run())


def test_fit_sequential_selects_on_validation_only(tiny, monkeypatch):
    seen_stages = []
    orig = tiny.targets

    def spy(stage):
        seen_stages.append(stage)
        return orig(stage)
    monkeypatch.setattr(tiny, "targets", spy)
    m = SASRec(tiny.n_items, SASRecConfig(hidden=16, max_len=10))
    hist = fit_sequential(m, tiny, TrainConfig(epochs=2, batch_size=4, progress=False))
    assert set(seen_stages) == {"valid"} and len(hist.epochs) == 2
    scorer = sequence_scorer(m, tiny, "test")
    assert scorer(np.array([0, 1])).shape == (2, tiny.n_items + 1)


def _quadratic(target: float = 3.0):
    """A one-weight model whose loss (w - target)^2 an optimiser can drive to 0."""
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    return model, (lambda m, b: (m.weight.sum() - target) ** 2)


def test_lower_is_better_selection_and_epoch_zero_row():
    model, loss_fn = _quadratic()
    values = iter([1.0, 0.5, 2.0, 0.7])  # before, epoch 0, 1, 2
    weights = []

    def valid(m):
        weights.append(m.weight.item())
        return next(values)

    cfg = TrainConfig(epochs=3, lr=0.5, select="min", eval_before=True, progress=False)
    hist = fit(model, lambda e: [None], cfg, loss_fn=loss_fn, valid_fn=valid)
    assert hist.before == {"valid": 1.0} and hist.best_epoch == 0 and hist.best_valid == 0.5
    assert model.weight.item() == weights[1]  # the weights seen when epoch 0 was validated


def test_untrained_model_is_kept_when_training_never_helps():
    model, loss_fn = _quadratic()
    values = iter([0.1, 0.9, 0.8])
    cfg = TrainConfig(epochs=2, lr=0.5, select="min", eval_before=True, patience=5, progress=False)
    hist = fit(model, lambda e: [None], cfg, loss_fn=loss_fn, valid_fn=lambda m: next(values))
    assert hist.best_epoch == -1 and hist.best_valid == 0.1
    assert model.weight.item() == 0.0  # training undone


def test_linear_schedule_decays_the_learning_rate_to_zero():
    model, loss_fn = _quadratic()
    steps = []

    def loss_spy(m, b):
        steps.append(m.weight.item())
        return loss_fn(m, b)

    cfg = TrainConfig(epochs=2, lr=0.1, schedule="linear", log_steps=True, progress=False)
    hist = fit(model, lambda e: [None, None], cfg, loss_fn=loss_spy)
    # AdamW's first steps move a weight by about lr * sign(grad): 0.1, then 0.075, 0.05, 0.025
    moves = np.diff(steps + [model.weight.item()])
    assert np.allclose(moves, [0.1, 0.075, 0.05, 0.025], atol=2e-3)
    assert len(hist.steps) == 4 and hist.steps[0] == 9.0


def test_dict_losses_are_logged_per_epoch_and_callbacks_run():
    model, loss_fn = _quadratic()
    seen = []

    class Count(Callback):
        def on_step(self, m, step, loss):
            seen.append(("step", step))

        def on_epoch(self, m, row):
            seen.append(("epoch", row["epoch"]))
            row["extra"] = 1.0

    def parts(m, b):
        loss = loss_fn(m, b)
        return {"loss": loss, "half": loss.detach() / 2}

    hist = fit(model, lambda e: [None, None], TrainConfig(epochs=2, lr=0.1, progress=False),
               loss_fn=parts, callbacks=[Count()])
    assert seen == [("step", 0), ("step", 1), ("epoch", 0), ("step", 2), ("step", 3), ("epoch", 1)]
    row = hist.epochs[0]
    assert row["half"] == pytest.approx(row["loss"] / 2) and row["extra"] == 1.0


def test_train_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="select"):
        TrainConfig(select="best")
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="cosine")


def test_warmup_then_linear_decay_and_warmup_then_constant():
    # 2 epochs x 5 steps, 20% warm-up = 2 steps: factors 1/2, 1, then (10 - s) / 8 for s >= 2
    model, loss_fn = _quadratic()
    cfg = TrainConfig(epochs=2, lr=0.1, schedule="linear", warmup=0.2, log_steps=True,
                      progress=False)
    hist = fit(model, lambda e: [None] * 5, cfg, loss_fn=loss_fn)
    expected = [0.5, 1.0] + [(10 - s) / 8 for s in range(2, 10)]
    assert np.allclose(hist.lrs, [0.1 * f for f in expected])
    # the first AdamW step moves the weight by about the LR it used: half the peak
    model, loss_fn = _quadratic()
    seen = []
    fit(model, lambda e: [None] * 5, TrainConfig(epochs=2, lr=0.1, warmup=0.2, log_steps=True,
                                                 progress=False),
        loss_fn=lambda m, b: (seen.append(m.weight.item()), loss_fn(m, b))[1])
    assert abs(seen[1] - seen[0]) == pytest.approx(0.05, abs=2e-3)


def test_warmup_with_constant_schedule_stays_at_the_peak():
    model, loss_fn = _quadratic()
    cfg = TrainConfig(epochs=1, lr=0.2, warmup=0.5, log_steps=True, progress=False)
    hist = fit(model, lambda e: [None] * 4, cfg, loss_fn=loss_fn)
    assert np.allclose(hist.lrs, [0.1, 0.2, 0.2, 0.2])
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(warmup=1.0)
