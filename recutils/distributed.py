"""Data-parallel training with torch.distributed (DistributedDataParallel) for two models:
SASRec (ID-based) and a LoRA-tuned causal LM (SmolLM2-135M by default) that writes the
title of a user's next item, the PLM recipe of LLMSeqPrompt (Harte et al., RecSys'23).

    # 1 process (the reference)
    python -m recutils.distributed --model sasrec --epochs 20 --out one.json
    # N processes on one machine: N GPUs (nccl) or N CPU processes (gloo)
    torchrun --standalone --nproc_per_node 2 -m recutils.distributed --model sasrec --out two.json
    torchrun --standalone --nproc_per_node 8 -m recutils.distributed --model lora-lm \\
        --lm HuggingFaceTB/SmolLM2-1.7B-Instruct --epochs 1 --out lm.json

Every process reads the same data and draws the same batch order from the seed; each
global batch is split across processes (rank r takes examples r, r + N, ...). Each
process's loss (a mean over its prediction targets: items for SASRec, completion tokens for
the LM) is rescaled by its share of the batch's targets, so that the gradient DDP averages
is exactly the gradient of the single-process loss: N processes and one process train the
same model, up to floating-point summation order (tests check this with 2 CPU processes).
Training runs for a fixed number of epochs (no early stopping, which would need a
collective decision); rank 0 evaluates.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from recutils.batching import batch_indices, to_device
from recutils.data import load, prepare
from recutils.data.sequences import SequenceData
from recutils.evaluation import Evaluator
from recutils.lm import SMOLLM2, completion_batch, load_causal_lm
from recutils.models import SASRec, SASRecConfig
from recutils.models.llmseq import seq_prompt
from recutils.reproducibility import seed_everything
from recutils.training import TrainConfig, fit, resolve_device, sequence_scorer, training_windows


def _world() -> tuple[int, int]:
    """(world size, rank); (1, 0) without a process group."""
    return (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)


class _ScaledLoss(nn.Module):
    """Puts ``loss_fn(model, shard) * share`` in ``forward``: DDP syncs gradients there."""

    def __init__(self, model: nn.Module, loss_fn: Callable) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, shard, share: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, shard) * share


def train_data_parallel(model: nn.Module, examples: Sequence, *, loss_fn: Callable,
                        count_fn: Callable, epochs: int, batch_size: int, lr: float, seed: int,
                        device: torch.device) -> tuple[list[float], float]:
    """Train ``model``'s trainable parameters with :func:`recutils.training.fit` (AdamW),
    data-parallel when a process group exists.

    ``examples`` is indexable by a list of positions (a tensor of windows, a list of pairs,
    ...); ``loss_fn(model, shard)`` returns the mean loss over the shard's prediction targets
    and ``count_fn(shard)`` how many targets the shard has. Every rank draws the same global
    batches; ``fit`` sees only this rank's shard of each, and the gradients are averaged over
    the ranks by DDP during ``backward``. Returns the mean loss per epoch (of the whole global
    batches) and how far training moved the trainable parameters (L2 norm of the change),
    both the same on every rank.
    """
    world, rank = _world()
    wrapped: nn.Module = _ScaledLoss(model, loss_fn)
    if world > 1:
        wrapped = DistributedDataParallel(
            wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    rng = np.random.default_rng(seed)  # one generator for the whole run: a new order per epoch

    def shards(epoch: int):
        for positions in batch_indices(len(examples), batch_size, rng):
            batch = [examples[j] for j in positions]
            shard = batch[rank::world]
            targets_all, targets_here = count_fn(batch), count_fn(shard) if shard else 0
            # mean over my targets x (my targets / all targets) x world: DDP's average over
            # ranks then equals the mean over all of the batch's targets
            share = targets_here / max(targets_all, 1) * world
            if targets_here == 0:  # keep this rank in the collective with a zero gradient
                shard, share = batch[:1], 0.0
            yield shard, torch.tensor(share)

    def scaled_loss(m: nn.Module, batch) -> dict[str, torch.Tensor]:
        loss = m(*batch)
        whole = loss.detach().clone()
        if world > 1:
            dist.all_reduce(whole)  # sum of the ranks' shares = world x the whole batch's loss
        return {"loss": loss, "batch_loss": whole / world}

    # weight decay 0.01: AdamW's own default, what this module has always trained with
    config = TrainConfig(epochs=epochs, lr=lr, weight_decay=0.01, batch_size=batch_size,
                         amp=False, progress=False)
    history = fit(wrapped, shards, config, loss_fn=scaled_loss, params=params, device=device,
                  desc=f"rank {rank}")
    moved = sum(float((p.detach() - s).double().pow(2).sum()) for p, s in zip(params, start))
    return history.column("batch_loss"), moved ** 0.5


# --- SASRec --------------------------------------------------------------------------------

def train_sasrec(data: SequenceData, *, epochs: int, batch_size: int, lr: float, seed: int,
                 hidden: int = 64, dropout: float = 0.3, max_len: int = 50,
                 device: torch.device | None = None) -> tuple[SASRec, list[float], float]:
    """Train SASRec on ``data`` (full softmax), data-parallel when a process group exists.

    Returns (model, mean loss per epoch, distance the parameters moved).
    """
    device = device or torch.device("cpu")
    seed_everything(seed)
    model = SASRec(data.n_items, SASRecConfig(hidden=hidden, dropout=dropout, max_len=max_len)).to(device)
    windows = list(training_windows(data.train_sequences(), max_len + 1))
    losses, moved = train_data_parallel(
        model, windows, loss_fn=lambda m, shard: m.loss(torch.stack(shard).to(device)),
        count_fn=lambda shard: int(sum((w[1:] > 0).sum() for w in shard)),
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)
    return model, losses, moved


# --- LoRA causal LM ----------------------------------------------------------------------------

def title_pairs(data: SequenceData, tokenizer, stage: str | None = None, history: int = 10,
                ) -> list[tuple[str, str]]:
    """(prompt, completion) pairs in notebook 01's LLMSeqPrompt format: the numbered last
    ``history`` titles, then the next title and the tokenizer's end marker.

    ``stage=None`` uses the training part (predict its last item from the ones before);
    "valid" / "test" predict that stage's held-out item.
    """
    if stage is None:
        seqs = [s for s in data.train_sequences() if len(s) >= 2]
        inputs, targets = [s[:-1] for s in seqs], [s[-1] for s in seqs]
    else:
        inputs, targets = data.inputs(stage), data.targets(stage)
    return [(seq_prompt(data.titles(hist), history), data.titles([target])[0] + tokenizer.eos_token)
            for hist, target in zip(inputs, targets)]


def completion_loss(model: nn.Module, tokenizer, pairs: Sequence[tuple[str, str]], max_length: int = 256,
            ) -> torch.Tensor:
    """Mean cross-entropy over the completion tokens of ``pairs``.

    Position ids count real tokens only, so the loss of a pair does not depend on how much
    left padding its batch needed (this is what makes sharded batches equal the whole).
    """
    device = next(model.parameters()).device
    batch = completion_batch(tokenizer, [p for p, _ in pairs], [c for _, c in pairs], max_length)
    batch = to_device(batch, device)
    batch["position_ids"] = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0)
    return model(**batch).loss


def completion_tokens(tokenizer, pairs: Sequence[tuple[str, str]]) -> int:
    """How many tokens the completions of ``pairs`` have (the targets of ``completion_loss``)."""
    return sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for _, c in pairs)


def train_lora_lm(data: SequenceData, *, epochs: int, batch_size: int, lr: float, seed: int,
                  lm: str = SMOLLM2, rank: int = 8, device: torch.device | None = None):
    """LoRA-tune a causal LM on ``title_pairs(data)``, data-parallel when a process group exists.

    Returns (model, tokenizer, mean loss per epoch, distance the LoRA weights moved). LoRA dropout is 0 so that runs with
    different numbers of processes can match exactly.
    """
    from peft import LoraConfig, get_peft_model

    device = device or torch.device("cpu")
    seed_everything(seed)
    base, tok = load_causal_lm(lm, device=device)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                        target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    pairs = title_pairs(data, tok)
    losses, moved = train_data_parallel(
        model, pairs, loss_fn=lambda m, shard: completion_loss(m, tok, shard),
        count_fn=lambda shard: completion_tokens(tok, shard),
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)
    return model, tok, losses, moved


def _trainable_sum(model: nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters() if p.requires_grad))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Data-parallel training (run under torchrun for N > 1)")
    ap.add_argument("--model", choices=["sasrec", "lora-lm"], default="sasrec")
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--users", type=int, default=0, help="seeded user sample (0 = all)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64, help="global batch, split over processes")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=64, help="SASRec")
    ap.add_argument("--dropout", type=float, default=0.3, help="SASRec")
    ap.add_argument("--max-len", type=int, default=50, help="SASRec")
    ap.add_argument("--lm", default=SMOLLM2, help="lora-lm: causal LM name (hub names need a network)")
    ap.add_argument("--lora-rank", type=int, default=8, help="lora-lm")
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
    common = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  device=device)
    start = time.perf_counter()
    if args.model == "sasrec":
        model, losses, moved = train_sasrec(data, hidden=args.hidden, dropout=args.dropout,
                                     max_len=args.max_len, **common)
    else:
        model, tok, losses, moved = train_lora_lm(data, lm=args.lm, rank=args.lora_rank, **common)
    seconds = time.perf_counter() - start
    if _world()[1] == 0:
        if args.model == "sasrec":
            scores = sequence_scorer(model, data, "test", device)
            metrics = Evaluator(data, "test").evaluate(scores).metrics()
        else:  # validation loss on the held-out next titles (the test split stays untouched)
            with torch.no_grad():
                metrics = {"valid/loss": float(completion_loss(model, tok, title_pairs(data, tok, "valid")))}
        out = {"model": args.model, "world_size": _world()[0], "train_seconds": seconds,
               "losses": losses, "metrics": metrics, "param_sum": _trainable_sum(model),
               "moved": moved}
        print(json.dumps({k: out[k] for k in ("model", "world_size", "train_seconds")} |
                         {k: metrics[k] for k in list(metrics)[:1]}))
        if args.out:
            args.out.write_text(json.dumps(out, indent=1))
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
