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
    deprecations = _deprecation_warnings(tmp_path / "executed" / path.name)
    assert not deprecations, f"deprecated API in use (update the call): {deprecations}"


# Raised inside a library on its own behalf, not by a call of ours (pyproject.toml ignores the
# same ones in the unit tests): peft's get_peft_model reads model.is_gradient_checkpointing.
THIRD_PARTY_DEPRECATIONS = ("`is_gradient_checkpointing` is deprecated",)


def _deprecation_warnings(executed) -> list[str]:
    """FutureWarning / DeprecationWarning lines printed by the cells of an executed notebook."""
    nb = nbformat.read(executed, as_version=4)
    lines = [line for c in nb.cells if c.cell_type == "code" for o in c.outputs
             if o.get("output_type") == "stream" for line in o.get("text", "").splitlines()]
    return [line.strip() for line in lines
            if ("FutureWarning" in line or "DeprecationWarning" in line)
            and not any(t in line for t in THIRD_PARTY_DEPRECATIONS)]


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
    for name in ("SCALE", "SEED", "DEVICE", "THREADS"):
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


@pytest.mark.notebook
def test_same_seed_gives_identical_records_from_a_cold_cache(tmp_path, monkeypatch):
    """Notebook 04 (SASRec, MiniLM, SmolLM2 with trained projectors) at smoke, twice: first with
    an empty data cache (SmolLM2 is converted from its GGUF), then warm. The whole results file
    must be identical except its timings (``reproducible_part`` drops only those)."""
    from recutils.notebook import reproducible_part

    path = next(p for p in NOTEBOOKS if p.name.startswith("04_"))
    monkeypatch.setenv("RECUTILS_DATA", str(tmp_path / "cache"))
    files = []
    for run in ("cold", "warm"):
        assert (tmp_path / "cache" / "models").exists() == (run == "warm")
        monkeypatch.setenv("RECUTILS_OUTPUT", str(tmp_path / run))
        run_notebook(path, "smoke", tmp_path / run / "executed")
        files.append(json.loads((tmp_path / run / "results" / "04_smoke.json").read_text()))
    assert files[0]["run"]["threads"] == files[1]["run"]["threads"] == 2
    assert files[0]["records"]["methods"], "the notebook recorded no method"
    assert reproducible_part(files[0]) == reproducible_part(files[1])
