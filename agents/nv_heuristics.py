"""Heuristic evolution-time policies for NV-centre Ramsey magnetometry, and their evaluation.

Policies map the particle filter (and the env params) to the evolution time tau, unclipped
(spec section 6; qsensoropt evaluates them without the NN's tau range):

- ``sigma_inverse_tau``: tau = 1 / (sqrt(tr Sigma) + 1/T2), with 1/T2 the posterior mean of
  1/T2 when it is unknown (0 for T2 = inf).
- ``pgh_tau``: particle guess heuristic (Wiebe, Granade, Ferrie & Cory, PRL 112, 190501, 2014):
  two particles x1, x2 drawn independently by weight, tau = 1 / (||x1 - x2||_1 + 1e-5).

``rollout_tau_policy`` runs such a policy through the functional core of
``qsm/BayesianMagnetometry-v0`` (``BayesianMagnetometry.measure``), vmapped over episodes
in one jit, and returns the squared error and posterior variance after every measurement;
``rollout_tau_policies`` runs several from one compiled program.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qsmgym.agents._programs import ProgramCache, values_key
from qsmgym.agents.particle_filter import ParticleFilter, _draw_indices, batch_chunk, mean_cov

POLICIES = ("sigma_inverse", "pgh", "constant")
_EPISODES = "episodes"  # the vmap axis of a chunk of episodes (a batch, for resample_fraction)


def sigma_inverse_tau(key: jax.Array, pf: ParticleFilter, inv_t2) -> jnp.ndarray:
    """tau = 1 / (sqrt(tr Sigma) + 1/T2). ``inv_t2``: the known 1/T2, or None when it is the
    filter's second parameter (its posterior mean is used). ``key`` is unused."""
    mu, cov = mean_cov(pf)
    rate = mu[1] if inv_t2 is None else inv_t2
    return 1.0 / (jnp.sqrt(jnp.trace(cov)) + rate)


def pgh_tau(key: jax.Array, pf: ParticleFilter, inv_t2=None) -> jnp.ndarray:
    """Particle guess heuristic: tau = 1 / (||x1 - x2||_1 + 1e-5), x1, x2 ~ the posterior."""
    idx = _draw_indices(key, pf.weights, 2)
    x = pf.particles[idx]
    return 1.0 / (jnp.sum(jnp.abs(x[0] - x[1])) + 1e-5)


def constant_tau(tau: float) -> Callable:
    """A non-adaptive policy: the same tau at every measurement."""
    return lambda key, pf, inv_t2=None: jnp.asarray(tau, pf.particles.dtype)


def policy_by_name(name: str, tau: float = 1.0) -> Callable:
    if name == "sigma_inverse":
        return sigma_inverse_tau
    if name == "pgh":
        return pgh_tau
    if name == "constant":
        return constant_tau(tau)
    raise ValueError(f"policy must be one of {POLICIES}, got policy={name!r}")


def rollout_tau_policy(task, params, policy: Callable, key: jax.Array, n_episodes: int,
                       n_steps: int | None = None, chunk: int = 1024) -> dict[str, jnp.ndarray]:
    """Run ``policy(key, pf, inv_t2) -> tau`` for ``n_steps`` measurements (default the
    horizon) in ``n_episodes`` episodes of ``task`` (a BayesianMagnetometry core).

    Episodes are vmapped in chunks of ``chunk`` (lax.map over chunks bounds the memory:
    chunk x n_particles float64 per array). Episode i uses key fold_in(key, i): results do not
    depend on ``chunk``, unless the task has ``resample_fraction``: then a chunk is the batch
    whose filters resample together (qsensoropt's batch size), and ``n_episodes`` must be a
    multiple of it. Returns arrays of shape (n_episodes, n_steps): "se" (squared error of
    the posterior mean of omega), "variance" (posterior variance of omega), "tau",
    "resources", "active" (1 while the budget allowed the measurement), and "reward".
    Under a time budget a finished episode keeps its last estimate (its SE stays frozen).
    """
    return rollout_tau_policies(task, params, [policy], [key], n_episodes, n_steps, chunk)[0]


def rollout_tau_policies(task, params, policies: Sequence[Callable], keys: Sequence[jax.Array], n_episodes: int,
                         n_steps: int | None = None, chunk: int = 1024) -> list[dict[str, jnp.ndarray]]:
    """``rollout_tau_policy`` for each (policy, key) pair, from ONE compiled program: the
    policy is a ``lax.switch`` branch picked by a traced index, so several policies cost one
    compilation (the env's ``references`` runs three; compiling each alone took most of its
    time). Each result is what ``rollout_tau_policy(task, params, policy, key, ...)`` gives.
    The compiled program is kept for the last few (task, policies, params values, sizes), so
    repeated calls that differ only in the keys compile once."""
    if len(policies) != len(keys) or not policies:
        raise ValueError(f"policies and keys must be non-empty and of equal length, got {len(policies)} and {len(keys)}")
    n_steps = task.horizon if n_steps is None else int(n_steps)
    chunk = batch_chunk(n_episodes, chunk, task.resample_config)
    run = _runner(task, params, tuple(policies), int(n_episodes), n_steps, int(chunk))
    results = []
    for which, key in enumerate(keys):
        out = run(key, jnp.asarray(which, jnp.int32))
        results.append({k: v.reshape((n_episodes, n_steps)) for k, v in out.items()})
    return results


# (task, policies, params' values, sizes) -> the jitted rollout: repeated calls with the same
# ones (16 runs of a heuristic in experiments/nv_heuristics_compare) compile once.
_RUNNERS = ProgramCache(8)


def _runner(task, params, policies: tuple, n_episodes: int, n_steps: int, chunk: int) -> Callable:
    values = values_key(params)
    key = None if values is None else (task, policies, values, n_episodes, n_steps, chunk)
    return _RUNNERS.get(key, lambda: _build_runner(task, params, policies, n_episodes, n_steps, chunk))


def _build_runner(task, params, policies: tuple, n_episodes: int, n_steps: int, chunk: int) -> Callable:
    cache = task.precompute(params)
    inv_t2 = None if task.unknown_t2 else params.inv_t2
    branches = [lambda k, pf, p=p: p(k, pf, inv_t2) for p in policies]

    def episode(k, which):
        k_reset, k_run = jax.random.split(k)
        _, state = task.reset_env(k_reset, params, cache)

        def body(state, k_step):
            k_pol, k_meas = jax.random.split(k_step)
            tau = jax.lax.switch(which, branches, k_pol, state.pf)
            _, new, reward, term, info = task.measure(k_meas, state, tau, jnp.zeros(()), params,
                                                      axis_name=_EPISODES)
            out = {"se": info["se"], "variance": info["posterior_variance"], "tau": tau,
                   "resources": new.resources, "active": info["measured"], "reward": reward}
            return new, out

        _, out = jax.lax.scan(body, state, jax.random.split(k_run, n_steps))
        return out

    ids = jnp.arange(n_episodes).reshape(-1, chunk)
    return jax.jit(lambda key, which: jax.lax.map(
        lambda c: jax.vmap(lambda i: episode(jax.random.fold_in(key, i), which), axis_name=_EPISODES)(c), ids))


def bootstrap_mean_ci(x, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of x and its percentile-bootstrap CI (numpy, for reporting)."""
    x = np.asarray(x, np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(n_boot):
        means[b] = x[rng.integers(0, x.size, x.size)].mean()
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean()), float(lo), float(hi)
