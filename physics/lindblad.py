"""Lindblad superoperators in the column-stacking convention (QuTiP's).

vec(X) stacks columns, so vec(A X B) = (B^T kron A) vec(X). Shapes: operators (..., n, n),
vectors (..., n*n), superoperators (..., n*n, n*n). Everything broadcasts over leading axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp


def vec(rho: jnp.ndarray) -> jnp.ndarray:
    """Column-stack (..., n, n) into (..., n*n)."""
    n = rho.shape[-1]
    return jnp.swapaxes(rho, -1, -2).reshape(*rho.shape[:-2], n * n)


def unvec(v: jnp.ndarray) -> jnp.ndarray:
    """Inverse of ``vec``: (..., n*n) -> (..., n, n)."""
    n = int(round(v.shape[-1] ** 0.5))
    if n * n != v.shape[-1]:
        raise ValueError(f"v must have a square last dimension, got shape {v.shape}")
    return jnp.swapaxes(v.reshape(*v.shape[:-1], n, n), -1, -2)


def _kron(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Batched Kronecker product over the last two axes."""
    out = a[..., :, None, :, None] * b[..., None, :, None, :]
    s = out.shape
    return out.reshape(*s[:-4], s[-4] * s[-3], s[-2] * s[-1])


def spre(a: jnp.ndarray) -> jnp.ndarray:
    """Superoperator of X -> A X."""
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    return _kron(jnp.broadcast_to(eye, a.shape), a)


def spost(b: jnp.ndarray) -> jnp.ndarray:
    """Superoperator of X -> X B."""
    eye = jnp.eye(b.shape[-1], dtype=b.dtype)
    return _kron(jnp.swapaxes(b, -1, -2), jnp.broadcast_to(eye, b.shape))


def dissipator(c: jnp.ndarray) -> jnp.ndarray:
    """D[c] rho = c rho c^dag - (1/2){c^dag c, rho} as a superoperator."""
    cd = jnp.conj(jnp.swapaxes(c, -1, -2))
    cdc = cd @ c
    return _kron(jnp.conj(c), c) - 0.5 * (spre(cdc) + spost(cdc))


def liouvillian(H: jnp.ndarray, c_ops: Sequence[jnp.ndarray] = ()) -> jnp.ndarray:
    """L rho = -i[H, rho] + sum_c D[c] rho, column-stacking superoperator (..., n^2, n^2).

    The commutator is built as -i(spre(H) - spost(H)) for any H, Hermitian or not, so the same
    function serves tangent (derivative) generators such as dL/dtheta = -i[dH, .].
    Rates are folded into the collapse operators (c = sqrt(gamma) * L).
    """
    L = -1j * (spre(H) - spost(H))
    for c in c_ops:
        L = L + dissipator(c)
    return L


def lindblad_rhs(H: jnp.ndarray, c_ops: Sequence[jnp.ndarray], rho: jnp.ndarray) -> jnp.ndarray:
    """Matrix form of L rho (no vectorisation), for checks and small systems."""
    out = -1j * (H @ rho - rho @ H)
    for c in c_ops:
        cd = jnp.conj(jnp.swapaxes(c, -1, -2))
        out = out + c @ rho @ cd - 0.5 * (cd @ c @ rho + rho @ cd @ c)
    return out
