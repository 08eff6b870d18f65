"""Shared fixtures: hand-written files in each dataset's format and a tiny sequence dataset."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recutils.data.registry import RawDataset
from recutils.data.sequences import prepare

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


def make_raw(n_users: int = 40, n_items: int = 200, length: tuple[int, int] = (5, 12),
             seed: int = 0) -> RawDataset:
    """A random dataset in the parsed format: each user has a random walk over items."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(np.arange(1, n_items + 1), size=rng.integers(*length), replace=False)
        for t, i in enumerate(items):
            rows.append((f"u{u}", str(i), 4.0, 1000 + 10 * t))
    inter = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    items = pd.DataFrame({"item": [str(i) for i in range(1, n_items + 1)],
                          "title": [f"Movie {i}" for i in range(1, n_items + 1)],
                          "year": pd.array([1990 + i % 10 for i in range(1, n_items + 1)], dtype="Int64"),
                          "genres": [["Drama"] if i % 2 else ["Comedy", "Drama"] for i in range(1, n_items + 1)],
                          "description": "", "brand": ""})
    return RawDataset("toy", inter, items)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return prepare(make_raw())


def tiny_llama(initializer_range: float = 0.02, max_positions: int = 256):
    """A 2-layer Llama with a 64-token vocabulary, random weights (seed 0), in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions, initializer_range=initializer_range)
    return LlamaForCausalLM(config).eval()


class CharTokenizer:
    """A tiny tokenizer (one id per character, "#" = end of sequence = 1, pad 0) with the parts
    of the Hugging Face API that A-LLMRec's code uses."""

    eos_token, eos_token_id, pad_token_id = "#", 1, 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 if c == "#" else 2 + (ord(c) % 60) for c in text]}

    def batch_decode(self, seqs, skip_special_tokens=True):
        return ["".join(chr(32 + (int(t) - 2 + 32) % 60) for t in s if int(t) > 1) for s in seqs]
