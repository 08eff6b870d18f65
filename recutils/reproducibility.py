"""Same seed, same numbers: seeding, a fixed thread count, deterministic kernels.

Three things make a PyTorch run differ from the last one with the same seed, and this module
handles each at its root:

* **random draws nobody seeded**: :func:`seed_everything` seeds Python, NumPy and torch;
  :func:`preserved_rng` lets code that must not consume random numbers (loading a
  pretrained model, which may build and randomly initialise a module first) leave every
  generator exactly as it found it, so the first run on a fresh machine (empty cache) and
  every later run draw the same numbers afterwards;
* **kernels that add in a different order every run**: on CPU, the backward pass of
  advanced indexing (``w[idx]`` with repeated ``idx``) accumulates from several threads in
  whatever order they finish; ``torch.use_deterministic_algorithms(True)`` switches such
  kernels to deterministic ones (and raises where none exists, so a new one is found);
* **the thread count**: a float sum split over 2 threads rounds differently from one split
  over 4, so the thread count is part of a run's settings. :func:`make_reproducible` fixes
  it (the notebooks' ``THREADS`` parameter, 2 by default) and the results files record it.

``make_reproducible(SEED, THREADS)`` is the first thing every notebook does after reading its
parameters. Nothing here runs on import.
"""

from __future__ import annotations

import functools
import os
import platform
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def make_reproducible(seed: int, threads: int = 2) -> dict:
    """Seed everything, fix torch's CPU thread count and turn on deterministic kernels.

    Returns the settings (for the results file). ``threads`` must be fixed for a seed to give
    the same numbers: float reductions split over a different number of threads round
    differently. On CUDA, ``CUBLAS_WORKSPACE_CONFIG`` is set (cuBLAS needs it to be
    deterministic) and kernels without a deterministic version only warn.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    if cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=cuda)
    # NumPy's BLAS (OpenBLAS) on one thread: its multi-threaded SVD gave run-to-run differences
    # (a PCA item table of notebook 05, a PCA figure of notebook 01) on a loaded machine.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    seed_everything(seed)
    return {"seed": seed, "threads": threads, "deterministic_algorithms": True,
            "numpy_blas_threads": 1}


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without changing the state of any random number generator.

    Python's ``random``, NumPy's global generator and torch's CPU and CUDA generators are
    saved on entry and restored on exit, whatever the block drew.
    """
    py, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


@functools.cache
def cpu_model() -> str:
    """The CPU's model name and torch's vector capability (e.g. ``"AMD EPYC | AVX512"``).

    Recorded with every run: the same seed gives the same numbers on one machine, but another
    CPU runs other float kernels (bf16, oneDNN paths), and training can end elsewhere.
    """
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:  # not Linux
        pass
    name = name or platform.processor() or platform.machine() or "unknown"
    return f"{name} | {torch.backends.cpu.get_cpu_capability()}"


def run_conditions() -> dict:
    """Thread counts, CPU count and model, load average and peak memory now (recorded beside
    every timing)."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # not available on every platform
        load = None
    try:
        import resource

        peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    except ImportError:
        peak = None
    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "cpu_count": os.cpu_count(), "cpu": cpu_model(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "load_average_1_5_15": load, "peak_rss_mb": peak}
