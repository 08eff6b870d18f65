"""Two CPU processes (gloo, torchrun) train the same SASRec as one process."""

import json
import os
import subprocess
import sys


def _run(tmp_path, nproc: int) -> dict:
    out = tmp_path / f"{nproc}.json"
    args = ["-m", "recutils.distributed", "--users", "120", "--epochs", "2", "--dropout", "0",
            "--out", str(out)]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *args], check=True, env=env, timeout=600, capture_output=True)
    return json.loads(out.read_text())


def test_two_processes_match_one(tmp_path):
    one, two = _run(tmp_path, 1), _run(tmp_path, 2)
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert abs(one["param_sum"] - two["param_sum"]) < 1e-4 * abs(one["param_sum"])
    for a, b in zip(one["losses"], two["losses"]):
        assert abs(a - b) < 1e-4 * abs(a)
    for key in ("full/NDCG@10", "full/HR@10", "sampled100/NDCG@10"):
        assert abs(one["metrics"][key] - two["metrics"][key]) < 1e-3, key
