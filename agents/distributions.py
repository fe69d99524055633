"""Action distributions of the PPO policy, chosen from a task's action space.

| space | distribution | raw action stored | action sent to the env |
|---|---|---|---|
| Box | diagonal Gaussian N(mean, exp(log_std)^2) in units of the half-range | z, float32 (dim,) | mid + half * clip(z, -1, 1), reshaped to the space's shape |
| Discrete(n) | categorical over the valid actions (masked logits) | int32 () | start + index |
| MultiBinary(n) | independent Bernoullis | int32 (n,) | the sample |

Box: sample then clip, as CleanRL's PPO: the log-probability is that of the unclipped sample
z (so the importance ratio is exact for the Gaussian the update differentiates), and the
clip only makes the sample admissible (the envs refuse out-of-range actions). Every action
that reaches the env lies within the bounds. The deterministic action is clip(mean).

Masks: a task with an ``action_mask(state)`` method gives, per state, the actions that have an
effect (queried on the state the action is taken in, so it is right after an auto-reset,
unlike ``info["action_mask"]`` of the finished episode). Discrete: invalid actions get zero
probability. MultiBinary: flags outside the mask are ignored by the env, so they are left out
of the log-probability and the entropy (the policy is then the distribution over effective
actions; their draws still reach the env, which ignores them).

Everything here computes in float32 (the policy's precision).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("box", "discrete", "multibinary")
_LOG_2PI = float(np.log(2.0 * np.pi))
_MASKED_LOGIT = -1e9


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """Static description of a task's observation and action spaces, as the policy sees them.

    Attributes:
        obs_dim: length of the flattened observation.
        kind: "box", "discrete" or "multibinary".
        action_dim: Box: number of action entries (flattened); Discrete: n; MultiBinary: n.
        action_shape: the space's shape (Box and MultiBinary) or () (Discrete).
        low, high: Box bounds, flattened (tuples of floats); None otherwise.
        start: Discrete offset (``space.start``); 0 otherwise.
        has_mask: whether the task gives ``action_mask(state)``.
    """

    obs_dim: int
    kind: str
    action_dim: int
    action_shape: tuple = ()
    low: tuple | None = None
    high: tuple | None = None
    start: int = 0
    has_mask: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got kind={self.kind!r}")
        object.__setattr__(self, "action_shape", tuple(int(s) for s in self.action_shape))
        for name in ("low", "high"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))

    @classmethod
    def from_task(cls, task: Any, params: Any) -> "PolicySpec":
        """Read the spaces of ``task`` at ``params``.

        Raises:
            TypeError: an action space other than Box, Discrete, MultiBinary (1-D).
            ValueError: a Box with infinite bounds.
        """
        obs_space = task.observation_space(params)
        obs_dim = int(np.prod(obs_space.shape))
        space = task.action_space(params)
        has_mask = callable(getattr(task, "action_mask", None))
        if isinstance(space, gym.spaces.Box):
            low, high = np.asarray(space.low, np.float64).ravel(), np.asarray(space.high, np.float64).ravel()
            if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
                raise ValueError(f"PPO needs finite Box bounds, got action space {space} for {task.id}")
            return cls(obs_dim, "box", low.size, tuple(space.shape), tuple(low), tuple(high))
        if isinstance(space, gym.spaces.Discrete):
            return cls(obs_dim, "discrete", int(space.n), (), start=int(space.start), has_mask=has_mask)
        if isinstance(space, gym.spaces.MultiBinary):
            return cls(obs_dim, "multibinary", int(np.prod(space.shape)), tuple(np.atleast_1d(space.shape)),
                       has_mask=has_mask)
        raise TypeError(f"PPO supports Box, Discrete and MultiBinary action spaces, got {space}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "PolicySpec":
        return cls(**data)


def mask_of(spec: PolicySpec, task: Any, state: Any) -> jnp.ndarray:
    """(action_dim,) bool mask of one env state: the task's ``action_mask`` or all True.

    Box actions have no mask (all True, unused)."""
    if spec.has_mask and spec.kind != "box":
        return jnp.asarray(task.action_mask(state), bool).reshape(spec.action_dim)
    return jnp.ones((spec.action_dim,), bool)


def _masked_logits(logits, mask):
    return jnp.where(mask, logits, _MASKED_LOGIT)


def sample(spec: PolicySpec, key: jax.Array, pi: Any, mask: jnp.ndarray) -> jnp.ndarray:
    """Draw a raw action per batch entry. pi: network head output (see ``log_prob``)."""
    if spec.kind == "box":
        mean, log_std = pi
        return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)
    if spec.kind == "discrete":
        return jax.random.categorical(key, _masked_logits(pi, mask)).astype(jnp.int32)
    return jax.random.bernoulli(key, jax.nn.sigmoid(pi)).astype(jnp.int32)


def mode(spec: PolicySpec, pi: Any, mask: jnp.ndarray) -> jnp.ndarray:
    """The deterministic raw action: the mean (Box), the argmax (Discrete), p > 1/2 (MultiBinary)."""
    if spec.kind == "box":
        return pi[0]
    if spec.kind == "discrete":
        return jnp.argmax(_masked_logits(pi, mask), axis=-1).astype(jnp.int32)
    return (pi > 0).astype(jnp.int32)


def log_prob(spec: PolicySpec, pi: Any, raw: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Log-probability of raw actions, shape = batch shape.

    Args:
        pi: Box: (mean (..., dim), log_std (..., dim)); Discrete/MultiBinary: logits (..., n).
        raw: raw actions as returned by ``sample``.
        mask: (..., n) bool (ignored for Box).
    """
    if spec.kind == "box":
        mean, log_std = pi
        z = (raw - mean) * jnp.exp(-log_std)
        return jnp.sum(-0.5 * z**2 - log_std - 0.5 * _LOG_2PI, axis=-1)
    if spec.kind == "discrete":
        logp = jax.nn.log_softmax(_masked_logits(pi, mask), axis=-1)
        return jnp.take_along_axis(logp, raw[..., None].astype(jnp.int32), axis=-1)[..., 0]
    a = raw.astype(pi.dtype)
    per_flag = a * jax.nn.log_sigmoid(pi) + (1.0 - a) * jax.nn.log_sigmoid(-pi)
    return jnp.sum(jnp.where(mask, per_flag, 0.0), axis=-1)


def entropy(spec: PolicySpec, pi: Any, mask: jnp.ndarray) -> jnp.ndarray:
    """Entropy (nats) of the distribution, shape = batch shape (masked entries excluded)."""
    if spec.kind == "box":
        mean, log_std = pi
        return jnp.sum(jnp.broadcast_to(log_std + 0.5 * (1.0 + _LOG_2PI), mean.shape), axis=-1)
    if spec.kind == "discrete":
        logp = jax.nn.log_softmax(_masked_logits(pi, mask), axis=-1)
        return -jnp.sum(jnp.where(mask, jnp.exp(logp) * logp, 0.0), axis=-1)
    p = jax.nn.sigmoid(pi)
    per_flag = -(p * jax.nn.log_sigmoid(pi) + (1.0 - p) * jax.nn.log_sigmoid(-pi))
    return jnp.sum(jnp.where(mask, per_flag, 0.0), axis=-1)


def to_env_action(spec: PolicySpec, raw: jnp.ndarray) -> jnp.ndarray:
    """Map one raw action to the env's action (within the space; see the module table)."""
    if spec.kind == "box":
        low = jnp.asarray(spec.low, raw.dtype)
        high = jnp.asarray(spec.high, raw.dtype)
        mid, half = 0.5 * (low + high), 0.5 * (high - low)
        action = jnp.clip(mid + half * jnp.clip(raw, -1.0, 1.0), low, high)
        return action.reshape(spec.action_shape)
    if spec.kind == "discrete":
        return raw + spec.start
    return raw.reshape(spec.action_shape)
