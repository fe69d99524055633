"""MemoryCutoff and RepeaterDelivery specifics: bad input, slot mechanics, masks, Monte Carlo
of the JAX core against closed forms and exact chains, the NumPy reference steppers, parity
through deliveries and autoreset, references."""

import math

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qsmgym.envs  # noqa: F401
from qsmgym.agents.repeater_baselines import evaluate_cutoffs_mc, fixed_cutoff_exact, solve_delivery
from qsmgym.envs import MemoryCutoff, RepeaterDelivery
from qsmgym.envs.memory_cutoff import MemoryCutoffState
from qsmgym.envs.repeater_delivery import RepeaterDeliveryState
from qsmgym.physics.repeater import secret_fraction, two_segment_rates

MC_ID, RD_ID = "qsm/MemoryCutoff-v0", "qsm/RepeaterDelivery-v0"


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"p": 0.0}, r"p must lie in \(0, 1\], got p=0.0"),
        ({"p": 1.5}, "p=1.5"),
        ({"p": float("nan")}, "p must be finite"),
        ({"N": 0}, "N must be an int in \\[1, 8\\], got N=0"),
        ({"N": 9}, "N=9"),
        ({"coherence_time": -1.0}, "coherence_time must be > 0"),
        ({"coherence_time": 0}, "coherence_time=0"),
        ({"w0": 1.2}, "w0=1.2"),
        ({"protocol": "e91"}, "protocol='e91'"),
        ({"memory_noise": "amplitude"}, "memory_noise='amplitude'"),
        ({"stored_qubits": 0}, "stored_qubits=0"),
        ({"horizon": 0}, "horizon must be an int >= 1, got horizon=0"),
    ],
)
def test_memory_cutoff_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MemoryCutoff(**kwargs)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"N": 2.0}, TypeError, "N must be an int, got N=2.0"),
        ({"p": "0.2"}, TypeError, "p must be a real number"),
        ({"coherence_time": "40"}, TypeError, "coherence_time"),
    ],
)
def test_memory_cutoff_bad_types(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MemoryCutoff(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_nodes": 2}, "n_nodes must be an int in \\[3, 8\\], got n_nodes=2"),
        ({"p": -0.1}, "p=-0.1"),
        ({"p_swap": 0.0}, "p_swap=0.0"),
        ({"t_cut": -1}, "t_cut must be an int >= 0, got t_cut=-1"),
        ({"max_slots": 0}, "max_slots=0"),
    ],
)
def test_repeater_delivery_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RepeaterDelivery(**kwargs)


@pytest.mark.parametrize("env_id,kwargs", [(MC_ID, {"N": 2}), (RD_ID, {"n_nodes": 4})])
@pytest.mark.parametrize(
    "action,exc",
    [(np.array([1, 2]), ValueError), (np.array([0.5, 0]), ValueError), (np.array([np.nan, 0]), ValueError),
     (np.array([-1, 0]), ValueError), (np.array([1, 0, 1]), ValueError), (1, ValueError), ("10", TypeError)],
)
def test_malformed_actions_raise(env_id, kwargs, action, exc):
    env = gym.make(env_id, **kwargs).unwrapped
    env.reset(seed=0)
    with pytest.raises(exc, match="action"):
        env.step(action)


def test_bad_vector_actions_raise():
    venv = gym.make_vec(MC_ID, num_envs=2, N=2)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="actions must have shape"):
        venv.step(np.zeros(2, dtype=int))
    with pytest.raises(ValueError, match="actions must be 0 or 1"):
        venv.step(np.array([[0, 1], [2, 0]]))


# ------------------------------------------------------------------ slot mechanics
def _mc_state(covered, age, coherence):
    return MemoryCutoffState(
        covered=jnp.asarray(covered, bool), age=jnp.asarray(age, jnp.int32),
        coherence=jnp.asarray(coherence, jnp.float64), deliveries=jnp.zeros((), jnp.int32),
        sum_lambda=jnp.zeros(()), sum_reward=jnp.zeros(()), time=jnp.zeros((), jnp.int32),
    )


def test_only_the_leftmost_flag_acts_and_merge_rules():
    task = MemoryCutoff(N=4, p=1.0)  # p = 1: every free segment generates, deterministic
    params = task.default_params()
    lam = float(params.lam)
    key = jax.random.PRNGKey(0)
    # links on segments 0-1 (age 3, Lambda a) and on segment 3 (age 5, Lambda b)
    a, b = 0.7, 0.9
    state = _mc_state([1, 1, 0, 1], [3, 3, 0, 5], [a, a, 1.0, b])
    np.testing.assert_array_equal(task.action_mask(state), [1, 0, 0, 1])
    # flag on segment 1 (not leftmost): ignored -> segment 2 generates, all merge, delivery
    _, s, r, term, info = task.step_env(key, state, jnp.array([0, 1, 0, 0]), params, None)
    Lam = a * lam * b * lam  # both links stored one more slot, merged: product
    assert float(info["delivered"]) == 1 and float(info["delivered_lambda"]) == pytest.approx(Lam, rel=1e-14)
    assert float(r) == pytest.approx(float(secret_fraction(0.99**4, Lam)), rel=1e-14)
    assert not bool(term) and not bool(s.covered.any())
    # flag on segment 0: the 0-1 link is discarded; segments 0, 1, 2 regenerate and merge
    # with the 3 link -> delivered with Lambda = b lam (fresh pieces have Lambda 1)
    _, s, r, _, info = task.step_env(key, state, jnp.array([1, 0, 0, 0]), params, None)
    assert float(info["delivered_lambda"]) == pytest.approx(b * lam, rel=1e-14)
    # merged age = max, Lambda = product: a gap of two segments, only the left one generates
    task2 = MemoryCutoff(N=4, p=0.5)
    st = _mc_state([1, 0, 0, 1], [2, 0, 0, 7], [0.5, 1, 1, 0.3])
    # find a key where segment 1 generates and segment 2 does not
    for seed in range(100):
        k = jax.random.PRNGKey(seed)
        u = jax.random.uniform(k, (4,))
        if u[1] < 0.5 <= u[2]:
            break
    _, s, r, _, info = task2.step_env(k, st, jnp.zeros(4, int), task2.default_params(), None)
    np.testing.assert_array_equal(s.covered, [1, 1, 0, 1])
    np.testing.assert_array_equal(s.age, [3, 3, 0, 8])  # max(2 + 1, 0) on the merged link
    lam2 = float(task2.default_params().lam)
    np.testing.assert_allclose(s.coherence, [0.5 * lam2, 0.5 * lam2, 1.0, 0.3 * lam2], rtol=1e-14)
    np.testing.assert_array_equal(info["action_mask"], [1, 0, 0, 1])
    assert float(r) == 0.0


def test_memory_cutoff_truncates_never_terminates():
    env = gym.make(MC_ID, N=2, horizon=7).unwrapped
    env.reset(seed=0)
    flags = [env.step(np.zeros(2, dtype=np.int8))[2:4] for _ in range(7)]
    assert flags == [(False, False)] * 6 + [(False, True)]
    assert env.task.horizon == 7


def test_delivery_terminates_and_mask_semantics():
    task = RepeaterDelivery(n_nodes=4, p=1.0, p_swap=1.0, t_cut=2)
    params = task.default_params()
    obs, s = task.reset(jax.random.PRNGKey(0), params)  # p = 1: all three segments present
    np.testing.assert_array_equal(task.action_mask(s), [1, 1])
    # swap only node 1: links (0,2), (2,3) remain, no delivery; node 2 can swap next
    obs, s, r, term, trunc, info = task.step(jax.random.PRNGKey(1), s, jnp.array([1, 0]), params)
    assert float(r) == -1 and not bool(term)
    assert int(s.links[0, 2]) == 1 and int(s.links[2, 3]) == 1
    np.testing.assert_array_equal(info["action_mask"], [0, 1])
    # a flag on a masked node (node 1) is ignored; node 2 swaps -> delivery
    obs, s, r, term, trunc, info = task.step(jax.random.PRNGKey(2), s, jnp.array([1, 1]), params)
    assert bool(term) and float(info["delivered"]) == 1
    # swap failure destroys the whole run (p_swap tiny): nodes 1 and 2 swap together
    task = RepeaterDelivery(n_nodes=4, p=1.0, p_swap=1e-12, t_cut=2)
    params = task.default_params()
    _, s = task.reset(jax.random.PRNGKey(0), params)
    _, s2, _, term, _, _ = task.step(jax.random.PRNGKey(3), s, jnp.array([1, 1]), params)
    assert not bool(term)
    # the run is gone, and all three segments regenerated at age 0
    np.testing.assert_array_equal(np.asarray(s2.links)[np.triu_indices(4, 1)], [0, -1, -1, 0, -1, 0])


def test_delivery_cutoff_age_convention():
    """A link can be swapped at ages 0..t_cut and is dropped after (spec: m = t_cut)."""
    task = RepeaterDelivery(n_nodes=3, p=1e-12, p_swap=1.0, t_cut=2)
    params = task.default_params()
    links = jnp.full((3, 3), -1, jnp.int32).at[0, 1].set(0)
    s = RepeaterDeliveryState(links=links, time=jnp.zeros((), jnp.int32))
    ages = []
    step = jax.jit(lambda k, s, a: task.step(k, s, a, params))
    for t in range(4):
        _, s, *_ = step(jax.random.PRNGKey(t), s, jnp.array([0]))
        ages.append(int(s.links[0, 1]))
    assert ages == [1, 2, -1, -1]


# ------------------------------------------------------ Monte Carlo vs exact results
def test_core_monte_carlo_matches_two_segment_closed_forms():
    """MC of the JAX core (N = 2) vs spec 4(b) closed forms: 4 standard errors (batch means,
    16 batches), i.e. a ~1e-4 false-alarm rate per comparison."""
    task = MemoryCutoff(N=2, p=0.2)
    cutoffs = [0, 3, math.inf]
    rows = evaluate_cutoffs_mc(task, cutoffs, n_envs=128, n_slots=4000, seed=7)
    lam = float(task.default_params().lam)
    for m, row in zip(cutoffs, rows):
        ref = two_segment_rates(0.2, m, lam, 0.99)
        for k in ("delivery_time", "mean_lambda", "skr_pp", "skr_avg"):
            # + 1e-12: m = 0 delivers Lambda = 1 exactly (zero spread), closed-form rounding
            assert abs(row[k] - ref[k]) < 4 * row[k + "_stderr"] + 1e-12, (m, k, row[k], ref[k])


def _run_reference_cutoff(stepper, m, slots):
    """Fixed cut-off m in the NumPy stepper; per-batch SKR_pp and delivery counts."""
    rewards = np.zeros(slots)
    for t in range(slots):
        action = [0] * stepper.N
        for first, _, age, _ in stepper.links:
            if age >= m:
                action[first] = 1
        rewards[t], _ = stepper.step(action)
    return rewards


def test_reference_stepper_matches_core():
    """The plain-NumPy MemoryCutoff agrees with the JAX core (N = 4, m = 6): SKR_pp and the
    delivery rate within 4 combined standard errors (20 batch means for the stepper)."""
    task = MemoryCutoff(N=4, horizon=10**9)
    stepper = task.reference_stepper(seed=5)
    r = _run_reference_cutoff(stepper, 6, 40_000)
    batches = r.reshape(20, -1)
    skr = r.mean()
    se_ref = batches.mean(1).std(ddof=1) / math.sqrt(20)
    core = evaluate_cutoffs_mc(task, [6], n_envs=64, n_slots=2000, seed=2)[0]
    assert abs(skr - core["skr_pp"]) < 4 * math.hypot(se_ref, core["skr_pp_stderr"])
    exact = fixed_cutoff_exact(4, 0.2, float(task.default_params().lam), 6, 0.99)
    assert abs(skr - exact["skr_pp"]) < 4 * se_ref
    rate = (r > 0).mean()
    se_rate = (batches > 0).mean(1).std(ddof=1) / math.sqrt(20)
    assert abs(rate - 1 / exact["delivery_time"]) < 4 * se_rate


def test_delivery_core_and_reference_stepper_match_exact_swap_asap():
    """Mean delivery time under swap ASAP (n = 5, p = 0.9, p_s = 0.5, t_cut = 2): the JAX core
    (vmapped, 2048 episodes) and the NumPy stepper (2000 episodes) each within 4 standard
    errors of the exact 9.3469."""
    task = RepeaterDelivery()
    params = task.default_params()
    exact = solve_delivery(5, 0.9, 0.5, 2)["swap_asap_delivery_time"]

    def episode(key):
        _, s = task.reset(jax.random.fold_in(key, 0), params)

        def body(carry, t):
            s, done, T = carry
            _, s2, _, term, _ = task.step_env(jax.random.fold_in(key, t + 1), s, task.swap_asap_action(s), params, None)
            T = jnp.where(done, T, T + 1)
            return (s2, done | term, T), None

        (_, done, T), _ = jax.lax.scan(body, (s, jnp.zeros((), bool), jnp.zeros((), jnp.int32)), jnp.arange(200))
        return T, done

    T, done = jax.jit(jax.vmap(episode))(jax.random.split(jax.random.PRNGKey(0), 2048))
    T = np.asarray(T, float)
    assert bool(np.all(done))  # P(T > 200) is ~1e-10 per episode here
    assert abs(T.mean() - exact) < 4 * T.std(ddof=1) / math.sqrt(T.size)
    env = task.reference_stepper(seed=1)
    times = []
    for _ in range(2000):
        env.reset()
        t, done_ = 0, False
        while not done_:
            _, done_ = env.step([int(m) for m in env.mask()])
            t += 1
        times.append(t)
    times = np.asarray(times, float)
    assert abs(times.mean() - exact) < 4 * times.std(ddof=1) / math.sqrt(times.size)


# ------------------------------------------------- parity through deliveries / autoreset
@pytest.mark.parametrize(
    "env_id,kwargs", [(MC_ID, {"N": 2, "p": 0.6, "horizon": 12}), (RD_ID, {"n_nodes": 4, "p": 0.7})]
)
def test_shell_vector_core_parity_through_episode_ends(env_id, kwargs):
    from qsmgym.envs import make_task

    num_envs, seed, steps = 3, 4, 14
    venv = gym.make_vec(env_id, num_envs=num_envs, **kwargs)
    venv.action_space.seed(1)
    actions = [venv.action_space.sample() for _ in range(steps)]
    vobs = [venv.reset(seed=seed)[0]]
    vrew, vdone = [], []
    for a in actions:
        o, r, term, trunc, _ = venv.step(a)
        vobs.append(o)
        vrew.append(r)
        vdone.append(term | trunc)
    task = make_task(env_id, **kwargs)
    params = task.default_params()
    core_step = jax.jit(lambda k, s, a: task.step(k, s, a, params))
    n_ends = 0
    for i in range(num_envs):
        env = gym.make(env_id, **kwargs).unwrapped
        sobs = [env.reset(seed=seed + i)[0]]
        key = jax.random.PRNGKey(seed + i)
        key, sub = jax.random.split(key)
        cobs, cstate = task.reset(sub, params)
        np.testing.assert_array_equal(sobs[0], vobs[0][i])
        np.testing.assert_array_equal(np.asarray(cobs), vobs[0][i])
        for t, a in enumerate(actions):
            o, r, term, trunc, _ = env.step(a[i])
            key, sub = jax.random.split(key)
            co, cstate, cr, cterm, ctrunc, _ = core_step(sub, cstate, jnp.asarray(a[i]))
            # identical keys; the arithmetic differs only by XLA fusion (a batched vs a single
            # program): float32 observations to 2 ulp at 1, rewards to 1e-12 relative
            np.testing.assert_allclose(o, vobs[t + 1][i], rtol=0, atol=2.5e-7)
            np.testing.assert_allclose(np.asarray(co), o, rtol=0, atol=2.5e-7)
            np.testing.assert_allclose([r, float(cr)], vrew[t][i], rtol=1e-12, atol=1e-15)
            assert (term or trunc) == vdone[t][i] == bool(cterm or ctrunc)
            if term or trunc:
                n_ends += 1
                break  # the vector env autoresets next step (checked in test_contract)
    assert n_ends >= 1  # at least one episode end was crossed


def test_jit_vmap_over_params():
    """Domain randomisation: vmap the core over generation probabilities."""
    task = MemoryCutoff(N=4)
    base = task.default_params()
    ps = jnp.array([0.1, 0.5, 1.0])
    params = base.replace(p=ps, lam=jnp.full(3, base.lam), w0=jnp.full(3, base.w0))

    def run(prm, key):
        _, s = task.reset(key, prm)

        def body(s, t):
            _, s, r, *_ = task.step(jax.random.fold_in(key, t), s, jnp.zeros(4, jnp.int32), prm)
            return s, r

        return jax.lax.scan(body, s, jnp.arange(50))[1]

    rewards = jax.jit(jax.vmap(run))(params, jax.random.split(jax.random.PRNGKey(0), 3))
    # p = 1: delivery every slot with Lambda = 1
    np.testing.assert_allclose(rewards[2], float(secret_fraction(0.99**4, 1.0)), rtol=1e-14)
    assert float(rewards[0].sum()) < float(rewards[1].sum())


# -------------------------------------------------------------------------- references
def test_memory_cutoff_references():
    ref = gym.make(MC_ID).unwrapped.reference
    H = ref["horizon"]
    assert ref["physical_limit"] > ref["best_fixed_cutoff_return"] > ref["naive_baseline"]
    assert ref["physical_limit"] == pytest.approx(H * ref["decoherence_free_skr"])
    assert ref["naive_baseline"] == pytest.approx(H * ref["no_cutoff_skr_pp"])
    ref2 = MemoryCutoff(N=2).references()
    lam = math.exp(-2 / 40)
    m = ref2["best_fixed_cutoff"]
    assert ref2["best_fixed_cutoff_skr_pp"] == pytest.approx(two_segment_rates(0.2, m, lam, 0.99)["skr_pp"])
    for d in (-1, 1):  # a local maximum over m
        assert two_segment_rates(0.2, m + d, lam, 0.99)["skr_pp"] <= ref2["best_fixed_cutoff_skr_pp"]


def test_repeater_delivery_references():
    ref = gym.make(RD_ID).unwrapped.reference
    assert ref["physical_limit"] == -ref["optimal_delivery_time"]
    assert ref["naive_baseline"] == -ref["swap_asap_delivery_time"]
    assert abs(ref["swap_asap_advantage_percent"] - 12.39) < 0.005  # spec row n=5, p_s=0.5, p=0.9
