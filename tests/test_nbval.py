"""nbval where it fits: notebook 06 as committed (no outputs, no parameters injected).

06 trains nothing; it reads the published ``results/`` of notebooks 00-05. So the committed
notebook itself, run cell by cell by ``pytest --nbval-lax`` (each cell must run; outputs are
not compared, the notebook is committed without them), checks that the published records
and the comparison code still agree. Its own records and figures go to a temporary folder.
Papermill stays the executor of the parameterised course (tests/test_notebooks.py).
"""

import os
import subprocess
import sys

import nbformat
import pytest

from recutils.course import ROOT

NOTEBOOK = ROOT / "notebooks" / "06_comparison.ipynb"


@pytest.mark.notebook
def test_comparison_notebook_passes_nbval_as_committed(tmp_path):
    code_cells = sum(c.cell_type == "code" for c in nbformat.read(NOTEBOOK, as_version=4).cells)
    env = {**os.environ, "RECUTILS_OUTPUT": str(tmp_path), "RECUTILS_PROGRESS": "off"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "-p", "no:cacheprovider",
                          str(NOTEBOOK)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert f"{code_cells} passed" in run.stdout, run.stdout[-2000:]
    assert (tmp_path / "results" / "06_default.json").exists(), "06 did not write to RECUTILS_OUTPUT"
    assert list((tmp_path / "figures").glob("06_*.png"))
