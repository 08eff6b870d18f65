import gzip
import hashlib
import zipfile

import pytest

from recutils.data import download
from recutils.data.download import DataNotAvailableError, fetch, safe_extract


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECUTILS_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(download.time, "sleep", lambda s: None)
    return tmp_path / "cache"


def _gz(path, text=b"hello\n" * 1000):
    path.write_bytes(gzip.compress(text))
    return path


def test_fetch_verifies_and_caches(tmp_path, cache):
    src = _gz(tmp_path / "src.json.gz")
    digest = "sha256:" + hashlib.sha256(src.read_bytes()).hexdigest()
    got = fetch(src.as_uri(), "data.json.gz", checksum=digest, subdir="ds")
    assert got == cache / "ds" / "data.json.gz" and got.read_bytes() == src.read_bytes()
    src.unlink()  # second call is served from the cache
    assert fetch(src.as_uri(), "data.json.gz", checksum=digest, subdir="ds") == got


def test_wrong_checksum_is_not_cached(tmp_path, cache):
    src = _gz(tmp_path / "src.json.gz")
    with pytest.raises(DataNotAvailableError, match="sha256 is"):
        fetch(src.as_uri(), "data.json.gz", checksum="sha256:" + "0" * 64, subdir="ds")
    assert not list((cache / "ds").iterdir())  # no partial or corrupt file left behind


def test_md5_checksums_work(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("abc")
    fetch(src.as_uri(), "a.txt", checksum="md5:" + hashlib.md5(b"abc").hexdigest())


def test_truncated_archive_is_detected_without_checksum(tmp_path, cache):
    src = tmp_path / "src.json.gz"
    src.write_bytes(gzip.compress(b"x" * 100000)[:-20])
    with pytest.raises(DataNotAvailableError, match="not a readable archive"):
        fetch(src.as_uri(), "data.json.gz", subdir="ds")
    assert not (cache / "ds" / "data.json.gz").exists()


def test_offline_error_says_where_to_put_the_file(tmp_path, cache):
    missing = (tmp_path / "nowhere.zip").as_uri()
    with pytest.raises(DataNotAvailableError) as e:
        fetch(missing, "ml-1m.zip", checksum="sha256:abc", subdir="ml-1m", retries=2)
    msg = str(e.value)
    assert str(cache / "ml-1m" / "ml-1m.zip") in msg and "try 2" in msg and "RECUTILS_DATA" in msg


def test_mirror_is_tried_after_failure(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("abc")
    got = fetch([(tmp_path / "gone.txt").as_uri(), src.as_uri()], "a.txt", retries=1)
    assert got.read_text() == "abc"


def test_safe_extract_refuses_path_traversal(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("ok.txt", "fine")
        z.writestr("../../escape.txt", "evil")
    with pytest.raises(ValueError, match="outside"):
        safe_extract(bad, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out" / "ok.txt").exists()
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("d/ok.txt", "fine")
    assert (safe_extract(good, tmp_path / "out") / "d" / "ok.txt").read_text() == "fine"
