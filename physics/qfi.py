"""Quantum Fisher information from a state and its exact parameter derivative."""

from __future__ import annotations

import jax.numpy as jnp


def qfi_pure(psi: jnp.ndarray, dpsi: jnp.ndarray) -> jnp.ndarray:
    """I = 4 (<dpsi|dpsi> - |<psi|dpsi>|^2) for a normalised pure state.

    Args:
        psi, dpsi: (..., n) kets; dpsi = d psi / d theta.

    Returns:
        (...) real array.
    """
    overlap = jnp.sum(jnp.conj(psi) * dpsi, axis=-1)
    norm = jnp.sum(jnp.abs(dpsi) ** 2, axis=-1)
    return 4.0 * (norm - jnp.abs(overlap) ** 2)


def qfi_sld(rho: jnp.ndarray, drho: jnp.ndarray, rel_cutoff: float = 1e-12) -> jnp.ndarray:
    """SLD quantum Fisher information of a mixed state.

    I = 2 sum_{a,b: l_a + l_b > eps} |<a|drho|b>|^2 / (l_a + l_b), with (l_a, |a>) the
    eigen-decomposition of the Hermitian part of rho and eps = rel_cutoff * l_max. Pairs
    below the cutoff carry no information (drho is supported where rho is, up to round-off).

    Args:
        rho, drho: (..., n, n) density matrix and its derivative.
        rel_cutoff: relative eigenvalue-sum cutoff.

    Returns:
        (...) real array.
    """
    herm = 0.5 * (rho + jnp.conj(jnp.swapaxes(rho, -1, -2)))
    dherm = 0.5 * (drho + jnp.conj(jnp.swapaxes(drho, -1, -2)))
    lam, vecs = jnp.linalg.eigh(herm)
    d_eig = jnp.conj(jnp.swapaxes(vecs, -1, -2)) @ dherm @ vecs
    sums = lam[..., :, None] + lam[..., None, :]
    eps = rel_cutoff * jnp.max(lam, axis=-1)[..., None, None]
    keep = sums > eps
    terms = jnp.where(keep, jnp.abs(d_eig) ** 2 / jnp.where(keep, sums, 1.0), 0.0)
    return 2.0 * jnp.sum(terms, axis=(-2, -1))
