"""Bad input to `qsm`: one line on stderr, exit code 2, no traceback (unless --debug)."""

import json
import subprocess
import sys

import pytest

from qsmgym.experiments import cli
from qsmgym.experiments.runs import QsmError, parse_overrides
from qsmgym.experiments.train import parse_seeds


def _run(capsys, *argv):
    rc = cli.main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize("argv, needle", [
    (["train", "--env", "qsm/NoSuchTask-v0", "--agent", "ppo"], "qsm/KickedTopSensor-v0"),
    (["train", "--env", "qsm/KickedTopSensor-v0", "--agent", "dqn"], "unknown agent 'dqn'"),
    (["train", "--env", "qsm/MemoryCutoff-v0", "--agent", "grape"], "does not fit"),
    (["train", "--env", "qsm/KickedTopSensor-v0", "--agent", "grape"], "does not fit"),
    (["train", "--env", "qsm/KickedTopSensor-v0", "--agent", "cem", "--budget", "huge"], "unknown budget"),
    (["train", "--env", "qsm/KickedTopSensor-v0", "--agent", "cem", "--seeds", "zero"], "--seeds"),
    (["train", "--env", "qsm/KickedTopSensor-v0", "--agent", "cem", "--seeds", "0"], "--seeds must be >= 1"),
    (["train", "--env", "qsm/KickedTopSensor-v0", "--agent", "cem", "--set", "config.population"], "section.key=value"),
    (["train", "--env", "qsm/KickedTopSensor-v0", "--agent", "cem", "--set", "config.population=-3"], "population"),
    (["train", "--env", "qsm/KickedTopSensor-v0", "--agent", "cem", "--set", "config.popsize=3"], "popsize"),
    (["train", "--env", "qsm/KickedTopSensor-v0", "--agent", "cem", "--set", "hyper.smoothing=abc"], "hyper.smoothing"),
    (["train", "--env", "qsm/KickedTopSensor-v0", "--agent", "cem", "--set", "hyper.lr=0.1"], "unknown hyperparameter"),
    (["train", "--env", "qsm/KickedTopSensor-v0", "--agent", "cem", "--set", "env.j=-1"], "j=-1"),
    (["train", "--env", "qsm/KickedTopSensor-v0", "--agent", "cem", "--set", "foo.x=1"], "--set key"),
    (["train", "--agent", "cem"], "--env is required"),
    (["train", "--env", "qsm/KickedTopSensor-v0", "--no-such-flag"], "unrecognized arguments"),
    (["evaluate", "/nonexistent/run"], "does not exist"),
    (["evaluate", ".", "--episodes", "0"], "--episodes"),
    (["reproduce", "nature2099"], "unknown paper 'nature2099'"),
    (["reproduce"], "paper"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2
    assert err.startswith("qsm: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert needle in err


@pytest.mark.parametrize("flag, module", [("--tensorboard", "tensorboard"), ("--wandb", "wandb")])
def test_missing_logger_package_is_a_clear_error(capsys, tmp_path, flag, module):
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    rc, _, err = _run(capsys, "train", "--env", "qsm/KickedTopSensor-v0", "--agent", "cem", flag,
                      "--out", str(tmp_path))
    assert rc == 2 and f"{flag} needs the {module} package" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # rejected before any run folder is made


def test_unknown_command_and_help(capsys):
    rc, _, err = _run(capsys, "frobnicate")
    assert rc == 2 and "unknown command 'frobnicate'" in err and err.count("\n") == 1
    rc, out, _ = _run(capsys, "--help")
    assert rc == 0
    for name in ("train", "evaluate", "sweep", "reproduce", "leaderboard", "bench", "results", "demo"):
        assert f"  {name}" in out


def test_evaluate_rejects_a_folder_without_config(tmp_path, capsys):
    rc, _, err = _run(capsys, "evaluate", str(tmp_path))
    assert rc == 2 and "config.json does not exist" in err
    (tmp_path / "config.json").write_text("{not json")
    rc, _, err = _run(capsys, "evaluate", str(tmp_path))
    assert rc == 2 and "not valid JSON" in err
    (tmp_path / "config.json").write_text(json.dumps({"env_id": "qsm/KickedTopSensor-v0", "agent": "cem",
                                                      "seeds": [0], "env_kwargs": {}}))
    (tmp_path / "policy").mkdir()
    # a pickle where the actions should be: refused, never loaded
    (tmp_path / "policy" / "actions.npy").write_bytes(b"\x80\x04\x95" + b"\x00" * 20 + b".")
    rc, _, err = _run(capsys, "evaluate", str(tmp_path))
    assert rc == 2 and "cannot load the saved policy" in err


def test_debug_shows_the_traceback():
    # in a subprocess: the installed console script, as users run it
    qsm = [sys.executable, "-m", "qsmgym.experiments.cli"]
    plain = subprocess.run(qsm + ["train", "--env", "qsm/Nope-v0"], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and plain.stderr.count("\n") == 1
    debug = subprocess.run(qsm + ["train", "--env", "qsm/Nope-v0", "--debug"], capture_output=True, text=True,
                           timeout=300)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "QsmError" in debug.stderr


def test_parse_helpers():
    assert parse_seeds("3") == (0, 1, 2) and parse_seeds("4,9") == (4, 9)
    over = parse_overrides(["env.j=3", "env.noise=superradiant", "config.hidden_sizes=[8, 8]", 'hyper.x="1"'],
                           ("env", "config", "hyper"))
    assert over == {"env": {"j": 3, "noise": "superradiant"}, "config": {"hidden_sizes": [8, 8]},
                    "hyper": {"x": "1"}}
    with pytest.raises(QsmError, match="given twice"):
        parse_overrides(["env.j=3", "env.j=4"], ("env",))
