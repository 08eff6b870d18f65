"""Progress of long steps (encoding, generation, evaluation, training), in one of three modes.

``$RECUTILS_PROGRESS`` picks the mode when a stage starts:

* ``bar`` (default): a ``tqdm.auto`` bar, a widget in JupyterLab and a text bar in a terminal;
* ``lines``: no bar, one line per stage when it ends, ``<desc>: <n> <unit> in <s> s``
  (what ``recutils.course`` sets for the notebooks it runs, so papermill logs stay short);
* ``off``: nothing.

>>> for batch in track(batches, "encode titles", unit="batch"): ...
>>> with Progress("generate", total=len(users), unit="user") as p:
...     p.update(len(chunk)); p.set_postfix(valid=0.9)

Progress only reads a clock; it never touches a random number generator, so numbers never
depend on the mode.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator

MODES = ("bar", "lines", "off")
ENV = "RECUTILS_PROGRESS"


def mode() -> str:
    """The mode from ``$RECUTILS_PROGRESS`` (default ``bar``); an unknown value is an error."""
    value = os.environ.get(ENV, "bar").strip().lower() or "bar"
    if value not in MODES:
        raise ValueError(f"{ENV}={value!r}: use one of {', '.join(MODES)}")
    return value


class Progress:
    """One stage: ``with Progress(desc, total) as p: p.update(1)``.

    ``disable=True`` silences it whatever the mode (for callers with a ``progress=`` flag).
    """

    def __init__(self, desc: str, total: int | None = None, unit: str = "it",
                 disable: bool = False, leave: bool = True) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.mode = "off" if disable else mode()
        self.n = 0
        self.postfix: dict = {}
        self._bar = None
        self._t0 = time.perf_counter()
        self._closed = False
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=leave)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, **values) -> None:
        """Values shown beside the bar (``bar``) or at the end of the stage's line (``lines``)."""
        self.postfix = dict(values)
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines":
            seconds = time.perf_counter() - self._t0
            extra = "".join(f", {k}={_fmt(v)}" for k, v in self.postfix.items())
            print(f"{self.desc}: {self.n} {self.unit} in {seconds:.1f} s{extra}", file=sys.stderr,
                  flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def track(iterable: Iterable, desc: str, total: int | None = None, unit: str = "it",
          disable: bool = False) -> Iterator:
    """Iterate over ``iterable`` and report it as one stage (counts one per item)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(desc, total=total, unit=unit, disable=disable) as p:
        for item in iterable:
            yield item
            p.update(1)
