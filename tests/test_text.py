import pandas as pd

from recutils.data.text import item_attributes, item_texts, readable_title


def _items():
    return pd.DataFrame({
        "raw_id": ["<pad>", "1", "2"],
        "title": ["<pad>", "Usual Suspects, The", "Lip Balm"],
        "year": pd.array([pd.NA, 1995, pd.NA], dtype="Int64"),
        "genres": [[], ["Crime", "Thriller"], []],
        "description": ["", "", "Soft & shiny."],
        "brand": ["", "", "Acme"],
    })


def test_templates_of_each_paper():
    items = _items()
    assert item_texts(items, "title") == ["", "The Usual Suspects", "Lip Balm"]
    assert item_texts(items, "allmrec") == ["", "Title: The Usual Suspects (1995)",
                                            "Title: Lip Balm, Description: Soft & shiny."]
    assert item_texts(items, "lancer")[1] == "genres : Crime, Thriller : title : The Usual Suspects"
    assert item_texts(items, "{brand} {title}")[2] == "Acme Lip Balm"


def test_unknown_field_is_a_clear_error():
    import pytest
    with pytest.raises(KeyError, match="unknown field"):
        item_texts(_items(), "{plot}")


def test_key_value_attributes_skip_empty_values():
    attrs = item_attributes(_items())
    assert attrs[0] == [] and attrs[1] == [("title", "The Usual Suspects"),
                                           ("genres", "Crime, Thriller"), ("year", "1995")]
    assert attrs[2] == [("title", "Lip Balm")]


def test_readable_title():
    assert readable_title("Cité des enfants perdus, La") == "La Cité des enfants perdus"
    assert readable_title("Batman & Robin") == "Batman & Robin"
