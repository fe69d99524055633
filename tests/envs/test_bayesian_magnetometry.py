"""qsm/BayesianMagnetometry-v0: physics, rewards, budgets, determinism, references, bad input,
and (slow) the heuristics against a qsensoropt run at the same settings and against its
published MSE(20).

The contract (both checkers, shell/vector/core parity, jit/vmap) is in tests/envs/test_contract.py.
"""

import functools
import json

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qsmgym.envs  # noqa: F401  (registers the ids)
from qsmgym.agents.nv_heuristics import bootstrap_mean_ci, pgh_tau, rollout_tau_policy, sigma_inverse_tau
from qsmgym.envs.bayesian_magnetometry import (
    PRIOR_VARIANCE,
    QSENSOROPT_MSE20,
    BayesianMagnetometry,
    fisher_information,
    ramsey_probability,
)
from qsmgym.experiments.nv_heuristics_compare import (
    DEFAULT_BATCH,
    PUBLISHED_SETTINGS,
    RECORDED_SUMMARY,
    RECORDED_SUMMARY_PUBLISHED_SETTINGS,
)

ID = "qsm/BayesianMagnetometry-v0"


def rollout(task, seed, actions):
    params = task.default_params()
    key = jax.random.PRNGKey(seed)
    key, sub = jax.random.split(key)
    obs, state = task.reset(sub, params)
    out = []
    for a in actions:
        key, sub = jax.random.split(key)
        obs, state, r, term, trunc, info = task.step(sub, state, jnp.asarray(a), params)
        out.append((np.asarray(obs), float(r), bool(term), {k: float(v) for k, v in info.items()}))
    return state, out


def test_probability_and_fisher_information():
    omega, tau, inv_t2 = 0.63, 4.2, 0.1
    p = ramsey_probability(1.0, omega, tau, 0.0, inv_t2)
    # the spec's cos^2 form
    e = np.exp(-tau * inv_t2)
    np.testing.assert_allclose(float(p), e * np.cos(omega * tau / 2) ** 2 + (1 - e) / 2, rtol=1e-14)
    # F = sum_y (dp_y/domega)^2 / p_y, by automatic differentiation
    f = sum(jax.grad(lambda w, y=y: ramsey_probability(y, w, tau, 0.0, inv_t2))(omega) ** 2
            / ramsey_probability(y, omega, tau, 0.0, inv_t2) for y in (1.0, -1.0))
    np.testing.assert_allclose(float(fisher_information(omega, tau, inv_t2)), float(f), rtol=1e-12)
    np.testing.assert_allclose(float(fisher_information(omega, tau, 0.0)), tau**2, rtol=1e-12)


@pytest.mark.parametrize("kwargs", [{}, {"t2": 10.0, "n_particles": 128}])
def test_reward_telescopes_and_info_is_consistent(kwargs):
    task = BayesianMagnetometry(**kwargs)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (task.horizon, 1))
    state, out = rollout(task, 3, actions)
    rewards = np.array([r for _, r, _, _ in out])
    terms = [t for _, _, t, _ in out]
    assert terms == [False] * (task.horizon - 1) + [True]
    last = out[-1][3]
    # sum of (V_{t-1} - V_t)/V_0 from V_0 = 1/12
    np.testing.assert_allclose(rewards.sum(), 1 - last["posterior_variance"] / PRIOR_VARIANCE, rtol=1e-12)
    np.testing.assert_allclose(last["se"], (last["omega_hat"] - float(state.theta[0])) ** 2, rtol=1e-12)
    prefact = float(task.default_params().prefact)
    taus = np.array([i["tau"] for *_, i in out])
    np.testing.assert_allclose(taus, 1 + prefact * (actions[:, 0] + 1) / 2, rtol=1e-7)
    assert prefact == (30.0 if not kwargs else 10.0)  # ceil(2^sqrt(24)), capped at T2 = 10
    for obs, *_ in out:
        assert obs.dtype == np.float32 and obs.shape == (5,) and np.all(np.abs(obs) <= 1)


def test_se_rewards():
    for reward in ("se_terminal", "se_cumulative"):
        task = BayesianMagnetometry(n_measurements=5, n_particles=64, reward=reward)
        _, out = rollout(task, 1, np.zeros((5, 1)))
        ses = np.array([i["se"] for *_, i in out])
        rewards = np.array([r for _, r, _, _ in out])
        if reward == "se_terminal":
            np.testing.assert_allclose(rewards, np.r_[np.zeros(4), -ses[-1] / PRIOR_VARIANCE], rtol=1e-12)
        else:
            np.testing.assert_allclose(rewards, -ses / (5 * PRIOR_VARIANCE), rtol=1e-12)


def test_determinism_and_key_dependence():
    task = BayesianMagnetometry(n_measurements=6, n_particles=64)
    actions = np.linspace(-1, 1, 6)[:, None]
    _, a = rollout(task, 5, actions)
    _, b = rollout(task, 5, actions)
    _, c = rollout(task, 6, actions)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1] == y[1] and x[3] == y[3]
    assert not np.array_equal(a[-1][0], c[-1][0])
    env = gym.make(ID, n_measurements=6, n_particles=64)
    runs = []
    for _ in range(2):
        obs, _ = env.reset(seed=9)
        traj = [obs]
        for act in actions.astype(np.float32):
            traj.append(env.step(act)[0])
        runs.append(np.stack(traj))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_time_budget_rule():
    # T_max = 12: measurements whose tau would pass T_max are not made and end the episode.
    task = BayesianMagnetometry(budget="time", total_time=12.0, n_particles=64)
    params = task.default_params()
    assert task.horizon == 12 and float(params.prefact) == pytest.approx(0.6)
    _, state = task.reset(jax.random.PRNGKey(0), params)
    used, key = 0.0, jax.random.PRNGKey(1)
    for tau in (5.0, 5.0):
        key, sub = jax.random.split(key)
        _, state, r, term, info = task.measure(sub, state, tau, 0.0, params)
        used += tau
        assert not bool(term) and float(info["measured"]) == 1.0
    key, sub = jax.random.split(key)
    weights = np.asarray(state.pf.weights)
    _, state2, r, term, info = task.measure(sub, state, 3.0, 0.0, params)  # 13 > 12
    assert bool(term) and float(info["measured"]) == 0.0 and float(r) == 0.0
    assert float(state2.resources) == used
    np.testing.assert_array_equal(np.asarray(state2.pf.weights), weights)
    # leaving < 1 (the smallest tau of the action range) also ends it
    _, state3, _, term, info = task.measure(sub, state, 1.5, 0.0, params)  # 11.5 used
    assert bool(term) and float(info["measured"]) == 1.0


def test_unknown_t2_and_phase():
    task = BayesianMagnetometry(unknown_t2=True, control_phase=True, n_particles=128)
    params = task.default_params()
    assert task.observation_space(params).shape == (10,) and task.action_space(params).shape == (2,)
    assert float(params.prefact) == pytest.approx(1 / 0.09)  # capped at the largest T2
    obs, state = task.reset(jax.random.PRNGKey(0), params)
    assert 0.09 <= float(state.theta[1]) <= 0.11
    assert np.all(np.asarray(state.pf.particles[:, 1]) >= 0.09)
    _, out = rollout(task, 2, np.array([[0.5, 0.3]] * 4))
    for obs, *_ in out:
        assert obs.shape == (10,) and np.all(np.abs(obs) <= 1)


def test_references():
    ref = gym.make(ID).unwrapped.reference
    assert ref["physical_limit"] == 1.0
    # tau = 1 every time (action -1) is far worse than the adaptive heuristics
    assert ref["naive_baseline"] < ref["return_pgh"] < 1 and ref["naive_baseline"] < ref["return_sigma_inverse"] < 1
    assert ref["mse_sigma_inverse"] < ref["mse_constant"]
    assert ref["qsensoropt_mse20_sigma_inverse"] == 3.57e-3 and ref["qsensoropt_mse20_pgh"] == 6.51e-3
    small = BayesianMagnetometry(n_measurements=5, n_particles=64, reward="se_terminal").references(n_episodes=64)
    assert small["physical_limit"] == 0.0 and "qsensoropt_mse20_pgh" not in small



def test_several_policies_from_one_program_equal_each_alone():
    # references() rolls its three heuristics out of one compiled program (lax.switch on the
    # policy index); each result must be what rolling that policy out alone gives, bit for bit
    from qsmgym.agents.nv_heuristics import constant_tau, rollout_tau_policies

    task = BayesianMagnetometry(n_measurements=5, n_particles=64)
    params = task.default_params()
    policies = [pgh_tau, constant_tau(2.0)]  # pgh uses its key; the constant differs from it
    keys = [jax.random.PRNGKey(3), jax.random.PRNGKey(4)]
    together = rollout_tau_policies(task, params, policies, keys, 32, chunk=16)
    for policy, key, res in zip(policies, keys, together):
        alone = rollout_tau_policy(task, params, policy, key, 32, chunk=16)
        for name in ("se", "tau", "reward", "active"):
            np.testing.assert_array_equal(np.asarray(res[name]), np.asarray(alone[name]))
    assert not np.array_equal(np.asarray(together[0]["tau"]), np.asarray(together[1]["tau"]))  # the index picks
    with pytest.raises(ValueError, match="policies and keys"):
        rollout_tau_policies(task, params, policies, keys[:1], 32)


def test_rollout_compiles_once_per_task_policy_and_params_values():
    # the jitted rollout is kept per (task, policies, params values, sizes): a new key reuses
    # it (no retrace), new params values get their own program (a stale one would repeat r1)
    traces = []

    def counted(key, pf, inv_t2=None):
        traces.append(1)
        return sigma_inverse_tau(key, pf, inv_t2)

    task = BayesianMagnetometry(n_measurements=4, n_particles=32)
    params = task.default_params()
    r1 = rollout_tau_policy(task, params, counted, jax.random.PRNGKey(0), 16)
    n = len(traces)
    assert n >= 1
    r2 = rollout_tau_policy(task, params, counted, jax.random.PRNGKey(1), 16)
    assert len(traces) == n and not np.array_equal(np.asarray(r1["se"]), np.asarray(r2["se"]))
    r3 = rollout_tau_policy(task, params.replace(inv_t2=0.1), counted, jax.random.PRNGKey(0), 16)
    assert len(traces) > n and not np.array_equal(np.asarray(r1["se"]), np.asarray(r3["se"]))
    again = rollout_tau_policy(task, params, counted, jax.random.PRNGKey(0), 16)
    np.testing.assert_array_equal(np.asarray(again["se"]), np.asarray(r1["se"]))

@pytest.mark.parametrize(
    "kwargs,exc,name",
    [
        ({"budget": "energy"}, ValueError, "budget"),
        ({"reward": "mse"}, ValueError, "reward"),
        ({"jitter": "none"}, ValueError, "jitter"),
        ({"n_measurements": 0}, ValueError, "n_measurements"),
        ({"n_particles": 2.5}, ValueError, "n_particles"),
        ({"t2": -1.0}, ValueError, "t2"),
        ({"t2": 5.0, "unknown_t2": True}, ValueError, "t2"),
        ({"unknown_t2": 1}, TypeError, "unknown_t2"),
        ({"inv_t2_range": (0.2, 0.1)}, ValueError, "inv_t2_range"),
        ({"inv_t2_range": "ab"}, TypeError, "inv_t2_range"),
        ({"budget": "time", "total_time": 0.5}, ValueError, "total_time"),
        ({"total_time": float("nan")}, ValueError, "total_time"),
        ({"prefact": -3.0}, ValueError, "prefact"),
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"beta": 1.5}, ValueError, "beta"),
        ({"resample_threshold": "x"}, TypeError, "resample_threshold"),
        ({"resample_fraction": 0.0}, ValueError, "resample_fraction"),
        ({"resample_fraction": 1.5}, ValueError, "resample_fraction"),
        ({"resample_fraction": "x"}, TypeError, "resample_fraction"),
    ],
)
def test_bad_configuration(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        BayesianMagnetometry(**kwargs)


def test_resample_fraction_runs_only_in_batched_rollouts():
    # resample_fraction couples the episodes of a batch (qsensoropt 1.0.0's full-batch
    # resampling): one environment's step has no batch and says so; a batched rollout's batch is
    # its chunk, so n_episodes must be a multiple of it (never silently another batch size)
    env = gym.make(ID, n_measurements=3, n_particles=32, resample_fraction=0.98)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="resample_fraction"):
        env.step(np.array([0.0], np.float32))
    task = BayesianMagnetometry(n_measurements=3, n_particles=32, resample_fraction=0.98)
    with pytest.raises(ValueError, match="multiple of chunk"):
        rollout_tau_policy(task, task.default_params(), pgh_tau, jax.random.PRNGKey(0), 12, chunk=8)
    out = rollout_tau_policy(task, task.default_params(), pgh_tau, jax.random.PRNGKey(0), 16, chunk=8)
    assert out["se"].shape == (16, 3) and np.all(np.isfinite(np.asarray(out["se"])))


@pytest.mark.parametrize("action", [np.array([1.5], np.float32), np.array([np.nan], np.float32),
                                    np.array([0.0, 0.0], np.float32)])
def test_bad_actions(action):
    env = gym.make(ID, n_measurements=3, n_particles=32)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(action)



# Two evaluation settings (docs/results/nv-dc-24, experiments/nv_heuristics_compare.py):
# - "default": the spec's section 7 as written, qsensoropt 1.1.0's defaults: each episode's filter
#   resamples on its own N_eff (batches of 1024 change nothing);
# - "published": how qsensoropt's published curves were made (its examples/nv_center_dc.py with
#   1.0.0, which passes resample_fraction=0.98; 4096 batches of 2048 episodes): the 2048 filters
#   of a batch resample together once 98 % of them need it.
SETTINGS = {"default": ({}, DEFAULT_BATCH, RECORDED_SUMMARY),
            "published": ({"resample_fraction": PUBLISHED_SETTINGS["resample_fraction"]},
                          PUBLISHED_SETTINGS["batch"], RECORDED_SUMMARY_PUBLISHED_SETTINGS)}
HEURISTICS = [("sigma_inverse", sigma_inverse_tau), ("pgh", pgh_tau)]


@functools.lru_cache(maxsize=None)
def _our_heuristic_se(policy, settings="default"):
    # 65,536 episodes (4 x the spec's evaluation size, a 95 % CI about +-4 % wide at n = 20)
    # vmapped in one jit, 480 particles, T2 = inf, N = 24, unclipped tau through the core: squared
    # errors (episodes, 24). Until session 28 these were 16,384 episodes (CI about +-8 %); at the
    # published settings the first 16,384 (the same episodes) gave PGH 7.09e-3, 2.4 run-to-run sd
    # above the 16-run mean 6.51e-3, with the published value just below that CI: the test was
    # made stricter, not looser (README, NV-DC-24).
    kwargs, batch, _ = SETTINGS[settings]
    task = BayesianMagnetometry(**kwargs)
    res = rollout_tau_policy(task, task.default_params(), policy, jax.random.PRNGKey(20240), 65536, chunk=batch)
    return np.asarray(res["se"], np.float64)


@pytest.mark.slow
@pytest.mark.parametrize("settings", sorted(SETTINGS))
@pytest.mark.parametrize("policy_name,policy", HEURISTICS)
def test_heuristics_agree_with_qsensoropt_run_here(policy_name, policy, settings):
    # The spec's criterion 1: the untrained heuristics agree with a qsensoropt run at the same
    # settings. qsensoropt's side is read from the recorded runs of
    # experiments/nv_heuristics_compare.py (R runs x 16,384 episodes of
    # experiments/qsensoropt_nv_dc.py --mode pgh|sigma, qsensoropt 1.1.0, float32, with
    # --resample-fraction 0.98 --eval-batch 2048 for "published"); its standard error is the
    # run-to-run sd / sqrt(R). Ours: 65,536 fresh episodes, sd / sqrt(65,536).
    # Criterion: the two-sample z-test at 95 % at n = 20 and n = 24, plus the spec's +-20 %.
    kwargs, batch, summary = SETTINGS[settings]
    runs = json.loads(summary.read_text())["records"]["qsensoropt"][policy_name]
    mode = {"sigma_inverse": "sigma", "pgh": "pgh"}[policy_name]  # qsensoropt_nv_dc.py's --mode
    assert len(runs) >= 4 and all(r["n_eval"] == 16384 and r["mode"] == mode for r in runs)
    assert all(r.get("resample_fraction") == kwargs.get("resample_fraction") for r in runs)
    se = _our_heuristic_se(policy, settings)
    for n in (20, 24):
        x = se[:, n - 1]
        theirs = np.array([r["mse_n"][n - 1] for r in runs])
        se_ours, se_theirs = x.std(ddof=1) / np.sqrt(x.size), theirs.std(ddof=1) / np.sqrt(theirs.size)
        _, lo, hi = bootstrap_mean_ci(x, n_boot=1000)
        print(f"{settings} {policy_name} MSE({n}): ours {x.mean():.3e} [{lo:.3e}, {hi:.3e}], qsensoropt here "
              f"{theirs.mean():.3e} +- {se_theirs:.1e} ({theirs.size} runs)")
        assert abs(x.mean() / theirs.mean() - 1) <= 0.2
        assert abs(x.mean() - theirs.mean()) <= 1.96 * np.hypot(se_ours, se_theirs)


def _published_in_ci(policy, policy_name, settings):
    se = _our_heuristic_se(policy, settings)[:, 19]
    mean, target = se.mean(), QSENSOROPT_MSE20[policy_name]
    _, lo, hi = bootstrap_mean_ci(se, n_boot=2000)
    print(f"{settings} {policy_name}: MSE(20) = {mean:.3e}, 95% bootstrap CI [{lo:.3e}, {hi:.3e}], median "
          f"{np.median(se):.2e}; published {target:.3e} (ours/published {mean / target:.3f})")
    return mean, target, lo <= target <= hi


@pytest.mark.slow
@pytest.mark.parametrize("policy_name,policy", HEURISTICS)
def test_heuristics_reproduce_qsensoropt_published_mse20(policy_name, policy):
    # Issue 7: the heuristics reproduce the spec's MSE(20) (3.57e-3, 6.51e-3) within bootstrap
    # CIs. The published values are means over 4096 x 2048 episodes (examples/nv_center_dc.py's
    # performance_evaluation): their own error is ~1/11 of ours and is neglected. Criterion: the
    # published value lies in the 95 % bootstrap CI of our 65,536-episode mean at the settings
    # that made it ("published" above), and within the spec's +-20 %.
    mean, target, inside = _published_in_ci(policy, policy_name, "published")
    assert inside
    assert abs(mean / target - 1) <= 0.2


@pytest.mark.slow
def test_per_episode_resampling_misses_the_published_pgh_value():
    # Why the settings matter: at the spec's section-7 settings as written (qsensoropt 1.1.0's
    # per-episode resampling), PGH's MSE(20) is ~12 % above the published 6.51e-3, in ours and in
    # qsensoropt 1.1.0 alike (docs/results/nv-dc-24/heuristics), and the published value falls
    # outside our CI. If this starts to pass, the two settings no longer differ: re-examine.
    mean, target, inside = _published_in_ci(pgh_tau, "pgh", "default")
    assert not inside and mean > target


def test_numpy_reference_stepper_matches_the_core_statistically():
    # Same model, independent random numbers: the mean return of a fixed-tau policy agrees
    # within 4 standard errors (400 episodes each; returns are bounded in [0, 1]).
    import jax

    from qsmgym.envs.bayesian_magnetometry import BayesianMagnetometry

    task = BayesianMagnetometry(n_measurements=8, n_particles=128)
    params = task.default_params()
    action = np.array([-0.8])
    ref = task.reference_stepper(params, seed=1)
    ref_returns = []
    for _ in range(400):
        ref.reset()
        total, done = 0.0, False
        while not done:
            r, done = ref.step(action)
            total += r
        ref_returns.append(total)

    def episode(key):
        k0, k1 = jax.random.split(key)
        _, s = task.reset(k0, params)

        def body(s, k):
            _, s, r, *_ = task.step(k, s, jax.numpy.asarray(action), params)
            return s, r

        _, rs = jax.lax.scan(body, s, jax.random.split(k1, 8))
        return rs.sum()

    core = np.asarray(jax.jit(jax.vmap(episode))(jax.random.split(jax.random.PRNGKey(5), 400)))
    ref_returns = np.asarray(ref_returns)
    se = np.sqrt(core.var(ddof=1) / core.size + ref_returns.var(ddof=1) / ref_returns.size)
    assert abs(core.mean() - ref_returns.mean()) < 4 * se
