"""Same seed, same numbers: loading never draws random numbers, kernels are deterministic."""

import random

import numpy as np
import pytest
import torch

from recutils import lm
from recutils.reproducibility import make_reproducible, preserved_rng, seed_everything


def _draw() -> tuple:
    return torch.rand(4).tolist(), np.random.rand(2).tolist(), random.random()


def test_preserved_rng_restores_every_generator():
    seed_everything(3)
    expected = _draw()
    seed_everything(3)
    with preserved_rng():
        _draw(), torch.nn.Linear(50, 50)  # draws from the torch generator
    assert _draw() == expected


def test_loading_smollm2_draws_nothing_with_a_cold_or_a_warm_cache(tmp_path, monkeypatch):
    """The first run on a fresh machine converts the GGUF (building a model from a config,
    which initialises weights at random); afterwards it reads the cache. Both leave the
    generators as they were, so what a notebook draws after loading never depends on it."""
    monkeypatch.setenv("RECUTILS_DATA", str(tmp_path / "cold"))
    seed_everything(0)
    expected = _draw()
    draws = []
    for cache in ("cold", "warm"):
        assert (tmp_path / "cold" / "models").exists() == (cache == "warm")
        seed_everything(0)
        lm.load_causal_lm()
        draws.append(_draw())
    assert draws == [expected, expected]


@pytest.mark.parametrize("load", [lm.load_text_encoder, lm.load_sentence_encoder],
                         ids=["text_encoder", "sentence_encoder"])
def test_loading_minilm_draws_nothing(load):
    seed_everything(0)
    expected = _draw()
    seed_everything(0)
    load()
    assert _draw() == expected


def test_make_reproducible_fixes_threads_and_kernels():
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        settings = make_reproducible(5, threads=1)
        assert settings == {"seed": 5, "threads": 1, "deterministic_algorithms": True,
                            "numpy_blas_threads": 1}
        from threadpoolctl import threadpool_info
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        first = torch.rand(3)
        make_reproducible(5, threads=1)
        assert torch.equal(first, torch.rand(3))
        with pytest.raises(ValueError, match="threads must be >= 1"):
            make_reproducible(5, threads=0)
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def test_sasrec_bce_gradient_is_the_same_run_to_run():
    """SASRec's BCE loss gathers item rows with repeated ids; its gradient must not depend on
    the order in which CPU threads finish. With ``w[ids]`` (advanced indexing) it did: at this
    size every repetition gave a different gradient on 2 threads (see models/sasrec.py)."""
    from recutils.models import SASRec, SASRecConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(4):
            torch.manual_seed(0)
            m = SASRec(1682, SASRecConfig(hidden=64, max_len=50, loss="bce"))
            m.loss(torch.randint(1, 1683, (64, 51))).backward()
            grads.append(m.items.table.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
