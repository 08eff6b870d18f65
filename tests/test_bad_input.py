"""Bad input fails with a clear message (file, line, what to do) and loses nothing."""

import gzip
import hashlib
import json

import numpy as np
import pytest
import torch

from recutils.data import download, parsers
from recutils.data.download import DataNotAvailableError, fetch
from recutils.data.sequences import prepare
from recutils.evaluation import Evaluator, metrics_from_ranks
from recutils.training import TrainConfig, fit
from tests.conftest import make_raw

# --- the evaluator and the training loop -------------------------------------------------------

def test_nan_scores_raise_instead_of_counting_as_hits(tiny):
    ev = Evaluator(tiny, "test", users=[0, 1, 2])
    scores = torch.randn(3, tiny.n_items + 1)
    scores[1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN for 1 of 3 users \(dataset users \[1\]\)"):
        ev.evaluate(lambda users: scores[: len(users)])
    with pytest.raises(ValueError, match="finite and >= 0"):
        metrics_from_ranks(np.array([0, -1, 3]))
    with pytest.raises(ValueError, match="finite and >= 0"):
        metrics_from_ranks(np.array([0, np.nan]))


def test_early_stopping_never_selects_a_non_finite_epoch():
    model = torch.nn.Linear(1, 1)
    scores = iter([0.2, float("inf"), float("nan"), 0.1])
    hist = fit(model, lambda e: [torch.ones(2, 1)], TrainConfig(epochs=4, lr=0.01, progress=False),
               valid_fn=lambda m: next(scores), loss_fn=lambda m, b: m(b).pow(2).mean())
    assert hist.best_epoch == 0 and hist.best_valid == 0.2


def test_a_diverging_loss_stops_training_and_keeps_the_best_weights():
    model = torch.nn.Linear(1, 1)
    losses = iter([1.0, 1.0, float("nan")])

    def loss_fn(m, b):
        return m(b).sum() * 0 + next(losses)

    with pytest.warns(RuntimeWarning, match="training loss is nan at epoch 2"):
        hist = fit(model, lambda e: [torch.ones(1, 1)], TrainConfig(epochs=5, lr=0.1, progress=False),
                   valid_fn=lambda m: 0.5, loss_fn=loss_fn)
    assert hist.diverged and len(hist.epochs) == 2 and hist.best_epoch == 0
    model = torch.nn.Linear(1, 1)
    with pytest.raises(FloatingPointError, match="no weights to fall back on"), \
            pytest.warns(RuntimeWarning):
        fit(model, lambda e: [torch.ones(1, 1)], TrainConfig(epochs=2, progress=False),
            loss_fn=lambda m, b: m(b).sum() * float("nan"))


# --- preprocessing -----------------------------------------------------------------------------

def test_prepare_rejects_settings_that_leave_no_validation_or_test_item():
    with pytest.raises(ValueError, match="at least 3 items per user"):
        prepare(make_raw(), min_len=1)
    with pytest.raises(ValueError, match="max_len=2 is below min_len=3"):
        prepare(make_raw(), max_len=2)


def test_an_empty_title_gets_a_placeholder():
    raw = make_raw(n_items=50)
    raw.items.loc[raw.items["item"] == "7", "title"] = "   "
    data = prepare(raw)
    row = data.items[data.items["raw_id"] == "7"]
    if len(row):  # item 7 occurs in the random walks of make_raw
        assert row["title"].item() == "item 7"
    assert (data.items["title"].str.strip() != "").all()


# --- parsers: every error names the file and the line -------------------------------------------

@pytest.mark.parametrize("parser, text, line, what", [
    (parsers.parse_amazon2014_meta, "{'asin': 'A', 'title': 'ok'}\n['not', 'a', 'dict']\n", 2,
     "not a dict"),
    (parsers.parse_amazon2014_meta, "{'asin': 'A'}\n\n{'title': 'no asin'}\n", 3,
     "missing field 'asin'"),
    (parsers.parse_amazon2018_meta, '{"title": "no asin"}\n', 1, "missing field 'asin'"),
    (parsers.parse_amazon2018_meta, '[1, 2]\n', 1, "not a dict"),
    (parsers.parse_amazon_reviews, '{"reviewerID": "u", "asin": "a", "unixReviewTime": 1}\n'
     '{"reviewerID": "u", "unixReviewTime": 2}\n', 2, "missing field 'asin'"),
    (parsers.parse_ml100k_udata, "1\t2\t5\t881250949\n\t\t\t\n1\t3\t4\n", 3, "expected 4"),
    (parsers.parse_ml100k_udata, "1\t2\t5\tnoon\n", 1, "could not convert"),
    (parsers.parse_ml1m_ratings, "1::2::5::978300760\n1::2\n", 2, "expected 4"),
    (parsers.parse_ml1m_movies, "1::Toy Story (1995)\n", 1, "expected 3"),
])
def test_parser_errors_name_file_and_line(tmp_path, parser, text, line, what):
    path = tmp_path / "data.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(parsers.ParseError) as e:
        parser(path)
    msg = str(e.value)
    assert f"{path}, line {line}:" in msg and what in msg, msg


def test_whitespace_only_lines_carry_no_data_and_are_skipped(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t2\t5\t881250949\n   \n2\t3\t4\t881250950\n")
    assert len(parsers.parse_ml100k_udata(path)) == 2


def test_recbole_atomic_rows_are_checked(tmp_path):
    inter, item = tmp_path / "ml.inter", tmp_path / "ml.item"
    inter.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t5\t9\n1\t3\n")
    item.write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
    with pytest.raises(parsers.ParseError, match=r"ml.inter, line 3: .*expected 4"):
        parsers.parse_recbole_ml100k(inter, item)
    inter.write_text("user:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t5\t9\n")
    with pytest.raises(parsers.ParseError, match=r"no column \['user_id'\]"):
        parsers.parse_recbole_ml100k(inter, item)


# --- the download cache ---------------------------------------------------------------------------

def test_a_corrupt_cached_file_is_removed_and_downloaded_again(tmp_path, monkeypatch):
    monkeypatch.setenv("RECUTILS_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(download.time, "sleep", lambda s: None)
    good = tmp_path / "good.json.gz"
    good.write_bytes(gzip.compress(json.dumps({"a": 1}).encode() * 100))
    digest = "sha256:" + hashlib.sha256(good.read_bytes()).hexdigest()
    cached = tmp_path / "cache" / "ds" / "f.json.gz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(good.read_bytes()[:-30])  # a truncated earlier download
    assert fetch(good.as_uri(), "f.json.gz", checksum=digest, subdir="ds") == cached
    assert cached.read_bytes() == good.read_bytes()
    # offline: the bad copy is removed, and the message says so and where the file goes
    cached.write_bytes(b"garbage")
    with pytest.raises(DataNotAvailableError) as e:
        fetch((tmp_path / "gone.gz").as_uri(), "f.json.gz", checksum=digest, subdir="ds", retries=1)
    assert not cached.exists()
    assert "failed its check and was removed" in str(e.value) and str(cached) in str(e.value)


def test_recbole_installed_without_data_says_so(tmp_path, monkeypatch):
    from recutils.data import registry
    empty = tmp_path / "recbole"
    empty.mkdir()
    monkeypatch.setattr(registry, "_recbole_package_dir", lambda: empty)
    monkeypatch.setenv("RECUTILS_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(download.time, "sleep", lambda s: None)
    monkeypatch.setitem(registry.REGISTRY["ml-100k"].urls, "ml-100k.zip",
                        [(tmp_path / "offline.zip").as_uri()])
    with pytest.raises(DataNotAvailableError) as e:
        registry.load("ml-100k")
    msg = str(e.value)
    assert "recbole is installed at" in msg and "holds no MovieLens-100k files" in msg
    assert "not installed" not in msg and "ml-100k.zip" in msg


def test_recformer_cli_without_a_checkpoint_says_what_to_do(tmp_path, capsys):
    from recutils import recformer_cli
    assert recformer_cli.main([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert "no RecFormer checkpoint at" in err and "make notebook NB=05" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert recformer_cli.main([str(junk)]) == 2
    assert "is not a checkpoint written by save_checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()
