"""A differentiable particle filter in JAX (the reference behaviour of qsensoropt 1.1.0).

One filter is a ``ParticleFilter`` pytree: particles (n_particles, d) and normalised weights
(n_particles,). Every function here works on ONE filter and is written for ``jax.vmap`` over a
batch of them (shapes (B, n_particles, d) and (B, n_particles)): there is no Python control
flow on traced values, so a batch element that needs resampling and one that does not are
handled by ``jnp.where`` per element (qsensoropt's "partial" resampling).

Pieces (spec: shared/reference/bayesian-magnetometry.md, section 3):

- ``init_uniform``: particles from a box prior, uniform weights.
- ``bayes_update``: w_j <- w_j p(y | theta_j, control), normalised; if every weight vanishes
  the observation is ignored (an outlier). Differentiable in the control.
- ``mean_cov``, ``effective_sample_size``.
- ``resample``: soft resampling q = alpha w + (1 - alpha)/N (Ma et al., arXiv:1905.12885),
  indices drawn by inverse-CDF sampling with no gradient through them; new weights
  w_i / q_i, normalised, times the Ścibior–Wood factor q_i / sg(q_i) (arXiv:2106.10314: same
  value, the score of the draw enters the gradient; attached after the normalisation as
  qsensoropt does, or before it with ``sw_order="normalised"``); fallback to hard multinomial
  resampling if the weights come out invalid; Liu–West move theta'' = beta theta' + (1 - beta) mu + delta with
  mu, Sigma of the pre-resampling ensemble (gradients attached), then clipping to the prior
  box. ``jitter="coded"``: delta = (1 - beta^2) Sigma^{1/2} z (what qsensoropt's code does,
  the default); ``"documented"``: delta = sqrt(1 - beta^2) Sigma^{1/2} z (its docstring; this
  one preserves the ensemble variance).
- ``maybe_resample``: resample only when N_eff < threshold * N (default 0.5).

Precision: the filter runs in the dtype of its particles. Environments keep it in float64:
weights are products of up to hundreds of likelihoods, and the posterior variance (the reward)
is a difference of second moments that loses digits in float32 once sigma ~ 1e-3.

Example:
    >>> key = jax.random.PRNGKey(0)
    >>> pf = init_uniform(key, 480, jnp.array([0.0]), jnp.array([1.0]))
    >>> lik = lambda y, theta, tau: 0.5 * (1 + y * jnp.cos(theta[..., 0] * tau))
    >>> pf = bayes_update(pf, 1.0, 3.0, lik)
    >>> mu, cov = mean_cov(pf)
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from qsmgym.physics import prng

JITTERS = ("coded", "documented")
SW_ORDERS = ("qsensoropt", "normalised")


@struct.dataclass
class ParticleFilter:
    """particles: (n_particles, d); weights: (n_particles,), normalised to 1."""

    particles: jnp.ndarray
    weights: jnp.ndarray


@struct.dataclass
class ResampleConfig:
    """Static resampling settings (qsensoropt defaults). ``enabled=False`` turns it off.

    alpha: soft-resampling mixture weight (1 = plain multinomial on w). beta: Liu–West
    shrinkage (1 = no move). threshold: resample when N_eff < threshold * N.
    scibior_wood: attach the score of the resampling draw to the new weights.
    sw_order: where the Ścibior–Wood factor q_i / sg(q_i) goes. "qsensoropt" (default, its
        ``_resample_soft``): w_i / q_i is normalised first (gradient through q_i and the
        norm), then multiplied by the factor, so the weights sum to 1 in value but their sum
        keeps the gradient sum_i w'_i d log q_i (the posterior mean sum_i w'_i theta_i is not
        renormalised, as in qsensoropt's ``compute_mean``). "normalised": the factor is
        attached before normalising (w_i / sg(q_i), then normalised): the score enters
        centred, (theta_i - mu) d log q_i.
    jitter: "coded" or "documented" (see the module docstring).
    batch_fraction: None (default): each filter resamples when its own N_eff is low
        (qsensoropt 1.1.0's partial resampling). A number f in (0, 1]: the filters of a batch
        resample together, all of them, once at least a fraction f of the batch's active
        filters has N_eff < threshold * N (qsensoropt 1.0.0's ``check_resampling`` with
        ``resample_fraction=f``; its ``examples/nv_center_dc.py`` sets f = 0.98, and the
        published NV-DC-24 curves were made so). It couples the episodes of a batch, so
        results depend on the batch size, and it needs ``maybe_resample(axis_name=...)``.
    """

    enabled: bool = struct.field(pytree_node=False, default=True)
    alpha: float = struct.field(pytree_node=False, default=0.5)
    beta: float = struct.field(pytree_node=False, default=0.98)
    threshold: float = struct.field(pytree_node=False, default=0.5)
    scibior_wood: bool = struct.field(pytree_node=False, default=True)
    sw_order: str = struct.field(pytree_node=False, default="qsensoropt")
    jitter: str = struct.field(pytree_node=False, default="coded")
    batch_fraction: float | None = struct.field(pytree_node=False, default=None)


def init_uniform(key: jax.Array, n_particles: int, low: jnp.ndarray, high: jnp.ndarray,
                 dtype=jnp.float64) -> ParticleFilter:
    """n_particles draws from U(low, high) (each of shape (d,)) with uniform weights."""
    low = jnp.asarray(low, dtype)
    high = jnp.asarray(high, dtype)
    u = prng.uniform(key, (n_particles, low.shape[0]), dtype)
    return ParticleFilter(particles=low + (high - low) * u,
                          weights=jnp.full((n_particles,), 1.0 / n_particles, dtype))


def bayes_update(pf: ParticleFilter, y, control, likelihood: Callable) -> ParticleFilter:
    """Posterior after outcome y under ``control``: w_j <- w_j likelihood(y, theta_j, control),
    normalised. ``likelihood(y, particles (N, d), control) -> (N,)``. If every weight
    vanishes (a numerical outlier) the old weights are kept."""
    w = pf.weights * likelihood(y, pf.particles, control)
    total = jnp.sum(w)
    ok = total > 0
    w = jnp.where(ok, w / jnp.where(ok, total, 1.0), pf.weights)
    return pf.replace(weights=w)


def weighted_sum(w: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """sum_j w_j x_j over the leading (particle) axis, as a multiply and a reduction rather than
    a dot product: under vmap a dot becomes a batch of (1 x N) . (N x d) products, which XLA's
    CPU back end ran slowly (1.7 ms a measurement for the posterior mean at 256 filters x 480
    particles in float32, session 17's profile of the NV-DC-24 training step). The reduction
    is a fused loop, fast when YNNPACK's reduce fusions are off (see
    ``model_aware_pf.compiler_options``); with them on it was no faster than the dot."""
    w = w.reshape(w.shape + (1,) * (x.ndim - 1))
    return jnp.sum(w * x, axis=0)


def mean_cov(pf: ParticleFilter) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Posterior mean (d,) and covariance (d, d) of the weighted ensemble."""
    mu = weighted_sum(pf.weights, pf.particles)
    dev = pf.particles - mu
    return mu, weighted_sum(pf.weights, dev[:, :, None] * dev[:, None, :])


def effective_sample_size(pf: ParticleFilter) -> jnp.ndarray:
    """N_eff = 1 / sum_j w_j^2 (in [1, N])."""
    return 1.0 / jnp.sum(pf.weights**2)


def _sqrtm_psd(cov: jnp.ndarray) -> jnp.ndarray:
    """Symmetric square root of a PSD matrix. d = 1: sqrt (gradient-safe at 0); d > 1: eigh
    (qsensoropt uses an SVD; for a symmetric PSD matrix they agree)."""
    if cov.shape[-1] == 1:
        v = jnp.maximum(cov, 0.0)
        safe = jnp.where(v > 0, v, 1.0)
        return jnp.where(v > 0, jnp.sqrt(safe), 0.0)
    lam, vecs = jnp.linalg.eigh(cov)
    lam = jnp.maximum(lam, 0.0)
    root = jnp.where(lam > 0, jnp.sqrt(jnp.where(lam > 0, lam, 1.0)), 0.0)
    return (vecs * root) @ vecs.T


def _draw_indices(key: jax.Array, probs: jnp.ndarray, n: int) -> jnp.ndarray:
    """n indices ~ Categorical(probs) by inverse-CDF sampling, no gradient (the gumbel-max
    alternative costs O(N^2) per filter). The search is ``_search_right``: the same indices
    as ``jnp.searchsorted(cdf, u, side="right")``, ~4x faster on CPU under vmap."""
    return _indices_from(prng.uniform(key, (n,), probs.dtype), probs)


def _indices_from(u: jnp.ndarray, probs: jnp.ndarray) -> jnp.ndarray:
    """Inverse-CDF indices of uniforms u in [0, 1) under probs (unnormalised), no gradient."""
    cdf = _cumsum(jax.lax.stop_gradient(probs))
    return jnp.clip(_search_right(cdf, u * cdf[-1]), 0, probs.shape[0] - 1)


def _cumsum(x: jnp.ndarray) -> jnp.ndarray:
    """Prefix sums by a log-depth associative scan: XLA's CPU lowering of ``jnp.cumsum`` is a
    reduce-window, O(N^2) adds (835 us against 347 us for 256 x 480 in float32)."""
    return jax.lax.associative_scan(jnp.add, x)


def _search_right(cdf: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """#{j: cdf_j <= x_k} for sorted cdf (N,) and queries x (n,): a two-level dense search
    (blocks of ~sqrt(N): compare x with every block's last entry, then with the entries of its
    block), O(n sqrt(N)) vectorised compares instead of log2(N) dependent gathers."""
    size = cdf.shape[0]
    width = max(1, math.isqrt(size))
    n_blocks = -(-size // width)
    padded = jnp.concatenate([cdf, jnp.full((n_blocks * width - size,), jnp.inf, cdf.dtype)])
    blocks = padded.reshape(n_blocks, width)
    block = jnp.sum(blocks[:, -1][None, :] <= x[:, None], axis=1, dtype=jnp.int32)
    row = jnp.minimum(block, n_blocks - 1)
    within = jnp.sum(blocks[row] <= x[:, None], axis=1, dtype=jnp.int32)
    return jnp.where(block >= n_blocks, size, row * width + within)


def _check_config(config: ResampleConfig) -> None:
    if config.jitter not in JITTERS:
        raise ValueError(f"jitter must be one of {JITTERS}, got jitter={config.jitter!r}")
    if config.sw_order not in SW_ORDERS:
        raise ValueError(f"sw_order must be one of {SW_ORDERS}, got sw_order={config.sw_order!r}")
    f = config.batch_fraction
    if f is not None and (isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1):
        raise ValueError(f"batch_fraction must be None or a number in (0, 1], got batch_fraction={f!r}")


def _soft_draw(u: jnp.ndarray, w: jnp.ndarray, config: ResampleConfig):
    """The soft draw of one filter from uniforms u (N,): indices ~ q = alpha w + (1 - alpha)/N,
    the normalised importance weights w_i / q_i, the drawn q_i and whether the draw is valid."""
    n = w.shape[0]
    q = config.alpha * w + (1.0 - config.alpha) / n
    idx = _indices_from(u, q)
    w_i = w[idx]
    q_i = config.alpha * w_i + (1.0 - config.alpha) / n  # = q[idx] bit for bit, one gather less
    if config.scibior_wood and config.sw_order == "normalised":
        new_w = w_i / jax.lax.stop_gradient(q_i)  # = (w_i / q_i) * q_i / sg(q_i)
    else:
        new_w = w_i / q_i
    total = jnp.sum(new_w)
    valid = jnp.isfinite(total) & (total > 0) & jnp.all(jnp.isfinite(new_w))
    return idx, new_w / jnp.where(valid, total, 1.0), q_i, valid


def _finish(z: jnp.ndarray, pf: ParticleFilter, low, high, config: ResampleConfig, idx, new_w, q_i,
            valid, idx_hard) -> ParticleFilter:
    """Fallback selection, the Ścibior–Wood factor (qsensoropt order) and the Liu–West move."""
    n = pf.weights.shape[0]
    w = pf.weights
    mu, cov = mean_cov(pf)  # pre-resampling moments, gradients attached
    # Fallback: hard multinomial resampling on w with uniform weights (qsensoropt then
    # attaches w_i / sg(w_i) as the Ścibior–Wood factor of that draw).
    idx = jnp.where(valid, idx, idx_hard)
    q_i = jnp.where(valid, q_i, w[idx_hard])
    new_w = jnp.where(valid, new_w, jnp.full_like(w, 1.0 / n))
    if config.scibior_wood and config.sw_order == "qsensoropt":
        ok = (q_i > 0) & jnp.isfinite(q_i)
        safe = jnp.where(ok, q_i, 1.0)
        new_w = new_w * jnp.where(ok, safe / jax.lax.stop_gradient(safe), 1.0)
    theta = pf.particles[idx]
    scale = (1.0 - config.beta**2) if config.jitter == "coded" else jnp.sqrt(1.0 - config.beta**2)
    root = _sqrtm_psd(cov)
    delta = scale * jnp.sum(z[:, None, :] * root[None, :, :], axis=-1)  # z @ root.T, without a batched dot
    theta = config.beta * theta + (1.0 - config.beta) * mu + delta
    theta = jnp.clip(theta, jnp.asarray(low, theta.dtype), jnp.asarray(high, theta.dtype))
    return ParticleFilter(particles=theta, weights=new_w)


@struct.dataclass
class ResampleNoise:
    """The random numbers of one resampling: u (n_particles,) uniforms for the indices (the
    soft draw's, and the fallback's if it is needed); z (n_particles, d) standard normals for
    the Liu–West jitter."""

    u: jnp.ndarray
    z: jnp.ndarray


def resample_noise(key: jax.Array, n_particles: int, d: int, dtype=jnp.float64) -> ResampleNoise:
    """The noise ``resample(key, ...)`` draws: the key is split in 3, the first for u, the third
    for z (the second is unused; it kept the streams when the fallback stopped drawing its own).

    Callers that run many filter steps in a ``lax.scan`` can draw the noise of every step
    before the loop and pass ``noise=`` instead of a key: the results are the same bit for
    bit, and XLA's CPU back end, which otherwise fused the normals' erf_inv into each of the
    loop's residual stores (3 recomputations a step in the NV-DC-24 gradient), computes them once."""
    key_idx, _, key_jit = jax.random.split(key, 3)
    return ResampleNoise(u=prng.uniform(key_idx, (n_particles,), dtype),
                         z=prng.normal(key_jit, (n_particles, d), dtype))


def resample(key: jax.Array | None, pf: ParticleFilter, low: jnp.ndarray, high: jnp.ndarray,
             config: ResampleConfig = ResampleConfig(), *, axis_name: str | None = None,
             noise: ResampleNoise | None = None) -> ParticleFilter:
    """Soft resampling + Ścibior–Wood + Liu–West move + clip to [low, high] (always applied;
    see ``maybe_resample`` for the N_eff test). The random numbers are ``noise``, or if it is
    None ``resample_noise(key, ...)`` (pass exactly one of the two).
    ``axis_name``: the name of an enclosing ``jax.vmap`` over filters; with it the fallback's
    search runs only when some filter of that batch drew invalid weights (same results)."""
    _check_config(config)
    n, d = pf.particles.shape
    noise = _noise_of(key, noise, n, d, pf.weights.dtype)
    u = noise.u
    idx, new_w, q_i, valid = _soft_draw(u, pf.weights, config)
    # the fallback reuses the soft draw's uniforms: it replaces that draw, never joins it, so
    # its indices are still Categorical(w), with 480 fewer random numbers a filter step
    if axis_name is None:
        idx_hard = _indices_from(u, pf.weights)
    else:
        # under vmap(axis_name=...): search for the fallback only when some filter of the
        # batch needs it (a real branch: the predicate is the same for the whole batch)
        any_invalid = jax.lax.psum((~valid).astype(jnp.int32), axis_name) > 0
        idx_hard = jax.lax.cond(any_invalid, lambda: _indices_from(u, pf.weights), lambda: idx)
    return _finish(noise.z, pf, low, high, config, idx, new_w, q_i, valid, idx_hard)


def _noise_of(key, noise: ResampleNoise | None, n: int, d: int, dtype) -> ResampleNoise:
    if (key is None) == (noise is None):
        raise ValueError(f"pass exactly one of key and noise, got key={key!r}, noise={noise!r}")
    if noise is None:
        return resample_noise(key, n, d, dtype)
    if noise.u.shape != (n,) or noise.z.shape != (n, d):
        raise ValueError(f"noise must have u of shape {(n,)} and z of shape {(n, d)}, "
                         f"got u {noise.u.shape} and z {noise.z.shape}")
    return noise


def batch_chunk(n_episodes: int, chunk: int, config: ResampleConfig) -> int:
    """The chunk of a batched rollout of ``n_episodes`` asked to run in chunks of ``chunk``:
    ``chunk`` if it divides ``n_episodes``, else their gcd (per-filter resampling: the chunk
    changes no result). With ``config.batch_fraction`` a chunk is the batch whose filters
    resample together, so it is never changed: ValueError unless it divides ``n_episodes``."""
    if n_episodes % chunk and config.batch_fraction is not None:
        raise ValueError(f"n_episodes must be a multiple of chunk (the batch that resamples together, "
                         f"resample_fraction={config.batch_fraction!r}), got n_episodes={n_episodes}, chunk={chunk}")
    return math.gcd(int(n_episodes), int(chunk))


def maybe_resample(key: jax.Array | None, pf: ParticleFilter, low, high,
                   config: ResampleConfig = ResampleConfig(), *, axis_name: str | None = None,
                   noise: ResampleNoise | None = None, active=True) -> tuple[ParticleFilter, jnp.ndarray]:
    """Resample iff N_eff < threshold * N (per filter: under vmap this is qsensoropt's partial
    resampling). Returns (filter, resampled flag). ``axis_name``, ``noise``: see ``resample``.

    With ``config.batch_fraction = f`` the decision is the batch's: every filter of the
    enclosing ``jax.vmap(..., axis_name=axis_name)`` resamples iff at least f times the number
    of ``active`` filters (a bool per filter: its episode is still measuring; qsensoropt's
    ``count_for_resampling``) are active and have N_eff < threshold * N. Raises ValueError
    without ``axis_name``: one filter alone has no batch."""
    if not config.enabled:
        return pf, jnp.zeros((), bool)
    _check_config(config)
    n = pf.weights.shape[0]
    need = effective_sample_size(pf) < config.threshold * n
    if config.batch_fraction is not None:
        if axis_name is None:
            raise ValueError(f"batch_fraction={config.batch_fraction!r} resamples a batch of filters together: "
                             "call maybe_resample under jax.vmap(..., axis_name=...) and pass that axis_name")
        active = jnp.asarray(active, bool)
        n_need = jax.lax.psum((need & active).astype(jnp.int32), axis_name)
        n_active = jax.lax.psum(active.astype(jnp.int32), axis_name)
        # qsensoropt compares count_nonzero(need) >= f * count_nonzero(active) in float64;
        # both counts are exact integers here, the product rounds as there
        need = n_need.astype(jnp.float64) >= config.batch_fraction * n_active.astype(jnp.float64)
    new = resample(key, pf, low, high, config, axis_name=axis_name, noise=noise)
    out = jax.tree_util.tree_map(lambda a, b: jnp.where(need, a, b), new, pf)
    return out, need
