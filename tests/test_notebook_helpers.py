import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from recutils.notebook import (  # noqa: E402
    Recorder,
    UnknownParameterError,
    check_parameters,
    load_all_results,
    load_results,
    preset,
)

PARAMS = 'SCALE = "default"  # smoke | default | paper\nSEED = 0\nDEVICE = "auto"\n'


def test_declared_parameters_pass():
    check_parameters(["import x", PARAMS, '# Parameters\nSCALE = "smoke"\nSEED = 3\n', "check()"])
    check_parameters(["import x", PARAMS])  # no injection at all (interactive use)


def test_unknown_injected_parameter_fails_loudly():
    with pytest.raises(UnknownParameterError, match="SCAEL") as e:
        check_parameters([PARAMS, '# Parameters\nSCAEL = "smoke"\n'])
    assert "DEVICE, SCALE, SEED" in str(e.value)


def test_preset_requires_every_scale_with_same_keys():
    p = preset("smoke", smoke={"epochs": 1}, default={"epochs": 30}, paper={"epochs": 200})
    assert p.epochs == 1
    with pytest.raises(ValueError, match="SCALE must be one of"):
        preset("huge", smoke={}, default={}, paper={})
    with pytest.raises(ValueError, match="missing"):
        preset("smoke", smoke={"a": 1}, default={"a": 2})
    with pytest.raises(ValueError, match="same settings"):
        preset("smoke", smoke={"a": 1}, default={"a": 2, "b": 3}, paper={"a": 1})


def test_recorder_writes_results_and_figures(tmp_path):
    import numpy as np
    import torch
    rec = Recorder("07", "smoke", seed=1, root=tmp_path)
    rec.record("model", {"full/NDCG@10": np.float32(0.25), "n": np.int64(3), "t": torch.tensor(2.0)})
    data = json.loads((tmp_path / "results" / "07_smoke.json").read_text())
    assert data["records"]["model"] == {"full/NDCG@10": 0.25, "n": 3, "t": 2.0}
    assert data["seed"] == 1 and "torch" in data["versions"]
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = rec.save_fig(fig, "curve")
    assert path == tmp_path / "figures" / "smoke" / "07_curve.png" and path.stat().st_size > 1000
    assert Recorder("07", "default", root=tmp_path).figures_dir == tmp_path / "figures"
    assert load_results("07", "smoke", root=tmp_path)["model"]["n"] == 3
    with pytest.raises(FileNotFoundError, match="run notebook 08"):
        load_results("08", "smoke", root=tmp_path)
    Recorder("09", "smoke", root=tmp_path).record("x", 1)
    Recorder("09", "default", root=tmp_path).record("x", 2)
    assert load_all_results("smoke", root=tmp_path) == {"07": load_results("07", "smoke", root=tmp_path),
                                                        "09": {"x": 1}}
    assert list(load_all_results("smoke", root=tmp_path, exclude=("07",))) == ["09"]


def test_method_and_claim_records(tmp_path):
    from recutils.notebook import claim
    rec = Recorder("07", "smoke", root=tmp_path)
    rec.record_method("SASRec", {"full/NDCG@10": 0.06}, train_seconds=12.5, params_total=10,
                      params_trainable=8, n_users=943, note="x")
    table = rec.record_claims([claim("A beats B", "0.5 vs 0.4", "0.3 vs 0.35", False)])
    assert table.loc[0, "holds"] == "no"
    rec2 = json.loads((tmp_path / "results" / "07_smoke.json").read_text())["records"]
    assert rec2["methods"]["SASRec"]["metrics"]["full/NDCG@10"] == 0.06
    assert rec2["methods"]["SASRec"]["note"] == "x" and rec2["claims"][0]["paper"] == "0.5 vs 0.4"


def test_reproducible_part_drops_only_timings_and_run_conditions():
    from recutils.notebook import reproducible_part
    data = {"seed": 0, "versions": {"torch": "2.13.0"}, "run": {"wall_seconds": 3.0},
            "records": {"methods": {"SASRec": {"metrics": {"full/HR@10": 0.1}, "train_seconds": 9.0,
                                               "infer_seconds_per_user": 0.01, "n_users": 5}},
                        "seconds": {"total": 12.0}, "secondary": [1, 2],
                        "stage2_seconds_per_step": {"A": 2.5}, "seconds_per_epoch": 1}}
    assert reproducible_part(data) == {
        "seed": 0, "versions": {"torch": "2.13.0"},
        "records": {"methods": {"SASRec": {"metrics": {"full/HR@10": 0.1}, "n_users": 5}},
                    "secondary": [1, 2], "seconds_per_epoch": 1}}


def test_recorder_records_threads_load_and_wall_time(tmp_path):
    import torch

    from recutils.notebook import Recorder
    rec = Recorder("99", "smoke", seed=1, root=tmp_path)
    rec.record("x", 1)
    data = json.loads(rec.results_path.read_text())
    run = data["run"]
    assert run["threads"] == torch.get_num_threads() and run["wall_seconds"] >= 0
    assert len(run["load_average_start"]) == 3 and run["load_average_max"][0] >= 0
    # the CPU is named beside the timings (results reproduce per machine, not across CPUs)
    name, cap = run["cpu"].split(" | ")
    assert name and name != "unknown" and cap == torch.backends.cpu.get_cpu_capability()
    assert data["versions"]["torch"].startswith("2.13") and "transformers" in data["versions"]
    assert "smoke" in rec.run_summary() and "torch threads" in rec.run_summary()


def test_claim_with_overlapping_intervals_is_not_separable():
    from recutils.notebook import claim
    assert claim("a beats b", "1 vs 2", "0.3 vs 0.2", True)["holds"] == "yes"
    for holds in (True, False):
        assert claim("a beats b", "", "", holds, separable=False)["holds"] == \
            "not separable at this scale"
    assert claim("a beats b", "", "", None, separable=False)["holds"] == "n/a"
