"""Notebook 02 (LANCER, Jiang et al. 2023): the stages, the ablations, generation and mapping.

The cells of notebook 02 call :class:`LANCERRun` step by step: knowledge prompt (eq. 1-4),
item representations ``h_i`` (eq. 3), reasoning prompt stage 1 for the full model and the two
ablations, stage 2 (LoRA or the whole LM), beam search and item mapping (eq. 6-9), then the
records, the figures and the claims. Every training stage goes through
:func:`recutils.training.fit` (:func:`stage_config` gives its options).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from recutils.batching import seeded_subset, to_device
from recutils.curves import BudgetCurve, reference_rows
from recutils.data.sequences import SequenceData
from recutils.decoding import TokenTrie
from recutils.evaluation import EvalResult, Evaluator, per_user_metric
from recutils.lm import completion_batch
from recutils.models.allmrec import wilson_interval
from recutils.models.lancer import (
    LANCER,
    LANCERConfig,
    item_title,
    knowledge_prompt,
    reasoning_batch,
    title_paths,
)
from recutils.models.sasrec import SASRec, SASRecConfig
from recutils.notebook import Recorder, claim
from recutils.plots import metric_bars
from recutils.progress import track
from recutils.reproducibility import seed_everything
from recutils.training import (
    EpochHook,
    History,
    TrainConfig,
    count_parameters,
    fit,
    fit_sequential,
    sequence_scorer,
)

STAGE1 = ("LANCER (stage 1)", "w/o reasoning prompt", "w/o knowledge prompt")
# variant -> (knowledge-trained prefix and h_i, per-user reasoning slots)
VARIANTS = {"LANCER (stage 1)": (True, True), "w/o reasoning prompt": (True, False),
            "w/o knowledge prompt": (False, True), "LANCER": (True, True)}
PAPER_TABLE2 = {"R@5": (0.0967, 0.1086), "N@5": (0.0624, 0.0712), "R@10": (0.1589, 0.1616),
                "N@10": (0.0823, 0.0884)}  # ML-1M: (SASRec, LANCER)
PAPER_KEYS = {"R@5": "full/HR@5", "N@5": "full/NDCG@5", "R@10": "full/HR@10",
              "N@10": "full/NDCG@10"}
TABLE_KEYS = ["full/HR@5", "full/NDCG@5", "full/HR@10", "full/NDCG@10", "full_masked/HR@10",
              "full_masked/NDCG@10"]
SCORING = "LANCER (candidate scoring)"


def stage_config(epochs: int, lr: float, batch_size: int) -> TrainConfig:
    """A LANCER training stage: AdamW without decay, LR decaying linearly to 0 over all steps
    (the paper's schedule), gradient norm clipped at 1, the epoch picked by the lowest
    validation LM loss, the untrained state included (a stage that does not help is undone)."""
    return TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=0.0,
                       schedule="linear", select="min", eval_before=True, grad_clip=1.0,
                       log_steps=True, amp=False)


@dataclass(frozen=True)
class LANCERSetup:
    """How much of the data each LANCER stage sees, and the stage-2 LM adaptation."""

    knowledge_items: int | None = None  # items whose content text trains the knowledge prompt
    valid_items: int = 32               # held-out items whose title loss selects the epoch
    train_examples: int | None = None   # (history, next item) reasoning examples (None: all)
    chunks: int = 1                     # each pass is cut into this many "epochs" (validation
    #                                     after each: the budget curve; 1 = one epoch per pass)
    valid_users: int = 500              # validation users whose LM loss selects the epoch
    curve_users: int = 0                # of those, users whose validation item is ranked among
    #                                     ``curve_negatives`` sampled unseen items by its title's
    #                                     likelihood before stage 1 and after every chunk of
    #                                     stage 1 and stage 2 (the budget curve; 0: no curve)
    curve_negatives: int = 19           # sampled unseen items per curve user (1 + 19 = 20)
    eval_users: int | None = None       # seeded sample of test users (None: all)
    score_users: int | None = None      # test users of the candidate-scoring protocol (None: all
    #                                     eval users; 0: skip it)
    control_users: int | None = None    # validation users of the controls (None: all)
    eval_batch: int = 8                 # users per validation / generation batch
    description: bool = True            # prepend the item description where the data has one
    ablations: bool = True              # also train the two stage-1 ablations (same budget each)
    lora_r: int = 0                     # stage 2: LoRA rank on q/v (0: tune every LM weight)
    lora_dropout: float = 0.05          # dropout of the LoRA branch
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")  # LM modules that get LoRA


def item_content(items: pd.DataFrame, i: int, description: bool) -> tuple[str, str]:
    """(prompt, completion) of item ``i``: its content text -> its title (eq. 4)."""
    row = items.iloc[i]
    year = None if pd.isna(row["year"]) else int(row["year"])
    return knowledge_prompt(row["title"], year, row["genres"],
                            row["description"] if description else "")


def sample_users(n_users: int, setup: LANCERSetup, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(test users, validation users): sorted seeded samples from one generator, in that order."""
    rng = np.random.default_rng(seed)
    n_eval = n_users if setup.eval_users is None else min(setup.eval_users, n_users)
    eval_users = np.sort(rng.choice(n_users, size=n_eval, replace=False))
    valid_users = np.sort(rng.choice(n_users, size=min(setup.valid_users, n_users), replace=False))
    return eval_users, valid_users


def sasrec_baseline(data: SequenceData, config: SASRecConfig, train: TrainConfig,
                    eval_users: np.ndarray, device, seed: int) -> tuple[SASRec, History, dict, dict]:
    """SASRec on the same truncated sequences: (model, history, results, costs).

    The paper's SASRec (``max_len`` 10, the truncated sequences), evaluated on the generative
    models' sample of test users.
    """
    seed_everything(seed)
    t0 = time.perf_counter()
    sasrec = SASRec(data.n_items, config)
    hist = fit_sequential(sasrec, data, train, device=device, seed=seed, desc="SASRec")
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    score = sequence_scorer(sasrec, data, "test", device)
    results = {"SASRec (paper setting)": Evaluator(data, "test", users=eval_users,
                                                   seed=seed).evaluate(score)}
    costs = {"SASRec (paper setting)": dict(
        train_seconds=train_s, infer=time.perf_counter() - t0, params=count_parameters(sasrec),
        n_users=len(eval_users))}
    return sasrec, hist, results, costs


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(n)`` without a fixed point (``n >= 2``): row
    ``perm[i]`` gets ``perm[i - 1]``, a cycle through a random order."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 elements, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[perm] = np.roll(perm, 1)
    return out


def mean_cosine(x: torch.Tensor) -> float:
    """Mean pairwise cosine similarity of the rows of ``x`` (the diagonal left out)."""
    x = torch.nn.functional.normalize(x, dim=-1)
    s = x @ x.T
    return float((s.sum() - s.diagonal().sum()) / (len(x) * (len(x) - 1)))


def _valid_loss(model: LANCER, batches: list[dict], prefix_of, device) -> float:
    with torch.no_grad():
        return float(np.mean([prefix_of(model, to_device(b, device)).item()
                              for b in batches]))


def _knowledge_loss(model: LANCER, batch: dict) -> torch.Tensor:
    return model.prefix_lm_loss(batch, *model.knowledge_prefix(len(batch["input_ids"])))


def _reasoning_loss(model: LANCER, batch: dict) -> torch.Tensor:
    return model.reasoning_loss(batch)


REFERENCE_COSTS = {"train_seconds": 0.0, "infer": 0.0, "params": (0, 0)}


class LANCERRun:
    """One LANCER experiment on a :class:`SequenceData`: its model, stages and generations.

    The one LM copy is shared by the knowledge role (frozen) and the reasoning role (LoRA or
    full tuning in stage 2); the stage-1 models generate before stage 2 touches the LM.
    Decoding is constrained to the catalogue titles (:class:`~recutils.decoding.TokenTrie`),
    the user's history excluded, so every output is a distinct unseen catalogue item.
    """

    def __init__(self, data: SequenceData, lm, tokenizer, config: LANCERConfig,
                 setup: LANCERSetup, eval_users: np.ndarray, valid_users: np.ndarray,
                 device, seed: int) -> None:
        self.data, self.lm, self.tokenizer, self.cfg, self.setup = data, lm, tokenizer, config, setup
        self.eval_users, self.valid_users, self.device, self.seed = eval_users, valid_users, device, seed
        items = data.items
        self.titles = items["title"].tolist()
        self.genres = [list(g)[:config.max_genres] for g in items["genres"]]  # prompt text
        self.item_names = [item_title(t) if i else "" for i, t in enumerate(self.titles)]
        self.paths = title_paths(tokenizer, self.item_names)
        self.trie = TokenTrie(self.paths, done_token=tokenizer.eos_token_id)
        seed_everything(seed)
        self.model = LANCER(lm, tokenizer, config).to(device)
        self.knowledge_init = self._clone(self.model.knowledge)
        self.slot = slice(-config.max_slots, None) if config.max_slots else slice(None)
        self.stage1 = STAGE1 if setup.ablations else STAGE1[:1]
        # filled by the steps, in order
        self.timer: dict[str, float] = {}
        self.knowledge_history: History | None = None
        self.n_knowledge_items = self.n_encoded = 0
        self.examples: list[tuple[int, int]] = []
        self.reps: dict[bool, torch.Tensor] = {}  # h_i with (True) / without the knowledge prefix
        self.knowledge_trained: dict | None = None  # the knowledge prefix after its training
        self.reasoning_init: dict | None = None  # the untrained reasoning prompt
        self.lm_params: list[torch.nn.Parameter] = []
        self.ranked: dict[str, list[list[int]]] = {}
        self.histories: dict[str, History] = {}
        self.states: dict[str, dict] = {}
        self.generations: dict[str, list[list[str]]] = {}
        self.gen_seconds: dict[str, float] = {}
        self.curve: BudgetCurve | None = None  # stage 2's validation ranking budget curve
        self.train_seqs = data.train_sequences()
        self.valid_in, self.test_in = data.inputs("valid"), data.inputs("test")

    @staticmethod
    def _clone(module: torch.nn.Module) -> dict:
        return {k: v.clone() for k, v in module.state_dict().items()}

    # --- text ----------------------------------------------------------------------------
    def content(self, i: int) -> tuple[str, str]:
        """(prompt, completion) of item ``i`` (:func:`item_content`)."""
        return item_content(self.data.items, i, self.setup.description)

    def batch(self, histories, targets=None, reps: torch.Tensor | None = None) -> dict:
        """A reasoning batch (training with ``targets``, generation without) over ``reps``."""
        c = self.cfg
        return reasoning_batch(self.tokenizer, reps, histories, self.titles, self.genres,
                               targets=targets, max_items=c.max_items, max_slots=c.max_slots,
                               max_length=c.max_length)

    # --- the knowledge prompt (eq. 1-4) --------------------------------------------------
    def knowledge_items(self) -> tuple[np.ndarray, np.ndarray]:
        """(training items, held-out validation items) for the knowledge prompt."""
        train_items = np.unique(np.concatenate(self.train_seqs))
        n = self.setup.knowledge_items
        k_items = train_items if n is None else seeded_subset(
            train_items, min(n, len(train_items)), self.seed)
        rest = np.setdiff1d(train_items, k_items) if len(k_items) < len(train_items) else k_items
        return k_items, rest[:self.setup.valid_items]

    def _knowledge_batches(self, ids: np.ndarray, batch_size: int):
        tok = self.tokenizer

        def make(epoch: int) -> list[dict]:
            order = np.random.default_rng(self.seed + epoch).permutation(ids)
            out = []
            for s in range(0, len(order), batch_size):
                pairs = [self.content(int(i)) for i in order[s:s + batch_size]]
                out.append(completion_batch(tok, [p for p, _ in pairs],
                                            [c + tok.eos_token for _, c in pairs]))
            return out
        return make

    def init_check(self) -> dict[str, float]:
        """Title NLL at step 0 on the held-out knowledge items: the LM alone, under a random
        prefix (the public code's initialisation) and under our anchored initial prefix; and
        the next-title NLL of validation users without a prefix and under the initial user
        prefix (knowledge + reasoning slots)."""
        from recutils.models.lancer import PrefixEncoder

        m = self.model
        m.eval()
        _, valid_items = self.knowledge_items()
        batches = [to_device(b, self.device) for b in
                   self._knowledge_batches(valid_items, self.setup.eval_batch)(0)]
        seed_everything(self.seed)
        rand = PrefixEncoder(self.lm.config, self.cfg.n_prefix, self.cfg.mlp_hidden, 0.0).to(self.device)

        def nll(prefix_of, bs) -> float:
            with torch.no_grad():
                return float(np.mean([m.prefix_lm_loss(b, *prefix_of(b)).item() for b in bs]))

        def ones(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return p, torch.ones(p.shape[:2], dtype=torch.long, device=p.device)

        def users(b: dict):
            return m.user_prefix(b["history_reps"], b["history_mask"])[:2]

        out = {"title NLL, no prefix": nll(lambda b: m.empty_prefix(len(b["input_ids"])), batches),
               "title NLL, random prefix": nll(lambda b: ones(rand(len(b["input_ids"]))), batches),
               "title NLL, initial prefix": nll(lambda b: m.knowledge_prefix(len(b["input_ids"])),
                                                batches)}
        if self.reps:
            vb = [to_device(b, self.device) for b in self._valid_batches(self.reps[True])]
            out["next-title NLL, no prefix"] = nll(lambda b: m.empty_prefix(len(b["input_ids"])), vb)
            out["next-title NLL, initial user prefix"] = nll(users, vb)
        return out

    def train_knowledge(self, train: TrainConfig) -> History:
        """Train the knowledge prefix on the items' content -> title (LM frozen)."""
        k_items, valid_items = self.knowledge_items()
        self.n_knowledge_items = len(k_items)
        valid = self._knowledge_batches(valid_items, train.batch_size)(0)
        hist = fit(self.model, self._knowledge_batches(k_items, train.batch_size), train,
                   loss_fn=_knowledge_loss, params=self.model.knowledge.parameters(),
                   valid_fn=lambda m: _valid_loss(m, valid, _knowledge_loss, self.device),
                   device=self.device, desc="knowledge prompt")
        self.knowledge_history = hist
        self.timer["knowledge_train"] = hist.seconds
        return hist

    # --- item representations h_i (eq. 3) ------------------------------------------------
    def reasoning_examples(self) -> list[tuple[int, int]]:
        """(user, position) pairs of training targets, a seeded sample of ``train_examples``."""
        examples = [(u, t) for u, s in enumerate(self.train_seqs) for t in range(2, len(s))]
        pick = np.random.default_rng(self.seed).permutation(len(examples))
        n = self.setup.train_examples
        return [examples[i] for i in (pick if n is None else pick[:n])]

    def embed_items(self) -> dict[str, float]:
        """h_i with the knowledge prefix (and without it, for the no-knowledge ablation) of
        every item that appears in a history slot we use; returns the mean pairwise cosine."""
        self.examples = self.reasoning_examples()
        slot = self.slot
        needed = set()
        for u, t in self.examples:
            needed.update(self.train_seqs[u][:t][slot].tolist())
        for u in self.valid_users:
            needed.update(self.valid_in[u][slot].tolist())
        for u in self.eval_users:
            needed.update(self.test_in[u][slot].tolist())
        needed = np.array(sorted(needed))
        texts = [" ".join(self.content(int(i))) for i in needed]
        out = {}
        for prefix, key in ((True, "item_reps"), (False, "item_reps_no_knowledge")):
            if not prefix and not self.setup.ablations:
                continue
            t0 = time.perf_counter()
            reps = torch.zeros(self.data.n_items + 1, self.lm.config.hidden_size)
            reps[needed] = self.model.embed_titles(texts, with_prefix=prefix, progress=True).cpu()
            self.timer[key] = time.perf_counter() - t0
            self.reps[prefix] = reps
            out["with" if prefix else "without"] = mean_cosine(reps[needed][:300])
        self.n_encoded = len(needed)
        return out

    # --- the reasoning prompt (eq. 5): variants and stages ---------------------------------
    def set_variant(self, name: str, trained: bool = True) -> torch.Tensor:
        """Put the model in variant ``name`` (fresh reasoning prompt, or its trained state);
        return the item representations the variant uses."""
        knowledge, reasoning = VARIANTS[name]
        self.model.knowledge.load_state_dict(self.knowledge_trained if knowledge
                                             else self.knowledge_init)
        self.model.reasoning.load_state_dict(self.reasoning_init)
        self.model.use_reasoning = reasoning
        if trained and name in self.states:
            self.model.load_state_dict(self.states[name], strict=False)
        return self.reps[knowledge]

    def _reasoning_batches(self, reps: torch.Tensor, batch_size: int):
        """Epoch ``e`` = chunk ``e % chunks`` of pass ``e // chunks`` over the examples."""
        ex, seqs, chunks = self.examples, self.train_seqs, max(1, self.setup.chunks)

        def make(epoch: int) -> list[dict]:
            order = np.random.default_rng(self.seed + 100 + epoch // chunks).permutation(len(ex))
            part = np.array_split(order, chunks)[epoch % chunks]
            out = []
            for s in range(0, len(part), batch_size):
                chunk = [ex[i] for i in part[s:s + batch_size]]
                out.append(self.batch([seqs[u][:t] for u, t in chunk],
                                      [int(seqs[u][t]) for u, t in chunk], reps))
            return out
        return make

    def _valid_batches(self, reps: torch.Tensor) -> list[dict]:
        users, n = self.valid_users, self.setup.eval_batch
        targets = self.data.targets("valid")
        return [self.batch([self.valid_in[u] for u in users[s:s + n]],
                           [int(targets[u]) for u in users[s:s + n]], reps)
                for s in range(0, len(users), n)]

    def _valid_fn(self, reps: torch.Tensor):
        batches = self._valid_batches(reps)
        return lambda m: _valid_loss(m, batches, _reasoning_loss, self.device)

    def _train_reasoning(self, name: str, train: TrainConfig, params, reps,
                         callbacks=()) -> History:
        hist = fit(self.model, self._reasoning_batches(reps, train.batch_size), train,
                   loss_fn=_reasoning_loss, params=params, valid_fn=self._valid_fn(reps),
                   device=self.device, desc=name, callbacks=callbacks)
        self.histories[name] = hist
        self.states[name] = {k: v.clone() for k, v in self.model.state_dict().items()
                             if not k.startswith("lm.")}
        return hist

    def train_stage1(self, train: TrainConfig) -> dict[str, History]:
        """Stage 1 of the full model (and of both ablations with ``setup.ablations``; same
        budget each): prefixes and attention only, the LM frozen."""
        self.knowledge_trained = self._clone(self.model.knowledge)
        self.reasoning_init = self._clone(self.model.reasoning)
        before = self.timer.get("ranking_curve", 0.0)
        for name in self.stage1:
            seed_everything(self.seed)
            reps = self.set_variant(name, trained=False)
            params = list(self.model.knowledge.parameters()) + (
                list(self.model.reasoning.parameters()) if self.model.use_reasoning else [])
            hooks = self._curve_hooks(reps, 0.0, point_now=True) if name == self.stage1[0] else []
            self._train_reasoning(name, train, params, reps, hooks)
        curve_in_fit = self.timer.get("ranking_curve", 0.0) - before
        self.timer["reasoning_stage1"] = (sum(self.histories[n].seconds for n in self.stage1)
                                          - curve_in_fit)
        return {n: self.histories[n] for n in self.stage1}

    def _curve_hooks(self, reps: torch.Tensor, start: float, point_now: bool = False
                     ) -> list[EpochHook]:
        """With ``setup.curve_users``: an epoch hook that adds a budget-curve point after every
        chunk, ``start`` examples having been seen before (and, with ``point_now``, one point
        at ``start`` first). The curve's scoring is timed apart (``timer["ranking_curve"]``)."""
        if not self.setup.curve_users:
            return []
        if self.curve is None:
            n = self.setup.curve_negatives
            self.curve = BudgetCurve(self.curve_evaluator(), "examples",
                                     keys=(f"sampled{n}/HR@5", f"sampled{n}/NDCG@10"))
        per = len(self.examples) / max(1, self.setup.chunks)
        if point_now:
            self._curve_point(reps, start)
        return [EpochHook(lambda m, row: self._curve_point(reps, start + (row["epoch"] + 1) * per))]

    def add_lm_adapter(self) -> list[torch.nn.Parameter]:
        """Make the LM trainable for stage 2: LoRA (``setup.lora_r > 0``) or every weight."""
        s = self.setup
        if s.lora_r:
            from peft import LoraConfig, inject_adapter_in_model

            inject_adapter_in_model(LoraConfig(r=s.lora_r, lora_alpha=2 * s.lora_r,
                                               lora_dropout=s.lora_dropout,
                                               target_modules=list(s.lora_targets)), self.lm)
            lm_params = [p for n, p in self.lm.named_parameters() if "lora_" in n]
        else:
            lm_params = list(self.lm.parameters())
        for p in lm_params:
            p.requires_grad_(True)
        self.lm_params = lm_params
        return lm_params

    def train_stage2(self, train: TrainConfig) -> History:
        """Stage 2 of the full model: the stage-1 prefixes plus the LM (LoRA or full)."""
        self.set_variant("LANCER (stage 1)")
        lm_params = self.add_lm_adapter()
        seed_everything(self.seed)
        params = (list(self.model.knowledge.parameters())
                  + list(self.model.reasoning.parameters()) + lm_params)
        reps = self.reps[True]
        before = self.timer.get("ranking_curve", 0.0)
        hooks = self._curve_hooks(reps, self.n_stage1)  # stage 2 starts from the selected epoch
        hist = self._train_reasoning("LANCER", train, params, reps, hooks)
        curve_in_fit = self.timer.get("ranking_curve", 0.0) - before
        self.timer["reasoning_stage2"] = hist.seconds - curve_in_fit
        return hist

    @property
    def n_stage1(self) -> float:
        """Reasoning examples the main stage-1 run has seen (all its chunks)."""
        per = len(self.examples) / max(1, self.setup.chunks)
        return len(self.histories[self.stage1[0]].epochs) * per

    @property
    def n_selected(self) -> float:
        """Reasoning examples seen by the model kept after stage 2 (its selected epoch; -1,
        the stage-2 start, when no stage-2 epoch beat it)."""
        per = len(self.examples) / max(1, self.setup.chunks)
        return self.n_stage1 + (self.histories["LANCER"].best_epoch + 1) * per

    def ranking_curve(self) -> pd.DataFrame:
        """The budget curve: validation HR@5 / NDCG@10 of the target among 1 + ``curve_negatives``
        sampled unseen items (title likelihood) vs reasoning examples seen (stage 1, then
        stage 2), with the random list and popularity on the same users and candidates
        (:meth:`recutils.curves.BudgetCurve.table`)."""
        return self.curve.table(self.seed, method="LANCER")

    def ranking_curve_figure(self, curve: pd.DataFrame):
        """The budget curve: LANCER's validation metrics vs examples, references flat, the
        stage boundary dotted."""
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
        n, c = len(self.curve.evaluator.users), 1 + self.setup.curve_negatives
        for ax, key in zip(axes, self.curve.keys):
            self.curve.plot(curve, key, ax=ax, xlabel="reasoning examples seen (stage 1, stage 2)",
                            title=f"Budget curve: target among {c} ({n} validation users)")
            ax.axvline(self.n_stage1, color="grey", ls=":", lw=1)
            kept = curve[(curve["method"] == "LANCER")
                         & (curve["examples"] == int(round(self.n_selected)))]
            ax.plot(kept["examples"], kept[key], "k*", ms=11, label="kept (lowest valid. NLL)")
            ax.legend(fontsize=7)
        fig.tight_layout()
        return fig

    def budget(self) -> pd.DataFrame:
        """Validation next-title NLL after each chunk of each stage vs training examples seen."""
        rows, per = [], len(self.examples) / max(1, self.setup.chunks)
        for name, h in self.histories.items():
            for e, v in enumerate([h.before["valid"]] + h.column("valid")):
                rows.append({"stage": name, "examples": int(round(e * per)), "valid NLL": v})
        return pd.DataFrame(rows)

    # --- generation (eq. 6-7, constrained) and evaluation -------------------------------------
    def _beam_lists(self, users: np.ndarray, inputs, reps: torch.Tensor, desc: str):
        """Constrained beam search for ``users`` on their ``inputs`` (history excluded):
        (ranked item lists, generated texts)."""
        items, texts, n = [], [], self.setup.eval_batch
        for s in track(range(0, len(users), n), desc, unit="batch"):
            part = users[s:s + n]
            b = to_device(self.batch([inputs[u] for u in part], reps=reps), self.device)
            its, txt = self.model.beam_search(b, self.trie, exclude=[inputs[u] for u in part])
            items += [i[:self.cfg.top_k] for i in its]
            texts += txt
        return items, texts

    def generate(self, name: str) -> list[list[int]]:
        """Constrained beam search for every sampled test user under variant ``name``: the
        ranked unseen catalogue items (texts in ``generations``)."""
        reps = self.set_variant(name)
        t0 = time.perf_counter()
        items, texts = self._beam_lists(self.eval_users, self.test_in, reps, f"beam search: {name}")
        self.gen_seconds[name] = time.perf_counter() - t0
        self.generations[name], self.ranked[name] = texts, items
        return items

    def curve_evaluator(self) -> Evaluator:
        """The validation users of the budget curve (the first ``curve_users``), each with
        ``curve_negatives`` sampled unseen items."""
        return Evaluator(self.data, "valid", protocols=(f"sampled{self.setup.curve_negatives}",),
                         users=self.valid_users[:self.setup.curve_users], seed=self.seed)

    def _curve_point(self, reps: torch.Tensor, examples: float) -> dict:
        """One point of the budget curve: the model as it is (left in its training mode),
        after ``examples`` examples, ranking each curve user's validation target among the
        sampled candidates by the title's log-likelihood."""
        t0, was = time.perf_counter(), self.model.training
        ev, n_neg = self.curve.evaluator, self.setup.curve_negatives
        with torch.no_grad():
            ranks, _ = self._candidate_ranks(ev, [self.valid_in[u] for u in ev.users], n_neg,
                                             reps, desc="budget curve")
        self.model.train(was)
        self.timer["ranking_curve"] = self.timer.get("ranking_curve", 0.0) + time.perf_counter() - t0
        return self.curve.add_result(int(round(examples)),
                                     EvalResult({f"sampled{n_neg}": ranks}, ev.users.copy()))

    def evaluate(self, evaluator: Evaluator) -> dict[str, EvalResult]:
        """Every generated variant's ranked lists on ``evaluator`` (its users = eval_users)."""
        return {name: evaluator.evaluate_ranked(r) for name, r in self.ranked.items()}

    def list_stats(self, name: str = "LANCER") -> dict[str, float]:
        """Validity and diversity of the lists: share of catalogue items, of history items,
        distinct items over all lists, mean pairwise overlap (Jaccard) of two users' lists."""
        lists = self.ranked[name]
        flat = [i for r in lists for i in r]
        hist = [set(self.test_in[u].tolist()) for u in self.eval_users]
        sets = [set(r) for r in lists]
        rng = np.random.default_rng(self.seed)
        pairs = rng.integers(0, len(sets), size=(500, 2))
        jac = [len(sets[a] & sets[b]) / max(1, len(sets[a] | sets[b])) for a, b in pairs if a != b]
        return {"items per list": float(np.mean([len(r) for r in lists])),
                "catalogue items": float(np.mean([1 <= i <= self.data.n_items for i in flat])),
                "history items": float(np.mean([i in h for r, h in zip(lists, hist) for i in r])),
                "distinct items in all lists": len(set(flat)),
                "mean Jaccard overlap of two users' lists": float(np.mean(jac)) if jac else 0.0}

    def candidate_scoring(self, n_neg: int = 100) -> tuple[Evaluator, EvalResult]:
        """A different protocol: rank the target and ``n_neg`` sampled unseen items by the LM's
        log-likelihood of each title given the user's prompt (the LANCER model, prompt
        cache reused). Returns the evaluator of those users (same negatives) and the result."""
        n = self.setup.score_users
        users = self.eval_users if n is None else seeded_subset(
            self.eval_users, min(n, len(self.eval_users)), self.seed)
        ev = Evaluator(self.data, "test", protocols=(f"sampled{n_neg}",), users=users,
                       seed=self.seed)
        reps = self.set_variant("LANCER")
        t0 = time.perf_counter()
        ranks, _ = self._candidate_ranks(ev, [self.test_in[u] for u in users], n_neg, reps)
        self.gen_seconds[SCORING] = time.perf_counter() - t0
        return ev, EvalResult({f"sampled{n_neg}": ranks}, users.copy())

    def _candidate_ranks(self, ev: Evaluator, histories, n_neg: int, reps: torch.Tensor,
                         desc: str = "candidate scoring") -> tuple[np.ndarray, np.ndarray]:
        """(rank of each of ``ev``'s targets among its ``n_neg`` negatives by the title's
        log-likelihood, the target title's log-likelihood), the prompt of user row ``r``
        built from ``histories[r]``."""
        neg, targets, b = ev.negatives[n_neg], ev.targets, self.setup.eval_batch
        ranks, target_ll = [], []
        for s in track(range(0, len(ev.users), b), desc, unit="batch"):
            batch = to_device(self.batch(histories[s:s + b], reps=reps), self.device)
            cands = [[int(targets[r])] + neg[r].tolist()
                     for r in range(s, min(s + b, len(ev.users)))]
            for sc in self.model.score_candidates(batch, cands, self.paths):
                ranks.append(int((sc[1:] >= sc[0]).sum()))  # ties rank the target behind
                target_ll.append(float(sc[0]))
        return np.array(ranks), np.array(target_ll)

    # --- ruling out a bug ---------------------------------------------------------------
    def overfit_check(self, n_examples: int = 16, epochs: int = 20, lr: float = 3e-3,
                      batch_size: int = 8) -> dict[str, float]:
        """Overfit ``n_examples`` training examples (distinct users, fixed batches): the
        stage-1 parameters (knowledge prefix and reasoning prompt, LM frozen) trained
        ``epochs`` passes must drive their next-title loss towards 0 and beam search must then
        list each target first. The prefixes are restored afterwards (no effect on the run)."""
        seen, picked = set(), []
        for u, t in self.examples:
            if u not in seen:
                seen.add(u)
                picked.append((u, t))
        picked = picked[:n_examples]
        hists = [self.train_seqs[u][:t] for u, t in picked]
        targets = [int(self.train_seqs[u][t]) for u, t in picked]
        reps = self.reps[True]
        batches = [self.batch(hists[s:s + batch_size], targets[s:s + batch_size], reps)
                   for s in range(0, len(picked), batch_size)]
        saved = {"knowledge": self._clone(self.model.knowledge),
                 "reasoning": self._clone(self.model.reasoning)}
        was_reasoning, self.model.use_reasoning = self.model.use_reasoning, True
        seed_everything(self.seed)
        self.model.eval()  # the losses without dropout (fit trains with it)
        before = _valid_loss(self.model, batches, _reasoning_loss, self.device)
        cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=0.0,
                          grad_clip=1.0, log_steps=True, amp=False, progress=False)
        params = list(self.model.knowledge.parameters()) + list(self.model.reasoning.parameters())
        hist = fit(self.model, lambda e: batches, cfg, loss_fn=_reasoning_loss, params=params,
                   device=self.device, desc="overfit")
        self.model.eval()
        after = _valid_loss(self.model, batches, _reasoning_loss, self.device)
        lists = []
        for s in range(0, len(picked), batch_size):
            b = to_device(self.batch(hists[s:s + batch_size], reps=reps), self.device)
            lists += self.model.beam_search(b, self.trie, exclude=hists[s:s + batch_size])[0]
        self.model.knowledge.load_state_dict(saved["knowledge"])
        self.model.reasoning.load_state_dict(saved["reasoning"])
        self.model.use_reasoning = was_reasoning
        return {"examples": len(picked), "steps": len(hist.steps), "seconds": hist.seconds,
                "next-title NLL before": before, "next-title NLL after": after,
                "HR@1 (beam search)": float(np.mean([bool(r) and r[0] == t
                                                     for r, t in zip(lists, targets)])),
                "HR@10 (beam search)": float(np.mean([t in r[:10]
                                                      for r, t in zip(lists, targets)]))}

    def history_control(self, n_neg: int = 19) -> tuple[dict[str, EvalResult], dict[str, np.ndarray],
                                   dict[str, EvalResult]]:
        """Controls that remove the signal, on the first ``setup.control_users`` validation users (never
        test): the trained LANCER scores the validation target among ``n_neg`` sampled unseen
        items (candidate scoring) with (a) the user's own history, (b) another validation
        user's history (a seeded derangement: prompt text and reasoning slots both come from
        someone else) and (c) its own history without the reasoning slots. Returns the ranks
        per row, the target title's log-likelihood per user and row, and the random-list and
        popularity rows on the same users and negatives."""
        n = self.setup.control_users
        users = self.valid_users[:n] if n else self.valid_users
        ev = Evaluator(self.data, "valid", protocols=(f"sampled{n_neg}",), users=users,
                       seed=self.seed)
        other = derangement(len(users), self.seed)
        own = [self.valid_in[u] for u in users]
        rows = {"own history": (own, True), "another user's history": (
            [own[j] for j in other], True), "own history, no reasoning slots": (own, False)}
        reps = self.set_variant("LANCER")
        out, loglik, t0 = {}, {}, time.perf_counter()
        for name, (hists, reasoning) in rows.items():
            self.model.use_reasoning = reasoning
            ranks, loglik[name] = self._candidate_ranks(ev, hists, n_neg, reps, f"control: {name}")
            out[name] = EvalResult({f"sampled{n_neg}": ranks}, users.copy())
        self.set_variant("LANCER")
        self.timer["controls"] = time.perf_counter() - t0
        return out, loglik, reference_rows(self.data, ev, self.seed)

    # --- records ---------------------------------------------------------------------------
    def record_methods(self, rec: Recorder, results: dict[str, EvalResult], costs: dict,
                       skip: tuple[str, ...] = ()) -> None:
        """One method record per row but ``skip`` (training seconds, inference cost, sizes);
        ``costs`` holds those of the non-LANCER rows by name (random and popularity: zero)."""
        lora = sum(p.numel() for n, p in self.lm.named_parameters() if "lora_" in n)
        trainable = (sum(p.numel() for p in self.model.knowledge.parameters())
                     + sum(p.numel() for p in self.model.reasoning.parameters()) + lora)
        total = sum(p.numel() for p in self.lm.parameters()) + trainable - lora
        for name, r in results.items():
            if name in skip:
                continue
            if name in costs or name in ("Random list", "Popularity"):
                c = costs.get(name, REFERENCE_COSTS)
                rec.record_method(name, r.metrics(), train_seconds=c["train_seconds"],
                                  infer_seconds_per_user=c["infer"] / max(1, len(r.users)),
                                  params_total=c["params"][0], params_trainable=c["params"][1],
                                  n_users=len(r.users))
                continue
            base = "LANCER" if name == SCORING else name
            train_s = self.timer["knowledge_train"] + self.timer["item_reps"]
            train_s += self.timer.get("item_reps_no_knowledge", 0) if base == STAGE1[2] else 0
            train_s += self.histories[base].seconds if base in self.histories else 0
            if base == "LANCER":
                train_s += self.histories["LANCER (stage 1)"].seconds
            rec.record_method(name, r.metrics(), train_seconds=train_s,
                              infer_seconds_per_user=self.gen_seconds[name] / len(r.users),
                              params_total=total, params_trainable=trainable,
                              n_users=len(r.users),
                              protocol="candidate scoring" if name == SCORING else "generation")

    # --- figures ---------------------------------------------------------------------------
    def case_users(self) -> list[int]:
        """Up to three sample positions: the first two with a top-10 hit, then misses."""
        targets = self.data.targets("test")
        hits = [i for i, r in enumerate(self.ranked["LANCER"])
                if targets[self.eval_users[i]] in r[:10]]
        misses = [i for i in range(len(self.eval_users)) if i not in hits]
        return (hits[:2] + misses)[:3]

    def case_study_figure(self, cases: list[int]):
        """The paper's Fig. 3: history, top-5 generated titles (catalogue items), target."""
        names, targets = self.item_names, self.data.targets("test")
        fig, axes = plt.subplots(1, len(cases), figsize=(6 * len(cases), 4.6))
        for ax, i in zip(np.atleast_1d(axes), cases):
            u = self.eval_users[i]
            target = int(targets[u])
            ranked = self.ranked["LANCER"][i]
            lines = [("History (last 6): ", "black")]
            lines += [("  " + names[j][:40], "dimgray") for j in self.test_in[u][-6:]]
            lines += [("Top-5 generated (catalogue items)", "black")]
            for j, m in enumerate(ranked[:5]):
                lines.append((f"{j + 1}. {names[m][:40]}", "green" if m == target else "firebrick"))
            rank = ranked.index(target) + 1 if target in ranked else None
            lines += [(f"Target: {names[target][:36]}"
                       + (f" (rank {rank})" if rank else " (not in top 10)"), "black")]
            for k, (txt, col) in enumerate(lines):
                ax.text(0.0, 0.95 - k * 0.07, txt, color=col, fontsize=9, family="monospace",
                        transform=ax.transAxes,
                        weight="bold" if col in ("black", "green") else "normal")
            ax.set_axis_off()
            ax.set_title(f"user {self.data.user_ids[u]}", loc="left")
        return fig

    def attention(self, users: np.ndarray, name: str = "LANCER") -> list[np.ndarray]:
        """Reasoning attention [slots, knowledge tokens] of ``users`` under variant ``name``."""
        reps = self.set_variant(name)
        out = []
        for u in users:
            b = self.batch([self.test_in[u]], reps=reps)
            with torch.no_grad():
                _, _, attn = self.model.user_prefix(b["history_reps"].to(self.device),
                                                    b["history_mask"].to(self.device))
            out.append(attn[0].float().cpu().numpy())
        return out

    def attention_stats(self, name: str = "LANCER", n: int = 50) -> dict[str, float]:
        """How far the attention is from uniform: mean max weight x n_tokens (1 = uniform) and
        the mean entropy / log(n_tokens) (1 = uniform), over ``n`` test users' slots."""
        att = np.concatenate(self.attention(self.eval_users[:n], name))
        k = att.shape[1]
        ent = -(att * np.log(att + 1e-12)).sum(1) / np.log(k)
        return {"max weight x n_tokens": float(att.max(1).mean() * k),
                "entropy / log(n_tokens)": float(ent.mean())}

    def attention_figure(self, cases: list[int], name: str = "LANCER"):
        """Reasoning attention of the trained model: history items over knowledge tokens."""
        users = [self.eval_users[i] for i in cases]
        fig, axes = plt.subplots(1, len(cases), figsize=(5.3 * len(cases), 3.8))
        for ax, u, att in zip(np.atleast_1d(axes), users, self.attention(np.array(users), name)):
            slot_items = self.test_in[u][self.slot]  # the items with a reasoning slot
            if att.shape[0] != len(slot_items):
                raise RuntimeError(f"{att.shape[0]} slots for {len(slot_items)} items")
            im = ax.imshow(att, aspect="auto", cmap="viridis")
            ax.set_yticks(range(len(slot_items)), [self.item_names[j][:22] for j in slot_items],
                          fontsize=7)
            ax.set_xlabel(f"knowledge token (uniform = {1 / att.shape[1]:.3f})")
            ax.set_title(f"user {self.data.user_ids[u]}", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.04)
        fig.suptitle(f"Reasoning attention of {name}: history items (queries) over knowledge "
                     "tokens (keys/values)")
        fig.tight_layout()
        return fig

    def training_figure(self):
        """Per-step losses of every stage and the budget curve (validation NLL vs examples)."""
        fig, axes = plt.subplots(1, 3, figsize=(15, 3.4))
        axes[0].plot(self.knowledge_history.steps)
        axes[0].set(xlabel="step", ylabel="title NLL",
                    title="Knowledge prompt (LM loss on the title)")
        for name, h in self.histories.items():
            axes[1].plot(h.steps, label=name, alpha=0.8)
        budget = self.budget()
        for name, part in budget.groupby("stage", sort=False):
            axes[2].plot(part["examples"], part["valid NLL"], marker="o", label=name)
        axes[1].set(xlabel="step", ylabel="next-title NLL", title="Reasoning training")
        axes[2].set(xlabel="training examples seen in the stage", ylabel="validation NLL",
                    title="Budget curve (validation next-title NLL)")
        axes[1].legend(fontsize=7)
        axes[2].legend(fontsize=7)
        fig.tight_layout()
        return fig


def stage_summary(hist: History) -> str:
    """``seconds, validation loss before -> best (best epoch k; 0 = before: the stage undone)``."""
    best = hist.best_epoch + 1  # History: -1 = before; printed as 0 = before, k = after epoch k
    return (f"{hist.seconds:.0f} s, {len(hist.steps)} steps, validation loss "
            f"{hist.before['valid']:.3f} -> "
            f"{min([hist.before['valid']] + hist.column('valid')):.3f} (best epoch {best}; "
            "0 = before: the stage undone)")


def interval(r: EvalResult, key: str) -> tuple[float, float]:
    """95% interval of ``"protocol/metric"``: Wilson for hit rates (sensible at 0 hits), the
    normal approximation of the mean otherwise."""
    protocol, metric = key.split("/")
    if metric.startswith("HR@"):
        return wilson_interval(per_user_metric(r.ranks[protocol], metric))
    return r.ci(key)


def separable(a: EvalResult, b: EvalResult, key: str) -> str:
    """"above" / "below" when the 95% intervals of ``a`` and ``b`` do not overlap, else
    "not separable at this scale"."""
    (lo_a, hi_a), (lo_b, hi_b) = interval(a, key), interval(b, key)
    if lo_a > hi_b:
        return "above"
    if hi_a < lo_b:
        return "below"
    return "not separable at this scale"


def paired_difference(a: EvalResult, b: EvalResult, key: str) -> tuple[float, float, float]:
    """Mean per-user difference ``a - b`` of ``"protocol/metric"`` on the same users, with its
    95% normal-approximation interval: (mean, lo, hi)."""
    if not np.array_equal(a.users, b.users):
        raise ValueError("a paired difference needs the same users in the same order")
    protocol, metric = key.split("/")
    return paired_mean(per_user_metric(a.ranks[protocol], metric)
                       - per_user_metric(b.ranks[protocol], metric))


def paired_mean(d: np.ndarray) -> tuple[float, float, float]:
    """Mean of per-user differences ``d`` with its 95% normal-approximation interval."""
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def control_table(rows: dict[str, EvalResult], loglik: dict[str, np.ndarray],
                  references: dict[str, EvalResult], n_neg: int = 19) -> pd.DataFrame:
    """The controls of :meth:`LANCERRun.history_control` beside the random list and
    popularity on the same users: HR@10 / NDCG@10 with 95% intervals, the paired NDCG@10
    difference from the own-history row (interval above 0: the control hurts), the mean
    log-likelihood of the target title and its paired difference from the own-history row."""
    key = f"sampled{n_neg}/NDCG@10"
    table = results_table(rows | references, [f"sampled{n_neg}/HR@10", key])
    own, fmt = rows["own history"], "{:+.4f} [{:+.3f}, {:+.3f}]"
    diff, ll_diff = {}, {}
    for name, r in rows.items():
        if name != "own history":
            diff[name] = fmt.format(*paired_difference(own, r, key))
            ll_diff[name] = fmt.format(*paired_mean(loglik["own history"] - loglik[name]))
    table["own minus this row, NDCG@10"] = [diff.get(n, "") for n in table.index]
    table["target title log-lik."] = [f"{loglik[n].mean():.3f}" if n in loglik else ""
                                      for n in table.index]
    table["own minus this row, log-lik."] = [ll_diff.get(n, "") for n in table.index]
    return table


def results_table(results: dict[str, EvalResult], keys: list[str] | None = None) -> pd.DataFrame:
    """Metrics with their 95% intervals ("value [lo, hi]") and the number of users."""
    keys = keys or TABLE_KEYS
    rows = {}
    for n, r in results.items():
        m = r.metrics()
        rows[n] = {k.replace("HR@", "R@"): "{:.4f} [{:.3f}, {:.3f}]".format(m[k], *interval(r, k))
                   for k in keys}
        rows[n]["users"] = len(r.users)
    return pd.DataFrame(rows).T


def metrics_figure(results: dict[str, EvalResult], n_users: int, show: list[str]):
    """Bars of R/N@5,10 (full ranking) with 95% interval half-widths for the ``show`` rows."""
    def short(k: str) -> str:
        return k.replace("full/", "").replace("HR", "R")

    def half_width(r: EvalResult, k: str) -> float:
        lo, hi = interval(r, k)
        return (hi - lo) / 2

    keys = list(PAPER_KEYS.values())
    vals = pd.DataFrame({n: {short(k): results[n].metrics()[k] for k in keys} for n in show}).T
    errs = pd.DataFrame({n: {short(k): half_width(results[n], k) for k in keys} for n in show}).T
    fig, ax = plt.subplots(figsize=(10, 3.6))
    metric_bars(vals, errors=errs, ax=ax, ylabel="full ranking",
                title=f"LANCER and the reference rows on {n_users} test users (95% intervals)")
    return fig


def claims(results: dict[str, EvalResult], stats: dict[str, float],
           scoring: dict[str, EvalResult] | None = None) -> list[dict]:
    """The claim rows: LANCER vs SASRec (Table 2), vs random and popularity on the same users,
    the ablations (when trained), valid distinct items, and the candidate-scoring protocol."""
    lancer, sasrec = results["LANCER"], results["SASRec (paper setting)"]
    rows = []
    for m, (p_s, p_l) in PAPER_TABLE2.items():
        key = PAPER_KEYS[m]
        ours_l, ours_s = lancer.metrics()[key], sasrec.metrics()[key]
        sep = separable(lancer, sasrec, key)
        rows.append(claim(f"LANCER beats SASRec on {m} (full ranking)",
                          f"{p_l:.4f} vs {p_s:.4f} (ML-1M)",
                          f"{ours_l:.4f} vs {ours_s:.4f} ({len(lancer.users)} users)",
                          sep == "above", sep, separable=not sep.startswith("not")))
    for ref in ("Random list", "Popularity"):
        for key in ("full_masked/HR@10", "full_masked/NDCG@10"):
            a, b = lancer.metrics()[key], results[ref].metrics()[key]
            sep = separable(lancer, results[ref], key)
            rows.append(claim(f"LANCER is above the {ref.lower()} ({key.split('/')[1]}, history "
                              "removed)", "implied (SASRec row)", f"{a:.4f} vs {b:.4f}",
                              sep == "above", sep, separable=not sep.startswith("not")))
    if "w/o knowledge prompt" in results:
        full = results["LANCER (stage 1)"]
        for abl in ("w/o knowledge prompt", "w/o reasoning prompt"):
            key = "full/NDCG@10"
            sep = separable(full, results[abl], key)
            rows.append(claim(f"The {abl.split('/o ')[1]} helps (stage 1 vs {abl}, NDCG@10)",
                              "implied by the method",
                              f"{full.metrics()[key]:.4f} vs {results[abl].metrics()[key]:.4f}",
                              sep == "above", sep, separable=not sep.startswith("not")))
    rows.append(claim("Generated texts are real titles in almost all cases (Fig. 3)",
                      "'almost all'", f"{stats['catalogue items']:.1%} catalogue items, "
                      f"{stats['history items']:.1%} history items (trie decoding)",
                      stats["catalogue items"] == 1.0 and stats["history items"] == 0.0,
                      "by construction: decoding is constrained to unseen catalogue titles"))
    if scoring:
        key = "sampled100/NDCG@10"
        s, pop = scoring[SCORING], scoring["Popularity"]
        sep = separable(s, scoring["Random list"], key)
        rows.append(claim("LANCER's title likelihood ranks the target above chance (sampled 100, "
                          "a different protocol)", "not in the paper",
                          f"{s.metrics()[key]:.4f} vs random {scoring['Random list'].metrics()[key]:.4f}"
                          f", popularity {pop.metrics()[key]:.4f} ({len(s.users)} users)",
                          sep == "above", sep, separable=not sep.startswith("not")))
    return rows


def sanity_claims(overfit: dict[str, float], control: dict[str, EvalResult],
                  loglik: dict[str, np.ndarray], init_nll: dict[str, float],
                  n_neg: int = 19) -> list[dict]:
    """The claim rows of the checks that rule out a bug: step 0 (the initial prefix vs none),
    overfitting a handful of training users, and the controls that remove the signal
    (another user's history, no reasoning slots) under validation candidate scoring."""
    rows = [claim("Step 0: the initial prefix does not damage the frozen LM (title NLL)",
                  "not in the paper (random init)",
                  f"{init_nll['title NLL, initial prefix']:.3f} vs no prefix "
                  f"{init_nll['title NLL, no prefix']:.3f}, random prefix "
                  f"{init_nll['title NLL, random prefix']:.3f}",
                  init_nll["title NLL, initial prefix"] < init_nll["title NLL, random prefix"],
                  "held-out items, before any training"),
             claim(f"The stage-1 model can overfit {overfit['examples']} training users",
                   "a sanity check", f"next-title NLL {overfit['next-title NLL before']:.3f} -> "
                   f"{overfit['next-title NLL after']:.3f}, HR@1 "
                   f"{overfit['HR@1 (beam search)']:.2f} ({overfit['steps']} steps)",
                   overfit["next-title NLL after"] < 0.1 * overfit["next-title NLL before"],
                   "holds = the loss falls below a tenth of its start")]
    key, own = f"sampled{n_neg}/NDCG@10", control["own history"]
    for name in ("another user's history", "own history, no reasoning slots"):
        d, lo, hi = paired_difference(own, control[name], key)
        rows.append(claim(f"A control hurts the ranking: {name} (validation, candidate "
                          "scoring, NDCG@10)", "a sanity check",
                          f"{own.metrics()[key]:.4f} vs {control[name].metrics()[key]:.4f}, "
                          f"paired difference {d:+.4f} [{lo:+.3f}, {hi:+.3f}] "
                          f"({len(own.users)} users)", lo > 0,
                          "paired 95% interval of own minus control", separable=lo > 0 or hi < 0))
        d, lo, hi = paired_mean(loglik["own history"] - loglik[name])
        rows.append(claim(f"A control lowers the target title's log-likelihood: {name}",
                          "a sanity check", f"paired difference {d:+.3f} [{lo:+.3f}, {hi:+.3f}]",
                          lo > 0, "the same users and targets",
                          separable=lo > 0 or hi < 0))
    return rows
