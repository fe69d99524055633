"""Cross-entropy method over open-loop action sequences, jitted end to end.

``make_train(config, task, params)`` returns ``train(key, hyper)``: static settings (sizes) in
``config``, traced hyperparameters in ``hyper``, so ``jax.vmap(jax.vmap(train))`` sweeps seeds x
hyperparameters in one XLA program. The population is evaluated with ``vmap`` through the
functional core (``open_loop_return``).

Discrete action spaces: independent categorical distributions per time slot, updated towards
the elites' action frequencies with smoothing (Rubinstein & Kroese's CEM for combinatorial
problems). Box action spaces: independent Gaussians per slot, clipped to the space's bounds
when sampling (the sampler's choice, not the env's: the env never clips).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

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
    and minimum std of the Gaussian (Box spaces, in units of the action range)."""
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
    distribution: Any  # final probabilities (discrete) or (mean, std) (Box)


def elite_update_discrete(probs, elite_actions, n_actions, smoothing):
    """New per-slot probabilities: (1 - s) p + s * frequency of each action among elites.

    Args:
        probs: (n_steps, n_actions). elite_actions: (n_elite, n_steps) ints.
    """
    freq = jax.nn.one_hot(elite_actions, n_actions).mean(axis=0)
    return (1.0 - smoothing) * probs + smoothing * freq


def elite_update_gaussian(mean, std, elite_actions, smoothing, min_std):
    """Smoothed Gaussian refit to the elites: (n_steps, *shape) mean and std."""
    new_mean = elite_actions.mean(axis=0)
    new_std = elite_actions.std(axis=0)
    mean = (1.0 - smoothing) * mean + smoothing * new_mean
    std = jnp.maximum((1.0 - smoothing) * std + smoothing * new_std, min_std)
    return mean, std


def make_train(config: CEMConfig, task: FunctionalEnv, params: Any):
    """Build the jittable ``train(key, hyper) -> CEMResult`` for ``task`` at ``params``."""
    space = task.action_space(params)
    if not isinstance(space, (gym.spaces.Discrete, gym.spaces.Box)):
        raise TypeError(f"CEM supports Discrete and Box action spaces, got {space}")
    discrete = isinstance(space, gym.spaces.Discrete)
    n_actions = int(space.n) if discrete else None
    low = None if discrete else jnp.asarray(space.low, jnp.float64)
    high = None if discrete else jnp.asarray(space.high, jnp.float64)
    shape = () if discrete else tuple(space.shape)
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
        mean, std = dist
        noise = jax.random.normal(key, (config.population, config.n_steps) + shape)
        return jnp.clip(mean + std * noise, low, high)

    def train(key, hyper):
        if discrete:
            dist = jnp.full((config.n_steps, n_actions), 1.0 / n_actions)
            best_actions = jnp.zeros((config.n_steps,), jnp.int32)
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
        n_steps = getattr(task, "n_periods", None)
        if n_steps is None:
            raise ValueError("config must be given for tasks without n_periods")
        config = CEMConfig(n_steps=n_steps)
    hyper = default_hyper() if hyper is None else hyper
    train = jax.jit(make_train(config, task, params))
    return jax.tree_util.tree_map(np.asarray, train(jax.random.PRNGKey(seed), hyper))
