"""recutils.site: the static HTML course from executed notebooks (hand-built here, with a PNG)."""

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import nbformat
import pytest
from jupyter_helpers import browser_or_skip

from recutils import site

matplotlib.use("Agg")


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.images, self.scripts, self.ids = [], [], [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "script" and a.get("src"):
            self.scripts.append(a["src"])


def refs(path: Path) -> _Refs:
    r = _Refs()
    r.feed(path.read_text(encoding="utf-8"))
    return r


def _png() -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [1, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _notebook(title: str, executed: bool):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    code = nbformat.v4.new_code_cell("plot()\nprint('hello from the course')")
    if executed:
        code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello from the course\n"),
                        nbformat.v4.new_output("display_data", data={"image/png": _png(),
                                                                     "text/plain": "<Figure>"})]
        code.execution_count = 1
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nSome text with $x^2$."), code]
    return nb


@pytest.fixture
def course(tmp_path):
    """A course root with two notebooks, only the first one executed, a README and results."""
    root, executed = tmp_path / "course", tmp_path / "executed"
    (root / "notebooks").mkdir(parents=True)
    executed.mkdir()
    for name, title in (("00_first", "00 · First steps"), ("01_second", "01 · Second paper")):
        nbformat.write(_notebook(title, False), root / "notebooks" / f"{name}.ipynb")
    nbformat.write(_notebook("00 · First steps", True), executed / "00_first.ipynb")
    (root / "README.md").write_text(
        "# x\n\n## Course map\n\n| # | notebook | paper |\n|---|---|---|\n"
        "| 00 | [00_first](notebooks/00_first.ipynb) | A et al. |\n"
        "| 01 | [01_second](notebooks/01_second.ipynb) | B et al. |\n\n## Results\n")
    (root / "results").mkdir()
    (root / "results" / "00_default.json").write_text(json.dumps({"records": {
        "claims": [{"claim": "Sampled metrics inflate NDCG", "paper": "yes", "ours": "0.4 vs 0.1",
                    "holds": "yes"}],
        "methods": {"SASRec": {"metrics": {"full/NDCG@10": 0.0689}, "n_users": 943}}}}))
    return root, executed


def test_site_links_and_images_resolve(course, tmp_path):
    root, executed = course
    out = tmp_path / "site"
    pages = site.build(executed, out, root=root)
    assert [p.html for p in pages] == ["00_first.html", None]
    index = refs(out / "index.html")
    text = (out / "index.html").read_text()
    assert "Sampled metrics inflate NDCG" in text and "0.0689" in text, "claims tables missing"
    assert "01_second.ipynb" in text and "make course" in text, "the missing notebook is not named"
    assert "00_first.html" in index.links
    for href in index.links:
        if href.startswith("#"):
            assert href[1:] in index.ids, f"index.html: anchor {href} has no target"
        else:
            assert not href.startswith(("http:", "https:")), href
            assert (out / href).is_file(), f"index.html links to {href}, which is not in the site"
    page = refs(out / "00_first.html")
    assert "hello from the course" in (out / "00_first.html").read_text()
    assert page.images, "the figure was not embedded"
    for src in page.images:
        assert src.startswith("data:image/") or (out / src).is_file(), f"broken <img src={src[:60]}>"
    for html_file in out.glob("*.html"):
        r = refs(html_file)
        assert not [s for s in r.scripts if s.startswith("http")], f"{html_file.name} loads {r.scripts}"
        assert "cdnjs" not in html_file.read_text(), f"{html_file.name} still imports from a CDN"


def test_main_names_missing_notebooks_and_fails_when_none_is_executed(course, tmp_path, monkeypatch,
                                                                     capsys):
    root, _ = course
    monkeypatch.setattr(site, "ROOT", root)
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert site.main(["--executed", str(empty), "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "00_first.ipynb" in err and "01_second.ipynb" in err and "make course" in err


def test_site_reads_in_chromium(course, tmp_path):
    chromium = browser_or_skip()
    from playwright.sync_api import sync_playwright

    root, executed = course
    out = tmp_path / "site"
    site.build(executed, out, root=root)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            blocked = []
            page.route("http*://**", lambda route: (blocked.append(route.request.url), route.abort()))
            page.goto((out / "index.html").as_uri())
            assert page.locator("h1").first.inner_text().startswith("LLMs for sequential")
            page.click("text=00 · First steps")
            page.wait_for_load_state("load")
            assert page.url.endswith("00_first.html")
            page.locator("h1", has_text="First steps").first.wait_for(state="visible")
            widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
            assert widths and all(w > 0 for w in widths), widths
            assert not blocked, f"the pages asked the network for {blocked}"
        finally:
            browser.close()
