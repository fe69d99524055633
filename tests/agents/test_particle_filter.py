"""agents/particle_filter.py: the posterior against an exact grid posterior, partial and soft
resampling, and gradients through the filter against finite differences.

Tolerances: a weighted ensemble of N_eff effective particles estimates a posterior moment m
with standard error sqrt(Var[m] / N_eff) (importance sampling); the tests allow 5 of those
standard errors, computed from the grid's own moments. Finite differences are central,
step 1e-6 in float64: truncation O(h^2 f''') ~ 1e-10 and round-off ~ 1e-16 / h ~ 1e-10 relative.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qsmgym.physics.precision import ensure_x64

ensure_x64()

from qsmgym.agents.particle_filter import (  # noqa: E402
    ResampleConfig,
    bayes_update,
    effective_sample_size,
    init_uniform,
    maybe_resample,
    mean_cov,
    resample,
)

LOW, HIGH = jnp.zeros(1), jnp.ones(1)


def ramsey(inv_t2):
    def lik(y, particles, tau):
        return 0.5 * (1.0 + y * jnp.exp(-tau * inv_t2) * jnp.cos(particles[:, 0] * tau))

    return lik


def outcomes(taus, omega, inv_t2, seed):
    rng = np.random.default_rng(seed)
    p_plus = 0.5 * (1 + np.exp(-np.asarray(taus) * inv_t2) * np.cos(omega * np.asarray(taus)))
    return np.where(rng.random(len(taus)) < p_plus, 1.0, -1.0)


def grid_posterior(taus, ys, inv_t2, n=400001):
    """Exact posterior moments on [0, 1] by the trapezoidal rule (the integrand is smooth:
    error ~ (1/n)^2 * max tau^2, < 1e-9 here)."""
    x = np.linspace(0.0, 1.0, n)
    logp = np.zeros(n)
    for tau, y in zip(taus, ys):  # p = 0 exactly at isolated grid points: log -> -inf is fine
        with np.errstate(divide="ignore"):
            logp += np.log(0.5 * (1 + y * np.exp(-tau * inv_t2) * np.cos(x * tau)))
    p = np.exp(logp - logp.max())
    z = np.trapezoid(p, x)
    mean = np.trapezoid(x * p, x) / z
    var = np.trapezoid((x - mean) ** 2 * p, x) / z
    m4 = np.trapezoid((x - mean) ** 4 * p, x) / z
    return mean, var, m4


def run_filter(key, taus, ys, inv_t2, n_particles, config):
    k0, key = jax.random.split(key)
    pf = init_uniform(k0, n_particles, LOW, HIGH)
    lik = ramsey(inv_t2)
    step = jax.jit(lambda pf, y, tau, k: maybe_resample(k, bayes_update(pf, y, tau, lik), LOW, HIGH, config))
    n_resampled = 0
    for tau, y, k in zip(taus, ys, jax.random.split(key, len(taus))):
        pf, did = step(pf, y, tau, k)
        n_resampled += int(did)
    return pf, n_resampled


CASES = [  # (taus, true omega, 1/T2)
    ([1.0, 2.0, 3.5, 5.0, 8.0], 0.37, 0.0),
    ([2.0, 4.0, 6.0, 9.0, 12.0, 15.0], 0.81, 0.1),
    ([3.0, 3.0, 7.0, 11.0], 0.12, 0.01),
]


@pytest.mark.parametrize("taus,omega,inv_t2", CASES)
def test_importance_weights_match_the_grid_posterior(taus, omega, inv_t2):
    ys = outcomes(taus, omega, inv_t2, seed=1)
    mean, var, m4 = grid_posterior(taus, ys, inv_t2)
    pf, _ = run_filter(jax.random.PRNGKey(3), taus, ys, inv_t2, 50_000, ResampleConfig(enabled=False))
    mu, cov = mean_cov(pf)
    n_eff = float(effective_sample_size(pf))
    assert abs(float(mu[0]) - mean) < 5 * np.sqrt(var / n_eff)
    assert abs(float(cov[0, 0]) - var) < 5 * np.sqrt((m4 - var**2) / n_eff)


@pytest.mark.parametrize("taus,omega,inv_t2", CASES)
def test_resampling_filter_matches_the_grid_posterior(taus, omega, inv_t2):
    # Soft resampling (alpha = 0.5, Scibior-Wood on) with the Liu-West move off (beta = 1):
    # the draw is unbiased, so only Monte-Carlo error remains. Resampled ensembles carry the
    # extra error of the draw: allow 2x the importance-sampling tolerance (10 SE), N_eff the
    # final one. The Liu-West move itself (beta < 1, clipped to [0, 1]) is an approximation
    # that is NOT exact: on these broad early posteriors it moved the mean by ~10 SE in a trial
    # (clipping at the prior edges), so it is checked separately (moments, below).
    ys = outcomes(taus, omega, inv_t2, seed=2)
    mean, var, m4 = grid_posterior(taus, ys, inv_t2)
    config = ResampleConfig(beta=1.0, threshold=0.9)
    pf, n_resampled = run_filter(jax.random.PRNGKey(4), taus, ys, inv_t2, 50_000, config)
    assert n_resampled >= 2  # the test exercises resampling
    mu, cov = mean_cov(pf)
    n_eff = float(effective_sample_size(pf))
    assert abs(float(mu[0]) - mean) < 10 * np.sqrt(var / n_eff)
    assert abs(float(cov[0, 0]) - var) < 10 * np.sqrt((m4 - var**2) / n_eff)


def test_coded_jitter_shrinks_the_variance_by_the_expected_factor():
    # qsensoropt's coded jitter: Var' = beta^2 Var + (1 - beta^2)^2 Var (3.8 % less at 0.98).
    key = jax.random.PRNGKey(0)
    pf = init_uniform(key, 200_000, LOW, HIGH)
    pf = bayes_update(pf, 1.0, 4.0, ramsey(0.0))
    _, var0 = mean_cov(pf)
    beta = 0.98
    for jitter, factor in (("coded", beta**2 + (1 - beta**2) ** 2), ("documented", 1.0)):
        # alpha = 1: plain multinomial, clip far from binding (posterior mass near 0/1 is small)
        config = ResampleConfig(alpha=1.0, jitter=jitter)
        new = jax.jit(lambda k, p: resample(k, p, LOW - 10, HIGH + 10, config))(jax.random.PRNGKey(1), pf)
        _, var1 = mean_cov(new)
        # sampling error of a variance over ~200k particles: ~ sqrt(2/200k) ~ 0.3 %
        np.testing.assert_allclose(float(var1[0, 0]) / float(var0[0, 0]), factor, atol=0.015)


def test_partial_resampling_per_batch_element():
    # Element 0 is sharply updated (N_eff < N/2), element 1 barely: under vmap only element 0
    # is resampled; element 1's particles and weights are returned bit for bit.
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    pfs = jax.vmap(lambda k: init_uniform(k, 480, LOW, HIGH))(keys)
    taus = jnp.array([[40.0, 55.0, 71.0], [0.01, 0.01, 0.01]])
    lik = ramsey(0.0)

    def update(pf, ts):
        for t in ts:
            pf = bayes_update(pf, 1.0, t, lik)
        return pf

    upd = jax.vmap(update)(pfs, taus)
    ess = jax.vmap(effective_sample_size)(upd)
    assert float(ess[0]) < 240 < float(ess[1])
    out, did = jax.jit(jax.vmap(lambda k, pf: maybe_resample(k, pf, LOW, HIGH)))(keys, upd)
    assert bool(did[0]) and not bool(did[1])
    np.testing.assert_array_equal(np.asarray(out.particles[1]), np.asarray(upd.particles[1]))
    np.testing.assert_array_equal(np.asarray(out.weights[1]), np.asarray(upd.weights[1]))
    assert not np.array_equal(np.asarray(out.particles[0]), np.asarray(upd.particles[0]))
    np.testing.assert_allclose(float(jnp.sum(out.weights[0])), 1.0, rtol=1e-12)


def _four_filters():
    # filters 0 and 1 sharply updated (N_eff < N/2), 2 and 3 barely
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    pfs = jax.vmap(lambda k: init_uniform(k, 480, LOW, HIGH))(keys)
    taus = jnp.array([[40.0, 55.0, 71.0], [38.0, 61.0, 80.0], [0.01] * 3, [0.01] * 3])

    def update(pf, ts):
        for t in ts:
            pf = bayes_update(pf, 1.0, t, ramsey(0.0))
        return pf

    upd = jax.vmap(update)(pfs, taus)
    ess = np.asarray(jax.vmap(effective_sample_size)(upd))
    assert ess[0] < 240 and ess[1] < 240 and ess[2] > 240 and ess[3] > 240
    return keys, upd


@pytest.mark.parametrize("fraction,active,expected", [
    # 2 of 4 active filters need it: f <= 0.5 resamples the whole batch, f > 0.5 none of it
    (0.5, (True, True, True, True), True),
    (0.51, (True, True, True, True), False),
    # filter 3 finished: 2 of 3 active need it (qsensoropt counts only the active ones)
    (0.66, (True, True, True, False), True),
    (0.67, (True, True, True, False), False),
    # a finished filter that needs it is not counted: 1 of 3
    (0.34, (True, False, True, True), False),
    (0.33, (True, False, True, True), True),
])
def test_batch_fraction_resamples_the_whole_batch_or_none(fraction, active, expected):
    # qsensoropt 1.0.0's check_resampling (resample_fraction = f): every filter of the batch is
    # resampled iff #(active and N_eff < N/2) >= f #(active); the resampled filters equal
    # resample() of each with the same key, the others are returned bit for bit.
    keys, upd = _four_filters()
    config = ResampleConfig(batch_fraction=fraction)
    out, did = jax.jit(jax.vmap(lambda k, pf, a: maybe_resample(k, pf, LOW, HIGH, config, axis_name="b", active=a),
                                axis_name="b"))(keys, upd, jnp.asarray(active))
    assert np.asarray(did).tolist() == [expected] * 4
    each = jax.vmap(lambda k, pf: resample(k, pf, LOW, HIGH, config))(keys, upd)
    want = each if expected else upd
    np.testing.assert_array_equal(np.asarray(out.particles), np.asarray(want.particles))
    np.testing.assert_array_equal(np.asarray(out.weights), np.asarray(want.weights))


def test_batch_fraction_needs_a_batch_and_a_valid_fraction():
    keys, upd = _four_filters()
    pf = jax.tree_util.tree_map(lambda x: x[0], upd)
    with pytest.raises(ValueError, match="batch_fraction"):
        maybe_resample(keys[0], pf, LOW, HIGH, ResampleConfig(batch_fraction=0.98))
    for bad in (0.0, 1.5, True, "0.9"):
        with pytest.raises(ValueError, match="batch_fraction"):
            maybe_resample(keys[0], pf, LOW, HIGH, ResampleConfig(batch_fraction=bad))


def test_soft_resampling_is_unbiased_and_scibior_wood_keeps_the_value():
    key = jax.random.PRNGKey(5)
    pf = init_uniform(key, 100_000, LOW, HIGH)
    pf = bayes_update(pf, -1.0, 6.0, ramsey(0.0))
    mu0, _ = mean_cov(pf)
    cfg = ResampleConfig(beta=1.0)  # no move: only the soft draw
    new = jax.jit(lambda p: resample(jax.random.PRNGKey(6), p, LOW, HIGH, cfg))(pf)
    mu1, _ = mean_cov(new)
    # soft weights w/q are unbiased; SE of a mean of ~1e5 draws with weights in [0, 2/alpha]
    assert abs(float(mu1[0] - mu0[0])) < 5 * np.sqrt(1 / 12 / 5e4)
    off_cfg = ResampleConfig(beta=1.0, scibior_wood=False)
    off = jax.jit(lambda p: resample(jax.random.PRNGKey(6), p, LOW, HIGH, off_cfg))(pf)
    np.testing.assert_allclose(np.asarray(off.weights), np.asarray(new.weights), rtol=1e-13)


def test_invalid_weights_fall_back_to_hard_resampling():
    pf = init_uniform(jax.random.PRNGKey(0), 50, LOW, HIGH)
    pf = pf.replace(weights=pf.weights.at[3].set(jnp.nan))
    out = resample(jax.random.PRNGKey(1), pf, LOW, HIGH)
    np.testing.assert_allclose(np.asarray(out.weights), 1 / 50)


def test_batch_level_fallback_branch_equals_the_per_filter_draw():
    # resample(axis_name=...) under vmap searches for the fallback only when some filter of the
    # batch needs it; it must give bit for bit what the always-computed fallback gives.
    # alpha = 0 (q uniform), 4 particles, one-hot w: a filter's soft draw misses the live
    # particle (all drawn w_i = 0, invalid) with probability (3/4)^4 = 0.32.
    config = ResampleConfig(alpha=0.0)
    keys = jax.random.split(jax.random.PRNGKey(7), 16)
    one_hot = init_uniform(jax.random.PRNGKey(0), 4, LOW, HIGH)
    one_hot = one_hot.replace(weights=jnp.array([0.0, 1.0, 0.0, 0.0]))
    spread = init_uniform(jax.random.PRNGKey(0), 4, LOW, HIGH)
    for pf, expect_invalid in ((one_hot, True), (spread, False)):  # some invalid / all valid
        plain = jax.jit(jax.vmap(lambda k: resample(k, pf, LOW, HIGH, config)))(keys)
        named = jax.jit(jax.vmap(lambda k: resample(k, pf, LOW, HIGH, config, axis_name="b"), axis_name="b"))(keys)
        np.testing.assert_array_equal(np.asarray(named.particles), np.asarray(plain.particles))
        np.testing.assert_array_equal(np.asarray(named.weights), np.asarray(plain.weights))
        if expect_invalid:
            # the fallback's weights are uniform, a valid soft draw's are not (one-hot w, q uniform)
            fell_back = np.all(np.asarray(plain.weights) == 0.25, axis=1)
            assert fell_back.any() and not fell_back.all()  # both kinds in the batch
            # a fallback drew the live particle only (and its zero covariance adds no jitter)
            drawn = np.asarray(plain.particles)[fell_back]
            np.testing.assert_array_equal(drawn, np.broadcast_to(np.asarray(one_hot.particles)[1], drawn.shape))


def test_outlier_observation_is_ignored():
    pf = init_uniform(jax.random.PRNGKey(0), 10, LOW, HIGH)
    out = bayes_update(pf, 1.0, 1.0, lambda y, th, c: jnp.zeros(th.shape[0]))
    np.testing.assert_array_equal(np.asarray(out.weights), np.asarray(pf.weights))


def final_variance(taus, ys, key, config, inv_t2=0.05, n_particles=256):
    k0, key = jax.random.split(key)
    pf = init_uniform(k0, n_particles, LOW, HIGH)
    lik = ramsey(inv_t2)

    def body(pf, inputs):
        tau, y, k = inputs
        pf = bayes_update(pf, y, tau, lik)
        pf, _ = maybe_resample(k, pf, LOW, HIGH, config)
        return pf, None

    pf, _ = jax.lax.scan(body, pf, (taus, ys, jax.random.split(key, taus.shape[0])))
    return mean_cov(pf)[1][0, 0]


@pytest.mark.parametrize(
    "config",
    [ResampleConfig(enabled=False), ResampleConfig(scibior_wood=False, threshold=0.95),
     ResampleConfig(scibior_wood=False, threshold=0.95, jitter="documented")],
    ids=["no_resampling", "resampling_coded", "resampling_documented"],
)
def test_gradient_of_final_variance_matches_finite_differences(config):
    # Outcomes fixed, resampling key fixed: the draw indices stay the same under the 1e-6
    # perturbations (checked below through the resample count), so the loss is smooth in tau.
    taus = jnp.array([1.3, 2.7, 4.1, 6.0, 8.5, 11.0])
    ys = jnp.array(outcomes(np.asarray(taus), 0.6, 0.05, seed=3))
    key = jax.random.PRNGKey(7)
    f = jax.jit(lambda t: final_variance(t, ys, key, config))
    grad = np.asarray(jax.grad(f)(taus))
    h = 1e-6
    fd = np.array([(float(f(taus.at[i].add(h))) - float(f(taus.at[i].add(-h)))) / (2 * h) for i in range(6)])
    scale = np.max(np.abs(fd))
    assert scale > 0
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6 * scale)


def test_scibior_wood_adds_the_score_of_the_draw():
    # Same values, different gradients: the SW gradient equals the plain (frozen-q) pathwise
    # gradient minus the q-dependence of w/q, i.e. it differs from the finite difference of
    # the value (which moves q too) by the score term. Check the identity on one resampling:
    # d/dtau sum_k f(w_k / q_k) with q frozen == SW gradient (factor attached before the
    # normalisation, sw_order="normalised").
    config_sw = ResampleConfig(threshold=1.0, beta=1.0, sw_order="normalised")
    pf0 = init_uniform(jax.random.PRNGKey(0), 64, LOW, HIGH)
    key = jax.random.PRNGKey(1)
    lik = ramsey(0.0)

    def loss(tau, config):
        pf = bayes_update(pf0, 1.0, tau, lik)
        pf = resample(key, pf, LOW, HIGH, config)
        return mean_cov(pf)[0][0]

    def loss_frozen_q(tau):
        w = bayes_update(pf0, 1.0, tau, lik).weights
        w_fixed = jax.lax.stop_gradient(w)
        q = 0.5 * w_fixed + 0.5 / 64
        from qsmgym.agents.particle_filter import _draw_indices

        idx = _draw_indices(jax.random.split(key, 3)[0], q, 64)
        nw = w[idx] / q[idx]
        nw = nw / jnp.sum(nw)
        return nw @ pf0.particles[idx, 0]

    g_sw = float(jax.grad(loss)(3.0, config_sw))
    g_frozen = float(jax.grad(loss_frozen_q)(3.0))
    np.testing.assert_allclose(float(loss(3.0, config_sw)), float(loss_frozen_q(3.0)), rtol=1e-12)
    np.testing.assert_allclose(g_sw, g_frozen, rtol=1e-10)
    g_plain = float(jax.grad(loss)(3.0, ResampleConfig(threshold=1.0, beta=1.0, scibior_wood=False)))
    assert abs(g_plain - g_sw) > 1e-6 * abs(g_sw)


def test_scibior_wood_in_qsensoropt_order():
    # qsensoropt 1.1.0's _resample_soft, transcribed op by op: w_i / q_i with q live,
    # normalised, THEN times q_i / sg(q_i); the mean is sum_i w'_i theta_i, not renormalised
    # (its compute_mean). Same value as the "normalised" order; the gradients differ by
    # mu * sum_i w'_i d log q_i. Both are float64 compositions of the same few ops: 1e-10.
    pf0 = init_uniform(jax.random.PRNGKey(0), 64, LOW, HIGH)
    key = jax.random.PRNGKey(1)
    lik = ramsey(0.0)
    from qsmgym.agents.particle_filter import _draw_indices

    def loss(tau, config):
        pf = resample(key, bayes_update(pf0, 1.0, tau, lik), LOW, HIGH, config)
        return mean_cov(pf)[0][0]

    def loss_ref(tau):
        w = bayes_update(pf0, 1.0, tau, lik).weights
        q = 0.5 * w + 0.5 / 64
        idx = _draw_indices(jax.random.split(key, 3)[0], q, 64)
        nw = w[idx] / q[idx]
        nw = nw / jnp.sum(nw)
        nw = nw * q[idx] / jax.lax.stop_gradient(q[idx])
        return nw @ pf0.particles[idx, 0]

    config_q = ResampleConfig(threshold=1.0, beta=1.0)
    assert config_q.sw_order == "qsensoropt"  # the default
    g_q = float(jax.grad(loss)(3.0, config_q))
    np.testing.assert_allclose(float(loss(3.0, config_q)), float(loss_ref(3.0)), rtol=1e-12)
    np.testing.assert_allclose(g_q, float(jax.grad(loss_ref)(3.0)), rtol=1e-10)
    g_n = float(jax.grad(loss)(3.0, ResampleConfig(threshold=1.0, beta=1.0, sw_order="normalised")))
    assert abs(g_q - g_n) > 1e-6 * abs(g_n)
    with pytest.raises(ValueError, match="sw_order"):
        resample(key, pf0, LOW, HIGH, ResampleConfig(sw_order="bogus"))


def test_bad_jitter_raises():
    pf = init_uniform(jax.random.PRNGKey(0), 4, LOW, HIGH)
    with pytest.raises(ValueError, match="jitter"):
        resample(jax.random.PRNGKey(0), pf, LOW, HIGH, ResampleConfig(jitter="bogus"))


@pytest.mark.parametrize("size", [1, 2, 7, 480, 1000])
def test_two_level_search_equals_searchsorted(size):
    # _draw_indices' search must give exactly jnp.searchsorted(side="right"): ties, zero
    # weights (flat cdf stretches), queries at 0, at the total and beyond.
    from qsmgym.agents.particle_filter import _search_right

    rng = np.random.default_rng(size)
    w = rng.random(size) ** 8
    w[rng.random(size) < 0.3] = 0.0
    cdf = jnp.asarray(np.cumsum(w))  # sequential sums: monotone (XLA's parallel cumsum can dip by an ulp)
    x = jnp.concatenate([jnp.asarray(rng.random(997)) * cdf[-1], cdf, jnp.array([0.0, -1.0, float(cdf[-1]) + 1])])
    np.testing.assert_array_equal(np.asarray(jax.jit(_search_right)(cdf, x)),
                                  np.asarray(jnp.searchsorted(cdf, x, side="right")))


def test_precomputed_noise_equals_drawing_it_from_the_key():
    # resample(noise=resample_noise(key, ...)) is resample(key) bit for bit (model_aware_pf draws
    # the noise of all steps before its loop); exactly one of key and noise is accepted
    from qsmgym.agents.particle_filter import resample_noise

    pf = init_uniform(jax.random.PRNGKey(0), 64, LOW, HIGH)
    pf = bayes_update(pf, 1.0, 9.0, ramsey(0.0))
    key = jax.random.PRNGKey(3)
    noise = resample_noise(key, 64, 1, pf.particles.dtype)
    assert noise.u.shape == (64,) and noise.z.shape == (64, 1)
    for config in (ResampleConfig(), ResampleConfig(jitter="documented", alpha=0.2)):
        a = resample(key, pf, LOW, HIGH, config)
        b = resample(None, pf, LOW, HIGH, config, noise=noise)
        np.testing.assert_array_equal(np.asarray(a.particles), np.asarray(b.particles))
        np.testing.assert_array_equal(np.asarray(a.weights), np.asarray(b.weights))
    # the jitter uses z: other normals move the particles
    other = noise.replace(z=noise.z + 1.0)
    moved = resample(None, pf, LOW, HIGH, noise=other)
    assert not np.array_equal(np.asarray(moved.particles), np.asarray(a.particles))
    with pytest.raises(ValueError, match="exactly one of key and noise"):
        resample(key, pf, LOW, HIGH, noise=noise)
    with pytest.raises(ValueError, match="exactly one of key and noise"):
        maybe_resample(None, pf, LOW, HIGH)
    with pytest.raises(ValueError, match="noise must have u of shape"):
        resample(None, pf, LOW, HIGH, noise=resample_noise(key, 32, 1, pf.particles.dtype))
