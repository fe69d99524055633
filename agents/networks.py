"""Actor-critic networks of the PPO agent (flax.linen), MLP and LSTM, float32.

One call signature for both, on time-major sequences:

    carry, pi, value = net.apply(variables, carry, obs, resets)
    # obs (T, B, obs_dim), resets (T, B) bool -> pi (see distributions.log_prob), value (T, B)

``resets[t]`` is True when ``obs[t]`` is the first observation of an episode (the previous
step ended one): the LSTM carry is set to zero before that step, so no memory crosses an
episode boundary. The MLP's carry is the empty tuple and it ignores ``resets``. Observations
are cast to float32 whatever their dtype (the envs' physics runs in float64; the policy does
not need it).
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qsmgym.agents.distributions import PolicySpec

NETWORKS = ("mlp", "lstm")


def householder_q(z: jnp.ndarray) -> jnp.ndarray:
    """The Q factor of z = QR (z: (..., n, k), n >= k) with diag(R) >= 0, by Householder
    reflections in plain jax.numpy (no LAPACK call). Batch axes via ``jax.vmap``.

    Why not ``jnp.linalg.qr``: in jaxlib 0.10.2 a batched LAPACK call (geqrf, potrf, ...) on CPU
    splits its batch over XLA's intra-op thread pool and blocks until the pieces finish. When
    as many such calls run at once as the pool has threads (2 on a 2-core machine: e.g. the
    orthogonal initialisers of several layers, vmapped over seeds), every thread waits for work
    queued behind it and the program never finishes (docs/results/README.md, "the XLA CPU
    hang"). Reportedly jax 0.11.2 compiles that parallel path out; this project pins 0.10.2.

    Same matrix as ``jax.random.orthogonal``'s ``qr`` + sign fix up to rounding (the QR with a
    positive diagonal is unique for full-rank z)."""
    if z.ndim > 2:
        return jax.vmap(householder_q)(z)
    n, k = z.shape
    if n < k:
        raise ValueError(f"householder_q needs rows >= columns, got shape {z.shape}")
    rows = jnp.arange(n)

    def reflect(j, carry):
        a, vs = carry
        x = jnp.where(rows >= j, a[:, j], 0.0)
        norm = jnp.sqrt(jnp.sum(x * x))
        alpha = -jnp.where(x[j] < 0, -1.0, 1.0).astype(z.dtype) * norm  # R_jj; no cancellation in v
        v = x - alpha * (rows == j)
        v_norm = jnp.sqrt(jnp.sum(v * v))
        v = jnp.where(v_norm > 0, v / jnp.where(v_norm > 0, v_norm, 1.0), 0.0)
        a = a - 2.0 * jnp.outer(v, v @ a)
        return a, vs.at[j].set(v)

    r, vs = jax.lax.fori_loop(0, k, reflect, (z, jnp.zeros((k, n), z.dtype)))
    q = jax.lax.fori_loop(0, k, lambda i, q: q - 2.0 * jnp.outer(vs[k - 1 - i], vs[k - 1 - i] @ q),
                          jnp.eye(n, k, dtype=z.dtype))
    sign = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(z.dtype)
    return q * sign


def orthogonal(scale: float = 1.0, column_axis: int = -1):
    """``jax.nn.initializers.orthogonal`` (same draws, same semantics) with the QR done by
    ``householder_q`` instead of LAPACK, so that initialising under vmap cannot hit the
    jaxlib 0.10.2 thread-pool deadlock described there."""

    def init(key, shape, dtype=jnp.float32):
        if len(shape) < 2:
            raise ValueError(f"orthogonal initializer needs at least a 2-D shape, got shape={shape}")
        n_rows, n_cols = int(np.prod(shape)) // shape[column_axis], shape[column_axis]
        z = jax.random.normal(key, (max(n_rows, n_cols), min(n_rows, n_cols)), dtype)
        q = householder_q(z)
        q = q.T if n_rows < n_cols else q
        q = jnp.reshape(q, tuple(np.delete(shape, column_axis)) + (shape[column_axis],))
        return jnp.asarray(scale, dtype) * jnp.moveaxis(q, -1, column_axis)

    return init


def _dense(features: int, scale: float) -> nn.Dense:
    return nn.Dense(features, kernel_init=orthogonal(scale), bias_init=nn.initializers.zeros)


class _Torso(nn.Module):
    hidden_sizes: Sequence[int]

    @nn.compact
    def __call__(self, x):
        for size in self.hidden_sizes:
            x = nn.tanh(_dense(size, np.sqrt(2.0))(x))
        return x


class _ScannedLSTM(nn.Module):
    """LSTM over time with a zero carry wherever ``resets`` is True (PureJaxRL's ScannedRNN)."""

    features: int

    @functools.partial(nn.scan, variable_broadcast="params", in_axes=0, out_axes=0,
                       split_rngs={"params": False})
    @nn.compact
    def __call__(self, carry, inputs):
        x, resets = inputs
        carry = jax.tree_util.tree_map(
            lambda c: jnp.where(resets[:, None], jnp.zeros_like(c), c), carry
        )
        return nn.OptimizedLSTMCell(self.features, recurrent_kernel_init=orthogonal())(carry, x)


class ActorCritic(nn.Module):
    """Separate actor and critic heads; MLP: separate torsos; LSTM: a shared LSTM core.

    Attributes:
        spec: the policy's spaces (``PolicySpec``).
        network: "mlp" or "lstm".
        hidden_sizes: widths of the tanh layers (MLP torsos; the LSTM's input embedding
            uses the first, its heads the rest).
        lstm_size: LSTM features.
        init_log_std: initial log-std of the Box Gaussian (half-range units).
    """

    spec: PolicySpec
    network: str = "mlp"
    hidden_sizes: Sequence[int] = (64, 64)
    lstm_size: int = 64
    init_log_std: float = -0.5

    @nn.compact
    def __call__(self, carry, obs, resets):
        x = jnp.asarray(obs, jnp.float32)
        if self.network == "lstm":
            embed = nn.tanh(_dense(self.hidden_sizes[0], np.sqrt(2.0))(x))
            carry, core = _ScannedLSTM(self.lstm_size)(carry, (embed, resets))
            actor_in = critic_in = core
            actor = _Torso(tuple(self.hidden_sizes[1:]), name="actor_torso")(actor_in)
            critic = _Torso(tuple(self.hidden_sizes[1:]), name="critic_torso")(critic_in)
        else:
            actor = _Torso(tuple(self.hidden_sizes), name="actor_torso")(x)
            critic = _Torso(tuple(self.hidden_sizes), name="critic_torso")(x)
        out = _dense(self.spec.action_dim, 0.01)(actor)
        value = _dense(1, 1.0)(critic)[..., 0]
        if self.spec.kind == "box":
            log_std = self.param("log_std", nn.initializers.constant(self.init_log_std),
                                 (self.spec.action_dim,), jnp.float32)
            pi = (out, jnp.broadcast_to(log_std, out.shape))
        else:
            pi = out
        return carry, pi, value


def initial_carry(network: str, lstm_size: int, batch: int):
    """The zero carry of ``batch`` sequences: (c, h) each (batch, lstm_size), or () (MLP)."""
    if network == "lstm":
        zeros = jnp.zeros((batch, lstm_size), jnp.float32)
        return (zeros, zeros)
    return ()
