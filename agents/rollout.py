"""Open-loop rollouts through any functional core (jittable, vmappable)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from qsmgym.envs.core import FunctionalEnv


def open_loop_return(
    task: FunctionalEnv, params: Any, cache: Any, key: jax.Array, actions: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Undiscounted return of an action sequence (n_steps, *action_shape).

    Rewards after the episode ends (terminated or truncated) are not counted.
    Returns (return, per-step rewards with zeros after the end).
    """
    key_reset, key_steps = jax.random.split(key)
    _, state = task.reset(key_reset, params, cache=cache)
    keys = jax.random.split(key_steps, actions.shape[0])

    def body(carry, inputs):
        state, done = carry
        k, a = inputs
        _, state, reward, term, trunc, _ = task.step(k, state, a, params, cache=cache)
        reward = jnp.where(done, 0.0, reward)
        return (state, done | term | trunc), reward

    (_, _), rewards = jax.lax.scan(body, (state, jnp.zeros((), bool)), (keys, actions))
    return rewards.sum(), rewards
