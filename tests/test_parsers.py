import pandas as pd
import pytest

from recutils.data import parsers


def test_ml100k_udata_and_uitem(fixtures):
    inter = parsers.parse_ml100k_udata(fixtures / "ml-100k/u.data")
    assert list(inter.columns) == parsers.INTERACTION_COLUMNS
    assert inter["user"].tolist() == ["1", "1", "2", "1"]
    assert inter["timestamp"].dtype == "int64" and inter["rating"].iloc[0] == 5.0
    items = parsers.parse_ml100k_uitem(fixtures / "ml-100k/u.item")
    toy = items.set_index("item").loc["10"]
    assert toy.title == "Toy Story" and toy.year == 1995
    assert toy.genres == ["Animation", "Children's", "Comedy"]
    assert items.set_index("item").loc["30"].title == "Cité des enfants perdus, La"  # latin-1
    unknown = items.set_index("item").loc["40"]
    assert pd.isna(unknown.year) and unknown.genres == ["unknown"]


def test_recbole_atomic_files(fixtures):
    inter, items = parsers.parse_recbole_ml100k(fixtures / "recbole/ml-100k.inter",
                                                fixtures / "recbole/ml-100k.item")
    assert inter[["user", "item"]].values.tolist() == [["196", "242"], ["186", "302"]]
    by_id = items.set_index("item")
    assert by_id.loc["302"].genres == ["Crime", "Film-Noir", "Mystery", "Thriller"]
    assert by_id.loc["303"].title == 'Film "Quoted"' and pd.isna(by_id.loc["303"].year)
    assert by_id.loc["303"].genres == ["Children's"]


def test_ml1m(fixtures):
    inter = parsers.parse_ml1m_ratings(fixtures / "ml-1m/ratings.dat")
    assert len(inter) == 3 and inter["timestamp"].tolist()[0] == 978300760
    movies = parsers.parse_ml1m_movies(fixtures / "ml-1m/movies.dat").set_index("item")
    assert movies.loc["2"].title == "Pokémon: The First Movie" and movies.loc["2"].year == 1998
    assert movies.loc["3"].genres == [] and pd.isna(movies.loc["3"].year)


def test_amazon2014_meta_is_literal_not_eval(fixtures, tmp_path):
    items = parsers.parse_amazon2014_meta(fixtures / "amazon2014/meta_Beauty.json").set_index("item")
    assert items.loc["B001"].title == 'Lip Balm "Cherry" & Co'
    assert items.loc["B001"].genres == ["Skin Care", "Lips"]
    assert items.loc["B001"].description == "A balm. For lips."
    assert items.loc["B002"].title == "" and items.loc["B002"].genres == ["Beauty"]
    assert items.loc["B003"].genres == ["Makeup", "Eyes"]
    evil = tmp_path / "meta_evil.json"
    evil.write_text("{'asin': 'X', 'title': __import__('os').getcwd()}\n")
    with pytest.raises(parsers.ParseError, match="line 1: not a Python dict literal"):
        parsers.parse_amazon2014_meta(evil)


def test_amazon_reviews_2014_and_2018(fixtures):
    r14 = parsers.parse_amazon_reviews(fixtures / "amazon2014/reviews_Beauty_5.json")
    assert r14["user"].tolist() == ["U1", "U1", "U2"] and r14["rating"].tolist() == [5.0, 4.0, 2.0]
    r18 = parsers.parse_amazon_reviews(fixtures / "amazon2018/Prime_Pantry_5.json")
    assert r18["item"].tolist() == ["P1", "P3"] and r18["timestamp"].tolist()[1] == 1423526400


def test_amazon2018_meta_missing_fields_html_and_duplicates(fixtures):
    items = parsers.parse_amazon2018_meta(fixtures / "amazon2018/meta_Prime_Pantry.json")
    assert items["item"].tolist() == ["P1", "P2", "P3"]  # duplicate P1 dropped, first kept
    by_id = items.set_index("item")
    assert by_id.loc["P1"].title == "Coffee & Tea Sampler"
    assert by_id.loc["P1"].description == "Rich blend for mornings"
    assert by_id.loc["P1"].genres == ["Beverages", "Coffee"] and by_id.loc["P1"].brand == "Bean Co"
    assert by_id.loc["P2"].title == "" and by_id.loc["P2"].genres == []
    assert by_id.loc["P3"].title == "Crackers Salted"


def test_bad_json_line_names_the_line(tmp_path):
    p = tmp_path / "x_5.json"
    p.write_text('{"reviewerID": "a", "asin": "b", "unixReviewTime": 1}\n{oops\n')
    with pytest.raises(ValueError, match="line 2"):
        parsers.parse_amazon_reviews(p)


def test_split_title_year():
    assert parsers.split_title_year("Toy Story (1995)") == ("Toy Story", 1995)
    assert parsers.split_title_year("1984 (1984) ") == ("1984", 1984)
    assert parsers.split_title_year("No year") == ("No year", None)
