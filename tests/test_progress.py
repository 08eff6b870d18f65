"""recutils.progress: what each mode prints, and that progress never changes numbers."""

import re

import numpy as np
import pytest
import torch

from recutils.progress import Progress, mode, track

LINE = re.compile(r"^(?P<desc>.+): (?P<n>\d+) (?P<unit>\S+) in (?P<s>\d+\.\d) s(?P<extra>.*)$")


def test_default_mode_is_bar(monkeypatch):
    monkeypatch.delenv("RECUTILS_PROGRESS", raising=False)
    assert mode() == "bar"


def test_unknown_mode_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("RECUTILS_PROGRESS", "verbose")
    with pytest.raises(ValueError, match="RECUTILS_PROGRESS='verbose'.*bar, lines, off"):
        list(track([1, 2], "x"))


def test_bar_mode_draws_a_tqdm_bar(monkeypatch, capfd):
    monkeypatch.setenv("RECUTILS_PROGRESS", "bar")
    assert list(track(range(7), "encode", unit="batch")) == list(range(7))
    err = capfd.readouterr().err
    assert "encode" in err and "7/7" in err and "batch" in err


def test_lines_mode_prints_exactly_one_line_per_stage(monkeypatch, capfd):
    monkeypatch.setenv("RECUTILS_PROGRESS", "lines")
    assert list(track(range(5), "encode items", unit="batch")) == [0, 1, 2, 3, 4]
    with Progress("generate", total=12, unit="user") as p:
        for _ in range(3):
            p.update(4)
        p.set_postfix(valid=0.75)
    for _ in track(iter(range(3)), "no length"):  # an iterator without len() works too
        pass
    captured = capfd.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 3, lines
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [(m["desc"], m["n"], m["unit"]) for m in parsed] == [
        ("encode items", "5", "batch"), ("generate", "12", "user"), ("no length", "3", "it")]
    assert parsed[1]["extra"] == ", valid=0.75"


def test_a_stage_prints_once_even_if_closed_twice(monkeypatch, capfd):
    monkeypatch.setenv("RECUTILS_PROGRESS", "lines")
    p = Progress("fit", total=2)
    p.update(2)
    p.close()
    p.close()
    assert len(capfd.readouterr().err.splitlines()) == 1


@pytest.mark.parametrize("how", ["off", "disable"])
def test_off_mode_and_disable_are_silent(monkeypatch, capfd, how):
    monkeypatch.setenv("RECUTILS_PROGRESS", "off" if how == "off" else "lines")
    disable = how == "disable"
    assert sum(track(range(4), "quiet", disable=disable)) == 6
    with Progress("quiet", total=1, disable=disable) as p:
        p.update(1)
        p.set_postfix(loss=1.0)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


@pytest.mark.parametrize("value", ["bar", "lines", "off"])
def test_progress_draws_no_random_numbers(monkeypatch, value):
    monkeypatch.setenv("RECUTILS_PROGRESS", value)
    torch.manual_seed(3)
    np.random.seed(3)
    for _ in track(range(3), "stage"):
        pass
    with Progress("stage", total=1) as p:
        p.update(1)
    got = (torch.rand(2).tolist(), np.random.rand(2).tolist())
    torch.manual_seed(3)
    np.random.seed(3)
    assert got == (torch.rand(2).tolist(), np.random.rand(2).tolist())


def test_evaluation_with_progress_gives_the_same_numbers(monkeypatch, capfd, tiny):
    from recutils.evaluation import Evaluator

    monkeypatch.setenv("RECUTILS_PROGRESS", "lines")
    ev = Evaluator(tiny, stage="test", seed=0)
    scores = torch.randn(tiny.n_users, tiny.n_items + 1, generator=torch.Generator().manual_seed(0))

    def score(users):
        return scores[users]

    quiet = ev.evaluate(score, batch_size=7).metrics()
    loud = ev.evaluate(score, batch_size=7, progress=True, desc="eval tiny").metrics()
    assert quiet == loud
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"eval tiny: {len(ev.users)} user in ")


def test_run_notebook_gives_the_kernel_lines_mode_and_restores_the_environment(monkeypatch, tmp_path):
    import os

    import papermill

    from recutils import course

    seen = {}

    def fake_execute(*args, **kwargs):
        seen["mode"] = os.environ.get("RECUTILS_PROGRESS")

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    monkeypatch.setenv("RECUTILS_PROGRESS", "bar")
    course.run_notebook(tmp_path / "00_x.ipynb", "smoke", tmp_path)
    assert seen["mode"] == "lines" and os.environ["RECUTILS_PROGRESS"] == "bar"
    monkeypatch.delenv("RECUTILS_PROGRESS")
    course.run_notebook(tmp_path / "00_x.ipynb", "smoke", tmp_path)
    assert seen["mode"] == "lines" and "RECUTILS_PROGRESS" not in os.environ
