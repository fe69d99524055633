"""``jax.random.uniform`` and ``jax.random.normal`` bit for bit, with Threefry's rounds unrolled.

JAX lowers its Threefry-2x32 hash on the CPU as a ``fori_loop`` of 5 iterations (a rolled loop:
it compiles faster). For the particle filters' per-step draws (256 filters x 480 particles in
the NV-DC-24 training step) that loop is slow: each iteration is its own kernel over the whole
array, with the loop state copied between them. In session 18's profile of the training step,
drawing the resampling uniforms and the jitter normals took ~70 ms of the 210 ms forward pass.
The same hash with its 20 rounds written out is one fused element-wise kernel.

``uniform`` and ``normal`` here compute exactly what ``jax.random.uniform`` and
``jax.random.normal`` return for a raw ``uint32[2]`` Threefry key under JAX's default
``jax_threefry_partitionable=True`` (bits = x0 ^ x1 of the hash of the 64-bit counter
(0, i), i the flat index; the mantissa trick of ``jax.random.uniform``; sqrt(2) erf_inv(u)
for the normal). The tests check equality bit for bit, under jit and vmap, in float32 and
float64. For any other key (typed keys, another PRNG implementation) or setting they call
``jax.random`` itself, so the streams never silently differ from JAX's.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(x, r: int):
    return lax.shift_left(x, np.uint32(r)) | lax.shift_right_logical(x, np.uint32(32 - r))


def threefry2x32(k1, k2, x1, x2):
    """Threefry-2x32 with 20 rounds (Salmon et al., SC'11), unrolled: the same function as
    JAX's ``threefry2x32_p``. All arguments uint32, broadcastable; returns (y1, y2)."""
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x = [x1 + ks[0], x2 + ks[1]]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x[0] = x[0] + x[1]
            x[1] = _rotl(x[1], r) ^ x[0]
        x[0] = x[0] + ks[(i + 1) % 3]
        x[1] = x[1] + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x[0], x[1]


def _fast_path(key) -> bool:
    return (isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape == (2,)
            and jax.config.jax_default_prng_impl == "threefry2x32" and jax.config.jax_threefry_partitionable)


def _hash(key, shape):
    """The two Threefry words for the 64-bit counters (0, i), i the flat index in ``shape``."""
    size = math.prod(shape)
    if size >= 2**32:
        raise ValueError(f"shape must have fewer than 2**32 elements, got shape={shape!r}")
    counter = lax.iota(np.uint32, size).reshape(shape)
    return threefry2x32(key[0], key[1], jnp.zeros((), np.uint32), counter)


def _bits32(key, shape) -> jnp.ndarray:
    y1, y2 = _hash(key, shape)
    return y1 ^ y2


def _bits64(key, shape) -> jnp.ndarray:
    y1, y2 = _hash(key, shape)
    return lax.shift_left(y1.astype(np.uint64), np.uint64(32)) | y2.astype(np.uint64)


def uniform(key, shape=(), dtype=jnp.float32, minval=0.0, maxval=1.0) -> jnp.ndarray:
    """``jax.random.uniform(key, shape, dtype, minval, maxval)``, bit for bit (float32/float64)."""
    shape = tuple(int(s) for s in shape)
    dtype = jnp.dtype(dtype)
    if not _fast_path(key) or dtype not in (jnp.dtype(np.float32), jnp.dtype(np.float64)):
        return jax.random.uniform(key, shape, dtype, minval, maxval)
    finfo = jnp.finfo(dtype)
    if dtype == np.float32:
        bits, uint = _bits32(key, shape), np.uint32
    else:
        bits, uint = _bits64(key, shape), np.uint64
    float_bits = lax.shift_right_logical(bits, uint(finfo.bits - finfo.nmant)) | np.array(1.0, dtype).view(uint)
    floats = lax.bitcast_convert_type(float_bits, dtype) - jnp.asarray(1.0, dtype)
    minval = lax.convert_element_type(minval, dtype)
    maxval = lax.convert_element_type(maxval, dtype)
    return lax.max(minval, floats * (maxval - minval) + minval)


def normal(key, shape=(), dtype=jnp.float32) -> jnp.ndarray:
    """``jax.random.normal(key, shape, dtype)``, bit for bit (float32/float64)."""
    shape = tuple(int(s) for s in shape)
    dtype = jnp.dtype(dtype)
    if not _fast_path(key) or dtype not in (jnp.dtype(np.float32), jnp.dtype(np.float64)):
        return jax.random.normal(key, shape, dtype)
    lo = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype), dtype=dtype)
    u = uniform(key, shape, dtype, lo, np.array(1.0, dtype))
    return lax.mul(np.array(np.sqrt(2), dtype), lax.erf_inv(u))
