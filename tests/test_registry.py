import pytest

from recutils.data import DataNotAvailableError, load, prepare, registry


def test_every_entry_has_urls_and_text_fields():
    assert {"ml-100k", "ml-1m", "amazon2014-Beauty", "amazon2018-Prime_Pantry"} <= set(registry.available())
    for spec in registry.REGISTRY.values():
        assert spec.urls and all(u[0].startswith("https://") for u in spec.urls.values())
        assert "title" in spec.text_fields


def test_unknown_dataset():
    with pytest.raises(KeyError, match="Known: "):
        load("ml-1b")


def test_ml100k_offline_from_recbole_wheel():
    raw = load("ml-100k")
    assert len(raw.interactions) == 100_000 and raw.interactions["user"].nunique() == 943
    d = prepare(raw)
    assert d.n_items == 1682 and d.n_users == 943
    assert all((a[1:] >= a[:-1]).all() for a in d.timestamps)


def test_ml100k_without_recbole_falls_back_to_grouplens(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "recbole_ml100k_dir", lambda: None)
    monkeypatch.setenv("RECUTILS_DATA", str(tmp_path))
    monkeypatch.setitem(registry.REGISTRY["ml-100k"].urls, "ml-100k.zip",
                        [(tmp_path / "offline.zip").as_uri()])
    monkeypatch.setattr("recutils.data.download.time.sleep", lambda s: None)
    with pytest.raises(DataNotAvailableError, match="recbole") as e:
        load("ml-100k")
    assert str(tmp_path / "ml-100k" / "ml-100k.zip") in str(e.value)


def test_amazon_loader_from_local_files(monkeypatch, tmp_path, fixtures):
    import gzip
    import shutil
    (tmp_path / "amazon2018-Prime_Pantry").mkdir()
    for name in ("Prime_Pantry_5.json", "meta_Prime_Pantry.json"):
        with open(fixtures / "amazon2018" / name, "rb") as f, \
                gzip.open(tmp_path / "amazon2018-Prime_Pantry" / (name + ".gz"), "wb") as g:
            shutil.copyfileobj(f, g)
    monkeypatch.setenv("RECUTILS_DATA", str(tmp_path))
    raw = load("amazon2018-Prime_Pantry")  # served from the cache folder, no network
    assert set(raw.items["item"]) == {"P1", "P3"} and len(raw.interactions) == 2
