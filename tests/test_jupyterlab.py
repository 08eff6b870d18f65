"""The course as people use it: notebook 00 opened and run in a real JupyterLab.

One ``jupyter lab`` serves a copy of ``notebooks/`` on 127.0.0.1 for the module. The first test drives
it the way the Lab front end does (contents API, sessions API, kernel websocket) and runs
notebook 00 at SCALE=smoke; the second loads the Lab page in headless Chromium.
"""

import shutil
import uuid

import pytest
from jupyter_helpers import JupyterServer, browser_or_skip, execute

from recutils.course import ROOT

NOTEBOOK = "00_foundations.ipynb"
pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("jupyter")
    out = tmp_path_factory.mktemp("output")
    # A copy: the Lab front end may autosave what it opened, the checkout's notebooks stay clean.
    root = tmp_path_factory.mktemp("course") / "notebooks"
    shutil.copytree(ROOT / "notebooks", root)
    srv = JupyterServer(root, home,
                        env={"RECUTILS_OUTPUT": str(out), "RECUTILS_PROGRESS": "lines",
                             "OMP_WAIT_POLICY": "PASSIVE"})
    try:
        srv.start()
        srv.output = out
        yield srv
    finally:
        srv.stop()


def _cells_with_smoke_parameters(nb: dict) -> list[str]:
    """The notebook's code cells, with ``SCALE = "smoke"`` after the ``parameters`` cell (as papermill)."""
    cells = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        cells.append(source)
        if "parameters" in cell["metadata"].get("tags", []):
            cells.append('# Parameters\nSCALE = "smoke"\n')
    assert any(c.startswith("# Parameters") for c in cells), "no cell tagged 'parameters'"
    return cells


def test_notebook_00_runs_in_jupyterlab_kernel(server):
    assert server.api("GET", "/api/status")["started"]
    model = server.api("GET", f"/api/contents/{NOTEBOOK}?content=1&type=notebook")
    assert model["type"] == "notebook" and model["content"]["cells"]
    cells = _cells_with_smoke_parameters(model["content"])
    session = server.api("POST", "/api/sessions", {"path": NOTEBOOK, "type": "notebook",
                                                   "name": NOTEBOOK, "kernel": {"name": "python3"}})
    kernel_id = session["kernel"]["id"]
    ws = server.kernel_socket(kernel_id)
    try:
        printed = ""
        sid = uuid.uuid4().hex
        for i, code in enumerate(cells):
            result = execute(ws, code, sid)
            assert result["status"] == "ok", f"cell {i} failed: {result['error']}\n{code[:300]}"
            printed += result["text"]
    finally:
        ws.close()
        server.api("DELETE", f"/api/sessions/{session['id']}")
    assert "SASRec trained in" in printed, printed[-2000:]
    assert "notebook 00 at SCALE=smoke" in printed
    assert (server.output / "results" / "00_smoke.json").exists()


def _title(nb: dict) -> str:
    first_md = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
    source = first_md["source"] if isinstance(first_md["source"], str) else "".join(first_md["source"])
    heading = next(line for line in source.splitlines() if line.startswith("# "))
    return heading[2:].strip()


def test_notebook_00_renders_in_jupyterlab_in_chromium(server):
    chromium = browser_or_skip()
    from playwright.sync_api import sync_playwright

    title = _title(server.api("GET", f"/api/contents/{NOTEBOOK}?content=1&type=notebook")["content"])
    shot = ROOT / "build" / "jupyterlab_00_foundations.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{server.base}/lab/tree/{NOTEBOOK}?token={server.token}",
                      wait_until="domcontentloaded", timeout=120_000)
            heading = page.locator(".jp-RenderedMarkdown h1", has_text=title).first
            heading.wait_for(state="visible", timeout=180_000)
            page.screenshot(path=str(shot))
            assert heading.is_visible()
            assert heading.inner_text().strip().rstrip("¶").strip() == title
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000, "the screenshot is (nearly) empty"


def test_missing_browser_skips_unless_required(monkeypatch, tmp_path):
    import jupyter_helpers

    monkeypatch.setattr(jupyter_helpers, "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.delenv("RECUTILS_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install"):
        jupyter_helpers.browser_or_skip()
    monkeypatch.setenv("RECUTILS_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="RECUTILS_REQUIRE_BROWSER=1"):
        jupyter_helpers.browser_or_skip()
