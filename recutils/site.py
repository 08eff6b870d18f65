"""The course as a static HTML site: executed notebooks, course map and claims, offline.

    python -m recutils.site                          # build/executed/default -> build/site
    python -m recutils.site --executed DIR --out DIR

``make course`` writes the executed notebooks; this renders each one with nbconvert (its
figures are embedded in the page as data URIs) and writes ``index.html`` with the course map
(README's table, links pointing to the pages) and the claims tables of
:func:`recutils.report.render`. Pages load no script from a CDN: require.js, MathJax and
widget scripts are left out (formulas then show as TeX source), so the site reads offline.
A missing executed notebook is named in the index and on the console, with the command
that makes it.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

from recutils.course import ROOT, notebooks

# <script src="http..."> (require.js, MathJax, widget managers), <link href="http..."> and
# inline scripts that import from a CDN (the template's mermaid loader)
_EXTERNAL = re.compile(r"<script[^>]*\bsrc=[\"']https?://[^>]*>\s*</script>|"
                       r"<link[^>]*\bhref=[\"']https?://[^>]*>|"
                       r"<script[^>]*>(?:(?!</script>).)*?import\(\s*[\"']https?://.*?</script>",
                       re.I | re.S)
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
code { background: #f3f3f3; padding: 0 0.2rem; }
.missing { background: #fff3f0; border: 1px solid #e0b0a0; padding: 0.5rem 1rem; }
"""


@dataclass
class Page:
    number: str
    name: str          # 00_foundations
    title: str         # the first heading of the notebook
    html: str | None   # file name in the site, None when the executed notebook is missing

    @property
    def label(self) -> str:
        """The title, prefixed with the number unless it already starts with it."""
        title = self.title or self.name
        return title if title.startswith(self.number) else f"{self.number} · {title}"


def title_of(nb) -> str:
    """The text of the first markdown cell's first heading (the notebook's title)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return ""


def _markdown(text: str) -> str:
    import mistune

    return mistune.create_markdown(plugins=["table"], escape=True)(text)


def _offline(page: str) -> str:
    return _EXTERNAL.sub("", page)


def render_notebook(path: Path) -> str:
    """One executed notebook as a standalone HTML page (images embedded, no CDN scripts)."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", embed_images=True)
    body, _ = exporter.from_notebook_node(nbformat.read(path, as_version=4))
    return _offline(body)


def course_map(readme: Path, pages: list[Page]) -> str:
    """README's course-map table with links to the pages (or a plain list of titles)."""
    text = readme.read_text() if readme.exists() else ""
    m = re.search(r"^## Course map\s*\n(.*?)(?=^#{2,3} )", text, flags=re.M | re.S)
    if m:
        table = "\n".join(line for line in m.group(1).splitlines() if line.startswith("|"))
        for p in pages:
            target = p.html or f"#missing-{p.number}"
            table = table.replace(f"(notebooks/{p.name}.ipynb)", f"({target})")
        if table:
            return _markdown(table)
    items = "".join(f'<li><a href="{p.html or "#missing-" + p.number}">{html.escape(p.label)}</a></li>'
                    for p in pages)
    return f"<ul>{items}</ul>"


def _index(pages: list[Page], root: Path, scale: str) -> str:
    from recutils.report import render

    missing = [p for p in pages if p.html is None]
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
             "<title>LLMs for sequential recommendation: the course</title>",
             f"<style>{_STYLE}</style></head><body>",
             "<h1>LLMs for sequential recommendation: the course</h1>",
             f"<p>Executed notebooks of the SCALE={html.escape(scale)} run, rendered by "
             "<code>make site</code>. Each page holds the notebook's code, printed output and "
             "figures.</p>",
             "<h2>Notebooks</h2>",
             "<ul>" + "".join(
                 f'<li><a href="{p.html}">{html.escape(p.label)}</a></li>' if p.html
                 else f'<li id="missing-{p.number}">{html.escape(p.label)} (not executed yet)</li>'
                 for p in pages) + "</ul>"]
    if missing:
        parts.append("<div class='missing'><p>Missing executed notebooks: " + ", ".join(
            f"<code>{html.escape(p.name)}.ipynb</code>" for p in missing) + ". Make them with "
            "<code>make course</code> (or one: <code>make notebook NB="
            f"{missing[0].number}</code>), then <code>make site</code> again.</p></div>")
    parts += ["<h2>Course map</h2>", course_map(root / "README.md", pages)]
    if list((root / "results").glob("[0-9][0-9]_default.json")):
        parts += ["<h2>Results</h2>", _markdown(render(root))]
    parts.append("</body></html>")
    return "\n".join(parts)


def build(executed: Path, out: Path, root: Path = ROOT, scale: str = "default") -> list[Page]:
    """Write ``out/index.html`` and one ``NN_name.html`` per executed notebook; return the pages."""
    sources = notebooks(root)
    if not sources:
        raise FileNotFoundError(f"no notebooks/NN_*.ipynb under {root}")
    out.mkdir(parents=True, exist_ok=True)
    pages = []
    for src in sources:
        page = Page(src.name[:2], src.stem, title_of(nbformat.read(src, as_version=4)), None)
        executed_nb = executed / src.name
        if executed_nb.exists():
            page.html = f"{src.stem}.html"
            (out / page.html).write_text(render_notebook(executed_nb), encoding="utf-8")
        pages.append(page)
    (out / "index.html").write_text(_index(pages, root, scale), encoding="utf-8")
    return pages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", default="default", choices=["smoke", "default", "paper"])
    ap.add_argument("--executed", type=Path, default=None,
                    help="folder of executed notebooks (default build/executed/<scale>)")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "site")
    args = ap.parse_args(argv)
    executed = args.executed or ROOT / "build" / "executed" / args.scale
    pages = build(executed, args.out, root=ROOT, scale=args.scale)
    missing = [p for p in pages if p.html is None]
    for p in missing:
        print(f"missing: {executed / (p.name + '.ipynb')} (make it with `make notebook NB={p.number}`"
              f"{'' if args.scale == 'default' else ' SCALE=' + args.scale}, or all: `make course`)",
              file=sys.stderr)
    done = len(pages) - len(missing)
    print(f"wrote {args.out / 'index.html'} with {done} of {len(pages)} notebooks")
    return 1 if done == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
