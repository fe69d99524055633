"""agents/pf_native.py: the native CPU kernel of one NV-DC particle-filter step, against the JAX
reference (agents/particle_filter.py: bayes_update + maybe_resample, sw_order="qsensoropt").

Checked here:
- the kernel's jitter normals against ``physics.prng.normal`` (the same Threefry bits; erfinv
  within a few float32 ulps, float64 ~1e-12 relative: XLA's own float64 erf_inv error);
- one step, forward and vector-Jacobian product, against the JAX functions in float64 (same
  random numbers: the resampling indices come out the same, so the values agree to rounding)
  and in float32 (a draw within an ulp of a cumulative weight may pick the neighbour);
- the model-aware loss and its gradient, whole episodes, native against JAX in float64, and
  the native batch against the JAX path's own episodes;
- bad input and the fallbacks (QSM_NATIVE=0, tasks the kernel does not cover).

Finite differences of the loss through the native filter: test_model_aware_pf.py
(test_pathwise_gradient_matches_finite_differences, both backends).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qsmgym.physics.precision import ensure_x64

ensure_x64()

from qsmgym.agents import model_aware_pf as mapf  # noqa: E402
from qsmgym.agents import pf_native  # noqa: E402
from qsmgym.agents.particle_filter import ParticleFilter, ResampleConfig, bayes_update, maybe_resample, mean_cov  # noqa: E402
from qsmgym.envs.bayesian_magnetometry import BayesianMagnetometry  # noqa: E402
from qsmgym.physics import prng, trig  # noqa: E402

OK, WHY = pf_native.available()
pytestmark = pytest.mark.skipif(not OK, reason=f"native kernel unavailable: {WHY}")


def _inputs(dtype, b=48, n=480, seed=3, concentration=1.0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 8)
    return dict(
        x=jax.random.uniform(ks[0], (b, n), dtype),
        w=jax.random.dirichlet(ks[1], jnp.full(n, concentration), (b,)).astype(dtype),
        key=jax.random.split(ks[2], b),
        tau=jax.random.uniform(ks[3], (b,), dtype, 1.0, 40.0),
        phase=jax.random.uniform(ks[4], (b,), dtype, -1.0, 1.0),
        decay=jnp.exp(-jax.random.uniform(ks[5], (b,), dtype, 0.0, 0.5)),
        y=jnp.where(jax.random.uniform(ks[6], (b,)) < 0.5, 1.0, -1.0).astype(dtype),
        allowed=jax.random.uniform(ks[7], (b,)) < 0.85,
    )


def _reference(config, low=0.0, high=1.0):
    """The JAX step of one filter (the env's Ramsey likelihood with the decay given), vmapped."""

    def one(x, w, key, tau, phase, decay, y, allowed):
        dt = x.dtype
        pf = ParticleFilter(x[:, None], w)
        lik = lambda y, th, c: 0.5 * (1.0 + y * decay * trig.cos(th[:, 0] * c[0] + c[1]))  # noqa: E731
        new = bayes_update(pf, y, (tau, phase), lik)
        new, _ = maybe_resample(key, new, jnp.full(1, low, dt), jnp.full(1, high, dt), config)
        out = jax.tree_util.tree_map(lambda a, b: jnp.where(allowed, a, b), new, pf)
        mu, cov = mean_cov(out)
        return out.particles[:, 0], out.weights, mu[0], cov[0, 0]

    return jax.vmap(one)


def _native(config, low=0.0, high=1.0):
    return lambda *a: pf_native.pf_step(*a, config=config, low=low, high=high)


ARGS = ("x", "w", "key", "tau", "phase", "decay", "y", "allowed")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_normals_are_jax_normals(dtype):
    keys = jax.random.split(jax.random.PRNGKey(0), 512)
    ours = np.asarray(pf_native.normals(keys, 480, dtype))
    ref = np.asarray(jax.vmap(lambda k: prng.normal(k, (480,), dtype))(keys))
    assert ours.shape == ref.shape == (512, 480)
    if dtype == jnp.float32:
        # Giles' erfinv as XLA's, with our log: measured <= 3 ulp over 960k draws
        ulps = np.abs(ours - ref) / np.spacing(np.abs(ref).astype(np.float32))
        assert ulps.max() <= 4, ulps.max()
    else:
        # Newton-refined erfinv against XLA's float64 erf_inv: measured 1.6e-12 relative
        np.testing.assert_allclose(ours, ref, rtol=1e-11, atol=1e-14)
    assert abs(ref.mean()) < 0.01 and abs(ref.std() - 1) < 0.01  # 245k normals: SE 0.002


@pytest.mark.parametrize("threshold", [0.5, 1.0])
@pytest.mark.parametrize("jitter,sw", [("coded", True), ("documented", False)])
def test_step_equals_the_jax_filter_in_float64(threshold, jitter, sw):
    config = ResampleConfig(threshold=threshold, jitter=jitter, scibior_wood=sw)
    args = _inputs(jnp.float64, concentration=2.0)  # N_eff after the update: 0.43-0.57 N
    ref = jax.jit(_reference(config))(*(args[k] for k in ARGS))
    ours = jax.jit(_native(config))(*(args[k] for k in ARGS))
    # same draws, summation order only: N = 480 terms of size <= 1 at eps 1.1e-16 -> ~1e-14
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-13)
    flags = jax.jit(lambda *a: pf_native._forward(pf_native._attrs(config, 0.0, 1.0), *a))(
        args["x"], args["w"], *pf_native.split_keys(args["key"]), args["tau"], args["phase"], args["decay"],
        args["y"], args["allowed"])[5]
    flags = np.asarray(flags)
    resampled = (flags & 1) == 1
    assert resampled.any() and (~resampled & ((flags & 8) == 8)).any() == (threshold < 1)  # both kinds of step
    assert ((flags & 8) == 0).any()  # and some not allowed (copied)


@pytest.mark.parametrize("threshold", [0.5, 1.0])
def test_vjp_equals_the_jax_filter_in_float64(threshold):
    config = ResampleConfig(threshold=threshold)
    args = _inputs(jnp.float64, seed=5)
    cts = [jax.random.normal(jax.random.PRNGKey(i), s, jnp.float64)
           for i, s in enumerate([(48, 480), (48, 480), (48,), (48,)])]

    def project(step):
        def f(x, w, tau, phase, decay):
            out = step(x, w, args["key"], tau, phase, decay, args["y"], args["allowed"])
            return sum(jnp.sum(o * c) for o, c in zip(out, cts))

        return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3, 4)))

    diff = ("x", "w", "tau", "phase", "decay")
    ref = project(_reference(config))(*(args[k] for k in diff))
    ours = project(_native(config))(*(args[k] for k in diff))
    for name, a, b in zip(diff, ours, ref):
        b = np.asarray(b)
        assert np.abs(b).max() > 1e-3, name  # a gradient that is not trivially zero
        # sums of up to 480 products, rounded at 1.1e-16: 1e-12 of the largest entry
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=1e-12 * np.abs(b).max(), err_msg=name)


def _loop_steps(config, steps=3, b=12, n=96):
    """``steps`` measurements on the same filters: per-step inputs (T, B) and the initial x, w."""
    per = [_inputs(jnp.float64, b=b, n=n, seed=10 + t, concentration=2.0) for t in range(steps)]
    stack = {k: jnp.stack([a[k] for a in per]) for k in ("key", "tau", "phase", "decay", "y")}
    stack["allowed"] = jnp.tile(jnp.arange(b) % 4 != 0, (steps, 1))  # a quarter of the filters skip each step
    return per[0]["x"], per[0]["w"], stack


def test_the_loop_form_equals_the_step_in_float64():
    # loop_forward / loop_backward (in-place stacks, model_aware_pf's training loop) against
    # pf_step_split and its custom_vjp, step by step: the same per-filter code, so the values
    # agree exactly and the cotangents to summation order
    config = ResampleConfig(threshold=0.5)  # N_eff after an update: 0.43-0.57 N, some resample
    x, w, st = _loop_steps(config)
    key_idx, key_jit = pf_native.split_keys(st["key"])
    kw = dict(config=config, low=0.0, high=1.0)

    @jax.jit
    def loop(x, w):
        stacks = pf_native.loop_init(x, w, 3)
        moments = []
        for t in range(3):
            stacks, mo, vo, flags = pf_native.loop_forward(stacks, jnp.int32(t), key_idx[t], key_jit[t],
                                                           *(st[k][t] for k in ("tau", "phase", "decay", "y",
                                                                                 "allowed")), **kw)
            moments.append((mo, vo, flags))
        return stacks, moments

    @jax.jit
    def steps(x, w):
        out = []
        for t in range(3):
            x, w, mo, vo = pf_native.pf_step_split(x, w, key_idx[t], key_jit[t],
                                                   *(st[k][t] for k in ("tau", "phase", "decay", "y", "allowed")),
                                                   **kw)
            out.append((x, w, mo, vo))
        return out

    (xs, ws, idx), moments = loop(x, w)
    ref = steps(x, w)
    np.testing.assert_array_equal(np.asarray(xs[0]), np.asarray(x))  # slot 0: the initial filters
    for t in range(3):
        np.testing.assert_array_equal(np.asarray(xs[t + 1]), np.asarray(ref[t][0]))
        np.testing.assert_array_equal(np.asarray(ws[t + 1]), np.asarray(ref[t][1]))
        np.testing.assert_array_equal(np.asarray(moments[t][0]), np.asarray(ref[t][2]))
        np.testing.assert_array_equal(np.asarray(moments[t][1]), np.asarray(ref[t][3]))
    flags = np.asarray(moments[1][2])
    assert ((flags & 1) == 1).any() and ((flags & 9) == 8).any() and ((flags & 8) == 0).any()  # all kinds

    # the backward step t = 1, cotangents of its outputs -> of its inputs, against jax.vjp
    t = 1
    cts = [jax.random.normal(jax.random.PRNGKey(i), s, jnp.float64) for i, s in
           enumerate([(12, 96), (12, 96), (12,), (12,)])]
    args = [st[k][t] for k in ("tau", "phase", "decay", "y", "allowed")]
    _, vjp = jax.vjp(lambda x, w, tau, phase, decay: pf_native.pf_step_split(
        x, w, key_idx[t], key_jit[t], tau, phase, decay, args[3], args[4], **kw), ref[0][0], ref[0][1], *args[:3])
    want = vjp(tuple(cts))
    got = jax.jit(lambda: pf_native.loop_backward(
        (xs, ws, idx), jnp.int32(t), key_jit[t], *args[:4], moments[t][0], moments[t][2], *cts, **kw))()
    for name, a, b in zip(("x", "w", "tau", "phase", "decay"), got, want):
        b = np.asarray(b)
        assert np.abs(b).max() > 1e-3, name
        # one step's sums over 96 particles at eps 1.1e-16: 1e-12 of the largest entry
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=1e-12 * np.abs(b).max(), err_msg=name)


def test_the_loop_form_rejects_a_step_outside_the_stacks():
    x, w, st = _loop_steps(ResampleConfig(), steps=2, b=4, n=16)
    key_idx, key_jit = pf_native.split_keys(st["key"])
    stacks = pf_native.loop_init(x, w, 2)
    args = [st[k][0] for k in ("tau", "phase", "decay", "y", "allowed")]
    with pytest.raises(Exception, match="t is outside"):
        jax.block_until_ready(pf_native.loop_forward(stacks, jnp.int32(2), key_idx[0], key_jit[0], *args))


def test_an_outlier_outcome_keeps_the_weights():
    # every particle with weight has likelihood 0 (y decay cos = -1 there): the update is ignored
    n = 64
    x = jnp.zeros((1, n))
    w = jnp.full((1, n), 1.0 / n)
    args = dict(x=x, w=w, key=jax.random.split(jax.random.PRNGKey(0), 1), tau=jnp.ones(1), phase=jnp.zeros(1),
                decay=jnp.ones(1), y=-jnp.ones(1), allowed=jnp.ones(1, bool))
    config = ResampleConfig()
    ours = _native(config)(*(args[k] for k in ARGS))
    ref = _reference(config)(*(args[k] for k in ARGS))
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-15)
    np.testing.assert_array_equal(np.asarray(ours[1]), np.asarray(w))


def test_step_in_float32_agrees_but_for_rare_neighbouring_draws():
    config = ResampleConfig(threshold=1.0)  # every allowed filter resamples
    args = _inputs(jnp.float32, b=256, seed=7)
    ref = jax.jit(_reference(config))(*(args[k] for k in ARGS))
    ours = jax.jit(_native(config))(*(args[k] for k in ARGS))
    x_ref, x_ours = np.asarray(ref[0]), np.asarray(ours[0])
    # the cumulative weights are summed in another order (rounding ~1e-7): a uniform that falls
    # between the two roundings picks the neighbouring particle; measured: 3 of 30,720 draws
    moved = np.abs(x_ours - x_ref) > 1e-5
    assert moved.mean() < 1e-3, moved.mean()
    np.testing.assert_allclose(x_ours[~moved], x_ref[~moved], atol=2e-6)
    rows = ~moved.any(axis=1)
    for a, b in zip(ours[1:], ref[1:]):  # weights and moments of the filters without a moved draw
        np.testing.assert_allclose(np.asarray(a)[rows], np.asarray(b)[rows], rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("stop_gradient_input,stop_gradient_filter", [(True, False), (False, False), (True, True)],
                         ids=["policy_grad_after_loop", "through_inputs", "after_loop_greedy"])
@pytest.mark.parametrize("policy,control_phase", [("nn", False), ("nn", True), ("static", False)])
def test_loss_and_gradient_equal_the_jax_backend_in_float64(policy, control_phase, stop_gradient_input,
                                                             stop_gradient_filter):
    # stop_gradient_input=True: the native path runs the loop with the in-place stacks, the
    # filter's backward loop of its own and the policy's gradient after it
    # (model_aware_pf._controls_after_loop, mlp_backward for the NN); False: the per-step
    # custom_vjp in the loop, differentiated by JAX. stop_gradient_filter: no gradient between
    # the steps' filters (the backward loop drops the carried cotangent)
    task = BayesianMagnetometry(n_measurements=8, n_particles=96, resample_threshold=0.7, control_phase=control_phase)
    params = task.default_params()
    out = {}
    for backend in ("jax", "native"):
        config = mapf.ModelAwarePFConfig(policy=policy, batch=16, dtype="float64", hidden=8, layers=3,
                                         stop_gradient_input=stop_gradient_input,
                                         stop_gradient_filter=stop_gradient_filter, backend=backend)
        init, loss = mapf.make_loss(config, task, params)
        p = init(jax.random.PRNGKey(0))
        (value, aux), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(p, jax.random.PRNGKey(1))
        out[backend] = (float(value), np.asarray(aux["mse"]), jax.tree_util.tree_leaves(g))
    (v0, m0, g0), (v1, m1, g1) = out["jax"], out["native"]
    # 8 steps of the filter, each agreeing to ~1e-14: 1e-11 relative leaves a margin of 100
    assert v1 == pytest.approx(v0, rel=1e-11)
    np.testing.assert_allclose(m1, m0, rtol=1e-11)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-11 * max(1.0, np.abs(b).max()))
    assert max(np.abs(np.asarray(b)).max() for b in g0) > 1e-3


@pytest.mark.parametrize("kwargs", [{}, {"budget": "time", "total_time": 40.0}], ids=["measurements", "time_budget"])
def test_native_batch_equals_the_jax_episodes(kwargs):
    task = BayesianMagnetometry(n_measurements=6, n_particles=64, resample_threshold=0.9, **kwargs)
    params = task.default_params()
    config = mapf.ModelAwarePFConfig(policy="nn", batch=8, dtype="float64", hidden=8, layers=2, backend="native")
    setup = mapf._Setup(config, task, params)
    assert setup.native
    p = setup.init_policy(jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(4), 8)
    native = jax.jit(setup.batch)(p, keys)
    own = jax.jit(jax.vmap(setup.episode, in_axes=(None, 0), axis_name=mapf._EPISODES))(p, keys)
    for name in ("se", "score", "tau", "active"):
        np.testing.assert_allclose(np.asarray(native[name]), np.asarray(own[name]), rtol=1e-11, atol=1e-15,
                                   err_msg=name)
    if kwargs:
        assert (np.asarray(own["active"]) == 0).any()  # the budget ended some episodes early


def test_training_vmaps_over_seeds_on_the_native_backend():
    task = BayesianMagnetometry(n_measurements=4, n_particles=32)
    config = mapf.ModelAwarePFConfig(policy="static", iterations=2, checkpoint_every=1, batch=4, backend="native")
    train = mapf.make_train(config, task, task.default_params())
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    both = jax.jit(jax.vmap(train, in_axes=(0, None)))(keys, mapf.default_hyper("static"))
    one = jax.jit(train)(keys[1], mapf.default_hyper("static"))
    np.testing.assert_allclose(np.asarray(both.history[1]), np.asarray(one.history), rtol=1e-5)  # float32
    assert not np.allclose(np.asarray(both.history[0]), np.asarray(both.history[1]))


def test_bad_input_names_the_argument():
    args = _inputs(jnp.float64, b=4, n=16)
    step = _native(ResampleConfig())
    with pytest.raises(ValueError, match="w must have"):
        step(args["x"], args["w"][:, :8], *(args[k] for k in ARGS[2:]))
    with pytest.raises(ValueError, match="tau must have shape"):
        step(args["x"], args["w"], args["key"], args["tau"][:2], *(args[k] for k in ARGS[4:]))
    with pytest.raises(ValueError, match="allowed must have dtype"):
        step(*(args[k] for k in ARGS[:-1]), args["allowed"].astype(jnp.float64))
    with pytest.raises(ValueError, match="key must be uint32"):
        step(args["x"], args["w"], args["key"].astype(jnp.int32), *(args[k] for k in ARGS[3:]))
    with pytest.raises(ValueError, match="x must be float32 or float64"):
        step(args["x"].astype(jnp.float16), *(args[k] for k in ARGS[1:]))
    with pytest.raises(ValueError, match="sw_order"):
        _native(ResampleConfig(sw_order="normalised"))(*(args[k] for k in ARGS))


def test_backend_native_on_a_task_it_does_not_cover_says_why():
    task = BayesianMagnetometry(n_measurements=3, n_particles=16, unknown_t2=True)
    with pytest.raises(ValueError, match="unknown_t2"):
        mapf.make_loss(mapf.ModelAwarePFConfig(backend="native"), task, task.default_params())
    setup = mapf._Setup(mapf.ModelAwarePFConfig(backend="auto"), task, task.default_params())
    assert not setup.native  # auto: the JAX filter


def test_turned_off_it_falls_back_with_a_warning(tmp_path):
    code = (
        "import warnings, jax\n"
        "from qsmgym.agents import pf_native, model_aware_pf as mapf\n"
        "from qsmgym.envs.bayesian_magnetometry import BayesianMagnetometry\n"
        "ok, why = pf_native.available(); print('available', ok, why)\n"
        "task = BayesianMagnetometry(n_measurements=3, n_particles=16)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    s = mapf._Setup(mapf.ModelAwarePFConfig(), task, task.default_params())\n"
        "print('native', s.native, 'warned', any('QSM_NATIVE=0' in str(x.message) for x in w))\n"
        "try:\n"
        "    mapf._Setup(mapf.ModelAwarePFConfig(backend='native'), task, task.default_params())\n"
        "except ValueError as e: print('error', e)\n"
    )
    env = {**os.environ, "QSM_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "available False turned off by QSM_NATIVE=0" in out.stdout
    assert "native False warned True" in out.stdout
    assert "error backend='native' cannot run here: turned off by QSM_NATIVE=0" in out.stdout


def test_the_compiled_kernel_is_cached_by_content(tmp_path, monkeypatch):
    # the library's file name hashes the source, compiler, flags, jaxlib and CPU: a second build
    # in the same cache folder finds it and does not compile again
    monkeypatch.setenv("QSM_NATIVE_CACHE", str(tmp_path))
    first = pf_native._build()
    mtime = first.stat().st_mtime_ns
    assert first.parent == tmp_path and first.name.startswith("pf_step-") and first.suffix == ".so"
    assert pf_native._build() == first and first.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left behind
