import numpy as np

from recutils.mapping import TitleIndex, nearest_items, normalize_title, rank_from_generations


def test_normalize_title_variants_agree():
    a = normalize_title("Usual Suspects, The (1995)")
    assert a == normalize_title("The Usual Suspects") == normalize_title("the usual suspects!") == "usual suspects"
    assert normalize_title("Cité des enfants perdus, La (1995)") == "la cite des enfants perdus"


def test_title_index_exact_and_mentions():
    titles = ["<pad>", "Toy Story", "GoldenEye", "Toy Story", "Heat"]
    idx = TitleIndex(titles)
    assert idx.match("toy story (1995)") == 1 and idx.ambiguous == 1
    assert idx.match("Toy Story 3") is None  # a hallucinated sequel matches nothing
    assert idx.mentions('The recommendation is "GoldenEye".', 2, titles)
    assert not idx.mentions("Heated debate", 4, titles)


def test_nearest_items_excludes_padding_and_given_ids():
    emb = np.array([[1.0, 0], [1.0, 0.1], [0.9, 0.5], [0, 1.0]])
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert nearest_items(q, emb, k=2).tolist() == [[1, 2], [3, 2]]
    assert nearest_items(q, emb, k=1, exclude=[[1], []]).tolist() == [[2], [3]]


def test_rank_from_generations_round_robin_dedup_fill():
    mapped = [[5, 6], [5, 7], [8, 9]]
    assert rank_from_generations(mapped, k=4) == [5, 8, 6, 7]
    assert rank_from_generations(mapped, k=7, exclude=[8], fill=[1, 5, 2]) == [5, 6, 7, 9, 1, 2]
