"""The benchmark's four paths run and report ratios (tiny budget; no timing assertions)."""

import math

import numpy as np

from qsmgym.experiments import bench
from qsmgym.envs import KickedTopSensor


def test_bench_rows_have_all_paths_and_ratios():
    rows = bench.run(js=(2,), noises=("none", "superradiant"), num_envs=16, seconds=0.05)
    assert len(rows) == 2
    for row in rows:
        for key in ("qutip", "shell", "jax_vector", "numpy_batched", "b/a", "c/a", "c/d"):
            assert math.isfinite(row[key]) and row[key] > 0


def test_numpy_reference_matches_jax_core():
    # The hand-written NumPy path does the same physics: same final QFI (round-off only)
    for noise in ("none", "superradiant"):
        task = KickedTopSensor(j=2, n_periods=6, noise=noise)
        params = task.default_params()
        sim = bench.NumpyKickedTop(task, params, task.precompute(params), num_envs=2)
        acts = np.array([[3, 0], [12, 1], [0, 5], [7, 7], [2, 9]])
        for a in acts:
            sim.step(a)
        for i in range(2):
            q = float(task.qfi_trajectory(params, params.k_grid[acts[:, i]])[-1])
            np.testing.assert_allclose(sim.qfi[i], q, rtol=1e-10)


def test_every_other_task_has_three_paths():
    # BENCHMARKS.md's rows, with a small magnetometry filter (with its default 480 particles
    # and 24 measurements the heuristic references take several seconds before the first
    # timed step)
    small = {"qsm/BayesianMagnetometry-v0": {"n_particles": 64, "n_measurements": 6}}
    rows = [(env_id, small.get(env_id, kwargs)) for env_id, kwargs in bench.TASK_ROWS]
    rows = bench.run_tasks(rows=rows, num_envs=8, seconds=0.02)
    assert {r["env_id"] for r in rows} | {"qsm/KickedTopSensor-v0"} == set(__import__("qsmgym.envs", fromlist=["TASKS"]).TASKS)
    for row in rows:
        for key in ("reference", "shell", "jax_vector", "b/a", "c/a"):
            assert math.isfinite(row[key]) and row[key] > 0
