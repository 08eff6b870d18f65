"""LANCER candidate scoring: candidates scored per second with and without prompt-cache reuse.

    .venv/bin/python benchmarks/bench_lancer_scoring.py [--users 4] [--candidates 101]

Each user's reasoning prompt (10 ML-100k titles under the knowledge + reasoning prefix) is
scored against ``--candidates`` catalogue titles with SmolLM2-135M (untrained prefixes: the
speed does not depend on them). "reuse" encodes the prompt once and copies its key/value
cache to each chunk of candidates; "no reuse" runs prompt + title for every candidate. The
two must give the same log-likelihoods (printed: the largest difference).
"""

import argparse
import time

import numpy as np
import torch

from recutils.data import load, prepare
from recutils.lm import load_causal_lm
from recutils.models.lancer import LANCER, LANCERConfig, item_title, reasoning_batch, title_paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=101)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = prepare(load("ml-100k"), min_user=5, max_len=10, min_len=5)
    lm, tok = load_causal_lm("SmolLM2-135M-Instruct", device="cpu")
    cfg = LANCERConfig(max_slots=5, max_genres=1, bf16=True, dropout=0.0)
    model = LANCER(lm, tok, cfg).eval()
    titles = data.items["title"].tolist()
    genres = [list(g)[:1] for g in data.items["genres"]]
    paths = title_paths(tok, [item_title(t) if i else "" for i, t in enumerate(titles)])
    rng = np.random.default_rng(0)
    reps = torch.randn(data.n_items + 1, lm.config.hidden_size)
    users = rng.choice(data.n_users, size=args.users, replace=False)
    inputs = data.inputs("test")
    batch = reasoning_batch(tok, reps, [inputs[u] for u in users], titles, genres,
                            max_items=cfg.max_items, max_slots=cfg.max_slots)
    cands = [rng.choice(np.arange(1, data.n_items + 1), size=args.candidates,
                        replace=False).tolist() for _ in users]
    model.score_candidates(batch, [c[:4] for c in cands[:1]], paths)  # warm-up
    out = {}
    for reuse in (True, False):
        t0 = time.perf_counter()
        out[reuse] = model.score_candidates(batch, cands, paths, reuse_cache=reuse)
        sec = time.perf_counter() - t0
        n = args.users * args.candidates
        print(f"{'reuse   ' if reuse else 'no reuse'}: {n / sec:7.1f} candidates/s "
              f"({sec:.1f} s for {args.users} users x {args.candidates} candidates, "
              f"{args.threads} threads)")
    diff = max(float(np.abs(a - b).max()) for a, b in zip(out[True], out[False]))
    print(f"largest log-likelihood difference between the two: {diff:.2e} (bf16 matmuls)")


if __name__ == "__main__":
    main()
