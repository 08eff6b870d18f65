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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from recutils.data.sequences import SequenceData
from recutils.models.bert4rec import BERT4Rec, BERT4RecConfig
from recutils.models.sasrec import SASRec, SASRecConfig
from recutils.reproducibility import preserved_rng, seed_everything
from recutils.training import History, TrainConfig, fit_sequential

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
