"""Husimi Q functions against QuTiP's spin_q_function and closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qutip

from qsmgym.physics.bloch import density_matrix
from qsmgym.physics.husimi import coherent_amplitudes, husimi_q_qubit, husimi_q_spin, sphere_grid
from qsmgym.physics.operators import spin_coherent_state

jax.config.update("jax_enable_x64", True)

# Every quantity here is a finite sum of O(d^2) double-precision terms of size <= 1 (QuTiP's
# loop and our einsum differ only in summation order), so agreement is round-off: ~1e-15 per
# term; 1e-10 leaves room for d up to 11 and the binomials' log-gamma evaluation (~1e-14 rel).
ROUND_OFF = 1e-10


def _random_rho(d, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d)) + 1j * rng.normal(size=(d, d))
    rho = a @ a.conj().T
    return rho / np.trace(rho)


@pytest.mark.parametrize("j", [0.5, 1, 2.5, 5])
def test_matches_qutip_spin_q_function_for_mixed_states(j):
    d = int(2 * j + 1)
    rho = _random_rho(d, seed=d)
    theta, phi = np.linspace(0, np.pi, 13), np.linspace(0, 2 * np.pi, 17)
    want, TH, PH = qutip.spin_q_function(qutip.Qobj(rho), theta, phi)
    got = np.asarray(husimi_q_spin(jnp.asarray(rho), TH, PH))
    np.testing.assert_allclose(got, want, atol=ROUND_OFF)


def test_ket_equals_its_projector_and_qutip():
    psi = np.asarray(spin_coherent_state(3, 0.7, 1.9)) + 0.3 * _random_rho(7, 1)[:, 0]
    psi = psi / np.linalg.norm(psi)
    TH, PH = sphere_grid(11, 23)
    q_ket = np.asarray(husimi_q_spin(jnp.asarray(psi), TH, PH))
    q_rho = np.asarray(husimi_q_spin(jnp.asarray(np.outer(psi, psi.conj())), TH, PH))
    want, _, _ = qutip.spin_q_function(qutip.Qobj(psi), TH[0], PH[:, 0])
    np.testing.assert_allclose(q_ket, q_rho, atol=ROUND_OFF)
    np.testing.assert_allclose(q_ket, want, atol=ROUND_OFF)


@pytest.mark.parametrize("j", [0.5, 2, 7.5])
def test_amplitudes_are_the_rotated_top_state_up_to_a_global_phase(j):
    # independent construction: exp(-i phi Jz) exp(-i theta Jy)|j,j> via eigendecomposition
    th, ph = 1.234, -0.4
    a = np.asarray(coherent_amplitudes(j, th, ph))
    b = np.asarray(spin_coherent_state(j, th, ph))
    assert abs(abs(np.vdot(a, b)) - 1.0) < ROUND_OFF
    # and the coherent state's own Q peaks at exactly 1 at its own point
    assert abs(float(husimi_q_spin(jnp.asarray(b), th, ph)) - 1.0) < ROUND_OFF


@pytest.mark.parametrize("j", [0.5, 3, 10])
def test_normalisation_on_the_sphere(j):
    # (2j+1)/(4 pi) int Q dOmega = 1. Q is a polynomial of degree 2j in cos(theta) at each
    # power of e^{i phi}: Gauss-Legendre in cos(theta) with 2j+2 nodes and the trapezoid rule
    # with > 4j phi points integrate it exactly, so the tolerance is round-off.
    d = int(2 * j + 1)
    rho = _random_rho(d, seed=3)
    x, w = np.polynomial.legendre.leggauss(d + 1)
    n_phi = 4 * d
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    TH, PH = np.meshgrid(np.arccos(x), phi)
    q = np.asarray(husimi_q_spin(jnp.asarray(rho), TH, PH))
    integral = (q * w[None, :]).sum() * (2 * np.pi / n_phi)
    assert abs(d / (4 * np.pi) * integral - 1.0) < ROUND_OFF


def test_qubit_from_bloch_vector_equals_spin_half_density_matrix():
    r = np.array([0.3, -0.5, 0.6])
    TH, PH = sphere_grid(9, 15)
    got = np.asarray(husimi_q_qubit(r, TH, PH))
    want, _, _ = qutip.spin_q_function(qutip.Qobj(density_matrix(r)), TH[0], PH[:, 0])
    np.testing.assert_allclose(got, want, atol=ROUND_OFF)
    # closed form at the poles: (1 +- r_z) / 2
    assert abs(float(husimi_q_qubit(r, 0.0, 0.0)) - 0.8) < ROUND_OFF
    assert abs(float(husimi_q_qubit(r, math.pi, 0.0)) - 0.2) < ROUND_OFF


def test_large_spin_does_not_overflow_and_jit_vmap_agree():
    # j = 200: C(400, 200) ~ 1e119 would overflow its square in naive float arithmetic
    psi = spin_coherent_state(200, 0.5, 0.0)
    q = husimi_q_spin(psi, jnp.array([0.5, 0.6]), jnp.array([0.0, 0.0]))
    assert abs(float(q[0]) - 1.0) < 1e-8  # 401 terms of log-gamma round-off (~1e-13 rel each)
    assert 0.0 <= float(q[1]) < 1.0
    rhos = jnp.stack([jnp.asarray(_random_rho(4, s)) for s in range(3)])
    TH, PH = sphere_grid(5, 7)
    batched = jax.jit(jax.vmap(lambda r: husimi_q_spin(r, TH, PH)))(rhos)
    for k in range(3):
        np.testing.assert_allclose(batched[k], husimi_q_spin(rhos[k], TH, PH), atol=ROUND_OFF)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="state"):
        husimi_q_spin(jnp.zeros((3, 4)), 0.0, 0.0)
    with pytest.raises(ValueError, match="state"):
        husimi_q_spin(jnp.array([1.0, jnp.nan]), 0.0, 0.0)
    with pytest.raises(ValueError, match="r.shape"):
        husimi_q_qubit(jnp.zeros(2), 0.0, 0.0)
    with pytest.raises(ValueError, match="theta"):
        husimi_q_spin(jnp.ones(2), jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="n_theta"):
        sphere_grid(1, 5)
