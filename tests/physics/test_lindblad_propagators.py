"""Superoperators vs QuTiP; propagators vs scipy expm; exact derivatives vs finite differences."""

import jax.numpy as jnp
import numpy as np
import qutip
import scipy.linalg

from qsmgym.physics import (
    expm_with_derivative,
    lindblad_propagator,
    lindblad_propagator_with_derivative,
    liouvillian,
    unitary_propagator,
    unitary_propagator_with_derivative,
    unvec,
    vec,
)
from qsmgym.physics.lindblad import lindblad_rhs

rng = np.random.default_rng(1)


def rand_herm(n):
    a = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    return (a + a.conj().T) / 2


def rand_op(n):
    return rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))


def test_vec_is_column_stacking_and_inverts():
    x = rand_op(4)
    np.testing.assert_array_equal(np.asarray(vec(jnp.asarray(x))), x.reshape(-1, order="F"))
    np.testing.assert_array_equal(np.asarray(unvec(vec(jnp.asarray(x)))), x)


def test_liouvillian_matches_qutip_and_matrix_form():
    H, c1, c2 = rand_herm(4), rand_op(4), rand_op(4)
    L = np.asarray(liouvillian(jnp.asarray(H), [jnp.asarray(c1), jnp.asarray(c2)]))
    Lq = qutip.liouvillian(qutip.Qobj(H), [qutip.Qobj(c1), qutip.Qobj(c2)]).full()
    np.testing.assert_allclose(L, Lq, atol=1e-12)  # round-off of a few products
    rho = rand_herm(4)
    rhs = np.asarray(lindblad_rhs(jnp.asarray(H), [jnp.asarray(c1), jnp.asarray(c2)], jnp.asarray(rho)))
    np.testing.assert_allclose(L @ rho.reshape(-1, order="F"), rhs.reshape(-1, order="F"), atol=1e-12)


def test_unitary_propagator_and_derivative():
    H, G, dt = rand_herm(5), rand_herm(5), 0.7
    U, dU = unitary_propagator_with_derivative(jnp.asarray(H), jnp.asarray(G), dt)
    np.testing.assert_allclose(np.asarray(U), scipy.linalg.expm(-1j * H * dt), atol=1e-12)
    np.testing.assert_allclose(np.asarray(unitary_propagator(jnp.asarray(H), dt)), np.asarray(U), atol=1e-13)
    # Frechet derivative of expm from scipy (an independent algorithm)
    _, ref = scipy.linalg.expm_frechet(-1j * H * dt, -1j * G * dt)
    np.testing.assert_allclose(np.asarray(dU), ref, atol=1e-11)


def test_block_frechet_matches_central_difference():
    # Central difference error ~ h^2 |d^3 expm| ~ 1e-12 and round-off ~ eps/h ~ 1e-10:
    # agreement to 1e-8 absolute on O(1) entries is what the difference can certify.
    X, Y = rand_op(4) * 0.3, rand_op(4) * 0.3
    _, dE = expm_with_derivative(jnp.asarray(X), jnp.asarray(Y))
    h = 1e-6
    fd = (scipy.linalg.expm(X + h * Y) - scipy.linalg.expm(X - h * Y)) / (2 * h)
    np.testing.assert_allclose(np.asarray(dE), fd, atol=1e-8)


def test_lindblad_propagator_trace_preserving_and_derivative():
    H, G, c = rand_herm(3), rand_herm(3), rand_op(3) * 0.4
    dt = 0.9
    Phi, dPhi = lindblad_propagator_with_derivative(jnp.asarray(H), jnp.asarray(G), [jnp.asarray(c)], dt)
    Phi, dPhi = np.asarray(Phi), np.asarray(dPhi)
    np.testing.assert_allclose(Phi, np.asarray(lindblad_propagator(jnp.asarray(H), [jnp.asarray(c)], dt)), atol=1e-13)
    # trace preservation: vec(1)^dag Phi = vec(1)^dag
    one = np.eye(3).reshape(-1, order="F")
    np.testing.assert_allclose(one @ Phi, one, atol=1e-12)
    np.testing.assert_allclose(one @ dPhi, 0, atol=1e-12)
    h = 1e-6
    f = lambda s: np.asarray(lindblad_propagator(jnp.asarray(H + s * G), [jnp.asarray(c)], dt))  # noqa: E731
    np.testing.assert_allclose(dPhi, (f(h) - f(-h)) / (2 * h), atol=1e-8)
