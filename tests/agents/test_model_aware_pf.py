"""agents/model_aware_pf.py: model-aware RL through the differentiable particle filter.

Checked here:
- the policy inputs equal the env's observation (same formula, two implementations);
- the static sequence starts at the spec's tau_k = 30 k/24 + 1;
- pathwise gradients of the training loss against central finite differences at fixed
  outcomes and resampling draws (resampling off and on, static and NN policies);
- the estimator's EXPECTATION (score term for outcomes + Ścibior–Wood for resampling) against
  the finite-difference gradient of the expected loss, within Monte-Carlo error; the
  pathwise-only estimator must fail the same check (the test has power);
- the log-loss identity, the training loop against a plain Python Adam loop (keep-the-best
  block), preconditioning, jit/vmap over seeds, bad input;
- slow: a short training run beats the best constant tau clearly.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qsmgym.physics.precision import ensure_x64

ensure_x64()

from qsmgym.agents import model_aware_pf as mapf  # noqa: E402
from qsmgym.agents.particle_filter import ResampleConfig  # noqa: E402
from qsmgym.envs.bayesian_magnetometry import BayesianMagnetometry  # noqa: E402


def small_task(**kwargs):
    base = dict(n_measurements=6, n_particles=64)
    base.update(kwargs)
    return BayesianMagnetometry(**base)


def test_features_equal_the_env_observation():
    task = BayesianMagnetometry(n_particles=200)
    params = task.default_params()
    _, state = task.reset(jax.random.PRNGKey(0), params)
    for i, tau in enumerate([2.0, 5.0, 9.0, 17.0]):
        obs, state, *_ = task.step(jax.random.PRNGKey(i + 1), state, jnp.array([2 * (tau - 1) / 30 - 1]), params)
        feats = mapf.features(task, params, state.pf, state.time, state.resources)
        # obs is float32: agreement to float32 rounding (~6e-8 relative on values <= 1)
        np.testing.assert_allclose(np.asarray(feats), np.asarray(obs), atol=1e-6)


def test_static_sequence_starts_at_the_spec_taus():
    task = BayesianMagnetometry(n_particles=16)
    config = mapf.ModelAwarePFConfig(policy="static")
    init, _ = mapf.make_loss(config, task, task.default_params())
    out = mapf.evaluate(config, task, task.default_params(), init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1), 2)
    np.testing.assert_allclose(out["tau"][0], 30 * np.arange(24) / 24 + 1, rtol=1e-6)  # float32


def test_evaluate_compiles_once_per_settings(monkeypatch):
    # the program is kept per (config, task, params values, sizes): another network or key reuses
    # it (no retrace) and gives its own result; new params values get their own program
    traces = []
    batch = mapf._Setup.batch

    def counted(self, policy_params, keys):
        traces.append(1)
        return batch(self, policy_params, keys)

    monkeypatch.setattr(mapf._Setup, "batch", counted)
    task = BayesianMagnetometry(n_measurements=3, n_particles=16)
    params = task.default_params()
    config = mapf.ModelAwarePFConfig(policy="static")
    init, _ = mapf.make_loss(config, task, params)
    p0, p1 = init(jax.random.PRNGKey(0)), jax.tree_util.tree_map(lambda a: a * 0.5, init(jax.random.PRNGKey(0)))
    r0 = mapf.evaluate(config, task, params, p0, jax.random.PRNGKey(1), 8)
    n = len(traces)
    assert n >= 1
    r1 = mapf.evaluate(config, task, params, p1, jax.random.PRNGKey(1), 8)
    r2 = mapf.evaluate(config, task, params, p0, jax.random.PRNGKey(2), 8)
    assert len(traces) == n
    assert not np.array_equal(r0["tau"], r1["tau"]) and not np.array_equal(r0["se"], r2["se"])
    r3 = mapf.evaluate(config, task, params.replace(inv_t2=0.1), p0, jax.random.PRNGKey(1), 8)
    assert len(traces) > n and not np.array_equal(r0["se"], r3["se"])
    np.testing.assert_array_equal(mapf.evaluate(config, task, params, p0, jax.random.PRNGKey(1), 8)["se"], r0["se"])


def _fixed_draw_loss(task, policy, **kwargs):
    config = mapf.ModelAwarePFConfig(policy=policy, batch=4, score_function=False, dtype="float64",
                                     hidden=8, layers=2, **kwargs)
    init, loss = mapf.make_loss(config, task, task.default_params())
    return init, jax.jit(lambda p, k: loss(p, k)[0])



@pytest.mark.parametrize("kwargs", [{}, {"unknown_t2": True}, {"budget": "time", "total_time": 40.0}],
                         ids=["known_t2", "unknown_t2", "time_budget"])
def test_batch_draws_the_same_noise_as_each_episode(kwargs):
    # _Setup.batch draws every step's random numbers before the loop, time-major; each
    # episode drawing its own from its key must give the same trajectories bit for bit (the
    # JAX filter; the native one is compared with these episodes in test_pf_native.py)
    task = small_task(resample_threshold=0.9, **kwargs)
    config = mapf.ModelAwarePFConfig(policy="nn", batch=8, dtype="float32", hidden=8, layers=2, backend="jax")
    setup = mapf._Setup(config, task, task.default_params())
    p = setup.init_policy(jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(4), 8)
    batched = jax.jit(setup.batch)(p, keys)
    own = jax.jit(jax.vmap(setup.episode, in_axes=(None, 0), axis_name=mapf._EPISODES))(p, keys)
    for name in ("se", "score", "tau", "active"):
        np.testing.assert_array_equal(np.asarray(batched[name]), np.asarray(own[name]))
    assert np.ptp(np.asarray(batched["se"])) > 0  # the episodes differ (the keys matter)


@pytest.mark.parametrize("policy", ["nn", "static"])
def test_remat_gives_the_stored_forward_values_and_gradient(policy):
    # remat recomputes each measurement's forward pass in the backward pass: the loss and the
    # per-step MSE are the same bit for bit; the gradient is the same up to float64 summation
    # order (rtol 1e-12: a few hundred adds of O(1) terms, each rounded at 1.1e-16)
    task = small_task(resample_threshold=0.9)
    grads = []
    for remat in (True, False):
        config = mapf.ModelAwarePFConfig(policy=policy, batch=8, dtype="float64", hidden=8, layers=2, remat=remat,
                                         backend="jax")
        init, loss = mapf.make_loss(config, task, task.default_params())
        p = init(jax.random.PRNGKey(0))
        (value, aux), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(p, jax.random.PRNGKey(2))
        grads.append((float(value), np.asarray(aux["mse"]), jax.tree_util.tree_leaves(g)))
    (v1, m1, g1), (v0, m0, g0) = grads
    assert v1 == v0
    np.testing.assert_array_equal(m1, m0)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)
    assert max(float(jnp.max(jnp.abs(a))) for a in g1) > 1e-3  # a gradient that is not trivially zero

@pytest.mark.parametrize("backend", ["jax", "native"])
@pytest.mark.parametrize("policy,resample", [("static", False), ("static", True), ("nn", True)],
                         ids=["static-no_resampling", "static-resampling", "nn-resampling"])
def test_pathwise_gradient_matches_finite_differences(policy, resample, backend):
    # With the outcomes and resampling draws fixed (same key) and no score term, the loss is a
    # smooth function of the policy parameters as long as no outcome or drawn index flips
    # under the 1e-6 perturbation (probability ~1e-6 per draw). The Ścibior–Wood factor is
    # turned off: it adds the score of the draw, which finite differences at a fixed draw do
    # not see (its expectation is checked below). The NN's inputs (the filter's moments)
    # depend on the parameters too: stop_gradient_input=False makes the gradient the total
    # derivative (with the default True it is not, by design). Central differences, float64,
    # h = 1e-6: truncation ~h^2 and round-off ~1e-16/h relative: rtol 1e-5.
    task = small_task(resample=resample, resample_threshold=0.9)
    task.resample_config = ResampleConfig(enabled=resample, threshold=0.9, scibior_wood=False)
    init, loss = _fixed_draw_loss(task, policy, loss="log", cumulative=True, stop_gradient_input=False,
                                  backend=backend)
    p = init(jax.random.PRNGKey(0))
    if policy == "static":
        p = {"v": jnp.array([0.05, 0.1, 0.2, 0.3, 0.45, 0.6])}
    key = jax.random.PRNGKey(3)
    grad = jax.grad(loss)(p, key)
    direction = jax.tree_util.tree_map(lambda x: jax.random.normal(jax.random.PRNGKey(x.size), x.shape), p)
    h = 1e-6
    shift = lambda s: jax.tree_util.tree_map(lambda x, d: x + s * h * d, p, direction)  # noqa: E731
    fd = (float(loss(shift(1), key)) - float(loss(shift(-1), key))) / (2 * h)
    analytic = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree_util.tree_leaves(grad),
                                                         jax.tree_util.tree_leaves(direction)))
    assert abs(fd) > 1e-6
    np.testing.assert_allclose(analytic, fd, rtol=1e-5)


def test_log_loss_is_the_gradient_of_log_mean_se():
    task = small_task(resample=False)
    kw = dict(policy="static", batch=16, score_function=False, cumulative=False, dtype="float64")
    params = task.default_params()
    init, log_loss = mapf.make_loss(mapf.ModelAwarePFConfig(loss="log", **kw), task, params)
    _, plain = mapf.make_loss(mapf.ModelAwarePFConfig(loss="plain", **kw), task, params)
    p, key = init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1)
    value = float(plain(p, key)[0])
    np.testing.assert_allclose(float(log_loss(p, key)[0]), math.log(value), rtol=1e-12)
    g_log = jax.grad(lambda q: log_loss(q, key)[0])(p)["v"]
    g_plain = jax.grad(lambda q: plain(q, key)[0])(p)["v"]
    np.testing.assert_allclose(np.asarray(g_log), np.asarray(g_plain) / value, rtol=1e-10)


@pytest.mark.parametrize("backend", ["jax", "native"])
def test_estimator_expectation_matches_the_gradient_of_the_expected_loss(backend):
    # E over (omega, initial particles, outcomes, resampling draws, jitter) of the estimator
    # (pathwise + outcome score term + Ścibior–Wood factors, resampling at every step) must
    # equal d/dv E[SE_N]. The reference is a common-random-numbers central difference of the
    # expected loss (h = 0.01 in v, i.e. 0.1 in tau; its O(h^2) bias is far below the MC
    # error). Both means carry Monte-Carlo error; the test allows 4.5 combined standard errors
    # per component (3 components: a false failure has probability < 3e-5 under normality).
    # Power: the pathwise-only estimator (no score term) misses the outcome dependence; it
    # was off by 11-15 standard errors at 65,536 episodes in a trial, and must be off by
    # > 4.5 here (16,384 episodes: about half that).
    task = BayesianMagnetometry(n_measurements=3, n_particles=32, resample_threshold=1.0, prefact=10.0)
    params = task.default_params()

    def per_episode(score):
        config = mapf.ModelAwarePFConfig(policy="static", batch=1, loss="plain", cumulative=False,
                                         score_function=score, dtype="float64", backend=backend)
        return mapf.make_loss(config, task, params)[1]

    loss_sf, loss_pw = per_episode(True), per_episode(False)
    p = {"v": jnp.array([0.2, 0.35, 0.5])}  # tau = 3, 4.5, 6
    n, h = 16384, 0.01
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    grads = jax.jit(jax.vmap(lambda k: jnp.stack([
        jax.grad(lambda q: loss_sf(q, k)[0])(p)["v"], jax.grad(lambda q: loss_pw(q, k)[0])(p)["v"]])))(keys)
    steps = h * jnp.concatenate([jnp.eye(3), -jnp.eye(3)])
    values = jax.jit(jax.vmap(lambda k: jax.vmap(lambda s: loss_pw({"v": p["v"] + s}, k)[0])(steps)))(keys)
    fd = np.asarray(values[:, :3] - values[:, 3:]) / (2 * h)  # (n, 3)
    grads = np.asarray(grads)
    for estimator, ok in ((grads[:, 0], True), (grads[:, 1], False)):
        z = (estimator.mean(0) - fd.mean(0)) / np.sqrt(estimator.var(0) / n + fd.var(0) / n)
        if ok:
            assert np.all(np.abs(z) < 4.5), z
        else:
            assert np.max(np.abs(z)) > 4.5, z
    assert np.all(np.abs(fd.mean(0)) > 4 * fd.std(0) / np.sqrt(n))  # a nonzero gradient is tested


def test_training_loop_equals_a_python_adam_loop_and_keeps_the_best_block():
    task = small_task(n_particles=32)
    params = task.default_params()
    config = mapf.ModelAwarePFConfig(policy="static", iterations=6, checkpoint_every=2, batch=8)
    hyper = mapf.default_hyper("static")
    result = jax.jit(mapf.make_train(config, task, params))(jax.random.PRNGKey(4), hyper)
    # reference: the same keys, optax Adam with lr 0.1/sqrt(i+1), one step at a time
    init, loss = mapf.make_loss(config, task, params)
    k_init, k_train = jax.random.split(jax.random.PRNGKey(4))
    p = init(jax.random.split(k_init)[0])
    opt = optax.adam(lambda i: 0.1 / jnp.sqrt(i + 1.0))
    state = opt.init(p)
    losses, ends = [], []
    value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    for k in jax.random.split(k_train, 6):
        (_, aux), g = value_and_grad(p, k)
        updates, state = opt.update(g, state, p)
        p = optax.apply_updates(p, updates)
        losses.append(float(aux["loss"]))
        ends.append(p)
    # float32 training: the jitted scan and the eager loop fuse differently (rounding ~1e-6)
    np.testing.assert_allclose(np.asarray(result.history), losses, rtol=1e-4)
    blocks = np.asarray(losses).reshape(3, 2).mean(1)
    best = int(np.argmin(blocks))
    assert int(result.best_block) == best
    np.testing.assert_allclose(np.asarray(result.policy_params["v"]), np.asarray(ends[2 * best + 1]["v"]), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(result.final_params["v"]), np.asarray(ends[-1]["v"]), rtol=1e-4)


def test_training_from_a_given_start_skips_initialisation_and_keeps_the_episode_keys():
    # start = the params the key would have built: the same result as without start; another
    # start: a different result, trained on the same episodes (its first loss is that start's)
    task = small_task(n_particles=32)
    params = task.default_params()
    config = mapf.ModelAwarePFConfig(policy="static", iterations=2, checkpoint_every=2, batch=8)
    hyper = mapf.default_hyper("static")
    train = jax.jit(mapf.make_train(config, task, params))
    init, loss = mapf.make_loss(config, task, params)
    key = jax.random.PRNGKey(4)
    k_init, k_train = jax.random.split(key)
    own = init(jax.random.split(k_init)[0])
    plain, same = train(key, hyper), train(key, hyper, own)
    np.testing.assert_array_equal(np.asarray(plain.history), np.asarray(same.history))
    other = jax.tree_util.tree_map(lambda a: a * 0.5, own)
    moved = train(key, hyper, other)
    first = float(jax.jit(loss)(other, jax.random.split(k_train, 2)[0])[1]["loss"])
    assert float(moved.history[0]) == pytest.approx(first, rel=1e-5)  # float32, jit vs eager rounding
    assert not np.array_equal(np.asarray(moved.history), np.asarray(plain.history))
    with pytest.raises(ValueError, match="start must have the policy's structure"):
        train(key, hyper, {"v": jnp.zeros((3, 1))})


def test_warmup_schedule_and_training_with_it():
    # the schedule: (i + 1)/W * lr0/sqrt(i + 1) during the warm-up, InverseSqrtDecay after it
    sched = mapf.learning_rate_schedule(1e-3, 4, jnp.float64)
    expect = [1e-3 * min(1.0, (i + 1) / 4) / np.sqrt(i + 1) for i in range(8)]
    np.testing.assert_allclose([float(sched(i)) for i in range(8)], expect, rtol=1e-12)
    np.testing.assert_allclose([float(mapf.learning_rate_schedule(1e-3, 0, jnp.float64)(i)) for i in range(3)],
                               [1e-3 / np.sqrt(i + 1) for i in range(3)], rtol=1e-12)
    # the jitted training uses it: equal to an eager optax loop with that schedule
    task = small_task(n_particles=32)
    params = task.default_params()
    config = mapf.ModelAwarePFConfig(policy="static", iterations=4, checkpoint_every=4, batch=8, warmup_steps=3)
    hyper = mapf.default_hyper("static")
    result = jax.jit(mapf.make_train(config, task, params))(jax.random.PRNGKey(4), hyper)
    init, loss = mapf.make_loss(config, task, params)
    k_init, k_train = jax.random.split(jax.random.PRNGKey(4))
    p = init(jax.random.split(k_init)[0])
    opt = optax.adam(lambda i: 0.1 * jnp.minimum(1.0, (i + 1.0) / 3) / jnp.sqrt(i + 1.0))
    state = opt.init(p)
    value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    for k in jax.random.split(k_train, 4):
        _, g = value_and_grad(p, k)
        updates, state = opt.update(g, state, p)
        p = optax.apply_updates(p, updates)
    np.testing.assert_allclose(np.asarray(result.final_params["v"]), np.asarray(p["v"]), rtol=1e-4)
    # and it changes the run: the first step is a third of the plain one
    plain = jax.jit(mapf.make_train(dataclasses.replace(config, warmup_steps=0), task, params))(
        jax.random.PRNGKey(4), hyper)
    assert not np.allclose(np.asarray(plain.final_params["v"]), np.asarray(result.final_params["v"]))


def test_preconditioning_fits_the_resource_ramp():
    task = small_task(n_particles=16)
    config = mapf.ModelAwarePFConfig(policy="nn", precondition_samples=4096, precondition_batch=256,
                                     precondition_epochs=6)
    hyper = mapf.default_hyper("nn")
    init, _ = mapf.make_loss(config, task, task.default_params())
    fit = jax.jit(lambda k: mapf.precondition(config, task, task.default_params(), k, hyper))
    net, loss = fit(jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(9), (2048, 5), minval=-1, maxval=1)  # fresh inputs
    target = (x[:, -1] + 1) / 2
    mse = lambda p: float(jnp.mean((jax.vmap(lambda xi: mapf.TauNetwork(64, 5, 1, mapf.tanh_gains(5, 64, 1)).apply(p, xi))(x)[:, 0] - target) ** 2))  # noqa: E731
    # the target has variance 1/12 = 0.083: an unfitted network is worse than that; 96 Adam
    # steps at 1e-3 reached ~3e-3 in a trial; 0.02 leaves room for other seeds/BLAS orders
    assert mse(init(jax.random.PRNGKey(0))) > 0.05
    assert mse(net) < 0.02 and float(loss) < 0.02


def test_train_vmaps_over_seeds():
    task = small_task(n_particles=16)
    config = mapf.ModelAwarePFConfig(policy="static", iterations=2, checkpoint_every=1, batch=4)
    out = jax.jit(jax.vmap(mapf.make_train(config, task, task.default_params()), in_axes=(0, None)))(
        jax.random.split(jax.random.PRNGKey(0), 2), mapf.default_hyper("static"))
    assert out.history.shape == (2, 2) and out.policy_params["v"].shape == (2, 6)
    assert np.all(np.isfinite(np.asarray(out.history)))
    assert not np.allclose(np.asarray(out.history[0]), np.asarray(out.history[1]))  # seeds differ


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(policy="lstm"), ValueError, "policy"),
    (dict(loss="mse"), ValueError, "loss"),
    (dict(baseline="ema"), ValueError, "baseline"),
    (dict(dtype="float16"), ValueError, "dtype"),
    (dict(batch=0), ValueError, "batch"),
    (dict(iterations=10, checkpoint_every=4), ValueError, "checkpoint_every"),
    (dict(n_steps=0), ValueError, "n_steps"),
    (dict(warmup_steps=-1), ValueError, "warmup_steps"),
    (dict(cumulative="yes"), TypeError, "cumulative"),
    (dict(remat=1), TypeError, "remat"),
    (dict(backend="cuda"), ValueError, "backend"),
])
def test_bad_config(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        mapf.ModelAwarePFConfig(**kwargs)


def test_bad_task_and_arguments():
    task = small_task()
    with pytest.raises(TypeError, match="task"):
        mapf.make_train(mapf.ModelAwarePFConfig(), object(), None)
    with pytest.raises(ValueError, match="n_steps"):
        mapf.make_train(mapf.ModelAwarePFConfig(n_steps=7), task, task.default_params())
    with pytest.raises(ValueError, match="policy"):
        mapf.default_hyper("ppo")
    with pytest.raises(ValueError, match="n_episodes"):
        mapf.evaluate(mapf.ModelAwarePFConfig(), task, task.default_params(), None, jax.random.PRNGKey(0), 0)


@pytest.fixture(scope="module")
def magnetometry_references():
    from qsmgym.agents.nv_heuristics import constant_tau, rollout_tau_policy, sigma_inverse_tau

    task = BayesianMagnetometry()
    params = task.default_params()

    def mse20(policy, seed):
        return float(np.mean(np.asarray(rollout_tau_policy(task, params, policy, jax.random.PRNGKey(seed), 4096)["se"])[:, 19]))

    constant = {tau: mse20(constant_tau(tau), 11) for tau in (3.0, 6.0, 12.0)}
    sigma_inv = mse20(sigma_inverse_tau, 12)
    print(f"\nconstant tau MSE(20): {constant}; sigma^-1 MSE(20): {sigma_inv:.3e} (qsensoropt: 3.57e-3)")
    return min(constant.values()), sigma_inv


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["static", "nn"])
def test_short_training_beats_the_best_constant_tau(policy, magnetometry_references):
    best_constant, sigma_inv = magnetometry_references
    task = BayesianMagnetometry()
    params = task.default_params()
    config = mapf.ModelAwarePFConfig(policy=policy, iterations=128, batch=128, checkpoint_every=64)
    hyper = mapf.default_hyper(policy)
    if policy == "nn":
        # the paper-grade rate (spec section 7): at 1e-3 Adam's first steps (every weight moves
        # by ~lr) knocked the preconditioned ramp far off in trials (with an earlier activation)
        hyper["learning_rate"] = jnp.asarray(1e-4)
    result = jax.jit(mapf.make_train(config, task, params))(jax.random.PRNGKey(0), hyper)
    se = mapf.evaluate(config, task, params, result.policy_params, jax.random.PRNGKey(13), 4096)["se"]
    mse20, mse24 = float(se[:, 19].mean()), float(se[:, 23].mean())
    print(f"{policy}: MSE(20) {mse20:.3e}, MSE(24) {mse24:.3e}, ratio to sigma^-1 at n=20 {mse20 / sigma_inv:.2f}, "
          f"block losses {np.asarray(result.block_losses)}")
    # heavy-tailed SE: 4096-episode means move by ~30 % between runs (spec section 2);
    # "clearly better" = under half the best constant tau (tau = 3: 4.8e-3). One run printed
    # static 1.99e-3 and nn 1.83e-3 (keys fixed, so reruns on one platform repeat it).
    assert mse20 < 0.5 * best_constant


def test_tanh_gains_preserve_the_activation_spread():
    # g tanh(z), z ~ N(0, s^2): E[(g tanh z)^2] must be sigma_input^2 (0.33^2) for each layer's
    # s. Monte Carlo with 10^6 samples: relative SE of a mean of tanh^2 ~ 1.4e-3; allow 1 %.
    sigma = 0.33
    gains = mapf.tanh_gains(5, 64, 1, sigma)
    spreads = (math.sqrt(10 / 69) * sigma, sigma, math.sqrt(128 / 65) * sigma)
    z = np.random.default_rng(0).standard_normal(1_000_000)
    for g, s in zip(gains, spreads):
        np.testing.assert_allclose(np.mean((g * np.tanh(s * z)) ** 2), sigma**2, rtol=0.01)
