"""Run the course's notebooks with papermill, or strip their outputs.

    python -m recutils.course                      # every notebook at SCALE=default
    python -m recutils.course --only 00 03         # just these
    python -m recutils.course --scale smoke
    python -m recutils.course --strip              # remove outputs before committing

Executed copies go to ``build/executed/<scale>/``; each notebook runs with ``notebooks/``
as its working directory and its own fresh kernel. Per-notebook times are printed at the
end, and a failure stops nothing silently: the run exits non-zero and names the notebook.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat

from recutils.notebook import project_root
from recutils.progress import ENV as PROGRESS_ENV

ROOT = project_root()


def notebooks(root: Path = ROOT) -> list[Path]:
    """Every course notebook, in order (``notebooks/NN_*.ipynb``)."""
    return sorted(p for p in (root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def run_notebook(path: Path, scale: str, out_dir: Path, parameters: dict | None = None,
                 kernel: str = "python3", timeout: int | None = None) -> float:
    """Execute one notebook with papermill; return the seconds it took.

    The kernel inherits ``RECUTILS_PROGRESS=lines`` (one line per long stage instead of
    progress bars in the executed notebook; see :mod:`recutils.progress`).
    """
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    before = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = "lines"
    try:
        pm.execute_notebook(str(path), str(out_dir / path.name),
                            parameters={"SCALE": scale, **(parameters or {})}, kernel_name=kernel,
                            cwd=str(path.parent), progress_bar=False, execution_timeout=timeout)
    finally:
        if before is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = before
    return time.perf_counter() - start


def strip(path: Path) -> bool:
    """Remove outputs and execution counts; return True if the file changed."""
    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count")):
            cell["outputs"], cell["execution_count"] = [], None
            changed = True
        if cell.get("metadata", {}).pop("execution", None) is not None:
            changed = True
    for key in ("papermill", "widgets"):
        if nb.metadata.pop(key, None) is not None:
            changed = True
    if changed:
        nbformat.write(nb, path)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", default="default", choices=["smoke", "default", "paper"])
    ap.add_argument("--only", nargs="*", default=None, help="notebook numbers, e.g. 00 03")
    ap.add_argument("--strip", action="store_true", help="strip outputs of every notebook and exit")
    args = ap.parse_args(argv)
    paths = notebooks()
    if args.strip:
        for p in paths:
            print(("stripped " if strip(p) else "clean    ") + p.name)
        return 0
    if args.only:
        wanted = set(args.only)
        unknown = wanted - {p.name[:2] for p in paths}
        if unknown:
            print(f"no notebook numbered {sorted(unknown)}; have {[p.name for p in paths]}")
            return 2
        paths = [p for p in paths if p.name[:2] in wanted]
    out_dir = ROOT / "build" / "executed" / args.scale
    times, failed = {}, {}
    for p in paths:
        print(f"--> {p.name} (SCALE={args.scale})", flush=True)
        start = time.perf_counter()
        try:
            times[p.name] = run_notebook(p, args.scale, out_dir)
        except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
            times[p.name] = time.perf_counter() - start
            failed[p.name] = e
            print(f"    FAILED after {times[p.name] / 60:.1f} min: {type(e).__name__}", flush=True)
            continue  # the others still run; the failure is reported below and in the exit code
        print(f"    done in {times[p.name] / 60:.1f} min -> {out_dir / p.name}", flush=True)
    print("\nper-notebook times:")
    for name, t in times.items():
        print(f"  {name:40s} {t / 60:6.1f} min {'FAILED' if name in failed else ''}")
    print(f"  {'total':40s} {sum(times.values()) / 60:6.1f} min")
    for name, e in failed.items():
        print(f"\nFAILED: {name}\n{e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
