"""SB3 PPO on the Gymnasium shells (unmodified), and the throughput comparison."""

import math

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("torch")

from qsmgym.agents import ppo  # noqa: E402
from qsmgym.agents.sb3_baseline import ppo_throughput, train_sb3_ppo  # noqa: E402


@pytest.mark.parametrize(
    "env_id, env_kwargs, horizon",
    [
        ("qsm/TimeDependentEstimation-v0", {"n_bins": 5, "total_time": 2.0, "n_substeps": 2}, 5),
        ("qsm/KickedTopSensor-v0", {"j": 1, "n_periods": 5}, 5),
    ],
)
def test_tiny_sb3_run_completes_and_evaluates(env_id, env_kwargs, horizon, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where SB3's default logger writes
    out = train_sb3_ppo(env_id, env_kwargs, total_timesteps=256, seed=0, eval_episodes=3,
                        n_steps=128, batch_size=64, n_epochs=2)
    assert out["timesteps"] == 256  # two rollouts of n_steps=128
    assert out["wall_time_s"] > 0
    ev = out["eval"]
    assert len(ev["episode_returns"]) == 3 and ev["episode_lengths"] == [horizon] * 3
    assert np.all(np.isfinite(ev["episode_returns"]))
    assert math.isclose(ev["mean_return"], float(np.mean(ev["episode_returns"])))
    # no empty SB3-<time> logger folder left behind (torch may put its own cache here)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("SB3-")] == []


def test_train_sb3_ppo_rejects_bad_budget():
    with pytest.raises(ValueError, match="total_timesteps"):
        train_sb3_ppo("qsm/KickedTopSensor-v0", {"j": 1}, total_timesteps=0)


def test_throughput_returns_finite_positive_numbers():
    cfg = ppo.PPOConfig(num_envs=64, num_steps=8, total_timesteps=512, update_epochs=1, num_minibatches=2)
    out = ppo_throughput("qsm/KickedTopSensor-v0", {"j": 1, "n_periods": 5}, 0.5,
                         sb3_kwargs={"n_steps": 64, "batch_size": 64, "n_epochs": 1}, ppo_config=cfg)
    for side in ("sb3", "jax"):
        assert np.isfinite(out[side]["steps_per_s"]) and out[side]["steps_per_s"] > 0, side
        assert out[side]["steps"] > 0
    assert np.isfinite(out["ratio"]) and out["ratio"] > 0
    with pytest.raises(ValueError, match="seconds_budget"):
        ppo_throughput("qsm/KickedTopSensor-v0", {}, 0.0)
