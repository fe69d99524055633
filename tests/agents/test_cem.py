"""CEM: the elite update against a slow reference, and short runs that must beat random."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qsmgym.agents import CEMConfig, default_hyper, make_train, open_loop_return
from qsmgym.agents.cem import elite_update_discrete, elite_update_gaussian
from qsmgym.envs import KickedTopSensor


def test_elite_update_discrete_matches_loop():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=3)  # 3 slots, 4 actions
    elites = rng.integers(0, 4, (5, 3))
    new = np.asarray(elite_update_discrete(jnp.asarray(probs), jnp.asarray(elites), 4, 0.3))
    expected = np.empty_like(probs)
    for t in range(3):
        for a in range(4):
            freq = sum(1 for e in elites if e[t] == a) / len(elites)
            expected[t, a] = 0.7 * probs[t, a] + 0.3 * freq
    np.testing.assert_allclose(new, expected, atol=1e-15)
    np.testing.assert_allclose(new.sum(axis=1), 1.0, atol=1e-15)


def test_elite_update_gaussian_matches_numpy():
    rng = np.random.default_rng(1)
    elites = rng.normal(size=(6, 4, 1))
    mean, std = np.zeros((4, 1)), np.ones((4, 1))
    m, s = elite_update_gaussian(jnp.asarray(mean), jnp.asarray(std), jnp.asarray(elites), 0.5, 0.1)
    np.testing.assert_allclose(np.asarray(m), 0.5 * elites.mean(0), atol=1e-15)
    np.testing.assert_allclose(np.asarray(s), np.maximum(0.5 + 0.5 * elites.std(0), 0.1), atol=1e-15)


def test_open_loop_return_matches_qfi_trajectory():
    task = KickedTopSensor(j=3, n_periods=5, noise="superradiant")
    params = task.default_params()
    actions = jnp.asarray([6, 0, 3, 12, 1])
    ret, _ = open_loop_return(task, params, task.precompute(params), jax.random.PRNGKey(0), actions)
    q = task.qfi_trajectory(params, params.k_grid[actions])[-1]
    np.testing.assert_allclose(float(ret), float(q) / (2 * 3 * 25), rtol=1e-12)


def test_config_validation():
    with pytest.raises(ValueError, match="n_elite must be <= population"):
        CEMConfig(n_steps=5, population=4, n_elite=5)
    with pytest.raises(ValueError, match="iterations"):
        CEMConfig(n_steps=5, iterations=0)


@pytest.mark.parametrize("action_type", ["discrete", "continuous"])
def test_short_cem_beats_random_and_vmaps_over_seeds(action_type):
    import math

    task = KickedTopSensor(j=3, n_periods=8, noise="superradiant", theta0=math.pi / 2,
                           phi0=math.pi / 2, action_type=action_type)
    params = task.default_params()
    cfg = CEMConfig(n_steps=8, population=64, n_elite=8, iterations=10)
    train = jax.jit(jax.vmap(make_train(cfg, task, params), in_axes=(0, None)))
    res = train(jax.random.split(jax.random.PRNGKey(0), 2), default_hyper())
    # random sequences' mean return = the first iteration's population mean
    first_mean = np.asarray(res.population_mean[:, 0])
    assert np.all(np.asarray(res.best_return) > 1.5 * first_mean)
    assert np.all(np.diff(np.asarray(res.best_so_far), axis=1) >= 0)


@pytest.mark.slow
def test_cem_learning_run_beats_both_baselines():
    import math

    task = KickedTopSensor(j=5, noise="superradiant", theta0=math.pi / 2, phi0=math.pi / 2)
    ref = task.references()
    hyper = dict(default_hyper(), smoothing=jnp.asarray(0.3))
    res = jax.jit(make_train(CEMConfig(n_steps=20, population=256, n_elite=25, iterations=80), task,
                             task.default_params()))(jax.random.PRNGKey(0), hyper)
    qfi = float(res.best_return) * ref["standard_quantum_limit"]
    assert qfi > 5 * ref["best_baseline"]
