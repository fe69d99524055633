"""GRAPE (agents/grape.py) on qsm/PhotonShaping-v0: the strong non-RL baseline reaches the
shape limit. C = 9 (g = 3, kappa = gamma = 1), Gaussian sigma = 2/kappa, 100 bins."""

import time

import jax
import pytest

from qsmgym.agents import grape
from qsmgym.envs.photon_shaping import PhotonShaping


@pytest.mark.slow
def test_grape_reaches_99_percent_of_shape_limit():
    task = PhotonShaping(n_bins=100, target="gaussian", width=2.0)
    params = task.default_params()
    eta_max = task.references(params)["eta_max"]
    start = time.perf_counter()
    result = grape.train_grape(task, params, grape.GrapeConfig(n_steps=100, iterations=300, restarts=4))
    jax.block_until_ready(result.best_return)
    fraction = float(result.best_return) / eta_max
    print(f"GRAPE R = {float(result.best_return):.6f}, eta_max = {eta_max:.6f}, "
          f"fraction {fraction:.5f}, {time.perf_counter() - start:.1f} s")
    # the requirement of issue 5. eta_max[f] bounds exact emission of f, not the overlap R,
    # which GRAPE pushes slightly above it (measured 1.0003); R <= eta <= C/(1+C) always.
    assert fraction >= 0.99
    assert float(result.best_return) <= task.references(params)["bound"]
