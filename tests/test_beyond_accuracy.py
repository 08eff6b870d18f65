"""Catalogue coverage, novelty and serendipity against hand-computed cases."""

import math

import numpy as np
import pytest

from recutils.beyond_accuracy import (
    beyond_accuracy,
    catalogue_coverage,
    novelty,
    popular_items,
    serendipity,
)

# 5 items; training counts: item 1 x4, item 2 x2, item 3 x1, item 4 x1, item 5 never (total 8)
COUNTS = np.array([0, 4, 2, 1, 1, 0])


def test_coverage_counts_distinct_items_over_the_catalogue():
    topk = np.array([[1, 2], [2, 3], [1, 3]])
    assert catalogue_coverage(topk, n_items=5) == pytest.approx(3 / 5)
    assert catalogue_coverage(np.array([[1, 2, 3, 4, 5]]), 5) == 1.0


def test_novelty_is_mean_self_information():
    # p(1) = 4/8 -> 1 bit, p(2) = 2/8 -> 2 bits, p(3) = 1/8 -> 3 bits
    assert novelty(np.array([[1, 2]]), COUNTS) == pytest.approx(1.5)
    assert novelty(np.array([[1, 2], [3, 3]]), COUNTS) == pytest.approx((1 + 2 + 3 + 3) / 4)
    # an item never seen in training counts once: 3 bits, finite
    assert novelty(np.array([[5]]), COUNTS) == pytest.approx(3.0)
    assert math.isfinite(novelty(np.array([[5, 4]]), COUNTS))


def test_popular_items_breaks_ties_by_id():
    assert popular_items(COUNTS, 3).tolist() == [1, 2, 3]


def test_serendipity_hand_computed():
    # k = 2: expected (popular) items are {1, 2}
    topk = np.array([[3, 1],    # target 3 unexpected and recommended -> 1
                     [1, 2],    # target 1 is expected -> 0
                     [4, 5],    # target 3 unexpected but missed -> 0
                     [5, 3]])   # target 5 unexpected and recommended -> 1
    targets = np.array([[3], [1], [3], [5]])
    assert serendipity(topk, targets, COUNTS) == pytest.approx(0.5)
    # several relevant items: denominator min(#unexpected, k)
    assert serendipity(np.array([[3, 4]]), [[1, 3, 4, 5]], COUNTS) == pytest.approx(2 / 2)
    assert serendipity(np.array([[3, 1]]), [[1, 3, 4]], COUNTS) == pytest.approx(1 / 2)


def test_serendipity_cross_check_with_a_direct_count():
    rng = np.random.default_rng(0)
    counts = np.concatenate([[0], rng.integers(0, 30, size=50)])
    topk = np.stack([rng.choice(np.arange(1, 51), 10, replace=False) for _ in range(200)])
    targets = rng.integers(1, 51, size=200)
    popular = set(np.argsort(-counts[1:], kind="stable")[:10] + 1)
    direct = np.mean([(t in row) and (t not in popular) for row, t in zip(topk, targets)])
    assert serendipity(topk, targets[:, None], counts) == pytest.approx(direct)


def test_beyond_accuracy_keys_and_cutoff_check():
    topk = np.array([[3, 1, 2], [5, 4, 3]])
    out = beyond_accuracy(topk, np.array([3, 4]), COUNTS, 5, ks=(1, 3))
    assert out["coverage@1"] == pytest.approx(2 / 5)
    assert out["coverage@3"] == pytest.approx(5 / 5)
    assert out["serendipity@1"] == pytest.approx(0.5)  # popular top-1 = {1}; user 0 hits 3
    assert "novelty_bits_top3" in out
    with pytest.raises(ValueError, match="cannot measure"):
        beyond_accuracy(topk, np.array([3, 4]), COUNTS, 5, ks=(10,))
