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
