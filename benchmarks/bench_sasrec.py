"""SASRec on ML-100k against the RecBole anchor: NDCG@10, seconds per epoch, time to 0.0581.

    .venv/bin/python benchmarks/bench_sasrec.py [--epochs 40] [--threads 2]

The anchor (measured on a 2-core machine): RecBole 1.2.1's SASRec with its defaults
(hidden 64, 2 layers, 2 heads, cross-entropy, every prefix copied as a training example,
batch 2048, max length 50) on ML-100k leave-one-out, full ranking without history
masking: test NDCG@10 0.0581 / HR@10 0.1188 after 10 epochs and 20 minutes.

The model is selected on validation NDCG@10 (as in the notebooks). Test NDCG@10 is also
computed after every epoch, only to report when the anchor is reached; it selects nothing.
"""

import argparse

import torch

from recutils.data import load, prepare
from recutils.evaluation import Evaluator
from recutils.models import SASRec, SASRecConfig
from recutils.reproducibility import seed_everything
from recutils.training import EpochHook, TrainConfig, fit_sequential, sequence_scorer

ANCHOR_NDCG10, ANCHOR_HR10 = 0.0581, 0.1188


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = prepare(load("ml-100k"))
    test = Evaluator(data, "test", protocols=("full",), ks=(10,))

    def trace_test(model, row):
        row["test_ndcg10"] = test.evaluate(sequence_scorer(model, data, "test")).metrics()["full/NDCG@10"]

    seed_everything(args.seed)
    model = SASRec(data.n_items, SASRecConfig(hidden=64, n_layers=2, n_heads=2, dropout=0.3, max_len=50))
    hist = fit_sequential(model, data, TrainConfig(epochs=args.epochs, batch_size=64, lr=1e-3, patience=8),
                          seed=args.seed, desc="SASRec", callbacks=[EpochHook(trace_test)])
    final = test.evaluate(sequence_scorer(model, data, "test")).metrics()
    train_s = hist.column("train_seconds")
    elapsed, reached = 0.0, None
    for seconds, row in zip(train_s, hist.epochs):
        elapsed += seconds
        if reached is None and row["test_ndcg10"] >= ANCHOR_NDCG10:
            reached = (elapsed, row["epoch"])
    print(f"epochs run                {len(hist.epochs)} (selected on validation: epoch {hist.best_epoch})")
    print(f"seconds per epoch         {sum(train_s) / len(train_s):.2f}")
    print(f"training seconds in all   {sum(train_s):.1f}")
    print(f"seconds to selected epoch {sum(train_s[: hist.best_epoch + 1]):.1f}")
    print(f"test NDCG@10 / HR@10      {final['full/NDCG@10']:.4f} / {final['full/HR@10']:.4f} "
          f"(RecBole anchor {ANCHOR_NDCG10} / {ANCHOR_HR10}, 20 min)")
    print("time to reach 0.0581      " + (f"{reached[0]:.1f} s of training (epoch {reached[1]})"
                                         if reached else "not reached"))


if __name__ == "__main__":
    main()
