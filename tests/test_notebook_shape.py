"""The notebooks' shape: short cells that call the package, lint-clean, committed without outputs."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from recutils.course import notebooks

ROOT = Path(__file__).resolve().parent.parent
MAX_CELL_LINES = 30  # "about 25": a preset cell of three scales may run a little longer


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.name)
def test_cells_are_short_and_outputs_stripped(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    long = {i: len(c.source.splitlines()) for i, c in enumerate(code)
            if len(c.source.splitlines()) > MAX_CELL_LINES}
    assert not long, f"{path.name}: code cells over {MAX_CELL_LINES} lines (cell: lines): {long}"
    assert not any(c.get("outputs") for c in code), f"{path.name} has outputs: run `make strip`"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "SCALE" in tagged[0].source and "SEED" in tagged[0].source


def test_ruff_passes_on_package_tests_and_notebooks():
    ruff = Path(sys.executable).with_name("ruff")
    out = subprocess.run([str(ruff), "check", "recutils", "tests", "benchmarks", "notebooks"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
