"""The functional-core contract shared by every task (gymnax-1.0 shaped).

A task subclasses ``FunctionalEnv`` and writes only its physics:

    default_params()                         -> params pytree (physical constants, vmappable)
    precompute(params)                       -> derived constants (propagators); pure in params
    reset_env(key, params, cache)            -> (obs, state)
    step_env(key, state, action, params, cache) -> (obs, state, reward, terminated, info)
    observation_space(params), action_space(params)   gymnasium spaces of one env
    references(params, cache)                -> physical limit and baselines (floats)

The base class adds the public contract:

    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

with truncation from an optional time limit (``max_episode_steps``; never set by a task's own
fixed horizon, which is termination) and ``step_autoreset`` for fully jitted agents.

Derived constants are never stored in params: ``precompute(params)`` computes them, and every
entry point takes ``cache=`` (keyword-only) so callers who step many times compute them once.
Omitting it is always correct, only slower.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from qsmgym.physics.precision import ensure_x64

Info = dict[str, jnp.ndarray]


class FunctionalEnv:
    """Base class of every task's functional core. Subclasses set ``name`` and ``version``.

    Args:
        max_episode_steps: optional time limit in steps; reaching it before the task
            terminates sets ``truncated``. ``None`` (default) means no time limit.
    """

    name: str = "FunctionalEnv"
    version: int = 0

    def __init__(self, *, max_episode_steps: int | None = None):
        ensure_x64()
        if max_episode_steps is not None and (
            isinstance(max_episode_steps, bool)
            or not isinstance(max_episode_steps, int)
            or max_episode_steps < 1
        ):
            raise ValueError(
                f"max_episode_steps must be a positive int or None, got {max_episode_steps!r}"
            )
        self.max_episode_steps = max_episode_steps

    @property
    def id(self) -> str:
        """The Gymnasium id, e.g. ``qsm/KickedTopSensor-v0``."""
        return f"qsm/{self.name}-v{self.version}"

    # --- to be written by each task ------------------------------------------------------
    def default_params(self) -> Any:
        raise NotImplementedError

    def precompute(self, params: Any) -> Any:
        """Derived constants of ``params`` (e.g. propagators). Default: none."""
        return None

    def reset_env(self, key: jax.Array, params: Any, cache: Any) -> tuple[jnp.ndarray, Any]:
        raise NotImplementedError

    def step_env(
        self, key: jax.Array, state: Any, action: Any, params: Any, cache: Any
    ) -> tuple[jnp.ndarray, Any, jnp.ndarray, jnp.ndarray, Info]:
        raise NotImplementedError

    def observation_space(self, params: Any):
        raise NotImplementedError

    def action_space(self, params: Any):
        raise NotImplementedError

    def references(self, params: Any, *, cache: Any = None) -> dict[str, float]:
        raise NotImplementedError

    # --- the public contract -------------------------------------------------------------
    def _cache(self, params: Any, cache: Any) -> Any:
        return self.precompute(params) if cache is None else cache

    def reset(self, key: jax.Array, params: Any, *, cache: Any = None) -> tuple[jnp.ndarray, Any]:
        """Start an episode. Returns (obs, state)."""
        return self.reset_env(key, params, self._cache(params, cache))

    def step(
        self, key: jax.Array, state: Any, action: Any, params: Any, *, cache: Any = None
    ) -> tuple[jnp.ndarray, Any, jnp.ndarray, jnp.ndarray, jnp.ndarray, Info]:
        """Advance one step. Returns (obs, state, reward, terminated, truncated, info).

        No auto-reset: a state past termination keeps evolving; see ``step_autoreset``.
        """
        obs, state, reward, terminated, info = self.step_env(
            key, state, action, params, self._cache(params, cache)
        )
        if self.max_episode_steps is None:
            truncated = jnp.zeros_like(terminated)
        else:
            truncated = jnp.logical_and(state.time >= self.max_episode_steps, ~terminated)
        return obs, state, reward, terminated, truncated, info

    def step_autoreset(
        self, key: jax.Array, state: Any, action: Any, params: Any, *, cache: Any = None
    ) -> tuple[jnp.ndarray, Any, jnp.ndarray, jnp.ndarray, jnp.ndarray, Info]:
        """``step`` with same-step auto-reset, for fully jitted training loops.

        When the step ends the episode, the returned obs/state are those of a fresh episode
        and ``info["final_obs"]`` holds the last observation of the finished one (needed to
        bootstrap the value through truncation).
        """
        cache = self._cache(params, cache)
        key_step, key_reset = jax.random.split(key)
        obs, next_state, reward, terminated, truncated, info = self.step(
            key_step, state, action, params, cache=cache
        )
        obs_reset, state_reset = self.reset_env(key_reset, params, cache)
        done = jnp.logical_or(terminated, truncated)
        state_out = jax.tree_util.tree_map(
            lambda a, b: jnp.where(done, a, b), state_reset, next_state
        )
        obs_out = jnp.where(done, obs_reset, obs)
        info = dict(info, final_obs=obs)
        return obs_out, state_out, reward, terminated, truncated, info
