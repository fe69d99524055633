"""Husimi Q functions of spin states on the sphere (for plots of final states).

    Q(theta, phi) = <theta, phi| rho |theta, phi>,
    |theta, phi> = exp(-i phi J_z) exp(-i theta J_y) |j, j>      (``spin_coherent_state``)

in the |j, m> basis ordered m = j, j-1, ..., -j (QuTiP's ``jmat`` order). This is QuTiP's
``spin_q_function`` convention: no prefactor, so 0 <= Q <= 1 and
(2j+1)/(4 pi) * integral of Q over the sphere = 1. The coherent-state amplitudes are the
closed form

    <j, m | theta, phi> = sqrt(C(2j, j+m)) cos(theta/2)^(j+m) sin(theta/2)^(j-m) e^{-i m phi}

(up to a global phase, which Q does not see), evaluated through log-binomials so large j does
not overflow. For a qubit given by its Bloch vector r, Q = (1 + r . n) / 2 with n the unit
vector at (theta, phi).

Everything is jittable and vmappable; shapes are documented per function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from qsmgym.physics.operators import spin_dimension


def _check_angles(theta, phi):
    theta = jnp.asarray(theta, jnp.float64)
    phi = jnp.asarray(phi, jnp.float64)
    try:
        jnp.broadcast_shapes(theta.shape, phi.shape)
    except ValueError:
        raise ValueError(f"theta and phi must broadcast together, got theta.shape={theta.shape}, "
                         f"phi.shape={phi.shape}") from None
    return theta, phi


def coherent_amplitudes(j: float, theta, phi) -> jnp.ndarray:
    """<j, m | theta, phi> for m = j..-j (closed form, global phase dropped).

    Args:
        j: spin (2j a positive integer).
        theta, phi: polar and azimuthal angles (radians), broadcastable arrays of shape S.

    Returns:
        complex128 array of shape S + (2j+1,).
    """
    d = spin_dimension(j)
    jj = (d - 1) / 2
    theta, phi = _check_angles(theta, phi)
    m = jnp.asarray(jj - np.arange(d))
    log_binom = gammaln(2 * jj + 1) - gammaln(jj + m + 1) - gammaln(jj - m + 1)
    c = jnp.cos(theta / 2)[..., None]
    s = jnp.sin(theta / 2)[..., None]
    # power, not exp(log): cos(theta/2) = 0 at the south pole must give 0^0 = 1 for m = -j
    mag = jnp.exp(0.5 * log_binom) * c ** (jj + m) * s ** (jj - m)
    return mag * jnp.exp(-1j * m * phi[..., None])


def husimi_q_spin(state, theta, phi) -> jnp.ndarray:
    """Husimi Q of a spin-j ket or density matrix at the angles (theta, phi).

    Args:
        state: ket of shape (d,) or density matrix (d, d), d = 2j+1, basis m = j..-j.
        theta, phi: broadcastable angle arrays of shape S (radians).

    Returns:
        float64 array of shape S with 0 <= Q <= 1.

    Raises:
        ValueError: state not of shape (d,) or (d, d) with d >= 2, or non-finite entries
            (checked only on concrete arrays).

    Example:
        >>> th, ph = jnp.meshgrid(jnp.linspace(0, jnp.pi, 40), jnp.linspace(0, 2 * jnp.pi, 80))
        >>> q = husimi_q_spin(spin_coherent_state(5, 1.0, 0.5), th, ph)   # peak 1 at (1.0, 0.5)
    """
    state = jnp.asarray(state)
    if state.ndim not in (1, 2) or state.shape[0] < 2 or (state.ndim == 2 and state.shape[0] != state.shape[1]):
        raise ValueError(f"state must be a ket (d,) or a density matrix (d, d) with d >= 2, "
                         f"got state.shape={state.shape}")
    _check_finite("state", state)
    d = state.shape[0]
    amps = coherent_amplitudes((d - 1) / 2, theta, phi)
    if state.ndim == 1:
        return jnp.abs(jnp.einsum("...m,m->...", jnp.conj(amps), state)) ** 2
    return jnp.real(jnp.einsum("...m,mn,...n->...", jnp.conj(amps), state, amps))


def husimi_q_qubit(r, theta, phi) -> jnp.ndarray:
    """Husimi Q of a qubit from its Bloch vector: (1 + r . n(theta, phi)) / 2.

    Same convention as ``husimi_q_spin`` at j = 1/2 with rho = (1 + r . sigma)/2 and |0> = |m=+1/2>
    (the north pole).

    Args:
        r: Bloch vector, shape (3,), |r| <= 1.
        theta, phi: broadcastable angle arrays of shape S (radians).

    Returns:
        float64 array of shape S.

    Raises:
        ValueError: r not of shape (3,) or non-finite (checked on concrete arrays).
    """
    r = jnp.asarray(r, jnp.float64)
    if r.shape != (3,):
        raise ValueError(f"r must be a Bloch vector of shape (3,), got r.shape={r.shape}")
    _check_finite("r", r)
    theta, phi = _check_angles(theta, phi)
    n = jnp.stack([jnp.sin(theta) * jnp.cos(phi), jnp.sin(theta) * jnp.sin(phi),
                   jnp.cos(theta) + 0.0 * phi], axis=-1)
    return 0.5 * (1.0 + n @ r)


def sphere_grid(n_theta: int = 60, n_phi: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """(theta, phi) meshgrid of shape (n_phi, n_theta), theta in [0, pi], phi in [0, 2 pi]
    (QuTiP's ``spin_q_function`` indexing: [phi index, theta index]).

    Raises:
        ValueError: n_theta or n_phi < 2.
    """
    for name, value in (("n_theta", n_theta), ("n_phi", n_phi)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
            raise ValueError(f"{name} must be an int >= 2, got {name}={value!r}")
    return np.meshgrid(np.linspace(0, np.pi, n_theta), np.linspace(0, 2 * np.pi, n_phi))


def _check_finite(name: str, x) -> None:
    if isinstance(x, jax.core.Tracer):  # under jit/vmap the values are not known here
        return
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{name} must be finite, got {name}={np.asarray(x)!r}")
