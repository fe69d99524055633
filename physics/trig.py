"""cos for the float32 particle filters: a vectorisable polynomial instead of XLA's CPU cos.

Why: on XLA's CPU back end (jaxlib 0.10.2) ``jnp.cos`` of float32 is not vectorised; it cost
2.6-7 ns an element (325 us for 256 x 480 arguments in [0, 1], 600 us in [0, 30]) against
~0.2 ns for exp or a multiply-add. In the NV-DC-24 training step the Ramsey likelihood
cos(omega tau + phase) over 256 filters x 480 particles, and the sin of its derivative, were
computed 3-4 times a measurement (XLA fuses the cos into every consumer, including the scan's
residual stores), several ms of each step (session 17's profile).

``cos(x)``: float32 input -> Cody-Waite reduction to r in [-pi/4, pi/4] by k = round(2x/pi)
with pi/2 split into three float32 parts (exact products k * part for |k| < 2^16, i.e.
|x| < 1e5), then Cephes' single-precision minimax polynomials for sin r and cos r, chosen and
signed by k mod 4. Error against cos of the same float32 input in float64: 9.2e-8 absolute
at most over |x| <= 1e4 (measured; jnp.cos: 3.3e-8), tested to 1.5e-7. Any other dtype (float64
physics) -> ``jnp.cos``. Its derivative is -sin x by the same route (custom JVP), so gradients
cost no extra XLA sin.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# pi/2 = _P1 + _P2 + _P3 (Cephes' DP1..DP3 for pi/4, doubled)
_P1 = np.float32(1.5703125)
_P2 = np.float32(4.837512969970703125e-4)
_P3 = np.float32(7.54978995489188216e-8)
_TWO_OVER_PI = np.float32(2.0 / np.pi)
# Cephes sinf / cosf minimax coefficients on [-pi/4, pi/4]
_S = (np.float32(-1.6666654611e-1), np.float32(8.3321608736e-3), np.float32(-1.9515295891e-4))
_C = (np.float32(4.166664568298827e-2), np.float32(-1.388731625493765e-3), np.float32(2.443315711809948e-5))


def cos_sin_f32(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(cos x, sin x) of a float32 array by the polynomial route (see the module docstring)."""
    x = jnp.asarray(x, jnp.float32)
    k = jnp.round(x * _TWO_OVER_PI)
    r = ((x - k * _P1) - k * _P2) - k * _P3
    z = r * r
    sin_r = r + r * z * (_S[0] + z * (_S[1] + z * _S[2]))
    cos_r = 1.0 - 0.5 * z + z * z * (_C[0] + z * (_C[1] + z * _C[2]))
    q = k.astype(jnp.int32) & 3
    swap = (q & 1) == 1  # odd quadrants exchange sin and cos
    c = jnp.where(swap, sin_r, cos_r)
    s = jnp.where(swap, cos_r, sin_r)
    c = jnp.where((q == 1) | (q == 2), -c, c)
    s = jnp.where(q >= 2, -s, s)
    return c, s


@jax.custom_jvp
def cos(x):
    """cos x; float32 by ``cos_sin_f32``, other dtypes by ``jnp.cos``."""
    if jnp.result_type(x) == jnp.float32:
        return cos_sin_f32(x)[0]
    return jnp.cos(x)


@cos.defjvp
def _cos_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    if jnp.result_type(x) == jnp.float32:
        c, s = cos_sin_f32(x)
    else:
        c, s = jnp.cos(x), jnp.sin(x)
    return c, -s * t
