"""physics/prng: uniform and normal draws equal jax.random's bit for bit (exact equality, no
tolerance: the module's claim is the same stream with Threefry's rounds unrolled)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qsmgym.physics import prng

SHAPES = [(), (1,), (7,), (480,), (480, 1), (3, 5, 2)]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_uniform_and_normal_equal_jax_random_bit_for_bit(shape, dtype):
    for seed in (0, 1, 2**31 - 1):
        key = jax.random.PRNGKey(seed)
        for ours, theirs in [(prng.uniform(key, shape, dtype), jax.random.uniform(key, shape, dtype)),
                             (prng.uniform(key, shape, dtype, -2.5, 4.0), jax.random.uniform(key, shape, dtype, -2.5, 4.0)),
                             (prng.normal(key, shape, dtype), jax.random.normal(key, shape, dtype))]:
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_equal_under_jit_and_vmap_over_split_keys():
    keys = jax.random.split(jax.random.PRNGKey(7), 64)

    def draws(rng):
        return jax.jit(jax.vmap(lambda k: (rng.uniform(k, (480,), jnp.float32), rng.normal(k, (480, 1), jnp.float32))))(keys)

    for ours, theirs in zip(draws(prng), draws(jax.random)):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_unrolled_hash_is_threefry_2x32():
    # the Threefry-2x32 known-answer vectors (Random123's kat_vectors, 20 rounds), as JAX's own
    # tests use them
    cases = [((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
             ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
             ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]
    for key, count, expected in cases:
        u32 = lambda v: jnp.asarray(np.uint32(v))
        y = prng.threefry2x32(u32(key[0]), u32(key[1]), u32(count[0]), u32(count[1]))
        assert (int(y[0]), int(y[1])) == expected


def test_other_keys_fall_back_to_jax_random():
    typed = jax.random.key(3)  # a typed key: not the raw uint32[2] fast path
    for key in (typed, jax.random.key(3, impl="rbg")):
        for dtype in (jnp.float32, jnp.float64):
            np.testing.assert_array_equal(np.asarray(prng.uniform(key, (5,), dtype)),
                                          np.asarray(jax.random.uniform(key, (5,), dtype)))
            np.testing.assert_array_equal(np.asarray(prng.normal(key, (5,), dtype)),
                                          np.asarray(jax.random.normal(key, (5,), dtype)))
