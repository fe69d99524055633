"""Bloch-vector qubit dynamics against the Hilbert-space Liouvillian, the Taylor exponential
against scipy, and the qubit QFI closed form against the SLD formula."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from qsmgym.physics.bloch import (
    SIGMA,
    bloch_vector,
    density_matrix,
    dissipator_bloch,
    expm_taylor,
    generator,
    qfi_bloch,
    taylor_squarings,
)
from qsmgym.physics.lindblad import liouvillian, unvec, vec
from qsmgym.physics.qfi import qfi_sld


@pytest.mark.parametrize("kind", ["none", "dephasing", "emission"])
def test_bloch_generator_matches_the_liouvillian(kind):
    rng = np.random.default_rng(len(kind))
    h = rng.normal(size=3)
    gamma = 0.3
    H = np.einsum("k,kij->ij", h, SIGMA)
    c_ops = {"none": [], "dephasing": [np.sqrt(gamma) * SIGMA[2]],
             "emission": [np.sqrt(gamma) * np.array([[0, 0], [1, 0]], complex)]}[kind]
    L = np.asarray(liouvillian(jnp.asarray(H), [jnp.asarray(c) for c in c_ops]))
    M, c = dissipator_bloch(kind, gamma)
    A = np.asarray(generator(jnp.asarray(h), jnp.asarray(M), jnp.asarray(c)))
    r0 = rng.normal(size=3)
    r0 *= 0.9 / np.linalg.norm(r0)
    t = 0.7
    rho_t = np.asarray(unvec(jnp.asarray(scipy.linalg.expm(t * L) @ np.asarray(vec(jnp.asarray(density_matrix(r0)))))))
    x_t = scipy.linalg.expm(t * A) @ np.append(r0, 1.0)
    # both exact (scipy expm, ~1e-15): agreement to round-off
    np.testing.assert_allclose(x_t[:3], bloch_vector(rho_t), atol=1e-13)
    assert x_t[3] == pytest.approx(1.0, abs=1e-15)


def test_taylor_exponential_matches_scipy():
    rng = np.random.default_rng(0)
    for scale in (0.01, 0.3, 2.0, 9.0):
        X = scale * rng.normal(size=(4, 4))
        s = taylor_squarings(np.abs(X).sum(0).max())
        np.testing.assert_allclose(np.asarray(expm_taylor(jnp.asarray(X), s)), scipy.linalg.expm(X), rtol=1e-12, atol=1e-13)


def test_qfi_bloch_matches_sld():
    rng = np.random.default_rng(1)
    for _ in range(5):
        r = rng.normal(size=3)
        r *= rng.uniform(0.2, 0.95) / np.linalg.norm(r)
        dr = rng.normal(size=3)
        rho = density_matrix(r)
        drho = 0.5 * np.einsum("k,kij->ij", dr, SIGMA)
        sld = float(qfi_sld(jnp.asarray(rho), jnp.asarray(drho)))
        np.testing.assert_allclose(float(qfi_bloch(jnp.asarray(r), jnp.asarray(dr))), sld, rtol=1e-10)
    # pure states: |dr|^2, and the guard keeps it finite
    r = np.array([0.0, 1.0, 0.0])
    dr = np.array([0.5, 0.0, 0.2])
    assert float(qfi_bloch(jnp.asarray(r), jnp.asarray(dr))) == pytest.approx(0.29)
    assert float(qfi_bloch(jnp.asarray(r), jnp.asarray(dr), mixed=False)) == pytest.approx(0.29)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        dissipator_bloch("loss", 0.1)
    with pytest.raises(ValueError, match="norm_bound"):
        taylor_squarings(float("nan"))


def test_rotation_matrix_matches_expm_including_tiny_angles():
    import jax

    from qsmgym.physics.bloch import cross_matrix, rotation_matrix

    rng = np.random.default_rng(4)
    for scale in (1e-9, 1e-4, 0.3, 2.0, 7.0):  # both branches of the series switch
        w = scale * rng.normal(size=3)
        np.testing.assert_allclose(
            np.asarray(rotation_matrix(jnp.asarray(w))),
            scipy.linalg.expm(np.asarray(cross_matrix(jnp.asarray(w)))), rtol=1e-13, atol=1e-15,
        )
    # finite gradient at w = 0 (safe sqrt): d/dw of R[0, 1] is -1 along w_z
    g = jax.grad(lambda w: rotation_matrix(w)[0, 1])(jnp.zeros(3))
    np.testing.assert_allclose(np.asarray(g), [0.0, 0.0, -1.0], atol=1e-15)
