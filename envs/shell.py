"""The one Gymnasium shell around any functional core: NumPy in, NumPy out."""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from qsmgym.envs.core import FunctionalEnv


def validate_actions(space: gym.spaces.Space, action: Any, batch: int | None = None) -> np.ndarray:
    """Check an action (or a batch of ``batch`` actions) against ``space``; never clip.

    Raises:
        ValueError: wrong shape, non-finite values, non-integers for a discrete space,
            or values outside the space, naming the offending value.
        TypeError: an action that is not numeric.
    """
    if (
        batch is None
        and isinstance(space, gym.spaces.Discrete)
        and isinstance(action, (int, np.integer))
        and not isinstance(action, bool)
    ):  # fast path: a plain integer
        if not int(space.start) <= action < int(space.start + space.n):
            lo, hi = int(space.start), int(space.start + space.n)
            raise ValueError(f"action must lie in [{lo}, {hi}) for {space}, got action={action!r}")
        return np.int32(action)
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
    if isinstance(space, gym.spaces.MultiBinary):
        shape = prefix + tuple(space.shape)
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got shape {arr.shape}: {action!r}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite, got {name}={action!r}")
        if not np.all((arr == 0) | (arr == 1)):
            raise ValueError(f"{name} must be 0 or 1 for {space}, got {name}={action!r}")
        return arr.astype(np.int32)
    raise TypeError(f"unsupported action space {space}")  # pragma: no cover


def _step_fn(task: FunctionalEnv):
    """Jittable step that also packs every output leaf into one float64 vector: one transfer
    to NumPy per step instead of one per array (the transfers dominated the shell's cost)."""

    def step(sub, state, action, params, cache):
        obs, state, reward, term, trunc, info = task.step(sub, state, action, params, cache=cache)
        leaves = jax.tree_util.tree_leaves((obs, reward, term, trunc, info))
        packed = jnp.concatenate([jnp.ravel(x).astype(jnp.float64) for x in leaves])
        return state, packed

    return step


def _unpacker(task: FunctionalEnv, params, cache, state, action):
    """Inverse of the packing in ``_step_fn``: float64 vector -> (obs, reward, term, trunc, info)."""
    shapes = jax.eval_shape(
        lambda: task.step(jax.random.PRNGKey(0), state, action, params, cache=cache)
    )
    out_tree = (shapes[0], shapes[2], shapes[3], shapes[4], shapes[5])
    leaves, treedef = jax.tree_util.tree_flatten(out_tree)
    for leaf in leaves:
        if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            raise TypeError("step outputs must be real to be packed")
    sizes = [int(np.prod(leaf.shape)) for leaf in leaves]
    offsets = np.cumsum([0] + sizes)

    def unpack(packed: np.ndarray):
        parts = [
            packed[offsets[i] : offsets[i + 1]].reshape(leaf.shape).astype(leaf.dtype)
            for i, leaf in enumerate(leaves)
        ]
        return jax.tree_util.tree_unflatten(treedef, parts)

    return unpack


@jax.jit
def _key_chain(key):
    """The next KEY_BLOCK links of the chain key -> split(key) = (next key, subkey).

    Returns (last key, subkeys). Splitting inside the step's executable cost ~90 us per step
    (threefry's loop); one scan per KEY_BLOCK steps gives the same keys in the same order.
    """

    def link(k, _):
        k, sub = jax.random.split(k)
        return k, sub

    return jax.lax.scan(link, key, None, length=KEY_BLOCK)


KEY_BLOCK = 64

def _jitted(task: FunctionalEnv) -> tuple[Any, Any]:
    """The shell's jitted reset(sub, params, cache) and packed step (``_step_fn``)."""
    return jax.jit(lambda sub, params, cache: task.reset(sub, params, cache=cache)), jax.jit(_step_fn(task))


# (env_id, kwargs) -> (task, jitted reset, jitted step), shared by the shells made with them
_SHARED: OrderedDict = OrderedDict()
_SHARED_MAX = 16


def _shared_core(env_id: str, kwargs: dict) -> tuple[FunctionalEnv, Any, Any]:
    """The task and its jitted reset and step for ``env_id`` and ``kwargs``, shared by every
    shell made with the same ones in this process (the 16 latest), so that the 2nd..Nth env of
    a ``DummyVecEnv`` or of repeated ``gym.make`` calls reuses the compiled programs (and the
    task's cached references) instead of compiling again (0.4-1.5 s per env on CPU). Tasks
    are immutable functional cores, so sharing one is safe. Unhashable kwargs: no sharing."""
    from qsmgym.envs.registry import make_task

    try:
        key = (env_id, tuple((k, type(v), v) for k, v in sorted(kwargs.items())))
        hash(key)
    except TypeError:
        key = None
    if key is not None and key in _SHARED:
        _SHARED.move_to_end(key)
        return _SHARED[key]
    task = make_task(env_id, **kwargs)
    core = (task, *_jitted(task))
    if key is not None:
        _SHARED[key] = core
        while len(_SHARED) > _SHARED_MAX:
            _SHARED.popitem(last=False)
    return core


class GymnasiumEnv(gym.Env):
    """Gymnasium shell for a qsm-gym functional core (see the task's docstring: ``env.task``).

    Args:
        env_id: a registered id (``qsm/<Name>-v<N>``); or pass ``task=`` directly. Shells
            made from the same id and kwargs share the task and its compiled reset and step
            (``_shared_core``).
        task: a constructed functional core, instead of ``env_id`` and kwargs.
        **kwargs: the task's constructor arguments.

    Attributes:
        task, params, cache: the functional core, its params and derived constants.
        reference: the task's physical limit and baselines (``task.references(params)``),
            computed on first access and kept: some tasks estimate their baselines by Monte
            Carlo (BayesianMagnetometry rolls out three heuristic policies, 8 s on a CPU), which
            ``gym.make`` need not pay when nothing reads them.

    Randomness: ``reset(seed=s)`` starts the JAX key chain ``PRNGKey(s)``; each reset and step
    splits it once, exactly as the vector env does for env i with seed s + i.
    """

    metadata = {"render_modes": []}

    def __init__(self, env_id: str | None = None, *, task: FunctionalEnv | None = None, render_mode=None, **kwargs):
        if render_mode is not None:
            raise ValueError(f"render_mode must be None (no rendering yet), got render_mode={render_mode!r}")
        if task is None:
            if env_id is None:
                raise ValueError("env_id must be given when task is None")
            task, jit_reset, jit_step = _shared_core(env_id, kwargs)
        elif kwargs:
            raise ValueError(f"pass kwargs to the task, not the shell, got {sorted(kwargs)}")
        else:
            jit_reset, jit_step = _jitted(task)
        self.task = task
        self.params = task.default_params()
        self.cache = task.precompute(self.params)
        self.observation_space = task.observation_space(self.params)
        self.action_space = task.action_space(self.params)
        self._jit_reset, self._jit_step = jit_reset, jit_step
        self._key = None
        self._subkeys = None
        self._next = KEY_BLOCK
        self._state = None
        self._done = False
        self._unpack = None

    @functools.cached_property
    def reference(self) -> dict[str, float]:
        """The task's physical limit and baselines (see the class docstring)."""
        return self.task.references(self.params, cache=self.cache)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or self._key is None:
            if seed is None:
                seed = int(self.np_random.integers(0, 2**31 - 1))
            self._key = jax.random.PRNGKey(seed)
            self._next = KEY_BLOCK
        obs, self._state = self._jit_reset(self._subkey(), self.params, self.cache)
        self._done = False
        return np.asarray(obs, dtype=np.float32), {}

    def step(self, action):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        if self._done:
            raise RuntimeError("the episode has ended (terminated or truncated): call reset()")
        action = validate_actions(self.action_space, action)
        if self._unpack is None:
            self._unpack = _unpacker(self.task, self.params, self.cache, self._state, action)
        self._state, packed = self._jit_step(
            self._subkey(), self._state, action, self.params, self.cache
        )
        obs, reward, terminated, truncated, info = self._unpack(np.asarray(packed))
        terminated, truncated = bool(terminated), bool(truncated)
        self._done = terminated or truncated
        info = {k: float(v) if np.ndim(v) == 0 else v for k, v in info.items()}
        return np.asarray(obs, dtype=np.float32), float(reward), terminated, truncated, info

    def _subkey(self):
        """Next subkey of the chain (see ``_key_chain``)."""
        if self._next == KEY_BLOCK:
            self._key, subkeys = _key_chain(self._key)
            self._subkeys = np.asarray(subkeys)  # NumPy: indexing a jax.Array costs a dispatch
            self._next = 0
        sub = self._subkeys[self._next]
        self._next += 1
        return sub

    @property
    def state(self):
        """The functional-core state (a pytree of JAX arrays)."""
        return self._state
