"""The one Gymnasium shell around any functional core: NumPy in, NumPy out."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import jax
import numpy as np

from qsmgym.envs.core import FunctionalEnv


def validate_actions(space: gym.spaces.Space, action: Any, batch: int | None = None) -> np.ndarray:
    """Check an action (or a batch of ``batch`` actions) against ``space``; never clip.

    Raises:
        ValueError: wrong shape, non-finite values, non-integers for a discrete space,
            or values outside the space, naming the offending value.
        TypeError: an action that is not numeric.
    """
    name = "action" if batch is None else "actions"
    try:
        arr = np.asarray(action)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name} must be array-like, got {action!r}") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be numeric, got {name}={action!r} (dtype {arr.dtype})")
    prefix = () if batch is None else (batch,)
    if isinstance(space, gym.spaces.Discrete):
        if arr.shape != prefix and not (batch is None and arr.shape == (1,)):
            raise ValueError(f"{name} must have shape {prefix}, got shape {arr.shape}: {action!r}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite, got {name}={action!r}")
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must be integers for {space}, got {name}={action!r}")
        lo, hi = int(space.start), int(space.start + space.n)
        if np.any(arr < lo) or np.any(arr >= hi):
            raise ValueError(f"{name} must lie in [{lo}, {hi}) for {space}, got {name}={action!r}")
        return arr.astype(np.int32).reshape(prefix)
    if isinstance(space, gym.spaces.Box):
        shape = prefix + space.shape
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got shape {arr.shape}: {action!r}")
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite, got {name}={action!r}")
        if np.any(arr < space.low) or np.any(arr > space.high):
            raise ValueError(
                f"{name} must lie in [{space.low.min()}, {space.high.max()}] (not clipped), "
                f"got {name}={action!r}"
            )
        return arr
    raise TypeError(f"unsupported action space {space}")  # pragma: no cover


def _step_fn(task: FunctionalEnv):
    def step(key, state, action, params, cache):
        key, sub = jax.random.split(key)
        out = task.step(sub, state, action, params, cache=cache)
        return key, out

    return step


def _reset_fn(task: FunctionalEnv):
    def reset(key, params, cache):
        key, sub = jax.random.split(key)
        obs, state = task.reset(sub, params, cache=cache)
        return key, obs, state

    return reset


class GymnasiumEnv(gym.Env):
    """Gymnasium shell for a qsm-gym functional core (see the task's docstring: ``env.task``).

    Args:
        env_id: a registered id (``qsm/<Name>-v<N>``); or pass ``task=`` directly.
        task: a constructed functional core, instead of ``env_id`` and kwargs.
        **kwargs: the task's constructor arguments.

    Attributes:
        task, params, cache: the functional core, its params and derived constants.
        reference: the task's physical limit and baselines (``task.references(params)``).

    Randomness: ``reset(seed=s)`` starts the JAX key chain ``PRNGKey(s)``; each reset and step
    splits it once, exactly as the vector env does for env i with seed s + i.
    """

    metadata = {"render_modes": []}

    def __init__(self, env_id: str | None = None, *, task: FunctionalEnv | None = None, render_mode=None, **kwargs):
        from qsmgym.envs.registry import make_task

        if render_mode is not None:
            raise ValueError(f"render_mode must be None (no rendering yet), got render_mode={render_mode!r}")
        if task is None:
            if env_id is None:
                raise ValueError("env_id must be given when task is None")
            task = make_task(env_id, **kwargs)
        elif kwargs:
            raise ValueError(f"pass kwargs to the task, not the shell, got {sorted(kwargs)}")
        self.task = task
        self.params = task.default_params()
        self.cache = task.precompute(self.params)
        self.observation_space = task.observation_space(self.params)
        self.action_space = task.action_space(self.params)
        self.reference = task.references(self.params, cache=self.cache)
        self._jit_reset = jax.jit(_reset_fn(task))
        self._jit_step = jax.jit(_step_fn(task))
        self._key = None
        self._state = None
        self._done = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._key = jax.random.PRNGKey(seed)
        elif self._key is None:
            self._key = jax.random.PRNGKey(int(self.np_random.integers(0, 2**31 - 1)))
        self._key, obs, self._state = self._jit_reset(self._key, self.params, self.cache)
        self._done = False
        return np.asarray(obs, dtype=np.float32), {}

    def step(self, action):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        if self._done:
            raise RuntimeError("the episode has ended (terminated or truncated): call reset()")
        action = validate_actions(self.action_space, action)
        self._key, out = self._jit_step(self._key, self._state, action, self.params, self.cache)
        obs, self._state, reward, terminated, truncated, info = out
        obs, reward, terminated, truncated, info = jax.device_get(
            (obs, reward, terminated, truncated, info)
        )
        terminated, truncated = bool(terminated), bool(truncated)
        self._done = terminated or truncated
        info = {k: float(v) if np.ndim(v) == 0 else np.asarray(v) for k, v in info.items()}
        return np.asarray(obs, dtype=np.float32), float(reward), terminated, truncated, info

    @property
    def state(self):
        """The functional-core state (a pytree of JAX arrays)."""
        return self._state
