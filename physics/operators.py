"""Spin, ladder and Fock operators, built once in NumPy (exact) and returned as complex128.

Basis order for spin j follows QuTiP's ``jmat``: |j, m> with m = j, j-1, ..., -j.
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


def spin_dimension(j: float) -> int:
    """Hilbert-space dimension 2j+1 for spin ``j``.

    Raises:
        ValueError: if ``j`` is not a positive integer or half-integer.
    """
    if isinstance(j, bool) or not isinstance(j, (int, float, np.integer, np.floating, Fraction)):
        raise TypeError(f"j must be a number, got {type(j).__name__} ({j!r})")
    two_j = 2 * float(j)
    if not np.isfinite(two_j) or two_j <= 0 or abs(two_j - round(two_j)) > 1e-12:
        raise ValueError(f"j must be a positive integer or half-integer, got j={j!r}")
    return int(round(two_j)) + 1


class SpinOperators(NamedTuple):
    """Spin operators for one j, each of shape (2j+1, 2j+1), complex128."""

    jx: np.ndarray
    jy: np.ndarray
    jz: np.ndarray
    jp: np.ndarray
    jm: np.ndarray


def spin_operators_np(j: float) -> SpinOperators:
    """NumPy spin operators (see ``spin_operators``); used for static precomputation."""
    d = spin_dimension(j)
    jj = (d - 1) / 2
    m = jj - np.arange(d)
    # <j, m+1| J+ |j, m> = sqrt(j(j+1) - m(m+1)); row index of m+1 is one above m.
    jp = np.diag(np.sqrt(jj * (jj + 1) - m[1:] * (m[1:] + 1)), k=1).astype(np.complex128)
    jm = jp.conj().T
    jx = 0.5 * (jp + jm)
    jy = -0.5j * (jp - jm)
    jz = np.diag(m).astype(np.complex128)
    return SpinOperators(jx, jy, jz, jp, jm)


def spin_operators(j: float) -> SpinOperators:
    """Spin operators J_x, J_y, J_z, J_+, J_- for spin ``j`` (integer or half-integer).

    Args:
        j: spin quantum number, 2j a positive integer.

    Returns:
        SpinOperators of complex128 jnp arrays, shape (2j+1, 2j+1), basis m = j..-j.

    Example:
        >>> jx, jy, jz, jp, jm = spin_operators(1)
    """
    return SpinOperators(*(jnp.asarray(op) for op in spin_operators_np(j)))


_AXES = ("x", "y", "z")


def spin_axis(j: float, axis: str) -> np.ndarray:
    """NumPy J_axis for ``axis`` in {"x", "y", "z"}."""
    if axis not in _AXES:
        raise ValueError(f"axis must be one of {_AXES}, got axis={axis!r}")
    return spin_operators_np(j)[_AXES.index(axis)]


def spin_coherent_state(j: float, theta: float, phi: float) -> jnp.ndarray:
    """|theta, phi> = exp(-i phi J_z) exp(-i theta J_y) |j, j>, complex128 of shape (2j+1,).

    Differentiable and jittable in ``theta`` and ``phi`` (the rotations use a fixed
    eigendecomposition of J_y computed once in NumPy).
    """
    ops = spin_operators_np(j)
    d = ops.jz.shape[0]
    m = np.real(np.diag(ops.jz))
    wy, vy = np.linalg.eigh(ops.jy)
    top = np.zeros(d, np.complex128)
    top[0] = 1.0
    coeff = jnp.asarray(vy.conj().T @ top) * jnp.exp(-1j * jnp.asarray(wy) * theta)
    psi = jnp.asarray(vy) @ coeff
    return jnp.exp(-1j * jnp.asarray(m) * phi) * psi


def destroy(n: int) -> jnp.ndarray:
    """Annihilation operator a on an n-level Fock space (truncated), complex128 (n, n)."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got n={n!r}")
    return jnp.asarray(np.diag(np.sqrt(np.arange(1, n)), k=1).astype(np.complex128))


def number(n: int) -> jnp.ndarray:
    """Number operator a^dag a on an n-level Fock space, complex128 (n, n)."""
    a = destroy(n)
    return a.conj().T @ a


def basis(n: int, k: int) -> jnp.ndarray:
    """Basis ket |k> of an n-dimensional space, complex128 (n,)."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got n={n!r}")
    if not isinstance(k, (int, np.integer)) or not 0 <= k < n:
        raise ValueError(f"k must be an integer in [0, {n}), got k={k!r}")
    return jnp.zeros(n, jnp.complex128).at[k].set(1.0)
