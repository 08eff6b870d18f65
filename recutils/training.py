"""Device choice, and one small training loop for every model of the course (seeding: reproducibility.py).

``fit`` trains any module with a ``loss(batch)`` method (or a given loss function):
AdamW, tqdm progress, optional gradient clipping, mixed precision on CUDA only, early
stopping on a validation score with patience, best weights restored at the end. It never
sees the test split: selection is on whatever ``valid_fn`` returns (the course passes
validation NDCG@10).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from recutils.data.sequences import SequenceData, pad_sequences
from recutils.evaluation import Evaluator


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
class History:
    """What happened during :func:`fit`: one row per epoch."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_valid: float = float("-inf")
    seconds: float = 0.0
    diverged: bool = False  # training stopped on a non-finite loss

    def column(self, key: str) -> list[float]:
        return [e[key] for e in self.epochs if key in e]


def fit(
    model: torch.nn.Module,
    batches: Callable[[int], Iterable[torch.Tensor]],
    *,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    valid_fn: Callable[[torch.nn.Module], float] | None = None,
    patience: int = 5,
    device: torch.device | str = "cpu",
    loss_fn: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None,
    grad_clip: float | None = None,
    amp: bool = True,
    params: Iterable[torch.nn.Parameter] | None = None,
    desc: str = "train",
    progress: bool = True,
    on_epoch: Callable[[torch.nn.Module, dict], None] | None = None,
) -> History:
    """Train ``model`` for up to ``epochs`` epochs; return the :class:`History`.

    ``batches(epoch)`` yields the batches of one epoch (tensors or tuples of tensors, moved
    to ``device`` here). After each epoch ``valid_fn(model)`` (higher is better) decides
    early stopping; the best weights are restored. ``params`` limits what is trained.
    ``on_epoch(model, row)`` runs after each epoch (e.g. to log extra numbers into ``row``).
    """
    device = torch.device(device)
    model.to(device)
    loss_fn = loss_fn or (lambda m, b: m.loss(b))
    trainable = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not trainable:
        raise ValueError("nothing to train: every parameter has requires_grad=False")
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    use_amp = amp and device.type == "cuda"
    history, best_state, bad = History(), None, 0
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc=desc, disable=not progress)
    for epoch in bar:
        model.train()
        t0, total, n = time.perf_counter(), 0.0, 0
        for step, batch in enumerate(batches(epoch)):
            batch = to_device(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = loss_fn(model, batch)
            value = loss.item()
            if not math.isfinite(value):
                history.diverged = True
                warnings.warn(f"{desc}: the training loss is {value} at epoch {epoch}, step "
                              f"{step}; training stops here. Lower the learning rate or check "
                              "the inputs.", RuntimeWarning, stacklevel=2)
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
            opt.step()
            total, n = total + value, n + 1
        if history.diverged:
            break
        row = {"epoch": epoch, "loss": total / max(n, 1), "train_seconds": time.perf_counter() - t0}
        if valid_fn is not None:
            model.eval()
            row["valid"] = float(valid_fn(model))
            # a non-finite validation score is never the best epoch (a diverged model)
            if math.isfinite(row["valid"]) and row["valid"] > history.best_valid:
                history.best_valid, history.best_epoch, bad = row["valid"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
        if on_epoch is not None:
            on_epoch(model, row)
        history.epochs.append(row)
        bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k in ("loss", "valid")})
        if valid_fn is not None and bad >= patience:
            break
    if history.diverged and best_state is None:
        raise FloatingPointError(
            f"{desc}: training diverged (non-finite loss) before any epoch with a finite "
            "validation score; there are no weights to fall back on. Lower the learning rate.")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - start
    return history


def to_device(batch, device: torch.device | str):
    """``batch`` with every tensor in it (also inside dicts, lists, tuples) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


# --- ID-based sequence models (SASRec, BERT4Rec) -------------------------------------------

def sequence_scorer(model: torch.nn.Module, data: SequenceData, stage: str,
                    device: torch.device | str = "cpu") -> Callable[[np.ndarray], torch.Tensor]:
    """A ``score_fn`` for :class:`~recutils.evaluation.Evaluator` from a model with ``score(seq)``."""
    inputs = data.inputs(stage)
    max_len = model.max_len

    def score(users: np.ndarray) -> torch.Tensor:
        seq = pad_sequences([inputs[u] for u in users], max_len).to(device)
        return model.score(seq)
    return score


def fit_sequential(
    model: torch.nn.Module,
    data: SequenceData,
    *,
    epochs: int = 50,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    patience: int = 5,
    device: torch.device | str = "cpu",
    seed: int = 0,
    valid_metric: str = "full/NDCG@10",
    valid_users: np.ndarray | None = None,
    params: Iterable[torch.nn.Parameter] | None = None,
    desc: str = "train",
    progress: bool = True,
    on_epoch: Callable[[torch.nn.Module, dict], None] | None = None,
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
        order = torch.as_tensor(rng.permutation(len(windows)))
        for i in range(0, len(order), batch_size):
            yield windows[order[i:i + batch_size]]

    def valid(m: torch.nn.Module) -> float:
        return evaluator.evaluate(sequence_scorer(m, data, "valid", device)).metrics()[valid_metric]

    return fit(model, batches, epochs=epochs, lr=lr, weight_decay=weight_decay, valid_fn=valid,
               patience=patience, device=device, params=params, desc=desc, progress=progress,
               on_epoch=on_epoch)
