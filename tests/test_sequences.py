import numpy as np
import pandas as pd
import pytest

from recutils.batching import pad_sequences
from recutils.data.sequences import kcore, min_count, prepare, time_order
from recutils.training import training_windows
from tests.conftest import make_raw


def _inter(rows):
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def test_kcore_is_iterative_and_min_count_is_single_pass():
    # item c has 2 users; dropping it leaves user 3 with 1 item, which k-core must then drop.
    rows = [("1", "a", 5, 1), ("1", "b", 5, 2), ("2", "a", 5, 1), ("2", "b", 5, 2),
            ("3", "a", 5, 1), ("3", "c", 5, 2), ("4", "c", 5, 1)]
    core = kcore(_inter(rows), 2)
    assert set(core["user"]) == {"1", "2"} and set(core["item"]) == {"a", "b"}
    assert (core.groupby("user").size() >= 2).all() and (core.groupby("item").size() >= 2).all()
    once = min_count(_inter(rows), min_user=2, min_item=3)  # only a survives items, users need 2
    assert once.empty
    once = min_count(_inter(rows), min_user=2)
    assert set(once["user"]) == {"1", "2", "3"}


def test_time_order_breaks_ties_by_file_order():
    rows = [("1", "z", 5, 10), ("1", "a", 5, 5), ("1", "m", 5, 10), ("1", "b", 5, 10)]
    assert time_order(_inter(rows))["item"].tolist() == ["a", "z", "m", "b"]


def test_prepare_remaps_with_padding_and_splits_leave_one_out():
    rows = [("u", "30", 5, 3), ("u", "10", 5, 1), ("u", "20", 5, 2), ("u", "40", 5, 4),
            ("v", "10", 5, 1), ("v", "20", 5, 2), ("w", "10", 5, 1), ("w", "30", 5, 2), ("w", "20", 5, 3)]
    raw = make_raw()
    raw.interactions = _inter(rows)
    raw.items = raw.items[raw.items["item"].isin(["10", "20", "30"])]
    d = prepare(raw)
    assert d.n_users == 2  # v has 2 items < min_len 3
    assert d.item_ids.tolist() == ["<pad>", "10", "20", "30", "40"]
    assert d.sequences[0].tolist() == [1, 2, 3, 4]
    assert d.train_sequences()[0].tolist() == [1, 2]
    assert d.inputs("valid")[0].tolist() == [1, 2] and d.targets("valid")[0] == 3
    assert d.inputs("test")[0].tolist() == [1, 2, 3] and d.targets("test")[0] == 4
    assert d.items.loc[0, "title"] == "<pad>" and d.items.loc[1, "title"] == "Movie 10"
    assert d.items.loc[4, "title"] == "item 40"  # missing metadata gets a placeholder title
    with pytest.raises(ValueError, match="never used for model selection"):
        d.targets("train")


def test_max_len_keeps_most_recent(tiny):
    d = prepare(make_raw(), max_len=4)
    full = prepare(make_raw())
    for a, b in zip(d.sequences, full.sequences):
        assert d.item_ids[a].tolist() == full.item_ids[b[-4:]].tolist()


def test_item_counts_use_training_part_only(tiny):
    counts = tiny.item_counts()
    assert counts[0] == 0 and counts.sum() == sum(len(s) - 2 for s in tiny.sequences)


def test_subsample_is_seeded(tiny):
    a, b = tiny.subsample_users(5, seed=1), tiny.subsample_users(5, seed=1)
    assert a.user_ids.tolist() == b.user_ids.tolist() and a.n_users == 5
    assert a.n_items == tiny.n_items


def test_pad_sequences_left_pads_and_truncates():
    out = pad_sequences([np.array([1, 2]), np.array([1, 2, 3, 4, 5]), np.array([], dtype=int)], 3)
    assert out.tolist() == [[0, 1, 2], [3, 4, 5], [0, 0, 0]]


def test_training_windows_cover_every_transition_once():
    seqs = [np.arange(1, 121), np.arange(1, 4), np.array([7])]
    win = training_windows(seqs, 51)
    pairs = []
    for w in win.tolist():
        w = [i for i in w if i]
        pairs += list(zip(w[:-1], w[1:]))
    expected = [(a, a + 1) for a in range(1, 120)] + [(1, 2), (2, 3)]
    assert sorted(pairs) == sorted(expected)


def test_empty_after_filter_is_a_clear_error():
    with pytest.raises(ValueError, match="loosen the filters"):
        prepare(make_raw(), kcore_k=1000)
