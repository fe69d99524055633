"""GRAPE: gradient ascent on open-loop control sequences through a task's functional core.

The strong non-RL baseline of every continuous-control task. The objective is the episode
return of an action sequence (``open_loop_return``), differentiated by ``jax.grad`` through
the task's ``step``; bounds are kept by the parameterisation a = mid + half * tanh(z), so no
action is ever clipped. Several random restarts run as one vmapped program and the best is
kept. For tasks with randomness at reset or in steps (e.g. a parameter drawn around its
nominal value), the gradient is that of the mean return over ``n_keys`` episodes.

    from qsmgym.agents import grape
    train = grape.make_train(grape.GrapeConfig(n_steps=50), task, params)
    result = jax.jit(train)(jax.random.PRNGKey(0), grape.default_hyper())
    result.best_return, result.actions          # (), (n_steps, *action_shape)

Shapes follow ``make_train(config, task, params) -> train(key, hyper)`` as every agent here:
static sizes in ``config``, traced hyperparameters (learning rate, initial spread) in
``hyper``, so seeds and hyperparameters vmap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from qsmgym.agents.rollout import open_loop_return
from qsmgym.envs.core import FunctionalEnv


@dataclass(frozen=True)
class GrapeConfig:
    """Static settings.

    Args:
        n_steps: actions per episode (the task's horizon).
        iterations: Adam steps per restart.
        restarts: independent random initialisations optimised in parallel (vmapped).
        n_keys: episodes per gradient estimate (1 for deterministic tasks).
    """

    n_steps: int
    iterations: int = 400
    restarts: int = 8
    n_keys: int = 1

    def __post_init__(self):
        for name in ("n_steps", "iterations", "restarts", "n_keys"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {name}={value!r}")


def default_hyper() -> dict[str, jnp.ndarray]:
    """Traced hyperparameters: Adam's initial learning rate (in z units; cosine-decayed to 1%)
    and the initial spread of z."""
    return {"learning_rate": jnp.asarray(0.05), "init_std": jnp.asarray(0.3)}


@struct.dataclass
class GrapeResult:
    actions: jnp.ndarray  # (n_steps, *action_shape) best sequence, within the action bounds
    best_return: jnp.ndarray  # () its mean return over the evaluation keys
    restart_returns: jnp.ndarray  # (restarts,) final mean return of every restart
    history: jnp.ndarray  # (iterations,) best mean return over restarts per iteration


def _box(task: FunctionalEnv, params: Any) -> gym.spaces.Box:
    space = task.action_space(params)
    if not isinstance(space, gym.spaces.Box):
        raise TypeError(f"GRAPE needs a continuous (Box) action space, got {space} for {task.id}")
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise ValueError(f"GRAPE needs finite action bounds, got {space} for {task.id}")
    return space


def make_train(
    config: GrapeConfig, task: FunctionalEnv, params: Any, *, init_actions: jnp.ndarray | None = None
) -> Callable[[jax.Array, dict], GrapeResult]:
    """Build ``train(key, hyper) -> GrapeResult`` for one task and params (jittable).

    Args:
        config: static settings.
        task, params: the functional core and its params (closed over; vmap outside over
            keys and hypers).
        init_actions: optional (n_steps, *action_shape) warm start strictly inside the
            bounds; restarts are drawn around it (restart 0 starts exactly at it).
    """
    space = _box(task, params)
    low = jnp.asarray(space.low, jnp.float64)
    high = jnp.asarray(space.high, jnp.float64)
    mid, half = (high + low) / 2, (high - low) / 2
    shape = (config.n_steps,) + space.shape
    if init_actions is None:
        z0 = jnp.zeros(shape)
    else:
        init_actions = np.asarray(init_actions, np.float64)
        if init_actions.shape != shape:
            raise ValueError(f"init_actions must have shape {shape}, got {init_actions.shape}")
        u = (init_actions - np.asarray(mid)) / np.asarray(half)
        if not np.all(np.abs(u) < 1):
            raise ValueError("init_actions must lie strictly inside the action bounds")
        z0 = jnp.arctanh(jnp.asarray(u))

    def to_actions(z):
        return mid + half * jnp.tanh(z)

    def mean_return(z, keys, cache):
        returns = jax.vmap(lambda k: open_loop_return(task, params, cache, k, to_actions(z))[0])(keys)
        return returns.mean()

    def train(key: jax.Array, hyper: dict) -> GrapeResult:
        cache = task.precompute(params)
        key_init, key_eval = jax.random.split(key)
        keys = jax.random.split(key_eval, config.n_keys)
        noise = hyper["init_std"] * jax.random.normal(key_init, (config.restarts,) + shape)
        if init_actions is not None:
            noise = noise.at[0].set(0.0)  # restart 0 starts exactly at the warm start
        z_init = z0 + noise
        # cosine decay to 1% of the rate: Adam at a fixed rate keeps oscillating near the optimum
        schedule = optax.cosine_decay_schedule(hyper["learning_rate"], config.iterations, alpha=0.01)
        opt = optax.adam(schedule)
        value_and_grad = jax.value_and_grad(lambda z: mean_return(z, keys, cache))

        def one_restart(z):
            def body(carry, _):
                z, opt_state = carry
                value, grad = value_and_grad(z)
                # ascend: optax minimises
                updates, opt_state = opt.update(jax.tree_util.tree_map(jnp.negative, grad), opt_state)
                return (optax.apply_updates(z, updates), opt_state), value

            (z, _), values = jax.lax.scan(body, (z, opt.init(z)), None, length=config.iterations)
            return z, values, mean_return(z, keys, cache)

        z_all, values, finals = jax.vmap(one_restart)(z_init)
        best = jnp.argmax(finals)
        return GrapeResult(
            actions=to_actions(z_all[best]),
            best_return=finals[best],
            restart_returns=finals,
            history=values.max(axis=0),
        )

    return train


def train_grape(
    task: FunctionalEnv,
    params: Any = None,
    config: GrapeConfig | None = None,
    *,
    seed: int = 0,
    hyper: dict | None = None,
    init_actions=None,
) -> GrapeResult:
    """Convenience: jit and run GRAPE once. ``config.n_steps`` defaults to the task's fixed
    horizon (``task.horizon``)."""
    params = task.default_params() if params is None else params
    if config is None:
        config = GrapeConfig(n_steps=int(task.horizon))
    train = make_train(config, task, params, init_actions=init_actions)
    return jax.jit(train)(jax.random.PRNGKey(seed), default_hyper() if hyper is None else hyper)
