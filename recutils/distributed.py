"""Data-parallel SASRec training with torch.distributed (DistributedDataParallel).

    # 1 process (the reference)
    python -m recutils.distributed --dataset ml-100k --epochs 20 --out one.json
    # N processes on one machine: N GPUs (nccl) or N CPU processes (gloo)
    torchrun --standalone --nproc_per_node 2 -m recutils.distributed --dataset ml-100k --epochs 20 --out two.json

Every process reads the same data and draws the same batch order from the seed; each
global batch is split across processes (rank r takes windows r, r + N, ...). Each
process's loss is rescaled by its share of the batch's prediction targets, so that the
gradient DDP averages is exactly the gradient of the single-process loss: N processes and
one process train the same model, up to floating-point summation order (a test checks
this with 2 CPU processes). Training runs for a fixed number of epochs (no early
stopping, which would need a collective decision); rank 0 evaluates on the test split.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from recutils.data import load, prepare
from recutils.evaluation import Evaluator
from recutils.models import SASRec
from recutils.training import resolve_device, seed_everything, sequence_scorer, training_windows


class _ScaledLoss(nn.Module):
    """Wraps a model so that DDP sees the loss in ``forward`` (DDP syncs gradients there)."""

    def __init__(self, model: SASRec) -> None:
        super().__init__()
        self.model = model

    def forward(self, shard: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
        return self.model.loss(shard) * share


def train_sasrec(data, *, epochs: int, batch_size: int, lr: float, seed: int, hidden: int = 64,
                 dropout: float = 0.3, max_len: int = 50, device: torch.device | None = None,
                 ) -> tuple[SASRec, list[float]]:
    """Train SASRec on ``data``, data-parallel when a process group is initialised.

    Returns the trained model (identical on every rank) and the mean loss per epoch.
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    device = device or torch.device("cpu")
    seed_everything(seed)
    model = SASRec(data.n_items, hidden=hidden, dropout=dropout, max_len=max_len).to(device)
    wrapped: nn.Module = _ScaledLoss(model)
    if world > 1:
        wrapped = DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    windows = training_windows(data.train_sequences(), max_len + 1)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(epochs):
        model.train()
        order = torch.as_tensor(rng.permutation(len(windows)))
        total, steps = 0.0, 0
        for i in range(0, len(order), batch_size):
            batch = windows[order[i:i + batch_size]]
            shard = batch[rank::world].to(device)
            targets_all = (batch[:, 1:] > 0).sum()
            targets_here = (shard[:, 1:] > 0).sum()
            # mean over my targets x (my targets / all targets) x world: DDP's average over
            # ranks then equals the mean over all of the batch's targets
            share = (targets_here.float() / targets_all.float() * world).to(device)
            if targets_here == 0:
                share = share * 0.0
            loss = wrapped(shard, share)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            reported = loss.detach().clone()
            if world > 1:
                dist.all_reduce(reported)  # sum of the ranks' shares = the whole batch's loss
            total, steps = total + reported.item() / world, steps + 1
        losses.append(total / max(steps, 1))
    model.eval()
    return model, losses


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Data-parallel SASRec (run under torchrun for N > 1)")
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--users", type=int, default=0, help="seeded user sample (0 = all)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64, help="global batch, split over processes")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write metrics JSON here (rank 0)")
    args = ap.parse_args(argv)

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = resolve_device("auto")
    if distributed:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    data = prepare(load(args.dataset))
    if args.users:
        data = data.subsample_users(args.users, seed=args.seed)
    start = time.perf_counter()
    model, losses = train_sasrec(data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                 seed=args.seed, hidden=args.hidden, dropout=args.dropout,
                                 max_len=args.max_len, device=device)
    seconds = time.perf_counter() - start
    rank = dist.get_rank() if distributed else 0
    if rank == 0:
        metrics = Evaluator(data, "test").evaluate(sequence_scorer(model, data, "test", device)).metrics()
        out = {"world_size": dist.get_world_size() if distributed else 1, "train_seconds": seconds,
               "losses": losses, "metrics": metrics,
               "param_sum": float(sum(p.detach().double().sum() for p in model.parameters()))}
        print(json.dumps({k: out[k] for k in ("world_size", "train_seconds")} |
                         {"full/NDCG@10": metrics["full/NDCG@10"]}))
        if args.out:
            args.out.write_text(json.dumps(out, indent=1))
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
