"""Propagators for piecewise-constant controls, with exact parameter derivatives.

For a generator A(theta) with dA/dtheta = E over one interval dt, the propagator is
expm(dt A) and its derivative is the Frechet derivative of expm at dt A along dt E, read off
the block matrix identity

    expm([[X, Y], [0, X]]) = [[expm(X), L(X, Y)], [0, expm(X)]].

This is exact up to the accuracy of expm itself (Pade with scaling and squaring, ~1e-14
relative in double precision), unlike finite differences.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax.scipy.linalg import expm

from qsmgym.physics.lindblad import liouvillian


def expm_with_derivative(X: jnp.ndarray, Y: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Return (expm(X), L(X, Y)) with L the Frechet derivative of expm at X along Y.

    Args:
        X, Y: (n, n) matrices of the same dtype.

    Returns:
        Tuple of (n, n) arrays.
    """
    n = X.shape[-1]
    if X.shape != Y.shape or X.shape[-2] != n:
        raise ValueError(f"X and Y must be square and of one shape, got {X.shape} and {Y.shape}")
    zero = jnp.zeros_like(X)
    block = jnp.block([[X, Y], [zero, X]])
    big = expm(block)
    return big[:n, :n], big[:n, n:]


def unitary_propagator(H: jnp.ndarray, dt: float) -> jnp.ndarray:
    """U = expm(-i H dt) for Hermitian H via its eigendecomposition (exact unitarity)."""
    w, v = jnp.linalg.eigh(H)
    return (v * jnp.exp(-1j * w * dt)[..., None, :]) @ jnp.conj(jnp.swapaxes(v, -1, -2))


def unitary_propagator_with_derivative(
    H: jnp.ndarray, dH: jnp.ndarray, dt: float
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(U, dU/dtheta) for U = expm(-i H(theta) dt) with dH = dH/dtheta.

    Uses the eigenbasis of H: in it, dU_ab = -i dt dH_ab * phi(w_a, w_b) with the divided
    difference phi = (e^{-i w_a dt} - e^{-i w_b dt}) / (-i dt (w_a - w_b)), and
    phi = e^{-i w_a dt} on (near-)degenerate pairs.
    """
    w, v = jnp.linalg.eigh(H)
    vd = jnp.conj(jnp.swapaxes(v, -1, -2))
    e = jnp.exp(-1j * w * dt)
    diff = w[..., :, None] - w[..., None, :]
    degenerate = jnp.abs(diff * dt) < 1e-8
    safe = jnp.where(degenerate, 1.0, diff)
    phi = jnp.where(
        degenerate,
        e[..., :, None],
        (e[..., :, None] - e[..., None, :]) / (-1j * dt * safe),
    )
    dH_eig = vd @ dH @ v
    dU = v @ (-1j * dt * dH_eig * phi) @ vd
    U = (v * e[..., None, :]) @ vd
    return U, dU


def lindblad_propagator(H: jnp.ndarray, c_ops: Sequence[jnp.ndarray], dt: float) -> jnp.ndarray:
    """Phi = expm(dt L) for L rho = -i[H, rho] + sum D[c] rho (column stacking)."""
    return expm(dt * liouvillian(H, c_ops))


def lindblad_propagator_with_derivative(
    H: jnp.ndarray, dH: jnp.ndarray, c_ops: Sequence[jnp.ndarray], dt: float
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(Phi, dPhi/dtheta) for a Lindbladian whose Hamiltonian depends on theta.

    The collapse operators are taken theta-independent; dL/dtheta = -i[dH, .].
    """
    A = dt * liouvillian(H, c_ops)
    E = dt * liouvillian(dH)
    return expm_with_derivative(A, E)
