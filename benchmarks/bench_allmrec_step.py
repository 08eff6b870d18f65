"""A-LLMRec stage 2: seconds per training step before and after the CPU-budget changes.

    .venv/bin/python benchmarks/bench_allmrec_step.py [--threads 2] [--steps 3]

"before": the paper's prompt (5 history titles, 20 candidate titles, each followed by its
soft token, the answer is the title), fp32, answer-token loss (what notebook 04 trained
until issue 14). "after": the choice prompt (3 history titles, candidate titles clipped
to 3 words behind index letters), the LM under bf16 autocast (AMX on this CPU), the
choice loss read from one position (``logits_to_keep=1``). Same users, batch 4,
untrained projectors (the speed does not depend on them). Prints the prompt lengths,
the median seconds per step and the machine's load average.
"""

import argparse
import os
import time

import numpy as np
import torch

from recutils.data import load, prepare
from recutils.lm import load_causal_lm
from recutils.models.allmrec import ALLMRec, ALLMRecConfig, prompt_batch, short_title
from recutils.pipelines import allmrec as pipeline


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = prepare(load("ml-100k"), kcore_k=None)
    titles = [short_title(t) for t in data.items["title"]]
    lm, tok = load_causal_lm("SmolLM2-135M-Instruct", device="cpu")
    users = pipeline.usable_users(data)
    table = torch.randn(data.n_items + 1, 128)
    user_vecs = torch.randn(args.batch, 50)
    setups = {
        "before (paper prompt, fp32, answer loss)": (ALLMRecConfig(n_history=5), None),
        "after (choice prompt, bf16, choice loss)": (
            ALLMRecConfig(n_history=3, loss="choice", bf16=True),
            pipeline.ChoicePrompter(titles, max_words=3, user_at_end=True, user_in_candidates=True)),
    }
    for name, (cfg, choice) in setups.items():
        ex = pipeline.stage2_examples(data, users, args.batch, cfg.n_history, cfg.n_candidates, 0)
        model = ALLMRec(lm, tok, table, user_dim=50, config=cfg)
        if choice is None:
            prompter = pipeline.Prompter(titles)
            batch = prompt_batch(tok, [prompter.prompt(e) for e in ex], [prompter.answer(e) for e in ex])
            batch["user_vecs"] = user_vecs
        else:
            batch = pipeline.choice_batch(tok, choice, ex, user_vecs)
        seconds = []
        for _ in range(args.steps + 1):
            t0 = time.perf_counter()
            model.loss(batch).backward()
            seconds.append(time.perf_counter() - t0)
        print(f"{name}: {batch['input_ids'].shape[1]} tokens per prompt, batch {args.batch}, "
              f"{np.median(seconds[1:]):.2f} s/step (median of {args.steps}, {args.threads} threads, "
              f"load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
