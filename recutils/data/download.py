"""Downloading dataset files into a local cache: streamed, retried, verified, atomic.

The cache folder is ``$RECUTILS_DATA`` (default ``~/.cache/recutils``). A file is only
ever moved into the cache after it has been fully downloaded and has passed its checks
(checksum when one is known, archive integrity otherwise), so a broken download never
poisons later runs.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

CHUNK = 1 << 20


class DataNotAvailableError(RuntimeError):
    """A dataset file is neither in the cache nor downloadable right now."""


class ChecksumError(RuntimeError):
    """A downloaded or cached file does not match its expected checksum."""


def data_home() -> Path:
    """The cache folder for datasets: ``$RECUTILS_DATA`` or ``~/.cache/recutils``."""
    return Path(os.environ.get("RECUTILS_DATA", Path.home() / ".cache" / "recutils")).expanduser()


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str | Path, checksum: str | None, name: str | None = None) -> None:
    """Check ``path`` against ``checksum`` ("sha256:<hex>" or "md5:<hex>") and its format.

    Gzip and zip files (judged by ``name``, default the file's own name) are also read
    through once, so a truncated archive is caught even where no checksum is known.
    Raises :class:`ChecksumError` on any mismatch.
    """
    path = Path(path)
    name = name or path.name
    if checksum:
        algorithm, _, expected = checksum.partition(":")
        got = file_digest(path, algorithm)
        if got != expected.lower():
            raise ChecksumError(
                f"{name}: {algorithm} is {got}, expected {expected} (the file is corrupt, "
                "truncated or was changed upstream)"
            )
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                while f.read(CHUNK):
                    pass
        elif name.endswith(".zip"):
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
                if bad is not None:
                    raise ChecksumError(f"{name}: member {bad} is corrupt")
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ChecksumError(f"{name}: not a readable archive ({e})") from e


def fetch(
    url: str | list[str],
    filename: str,
    *,
    checksum: str | None = None,
    subdir: str = "",
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Return the cached path of ``filename``, downloading it from ``url`` (or mirrors) if needed.

    The download streams into a temporary file beside the cache, is verified with
    :func:`verify`, and only then renamed into place. Offline, raises
    :class:`DataNotAvailableError` naming the file and where to put it by hand.
    """
    dest = data_home() / subdir / filename
    errors: list[str] = []
    if dest.exists():
        try:
            verify(dest, checksum)
            return dest
        except ChecksumError as e:
            # A bad file in the cache would fail every later run the same way: drop it and
            # download again (or, offline, say what happened and where the good file goes).
            dest.unlink()
            errors.append(f"the cached {dest} failed its check and was removed: {e}")
    urls = [url] if isinstance(url, str) else list(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for u in urls:
        for attempt in range(retries):
            tmp = None
            try:
                fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{filename}.", suffix=".part")
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(u, timeout=timeout) as r:
                    shutil.copyfileobj(r, out, CHUNK)
                verify(tmp, checksum, name=filename)
                os.replace(tmp, dest)
                return dest
            except ChecksumError as e:
                errors.append(f"{u}: {e}; the download was discarded")
                break  # a wrong file will not get better by asking again
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                errors.append(f"{u} (try {attempt + 1}): {e}")
                if attempt + 1 < retries:
                    time.sleep(min(2**attempt, 10))
            finally:
                if tmp is not None and os.path.exists(tmp):
                    os.remove(tmp)
    raise DataNotAvailableError(
        f"Could not download {filename}.\n  "
        + "\n  ".join(errors)
        + f"\nWithout a network, download it elsewhere from {urls[0]} and put it at\n  {dest}\n"
        + (f"(expected {checksum}). " if checksum else "")
        + "Set RECUTILS_DATA to use another cache folder."
    )


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract a zip archive into ``dest``, refusing members that would escape it."""
    dest = Path(dest).resolve()
    with zipfile.ZipFile(archive) as z:
        for member in z.namelist():
            target = (dest / member).resolve()
            if dest != target and dest not in target.parents:
                raise ValueError(f"{archive}: member {member!r} would be extracted outside {dest}")
        z.extractall(dest)
    return dest
