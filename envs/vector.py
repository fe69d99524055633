"""A natively batched Gymnasium VectorEnv: one jitted vmap over the functional core."""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium.vector.utils import batch_space

from qsmgym.envs.core import FunctionalEnv
from qsmgym.envs.shell import validate_actions


def _batched_fns(task: FunctionalEnv):
    def split(keys):
        both = jax.vmap(jax.random.split)(keys)
        return both[:, 0], both[:, 1]

    def reset(keys, params, cache):
        keys, sub = split(keys)
        obs, states = jax.vmap(lambda k: task.reset(k, params, cache=cache))(sub)
        return keys, obs, states

    def step(keys, states, actions, needs_reset, params, cache):
        keys, sub = split(keys)
        obs, nstates, rew, term, trunc, info = jax.vmap(
            lambda k, s, a: task.step(k, s, a, params, cache=cache)
        )(sub, states, actions)
        obs_r, states_r = jax.vmap(lambda k: task.reset(k, params, cache=cache))(sub)

        def pick(a, b):
            mask = needs_reset.reshape(needs_reset.shape + (1,) * (a.ndim - 1))
            return jnp.where(mask, a, b)

        states = jax.tree_util.tree_map(pick, states_r, nstates)
        obs = pick(obs_r, obs)
        zero = jnp.zeros_like(term)
        rew = jnp.where(needs_reset, 0.0, rew)
        term = jnp.where(needs_reset, zero, term)
        trunc = jnp.where(needs_reset, zero, trunc)
        return keys, obs, states, rew, term, trunc, info

    return jax.jit(reset), jax.jit(step)


class JaxVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` copies of a task stepped by one jitted, vmapped call.

    Autoreset is NEXT_STEP (declared in ``metadata``): the step after an episode ends resets
    that sub-env, ignores its action, and returns reward 0 with terminated = truncated = False.
    Seeds: ``reset(seed=s)`` gives sub-env i the key chain of ``PRNGKey(s + i)``, so it matches
    the Gymnasium shell reset with seed s + i. Infos hold arrays of shape (num_envs,) with
    ``_name`` masks (False on autoreset steps).

    Args:
        env_id: registered id, or ``task=`` a constructed functional core.
        num_envs: batch size.
        **kwargs: the task's constructor arguments.

    ``reference`` (the task's physical limit and baselines) is computed on first access, as in
    the Gymnasium shell.
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, env_id: str | None = None, num_envs: int = 1, *, task: FunctionalEnv | None = None, **kwargs):
        from qsmgym.envs.registry import make_task

        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got num_envs={num_envs!r}")
        if task is None:
            if env_id is None:
                raise ValueError("env_id must be given when task is None")
            task = make_task(env_id, **kwargs)
        self.task = task
        self.num_envs = int(num_envs)
        self.params = task.default_params()
        self.cache = task.precompute(self.params)
        self.single_observation_space = task.observation_space(self.params)
        self.single_action_space = task.action_space(self.params)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._jit_reset, self._jit_step = _batched_fns(task)
        self._keys = None
        self._states = None
        self._needs_reset = None

    @functools.cached_property
    def reference(self) -> dict[str, float]:
        """The task's physical limit and baselines (``task.references(params)``)."""
        return self.task.references(self.params, cache=self.cache)

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        super().reset(seed=seed if isinstance(seed, (int, type(None))) else None)
        if seed is None:
            seeds = self.np_random.integers(0, 2**31 - 1, self.num_envs)
        elif isinstance(seed, (int, np.integer)):
            seeds = int(seed) + np.arange(self.num_envs)
        else:
            seeds = np.asarray(seed)
            if seeds.shape != (self.num_envs,):
                raise ValueError(f"seed must be an int or {self.num_envs} ints, got seed={seed!r}")
        self._keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds, jnp.uint32))
        self._keys, obs, self._states = self._jit_reset(self._keys, self.params, self.cache)
        self._needs_reset = jnp.zeros(self.num_envs, bool)
        return np.asarray(obs, dtype=np.float32), {}

    def step(self, actions: Any):
        if self._states is None:
            raise RuntimeError("call reset() before step()")
        actions = validate_actions(self.single_action_space, actions, batch=self.num_envs)
        out = self._jit_step(self._keys, self._states, actions, self._needs_reset, self.params, self.cache)
        self._keys, obs, self._states, rew, term, trunc, info = out
        obs, rew, term, trunc, info, was_reset = jax.device_get(
            (obs, rew, term, trunc, info, self._needs_reset)
        )
        self._needs_reset = jnp.asarray(np.logical_or(term, trunc))
        valid = ~np.asarray(was_reset)
        infos = {}
        for k, v in info.items():
            infos[k] = np.asarray(v)
            infos["_" + k] = valid
        return (
            np.asarray(obs, dtype=np.float32),
            np.asarray(rew, dtype=np.float64),
            np.asarray(term, dtype=bool),
            np.asarray(trunc, dtype=bool),
            infos,
        )
