"""Registry-wide contract: every registered id passes both checkers, is reachable from a fresh
process, jits and vmaps, and gives identical trajectories through the shell, the vector env and
the functional core for the same seed."""

import subprocess
import sys

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import qsmgym.envs
from qsmgym.envs import TASKS, make_task

# KickedTopSensor first: the parity and autoreset tests below index variants() from it.
IDS = sorted(TASKS, key=lambda i: (i != "qsm/KickedTopSensor-v0", i))
# Small variants keep the suite fast; the defaults are covered by the first test.
SMALL = {"qsm/KickedTopSensor-v0": [{}, {"j": 2, "noise": "superradiant", "n_periods": 6},
                                    {"j": 1.5, "noise": "phase", "action_type": "continuous", "observation": "density"}],
         "qsm/MemoryCutoff-v0": [{"N": 2, "horizon": 50},
                                 {"N": 4, "p": 0.5, "protocol": "six_state", "memory_noise": "depolarising"}],
         # no delivery (termination) within the parity test's 5 steps at its seeds (checked);
         # tests/envs/test_memory_cutoff.py checks parity through deliveries and autoreset
         "qsm/RepeaterDelivery-v0": [{"n_nodes": 5, "p": 0.3, "p_swap": 0.5, "t_cut": 2},
                                     {"n_nodes": 6, "p": 0.5, "p_swap": 0.5, "t_cut": 1}],
         "qsm/TimeDependentEstimation-v0": [{"n_bins": 6, "noise": "dephasing", "control_mode": "ramp", "spread": 0.1},
                                            {"n_bins": 5, "param": "B", "noise": "emission", "control_mode": "increment", "reward": "ratio"}],
         "qsm/PhotonShaping-v0": [{"n_bins": 12, "width": 1.0, "omega_max": 30.0},
                                  {"n_bins": 6, "complex_control": True, "delta": 0.5, "g_std": 0.1, "delta_std": 0.2}],
         "qsm/BayesianMagnetometry-v0": [{"n_measurements": 6, "n_particles": 64, "t2": 10.0, "reward": "se_cumulative"},
                                         {"budget": "time", "total_time": 12.0, "n_particles": 64, "unknown_t2": True,
                                          "control_phase": True, "jitter": "documented"}],
         "qsm/PhotonStorage-v0": [{"n_bins": 12, "width": 1.0, "omega_max": 30.0, "reward": "increment", "g_std": 0.1}],
         }


def variants():
    return [(i, kw) for i in IDS for kw in SMALL.get(i, [{}])]


@pytest.mark.parametrize("env_id,kwargs", variants())
def test_gymnasium_and_sb3_check_env(env_id, kwargs):
    env = gym.make(env_id, **kwargs)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)


@pytest.mark.parametrize("env_id", IDS)
def test_make_from_module_string_in_fresh_process(env_id):
    code = (
        "import gymnasium as gym\n"
        f"env = gym.make('qsmgym.envs:{env_id}')\n"
        "obs, _ = env.reset(seed=0)\n"
        "print(type(env.unwrapped).__name__, obs.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "GymnasiumEnv" in out.stdout


def _core_rollout(task, seed, actions):
    params = task.default_params()
    # jitted as the shell and the vector env are (op-by-op dispatch of a whole step took ~5 s
    # per call to compile on the time-dependent task)
    reset = jax.jit(lambda k: task.reset(k, params))
    step = jax.jit(lambda k, s, a: task.step(k, s, a, params))
    key = jax.random.PRNGKey(seed)
    key, sub = jax.random.split(key)
    obs, state = reset(sub)
    out = [np.asarray(obs)]
    rewards = []
    for a in actions:
        key, sub = jax.random.split(key)
        obs, state, r, term, trunc, _ = step(sub, state, jnp.asarray(a))
        out.append(np.asarray(obs))
        rewards.append(float(r))
    return np.stack(out), np.array(rewards)


@pytest.mark.parametrize("env_id,kwargs", variants()[1:])
def test_same_seed_same_trajectory_shell_vector_core(env_id, kwargs):
    num_envs, seed = 3, 11
    venv = gym.make_vec(env_id, num_envs=num_envs, **kwargs)
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    venv.action_space.seed(0)
    horizon = 5
    actions = [venv.action_space.sample() for _ in range(horizon)]
    vobs = [venv.reset(seed=seed)[0]]
    vrew = []
    for a in actions:
        o, r, *_ = venv.step(a)
        vobs.append(o)
        vrew.append(r)
    vobs, vrew = np.stack(vobs), np.stack(vrew)
    task = make_task(env_id, **kwargs)
    for i in range(num_envs):
        env = gym.make(env_id, **kwargs)
        sobs = [env.reset(seed=seed + i)[0]]
        srew = []
        for a in actions:
            o, r, *_ = env.step(a[i])
            sobs.append(o)
            srew.append(r)
        cobs, crew = _core_rollout(task, seed + i, [a[i] for a in actions])
        # Same keys, same actions, same arithmetic up to summation order (a batched GEMM vs
        # one env's GEMV): float32 observations agree to 2 ulp at 1, rewards to 1e-12 relative.
        np.testing.assert_allclose(np.stack(sobs), vobs[:, i], rtol=0, atol=2.5e-7)
        np.testing.assert_allclose(cobs.astype(np.float32), vobs[:, i], rtol=0, atol=2.5e-7)
        np.testing.assert_allclose(np.array(srew), vrew[:, i], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(crew, vrew[:, i], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("env_id,kwargs", variants()[1:2])
def test_vector_env_next_step_autoreset(env_id, kwargs):
    venv = gym.make_vec(env_id, num_envs=2, **kwargs)
    obs0, _ = venv.reset(seed=0)
    horizon = make_task(env_id, **kwargs).n_periods
    zeros = np.zeros(2, dtype=np.int64)
    for t in range(horizon):
        _, _, term, trunc, _ = venv.step(zeros)
        assert term.all() == (t == horizon - 1)
    obs, rew, term, trunc, info = venv.step(zeros)  # the autoreset step
    np.testing.assert_array_equal(obs, obs0)
    assert not term.any() and not trunc.any() and np.all(rew == 0)
    assert not info["_qfi"].any()


@pytest.mark.parametrize("env_id,kwargs", variants())
def test_jit_and_vmap_reset_step(env_id, kwargs):
    task = make_task(env_id, **kwargs)
    params = task.default_params()
    space = task.action_space(params)
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    obs, states = jax.jit(jax.vmap(lambda k: task.reset(k, params)))(keys)
    assert obs.shape == (4,) + task.observation_space(params).shape
    space.seed(1)
    actions = jnp.stack([jnp.asarray(space.sample()) for _ in range(4)])
    step = jax.jit(jax.vmap(lambda k, s, a: task.step(k, s, a, params)))
    obs2, states2, r, term, trunc, info = step(keys, states, actions)
    assert r.shape == term.shape == trunc.shape == (4,)
    assert np.all(np.isfinite(np.asarray(r)))
    # autoreset variant under jit
    o3, *_ = jax.jit(jax.vmap(lambda k, s, a: task.step_autoreset(k, s, a, params)))(keys, states2, actions)
    assert o3.shape == obs2.shape


def _avals(tree):
    return jax.tree_util.tree_map(lambda x: (x.shape, str(x.dtype), bool(x.weak_type)), tree)


@pytest.mark.parametrize("env_id,kwargs", variants())
def test_step_keeps_the_state_types_of_reset(env_id, kwargs):
    """The state (and obs) step returns has the shapes, dtypes and weak types reset gave, so a
    jitted step is traced and compiled once, not again on the second step (BayesianMagnetometry's
    weakly typed initial variance cost every new env a second 1.3 s compile)."""
    task = make_task(env_id, **kwargs)
    params = task.default_params()
    key = jax.random.PRNGKey(0)
    obs, state = jax.eval_shape(lambda k: task.reset(k, params), key)
    action = jnp.asarray(task.action_space(params).sample())
    obs2, state2, *_ = jax.eval_shape(lambda k, s, a: task.step(k, s, a, params), key, state, action)
    assert _avals(state2) == _avals(state)
    assert _avals(obs2) == _avals(obs)


@pytest.mark.parametrize("env_id", IDS)
def test_references_declared(env_id):
    env = gym.make(env_id)
    ref = env.unwrapped.reference
    # Registry-wide names, in units of the episode return, so scores normalise to [0, 1].
    for key in ("physical_limit", "naive_baseline"):
        assert np.isfinite(ref[key])
    assert ref["naive_baseline"] < ref["physical_limit"]



def test_reference_is_computed_on_first_access_and_kept(monkeypatch):
    """gym.make and the vector env do not compute the task's references (a Monte Carlo
    estimate for some tasks: BayesianMagnetometry's took 8 s of its 8.3 s gym.make); the first
    read of ``reference`` does, once per env, and gives the task's own values."""
    from qsmgym.envs.memory_cutoff import MemoryCutoff
    from qsmgym.envs.vector import JaxVectorEnv

    calls = []
    original = MemoryCutoff.references
    monkeypatch.setattr(MemoryCutoff, "references",
                        lambda self, *a, **kw: calls.append(self) or original(self, *a, **kw))
    env = gym.make("qsm/MemoryCutoff-v0", N=2, horizon=20).unwrapped
    vec = JaxVectorEnv("qsm/MemoryCutoff-v0", 2, N=2, horizon=20)
    env.reset(seed=0)
    vec.reset(seed=0)
    assert calls == []
    ref = env.reference
    assert env.reference is ref and len(calls) == 1
    assert vec.reference == ref and vec.reference is vec.reference and len(calls) == 2
    assert ref == original(env.task, env.params)


def test_sb3_ppo_learn_runs(tmp_path, monkeypatch):
    from stable_baselines3 import PPO

    # SB3's default logger makes an SB3-<time> folder in the system temp dir at every learn()
    # (one per suite run, left behind); SB3_LOGDIR sends it to this test's folder instead
    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path / "sb3"))
    env = gym.make("qsm/KickedTopSensor-v0", j=2, n_periods=8)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=128)
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    env.step(action)


def test_shells_with_the_same_id_and_kwargs_share_one_compiled_step():
    kwargs = {"n_measurements": 6, "n_particles": 64}
    a = gym.make("qsm/BayesianMagnetometry-v0", **kwargs).unwrapped
    b = gym.make("qsm/BayesianMagnetometry-v0", **kwargs).unwrapped
    c = gym.make("qsm/BayesianMagnetometry-v0", n_measurements=7, n_particles=64).unwrapped
    assert a.task is b.task and a._jit_step is b._jit_step
    assert c.task is not a.task and c.task.n_measurements == 7
    trajectories = []
    for env in (a, b):
        obs, _ = env.reset(seed=3)
        steps = [env.step(np.array([0.2], np.float32))[:2] for _ in range(3)]
        trajectories.append((obs, steps))
    # one trace and one executable for both shells; their own key chains and states
    assert a._jit_step._cache_size() == 1
    np.testing.assert_array_equal(trajectories[0][0], trajectories[1][0])
    for (o1, r1), (o2, r2) in zip(trajectories[0][1], trajectories[1][1]):
        np.testing.assert_array_equal(o1, o2)
        assert r1 == r2
    # a directly passed task is not shared
    from qsmgym.envs.shell import GymnasiumEnv

    d = GymnasiumEnv(task=a.task)
    assert d._jit_step is not a._jit_step
