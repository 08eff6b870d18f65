"""The environment is the locked one: the versions behind the published results/."""

import importlib.metadata
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin"
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_every_locked_package_is_installed_at_its_version():
    wrong = {}
    for name, version in _locked().items():
        try:
            got = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            wrong[name] = (version, "missing")
            continue
        if got.split("+")[0] != version:  # a local label (+cpu, +cu128) is the build, not the version
            wrong[name] = (version, got)
    assert not wrong, f"installed versions differ from requirements.lock (run `make setup`): {wrong}"


def test_the_lock_covers_every_direct_dependency():
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.findall(r'^\s*"([A-Za-z0-9_.-]+)[=<>!~\[ ]', text, flags=re.M)
    locked = _locked()
    missing = [d for d in deps if d.lower().replace("_", "-") not in locked and d != "setuptools"]
    assert deps and not missing, f"pyproject.toml dependencies not in requirements.lock: {missing}"


def test_every_dependency_says_who_needs_it():
    text = (ROOT / "pyproject.toml").read_text()
    lists = re.findall(r'^(?:dependencies|dev) = \[(.*?)^\]', text, flags=re.M | re.S)
    lines = [line.strip() for block in lists for line in block.splitlines()
             if line.strip().startswith('"')]
    assert len(lines) > 10
    bare = [line for line in lines if "#" not in line]
    assert not bare, f"pyproject.toml: say which notebook/module needs {bare}"
    assert not any(line.startswith('"accelerate') for line in lines), "accelerate is never imported"
