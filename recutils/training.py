"""Device choice, and one small training loop for every model of the course (seeding: reproducibility.py).

``fit`` trains any module with a ``loss(batch)`` method (or a given loss function):
AdamW with an optional linear warm-up and linear decay, progress (recutils.progress: bar,
one line per stage, or off), optional gradient clipping, mixed precision on CUDA only, early
stopping on a validation score with patience, best weights restored at the end. It never
sees the test split: selection is on whatever ``valid_fn`` returns (the course passes
validation NDCG@10).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from recutils.batching import batch_indices, pad_sequences, to_device
from recutils.data.sequences import SequenceData
from recutils.evaluation import Evaluator
from recutils.progress import Progress


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; any other string is passed to torch."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def training_windows(seqs: list[np.ndarray], length: int) -> torch.Tensor:
    """Cut sequences into left-padded windows of ``length`` items covering every transition once.

    Windows overlap by one item, so each item except a sequence's first is a prediction
    target exactly once: a user with 120 training items and ``length=51`` gives windows
    ending at items 120, 70 and 20.
    """
    pieces = []
    for s in seqs:
        if len(s) < 2:
            continue
        end = len(s)
        while end > 1:
            pieces.append(s[max(0, end - length):end])
            end -= length - 1
    return pad_sequences(pieces, length)


@dataclass
class TrainConfig:
    """How :func:`fit` trains: the optimiser, the length of the run, and model selection."""

    epochs: int = 10                # passes over the training batches (an upper bound with patience)
    lr: float = 1e-3                # AdamW learning rate (the peak one with schedule="linear")
    weight_decay: float = 0.0       # AdamW decoupled weight decay
    batch_size: int = 128           # examples per step, read by the batch factories (fit_sequential)
    patience: int = 5               # epochs without a better validation score before stopping
    select: str = "max"             # "max": higher validation is better (NDCG); "min": lower (a loss)
    schedule: str = "constant"      # "constant" LR, or "linear": decays to 0 over all steps of the run
    warmup: float = 0.0             # share of all steps whose LR rises linearly from lr/w_steps to lr
    grad_clip: float | None = None  # maximum global gradient norm; None: no clipping
    eval_before: bool = False       # validate the untrained model too; if it stays best, it is kept
    log_steps: bool = False         # keep every step's loss in History.steps
    amp: bool = True                # bf16 autocast, on CUDA only
    progress: bool = True           # a progress bar over epochs (steps with a schedule or warm-up)

    def __post_init__(self) -> None:
        if self.select not in ("max", "min"):
            raise ValueError(f"select must be 'max' or 'min', got {self.select!r}")
        if self.schedule not in ("constant", "linear"):
            raise ValueError(f"schedule must be 'constant' or 'linear', got {self.schedule!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup is a share of the steps in [0, 1), got {self.warmup!r}")
        if self.epochs < 0 or self.patience < 1 or self.batch_size < 1:
            raise ValueError(f"need epochs >= 0, patience >= 1, batch_size >= 1; got {self}")


@dataclass
class History:
    """What happened during :func:`fit`: one row per epoch (0-based), plus the untrained model.

    ``best_epoch`` is the index of the selected epoch, or -1 when there was no validation or
    when the untrained model (``before``, with ``eval_before``) stayed the best.
    """

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_valid: float = float("nan")
    before: dict | None = None      # {"valid": ...} of the untrained model (eval_before)
    steps: list[float] = field(default_factory=list)  # per-step losses (log_steps)
    lrs: list[float] = field(default_factory=list)    # per-step learning rates (log_steps)
    seconds: float = 0.0
    diverged: bool = False  # training stopped on a non-finite loss

    def column(self, key: str) -> list[float]:
        return [e[key] for e in self.epochs if key in e]


class Callback:
    """Hooks into :func:`fit`; override what you need (both receive the model)."""

    def on_step(self, model: torch.nn.Module, step: int, loss: float) -> None:
        """After every optimiser step (``step`` counts from 0 over the whole run)."""

    def on_epoch(self, model: torch.nn.Module, row: dict) -> None:
        """After every epoch's validation; may add numbers to ``row`` (it is recorded)."""


class EpochHook(Callback):
    """A callback from a plain function ``fn(model, row)`` run after each epoch."""

    def __init__(self, fn: Callable[[torch.nn.Module, dict], None]) -> None:
        self.fn = fn

    def on_epoch(self, model: torch.nn.Module, row: dict) -> None:
        self.fn(model, row)


LossOutput = torch.Tensor | Mapping[str, torch.Tensor]


def lr_factor(n_steps: int, warmup_steps: int, decay: bool) -> Callable[[int], float]:
    """The multiplier of the peak LR at step ``s`` (0-based) of a run of ``n_steps`` steps.

    Linear warm-up over the first ``warmup_steps`` (step ``s`` gets ``(s + 1) / warmup_steps``),
    then constant, or with ``decay`` linear down to 0 at step ``n_steps``: 1 at the end of the
    warm-up, ``(n_steps - s) / (n_steps - warmup_steps)`` after it.
    """
    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        if not decay:
            return 1.0
        return max(0.0, (n_steps - s) / max(1, n_steps - warmup_steps))
    return factor


def _split_loss(out: LossOutput) -> tuple[torch.Tensor, dict[str, float]]:
    """A loss function returns a scalar, or a dict with "loss" plus terms to log per epoch."""
    if isinstance(out, Mapping):
        if "loss" not in out:
            raise KeyError(f"a loss function that returns a dict needs a 'loss' entry; got {list(out)}")
        return out["loss"], {k: float(v) for k, v in out.items() if k != "loss"}
    return out, {}


def fit(
    model: torch.nn.Module,
    batches: Callable[[int], Iterable],
    config: TrainConfig,
    *,
    loss_fn: Callable[[torch.nn.Module, object], LossOutput] | None = None,
    valid_fn: Callable[[torch.nn.Module], float] | None = None,
    params: Iterable[torch.nn.Parameter] | None = None,
    device: torch.device | str = "cpu",
    callbacks: Sequence[Callback] = (),
    desc: str = "train",
) -> History:
    """Train ``model`` as ``config`` says; return the :class:`History`. The course's one loop.

    ``batches(epoch)`` yields the batches of one epoch (anything :func:`to_device` moves).
    ``loss_fn(model, batch)`` (default ``model.loss(batch)``) returns the loss, or a dict
    with "loss" and further terms that are averaged into each epoch's row. After each epoch
    ``valid_fn(model)`` (in eval mode) drives selection and early stopping in the direction
    ``config.select``; the best epoch's trainable weights are restored at the end. ``params``
    limits what is trained. A non-finite loss stops training with a warning; a non-finite
    validation score is never selected.
    """
    cfg = config
    device = torch.device(device)
    model.to(device)
    loss_fn = loss_fn or (lambda m, b: m.loss(b))
    trainable = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not trainable:
        raise ValueError("nothing to train: every parameter has requires_grad=False")
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.type == "cuda"
    sign = 1.0 if cfg.select == "max" else -1.0
    history, best_state, bad, best_key = History(), None, 0, float("-inf")
    start = time.perf_counter()

    # A schedule over all steps needs their number first: the epochs' batches are made now.
    scheduled = cfg.schedule == "linear" or cfg.warmup > 0
    plan = [list(batches(e)) for e in range(cfg.epochs)] if scheduled else None
    sched = None
    if plan is not None:
        n_steps = max(1, sum(len(p) for p in plan))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_factor(n_steps, round(cfg.warmup * n_steps), cfg.schedule == "linear"))

    def snapshot() -> list[torch.Tensor]:
        return [p.detach().clone() for p in trainable]

    def consider(value: float) -> bool:
        nonlocal best_key
        if math.isfinite(value) and sign * value > best_key:
            best_key, history.best_valid = sign * value, value
            return True
        return False

    if cfg.eval_before and valid_fn is not None:
        model.eval()
        history.before = {"valid": float(valid_fn(model))}
        if consider(history.before["valid"]):
            best_state = snapshot()

    bar = Progress(desc, total=sum(len(p) for p in plan) if plan is not None else cfg.epochs,
                   unit="step" if plan is not None else "epoch", disable=not cfg.progress)
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        t0, total_loss, n, terms = time.perf_counter(), 0.0, 0, {}
        for i, batch in enumerate(plan[epoch] if plan is not None else batches(epoch)):
            batch = to_device(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, parts = _split_loss(loss_fn(model, batch))
            value = loss.item()
            if not math.isfinite(value):
                history.diverged = True
                warnings.warn(f"{desc}: the training loss is {value} at epoch {epoch}, step "
                              f"{i}; training stops here. Lower the learning rate or check "
                              "the inputs.", RuntimeWarning, stacklevel=2)
                break
            if cfg.log_steps:
                history.lrs.append(opt.param_groups[0]["lr"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
                bar.update(1)
                bar.set_postfix(loss=value)
            total_loss, n = total_loss + value, n + 1
            for k, v in parts.items():
                terms[k] = terms.get(k, 0.0) + v
            if cfg.log_steps:
                history.steps.append(value)
            for cb in callbacks:
                cb.on_step(model, step, value)
            step += 1
        if history.diverged:
            break
        row = {"epoch": epoch, "loss": total_loss / max(n, 1),
               **{k: v / max(n, 1) for k, v in terms.items()},
               "train_seconds": time.perf_counter() - t0}
        if valid_fn is not None:
            model.eval()
            row["valid"] = float(valid_fn(model))
            if consider(row["valid"]):
                history.best_epoch, bad, best_state = epoch, 0, snapshot()
            else:
                bad += 1
        for cb in callbacks:
            cb.on_epoch(model, row)
        history.epochs.append(row)
        if sched is None:
            bar.update(1)
            bar.set_postfix(**{k: v for k, v in row.items() if k in ("loss", "valid")})
        if valid_fn is not None and bad >= cfg.patience:
            break
    bar.close()
    if history.diverged and best_state is None:
        raise FloatingPointError(
            f"{desc}: training diverged (non-finite loss) before any epoch with a finite "
            "validation score; there are no weights to fall back on. Lower the learning rate.")
    if best_state is not None:
        with torch.no_grad():
            for p, saved in zip(trainable, best_state):
                p.copy_(saved)
    model.eval()
    history.seconds = time.perf_counter() - start
    return history


# --- ID-based sequence models (SASRec, BERT4Rec) -------------------------------------------

def sequence_scorer(model: torch.nn.Module, data: SequenceData, stage: str,
                    device: torch.device | str = "cpu") -> Callable[[np.ndarray], torch.Tensor]:
    """``users -> scores`` for :class:`~recutils.evaluation.Evaluator` from a model with ``predict(seq)``."""
    inputs = data.inputs(stage)
    max_len = model.max_len

    def score(users: np.ndarray) -> torch.Tensor:
        seq = pad_sequences([inputs[u] for u in users], max_len).to(device)
        return model.predict(seq)
    return score


def fit_sequential(
    model: torch.nn.Module,
    data: SequenceData,
    config: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    valid_metric: str = "full/NDCG@10",
    valid_users: np.ndarray | None = None,
    params: Iterable[torch.nn.Parameter] | None = None,
    callbacks: Sequence[Callback] = (),
    desc: str = "train",
) -> History:
    """Train SASRec/BERT4Rec on every training window, early-stopping on validation NDCG@10.

    Windows have ``model.max_len + 1`` items (SASRec predicts positions 1..L from 0..L-1;
    BERT4Rec uses the last ``max_len`` of them). Batch order is drawn from ``seed``.
    """
    windows = training_windows(data.train_sequences(), model.max_len + 1)
    rng = np.random.default_rng(seed)
    protocol = valid_metric.split("/")[0]
    evaluator = Evaluator(data, "valid", protocols=(protocol,), ks=(10,), users=valid_users)

    def batches(epoch: int):
        for idx in batch_indices(len(windows), config.batch_size, rng):
            yield windows[torch.as_tensor(idx)]

    def valid(m: torch.nn.Module) -> float:
        return evaluator.evaluate(sequence_scorer(m, data, "valid", device)).metrics()[valid_metric]

    return fit(model, batches, config, valid_fn=valid, device=device, params=params,
               callbacks=callbacks, desc=desc)
