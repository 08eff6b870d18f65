"""Notebook 01's pipeline (Harte et al., RecSys 2023): data, item-name embeddings, LLMSeqSim
and its variants, LLM2SASRec / LLM2BERT4Rec against their random twins over seeds,
LLMSeqPrompt (LoRA training, generate-and-map), result tables, figures and claims.

Every method is scored by one :class:`Bench` (full ranking with the history removed, the
paper's protocol, plus the course's other protocols and the beyond-accuracy measures).
The stages run in the notebook's order: the ID models consume the global torch RNG before
LLMSeqPrompt's LoRA weights are drawn, so calling them in another order changes numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from recutils.batching import seeded_batches, seeded_subset
from recutils.beyond_accuracy import beyond_accuracy
from recutils.curves import BudgetCurve
from recutils.data import item_texts, load, prepare
from recutils.data.sequences import SequenceData
from recutils.evaluation import EvalResult, Evaluator, sample_negatives
from recutils.lm import encode_texts, load_causal_lm, load_sentence_encoder
from recutils.mapping import TitleIndex
from recutils.models import (
    BERT4Rec,
    BERT4RecConfig,
    Popularity,
    RandomScores,
    SASRec,
    SASRecConfig,
)
from recutils.models.llmseq import (
    COMBINATIONS,
    PARTS,
    LLMSeqPrompt,
    LLMSeqPromptConfig,
    LLMSeqSim,
    LLMSeqSimConfig,
    clean_generation,
    latest_users,
    llm2bertrec,
    llm2sasrec,
    prompt_examples,
)
from recutils.notebook import Recorder, claim
from recutils.plots import metric_bars
from recutils.reproducibility import seed_everything
from recutils.training import (
    History,
    TrainConfig,
    count_parameters,
    fit,
    fit_sequential,
    sequence_scorer,
)

TOPK = 20               # length of the kept top-k lists (coverage, case studies, LLMSeqPrompt)
TEXT = "title_year"     # item text: "The Usual Suspects (1995)"
KEYS = ["full_masked/NDCG@10", "full_masked/HR@10", "full_masked/MRR@10",
        "full_masked/NDCG@20", "full_masked/HR@20", "full/NDCG@10", "sampled100/NDCG@10"]
SAME_USER_KEYS = ["full_masked/NDCG@10", "full_masked/HR@10", "full_masked/MRR@10",
                  "full_masked/NDCG@20"]
MAIN = "full_masked/NDCG@10"


# --- data and item-name embeddings -------------------------------------------------------------

def load_data(dataset: str, users: int | None, kcore: int | None, eval_share: float | None,
              seed: int) -> tuple[SequenceData, np.ndarray, dict]:
    """The prepared dataset (optionally a seeded user sample), the evaluated users, statistics."""
    data = prepare(load(dataset), kcore_k=kcore)
    if users:
        data = data.subsample_users(users, seed=seed)
    evaluated = latest_users(data, eval_share)
    lengths = np.array([len(s) for s in data.sequences])
    stats = {"users": data.n_users, "items": data.n_items, "interactions": data.n_interactions,
             "evaluated_users": len(evaluated), "length_median": float(np.median(lengths))}
    return data, evaluated, stats


@dataclass
class ItemNames:
    """Item texts (``titles[i]`` for item id i, 0 = padding), the encoder and its vectors."""

    titles: list[str]
    encoder: object
    emb: np.ndarray      # [n_items + 1, d], row 0 zero
    seconds: float       # encoding time of the catalogue

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed any texts (e.g. generated titles) like the catalogue."""
        return encode_texts(texts, encoder=self.encoder)


def embed_items(data: SequenceData, encoder: str, device: torch.device | str) -> ItemNames:
    """Encode every item's name with the sentence encoder ``encoder``."""
    titles = item_texts(data.items, TEXT)
    t0 = time.perf_counter()
    model = load_sentence_encoder(encoder, device=device)
    emb = np.zeros((data.n_items + 1, model.get_embedding_dimension()), dtype=np.float32)
    emb[1:] = encode_texts(titles[1:], encoder=model)
    return ItemNames(titles, model, emb, time.perf_counter() - t0)


def embedding_figure(names: ItemNames, data: SequenceData, title: str, seed: int,
                     n_genres: int = 6):
    """The item vectors on their first two principal axes, coloured by the first genre."""
    from sklearn.decomposition import PCA

    xy = PCA(2, random_state=seed).fit_transform(names.emb[1:])
    first_genre = [g[0] if len(g) else "(none)" for g in data.items["genres"][1:]]
    top = pd.Series(first_genre).value_counts().index[:n_genres]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for g in top:
        m = np.array([f == g for f in first_genre])
        ax.scatter(xy[m, 0], xy[m, 1], s=7, alpha=0.6, label=g)
    rest = ~np.isin(first_genre, top)
    ax.scatter(xy[rest, 0], xy[rest, 1], s=5, alpha=0.3, color="0.6", label="other")
    ax.set(xlabel="PC 1", ylabel="PC 2", title=f"Item-name embeddings ({title}), first genre")
    ax.legend(fontsize=8, markerscale=2, frameon=False)
    return fig


# --- the evaluation every method goes through --------------------------------------------------

class Bench:
    """The paper's evaluation on the evaluated ``users``, and every method's runs.

    ``runs[name]`` lists one (metrics, beyond-accuracy, EvalResult) per seed.
    """

    def __init__(self, data: SequenceData, users: np.ndarray, seed: int) -> None:
        self.data, self.users, self.seed = data, users, seed
        self.test = Evaluator(data, "test", users=users, seed=seed)
        self.valid = Evaluator(data, "valid", protocols=("full_masked",), ks=(10,), users=users,
                               seed=seed)
        self.counts = data.item_counts()
        self.targets = data.targets("test")[users]
        self.inputs = {"valid": data.inputs("valid"), "test": data.inputs("test")}
        self.runs: dict[str, list[tuple[dict, dict, EvalResult]]] = {}

    def add(self, name: str, result: EvalResult) -> EvalResult:
        """Keep a test result (with its top-k lists) as one run of ``name``."""
        ba = beyond_accuracy(result.topk["full_masked"], self.targets, self.counts,
                             self.data.n_items)
        self.runs.setdefault(name, []).append((result.metrics(), ba, result))
        return result

    def on_histories(self, model, stage: str = "test") -> Callable[[np.ndarray], object]:
        """``users -> model.predict(their histories)`` for a model that reads histories."""
        inputs = self.inputs[stage]
        return lambda users: model.predict([inputs[u] for u in users])

    def popularity(self) -> EvalResult:
        """Score and keep the popularity baseline."""
        return self.add("Popularity", self.test.evaluate(Popularity(self.data), keep_topk=TOPK))


# --- LLMSeqSim ---------------------------------------------------------------------------------

@dataclass
class SimVariants:
    """LLMSeqSim with every combination: the table, the choice on validation, the chosen model."""

    table: pd.DataFrame   # valid NDCG@10, test NDCG@10, test HR@10 per combination
    best: str             # the combination with the best validation NDCG@10
    model: LLMSeqSim      # LLMSeqSim with ``best``
    dot_agreement: float  # share of top-10 positions where dot product and cosine agree
    seconds: float


def llmseqsim_variants(bench: Bench, item_emb: np.ndarray, config: LLMSeqSimConfig,
                       check_users: int = 50) -> SimVariants:
    """Every combination on validation and test; the best on validation is kept in ``bench``.

    ``config`` gives everything but the combination. Dot product vs cosine is compared on
    the top-10 of the first ``check_users`` users (mean combination).
    """
    t0 = time.perf_counter()
    valid, test = {}, {}
    for combine in COMBINATIONS:
        sim = LLMSeqSim(item_emb, replace(config, combine=combine))
        valid[combine] = bench.valid.evaluate(bench.on_histories(sim, "valid")).metrics()[MAIN]
        test[combine] = bench.test.evaluate(bench.on_histories(sim))
    some = [bench.inputs["test"][u] for u in bench.users[:check_users]]
    dot = LLMSeqSim(item_emb, replace(config, combine="mean", similarity="dot")).predict(some)
    cos = LLMSeqSim(item_emb, replace(config, combine="mean", similarity="cosine")).predict(some)
    same = float((dot.topk(10).indices == cos.topk(10).indices).float().mean())
    best = max(valid, key=valid.get)
    chosen = LLMSeqSim(item_emb, replace(config, combine=best))
    bench.add("LLMSeqSim", bench.test.evaluate(bench.on_histories(chosen), keep_topk=TOPK))
    table = pd.DataFrame({"valid NDCG@10": valid,
                          "test NDCG@10": {c: r.metrics()[MAIN] for c, r in test.items()},
                          "test HR@10": {c: r.metrics()["full_masked/HR@10"] for c, r in test.items()}})
    return SimVariants(table, best, chosen, same, time.perf_counter() - t0)


# --- LLM2SASRec / LLM2BERT4Rec -----------------------------------------------------------------

def id_model_builders(n_items: int, item_emb: np.ndarray, sasrec: SASRecConfig,
                      bert4rec: BERT4RecConfig) -> dict[str, Callable[[], torch.nn.Module]]:
    """Each ID model and its LLM-initialised twin, with identical configs."""
    return {"SASRec": lambda: SASRec(n_items, sasrec),
            "LLM2SASRec": lambda: llm2sasrec(item_emb, sasrec),
            "BERT4Rec": lambda: BERT4Rec(n_items, bert4rec),
            "LLM2BERT4Rec": lambda: llm2bertrec(item_emb, bert4rec)}


@dataclass
class IDModels:
    """The trained ID models: the first seed's model and validation curve of each name."""

    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    costs: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (train, test) s
    seconds: float = 0.0


def train_id_models(bench: Bench, builders: dict[str, Callable[[], torch.nn.Module]],
                    train: TrainConfig, seeds: Sequence[int], device: torch.device | str,
                    log: Callable[[str], None] = print) -> IDModels:
    """Train every builder with every seed (early stopping on validation NDCG@10, history
    removed), score it on test into ``bench`` and report one line per run through ``log``."""
    out, t0 = IDModels(), time.perf_counter()
    for name, build in builders.items():
        for seed in seeds:
            seed_everything(seed)
            model = build()
            hist = fit_sequential(model, bench.data, train, device=device, seed=seed,
                                  valid_metric=MAIN, valid_users=bench.users,
                                  desc=f"{name} seed {seed}")
            t1 = time.perf_counter()
            result = bench.add(name, bench.test.evaluate(
                sequence_scorer(model, bench.data, "test", device), keep_topk=TOPK))
            out.costs.setdefault(name, []).append((hist.seconds, time.perf_counter() - t1))
            if seed == seeds[0]:
                out.models[name], out.curves[name] = model, hist.column("valid")
            log(f"{name:13s} seed {seed}: best epoch {hist.best_epoch}, valid "
                f"{hist.best_valid:.4f}, test NDCG@10 {result.metrics()[MAIN]:.4f} "
                f"({hist.seconds:.0f} s)")
    out.seconds = time.perf_counter() - t0
    return out


def curves_figure(curves: dict[str, list[float]], seed: int):
    """Validation NDCG@10 per epoch of each model (LLM-initialised twins dashed)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, c in curves.items():
        ax.plot(range(1, len(c) + 1), c, marker="o", ls="--" if name.startswith("LLM2") else "-",
                label=name)
    ax.set(xlabel="epoch", ylabel="validation NDCG@10 (history masked)",
           title=f"Random vs LLM-initialised item tables (seed {seed})")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return fig


# --- LLMSeqPrompt ------------------------------------------------------------------------------

def build_prompter(lm: str, names: ItemNames, config: LLMSeqPromptConfig,
                   device: torch.device | str) -> tuple[LLMSeqPrompt, float]:
    """Load the causal LM and wrap it with a fresh LoRA adapter; (prompter, seconds)."""
    t0 = time.perf_counter()
    model, tokenizer = load_causal_lm(lm, device=device)
    prompter = LLMSeqPrompt(model, tokenizer, names.titles, names.emb, names.encode, config)
    return prompter, time.perf_counter() - t0


@dataclass
class PromptTraining:
    """What LLMSeqPrompt trained on and how its next-title loss on validation moved.

    ``rounds[r]`` is the state after ``pairs`` distinct training pairs (round 0: untrained):
    the validation loss over all completion tokens and over the title's words, its year and
    the end marker apart, and the training loss of the round's pairs (same parts).
    ``curve`` (when asked for) holds the constrained generation's validation HR@10 / NDCG@10
    on its own seeded validation users after the same rounds.
    """

    examples: list[tuple[str, int]]   # (prompt, next item) training pairs, all distinct
    users: np.ndarray                 # the seeded test users it is evaluated on
    valid_pairs: list[tuple[str, int]]
    history: History
    rounds: list[dict]
    loss_before: float                # validation title-word loss, untrained
    loss_after: float                 # ... of the selected round
    curve: BudgetCurve | None = None  # validation ranking after each round (None: not asked)
    curve_seconds: float = 0.0        # time spent on the curve's generations (inside fit)

    @property
    def train_seconds(self) -> float:
        """Training and its validation losses, without the curve's generations."""
        return self.history.seconds - self.curve_seconds


def _finite_parts(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The training loss and the parts present in the batch (an absent part is NaN: left out)."""
    return {"loss": out["loss"], **{k: out[k].detach() for k in PARTS if torch.isfinite(out[k])}}


def train_prompter(prompter: LLMSeqPrompt, bench: Bench, train: TrainConfig,
                   n_examples: int | None, n_users: int, n_valid: int, seed: int,
                   device: torch.device | str, rounds: int = 4, n_curve: int = 0,
                   curve_kind: str = "likelihood") -> PromptTraining:
    """LoRA-tune on ``n_examples`` distinct seeded training pairs, each seen once.

    The pairs are shuffled once and cut into ``rounds`` slices; each slice is one "epoch"
    of :func:`fit`, so every validation point (the title-word loss of ``n_valid`` validation
    users, lower is better, the untrained model included) comes after more *distinct* pairs
    rather than another pass over the same ones. ``fit`` keeps the best round (patience
    ``train.patience``). Picks ``n_users`` seeded test users for generation. ``n_curve > 0``:
    after every round, ``n_curve`` seeded validation users are ranked and scored into
    ``PromptTraining.curve`` (the ranking budget curve): ``curve_kind="likelihood"`` ranks
    each user's validation item among 19 sampled unseen items by the title's likelihood
    (protocol ``sampled19``: readable on few users), ``"generate"`` scores constrained
    generation filled as at test (full ranking: needs many users to leave zero).
    """
    if train.select != "min":
        raise ValueError("the validation score here is a loss: use TrainConfig(select='min')")
    data, titles = bench.data, prompter.titles
    examples = prompt_examples(data.train_sequences(), titles, max_items=prompter.config.max_items,
                               n=n_examples, seed=seed)
    users = seeded_subset(bench.users, min(n_users, len(bench.users)), seed)
    valid_in, valid_t = bench.inputs["valid"], data.targets("valid")
    valid_users = seeded_subset(bench.users, min(n_valid, len(bench.users)), seed + 1)
    valid_pairs = [(prompter.prompt(valid_in[u]), int(valid_t[u])) for u in valid_users]
    ordered = seeded_batches(examples, train.batch_size, seed, prompter.batch)(0)
    slices = np.array_split(np.arange(len(ordered)), rounds)
    sizes = [sum(len(ordered[i]["labels"]) for i in sl) for sl in slices]
    logged: list[dict] = []
    curve, curve_time = None, [0.0]
    if curve_kind not in CURVE_KINDS:
        raise ValueError(f"curve_kind={curve_kind!r}: choose one of {sorted(CURVE_KINDS)}")
    if n_curve > 0:
        curve_users = seeded_subset(bench.users, min(n_curve, len(bench.users)), seed + 2)
        protocol = CURVE_KINDS[curve_kind]
        curve = BudgetCurve(Evaluator(data, "valid", protocols=(protocol,), users=curve_users,
                                      seed=seed), "pairs",
                            keys=(f"{protocol}/HR@5", f"{protocol}/NDCG@10"))

    def valid(m) -> float:
        if curve is not None:
            t0, ev = time.perf_counter(), curve.evaluator
            if curve_kind == "likelihood":
                lists = likelihood_lists(prompter, ev.histories, ev.targets.tolist(),
                                         ev.negatives[19].tolist())
            else:
                lists = prompter.fill_from_items(prompter.generate_items(ev.histories),
                                                 ev.histories)
            curve.add(sum(sizes[:len(logged)]), lists)
            curve_time[0] += time.perf_counter() - t0
        logged.append(prompter.mean_losses(valid_pairs))
        return logged[-1]["title"]

    seed_everything(seed)
    config = replace(train, epochs=rounds, eval_before=True, log_steps=True)
    hist = fit(prompter.model, lambda e: [ordered[i] for i in slices[e]], config,
               loss_fn=lambda m, b: _finite_parts(prompter.losses(b)), valid_fn=valid,
               device=device, desc="LoRA")
    table = [{"pairs": 0, **{f"valid_{k}": v for k, v in logged[0].items()}}]
    for r, row in enumerate(hist.epochs):
        table.append({"pairs": int(sum(sizes[:r + 1])),
                      **{f"valid_{k}": v for k, v in logged[r + 1].items()},
                      **{f"train_{k}": row[k] for k in ("loss", *PARTS) if k in row}})
    best = hist.best_valid
    return PromptTraining(examples, users, valid_pairs, hist, table, logged[0]["title"], best,
                          curve, curve_time[0])


CURVE_KINDS = {"likelihood": "sampled19", "generate": "full_masked"}  # curve kind -> protocol


def likelihood_lists(prompter: LLMSeqPrompt, histories: Sequence[Sequence[int]],
                     targets: Sequence[int], negatives: Sequence[Sequence[int]]) -> list[list[int]]:
    """Per user, its target and negatives ranked by the LM's log-likelihood of their titles
    after the user's prompt, best first; a negative tied with the target ranks above it."""
    out = []
    for h, t, neg in zip(histories, targets, negatives):
        cand = [*map(int, neg), int(t)]             # target last: stable sort puts ties first
        order = np.argsort(-prompter.title_logprobs(h, cand), kind="stable")
        out.append([cand[i] for i in order])
    return out


def likelihood_ranking(prompter: LLMSeqPrompt, bench: Bench, users: np.ndarray,
                       n_negatives: int = 49, seed: int = 0) -> EvalResult:
    """Rank each user's test item among ``n_negatives`` sampled unseen items by the LM's
    log-likelihood of the title (:meth:`LLMSeqPrompt.title_logprobs`); ties count against
    the target. Protocol name ``sampled{n_negatives}`` (chance HR@10 = 10 / (n + 1))."""
    negatives = sample_negatives(bench.data, users, n_negatives, seed=seed).numpy()
    targets, inputs = bench.data.targets("test"), bench.inputs["test"]
    ranks = np.empty(len(users))
    for row, u in enumerate(users):
        scores = prompter.title_logprobs(inputs[u], [int(targets[u]), *negatives[row]])
        ranks[row] = float((scores[1:] >= scores[0]).sum())
    return EvalResult({f"sampled{n_negatives}": ranks}, np.asarray(users), ks=(1, 10))


@dataclass
class PromptResults:
    """LLMSeqPrompt's constrained and free generations, the mapped lists, every method on them."""

    users: np.ndarray
    generations: list[list[str]]     # free beams of the first ``len(generations)`` users
    ranked: list[list[int]]          # constrained lists, every user
    hallucination_rate: float        # of the free generations
    seconds: float                   # constrained generation time (all users)
    results: dict[str, EvalResult]   # LLMSeqPrompt and the re-scored methods, same users
    targets: np.ndarray
    free: EvalResult | None = None   # the free-text variant on its users
    free_users: np.ndarray | None = None
    free_seconds: float = 0.0
    beams: list[list[int]] = field(default_factory=list)   # constrained beam items


def evaluate_prompter(prompter: LLMSeqPrompt, bench: Bench, users: np.ndarray,
                      sim: LLMSeqSim, models: dict[str, torch.nn.Module],
                      device: torch.device | str, rescore: Sequence[str] = ("SASRec", "LLM2SASRec"),
                      n_free: int = 50) -> PromptResults:
    """Constrained generation for ``users``; the free-text variant for the first ``n_free``;
    LLMSeqSim, ``rescore``, Popularity and a seeded random ranking on the same users."""
    histories = [bench.inputs["test"][u] for u in users]
    t0 = time.perf_counter()
    beams = prompter.generate_items(histories)
    seconds = time.perf_counter() - t0
    ranked = prompter.fill_from_items(beams, histories)
    ev = Evaluator(bench.data, "test", users=users, seed=bench.seed)
    results = {"LLMSeqPrompt": ev.evaluate_ranked(ranked, keep_topk=TOPK),
               "LLMSeqSim": ev.evaluate(bench.on_histories(sim), keep_topk=TOPK)}
    for name in rescore:
        results[name] = ev.evaluate(sequence_scorer(models[name], bench.data, "test", device),
                                    keep_topk=TOPK)
    results["Popularity"] = ev.evaluate(Popularity(bench.data), keep_topk=TOPK)
    results["Random"] = ev.evaluate(RandomScores(bench.data.n_items, seed=bench.seed),
                                    keep_topk=TOPK)
    free_users = users[:n_free]
    t0 = time.perf_counter()
    gens = prompter.generate(histories[:n_free])
    free_seconds = time.perf_counter() - t0
    free_ranked = prompter.map_to_items(gens, histories[:n_free])
    free = Evaluator(bench.data, "test", users=free_users, seed=bench.seed).evaluate_ranked(
        free_ranked, keep_topk=TOPK)
    return PromptResults(users, gens, ranked, prompter.stats["hallucination_rate"], seconds,
                         results, bench.data.targets("test")[users], free, free_users,
                         free_seconds, beams)


def prompt_figure(training: PromptTraining, smooth: int = 4, seed: int = 0):
    """LoRA training loss per step (left), the validation loss by part vs distinct pairs seen
    (middle: the title's words, its year, the end marker) and, when measured, the ranking
    budget curve (right: its first key vs pairs, beside popularity and random)."""
    curve = training.curve
    fig, axes = plt.subplots(1, 3 if curve else 2, figsize=(17 if curve else 12, 3.6))
    steps = np.asarray(training.history.steps)
    axes[0].plot(np.arange(1, len(steps) + 1), steps, color="0.7", lw=0.8, label="per step")
    if len(steps) >= smooth:
        avg = np.convolve(steps, np.ones(smooth) / smooth, mode="valid")
        axes[0].plot(np.arange(smooth, len(steps) + 1), avg, label=f"mean of {smooth}")
    axes[0].set(xlabel="LoRA step", ylabel="completion loss (nats / token)",
                title="LoRA training (every pair seen once)")
    axes[0].legend(fontsize=8)
    pairs = [r["pairs"] for r in training.rounds]
    for k, style in (("title", "o-"), ("year", "s--"), ("end", "^:"), ("loss", ".-")):
        axes[1].plot(pairs, [r[f"valid_{k}"] for r in training.rounds], style,
                     label={"loss": "all completion tokens", "title": "title words"}.get(k, k))
    axes[1].set(xlabel="distinct training pairs seen", ylabel="validation loss (nats / token)",
                title=f"Validation loss by part, {len(training.valid_pairs)} users")
    axes[1].legend(fontsize=8)
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
    if curve:
        protocol = curve.keys[0].split("/")[0]
        what = "1 + 19 titles by likelihood" if protocol == "sampled19" else "constrained beams"
        curve.plot(curve.table(seed, "LLMSeqPrompt"), curve.keys[0], ax=axes[2],
                   xlabel="distinct training pairs seen",
                   title=f"Ranking: {what}, {len(curve.evaluator.users)} validation users")
    fig.tight_layout()
    return fig


def generation_examples(test: PromptResults, bench: Bench, titles: Sequence[str],
                        n: int = 6) -> pd.DataFrame:
    """The first ``n`` users: last watched, free best beam (a real title?), constrained best beam, target."""
    index, rows = TitleIndex(titles), []
    for i, u in enumerate(test.users[:min(n, len(test.generations))]):
        g = test.generations[i][0] if test.generations[i] else ""
        rows.append({"last watched": titles[bench.inputs["test"][u][-1]],
                     "free text (best beam)": g,
                     "exact title?": index.match(clean_generation(g)) is not None,
                     "constrained (best beam)": titles[test.ranked[i][0]],
                     "target": titles[test.targets[i]]})
    return pd.DataFrame(rows)


# --- results -----------------------------------------------------------------------------------

@dataclass
class Summary:
    """Per method: mean metrics over seeds, their std (ddof 0), mean beyond-accuracy measures."""

    mean: dict[str, pd.Series]
    std: dict[str, pd.Series]
    beyond: dict[str, pd.Series]

    def table(self) -> pd.DataFrame:
        """KEYS, the NDCG@10 seed std and the beyond-accuracy measures, one row per method."""
        table = pd.DataFrame(self.mean).T[KEYS]
        table["NDCG@10 std"] = [self.std[n][MAIN] for n in table.index]
        return table.join(pd.DataFrame(self.beyond).T)


def summarize(bench: Bench) -> Summary:
    """Mean and spread over each method's runs."""
    out = Summary({}, {}, {})
    for name, runs in bench.runs.items():
        ms = pd.DataFrame([m for m, _, _ in runs])
        out.mean[name], out.std[name] = ms.mean(), ms.std(ddof=0)
        out.beyond[name] = pd.DataFrame([b for _, b, _ in runs]).mean()
    return out


def record_methods(rec: Recorder, bench: Bench, summary: Summary, id_models: IDModels) -> None:
    """Record every method of ``bench`` in the schema notebook 06 reads."""
    for name in bench.runs:
        costs = id_models.costs.get(name, [])
        train, infer = [c[0] for c in costs], [c[1] for c in costs]
        model = id_models.models.get(name)
        params = count_parameters(model) if model is not None else (None, None)
        rec.record_method(name, summary.mean[name].to_dict(),
                          train_seconds=float(np.mean(train)) if train else 0.0,
                          infer_seconds_per_user=float(np.mean(infer)) / len(bench.users)
                          if infer else None,
                          params_total=params[0], params_trainable=params[1],
                          n_users=len(bench.users), seeds=len(bench.runs[name]),
                          std={k: float(summary.std[name][k]) for k in KEYS},
                          beyond_accuracy=summary.beyond[name].to_dict())


def same_user_table(test: PromptResults, bench: Bench) -> pd.DataFrame:
    """LLMSeqPrompt's users: SAME_USER_KEYS, 95% CIs of NDCG@10 and HR@10, the measures at 10."""
    table = pd.DataFrame({n: {k: r.metrics()[k] for k in SAME_USER_KEYS}
                          for n, r in test.results.items()}).T
    for key, label in ((MAIN, "NDCG@10"), ("full_masked/HR@10", "HR@10")):
        table[f"{label} 95% CI"] = ["[{:.3f}, {:.3f}]".format(*r.ci(key))
                                    for r in test.results.values()]
    for n, r in test.results.items():
        for k, v in beyond_accuracy(r.topk["full_masked"], test.targets, bench.counts,
                                    bench.data.n_items, ks=(10,)).items():
            table.loc[n, k] = v
    return table


def record_prompter(rec: Recorder, test: PromptResults, training: PromptTraining,
                    prompter: LLMSeqPrompt, bench: Bench) -> None:
    """Record LLMSeqPrompt (its own users) in the schema notebook 06 reads."""
    result = test.results["LLMSeqPrompt"]
    rec.record_method("LLMSeqPrompt", result.metrics(),
                      train_seconds=training.train_seconds,
                      infer_seconds_per_user=test.seconds / len(test.users),
                      params_total=sum(p.numel() for p in prompter.model.parameters()),
                      params_trainable=prompter.trainable_parameters(), n_users=len(test.users),
                      decoding="beam search constrained to unseen catalogue titles",
                      training_pairs=len(training.examples), training_rounds=training.rounds,
                      ci95={k: result.ci(k) for k in (MAIN, "full_masked/HR@10")},
                      beyond_accuracy=beyond_accuracy(result.topk["full_masked"], test.targets,
                                                      bench.counts, bench.data.n_items,
                                                      ks=(10, 20)))
    if test.free is not None:
        rec.record_method("LLMSeqPrompt (free text, mapped)", test.free.metrics(),
                          train_seconds=training.train_seconds,
                          infer_seconds_per_user=test.free_seconds / len(test.free_users),
                          n_users=len(test.free_users),
                          hallucination_rate=test.hallucination_rate,
                          ci95={k: test.free.ci(k) for k in (MAIN, "full_masked/HR@10")})


SHOWN = ["Popularity", "LLMSeqSim", "SASRec", "LLM2SASRec", "BERT4Rec", "LLM2BERT4Rec"]


def metrics_figure(summary: Summary, n_users: int, n_seeds: int):
    """Accuracy bars with the seed spread (left) and coverage / serendipity at 10 (right)."""
    names = {MAIN: "NDCG@10", "full_masked/HR@10": "HR@10", "full_masked/MRR@10": "MRR@10"}
    vals = pd.DataFrame({n: {v: summary.mean[n][k] for k, v in names.items()} for n in SHOWN})
    errs = pd.DataFrame({n: {v: summary.std[n][k] for k, v in names.items()} for n in SHOWN})
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    metric_bars(vals, errors=errs, ax=axes[0], ylabel="full ranking, history masked",
                title=f"{n_users} test users; error bars: std over {n_seeds} seeds")
    cov = pd.DataFrame({n: {"coverage@10": summary.beyond[n]["coverage@10"],
                            "serendipity@10": summary.beyond[n]["serendipity@10"]} for n in SHOWN})
    metric_bars(cov, ax=axes[1], title="Beyond accuracy")
    axes[1].legend().remove()
    fig.tight_layout()
    return fig


def case_study_figure(bench: Bench, titles: Sequence[str], sim: SimVariants,
                      sasrec: torch.nn.Module, device: torch.device | str,
                      max_history: int = 60, shown_history: int = 8, k: int = 10):
    """One user (the first with fewer than ``max_history`` items): history, LLMSeqSim, SASRec."""
    inputs = bench.inputs["test"]
    u = int(bench.users[int(np.argmax([len(inputs[x]) < max_history for x in bench.users]))])
    sim_top = sim.model.predict([inputs[u]])[0].topk(k).indices.tolist()
    scores = sequence_scorer(sasrec, bench.data, "test", device)(np.array([u]))[0].float().cpu()
    scores[torch.as_tensor(inputs[u])] = float("-inf")
    scores[0] = float("-inf")
    sas_top = scores.topk(k).indices.tolist()
    target = int(bench.data.targets("test")[u])
    fig, ax = plt.subplots(figsize=(13, 4.6))
    ax.set_axis_off()
    cols = [(f"History (last {shown_history})", [titles[i] for i in inputs[u][-shown_history:]]),
            (f"LLMSeqSim ({sim.best})", [titles[i] for i in sim_top]),
            ("SASRec", [titles[i] for i in sas_top])]
    for c, (head, items) in enumerate(cols):
        ax.text(c / 3, 1.0, head, weight="bold", transform=ax.transAxes, fontsize=10)
        for r, t in enumerate(items):
            hit = t == titles[target] and c > 0
            ax.text(c / 3, 0.92 - r * 0.085, f"{r + 1}. {t[:42]}", transform=ax.transAxes,
                    fontsize=9, color="green" if hit else "black",
                    weight="bold" if hit else "normal")
    ax.set_title(f"user {bench.data.user_ids[u]}; held-out item: {titles[target]}", loc="left",
                 pad=24)
    return fig


# --- claims ------------------------------------------------------------------------------------

def gain(bench: Bench, a: str, b: str, key: str = MAIN
         ) -> tuple[float, float, float, bool | None]:
    """(mean of a, mean of b, relative gain of a, verdict).

    Runs are paired by seed; the verdict is True when the mean difference exceeds its std
    (ddof 0), False when a is behind by more than that, None when the difference lies inside
    the seed spread (not separable at this scale).
    """
    x = np.array([m[key] for m, _, _ in bench.runs[a]])
    y = np.array([m[key] for m, _, _ in bench.runs[b]])
    diff = x - y
    spread = max(diff.std(ddof=0), 1e-12)
    verdict = True if diff.mean() > spread else False if diff.mean() < -spread else None
    return x.mean(), y.mean(), diff.mean() / y.mean(), verdict


def _spread_note(verdict: bool | None) -> str:
    return {True: "ahead by more than the seed spread", False: "behind by more than the seed spread",
            None: "the difference lies inside the seed spread"}[verdict]


def claim_rows(bench: Bench, summary: Summary, sim: SimVariants, test: PromptResults,
               n_seeds: int) -> list[dict]:
    """The closing table: each claim of the paper (and the course's extensions) checked."""
    rows = []
    a, b, rel, ok = gain(bench, "LLM2BERT4Rec", "BERT4Rec")
    rows.append(claim("LLM2BERT4Rec beats BERT4Rec (NDCG@10, history masked)",
                      "+15-20% NDCG (Beauty, Delivery Hero)",
                      f"{a:.4f} vs {b:.4f} ({rel:+.0%}, {n_seeds} seeds)", a > b,
                      _spread_note(ok), separable=ok is not None))
    rows.append(claim("The LLM2BERT4Rec gain is as large as the paper's", ">= +15%", f"{rel:+.0%}",
                      rel >= 0.15, _spread_note(ok), separable=ok is not None))
    a, b, rel, ok = gain(bench, "LLM2SASRec", "SASRec")
    rows.append(claim("LLM initialisation also helps SASRec (NDCG@10)", "n/a (course extension)",
                      f"{a:.4f} vs {b:.4f} ({rel:+.0%}, {n_seeds} seeds)", a > b,
                      _spread_note(ok), separable=ok is not None))
    s = summary.mean["LLMSeqSim"][MAIN]
    weaker = min(summary.mean["SASRec"][MAIN], summary.mean["BERT4Rec"][MAIN])
    rows.append(claim("LLMSeqSim (no training) is competitive with the neural models",
                      "'competitive' (no number in the abstract)",
                      f"{s:.4f} vs weaker neural {weaker:.4f}", s >= weaker,
                      f"combination chosen on validation: {sim.best}"))
    c_sim = summary.beyond["LLMSeqSim"]["coverage@20"]
    c_sas = summary.beyond["SASRec"]["coverage@20"]
    rows.append(claim("LLMSeqSim covers more of the catalogue than SASRec (coverage@20)",
                      "reported per dataset", f"{c_sim:.3f} vs {c_sas:.3f}", c_sim > c_sas))
    res, n = test.results, len(test.users)
    p = res["LLMSeqPrompt"].metrics()[MAIN]
    q = res["SASRec"].metrics()[MAIN]
    rows.append(claim("LLMSeqPrompt (fine-tuned LLM) rivals SASRec (NDCG@10, same users)",
                      "n/a (not in the abstract)", f"{p:.4f} vs {q:.4f} ({n} users)",
                      p >= q and p > 0, "constrained decoding"))
    for other in ("LLMSeqSim", "Popularity"):
        rows.append(prompt_vs(res, other, n))
    if test.free is not None:
        rows.append(claim("Free-text generations name catalogue titles",
                          "hallucinations discussed, mapped by embedding",
                          f"{1 - test.hallucination_rate:.0%} exact titles "
                          f"({len(test.free_users)} users x beams)",
                          test.hallucination_rate == 0.0,
                          "constrained decoding makes every recommendation a real unseen item"))
    return rows


def prompt_vs(results: dict[str, EvalResult], other: str, n_users: int,
              key: str = MAIN) -> dict:
    """Claim row "LLMSeqPrompt is above ``other``": yes / no when the 95% intervals do not
    overlap, else "not separable at this scale"."""
    a, b = results["LLMSeqPrompt"], results[other]
    (alo, ahi), (blo, bhi) = a.ci(key), b.ci(key)
    x, y = a.metrics()[key], b.metrics()[key]
    separable = alo > bhi or blo > ahi
    note = ("95% intervals do not overlap" if separable
            else "not separable at this scale: the 95% intervals overlap")
    return claim(f"LLMSeqPrompt above {other} (NDCG@10, history masked, same users)",
                 "n/a (course target)",
                 f"{x:.4f} [{alo:.4f}, {ahi:.4f}] vs {y:.4f} [{blo:.4f}, {bhi:.4f}] "
                 f"({n_users} users)", x > y, note, separable=separable)
