"""Two CPU processes (gloo, torchrun) train the same models as one process."""

import json
import os
import subprocess
import sys


def _run(tmp_path, nproc: int, *extra: str) -> dict:
    out = tmp_path / f"{nproc}.json"
    args = ["-m", "recutils.distributed", *extra, "--out", str(out)]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], env=env, timeout=900, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def _same_training(one: dict, two: dict, rel: float) -> None:
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert abs(one["param_sum"] - two["param_sum"]) <= rel * abs(one["param_sum"])
    assert one["moved"] > 0 and abs(one["moved"] - two["moved"]) <= rel * one["moved"]
    assert len(one["losses"]) == len(two["losses"])
    for a, b in zip(one["losses"], two["losses"]):
        assert abs(a - b) <= rel * abs(a)


def test_two_processes_train_the_same_sasrec(tmp_path):
    flags = ("--model", "sasrec", "--users", "120", "--epochs", "2", "--dropout", "0")
    one, two = _run(tmp_path, 1, *flags), _run(tmp_path, 2, *flags)
    _same_training(one, two, 1e-4)
    for key in ("full/NDCG@10", "full/HR@10", "sampled100/NDCG@10"):
        assert abs(one["metrics"][key] - two["metrics"][key]) < 1e-3, key


def test_two_processes_train_the_same_lora_lm(tmp_path):
    # 12 users, batch 4 (2 per process): 3 optimiser steps of LoRA on SmolLM2-135M
    flags = ("--model", "lora-lm", "--users", "12", "--epochs", "1", "--batch-size", "4",
             "--lr", "1e-3")
    one, two = _run(tmp_path, 1, *flags), _run(tmp_path, 2, *flags)
    _same_training(one, two, 1e-3)
    a, b = one["metrics"]["valid/loss"], two["metrics"]["valid/loss"]
    assert abs(a - b) < 1e-3 * a
    assert one["losses"][0] > 0


def test_one_process_equals_plain_adamw_over_the_seeded_batches():
    """Without a process group, train_data_parallel is AdamW (weight decay 0.01) over batches
    drawn from one seeded generator, and reports each epoch's mean batch loss."""
    import numpy as np
    import torch

    from recutils.distributed import train_data_parallel

    torch.manual_seed(0)
    x, y = torch.randn(10, 3), torch.randn(10)
    examples = list(range(10))

    def loss_fn(m, shard):
        idx = torch.as_tensor(shard)
        return ((m(x[idx]).squeeze(1) - y[idx]) ** 2).mean()

    torch.manual_seed(1)
    model = torch.nn.Linear(3, 1)
    torch.manual_seed(1)
    ref = torch.nn.Linear(3, 1)
    start = [p.detach().clone() for p in model.parameters()]
    losses, moved = train_data_parallel(model, examples, loss_fn=loss_fn, count_fn=len, epochs=2,
                                        batch_size=4, lr=0.1, seed=3, device=torch.device("cpu"))
    opt = torch.optim.AdamW(ref.parameters(), lr=0.1, weight_decay=0.01)
    rng, expected = np.random.default_rng(3), []
    for _ in range(2):
        order, epoch = rng.permutation(10), []
        for s in range(0, 10, 4):
            loss = loss_fn(ref, [int(i) for i in order[s:s + 4]])
            opt.zero_grad()
            loss.backward()
            opt.step()
            epoch.append(loss.item())
        expected.append(sum(epoch) / len(epoch))
    assert losses == expected
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)
    change = sum(float((p.detach() - s).double().pow(2).sum()) for p, s in zip(model.parameters(), start))
    assert moved == change ** 0.5 > 0
