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
from recutils.data.sequences import SequenceData
from recutils.evaluation import EvalResult, Evaluator
from recutils.lm import completion_batch, encode_texts
from recutils.mapping import TitleIndex
from recutils.models.lancer import (
    LANCER,
    LANCERConfig,
    item_title,
    knowledge_prompt,
    map_generations,
    pooled_token_embeddings,
    reasoning_batch,
)
from recutils.models.sasrec import SASRec, SASRecConfig
from recutils.notebook import Recorder, claim
from recutils.plots import metric_bars
from recutils.progress import track
from recutils.reproducibility import seed_everything
from recutils.training import (
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
TABLE_KEYS = ["full/HR@5", "full/NDCG@5", "full/HR@10", "full/NDCG@10", "full_masked/NDCG@10",
              "sampled100/NDCG@10", "sampled19/HR@1"]
MINILM = " [MiniLM mapping]"


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
    valid_users: int = 500              # validation users whose LM loss selects the epoch
    eval_users: int | None = None       # seeded sample of test users (None: all)
    eval_batch: int = 8                 # users per validation / generation batch
    description: bool = True            # prepend the item description where the data has one
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

    Results on every test user ("SASRec (all users)") and on the generative models' sample.
    """
    seed_everything(seed)
    t0 = time.perf_counter()
    sasrec = SASRec(data.n_items, config)
    hist = fit_sequential(sasrec, data, train, device=device, seed=seed, desc="SASRec")
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    score = sequence_scorer(sasrec, data, "test", device)
    results = {"SASRec (all users)": Evaluator(data, "test", seed=seed).evaluate(score),
               "SASRec": Evaluator(data, "test", users=eval_users, seed=seed).evaluate(score)}
    costs = dict(train_seconds=train_s, infer=time.perf_counter() - t0,
                 params=count_parameters(sasrec), n_users=len(eval_users))
    return sasrec, hist, results, costs


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


class LANCERRun:
    """One LANCER experiment on a :class:`SequenceData`: its model, stages and generations.

    The one LM copy is shared by the knowledge role (frozen) and the reasoning role (LoRA or
    full tuning in stage 2); the stage-1 models generate before stage 2 touches the LM.
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
        seed_everything(seed)
        self.model = LANCER(lm, tokenizer, config).to(device)
        self.knowledge_init = self._clone(self.model.knowledge)
        self.slot = slice(-config.max_slots, None) if config.max_slots else slice(None)
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
        self.exact: dict[str, float] = {}
        self.histories: dict[str, History] = {}
        self.states: dict[str, dict] = {}
        self.generations: dict[str, list[list[str]]] = {}
        self.gen_seconds: dict[str, float] = {}
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
        """h_i with the knowledge prefix and without (the no-knowledge ablation) of every item
        that appears in a history slot we use; returns the mean pairwise cosine of each."""
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
        for prefix, key in ((True, "item_reps"), (False, "item_reps_no_knowledge")):
            t0 = time.perf_counter()
            reps = torch.zeros(self.data.n_items + 1, self.lm.config.hidden_size)
            reps[needed] = self.model.embed_titles(texts, with_prefix=prefix, progress=True).cpu()
            self.timer[key] = time.perf_counter() - t0
            self.reps[prefix] = reps
        self.n_encoded = len(needed)
        return {"with": mean_cosine(self.reps[True][needed][:300]),
                "without": mean_cosine(self.reps[False][needed][:300])}

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
        ex, seqs = self.examples, self.train_seqs

        def make(epoch: int) -> list[dict]:
            order = np.random.default_rng(self.seed + 100 + epoch).permutation(len(ex))
            out = []
            for s in range(0, len(order), batch_size):
                chunk = [ex[i] for i in order[s:s + batch_size]]
                out.append(self.batch([seqs[u][:t] for u, t in chunk],
                                      [int(seqs[u][t]) for u, t in chunk], reps))
            return out
        return make

    def _valid_fn(self, reps: torch.Tensor):
        users, n = self.valid_users, self.setup.eval_batch
        targets = self.data.targets("valid")
        batches = [self.batch([self.valid_in[u] for u in users[s:s + n]],
                              [int(targets[u]) for u in users[s:s + n]], reps)
                   for s in range(0, len(users), n)]
        return lambda m: _valid_loss(m, batches, _reasoning_loss, self.device)

    def _train_reasoning(self, name: str, train: TrainConfig, params, reps) -> History:
        hist = fit(self.model, self._reasoning_batches(reps, train.batch_size), train,
                   loss_fn=_reasoning_loss, params=params, valid_fn=self._valid_fn(reps),
                   device=self.device, desc=name)
        self.histories[name] = hist
        self.states[name] = {k: v.clone() for k, v in self.model.state_dict().items()
                             if not k.startswith("lm.")}
        return hist

    def train_stage1(self, train: TrainConfig) -> dict[str, History]:
        """Stage 1 of the full model and of both ablations (prefixes only, same budget)."""
        self.knowledge_trained = self._clone(self.model.knowledge)
        self.reasoning_init = self._clone(self.model.reasoning)
        for name in STAGE1:
            seed_everything(self.seed)
            reps = self.set_variant(name, trained=False)
            params = list(self.model.knowledge.parameters()) + (
                list(self.model.reasoning.parameters()) if self.model.use_reasoning else [])
            self._train_reasoning(name, train, params, reps)
        self.timer["reasoning_stage1"] = sum(self.histories[n].seconds for n in STAGE1)
        return {n: self.histories[n] for n in STAGE1}

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
        hist = self._train_reasoning("LANCER", train, params, self.reps[True])
        self.timer["reasoning_stage2"] = hist.seconds
        return hist

    # --- generation and mapping (eq. 6-9) --------------------------------------------------
    def generate(self, name: str) -> list[list[str]]:
        """Beam search for every sampled test user under variant ``name`` (its trained state)."""
        reps = self.set_variant(name)
        out, t0, n = [], time.perf_counter(), self.setup.eval_batch
        for s in track(range(0, len(self.eval_users), n), f"beam search: {name}", unit="batch"):
            users = self.eval_users[s:s + n]
            b = self.batch([self.test_in[u] for u in users], reps=reps)
            out += self.model.generate(to_device(b, self.device))
        self.gen_seconds[name] = time.perf_counter() - t0
        self.generations[name] = out
        return out

    def map_and_evaluate(self, evaluator: Evaluator, minilm) -> dict[str, EvalResult]:
        """Map every variant's texts to items (token-embedding max-pool and MiniLM), evaluate."""
        self.emb_table = self.lm.get_input_embeddings()
        self.item_tok_emb = pooled_token_embeddings(self.item_names, self.tokenizer, self.emb_table)
        item_st_emb = np.zeros((self.data.n_items + 1, 384), dtype=np.float32)
        item_st_emb[1:] = encode_texts(self.item_names[1:], encoder=minilm)
        title_index = TitleIndex(self.titles)
        self.ranked, self.exact, results = {}, {}, {}
        k = self.cfg.top_k
        for name, gens in self.generations.items():
            flat = [t for g in gens for t in g]
            self.ranked[name] = map_generations(
                gens, pooled_token_embeddings(flat, self.tokenizer, self.emb_table),
                self.item_tok_emb, k=k)
            self.ranked[name + MINILM] = map_generations(
                gens, encode_texts(flat, encoder=minilm), item_st_emb, k=k)
            self.exact[name] = float(np.mean([title_index.match(t) is not None for t in flat]))
            results[name] = evaluator.evaluate_ranked(self.ranked[name])
            results[name + MINILM] = evaluator.evaluate_ranked(self.ranked[name + MINILM])
        return results

    # --- records ---------------------------------------------------------------------------
    def record_methods(self, rec: Recorder, results: dict[str, EvalResult], sasrec_costs: dict,
                       ) -> None:
        """One method record per evaluated row (training seconds, inference cost, sizes)."""
        lora = sum(p.numel() for n, p in self.lm.named_parameters() if "lora_" in n)
        trainable = (sum(p.numel() for p in self.model.knowledge.parameters())
                     + sum(p.numel() for p in self.model.reasoning.parameters()) + lora)
        total = sum(p.numel() for p in self.lm.parameters()) + trainable - lora
        n_sasrec = self.data.n_users + len(self.eval_users)
        for name, r in results.items():
            if name.startswith("SASRec"):
                tot, tr = sasrec_costs["params"]
                rec.record_method(name, r.metrics(), train_seconds=sasrec_costs["train_seconds"],
                                  infer_seconds_per_user=sasrec_costs["infer"] / n_sasrec,
                                  params_total=tot, params_trainable=tr, n_users=len(r.users))
                continue
            base = name.replace(MINILM, "")
            train_s = self.timer["knowledge_train"] + self.timer["item_reps"]
            train_s += self.histories[base].seconds if base in self.histories else 0
            if base == "LANCER":
                train_s += self.histories["LANCER (stage 1)"].seconds
            rec.record_method(name, r.metrics(), train_seconds=train_s,
                              infer_seconds_per_user=self.gen_seconds[base] / len(self.eval_users),
                              params_total=total, params_trainable=trainable,
                              n_users=len(r.users), exact_title_rate=self.exact[base],
                              mapping="minilm" if MINILM in name else "token-embedding max-pool")

    # --- figures ---------------------------------------------------------------------------
    def case_users(self) -> list[int]:
        """Up to three sample positions: the first two with a top-5 hit, then misses."""
        targets = self.data.targets("test")
        hits = [i for i, r in enumerate(self.ranked["LANCER"])
                if targets[self.eval_users[i]] in r[:5]]
        misses = [i for i in range(len(self.eval_users)) if i not in hits]
        return (hits[:2] + misses)[:3]

    def case_study_figure(self, cases: list[int]):
        """The paper's Fig. 3: history, top-5 generated texts -> mapped items, target."""
        gens, names, targets = self.generations["LANCER"], self.item_names, self.data.targets("test")
        top5 = [t for i in cases for t in gens[i][:5]]
        emb = pooled_token_embeddings(top5, self.tokenizer, self.emb_table)
        near = iter(map_generations([[t] for t in top5], emb, self.item_tok_emb, k=1))
        fig, axes = plt.subplots(1, len(cases), figsize=(6 * len(cases), 4.6))
        for ax, i in zip(np.atleast_1d(axes), cases):
            u = self.eval_users[i]
            target = int(targets[u])
            lines = [("History (last 6): ", "black")]
            lines += [("  " + names[j][:38], "dimgray") for j in self.test_in[u][-6:]]
            lines += [("Top-5 generated  ->  mapped item", "black")]
            for j, t in enumerate(gens[i][:5]):
                m = next(near)[0]
                lines.append((f"{j + 1}. {t[:28]}  ->  {names[m][:26]}",
                              "green" if m == target else "firebrick"))
            lines += [(f"Target: {names[target][:40]}", "black")]
            for k, (txt, col) in enumerate(lines):
                ax.text(0.0, 0.95 - k * 0.07, txt, color=col, fontsize=9, family="monospace",
                        transform=ax.transAxes,
                        weight="bold" if col in ("black", "green") else "normal")
            ax.set_axis_off()
            ax.set_title(f"user {self.data.user_ids[u]}", loc="left")
        return fig

    def attention_figure(self, cases: list[int]):
        """Reasoning attention of the stage-1 model: history items over knowledge tokens."""
        reps = self.set_variant("LANCER (stage 1)")
        fig, axes = plt.subplots(1, len(cases), figsize=(5.3 * len(cases), 3.8))
        for ax, i in zip(np.atleast_1d(axes), cases):
            u = self.eval_users[i]
            b = self.batch([self.test_in[u]], reps=reps)
            with torch.no_grad():
                _, _, attn = self.model.user_prefix(b["history_reps"].to(self.device),
                                                    b["history_mask"].to(self.device))
            slot_items = self.test_in[u][self.slot]  # the items with a reasoning slot
            if attn.shape[1] != len(slot_items):
                raise RuntimeError(f"{attn.shape[1]} slots for {len(slot_items)} items")
            im = ax.imshow(attn[0].cpu().numpy(), aspect="auto", cmap="viridis")
            ax.set_yticks(range(len(slot_items)), [self.item_names[j][:22] for j in slot_items],
                          fontsize=7)
            ax.set_xlabel("knowledge token")
            ax.set_title(f"user {self.data.user_ids[u]}", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.04)
        fig.suptitle("Reasoning attention: history items (queries) over knowledge tokens "
                     "(keys/values)")
        fig.tight_layout()
        return fig

    def training_figure(self):
        """Per-step losses of every stage and the validation loss per epoch (0 = before)."""
        fig, axes = plt.subplots(1, 3, figsize=(15, 3.4))
        axes[0].plot(self.knowledge_history.steps)
        axes[0].set(xlabel="step", ylabel="title NLL",
                    title="Knowledge prompt (LM loss on the title)")
        for name, h in self.histories.items():
            valid = [h.before["valid"]] + h.column("valid")  # [before, epoch 1, ...]
            axes[1].plot(h.steps, label=name, alpha=0.8)
            axes[2].plot(range(len(valid)), valid, marker="o", label=name)
        axes[1].set(xlabel="step", ylabel="next-title NLL", title="Reasoning training")
        axes[2].set(xlabel="epoch (0 = before)", ylabel="validation NLL",
                    title="Model selection on the validation item")
        axes[1].legend(fontsize=7)
        axes[2].legend(fontsize=7)
        fig.tight_layout()
        return fig


def stage_summary(hist: History) -> str:
    """``seconds, validation loss before -> best (best epoch k; 0 = before: the stage undone)``."""
    best = hist.best_epoch + 1  # History: -1 = before; printed as 0 = before, k = after epoch k
    return (f"{hist.seconds:.0f} s, validation loss {hist.before['valid']:.3f} -> "
            f"{min([hist.before['valid']] + hist.column('valid')):.3f} (best epoch {best}; "
            "0 = before: the stage undone)")


def results_table(results: dict[str, EvalResult]) -> pd.DataFrame:
    """The evaluation table: the paper's metrics, the other protocols, the CI and the users."""
    table = pd.DataFrame({n: {k: r.metrics()[k] for k in TABLE_KEYS}
                          for n, r in results.items()}).T
    table["full/NDCG@10 95% CI"] = ["[{:.3f}, {:.3f}]".format(*r.ci("full/NDCG@10"))
                                    for r in results.values()]
    table["users"] = [len(r.users) for r in results.values()]
    return table


def metrics_figure(results: dict[str, EvalResult], n_users: int):
    """Bars of R/N@5,10 with 95% CI half-widths: SASRec, LANCER and its ablations."""
    show = ["SASRec", "LANCER", "LANCER (stage 1)", "w/o knowledge prompt",
            "w/o reasoning prompt"]

    def short(k: str) -> str:
        return k.replace("full/", "").replace("HR", "R")

    def half_width(r: EvalResult, k: str) -> float:
        lo, hi = r.ci(k)
        return (hi - lo) / 2

    keys = list(PAPER_KEYS.values())
    vals = pd.DataFrame({n: {short(k): results[n].metrics()[k] for k in keys} for n in show}).T
    errs = pd.DataFrame({n: {short(k): half_width(results[n], k) for k in keys} for n in show}).T
    fig, ax = plt.subplots(figsize=(10, 3.6))
    metric_bars(vals, errors=errs, ax=ax, ylabel="full ranking",
                title=f"LANCER, ablations and SASRec on {n_users} test users (95% CI)")
    return fig


def claims(results: dict[str, EvalResult], exact: dict[str, float]) -> list[dict]:
    """The claim rows: LANCER vs SASRec (Table 2), the @5 gain, the ablations, real titles."""
    lancer, sasrec = results["LANCER"], results["SASRec"]
    rows = []
    for m, (p_s, p_l) in PAPER_TABLE2.items():
        key = PAPER_KEYS[m]
        ours_l, ours_s = lancer.metrics()[key], sasrec.metrics()[key]
        (lo_l, hi_l), (lo_s, hi_s) = lancer.ci(key), sasrec.ci(key)
        overlap = not (lo_l > hi_s or lo_s > hi_l)
        rows.append(claim(f"LANCER beats SASRec on {m} (full ranking)",
                          f"{p_l:.4f} vs {p_s:.4f} (ML-1M)",
                          f"{ours_l:.4f} vs {ours_s:.4f} ({len(lancer.users)} users)",
                          ours_l > ours_s, "CIs overlap" if overlap else "CIs separate"))
    gain5 = lancer.metrics()["full/NDCG@5"] - sasrec.metrics()["full/NDCG@5"]
    gain10 = lancer.metrics()["full/NDCG@10"] - sasrec.metrics()["full/NDCG@10"]
    rows.append(claim("The gain over SASRec is larger at @5 than at @10 (NDCG)", "+.0088 vs +.0061",
                      f"{gain5:+.4f} vs {gain10:+.4f}", (gain5 > gain10) and gain5 > 0))
    full = results["LANCER (stage 1)"].metrics()["full/NDCG@10"]
    for abl in ("w/o knowledge prompt", "w/o reasoning prompt"):
        a = results[abl].metrics()["full/NDCG@10"]
        rows.append(claim(f"The {abl.split('/o ')[1]} helps (stage 1 vs {abl}, NDCG@10)",
                          "implied by the method", f"{full:.4f} vs {a:.4f}",
                          None if full == a == 0 else full > a,
                          "both score 0: cannot be judged" if full == a == 0
                          else "same training budget"))
    rows.append(claim("Generated texts are real titles in almost all cases (Fig. 3)",
                      "'almost all'", f"{exact['LANCER']:.1%} exact", exact["LANCER"] >= 0.9))
    return rows
