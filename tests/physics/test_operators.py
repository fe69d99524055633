"""Spin/ladder operators against QuTiP (exact, built from the same closed forms: 1e-14)."""

import numpy as np
import pytest
import qutip
import scipy.linalg

from qsmgym.physics import basis, destroy, number, spin_coherent_state, spin_dimension, spin_operators


@pytest.mark.parametrize("j", [0.5, 1, 1.5, 2, 5, 7.5])
def test_spin_operators_match_qutip_and_algebra(j):
    ops = [np.asarray(o) for o in spin_operators(j)]
    for ours, name in zip(ops, ["x", "y", "z", "+", "-"]):
        np.testing.assert_allclose(ours, qutip.jmat(j, name).full(), atol=1e-14)
    jx, jy, jz, _, _ = ops
    np.testing.assert_allclose(jx @ jy - jy @ jx, 1j * jz, atol=1e-12)
    d = spin_dimension(j)
    np.testing.assert_allclose(jx @ jx + jy @ jy + jz @ jz, j * (j + 1) * np.eye(d), atol=1e-12)


@pytest.mark.parametrize("bad", [0, -1, 0.3, float("nan"), float("inf")])
def test_bad_spin_rejected(bad):
    with pytest.raises(ValueError, match="j must be a positive integer or half-integer"):
        spin_dimension(bad)


def test_coherent_state_matches_scipy_expm():
    j, theta, phi = 3, 0.7, -1.3
    jx, jy, jz, _, _ = (qutip.jmat(j, a).full() for a in ["x", "y", "z", "+", "-"])
    top = np.zeros(2 * j + 1, complex)
    top[0] = 1
    expected = scipy.linalg.expm(-1j * phi * jz) @ scipy.linalg.expm(-1j * theta * jy) @ top
    np.testing.assert_allclose(np.asarray(spin_coherent_state(j, theta, phi)), expected, atol=1e-13)


def test_fock_operators_match_qutip():
    np.testing.assert_allclose(np.asarray(destroy(6)), qutip.destroy(6).full(), atol=1e-15)
    np.testing.assert_allclose(np.asarray(number(6)), qutip.num(6).full(), atol=1e-14)
    np.testing.assert_allclose(np.asarray(basis(4, 2)), qutip.basis(4, 2).full().ravel())
    with pytest.raises(ValueError, match="k must be an integer"):
        basis(3, 3)
