"""Notebook 01's pipeline (recutils.pipelines.llmseq) on tiny data and a tiny LM."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_llama  # the 2-layer Llama every LM test uses
from test_lancer import CharTokenizer  # the tiny character tokenizer of the LANCER tests

from recutils.data import RawDataset, item_texts, prepare
from recutils.evaluation import EvalResult
from recutils.models import SASRec, SASRecConfig
from recutils.models.llmseq import (
    COMBINATIONS,
    LLMSeqPrompt,
    LLMSeqPromptConfig,
    LLMSeqSim,
    LLMSeqSimConfig,
    llm2sasrec,
)
from recutils.notebook import Recorder
from recutils.pipelines import llmseq as pipeline
from recutils.training import TrainConfig, sequence_scorer

MAIN = pipeline.MAIN


def ring(n: int = 120):
    """Items on a circle; every user walks it in order (the next item is the nearest unseen)."""
    angles = 2 * np.pi * np.arange(n + 1) / n
    emb = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    emb[0] = 0
    rows = [(f"u{u}", str(1 + (s + t) % n), 4.0, t) for u, s in enumerate(range(0, n, 3))
            for t in range(6)]
    inter = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    items = pd.DataFrame({"item": [str(i) for i in range(1, n + 1)],
                          "title": [f"m{i}" for i in range(1, n + 1)],
                          "year": pd.array([2000] * n, dtype="Int64"), "genres": [[]] * n,
                          "description": "", "brand": ""})
    data = prepare(RawDataset("ring", inter, items))
    assert data.item_ids[1:].tolist() == [str(i) for i in range(1, n + 1)]
    return data, emb


def test_bench_scores_records_and_feeds_histories(tiny, tmp_path):
    bench = pipeline.Bench(tiny, np.arange(tiny.n_users), seed=0)
    result = bench.popularity()
    (metrics, beyond, kept), = bench.runs["Popularity"]
    assert kept is result and metrics == result.metrics()
    assert result.topk["full_masked"].shape == (tiny.n_users, pipeline.TOPK)
    assert 20 / tiny.n_items <= beyond["coverage@20"] <= 1.0
    seen = []

    class Recording:  # a model that reads histories and answers with zeros
        def predict(self, histories):
            seen.extend(histories)
            return torch.zeros(len(histories), tiny.n_items + 1)

    bench.on_histories(Recording(), "valid")(np.array([3, 1]))
    assert [h.tolist() for h in seen] == [tiny.inputs("valid")[u].tolist() for u in (3, 1)]
    rec = Recorder("01", "smoke", root=tmp_path)
    summary = pipeline.summarize(bench)
    pipeline.record_methods(rec, bench, summary, pipeline.IDModels())
    pop = rec.get("methods")["Popularity"]
    assert pop["seeds"] == 1 and pop["n_users"] == tiny.n_users and pop["params_total"] is None
    assert set(pop["std"]) == set(pipeline.KEYS) and all(v == 0 for v in pop["std"].values())


def test_llmseqsim_variants_pick_the_best_combination_on_validation():
    data, emb = ring()
    bench = pipeline.Bench(data, np.arange(data.n_users), seed=0)
    sim = pipeline.llmseqsim_variants(bench, emb, LLMSeqSimConfig())
    assert list(sim.table.index) == list(COMBINATIONS)
    # "last" finds every next item of the walk (NDCG 1), so nothing beats it on validation
    assert sim.table.loc["last", "valid NDCG@10"] == 1.0
    assert sim.best == "last" == sim.model.config.combine
    assert sim.table["valid NDCG@10"].max() == sim.table.loc[sim.best, "valid NDCG@10"]
    (metrics, _, _), = bench.runs["LLMSeqSim"]
    assert metrics[MAIN] == sim.table.loc[sim.best, "test NDCG@10"]


def test_dot_product_and_cosine_agree_on_unit_vectors_only(tiny):
    bench = pipeline.Bench(tiny, np.arange(tiny.n_users), seed=0)
    emb = np.random.default_rng(0).normal(size=(tiny.n_items + 1, 16)).astype(np.float32)
    emb[0] = 0
    assert pipeline.llmseqsim_variants(bench, emb, LLMSeqSimConfig()).dot_agreement < 0.9
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    assert pipeline.llmseqsim_variants(bench, emb, LLMSeqSimConfig()).dot_agreement == 1.0


def test_id_models_train_every_seed_and_keep_the_first(tiny):
    bench = pipeline.Bench(tiny, np.arange(tiny.n_users), seed=0)
    emb = np.random.default_rng(0).normal(size=(tiny.n_items + 1, 24)).astype(np.float32)
    config = SASRecConfig(hidden=16, n_heads=2, max_len=8)
    builders = {"SASRec": lambda: SASRec(tiny.n_items, config),
                "LLM2SASRec": lambda: llm2sasrec(emb, config)}
    lines = []
    train = TrainConfig(epochs=2, batch_size=32, lr=5e-3, patience=5, progress=False)
    ids = pipeline.train_id_models(bench, builders, train, [0, 1], "cpu", log=lines.append)
    assert len(lines) == 4 and lines[0].startswith("SASRec") and "seed 1" in lines[1]
    for name in builders:
        assert len(bench.runs[name]) == len(ids.costs[name]) == 2
        assert len(ids.curves[name]) == 2  # validation NDCG@10 of each epoch
        again = bench.test.evaluate(sequence_scorer(ids.models[name], tiny, "test", "cpu"))
        assert again.metrics() == bench.runs[name][0][0]  # the kept model is seed 0's
    # the two seeds really are different runs; the same seed again gives the same numbers
    assert bench.runs["SASRec"][0][0] != bench.runs["SASRec"][1][0]
    rerun = pipeline.train_id_models(pipeline.Bench(tiny, np.arange(tiny.n_users), seed=0),
                                     {"SASRec": builders["SASRec"]}, train, [1], "cpu",
                                     log=lambda s: None)
    assert rerun.curves["SASRec"] == _curve(tiny, builders, train)


def _curve(data, builders, train):
    from recutils.reproducibility import seed_everything
    from recutils.training import fit_sequential

    seed_everything(1)
    model = builders["SASRec"]()
    hist = fit_sequential(model, data, train, seed=1, valid_metric=MAIN,
                          valid_users=np.arange(data.n_users))
    return hist.column("valid")


def _fake_bench(tiny, values: dict[str, list[float]], coverage: dict[str, float]):
    bench = pipeline.Bench(tiny, np.arange(tiny.n_users), seed=0)
    bench.runs = {n: [({MAIN: v}, {"coverage@20": coverage.get(n, 0.5)}, None) for v in vs]
                  for n, vs in values.items()}
    return bench


def test_gain_and_summary_hand_computed(tiny):
    bench = _fake_bench(tiny, {"A": [0.3, 0.5], "B": [0.2, 0.3], "C": [0.5, 0.1]}, {})
    a, b, rel, ok = pipeline.gain(bench, "A", "B")
    assert (a, b) == pytest.approx((0.4, 0.25)) and rel == pytest.approx(0.6) and ok is True
    # C - B = (0.3, -0.2): mean 0.05 inside its spread 0.25: no verdict
    assert pipeline.gain(bench, "C", "B")[3] is None
    # B - A = (-0.1, -0.2): mean -0.15, behind by more than its spread 0.05
    assert pipeline.gain(bench, "B", "A")[3] is False
    summary = pipeline.summarize(bench)
    assert summary.mean["A"][MAIN] == pytest.approx(0.4)
    assert summary.std["A"][MAIN] == pytest.approx(0.1)  # ddof 0


def test_claim_rows_follow_the_numbers(tiny):
    values = {"BERT4Rec": [0.10, 0.12], "LLM2BERT4Rec": [0.13, 0.14], "SASRec": [0.2, 0.2],
              "LLM2SASRec": [0.19, 0.21], "LLMSeqSim": [0.05]}
    bench = _fake_bench(tiny, values, {"LLMSeqSim": 0.9, "SASRec": 0.3})
    summary = pipeline.summarize(bench)
    sim = pipeline.SimVariants(pd.DataFrame(), "last", None, 1.0, 0.0)
    users = np.arange(4)

    def ranks(*r):  # 0 = first place (NDCG 1), 50 = a miss at 10
        return EvalResult({"full_masked": np.array(r, dtype=float)}, users)

    results = {"LLMSeqPrompt": ranks(0, 0, 0, 50), "SASRec": ranks(0, 0, 0, 0),
               "LLMSeqSim": ranks(0, 50, 0, 50), "Popularity": ranks(50, 50, 50, 50)}
    gen = pipeline.PromptResults(users, [["x"]], [[1]] * 4, 1.0, 0.0, results, np.ones(4))
    rows = pipeline.claim_rows(bench, summary, sim, gen, n_seeds=2)
    holds = [r["holds"] for r in rows]
    # LLM2BERT4Rec +0.025 (std 0.005) = +23% (>= 15%); LLM2SASRec - SASRec = (-0.01, 0.01);
    # LLMSeqSim 0.05 below the weaker 0.11; its coverage 0.9 > 0.3; LLMSeqPrompt .75 < 1;
    # vs LLMSeqSim: .75 [.26, 1.24] and .5 [-.07, 1.07] overlap; vs Popularity [0, 0]: above
    ns = "not separable at this scale"
    assert holds == ["yes", "yes", ns, "no", "yes", "no", ns, "yes"]
    assert rows[2]["note"] == "the difference lies inside the seed spread"
    assert "+23%" in rows[0]["ours"] and "2 seeds" in rows[0]["ours"]
    assert rows[6]["note"] == "not separable at this scale: the 95% intervals overlap"
    free = EvalResult({"full_masked": np.array([50.0])}, users[:1])
    gen = pipeline.PromptResults(users, [["x"]], [[1]] * 4, 0.25, 0.0, results, np.ones(4),
                                 free=free, free_users=users[:1])
    last = pipeline.claim_rows(bench, summary, sim, gen, n_seeds=2)[-1]
    assert last["holds"] == "no" and last["ours"].startswith("75% exact titles")


@pytest.fixture(scope="module")
def tiny_lm():
    return tiny_llama(initializer_range=0.2)


def test_prompter_trains_through_fit_and_is_scored_on_its_users(tiny, tiny_lm):
    titles = item_texts(tiny.items, pipeline.TEXT)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(tiny.n_items + 1, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[0] = 0

    def encode(texts):  # exact titles to their own vector, anything else to item 1's
        return np.stack([emb[titles.index(t)] if t in titles else emb[1] for t in texts])

    config = LLMSeqPromptConfig(max_items=2, lora_r=4, num_beams=2, max_new_tokens=3, top_k=5)
    prompter = LLMSeqPrompt(tiny_lm, CharTokenizer(), titles, emb, encode, config)
    bench = pipeline.Bench(tiny, np.arange(tiny.n_users), seed=0)
    train = TrainConfig(epochs=2, batch_size=4, lr=2e-2, select="min", patience=2,
                        progress=False)
    with pytest.raises(ValueError, match="select"):
        pipeline.train_prompter(prompter, bench, TrainConfig(), 8, 5, 3, 0, "cpu")
    tuned = pipeline.train_prompter(prompter, bench, train, n_examples=8, n_users=5, n_valid=3,
                                    seed=0, device="cpu", rounds=2, n_curve=4)
    assert len(tuned.examples) == len(set(tuned.examples)) == 8 and len(tuned.history.epochs) == 2
    assert len(set(tuned.users)) == 5 and list(tuned.users) == sorted(tuned.users)
    assert len(tuned.valid_pairs) == 3
    # rounds of distinct pairs: 0 (untrained), 4, 8; each pair seen once (2 steps of 4)
    assert [r["pairs"] for r in tuned.rounds] == [0, 4, 8] and len(tuned.history.steps) == 2
    assert tuned.rounds[0]["valid_title"] == tuned.loss_before
    assert {"valid_year", "valid_end", "train_title", "train_loss"} <= set(tuned.rounds[1])
    # the selected round has the lowest validation title loss, and its weights are kept
    assert tuned.loss_after == min(tuned.history.column("valid")) < tuned.loss_before
    assert prompter.mean_losses(tuned.valid_pairs)["title"] == pytest.approx(tuned.loss_after)
    # the ranking budget curve: one point per validation, on its own seeded validation users;
    # the selected round's point is what constrained generation gives now, scored by hand
    curve = tuned.curve
    assert [p["pairs"] for p in curve.points] == [0, 4, 8] and curve.evaluator.stage == "valid"
    assert len(curve.evaluator.users) == 4
    assert 0 < tuned.curve_seconds < tuned.history.seconds
    assert tuned.train_seconds == pytest.approx(tuned.history.seconds - tuned.curve_seconds)
    ev = curve.evaluator
    assert curve.keys == ("sampled19/HR@5", "sampled19/NDCG@10")
    ranks = []
    for row, h in enumerate(ev.histories):   # the target among its 19 negatives, ties against it
        neg = ev.negatives[19][row].tolist()
        s = prompter.title_logprobs(h, [int(ev.targets[row]), *neg])
        ranks.append(int((s[1:] >= s[0]).sum()))
    chosen = curve.points[tuned.history.best_epoch + 1]
    assert chosen["sampled19/HR@5"] == pytest.approx(np.mean(np.array(ranks) < 5))
    assert chosen["sampled19/NDCG@10"] == pytest.approx(
        np.mean([1 / np.log2(r + 2) if r < 10 else 0 for r in ranks]))
    with pytest.raises(ValueError, match="curve_kind"):
        pipeline.train_prompter(prompter, bench, train, 8, 5, 3, 0, "cpu", curve_kind="beams")
    table = curve.table(seed=0, method="LLMSeqPrompt")
    assert table.groupby("method", sort=False).size().to_dict() == {
        "LLMSeqPrompt": 3, "Random list": 3, "Popularity": 3}
    fig = pipeline.prompt_figure(tuned, seed=0)
    assert len(fig.axes) == 3 and len(fig.axes[2].get_lines()) == 3

    gen = pipeline.evaluate_prompter(prompter, bench, tuned.users, LLMSeqSim(emb), {}, "cpu",
                                     rescore=(), n_free=3)
    assert set(gen.results) == {"LLMSeqPrompt", "LLMSeqSim", "Popularity", "Random"}
    assert len(gen.generations) == 3 and len(gen.ranked) == 5
    assert 0 <= gen.hallucination_rate <= 1 and len(gen.free.users) == 3
    inputs = tiny.inputs("test")
    for u, items, beam in zip(tuned.users, gen.ranked, gen.beams):
        assert len(items) == len(set(items)) == 5 and not set(items) & set(inputs[u].tolist())
        assert items[:len(beam)] == beam and beam      # constrained beams lead the list
    hr5 = np.mean([t in items for t, items in zip(gen.targets, gen.ranked)])
    assert gen.results["LLMSeqPrompt"].metrics()["full_masked/HR@5"] == pytest.approx(hr5)
    table = pipeline.generation_examples(gen, bench, titles, n=3)
    assert table["constrained (best beam)"].tolist() == [titles[r[0]] for r in gen.ranked[:3]]
    same = pipeline.same_user_table(gen, bench)
    assert list(same.index) == ["LLMSeqPrompt", "LLMSeqSim", "Popularity", "Random"]
    assert "coverage@10" in same
    assert same["NDCG@10 95% CI"].str.match(r"^\[-?\d\.\d{3}, -?\d\.\d{3}\]$").all()
    lik = pipeline.likelihood_ranking(prompter, bench, tuned.users[:2], n_negatives=4, seed=0)
    assert set(lik.ranks["sampled4"]) <= {0, 1, 2, 3, 4}


def test_paper_path_loads_an_encoder_and_a_causal_lm_from_folders(tmp_path, tiny):
    """SCALE="paper" names all-mpnet-base-v2 and SmolLM2-1.7B-Instruct: the same loaders and
    pipeline on tiny random models of those architectures (MPNet, Llama) built from configs,
    with tokenizers trained here on the item titles (no network)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MPNetConfig,
        MPNetModel,
        MPNetTokenizerFast,
        PreTrainedTokenizerFast,
    )

    titles = item_texts(tiny.items, pipeline.TEXT)
    corpus = [t for t in titles if t] + [str(i) for i in range(10)]
    torch.manual_seed(0)
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(corpus, vocab_size=300, special_tokens=[
        "<s>", "<pad>", "</s>", "<unk>", "<mask>", "[UNK]"])
    mp_tok = MPNetTokenizerFast(tokenizer_object=wp._tokenizer, bos_token="<s>", eos_token="</s>",
                                sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                                pad_token="<pad>", mask_token="<mask>")
    enc_dir = tmp_path / "mpnet"
    MPNetModel(MPNetConfig(vocab_size=len(mp_tok), hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32,
                           max_position_embeddings=64, pad_token_id=1)).save_pretrained(enc_dir)
    mp_tok.save_pretrained(enc_dir)
    word = Transformer(str(enc_dir), max_seq_length=32)
    SentenceTransformer(modules=[word, Pooling(16, "mean")]).save(str(tmp_path / "st"))
    names = pipeline.embed_items(tiny, str(tmp_path / "st"), "cpu")
    assert names.emb.shape == (tiny.n_items + 1, 16) and not names.emb[0].any()

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus * 2, vocab_size=400, min_frequency=1,
                            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    lm_tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>",
                                     pad_token="<|im_end|>", bos_token="<|im_start|>")
    lm_dir = tmp_path / "smollm2"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(lm_tok), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=512, tie_word_embeddings=True,
                                 eos_token_id=lm_tok.eos_token_id,
                                 pad_token_id=lm_tok.pad_token_id)).save_pretrained(lm_dir)
    lm_tok.save_pretrained(lm_dir)
    config = LLMSeqPromptConfig(max_items=3, lora_r=4, num_beams=3, max_new_tokens=8, top_k=6)
    prompter, _ = pipeline.build_prompter(str(lm_dir), names, config, "cpu")
    bench = pipeline.Bench(tiny, np.arange(tiny.n_users), seed=0)
    train = TrainConfig(batch_size=4, lr=1e-2, patience=2, select="min", progress=False)
    tuned = pipeline.train_prompter(prompter, bench, train, 8, 4, 3, 0, "cpu", rounds=2,
                                    n_curve=3, curve_kind="generate")
    assert [r["pairs"] for r in tuned.rounds] == [0, 4, 8]
    # the generation curve: constrained beams filled as at test, full ranking, history masked
    assert [p["pairs"] for p in tuned.curve.points] == [0, 4, 8]
    assert tuned.curve.keys == ("full_masked/HR@5", "full_masked/NDCG@10")
    hist_in = tuned.curve.evaluator.histories
    lists = prompter.fill_from_items(prompter.generate_items(hist_in), hist_in)
    t_valid = tiny.targets("valid")[tuned.curve.evaluator.users]
    assert tuned.curve.points[tuned.history.best_epoch + 1]["full_masked/HR@5"] == pytest.approx(
        np.mean([t in items[:5] for t, items in zip(t_valid, lists)]))
    gen = pipeline.evaluate_prompter(prompter, bench, tuned.users, LLMSeqSim(names.emb), {},
                                     "cpu", rescore=(), n_free=2)
    inputs = tiny.inputs("test")
    for u, beam, items in zip(tuned.users, gen.beams, gen.ranked):
        assert beam and all(1 <= i <= tiny.n_items and i not in inputs[u] for i in beam)
        assert len(items) == 6 == len(set(items))
