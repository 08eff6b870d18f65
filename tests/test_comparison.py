import numpy as np
import pandas as pd

from recutils.pipelines.comparison import claims_table, methods_table, protocol_table, swapped_pairs

RECORDS = {
    "00": {"methods": {
        "A": {"metrics": {"full/NDCG@10": 0.3, "full_masked/NDCG@10": 0.31, "sampled100/NDCG@10": 0.5,
                          "sampled19/HR@1": 0.2}, "n_users": 10, "train_seconds": 2.0},
        "B": {"metrics": {"full/NDCG@10": 0.2, "full_masked/NDCG@10": 0.21, "sampled100/NDCG@10": 0.6,
                          "sampled19/HR@1": 0.3}, "n_users": 10},
        "B valid": {"metrics": {"full/NDCG@10": 0.9}, "stage": "valid"},
    }, "claims": [{"claim": "c", "paper": "p", "ours": "o", "holds": True}]},
    "01": {"methods": {"C": {"metrics": {"full/NDCG@10": 0.1}, "n_users": 5}}},
}


def test_methods_table_keeps_test_rows_and_marks_missing_protocols():
    t = methods_table(RECORDS)
    assert list(t.index) == ["00 A", "00 B", "01 C"]
    assert np.isnan(t.loc["01 C", "Hit@1 of 20"]) and t.loc["00 A", "train_seconds"] == 2.0


def test_protocol_table_drops_incomplete_methods_and_sorts_by_full_ranking():
    p = protocol_table(methods_table(RECORDS), top=5)
    assert list(p.index) == ["00 A", "00 B"]
    assert list(protocol_table(methods_table(RECORDS), top=1).index) == ["00 A"]


def test_swapped_pairs_by_hand():
    full = pd.Series({"a": 3.0, "b": 2.0, "c": 1.0})
    sampled = pd.Series({"a": 1.0, "b": 2.0, "c": 0.5})  # a<b reversed; a>c, b>c kept
    swapped, n = swapped_pairs(full, sampled)
    assert swapped == [("a", "b")] and n == 3


def test_claims_table_has_the_notebook_column():
    c = claims_table(RECORDS)
    assert c.to_dict("records") == [{"notebook": "00", "claim": "c", "paper": "p", "ours": "o",
                                     "holds": True}]
