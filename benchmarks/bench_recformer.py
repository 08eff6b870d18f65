"""What makes RecFormer tuning cheap: seconds per step and per epoch of the ways to cut it.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_recformer.py [--reps 3] [--threads 2]

On ML-100k with all-MiniLM-L6-v2 (notebook 05's default: 10 items per history), it prints
the median seconds of

* one fine-tuning step (forward + backward + AdamW on 32 histories) with every layer
  trainable, with one layer per stratum (1,3,5; the paper's layer-freezing result) and with
  the top layer only;
* one pre-training step (the target items are encoded in the step) against one fine-tuning
  step over a cached item table;
* re-encoding the whole catalogue: what fine-tuning stage 1 pays before every epoch and
  stage 2 (fixed item table) never pays;
* the same with shorter item texts (8 tokens per item instead of 16).

Only numbers are printed; nothing is asserted (speed depends on the machine and its load,
which is printed too).
"""

import argparse
import os
import statistics
import time

import numpy as np
import torch

from recutils.data import load, prepare
from recutils.lm import load_text_encoder
from recutils.models import recformer as rf
from recutils.models.recformer import RecFormerConfig
from recutils.pipelines.elephant import TextCatalogue


def median_seconds(fn, reps: int) -> float:
    fn()   # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(item_tokens: int, data, seqs, users, reps: int) -> None:
    """Print the timings of one item-text length."""
    backbone, tok = load_text_encoder("all-MiniLM-L6-v2")
    config = RecFormerConfig(max_items=10, item_tokens=item_tokens)
    model = rf.RecFormer(backbone, config)
    cat = TextCatalogue.build(tok, data.items, config.fields, item_tokens)
    hist = [seqs[u][:-1] for u in users]
    targets = torch.tensor([int(seqs[u][-1]) for u in users])
    batch = {"history": cat.batch(hist, config.max_items), "target": targets,
             "item": rf.item_batch(cat.tokens, targets.tolist(), cat.cls_id, cat.pad_id)}
    table = rf.encode_items(model, cat.tokens, cat.cls_id, cat.pad_id)
    print(f"\nitem texts of <= {item_tokens} tokens: {batch['history']['input_ids'].shape[1]} "
          "tokens per history")

    def step(loss_fn, layers):
        params = rf.set_trainable_layers(model, layers)
        opt = torch.optim.AdamW(params, lr=1e-5)

        def run():
            loss = loss_fn()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return median_seconds(run, reps)

    def finetune():
        return rf.finetune_loss(model, batch, table)

    def pretrain():
        return rf.pretrain_loss(model, batch, cat.mask_id)

    model.train()
    rows = {"fine-tuning step, all layers": step(finetune, "all"),
            "fine-tuning step, layers 1,3,5": step(finetune, [1, 3, 5]),
            "fine-tuning step, layer 5 only": step(finetune, [5]),
            "pre-training step (items encoded in the step)": step(pretrain, "all")}
    rows["re-encoding the catalogue (stage 1, every epoch)"] = median_seconds(
        lambda: rf.encode_items(model, cat.tokens, cat.cls_id, cat.pad_id), 1)
    for name, seconds in rows.items():
        print(f"  {name:<52} {seconds:7.2f} s")
    base = rows["fine-tuning step, all layers"]
    print(f"  one layer per stratum: {base / rows['fine-tuning step, layers 1,3,5']:.2f}x "
          f"faster per step; cached item table vs items in the step: "
          f"{rows['pre-training step (items encoded in the step)'] / base:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = prepare(load("ml-100k"), max_len=20)
    seqs = data.train_sequences()
    rng = np.random.default_rng(0)
    users = rng.choice(len(seqs), size=args.batch, replace=False)
    print(f"threads {args.threads}, load average {os.getloadavg()[0]:.2f}, batch {args.batch}, "
          f"{data.n_items} items, median of {args.reps}")
    for item_tokens in (16, 8):
        measure(item_tokens, data, seqs, users, args.reps)

if __name__ == "__main__":
    main()
