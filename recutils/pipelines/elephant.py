"""Notebook 05's pipeline: "The Elephant in the Room" (Qu et al., RecSys 2024) on RecFormer.

Two studies, each a small class whose methods the notebook calls one stage at a time:

* :class:`RecFormerStudy`: one RecFormer whose weights move between named states (vanilla,
  PT, FT). Behaviour tuning: :meth:`~RecFormerStudy.pretrain` (item-item contrastive + MLM)
  and :meth:`~RecFormerStudy.finetune` (fine-tuning stage 1: softmax over an item table that
  :class:`ReencodedTable` re-encodes before every epoch after the first); each fine-tuned
  layer set is one :meth:`~RecFormerStudy.variant` of the layer-freezing table (Table 1).
* :class:`ItemInitStudy`: SASRec / BERT4Rec whose item tables start from random, plain LM,
  LF, PT or FT vectors (Tables 3-5), trainable or frozen, trained to convergence.

Every training stage runs through :func:`recutils.training.fit`; hyper-parameters come in
typed configs (:class:`~recutils.models.recformer.RecFormerConfig`, ``TrainConfig``,
``SASRecConfig``, ``BERT4RecConfig``) filled by the notebook's ``preset``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from recutils.batching import seeded_subset
from recutils.data import item_attributes
from recutils.data.sequences import SequenceData
from recutils.evaluation import EvalResult, Evaluator
from recutils.models import BERT4Rec, BERT4RecConfig, SASRec, SASRecConfig
from recutils.models.embedding import pca_init
from recutils.models.recformer import (
    RecFormer,
    RecFormerRecommender,
    encode_items,
    example_batches,
    finetune_loss,
    pretrain_loss,
    sequence_batch,
    set_trainable_layers,
    tokenize_items,
    training_examples,
)
from recutils.notebook import Recorder
from recutils.reproducibility import seed_everything
from recutils.training import (
    History,
    TrainConfig,
    count_parameters,
    fit,
    fit_sequential,
    sequence_scorer,
)

State = dict[str, torch.Tensor]


def clone_state(model: torch.nn.Module) -> State:
    """A detached copy of every tensor of ``model.state_dict()``."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def subsample(examples: list, n: int | None, seed: int) -> list:
    """``n`` of ``examples`` drawn without replacement by ``default_rng(seed)``, in their order
    (all of them when ``n`` is None or not smaller)."""
    if n is None or n >= len(examples):
        return examples
    return [examples[i] for i in seeded_subset(len(examples), n, seed)]


@dataclass
class TextCatalogue:
    """The catalogue as RecFormer token lists, with the tokenizer's special ids."""

    tokens: list[tuple[list[int], list[int]]]   # (token ids, roles) per item; row 0 is padding
    cls_id: int
    pad_id: int
    mask_id: int

    @classmethod
    def build(cls, tokenizer, items: pd.DataFrame, fields: Sequence[str], item_tokens: int
              ) -> TextCatalogue:
        """Tokenise every item's ``fields`` as key-value text, cut to ``item_tokens`` tokens."""
        tokens = tokenize_items(tokenizer, item_attributes(items, tuple(fields)), item_tokens)
        return cls(tokens, tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id)

    def batch(self, histories: Sequence[np.ndarray], max_items: int) -> dict[str, torch.Tensor]:
        """:func:`~recutils.models.recformer.sequence_batch` of these histories."""
        return sequence_batch(self.tokens, histories, self.cls_id, self.pad_id, max_items)


class ReencodedTable:
    """``batches(epoch)`` for fine-tuning stage 1: before the batches of every epoch after the
    first, the whole catalogue is re-encoded with the current weights (``encode()``); the loss
    reads :attr:`table`. Epoch 0 uses the table it was given (the PT model's)."""

    def __init__(self, batches: Callable[[int], Iterable], table: torch.Tensor,
                 encode: Callable[[], torch.Tensor]) -> None:
        self.batches, self.table, self.encode = batches, table, encode
        self.fresh = False   # True: ``table`` already holds the current weights' encodings

    def refresh(self) -> torch.Tensor:
        """Re-encode now (e.g. to validate); the next epoch then reuses this table."""
        self.table, self.fresh = self.encode(), True
        return self.table

    def __call__(self, epoch: int):
        if epoch > 0 and not self.fresh:   # stage 1: re-encode at the start of every epoch
            self.table = self.encode()
        self.fresh = False
        yield from self.batches(epoch)


class FixedTable:
    """``batches(epoch)`` for fine-tuning stage 2: the item table stays as given (cached
    encodings; nothing is re-encoded), so a step costs only the histories' forward and
    backward passes."""

    def __init__(self, batches: Callable[[int], Iterable], table: torch.Tensor) -> None:
        self.batches, self.table = batches, table

    def __call__(self, epoch: int):
        yield from self.batches(epoch)


class RecFormerStudy:
    """One RecFormer on one dataset: behaviour tuning, named weight states, evaluation.

    ``states`` starts with ``"vanilla"`` (the untrained model, i.e. the backbone); ``curves``
    collects each training stage's per-step losses (``History.steps``); ``results`` and
    ``costs`` collect what :meth:`evaluate_as` and :meth:`variant` measured, by row label.
    """

    def __init__(self, model: RecFormer, catalogue: TextCatalogue, data: SequenceData, seed: int,
                 device: torch.device | str = "cpu", eval_batch_size: int = 64) -> None:
        self.model, self.catalogue, self.seed, self.device = model, catalogue, seed, device
        self.eval_batch_size = eval_batch_size
        self.train_seqs, self.test_in = data.train_sequences(), data.inputs("test")
        self.valid_in = data.inputs("valid")
        self.budget: list[tuple[str, int, float]] = []   # (stage, training steps, valid score)
        self.steps = 0                                    # training steps of the budget curve
        self.states: dict[str, State] = {"vanilla": clone_state(model)}
        self.curves: dict[str, list[float]] = {}
        self.results: dict[str, EvalResult] = {}
        self.costs: dict[str, dict] = {}

    # --- weights and item tables
    def save_state(self, name: str) -> State:
        self.states[name] = clone_state(self.model)
        return self.states[name]

    def load_state(self, name: str) -> None:
        self.model.load_state_dict(self.states[name])

    def table(self, pooling: str | None = None) -> torch.Tensor:
        """The item table [n_items + 1, H] of the current weights (:func:`encode_items`)."""
        c = self.catalogue
        return encode_items(self.model, c.tokens, c.cls_id, c.pad_id, device=self.device,
                            pooling=pooling)

    def examples(self, n: int | None, per_user: int, pick_seed: int) -> list[tuple[int, int]]:
        """(user, t) training pairs (:func:`training_examples` with the study's seed), ``n`` of them
        sampled with ``pick_seed``."""
        return subsample(training_examples(self.train_seqs, per_user=per_user, seed=self.seed),
                         n, pick_seed)

    def _batches(self, examples: list[tuple[int, int]], batch_size: int, with_items: bool):
        c = self.catalogue
        return example_batches(examples, self.train_seqs, c.tokens, c.cls_id, c.pad_id,
                               self.model.max_items, batch_size, self.seed, with_items=with_items)

    # --- behaviour tuning
    def pretrain(self, examples: list[tuple[int, int]], train: TrainConfig) -> History:
        """Pre-training: every backbone weight + the MLM head, contrastive + MLM loss.

        Batches of ``train.batch_size`` pairs; per-step losses go to ``curves["PT"]``.
        """
        m, mask_id = self.model, self.catalogue.mask_id
        seed_everything(self.seed)
        params = set_trainable_layers(m, "all") + list(m.mlm_transform.parameters()) + [m.mlm_bias]
        for p in params:
            p.requires_grad_(True)
        h = fit(m, self._batches(examples, train.batch_size, with_items=True), train,
                device=self.device, loss_fn=lambda model, b: pretrain_loss(model, b, mask_id),
                params=params, desc="pre-training")
        self.curves["PT"] = h.steps
        return h

    def finetune(self, examples: list[tuple[int, int]], layers, label: str, train: TrainConfig,
                 table: torch.Tensor, start: str | None = "PT", stage: int = 1,
                 valid: Evaluator | None = None) -> tuple[History, list[torch.nn.Parameter]]:
        """Fine-tuning from state ``start`` (None: the current weights) with only ``layers``
        trainable (``"all"``, or layer indices; RecFormer's own embeddings always train).

        ``stage`` 1 (RecFormer's first stage): ``table`` is the first epoch's item table, every
        later epoch re-encodes the catalogue with the current weights. ``stage`` 2: ``table``
        stays fixed (cached item encodings; no item is re-encoded). With ``valid`` (an
        evaluator on the validation split) every epoch is scored on sampled-100 NDCG@10 over
        the epoch's table, the best epoch is kept (``fit``'s selection) and the scores go to
        ``budget`` as (training steps so far, score) points. Per-step losses go to
        ``curves[label]``.
        """
        if start is not None:
            self.load_state(start)
        params = set_trainable_layers(self.model, layers)
        base = self._batches(examples, train.batch_size, with_items=False)
        batches = ReencodedTable(base, table, self.table) if stage == 1 else FixedTable(base, table)
        valid_fn, steps0 = None, self.steps
        if valid is not None:
            def valid_fn(model) -> float:   # stage 1 scores over a table of the current weights
                t = batches.refresh() if stage == 1 else batches.table
                return self.score(valid, t, self.valid_in)
        seed_everything(self.seed)
        h = fit(self.model, batches, train, device=self.device,
                loss_fn=lambda m, b: finetune_loss(m, b, batches.table), params=params,
                valid_fn=valid_fn, desc=f"fine-tune {label}")
        self.curves[label] = h.steps
        if valid is not None:
            per_epoch = -(-len(examples) // train.batch_size)
            self.budget += [(label, steps0 + per_epoch * (e["epoch"] + 1), e["valid"])
                            for e in h.epochs]
            self.steps = steps0 + per_epoch * (h.best_epoch + 1)   # the weights kept
        return h, params

    def score(self, evaluator: Evaluator, table: torch.Tensor, histories=None,
              key: str = "sampled100/NDCG@10") -> float:
        """``key`` of the current weights over ``table`` (inputs: ``histories``, default test)."""
        c = self.catalogue
        r = RecFormerRecommender(self.model, self.test_in if histories is None else histories,
                                 table, c.tokens, c.cls_id, c.pad_id, self.device)
        return evaluator.evaluate(r, batch_size=self.eval_batch_size).metrics()[key]

    def budget_point(self, label: str, steps: int, evaluator: Evaluator, table: torch.Tensor
                     ) -> float:
        """Add one (label, training steps, validation score) point of the budget curve."""
        self.steps = steps
        value = self.score(evaluator, table, self.valid_in)
        self.budget.append((label, steps, value))
        return value

    # --- evaluation
    def recommender(self, table: torch.Tensor) -> RecFormerRecommender:
        """``predict(users)`` of the current weights over ``table``, from the test inputs."""
        c = self.catalogue
        return RecFormerRecommender(self.model, self.test_in, table, c.tokens, c.cls_id, c.pad_id,
                                    self.device)

    def evaluate(self, evaluator: Evaluator, table: torch.Tensor) -> EvalResult:
        return evaluator.evaluate(self.recommender(table), batch_size=self.eval_batch_size)

    def reference(self, label: str, evaluator: Evaluator, recommender) -> EvalResult:
        """A reference row (random, popularity) on the same users, beside the RecFormer rows."""
        self.results[label] = evaluator.evaluate(recommender)
        self.costs[label] = {"train_seconds": 0.0, "trainable": 0, "reference": True}
        return self.results[label]

    def evaluate_as(self, label: str, evaluator: Evaluator, table: torch.Tensor,
                    train_seconds: float = 0.0) -> EvalResult:
        """Evaluate the current weights untuned; the row ``label`` has no trainable weight."""
        self.results[label] = self.evaluate(evaluator, table)
        self.costs[label] = {"train_seconds": train_seconds, "trainable": 0}
        return self.results[label]

    def variant(self, evaluator: Evaluator, examples: list[tuple[int, int]], layers,
                train: TrainConfig, table: torch.Tensor, label: str | None = None,
                stage: int = 1, start: str = "PT", valid: Evaluator | None = None
                ) -> tuple[EvalResult, torch.Tensor]:
        """One row of the layer-freezing table: :meth:`finetune` ``layers`` from ``start``,
        then evaluate. After stage 1 the catalogue is re-encoded with the tuned weights; after
        stage 2 the fixed ``table`` is kept. Returns the result and the item table used."""
        if label is None:
            label = layers if isinstance(layers, str) else ",".join(map(str, layers))
        h, params = self.finetune(examples, layers, label, train, table, start=start,
                                  stage=stage, valid=valid)
        t0 = time.perf_counter()
        tuned = self.table() if stage == 1 else table
        self.results[label] = self.evaluate(evaluator, tuned)
        self.costs[label] = {"train_seconds": h.seconds, "eval_seconds": time.perf_counter() - t0,
                             "trainable": sum(p.numel() for p in params), "stage": stage,
                             "steps": len(h.steps)}
        return self.results[label], tuned

    def budget_table(self) -> pd.DataFrame:
        """The budget curve: one row per (stage, training steps, validation score) point."""
        return pd.DataFrame(self.budget, columns=["stage", "steps", "valid"])

    def random_weights(self, seed: int) -> RecFormer:
        """The control of the attention analyses: a RecFormer of the same shape whose backbone
        has freshly initialised (random) weights (``AutoModel.from_config``, seeded)."""
        backbone = self.model.backbone
        kw = {"add_pooling_layer": backbone.pooler is not None} if hasattr(backbone, "pooler") else {}
        torch.manual_seed(seed)
        bb = type(backbone)(copy.deepcopy(backbone.config), **kw)   # its own random init
        return RecFormer(bb, self.model.config).to(self.device).eval()

    def tuning_seconds(self) -> float:
        """Training + evaluation time of every fine-tuned row."""
        return sum(c.get("train_seconds", 0) + c.get("eval_seconds", 0)
                   for k, c in self.costs.items()
                   if not k.startswith("none") and not c.get("reference"))

    def layer_table(self, keys: Sequence[str], ci_key: str = "sampled100/NDCG@10") -> pd.DataFrame:
        """One row per evaluated label: ``keys`` metrics, trainable parameters, a 95% CI."""
        table = pd.DataFrame({name: {k: r.metrics()[k] for k in keys}
                              for name, r in self.results.items()}).T
        table["trainable params"] = [self.costs[n]["trainable"] for n in self.results]
        table[f"95% CI {ci_key}"] = ["[{:.3f}, {:.3f}]".format(*r.ci(ci_key))
                                       for r in self.results.values()]
        return table


# --- ID models from text-derived item tables (Tables 3-5) ----------------------------------

class ItemInitStudy:
    """SASRec / BERT4Rec with item tables from text-derived vectors, keyed by
    ``(kind, source, mode, seed)`` with mode "trainable" or "freeze".

    Trainable: the vectors PCA-reduced to the model width (:func:`pca_init`); frozen: the full
    vectors, centred and scaled, behind a trainable projection. Every model trains with
    ``train`` until validation ``valid_metric`` (on ``users``) stops improving, and is tested
    with ``evaluator``.
    """

    def __init__(self, data: SequenceData, evaluator: Evaluator, users: np.ndarray,
                 sasrec: SASRecConfig, bert4rec: BERT4RecConfig, train: TrainConfig,
                 device: torch.device | str = "cpu", valid_metric: str = "sampled100/NDCG@10"
                 ) -> None:
        self.data, self.evaluator, self.users, self.device = data, evaluator, users, device
        self.configs = {"SASRec": sasrec, "BERT4Rec": bert4rec}
        self.train_config, self.valid_metric = train, valid_metric
        self.results: dict[tuple, EvalResult] = {}
        self.costs: dict[tuple, dict] = {}
        self.models: dict[tuple, torch.nn.Module] = {}

    def build(self, kind: str, init: torch.Tensor | None, freeze: bool) -> torch.nn.Module:
        """A fresh ``kind`` model ("SASRec" or "BERT4Rec") whose item table starts from ``init``."""
        config = self.configs[kind]
        # trainable: PCA to the model width; frozen: the full PLM vectors behind a trainable projection
        table = None if init is None else pca_init(init.cpu(), None if freeze else config.hidden)
        cls = SASRec if kind == "SASRec" else BERT4Rec
        return cls(self.data.n_items, config, item_init=table, freeze_init=freeze)

    def train(self, model: torch.nn.Module, seed: int, params=None) -> History:
        return fit_sequential(model, self.data, self.train_config, device=self.device, seed=seed,
                              valid_metric=self.valid_metric, valid_users=self.users, params=params)

    def _test(self, key: tuple, model: torch.nn.Module, h: History) -> None:
        self.results[key] = self.evaluator.evaluate(sequence_scorer(model, self.data, "test",
                                                                    self.device))
        self.costs[key] = {"train_seconds": h.seconds, "best_epoch": h.best_epoch,
                           "params": count_parameters(model)}

    def run(self, kind: str, source: str, init: torch.Tensor | None, freeze: bool, seed: int
            ) -> torch.nn.Module:
        """Seed, build, train and test one model; it is kept in ``models``."""
        key = (kind, source, "freeze" if freeze else "trainable", seed)
        seed_everything(seed)
        m = self.build(kind, init, freeze)
        h = self.train(m, seed)
        self._test(key, m, h)
        self.models[key] = m
        return m

    def further_train(self, what: str, seed: int, source: str = "FT") -> None:
        """Continue a copy of the frozen-``source`` SASRec with its table unfrozen: ``"All"``
        trains everything, ``"Emb"`` only the item table."""
        m = copy.deepcopy(self.models[("SASRec", source, "freeze", seed)])
        m.items.table.requires_grad_(True)
        seed_everything(seed)
        h = self.train(m, seed, params=None if what == "All" else [m.items.table])
        self._test(("SASRec", f"{source} further-train ({what})", "trainable", seed), m, h)

    def runs(self, keys: Sequence[str]) -> pd.DataFrame:
        """One row per trained model: model, init, mode, seed, ``keys`` metrics, best epoch."""
        rows = []
        for (kind, source, mode, seed), r in self.results.items():
            rows.append({"model": kind, "init": source, "mode": mode, "seed": seed,
                         **{k: r.metrics()[k] for k in keys},
                         "best epoch": self.costs[(kind, source, mode, seed)]["best_epoch"]})
        return pd.DataFrame(rows)

    def record_methods(self, rec: Recorder, runs: pd.DataFrame) -> None:
        """One ``record_method`` per (model, init, mode): metrics and time averaged over seeds."""
        for (kind, source, mode), g in runs.groupby(["model", "init", "mode"], sort=False):
            key = (kind, source, mode, g["seed"].iloc[0])
            seeds = g["seed"]
            metrics = {k: float(np.mean([self.results[(kind, source, mode, s)].metrics()[k]
                                         for s in seeds]))
                       for k in self.results[key].metrics()}
            tot, tr = self.costs[key]["params"]
            seconds = float(np.mean([self.costs[(kind, source, mode, s)]["train_seconds"]
                                     for s in seeds]))
            rec.record_method(f"{kind} ({source} init, {mode})", metrics, train_seconds=seconds,
                              params_total=tot, params_trainable=tr, n_users=len(self.users),
                              seeds=seeds.tolist())


def mean_metric(runs: pd.DataFrame, source: str, mode: str = "trainable", kind: str = "SASRec",
                key: str = "sampled100/NDCG@10") -> float:
    """Mean of ``key`` over the seeds of one (model, init, mode) of :meth:`ItemInitStudy.runs`."""
    sel = runs[(runs["model"] == kind) & (runs["init"] == source) & (runs["mode"] == mode)]
    return float(sel[key].mean())


def seed_spread(runs: pd.DataFrame, key: str = "sampled100/NDCG@10") -> float:
    """Standard deviation over seeds of random-init trainable SASRec (0 with one seed)."""
    sel = runs[(runs["model"] == "SASRec") & (runs["init"] == "random")
               & (runs["mode"] == "trainable")]
    noise = float(sel[key].std())
    return 0.0 if np.isnan(noise) else noise


def restrict(result: EvalResult, pool: np.ndarray, users: np.ndarray) -> EvalResult:
    """``result`` (over the sorted ``pool`` of users) restricted to ``users`` (a subset)."""
    at = np.searchsorted(pool, users)
    return EvalResult({p: r[at] for p, r in result.ranks.items()}, users, result.ks)
