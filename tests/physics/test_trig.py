"""physics/trig.cos: the float32 polynomial cos (and its -sin derivative) against float64
numpy on the same float32 inputs; other dtypes are jnp.cos itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qsmgym.physics import trig

# Tolerance: the Cephes minimax polynomials are good to ~6e-8 on [-pi/4, pi/4]; the three-part
# Cody-Waite reduction adds at most a few 1e-8 for |x| <= 1e4; 1.5e-7 is 1.25 ulp of 1.0 in
# float32 (jnp.cos itself is off by up to 3.3e-8 here). Measured max: 9.2e-8.
TOL = 1.5e-7


@pytest.mark.parametrize("scale", [1.0, 40.0, 1e4])
def test_float32_cos_sin_match_float64(scale):
    rng = np.random.default_rng(int(scale))
    x = rng.uniform(-scale, scale, 200_000).astype(np.float32)
    # quadrant edges and exact multiples of pi/2 (rounded to float32), where k flips
    edges = (np.arange(-40, 41) * (np.pi / 2)).astype(np.float32)
    x = np.concatenate([x, edges, np.nextafter(edges, np.float32(np.inf)), np.nextafter(edges, -np.float32(np.inf)),
                        np.float32([0.0, -0.0])])
    c, s = jax.jit(trig.cos_sin_f32)(x)
    assert c.dtype == s.dtype == jnp.float32
    ref = x.astype(np.float64)
    np.testing.assert_allclose(np.asarray(c, np.float64), np.cos(ref), rtol=0, atol=TOL)
    np.testing.assert_allclose(np.asarray(s, np.float64), np.sin(ref), rtol=0, atol=TOL)
    np.testing.assert_array_equal(np.asarray(trig.cos(jnp.asarray(x))), np.asarray(c))


def test_derivatives_are_minus_sin_and_minus_cos():
    x32 = jnp.linspace(-30.0, 30.0, 1001, dtype=jnp.float32)
    g = jax.vmap(jax.grad(trig.cos))(x32)
    np.testing.assert_allclose(np.asarray(g, np.float64), -np.sin(np.asarray(x32, np.float64)), rtol=0, atol=TOL)
    # the second derivative differentiates the sin polynomial itself (no custom rule), whose
    # derivative is a few 1e-7 off cos: measured 2.7e-7, bound 5e-7
    h = jax.vmap(jax.grad(jax.grad(trig.cos)))(x32)
    np.testing.assert_allclose(np.asarray(h, np.float64), -np.cos(np.asarray(x32, np.float64)), rtol=0, atol=5e-7)


def test_float64_is_jnp_cos_exactly():
    jax.config.update("jax_enable_x64", True)
    x = jnp.linspace(-100.0, 100.0, 2001, dtype=jnp.float64)
    np.testing.assert_array_equal(np.asarray(jax.jit(trig.cos)(x)), np.asarray(jax.jit(jnp.cos)(x)))
    np.testing.assert_array_equal(np.asarray(jax.vmap(jax.grad(trig.cos))(x)), np.asarray(-jnp.sin(x)))
