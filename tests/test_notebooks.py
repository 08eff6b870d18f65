"""Every notebooks/NN_*.ipynb runs top to bottom at SCALE="smoke" and records sane results."""

import json
import math

import nbformat
import pytest

from recutils.course import ROOT, notebooks, run_notebook

NOTEBOOKS = notebooks()


def test_there_are_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name.startswith("00_")


def _numbers(value, path=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{path}/{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_at_smoke_scale(path, tmp_path, monkeypatch):
    monkeypatch.setenv("RECUTILS_OUTPUT", str(tmp_path))
    run_notebook(path, "smoke", tmp_path / "executed")
    results = json.loads((tmp_path / "results" / f"{path.name[:2]}_smoke.json").read_text())
    assert results["scale"] == "smoke" and results["records"], "the notebook recorded nothing"
    numbers = list(_numbers(results["records"]))
    assert numbers, "no numeric record"
    for key, v in numbers:
        assert math.isfinite(v), f"{key} is {v}"
        if "@" in key.rsplit("/", 1)[-1]:
            assert 0.0 <= v <= 1.0, f"{key} = {v} is not a rate"
    assert list((tmp_path / "figures" / "smoke").glob(f"{path.name[:2]}_*.png")), "no figure saved"


@pytest.mark.notebook
def test_unknown_parameter_fails_loudly(tmp_path, monkeypatch):
    from papermill.exceptions import PapermillExecutionError
    monkeypatch.setenv("RECUTILS_OUTPUT", str(tmp_path))
    with pytest.raises(PapermillExecutionError, match="UnknownParameterError"):
        run_notebook(NOTEBOOKS[0], "smoke", tmp_path, parameters={"EPOHCS": 3})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean_and_follows_the_template(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert "language_info" in nb.metadata
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    for name in ("SCALE", "SEED", "DEVICE"):
        assert f"{name} = " in params[0].source
    before = "\n".join(c.source for c in code[:code.index(params[0])])
    assert "versions()" in before, "a versions cell comes before the parameters cell"
    after = "\n".join(c.source for c in code[code.index(params[0]) + 1:])
    assert "check_parameters()" in after and "Recorder(" in after
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "References" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_default_results_are_published(path):
    published = ROOT / "results" / f"{path.name[:2]}_default.json"
    assert published.exists(), f"run `make notebook NB={path.name[:2]}` and commit {published.name}"
    data = json.loads(published.read_text())
    assert data["scale"] == "default" and "claims" in data["records"], "a claim table is recorded"
    if not path.name.startswith("06_"):
        assert data["records"].get("methods"), "methods are recorded with Recorder.record_method"


def _without_timings(value):
    """Records minus what legitimately varies between runs: times, dates, versions, memory."""
    volatile = ("seconds", "minutes", "started", "versions", "memory", "peak")
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if not any(w in k.lower() for w in volatile)}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.notebook
def test_same_seed_gives_identical_records(tmp_path, monkeypatch):
    """Notebook 00 run twice at smoke on CPU: every record except timings is identical."""
    records = []
    for run in ("a", "b"):
        monkeypatch.setenv("RECUTILS_OUTPUT", str(tmp_path / run))
        run_notebook(NOTEBOOKS[0], "smoke", tmp_path / run / "executed", parameters={"DEVICE": "cpu"})
        data = json.loads((tmp_path / run / "results" / "00_smoke.json").read_text())
        records.append(_without_timings(data))
    assert records[0] == records[1]
