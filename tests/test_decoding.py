"""recutils.decoding: the catalogue trie reaches items only, never an excluded one."""

import doctest

import numpy as np
import pytest
import torch

import recutils.decoding
from recutils.decoding import TokenTrie
from tests.conftest import tiny_llama

DONE = 0


def random_paths(n_items=40, vocab=12, seed=0):
    """Items with random token paths of 1-4 tokens (shared prefixes likely) + terminator 1."""
    rng = np.random.default_rng(seed)
    paths, seen = {}, set()
    for item in range(1, n_items + 1):
        while True:
            p = tuple(int(t) for t in rng.integers(2, vocab, size=rng.integers(1, 5)))
            if p not in seen:
                seen.add(p)
                break
        paths[item] = [*p, 1]
    return paths


def walk(trie, rng, exclude=()):
    path = []
    while True:
        options = trie.allowed(path, exclude)
        if options == [DONE]:
            return path
        path.append(int(rng.choice(options)))


def test_module_examples():
    assert doctest.testmod(recutils.decoding).failed == 0


def test_random_walks_end_at_items_and_never_at_excluded_ones():
    paths = random_paths()
    trie = TokenTrie(paths, done_token=DONE)
    assert len(trie) == len(paths) and trie.longest == max(map(len, paths.values()))
    rng = np.random.default_rng(1)
    exclude = set(range(1, 31))             # 30 of 40 items banned
    found = {trie.item(walk(trie, rng, exclude)) for _ in range(400)}
    assert found == set(range(31, 41))      # every allowed item reachable, nothing else
    found_all = {trie.item(walk(trie, rng)) for _ in range(1000)}
    assert found_all == set(paths)


def test_item_and_allowed_at_the_edges():
    trie = TokenTrie({7: [3, 4, 1], 8: [3, 1]}, done_token=DONE)
    assert trie.item([3, 4]) is None                 # not finished
    assert trie.item([3, 1, 5, 5]) == 8              # first complete path
    assert trie.item([9]) is None                    # off the trie
    assert trie.allowed([9]) == [DONE]
    assert trie.allowed([3, 4, 1, 0]) == [DONE]      # padding after the end stays padding
    assert trie.allowed([], exclude={7, 8}) == [DONE]  # everything excluded
    assert trie.allowed([3], exclude={8}) == [4]
    with pytest.raises(ValueError, match="empty token path"):
        TokenTrie({1: []}, done_token=DONE)


@pytest.mark.parametrize("beams", [1, 4])
def test_generate_with_the_trie_yields_only_allowed_items(beams):
    lm = tiny_llama()                                # 64-token vocabulary, random weights
    paths = {i: [*p[:-1], 63] for i, p in random_paths(n_items=30, vocab=60, seed=3).items()}
    trie = TokenTrie(paths, done_token=63)           # 63 ends a title and pads after it
    prompts = torch.tensor([[5, 6, 7], [8, 9, 10]])
    history = [set(range(1, 16)), {20, 21}]
    out = lm.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                      num_beams=beams, num_return_sequences=beams,
                      max_new_tokens=trie.longest + 1, pad_token_id=63, eos_token_id=63,
                      prefix_allowed_tokens_fn=trie.hf_prefix_fn(3, history))
    rows = out[:, 3:].view(2, beams, -1)
    for b in range(2):
        items = [trie.item(s) for s in rows[b].tolist()]
        assert all(i is not None and i in paths for i in items)
        assert not set(items) & history[b]
