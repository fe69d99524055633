"""`qsm train` + `qsm evaluate` end to end on every registered id (tiny budgets), one process per id.

Each id runs in its own interpreter (``python -c`` calling ``cli.main`` twice), so the ids stay
independent (an XLA CPU deadlock in one, such as the batched-QR one fixed in agents/networks.py,
cannot take the others with it; docs/results/README.md). The processes run two at a time (CI has two
cores; XLA compilation, the bulk of a tiny run, is mostly single-threaded). Agents are spread
so that every agent (PPO, CEM, GRAPE, model-aware) runs at least once while each id stays
cheap to compile.
"""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from qsmgym.envs.registry import TASKS

AGENT_FOR = {
    "qsm/KickedTopSensor-v0": "cem",
    "qsm/TimeDependentEstimation-v0": "grape",
    "qsm/PhotonShaping-v0": "model-aware",
    "qsm/PhotonStorage-v0": "cem",
    "qsm/BayesianMagnetometry-v0": "cem",
    "qsm/MemoryCutoff-v0": "ppo",
    "qsm/RepeaterDelivery-v0": "ppo",
}
SPIN_TASKS = {"qsm/KickedTopSensor-v0", "qsm/TimeDependentEstimation-v0"}
# small env settings where the defaults would make a tiny run slow (the CLI's --set path)
ENV_SET = {
    "qsm/BayesianMagnetometry-v0": ["--set", "env.n_measurements=4"],
    "qsm/MemoryCutoff-v0": ["--set", "env.horizon=20"],
}

SCRIPT = """
import sys
from pathlib import Path
from qsmgym.experiments import cli
out = Path(sys.argv[1])
rc = cli.main(["train", *sys.argv[2:], "--budget", "tiny", "--seeds", "2", "--out", str(out)])
assert rc == 0, rc
(run,) = [p for p in out.iterdir() if p.is_dir()]
rc = cli.main(["evaluate", str(run), "--episodes", "3", "--seed", "5"])
sys.exit(rc)
"""


def test_every_registered_id_has_a_cli_agent():
    assert set(AGENT_FOR) == set(TASKS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """env id -> (completed process, its output folder); all ids, two processes at a time."""

    # the folders are made here, before the threads: tmp_path_factory creates its base folder on
    # first use, and two threads doing that at once raced (FileExistsError on popen-gw1, session 20)
    outs = {env_id: tmp_path_factory.mktemp(env_id.split("/")[1]) for env_id in sorted(TASKS)}

    def one(env_id):
        out = outs[env_id]
        cmd = [sys.executable, "-c", SCRIPT, str(out), "--env", env_id, "--agent", AGENT_FOR[env_id],
               *ENV_SET.get(env_id, [])]
        return env_id, (subprocess.run(cmd, capture_output=True, text=True, timeout=900), out)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, sorted(TASKS)))


@pytest.mark.parametrize("env_id", sorted(TASKS))
def test_train_then_evaluate(env_id, runs):
    agent = AGENT_FOR[env_id]
    proc, out = runs[env_id]
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    config = json.loads((run / "config.json").read_text())
    assert config["env_id"] == env_id and config["agent"] == agent and config["seeds"] == [0, 1]
    meta = json.loads((run / "meta.json").read_text())
    for key in ("git_commit", "packages", "device", "python", "platform", "command", "start_time", "end_time"):
        assert key in meta
    assert meta["end_time"] is not None and meta["command"][:2] == ["qsm", "train"]
    assert set(meta["packages"]) >= {"qsm-gym", "jax", "jaxlib", "flax", "optax", "gymnasium", "qutip", "numpy"}
    assert meta["device"]["backend"] in ("cpu", "gpu", "cuda", "tpu")
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["final_returns"]) == 2 and all(np.isfinite(metrics["final_returns"]))
    csv_lines = (run / "metrics.csv").read_text().splitlines()
    assert csv_lines[0] == "seed,env_steps,return" and len(csv_lines) == 1 + len(metrics["curve"]) > 1
    plots = {p.name for p in (run / "plots").iterdir()}
    want = {"learning_curve.png", "pulses.png"} | ({"husimi.png"} if env_id in SPIN_TASKS else set())
    assert plots == want
    for name in plots:
        assert (run / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    policy = sorted(p.name for p in (run / "policy").iterdir())
    if agent in ("cem", "grape"):
        assert policy == ["actions.npy"]
        actions = np.load(run / "policy" / "actions.npy", allow_pickle=False)
        assert actions.shape[0] == 2
    else:
        assert policy == ["seed0.msgpack", "seed0.msgpack.json", "seed1.msgpack", "seed1.msgpack.json"]
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["episodes_per_policy"] == 3 and ev["eval_seed"] == 5 and len(ev["per_policy"]) == 2
    assert all(len(p["returns"]) == 3 and np.all(np.isfinite(p["returns"])) for p in ev["per_policy"])
    assert "score (fraction of physical limit" in proc.stdout
    if env_id == "qsm/KickedTopSensor-v0":
        # noiseless kicked top: deterministic, so the saved open-loop actions replayed from the
        # file on fresh keys must give the training-time scores exactly (float64 round-off only)
        got = [p["mean_return"] for p in ev["per_policy"]]
        np.testing.assert_allclose(got, metrics["final_returns"], rtol=1e-12)
        # and the evaluation episode of the best seed is that seed's return
        best = int(np.argmax(metrics["final_returns"]))
        assert metrics["eval_episode"]["return"] == pytest.approx(metrics["final_returns"][best], rel=1e-12)
