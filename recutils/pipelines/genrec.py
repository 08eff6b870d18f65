"""Notebook 03's pipeline (GenRec, Cao & Lio 2024): cloze batches, the ablation, beam search, analyses.

:class:`GenRecPipeline` holds one dataset's tokenised validation batches and makes the
training batches of the two cloze stages; :meth:`GenRecPipeline.train` runs one variant of
the pre-training ablation with :func:`recutils.training.fit` (pre-training, then fine-tuning,
both selected on the validation item's negative log-likelihood, lower is better), and
:meth:`GenRecPipeline.run_ablation` runs every variant for every seed and evaluates the
beam-searched lists on the test users. The rest turns the runs into the notebook's tables,
figures, records and claims.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from recutils.batching import batch_indices_of, seeded_subset, to_device
from recutils.data.sequences import SequenceData
from recutils.evaluation import EvalResult, Evaluator
from recutils.models.genrec import (
    GenRec,
    GenRecConfig,
    build_genrec,
    item_attention,
    make_tokenizer,
    next_item_batch,
    pretrain_batch,
    sample_next_item,
)
from recutils.notebook import claim
from recutils.reproducibility import seed_everything
from recutils.training import Callback, TrainConfig, fit

# The three training recipes of the ablation, in the order they run for each seed.
GENREC, NO_PRETRAIN, SAME_STEPS = ("GenRec", "GenRec w/o pre-training",
                                   "GenRec w/o pre-training, same steps")


@dataclass(frozen=True)
class Variant:
    """One recipe of the pre-training ablation."""

    name: str
    pretrain: bool        # cloze pre-training before fine-tuning
    finetune_epochs: int  # upper bound on fine-tuning epochs (early stopping on validation)


def ablation_variants(pretrain: TrainConfig, finetune: TrainConfig) -> list[Variant]:
    """GenRec, w/o pre-training (paper Table 3) and w/o pre-training with as many epochs in all."""
    return [Variant(GENREC, True, finetune.epochs),
            Variant(NO_PRETRAIN, False, finetune.epochs),
            Variant(SAME_STEPS, False, pretrain.epochs + finetune.epochs)]


def sample_users(n_users: int, n: int | None, seed: int) -> np.ndarray:
    """A sorted seeded sample of ``n`` user indices (all users when ``n`` is None)."""
    n = n_users if n is None else min(n, n_users)
    return seeded_subset(n_users, n, seed)


def shared_rng_batches(make: Callable[[np.ndarray, np.random.Generator], dict],
                       users: np.ndarray, per_user: int, batch_size: int, seed: int
                       ) -> Callable[[int], Iterator[dict]]:
    """A ``batches(epoch)`` factory whose epochs all draw from ONE generator, ``default_rng(seed)``.

    Each epoch concatenates ``per_user`` permutations of ``users`` and cuts them into slices
    of ``batch_size``; ``make(slice, rng)`` draws the examples' windows, masks and cut points
    from the same generator. So epoch ``e``'s batches depend on every epoch before it (unlike
    :func:`recutils.batching.seeded_batches`, which reseeds with ``seed + epoch``).
    """
    rng = np.random.default_rng(seed)

    def batches(epoch: int) -> Iterator[dict]:
        order = np.concatenate([rng.permutation(users) for _ in range(per_user)])
        for idx in batch_indices_of(order, batch_size):
            yield make(idx, rng)
    return batches


class RankingCurve(Callback):
    """After every epoch, beam-search a *validation* evaluator's users: the metric vs the steps.

    ``points`` gets one dict per epoch (over both stages): cumulative optimiser steps, the
    stage's epoch, and the validation HR@10 / NDCG@10 of the beam lists (full ranking). The
    test split is never touched; nothing is selected on these numbers (selection is on the
    validation NLL). ``seconds`` is the time spent here (kept out of the training time).
    """

    def __init__(self, pipe: GenRecPipeline, evaluator: Evaluator) -> None:
        if evaluator.stage != "valid":
            raise ValueError("a budget curve is drawn on validation, never on test")
        self.pipe, self.evaluator = pipe, evaluator
        self.steps, self.seconds, self.points = 0, 0.0, []

    def on_step(self, model: torch.nn.Module, step: int, loss: float) -> None:
        self.steps += 1

    def on_epoch(self, model: torch.nn.Module, row: dict) -> None:
        t0 = time.perf_counter()
        ranked = self.pipe.recommend(model, self.evaluator.users, stage="valid")
        m = self.evaluator.evaluate_ranked(ranked).metrics()
        self.points.append({"steps": self.steps, "epoch": row["epoch"], "valid_nll": row["valid"],
                            "HR@10": m["full/HR@10"], "NDCG@10": m["full/NDCG@10"]})
        model.train()
        self.seconds += time.perf_counter() - t0


def sanity_checks(pipe: GenRecPipeline, model: GenRec, seed: int, valid: Evaluator,
                  n_overfit: int = 16, steps: int = 150, lr: float = 3e-3) -> dict[str, float]:
    """Three checks that rule out bugs before blaming scale.

    * step 0: the untrained model's fine-tuning loss per token vs ``ln(vocabulary)`` (a
      uniform guess);
    * overfit: a fresh model trained ``steps`` steps on ``n_overfit`` users' fixed
      (history, next item) pairs must drive its loss to near 0 and beam-search each user's
      target first (HR@1 on those pairs);
    * control: the trained ``model`` on ``valid``'s users with every user given another
      user's history (a seeded permutation) must fall below its own-history HR@10.
    """
    fresh = pipe.build(seed)
    rng = np.random.default_rng(seed)
    users = pipe.train_users[:n_overfit]
    batch = to_device(pipe.finetune_batch(users, rng), pipe.device)
    fresh.eval()
    with torch.no_grad():
        step0 = float(fresh.loss(batch))
    cfg = TrainConfig(epochs=steps, lr=lr, select="min", progress=False, log_steps=True)
    h = fit(fresh, lambda e: [batch], cfg, device=pipe.device, desc="overfit")
    targets = [fresh.trie.item(row[row >= 0].tolist()) for row in batch["labels"].cpu()]
    top = fresh.predict({k: v for k, v in batch.items() if k != "labels"})
    hit1 = float(np.mean([bool(r) and r[0] == t for r, t in zip(top, targets)]))
    vu = valid.users
    own = valid.evaluate_ranked(pipe.recommend(model, vu, stage="valid")).metrics()
    perm = np.random.default_rng(seed).permutation(len(vu))
    other = [pipe.valid_in[vu[j]] for j in perm]
    shuffled = valid.evaluate_ranked(pipe.recommend(model, vu, stage="valid",
                                                    histories=other)).metrics()
    return {"step0_loss": step0, "uniform_loss": math.log(pipe.tokenizer.vocab_size),
            "overfit_users": len(users), "overfit_steps": steps,
            "overfit_final_loss": h.steps[-1], "overfit_HR@1": hit1,
            "valid_HR@10_own_history": own["full/HR@10"],
            "valid_HR@10_shuffled_history": shuffled["full/HR@10"]}


@dataclass
class Run:
    """One trained variant for one seed: its test ranking and what training logged."""

    ranked: list[list[int]]   # beam-searched items per evaluated user, best first
    result: EvalResult        # the ranked lists under every protocol
    log: dict                 # before, pretrain / finetune epoch rows, best_epoch, seconds


@dataclass
class Ablation:
    """Every variant for every seed: ``runs[name, seed]``, plus the first seed's GenRec model."""

    variants: list[Variant]
    seeds: list[int]
    runs: dict[tuple[str, int], Run] = field(default_factory=dict)
    model: GenRec | None = None

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]

    def per_seed(self, name: str) -> pd.DataFrame:
        """One row of metrics per seed."""
        return pd.DataFrame([self.runs[name, s].result.metrics() for s in self.seeds],
                            index=self.seeds)

    def mean(self) -> dict[str, pd.Series]:
        return {n: self.per_seed(n).mean() for n in self.names}

    def std(self) -> dict[str, pd.Series]:
        """Sample standard deviation over seeds (0 with one seed)."""
        ddof = 1 if len(self.seeds) > 1 else 0
        return {n: self.per_seed(n).std(ddof=ddof) for n in self.names}

    def mean_log(self, name: str, key: str) -> float:
        return float(np.mean([self.runs[name, s].log[key] for s in self.seeds]))


class GenRecPipeline:
    """GenRec's stages on one dataset: batches, training of a variant, beam search.

    ``config`` shapes the network and the inputs (``max_items``, ``p_last``, ``beams``);
    ``pretrain`` and ``finetune`` are the two stages' :class:`TrainConfig` (their
    ``batch_size`` sizes the batches; ``select="min"``: the validation NLL is a loss).
    ``per_user`` is the number of training examples drawn per user and epoch.
    """

    def __init__(self, data: SequenceData, config: GenRecConfig, pretrain: TrainConfig,
                 finetune: TrainConfig, per_user: int, device: torch.device | str = "cpu",
                 tokenizer=None, valid_chunk: int = 256, beam_batch: int = 64) -> None:
        if pretrain.select != "min" or finetune.select != "min":
            raise ValueError("GenRec selects on the validation NLL (lower is better): "
                             "use TrainConfig(select='min') for both stages")
        self.data, self.config, self.device = data, config, torch.device(device)
        self.pretrain_config, self.finetune_config = pretrain, finetune
        self.per_user, self.beam_batch = per_user, beam_batch
        self.tokenizer = tokenizer or make_tokenizer(config)
        self.train_seqs = data.train_sequences()
        self.valid_in, self.test_in = data.inputs("valid"), data.inputs("test")
        self.train_users = np.array([u for u, s in enumerate(self.train_seqs) if len(s) >= 2])
        # every user's validation item, in chunks of about valid_chunk users
        targets = data.targets("valid")
        chunks = np.array_split(np.arange(data.n_users), max(1, data.n_users // valid_chunk))
        self.valid_batches = [next_item_batch(self.tokenizer, us, [self.valid_in[u] for u in us],
                                              targets[us], config.max_items) for us in chunks]

    # --- batches ------------------------------------------------------------------------------

    def pretrain_batch(self, users: np.ndarray, rng: np.random.Generator) -> dict:
        """Cloze pre-training: one masked item in a random window of each training sequence."""
        return pretrain_batch(self.tokenizer, users, [self.train_seqs[u] for u in users], rng,
                              self.config.max_items, p_last=self.config.p_last)

    def finetune_batch(self, users: np.ndarray, rng: np.random.Generator) -> dict:
        """Fine-tuning: a random cut of each training sequence, ``<mask>`` appended, next item."""
        hists, targets = sample_next_item([self.train_seqs[u] for u in users], rng)
        return next_item_batch(self.tokenizer, users, hists, targets, self.config.max_items)

    def batches(self, make, seed: int, config: TrainConfig) -> Callable[[int], Iterator[dict]]:
        """Batches of ``make`` over the training users, one generator for all epochs."""
        return shared_rng_batches(make, self.train_users, self.per_user, config.batch_size, seed)

    # --- selection and inference --------------------------------------------------------------

    def valid_nll(self, model: GenRec) -> float:
        """Mean negative log-likelihood of every user's validation item (nats; lower is better)."""
        nll = [model.target_nll(to_device(b, self.device)).cpu().numpy() for b in self.valid_batches]
        return float(np.mean(np.concatenate(nll)))

    def recommend(self, model: GenRec, users: Sequence[int], stage: str = "test",
                  histories: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
        """Beam search for ``users`` after their ``stage`` input: one ranked item list each.

        ``histories`` replaces the users' own inputs (row by row), e.g. for a control.
        """
        inputs = self.test_in if stage == "test" else self.valid_in
        histories = histories if histories is not None else [inputs[u] for u in users]
        out: list[list[int]] = []
        for start in range(0, len(users), self.beam_batch):
            us = users[start:start + self.beam_batch]
            b = next_item_batch(self.tokenizer, us, histories[start:start + self.beam_batch],
                                None, self.config.max_items)
            out += model.predict(to_device(b, self.device), beams=self.config.beams)
        return out

    # --- training -----------------------------------------------------------------------------

    def build(self, seed: int) -> GenRec:
        """A fresh GenRec, its initial weights fixed by ``seed``."""
        seed_everything(seed)
        return build_genrec(self.data.n_users, self.data.n_items, self.config,
                            tokenizer=self.tokenizer).to(self.device)

    def train(self, seed: int, variant: Variant, callbacks: Sequence[Callback] = ()
              ) -> tuple[GenRec, dict]:
        """One variant: build, (pre-train,) fine-tune; the best validation epochs are kept.

        Pre-training batches are drawn from ``seed``, fine-tuning batches from ``seed + 1000``,
        so every variant of a seed fine-tunes on the same batches. ``callbacks`` run in both
        stages (e.g. a :class:`RankingCurve`); their time is not counted as training time.
        """
        model = self.build(seed)
        log: dict = {"before": self.valid_nll(model)}
        t0 = time.perf_counter()
        if variant.pretrain:
            h = fit(model, self.batches(self.pretrain_batch, seed, self.pretrain_config),
                    self.pretrain_config, valid_fn=self.valid_nll, device=self.device,
                    callbacks=callbacks, desc="pre-training")
            log["pretrain"], log["pretrain_best_epoch"] = h.epochs, h.best_epoch
        finetune = replace(self.finetune_config, epochs=variant.finetune_epochs)
        h = fit(model, self.batches(self.finetune_batch, seed + 1000, finetune), finetune,
                valid_fn=self.valid_nll, device=self.device, callbacks=callbacks,
                desc="fine-tuning")
        log["finetune"], log["best_epoch"] = h.epochs, h.best_epoch
        extra = sum(getattr(cb, "seconds", 0.0) for cb in callbacks)
        log["train_seconds"] = time.perf_counter() - t0 - extra
        return model, log

    def run_ablation(self, seeds: Sequence[int], evaluator: Evaluator,
                     variants: Sequence[Variant] | None = None, verbose: bool = True,
                     curve: Evaluator | None = None, curve_variants: Sequence[str] = (GENREC,),
                     ) -> Ablation:
        """Train and beam-search every variant for every seed (seed-major), on ``evaluator``'s users.

        The first seed's pre-trained GenRec is kept as ``Ablation.model`` for the analyses.
        With ``curve`` (a *validation* evaluator), the first seed's ``curve_variants`` also
        log the beam-searched validation metrics after every epoch (``log["curve"]``).
        """
        variants = list(variants or ablation_variants(self.pretrain_config, self.finetune_config))
        ablation = Ablation(variants, list(seeds))
        users = evaluator.users
        for seed in seeds:
            for v in variants:
                hooks = [RankingCurve(self, curve)] if (
                    curve is not None and seed == seeds[0] and v.name in curve_variants) else []
                model, log = self.train(seed, v, callbacks=hooks)
                if hooks:
                    log["curve"] = hooks[0].points
                t0 = time.perf_counter()
                ranked = self.recommend(model, users)
                log["beam_seconds_per_user"] = (time.perf_counter() - t0) / len(users)
                run = Run(ranked, evaluator.evaluate_ranked(ranked), log)
                ablation.runs[v.name, seed] = run
                if seed == seeds[0] and v.name == GENREC:
                    ablation.model = model
                if verbose:
                    print(f"{v.name:36s} seed {seed}: train {log['train_seconds']:.0f} s, beam "
                          f"search {1000 * log['beam_seconds_per_user']:.1f} ms/user, test HR@10 "
                          f"{run.result.metrics()['full/HR@10']:.4f}")
        return ablation

    # --- analysis -----------------------------------------------------------------------------

    def encoder_attention(self, model: GenRec, user: int) -> tuple[np.ndarray, list[str]]:
        """Item-level encoder self-attention of ``user``'s test input (see ``item_attention``)."""
        b = next_item_batch(self.tokenizer, [user], [self.test_in[user]],
                            [int(self.data.targets("test")[user])], self.config.max_items)
        with torch.no_grad():
            out = model(to_device(b, self.device), output_attentions=True)
        return item_attention(out.encoder_attentions, b["item_ids"], b["input_ids"],
                              self.tokenizer.mask_token_id)


def beam_output_stats(ablation: Ablation, n_items: int, beams: int) -> dict[str, float]:
    """Share of generated items that are real items, and of lists with ``beams`` distinct items."""
    lists = [lst for run in ablation.runs.values() for lst in run.ranked]
    flat = [i for lst in lists for i in lst]
    full = [len(lst) == min(beams, n_items) for lst in lists]
    return {"valid_item_share": float(np.mean([1 <= i <= n_items for i in flat])),
            "lists_with_20_distinct_items": float(np.mean(full))}


def method_records(ablation: Ablation, params_total: int, n_users: int) -> dict[str, dict]:
    """Keyword arguments of ``Recorder.record_method`` for each variant (mean over seeds)."""
    mean, std = ablation.mean(), ablation.std()
    return {n: dict(metrics=mean[n].to_dict(), train_seconds=ablation.mean_log(n, "train_seconds"),
                    infer_seconds_per_user=ablation.mean_log(n, "beam_seconds_per_user"),
                    params_total=params_total, params_trainable=params_total, n_users=n_users,
                    std_over_seeds=std[n].to_dict(), seeds=ablation.seeds,
                    per_seed={str(s): ablation.runs[n, s].result.metrics() for s in ablation.seeds})
            for n in ablation.names}


def training_records(ablation: Ablation) -> dict[str, dict]:
    """Per run: the selected fine-tuning epoch and its validation NLL."""
    return {f"{n} seed {s}": {"best_finetune_epoch": run.log["best_epoch"],
                              "valid_nll": min(e["valid"] for e in run.log["finetune"])}
            for (n, s), run in ablation.runs.items()}


def plot_training_curves(ablation: Ablation):
    """Training loss per phase (left) and validation NLL per epoch (right), every run."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    palette = dict(zip(ablation.names, ["tab:blue", "tab:orange", "tab:green"]))
    first = ablation.seeds[0]
    for (n, s), run in ablation.runs.items():
        color, log = palette[n], run.log
        pre, ft = log.get("pretrain", []), log["finetune"]
        x0 = len(pre)
        if pre:
            axes[0].plot(range(1, x0 + 1), [e["loss"] for e in pre], color=color, ls="--",
                         alpha=0.7, label="GenRec pre-training (cloze)" if s == first else None)
        axes[0].plot(range(x0 + 1, x0 + len(ft) + 1), [e["loss"] for e in ft], color=color,
                     alpha=0.7, label=f"{n} fine-tuning" if s == first else None)
        nll = [e["valid"] for e in pre + ft]
        axes[1].plot(range(1, len(nll) + 1), nll, marker=".", color=color, alpha=0.7,
                     label=n if s == first else None)
        if pre:  # the switch from pre-training to fine-tuning
            axes[1].axvline(x0 + 0.5, color="0.7", lw=0.8)
    axes[0].set(xlabel="epoch", ylabel="cross-entropy per token", title="Training loss")
    lowest = min(e["valid"] for run in ablation.runs.values()
                 for e in run.log.get("pretrain", []) + run.log["finetune"])
    axes[1].set_ylim(lowest - 0.05, lowest + 1.0)  # zoom on the end: the first epochs are far above
    before = next(iter(ablation.runs.values())).log["before"]
    axes[1].set(xlabel="epoch (GenRec: pre-training, then fine-tuning)",
                ylabel="validation item NLL (nats)", title=f"Validation NLL (untrained: {before:.1f})")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_budget_curve(ablation: Ablation, sasrec_valid: dict[str, float], n_users: int,
                      batch_size: int, share: float = 0.8):
    """Validation HR@10 and NDCG@10 of the beam lists vs training examples seen (first seed).

    One line per variant with a ``log["curve"]`` (pre-training and fine-tuning together, a
    grey line at the switch), the canonical SASRec's validation value and ``share`` of it.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    palette = dict(zip(ablation.names, ["tab:blue", "tab:orange", "tab:green"]))
    seed = ablation.seeds[0]
    for ax, m in zip(axes, ("HR@10", "NDCG@10")):
        for n in ablation.names:
            log = ablation.runs[n, seed].log
            if "curve" not in log:
                continue
            pts = log["curve"]
            ax.plot([p["steps"] * batch_size for p in pts], [p[m] for p in pts], marker=".",
                    color=palette[n], label=n)
            if "pretrain" in log:
                ax.axvline(pts[len(log["pretrain"]) - 1]["steps"] * batch_size, color="0.7",
                           lw=0.8)
        ref = sasrec_valid[f"full/{m}"]
        ax.axhline(ref, color="k", lw=1, label="canonical SASRec")
        ax.axhline(share * ref, color="k", lw=1, ls="--", label=f"{share:.0%} of it")
        ax.set(xlabel="training examples seen (pre-training + fine-tuning)",
               ylabel=f"validation {m} (full ranking)", title=f"{m}, {n_users} validation users")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_item_attention(matrix: np.ndarray, labels: Sequence[str], title: str):
    """Heat map of an item-level attention matrix, history items oldest first, ``<mask>`` last."""
    fig, ax = plt.subplots(figsize=(7.5, 6))
    im = ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=75, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xlabel="key (history item, oldest first)", ylabel="query", title=title)
    fig.colorbar(im, ax=ax, fraction=0.04)
    return fig


def separable(mean: dict, std: dict, a: str, b: str, key: str) -> bool:
    """Whether the gap of means between variants ``a`` and ``b`` exceeds their summed std."""
    return abs(mean[a][key] - mean[b][key]) > std[a][key] + std[b][key]


def spread_note(mean: dict, std: dict, a: str, b: str, key: str) -> str:
    """"separable" when the gap of means exceeds the summed std over seeds, else "not separable"."""
    if separable(mean, std, a, b, key):
        return "gap larger than the summed std over seeds"
    return "not separable at this scale: the seed spreads overlap"


def _ahead(mean: dict, a: str, b: str, key: str) -> bool:
    return bool(mean[a][key] > mean[b][key])


def claim_rows(ablation: Ablation, sasrec: dict[str, float], valid_share: float, n_users: int,
               paper_vs_sasrec: dict[str, tuple[float, float]],
               paper_without_pretraining: dict[str, float],
               canonical: dict[str, float] | None = None, share: float = 0.8) -> list[dict]:
    """The closing claims: GenRec vs SASRec (Table 1), pre-training helps (Table 3), the
    matched-steps control (ours), the course's target against the canonical SASRec, valid beams.

    ``paper_vs_sasrec[metric] = (SASRec, GenRec)`` and ``paper_without_pretraining[metric]``
    hold the paper's numbers. The pre-training rows read "not separable at this scale" when
    the gap of means is within the summed std over seeds. ``canonical`` (the course's
    canonical SASRec on the same users) adds the rows "GenRec reaches ``share`` of it".
    """
    mean, std = ablation.mean(), ablation.std()
    G, N, C = mean[GENREC], mean[NO_PRETRAIN], mean[SAME_STEPS]
    rows = []
    for m, (p_s, p_g) in paper_vs_sasrec.items():
        k = f"full/{m}"
        rows.append(claim(f"GenRec beats SASRec on {m} (full ranking)",
                          f"{p_g:.4f} vs {p_s:.4f} (Beauty)",
                          f"{G[k]:.4f} ± {std[GENREC][k]:.4f} vs {sasrec[k]:.4f}",
                          bool(G[k] > sasrec[k]), f"{len(ablation.seeds)} seeds, {n_users} users"))
    for m, p_n in paper_without_pretraining.items():
        k = f"full/{m}"
        rows.append(claim(f"Pre-training helps on {m}",
                          f"{paper_vs_sasrec[m][1]:.4f} vs {p_n:.4f} (Beauty)",
                          f"{G[k]:.4f} ± {std[GENREC][k]:.4f} vs {N[k]:.4f} ± "
                          f"{std[NO_PRETRAIN][k]:.4f}", _ahead(mean, GENREC, NO_PRETRAIN, k),
                          spread_note(mean, std, GENREC, NO_PRETRAIN, k),
                          separable=separable(mean, std, GENREC, NO_PRETRAIN, k)))
    for m in ("HR@10", "NDCG@10"):
        k = f"full/{m}"
        rows.append(claim(f"Pre-training helps on {m} with training steps matched",
                          "not tested in the paper",
                          f"{G[k]:.4f} ± {std[GENREC][k]:.4f} vs {C[k]:.4f} ± "
                          f"{std[SAME_STEPS][k]:.4f}", _ahead(mean, GENREC, SAME_STEPS, k),
                          spread_note(mean, std, GENREC, SAME_STEPS, k),
                          separable=separable(mean, std, GENREC, SAME_STEPS, k)))
    for m in ("HR@10", "NDCG@10") if canonical is not None else ():
        k = f"full/{m}"
        rows.append(claim(f"GenRec reaches {share:.0%} of the canonical SASRec on {m}",
                          "n/a (the course's target)",
                          f"{G[k]:.4f} ± {std[GENREC][k]:.4f} vs {share:.0%} x {canonical[k]:.4f}"
                          f" = {share * canonical[k]:.4f}", bool(G[k] >= share * canonical[k]),
                          f"{len(ablation.seeds)} seeds, {n_users} users; see the budget curve"))
    rows.append(claim("Every generated item is a real item",
                      "not ensured by the public code (invalid -> item 0)",
                      f"{valid_share:.1%} valid (trie-constrained)", valid_share == 1.0))
    return rows
