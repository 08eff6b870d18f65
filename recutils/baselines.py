"""The course's canonical ID baselines: one SASRec and one BERT4Rec per split, SCALE and SEED.

Every notebook that compares against "SASRec" or "BERT4Rec" can take this one model, so a
reader sees the same baseline everywhere. :func:`canonical` trains it once and caches the
weights and the training history under ``build/baselines/`` (keyed by the split's
fingerprint, the configs, the seed and the torch thread count); a second call, in any
notebook, loads it. Training and loading leave every random number generator as they found
it, so a cache hit and a cache miss give the caller the same numbers afterwards.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from recutils.data.sequences import SequenceData
from recutils.evaluation import EvalResult, Evaluator
from recutils.models.bert4rec import BERT4Rec, BERT4RecConfig
from recutils.models.sasrec import SASRec, SASRecConfig
from recutils.reproducibility import preserved_rng, seed_everything
from recutils.training import (
    History,
    TrainConfig,
    count_parameters,
    fit_sequential,
    sequence_scorer,
)

# The canonical architectures (notebook 00's; RecBole's defaults except dropout 0.3).
SASREC = SASRecConfig(hidden=64, n_layers=2, n_heads=2, inner=256, dropout=0.3, max_len=50, loss="ce")
SASREC_BCE = replace(SASREC, loss="bce")  # the original paper's objective: one random negative
BERT4REC = BERT4RecConfig(hidden=64, n_layers=2, n_heads=2, inner=256, dropout=0.2, max_len=50,
                          mask_prob=0.2)

# Training per SCALE: epochs are an upper bound, early stopping on validation NDCG@10 (full).
_EPOCHS = {"smoke": (2, 2, 2, 2), "default": (35, 15, 35, 8), "paper": (200, 200, 200, 10)}


@dataclass(frozen=True)
class Baseline:
    """What :func:`canonical` builds: an architecture and how it is trained."""

    kind: str                               # "SASRec", "SASRec (BCE, 1 negative)" or "BERT4Rec"
    model: SASRecConfig | BERT4RecConfig    # the architecture
    train: TrainConfig                      # the training run


def baseline_config(kind: str, scale: str) -> Baseline:
    """The canonical configuration of ``kind`` at ``scale`` (see the module constants)."""
    if scale not in _EPOCHS:
        raise ValueError(f"scale must be one of {sorted(_EPOCHS)}, got {scale!r}")
    sas, bce, bert, patience = _EPOCHS[scale]
    epochs, model = {"SASRec": (sas, SASREC), "SASRec (BCE, 1 negative)": (bce, SASREC_BCE),
                     "BERT4Rec": (bert, BERT4REC)}.get(kind, (None, None))
    if model is None:
        raise ValueError(f"unknown baseline {kind!r}; known: SASRec, SASRec (BCE, 1 negative), BERT4Rec")
    return Baseline(kind, model, TrainConfig(epochs=epochs, lr=1e-3, batch_size=64, patience=patience))


def split_fingerprint(data: SequenceData) -> str:
    """A short hash of the split: the sequences (hence every train/valid/test item) and ids."""
    h = hashlib.sha256()
    h.update(f"{data.name}|{data.n_items}|{data.n_users}".encode())
    for s in data.sequences:
        h.update(np.asarray(s, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def build(baseline: Baseline, n_items: int) -> SASRec | BERT4Rec:
    """A freshly initialised model of the baseline's architecture."""
    cls = BERT4Rec if isinstance(baseline.model, BERT4RecConfig) else SASRec
    return cls(n_items, baseline.model)


def train(baseline: Baseline, data: SequenceData, seed: int, device: torch.device | str = "cpu",
          desc: str | None = None) -> tuple[SASRec | BERT4Rec, History]:
    """Seed, build and train ``baseline`` on ``data`` (selection on validation only)."""
    seed_everything(seed)
    model = build(baseline, data.n_items)
    seed_everything(seed)
    hist = fit_sequential(model, data, baseline.train, device=device, seed=seed,
                          desc=desc or baseline.kind)
    return model, hist


def canonical(kind: str, data: SequenceData, scale: str, seed: int,
              device: torch.device | str = "cpu", cache: Path | None = None,
              ) -> tuple[SASRec | BERT4Rec, History, bool]:
    """The canonical ``kind`` for this split: (model in eval mode, its History, loaded from cache?).

    Without ``cache`` the model is trained and nothing is written. Either way no random
    number generator changes state.
    """
    baseline = baseline_config(kind, scale)
    key = json.dumps({"kind": kind, "split": split_fingerprint(data), "seed": seed,
                      "model": asdict(baseline.model), "train": asdict(baseline.train),
                      "threads": torch.get_num_threads(), "torch": torch.__version__}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    with preserved_rng():
        if cache is not None and (cache / f"{digest}.pt").exists():
            model = build(baseline, data.n_items)
            model.load_state_dict(torch.load(cache / f"{digest}.pt", weights_only=True))
            hist = History(**json.loads((cache / f"{digest}.json").read_text()))
            return model.to(device).eval(), hist, True
        model, hist = train(baseline, data, seed, device)
    if cache is not None:  # weights last, written then renamed: a partial file is never a hit
        cache.mkdir(parents=True, exist_ok=True)
        (cache / f"{digest}.json").write_text(json.dumps(asdict(hist)))
        (cache / f"{digest}.key.json").write_text(key)
        torch.save(model.state_dict(), cache / f"{digest}.pt.part")
        (cache / f"{digest}.pt.part").replace(cache / f"{digest}.pt")
    return model, hist, False


@dataclass
class Run:
    """One evaluated method: its test result, training history and costs."""

    result: EvalResult
    history: History | None
    train_seconds: float
    infer_seconds: float
    params: tuple[int, int]  # (total, trainable)


def baseline_run(kind: str, data: SequenceData, evaluator: Evaluator, scale: str, seed: int,
                 device: torch.device | str, cache: Path | None = None) -> tuple[torch.nn.Module, Run]:
    """Train (or load) the canonical ``kind`` and evaluate it on ``evaluator``'s users."""
    model, hist, cached = canonical(kind, data, scale, seed, device, cache=cache)
    t0 = time.perf_counter()
    result = evaluator.evaluate(sequence_scorer(model, data, evaluator.stage, device))
    run = Run(result, hist, hist.seconds, time.perf_counter() - t0, count_parameters(model))
    print(f"{kind}: {len(hist.epochs)} epochs in {hist.seconds:.0f} s{' (cached)' if cached else ''}, "
          f"best epoch {hist.best_epoch} (valid NDCG@10 {hist.best_valid:.4f})")
    return model, run


def record_run(rec, name: str, run: Run, n_users: int) -> None:
    """Record ``run`` as method ``name`` of a notebook's :class:`~recutils.notebook.Recorder`."""
    total, trainable = run.params
    rec.record_method(name, run.result.metrics(), train_seconds=run.train_seconds,
                      infer_seconds_per_user=run.infer_seconds / n_users,
                      params_total=total, params_trainable=trainable, n_users=n_users)
