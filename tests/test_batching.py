import numpy as np
import pytest
import torch

from recutils.batching import (
    IGNORE_INDEX,
    batch_indices,
    collate,
    pad_rows,
    pad_sequences,
    seeded_batches,
    seeded_subset,
    to_device,
)


def test_pad_sequences_keeps_the_latest_items_on_the_right():
    out = pad_sequences([np.array([1, 2, 3, 4]), np.array([5]), np.array([], dtype=int)], 3)
    assert out.tolist() == [[2, 3, 4], [0, 0, 5], [0, 0, 0]]


def test_pad_rows_both_sides_and_too_long_rows():
    assert pad_rows([[1, 2], [3]], side="left").tolist() == [[1, 2], [0, 3]]
    assert pad_rows([[1, 2], [3]], pad_value=9, side="right").tolist() == [[1, 2], [3, 9]]
    assert pad_rows([[1]], length=3).tolist() == [[0, 0, 1]]
    with pytest.raises(ValueError, match="more than length"):
        pad_rows([[1, 2, 3]], length=2)
    with pytest.raises(ValueError, match="side"):
        pad_rows([[1]], side="middle")


def test_collate_pads_each_field_with_its_own_value():
    rows = [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    b = collate(rows, {"input_ids": 0, "labels": IGNORE_INDEX})
    assert b["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert b["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, 8]]


def test_to_device_moves_nested_tensors_and_leaves_the_rest():
    batch = {"a": torch.ones(1), "b": [torch.zeros(2), "text"], "c": (3, torch.ones(1))}
    out = to_device(batch, "cpu")
    assert out["b"][1] == "text" and out["c"][0] == 3 and isinstance(out["c"], tuple)


def test_batch_indices_cover_everything_once_and_follow_the_generator():
    idx = list(batch_indices(10, 4, np.random.default_rng(0)))
    assert [len(i) for i in idx] == [4, 4, 2]
    assert sorted(np.concatenate(idx).tolist()) == list(range(10))
    again = list(batch_indices(10, 4, np.random.default_rng(0)))
    assert all(np.array_equal(a, b) for a, b in zip(idx, again))
    assert np.concatenate(list(batch_indices(5, 2))).tolist() == [0, 1, 2, 3, 4]


def test_seeded_batches_depend_on_seed_and_epoch_only():
    make = list
    a = seeded_batches(list("abcdefg"), 3, seed=1, make=make)
    b = seeded_batches(list("abcdefg"), 3, seed=1, make=make)
    assert a(2) == b(2) and a(0) != a(1)
    assert sorted(sum(a(0), [])) == list("abcdefg")


def test_seeded_subset_is_distinct_sorted_and_fixed_by_the_seed():
    pool = np.array([10, 20, 30, 40, 50, 60])
    a = seeded_subset(pool, 3, seed=4)
    assert len(set(a.tolist())) == 3 and set(a.tolist()) <= set(pool.tolist())
    assert a.tolist() == sorted(a.tolist())
    np.random.default_rng(99).random(5)  # other draws do not change it
    assert seeded_subset(pool, 3, seed=4).tolist() == a.tolist()
    # an int pool is range(pool); the same draw as indexing the array pool
    idx = seeded_subset(len(pool), 3, seed=4, sort=False)
    assert sorted(pool[idx].tolist()) == a.tolist()
    assert seeded_subset(6, 6, seed=0).tolist() == list(range(6))
    with pytest.raises(ValueError, match="cannot draw 7"):
        seeded_subset(6, 7, seed=0)
