"""KickedTopSensor specifics: bad input, episode end, options, references."""

import math

import gymnasium as gym
import jax
import numpy as np
import pytest

import qsmgym.envs  # noqa: F401
from qsmgym.envs import KickedTopSensor

ID = "qsm/KickedTopSensor-v0"


@pytest.fixture(scope="module")
def env():
    e = gym.make(ID, j=2, n_periods=5)
    e.reset(seed=0)
    return e


@pytest.mark.parametrize("action", [np.nan, np.inf, -1, 13, 2.5, np.array([1, 2]), "3"])
def test_bad_discrete_actions_raise(action):
    env = gym.make(ID, j=2, n_periods=5).unwrapped
    env.reset(seed=0)
    with pytest.raises((ValueError, TypeError), match="action"):
        env.step(action)


@pytest.mark.parametrize(
    "action", [np.array([np.nan]), np.array([np.inf]), np.array([1.5]), np.array([-1.01]), np.array([0.1, 0.2]), 0.5]
)
def test_bad_continuous_actions_raise_not_clipped(action):
    env = gym.make(ID, j=2, n_periods=5, action_type="continuous").unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(action)


def test_bad_vector_actions_raise():
    venv = gym.make_vec(ID, num_envs=2, j=2, n_periods=5)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="actions must have shape"):
        venv.step(np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="actions must lie in"):
        venv.step(np.array([0, 99]))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"j": 0}, "j must be a positive integer or half-integer, got j=0"),
        ({"j": -2}, "j=-2"),
        ({"j": 1.3}, "j=1.3"),
        ({"noise": "superradiant", "gamma": -0.1}, "gamma must be >= 0, got gamma=-0.1"),
        ({"noise": "amplitude"}, "noise must be one of .* got noise='amplitude'"),
        ({"noise": "none", "gamma": 0.1}, "gamma must be 0 with noise='none'"),
        ({"precession_axis": "z", "kick_axis": "z"}, "kick_axis must differ"),
        ({"kick_axis": "w"}, "kick_axis='w'"),
        ({"rate_convention": "other"}, "rate_convention='other'"),
        ({"n_periods": 0}, "n_periods=0"),
        ({"tau": float("nan")}, "tau must be finite"),
        ({"k_grid": [0.0, float("inf")]}, "k_grid must be"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
    ],
)
def test_bad_configuration_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KickedTopSensor(**kwargs)


def test_terminated_not_truncated_and_step_after_end(env):
    env = gym.make(ID, j=2, n_periods=3).unwrapped
    env.reset(seed=0)
    flags = [env.step(0)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (True, False)]
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(0)


def test_time_limit_truncates():
    from qsmgym.envs.shell import GymnasiumEnv

    # the functional core's own time limit ...
    env = GymnasiumEnv(task=KickedTopSensor(j=2, n_periods=10, max_episode_steps=4))
    env.reset(seed=0)
    flags = [env.step(0)[2:4] for _ in range(4)]
    assert flags[-1] == (False, True) and flags[0] == (False, False)
    # ... and Gymnasium's TimeLimit wrapper through gym.make agree
    env = gym.make(ID, j=2, n_periods=10, max_episode_steps=4)
    env.reset(seed=0)
    assert [env.step(0)[2:4] for _ in range(4)] == flags


def test_return_telescopes_to_final_qfi_over_sql():
    for reward in ("increment", "terminal"):
        env = gym.make(ID, j=3, n_periods=6, noise="superradiant", reward=reward).unwrapped
        env.reset(seed=0)
        total, info = 0.0, None
        for a in [6, 0, 2, 12, 3, 1]:
            _, r, _, _, info = env.step(a)
            total += r
        assert math.isclose(total, info["qfi"] / (2 * 3 * 6**2), rel_tol=1e-10)


def test_references_and_scores():
    task = KickedTopSensor(j=5, noise="superradiant")
    ref = task.references()
    T = 20.0
    assert ref["standard_quantum_limit"] == 2 * 5 * T**2
    assert ref["heisenberg_limit"] == 4 * 25 * T**2
    params = task.default_params()
    direct = task.qfi_trajectory(params, np.full(20, 3.0))[-1]
    assert math.isclose(ref["periodic_k3"], float(direct), rel_tol=1e-12)
    s = task.score(ref["best_baseline"], ref)
    assert math.isclose(s["baseline_normalised"], 0.0, abs_tol=1e-12)
    assert 0 < s["heisenberg_fraction"] < 1


def test_continuous_action_maps_to_kick_strength():
    task = KickedTopSensor(j=2, action_type="continuous", k_max=6.0)
    p = task.default_params()
    assert float(task.kick_strength(np.array([-1.0]), p)) == 0.0
    assert float(task.kick_strength(np.array([0.0]), p)) == 3.0


def test_observations_in_space_for_each_mode():
    for obs_mode in ("moments", "time", "density"):
        for noise in ("none", "superradiant"):
            env = gym.make(ID, j=2, n_periods=4, observation=obs_mode, noise=noise)
            obs, _ = env.reset(seed=0)
            assert env.observation_space.contains(obs)
            for a in (12, 3, 7, 0):
                obs, *_ = env.step(a)
                assert env.observation_space.contains(obs), (obs_mode, noise, obs)


def test_moments_observation_matches_direct_expectations():
    import qutip

    env = gym.make(ID, j=2, n_periods=4, theta0=0.7, phi0=0.4).unwrapped
    obs, _ = env.reset(seed=0)
    psi = qutip.Qobj(np.asarray(env.task._w @ np.asarray(env.state.psi)))
    jx, jy, jz = (qutip.jmat(2, a) for a in "xyz")
    expected = [qutip.expect(o, psi) / 2 for o in (jx, jy, jz)]
    expected += [qutip.expect(0.5 * (a * b + b * a), psi) / 4 for a, b in
                 [(jx, jx), (jy, jy), (jz, jz), (jx, jy), (jx, jz), (jy, jz)]]
    np.testing.assert_allclose(obs[1:], expected, atol=1e-6)  # float32 observation


def test_params_vmap_domain_randomisation():
    task = KickedTopSensor(j=2, n_periods=4, noise="superradiant")
    base = task.default_params()
    gammas = np.array([0.0, 0.01, 0.05])
    params = jax.vmap(lambda g: base.replace(gamma_sr=g))(gammas)
    q = jax.vmap(lambda p: task.qfi_trajectory(p, np.full(4, 2.0))[-1])(params)
    assert np.all(np.diff(np.asarray(q)) < 0)  # more damping, less information here


@pytest.mark.parametrize("noise", ["none", "phase"])
def test_precompute_is_one_program_equal_to_the_eager_body_and_the_task_pickles(noise):
    # precompute runs its body as one jitted program (gym.make 2.1 s -> 0.4 s): the same values as
    # the body op by op (bit for bit with jax 0.10.2; 1e-14 allows float64 round-off should XLA fuse
    # differently, entries are O(1)); and the jit lives at module level, so tasks still pickle
    import pickle

    task = KickedTopSensor(j=2, noise=noise)
    params = task.default_params()
    jitted, eager = task.precompute(params), task._precompute(params)
    for a, b in zip(jax.tree_util.tree_leaves(jitted), jax.tree_util.tree_leaves(eager)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-14)
    again = pickle.loads(pickle.dumps(task))
    np.testing.assert_array_equal(np.asarray(again.precompute(params).prop), np.asarray(jitted.prop))
    other = params.replace(omega0=params.omega0 * 1.1)  # params are traced, not baked in
    assert not np.array_equal(np.asarray(task.precompute(other).prop), np.asarray(jitted.prop))


def test_tasks_of_one_spin_and_noise_setting_share_the_precompute_program():
    # the program takes the task's arrays as arguments: a second task of the same j and noise
    # setting (other axes, kick norm, start, rates) compiles nothing and still gets its own
    # values (equal to its eager body); another j or noise setting is another program
    from qsmgym.envs import kicked_top as kt

    def run(task):
        params = task.default_params()
        before = kt._jit_precompute._cache_size()
        got = task.precompute(params)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(task._precompute(params))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-14)  # as above
        return kt._jit_precompute._cache_size() - before, got

    run(KickedTopSensor(j=3, noise="phase"))  # compiled here or by an earlier test
    added, a = run(KickedTopSensor(j=3, noise="phase", gamma=0.05, precession_axis="x", kick_axis="y",
                                   kick_norm="2j", theta0=0.4, omega_tau=1.0))
    assert added == 0
    added, b = run(KickedTopSensor(j=3, noise="superradiant"))  # mixed like "phase": same program
    assert added == 0 and not np.array_equal(np.asarray(a.prop), np.asarray(b.prop))
    assert run(KickedTopSensor(j=3.5, noise="phase"))[0] == 1  # j = 3.5 appears in no other test
