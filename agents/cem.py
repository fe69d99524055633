"""Cross-entropy method, jitted end to end: open-loop action sequences or policy weights.

``make_train(config, task, params)`` returns ``train(key, hyper)``: static settings (sizes) in
``config``, traced hyperparameters in ``hyper``, so ``jax.vmap(jax.vmap(train))`` sweeps seeds x
hyperparameters in one XLA program. The config's type picks the mode:

- ``CEMConfig``: open-loop sequences (``CEMResult``). The population is evaluated with ``vmap``
  through the functional core (``open_loop_return``). Discrete action spaces: independent
  categorical distributions per time slot, updated towards the elites' action frequencies with
  smoothing (Rubinstein & Kroese's CEM for combinatorial problems). MultiBinary: independent
  Bernoulli probabilities per slot and flag, updated the same way. Box action spaces:
  independent Gaussians per slot, clipped to the space's bounds when sampling (the sampler's
  choice, not the env's: the env never clips).
- ``PolicyCEMConfig``: a diagonal Gaussian over the flattened weights of a small deterministic
  policy (``DeterministicPolicy``: obs -> tanh MLP -> action; Box: tanh into the bounds,
  Discrete: argmax, MultiBinary: logits > 0), each candidate scored by closed-loop rollouts
  (``policy_return``) on ``n_episodes`` episode keys shared by the whole population (common
  random numbers: candidates are ranked on the same noise) (``PolicyCEMResult``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import gymnasium as gym
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from qsmgym.agents import distributions as pdist
from qsmgym.agents.distributions import PolicySpec
from qsmgym.agents.rollout import open_loop_return
from qsmgym.envs.core import FunctionalEnv


@dataclasses.dataclass(frozen=True)
class CEMConfig:
    """Static CEM settings.

    Attributes:
        n_steps: length of the open-loop sequence (the task's horizon).
        population: candidate sequences per iteration.
        n_elite: elites kept per iteration.
        iterations: CEM iterations.
    """

    n_steps: int
    population: int = 256
    n_elite: int = 25
    iterations: int = 60

    def __post_init__(self):
        for name in ("n_steps", "population", "n_elite", "iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
        if self.n_elite > self.population:
            raise ValueError(
                f"n_elite must be <= population, got n_elite={self.n_elite}, population={self.population}"
            )


def default_hyper() -> dict[str, jnp.ndarray]:
    """Traced hyperparameters: smoothing (weight of the new elite statistics), the initial
    and minimum std of the Gaussian (open loop, Box spaces: in units of the half-range;
    policy mode: absolute, on every network weight)."""
    return {
        "smoothing": jnp.asarray(0.7),
        "init_std": jnp.asarray(0.5),
        "min_std": jnp.asarray(0.02),
    }


class CEMResult(NamedTuple):
    best_actions: jnp.ndarray  # (n_steps, ...) best sequence seen
    best_return: jnp.ndarray  # its return
    elite_mean: jnp.ndarray  # (iterations,) mean return of the elites
    population_mean: jnp.ndarray  # (iterations,) mean return of the population
    best_so_far: jnp.ndarray  # (iterations,)
    distribution: Any  # final probabilities (Discrete, MultiBinary) or (mean, std) (Box)


def elite_update_discrete(probs, elite_actions, n_actions, smoothing):
    """New per-slot probabilities: (1 - s) p + s * frequency of each action among elites.

    Args:
        probs: (n_steps, n_actions). elite_actions: (n_elite, n_steps) ints.
    """
    freq = jax.nn.one_hot(elite_actions, n_actions).mean(axis=0)
    return (1.0 - smoothing) * probs + smoothing * freq


def elite_update_bernoulli(probs, elite_actions, smoothing):
    """New per-slot, per-flag probabilities: (1 - s) p + s * fraction of elites with the flag set.

    Args:
        probs: (n_steps, *flags) in [0, 1]. elite_actions: (n_elite, n_steps, *flags) in {0, 1}.
    """
    freq = jnp.asarray(elite_actions, probs.dtype).mean(axis=0)
    return (1.0 - smoothing) * probs + smoothing * freq


def elite_update_gaussian(mean, std, elite_actions, smoothing, min_std):
    """Smoothed Gaussian refit to the elites: (n_steps, *shape) mean and std."""
    new_mean = elite_actions.mean(axis=0)
    new_std = elite_actions.std(axis=0)
    mean = (1.0 - smoothing) * mean + smoothing * new_mean
    std = jnp.maximum((1.0 - smoothing) * std + smoothing * new_std, min_std)
    return mean, std


def make_train(config, task: FunctionalEnv, params: Any):
    """Build the jittable ``train(key, hyper)`` for ``task`` at ``params``.

    ``config``: ``CEMConfig`` (open-loop sequences, returns ``CEMResult``) or
    ``PolicyCEMConfig`` (policy weights, returns ``PolicyCEMResult``).

    Raises:
        TypeError: another config type, or an unsupported action space.
    """
    if isinstance(config, PolicyCEMConfig):
        return _make_train_policy(config, task, params)
    if not isinstance(config, CEMConfig):
        raise TypeError(f"config must be a CEMConfig or PolicyCEMConfig, got {type(config).__name__}")
    space = task.action_space(params)
    if not isinstance(space, (gym.spaces.Discrete, gym.spaces.Box, gym.spaces.MultiBinary)):
        raise TypeError(f"CEM supports Discrete, Box and MultiBinary action spaces, got {space}")
    discrete = isinstance(space, gym.spaces.Discrete)
    binary = isinstance(space, gym.spaces.MultiBinary)
    box = not (discrete or binary)
    n_actions = int(space.n) if discrete else None
    low = jnp.asarray(space.low, jnp.float64) if box else None
    high = jnp.asarray(space.high, jnp.float64) if box else None
    shape = () if discrete else tuple(np.atleast_1d(space.shape)) if binary else tuple(space.shape)
    cache = task.precompute(params)

    def evaluate(key, actions):
        keys = jax.random.split(key, actions.shape[0])
        returns, _ = jax.vmap(lambda k, a: open_loop_return(task, params, cache, k, a))(keys, actions)
        return returns

    def sample(key, dist):
        if discrete:
            logits = jnp.log(jnp.maximum(dist, 1e-12))
            draws = jax.random.categorical(key, logits, shape=(config.population, config.n_steps))
            return draws.astype(jnp.int32)
        if binary:
            draws = jax.random.bernoulli(key, dist, (config.population,) + dist.shape)
            return draws.astype(jnp.int32)
        mean, std = dist
        noise = jax.random.normal(key, (config.population, config.n_steps) + shape)
        return jnp.clip(mean + std * noise, low, high)

    def train(key, hyper):
        if discrete:
            dist = jnp.full((config.n_steps, n_actions), 1.0 / n_actions)
            best_actions = jnp.zeros((config.n_steps,), jnp.int32)
        elif binary:
            dist = jnp.full((config.n_steps,) + shape, 0.5)
            best_actions = jnp.zeros((config.n_steps,) + shape, jnp.int32)
        else:
            mid, half = 0.5 * (low + high), 0.5 * (high - low)
            mean = jnp.broadcast_to(mid, (config.n_steps,) + shape)
            std = jnp.broadcast_to(hyper["init_std"] * half, (config.n_steps,) + shape)
            dist = (mean, std)
            best_actions = mean
        carry0 = (dist, best_actions, jnp.asarray(-jnp.inf))

        def iteration(carry, key):
            dist, best_actions, best_return = carry
            k_sample, k_eval = jax.random.split(key)
            actions = sample(k_sample, dist)
            returns = evaluate(k_eval, actions)
            order = jnp.argsort(-returns)
            elite_idx = order[: config.n_elite]
            elites = actions[elite_idx]
            if discrete:
                dist = elite_update_discrete(dist, elites, n_actions, hyper["smoothing"])
            elif binary:
                dist = elite_update_bernoulli(dist, elites, hyper["smoothing"])
            else:
                min_std = hyper["min_std"] * 0.5 * (high - low)
                dist = elite_update_gaussian(*dist, elites, hyper["smoothing"], min_std)
            top = returns[order[0]]
            improved = top > best_return
            best_actions = jnp.where(improved, actions[order[0]], best_actions)
            best_return = jnp.maximum(top, best_return)
            stats = (returns[elite_idx].mean(), returns.mean(), best_return)
            return (dist, best_actions, best_return), stats

        keys = jax.random.split(key, config.iterations)
        (dist, best_actions, best_return), stats = jax.lax.scan(iteration, carry0, keys)
        return CEMResult(best_actions, best_return, stats[0], stats[1], stats[2], dist)

    return train


def train_cem(task: FunctionalEnv, params: Any = None, *, seed: int = 0, config: CEMConfig | None = None, hyper=None) -> CEMResult:
    """Convenience: jit and run CEM once on ``task`` (``n_steps`` from its horizon)."""
    params = task.default_params() if params is None else params
    if config is None:
        n_steps = getattr(task, "n_periods", None) or getattr(task, "horizon", None)
        if n_steps is None:
            raise ValueError("config must be given for tasks without n_periods or horizon")
        config = CEMConfig(n_steps=n_steps)
    hyper = default_hyper() if hyper is None else hyper
    train = jax.jit(make_train(config, task, params))
    return jax.tree_util.tree_map(np.asarray, train(jax.random.PRNGKey(seed), hyper))


# ------------------------------------------------------------------------------ policy mode
@dataclasses.dataclass(frozen=True)
class PolicyCEMConfig:
    """Static settings of CEM over policy weights.

    Attributes:
        population: candidate weight vectors per iteration.
        n_elite: elites kept per iteration.
        iterations: CEM iterations.
        n_episodes: episodes per candidate (their keys are shared by the population of an
            iteration; 1 is enough for a deterministic task).
        hidden_sizes: tanh layer widths of ``DeterministicPolicy`` (may be empty: linear).
        max_steps: steps simulated per episode (default: the task's ``horizon``); rewards
            after the episode ends are not counted.
    """

    population: int = 64
    n_elite: int = 8
    iterations: int = 50
    n_episodes: int = 1
    hidden_sizes: tuple = (16,)
    max_steps: int | None = None

    def __post_init__(self):
        for name in ("population", "n_elite", "iterations", "n_episodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
        if self.n_elite > self.population:
            raise ValueError(
                f"n_elite must be <= population, got n_elite={self.n_elite}, population={self.population}"
            )
        sizes = self.hidden_sizes
        if not isinstance(sizes, (tuple, list)) or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in sizes
        ):
            raise ValueError(f"hidden_sizes must be a sequence of positive ints, got hidden_sizes={sizes!r}")
        object.__setattr__(self, "hidden_sizes", tuple(int(s) for s in sizes))
        m = self.max_steps
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1):
            raise ValueError(f"max_steps must be a positive int or None, got max_steps={m!r}")


class DeterministicPolicy(nn.Module):
    """obs -> tanh MLP -> the env's action, float32 (see ``policy_action`` for the heads).

    ``__call__(obs)`` takes one flattened observation (obs_dim,) and returns the head's raw
    output (action_dim,); ``policy_action`` maps it to the env's action.
    """

    spec: PolicySpec
    hidden_sizes: tuple = (16,)

    @nn.compact
    def __call__(self, obs):
        x = jnp.asarray(obs, jnp.float32).reshape(-1)
        for size in self.hidden_sizes:
            x = nn.tanh(nn.Dense(size)(x))
        return nn.Dense(self.spec.action_dim)(x)


def policy_action(spec: PolicySpec, out: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """The env action of a head output: Box: mid + half * tanh(out) (reshaped to the space);
    Discrete: argmax over the valid actions (+ start); MultiBinary: out > 0."""
    if spec.kind == "box":
        return pdist.to_env_action(spec, jnp.tanh(out))
    return pdist.to_env_action(spec, pdist.mode(spec, out, mask))


def _zero_weights(policy: DeterministicPolicy):
    """(flat zero vector, unravel) of the policy's variables (ravel_pytree order)."""
    template = jax.eval_shape(policy.init, jax.random.PRNGKey(0), jnp.zeros((policy.spec.obs_dim,)))
    return ravel_pytree(jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), template))


def _episode_steps(task: FunctionalEnv, max_steps: int | None) -> int:
    steps = max_steps if max_steps is not None else getattr(task, "horizon", None)
    if steps is None:
        raise ValueError(f"max_steps must be given for {task.id}, which has no horizon")
    return int(steps)


def policy_return(task: FunctionalEnv, params: Any, policy: DeterministicPolicy, weights: Any,
                  keys: jax.Array, *, max_steps: int | None = None, cache: Any = None) -> jnp.ndarray:
    """Undiscounted returns of a deterministic policy on the episodes of ``keys``.

    Args:
        task, params: the functional core and its params.
        policy: the ``DeterministicPolicy`` the weights belong to.
        weights: its flax variables, or their flattened vector (``ravel_pytree`` order).
        keys: (n_episodes, 2) episode keys (each: reset key and per-step keys).
        max_steps: steps simulated (default ``task.horizon``); rewards after an episode ends
            (terminated or truncated) are not counted.
        cache: ``task.precompute(params)`` (computed if omitted).

    Returns:
        (n_episodes,) float returns. Jittable and vmappable over ``weights``.
    """
    n_steps = _episode_steps(task, max_steps)
    cache = task.precompute(params) if cache is None else cache
    if isinstance(weights, (jax.Array, np.ndarray)):
        weights = _zero_weights(policy)[1](jnp.asarray(weights, jnp.float32))
    spec = policy.spec

    def episode(key):
        k_reset, k_steps = jax.random.split(key)
        obs, state = task.reset(k_reset, params, cache=cache)

        def body(carry, k):
            obs, state, done, ret = carry
            action = policy_action(spec, policy.apply(weights, obs), pdist.mask_of(spec, task, state))
            obs, state, reward, term, trunc, _ = task.step(k, state, action, params, cache=cache)
            ret = ret + jnp.where(done, 0.0, reward)
            return (obs, state, done | term | trunc, ret), None

        init = (obs, state, jnp.zeros((), bool), jnp.zeros(()))
        (_, _, _, ret), _ = jax.lax.scan(body, init, jax.random.split(k_steps, n_steps))
        return ret

    return jax.vmap(episode)(keys)


class PolicyCEMResult(NamedTuple):
    best_params: Any  # flax variables of the best candidate seen (by its sampled return)
    mean_params: Any  # flax variables of the final distribution mean
    best_return: jnp.ndarray  # the best candidate's mean return on its iteration's episodes
    elite_mean: jnp.ndarray  # (iterations,) mean return of the elites
    population_mean: jnp.ndarray  # (iterations,) mean return of the population
    mean_return: jnp.ndarray  # (iterations,) return of the distribution mean at the iteration's start
    best_so_far: jnp.ndarray  # (iterations,)
    distribution: Any  # final (mean, std), flat (n_weights,) float32


def make_policy(config: PolicyCEMConfig, task: FunctionalEnv, params: Any) -> DeterministicPolicy:
    """The ``DeterministicPolicy`` of ``config`` for the spaces of ``task`` at ``params``."""
    return DeterministicPolicy(PolicySpec.from_task(task, params), config.hidden_sizes)


def _make_train_policy(config: PolicyCEMConfig, task: FunctionalEnv, params: Any):
    policy = make_policy(config, task, params)
    n_steps = _episode_steps(task, config.max_steps)
    cache = task.precompute(params)
    flat0, unravel = _zero_weights(policy)
    n_weights = flat0.size

    def evaluate(weights, keys):  # weights (n, n_weights), keys shared -> (n,) mean returns
        def one(w):
            return policy_return(task, params, policy, unravel(w), keys, max_steps=n_steps, cache=cache).mean()

        return jax.vmap(one)(weights)

    def train(key, hyper):
        smoothing = jnp.asarray(hyper["smoothing"], jnp.float32)
        min_std = jnp.asarray(hyper["min_std"], jnp.float32)
        # zero mean: the untrained policy takes the mid action / action 0 / no flags
        mean = jnp.zeros((n_weights,), jnp.float32)
        std = jnp.full((n_weights,), jnp.asarray(hyper["init_std"], jnp.float32))

        def iteration(carry, key):
            mean, std, best_w, best_return = carry
            k_sample, k_eval = jax.random.split(key)
            noise = jax.random.normal(k_sample, (config.population, n_weights), jnp.float32)
            candidates = mean + std * noise
            episode_keys = jax.random.split(k_eval, config.n_episodes)
            returns = evaluate(jnp.concatenate([candidates, mean[None]]), episode_keys)
            returns, mean_ret = returns[:-1], returns[-1]
            order = jnp.argsort(-returns)
            elite_idx = order[: config.n_elite]
            mean, std = elite_update_gaussian(mean, std, candidates[elite_idx], smoothing, min_std)
            top = returns[order[0]]
            improved = top > best_return
            best_w = jnp.where(improved, candidates[order[0]], best_w)
            best_return = jnp.maximum(top, best_return)
            stats = (returns[elite_idx].mean(), returns.mean(), mean_ret, best_return)
            return (mean, std, best_w, best_return), stats

        carry0 = (mean, std, mean, jnp.asarray(-jnp.inf, _returns_dtype()))
        (mean, std, best_w, best_return), stats = jax.lax.scan(
            iteration, carry0, jax.random.split(key, config.iterations))
        return PolicyCEMResult(unravel(best_w), unravel(mean), best_return, stats[0], stats[1], stats[2],
                               stats[3], (mean, std))

    return train


def _returns_dtype():
    """dtype of the returns (float64 where x64 is on, as the envs enable it)."""
    return jnp.zeros(()).dtype


def train_cem_policy(task: FunctionalEnv, params: Any = None, *, seed: int = 0,
                     config: PolicyCEMConfig | None = None, hyper=None) -> PolicyCEMResult:
    """Convenience: jit and run policy-mode CEM once on ``task``; numpy arrays out."""
    params = task.default_params() if params is None else params
    config = PolicyCEMConfig() if config is None else config
    hyper = default_hyper() if hyper is None else hyper
    train = jax.jit(make_train(config, task, params))
    return jax.tree_util.tree_map(np.asarray, train(jax.random.PRNGKey(seed), hyper))
