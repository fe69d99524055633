"""Run-folder records (experiments.runs): folders, JSON/CSV records, overrides."""

import csv
import json
import math

import numpy as np
import pytest

from qsmgym.experiments import runs
from qsmgym.experiments.train import TrainConfig, field_help


def test_create_run_dir_is_fresh_and_sanitised(tmp_path):
    a = runs.create_run_dir(tmp_path, "qsm/KickedTopSensor-v0-cem")
    b = runs.create_run_dir(tmp_path, "qsm/KickedTopSensor-v0-cem")
    assert a != b and a.is_dir() and b.is_dir() and (a / "plots").is_dir()
    assert a.name.startswith("qsm_KickedTopSensor-v0-cem-") and "/" not in a.name
    with pytest.raises(runs.QsmError, match="run name"):
        runs.create_run_dir(tmp_path, "//")


def test_records_round_trip(tmp_path):
    cfg = TrainConfig(env_id="qsm/X-v0", agent="cem", seeds=(0, 3), env_kwargs={"j": 5},
                      settings={"config": {"population": np.int64(8)}})
    runs.write_config(tmp_path, cfg)
    got = json.loads((tmp_path / "config.json").read_text())
    assert got["seeds"] == [0, 3] and got["settings"]["config"]["population"] == 8
    runs.write_meta(tmp_path, command=["qsm", "train"], start="t0", end="t1")
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["command"] == ["qsm", "train"] and meta["start_time"] == "t0"
    assert meta["packages"]["numpy"] == np.__version__
    rows = [{"seed": 0, "env_steps": 10, "return": 1.5}, {"seed": 0, "env_steps": 20, "return": math.nan}]
    runs.write_metrics(tmp_path, {"score": np.float64(0.25)}, rows)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["score"] == 0.25 and metrics["curve"][1]["return"] is None  # NaN -> null, valid JSON
    with open(tmp_path / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert table[0] == {"seed": "0", "env_steps": "10", "return": "1.5"} and table[1]["return"] == ""


def test_every_config_field_has_help():
    import dataclasses

    for f in dataclasses.fields(TrainConfig):
        assert len(field_help(TrainConfig, f.name)) > 10, f.name


def test_overrides_never_evaluate_code():
    over = runs.parse_overrides(["env.x=__import__('os').system('true')"], ("env",))
    assert over["env"]["x"] == "__import__('os').system('true')"  # kept as a plain string
