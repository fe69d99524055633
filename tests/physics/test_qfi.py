"""QFI of the kicked top: closed forms, pure-vs-SLD agreement, exact-vs-finite-difference
derivatives, the spec's j = 5 regression values, and trace/positivity over 1000 periods."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qsmgym.envs.kicked_top import KickedTopSensor
from qsmgym.physics import qfi_pure, qfi_sld, unvec


def test_no_kicks_gives_standard_quantum_limit_exactly():
    # I = 4 t^2 Var(J_y) = 2 j t^2 for |j, j>; round-off ~1e-15, checked at 1e-10 (spec §8.1)
    for j in (2, 5, 7.5):
        task = KickedTopSensor(j=j, n_periods=30)
        q = np.asarray(task.qfi_trajectory(task.default_params(), jnp.zeros(30)))
        t = np.arange(1, 31)
        np.testing.assert_allclose(q, 2 * j * t**2, rtol=1e-10)


def test_pure_and_sld_agree_without_noise():
    # The mixed path (phase noise at gamma = 0) runs the SLD formula on a pure state (spec §8.2)
    ks = np.random.default_rng(0).uniform(0, 6, 15)
    pure = KickedTopSensor(j=5, n_periods=15)
    mixed = KickedTopSensor(j=5, n_periods=15, noise="phase", gamma=0.0)
    assert mixed.mixed and not pure.mixed
    qp = np.asarray(pure.qfi_trajectory(pure.default_params(), ks))
    qm = np.asarray(mixed.qfi_trajectory(mixed.default_params(), ks))
    np.testing.assert_allclose(qm, qp, rtol=1e-10)


@pytest.mark.parametrize(
    "noise,gamma,expected",
    [("none", None, (10.000000, 66.412344)), ("superradiant", 0.01, (8.680641, 40.093554))],
)
def test_spec_regression_values_j5(noise, gamma, expected):
    # Spec §8.3, convention R0; quoted to 6 decimals -> 1e-6 absolute
    task = KickedTopSensor(j=5, n_periods=2, noise=noise, gamma=gamma)
    q = np.asarray(task.qfi_trajectory(task.default_params(), jnp.full(2, 3.0)))
    np.testing.assert_allclose(q, expected, atol=1e-6)


def _state_derivative_fd(task, ks, h=1e-6):
    def final_state(omega):
        params = task.default_params().replace(omega0=jnp.asarray(omega))
        _, state = task.reset(None, params)
        cache = task.precompute(params)
        for k in ks:
            psi, dpsi = task._evolve(state.psi, state.dpsi, k, cache)
            state = state.replace(psi=psi, dpsi=dpsi)
        return state

    omega = float(task.default_params().omega0)
    plus, minus, mid = final_state(omega + h), final_state(omega - h), final_state(omega)
    return np.asarray(mid.psi), np.asarray(mid.dpsi), (np.asarray(plus.psi) - np.asarray(minus.psi)) / (2 * h)


@pytest.mark.parametrize("noise", ["none", "superradiant"])
def test_exact_derivative_matches_central_difference(noise):
    # truncation ~h^2 |d^3 psi| (t^3 ~ 1e3 * 1e-12) and round-off ~eps/h ~1e-10 -> 1e-6 relative
    task = KickedTopSensor(j=4, n_periods=6, noise=noise)
    ks = [3.0, 0.5, 6.0, 1.5, 0.0, 2.5]
    psi, dpsi, fd = _state_derivative_fd(task, ks)
    np.testing.assert_allclose(dpsi, fd, atol=1e-6 * np.abs(fd).max())
    if noise == "none":
        exact, approx = qfi_pure(psi, dpsi), qfi_pure(psi, fd)
    else:
        exact, approx = qfi_sld(unvec(psi), unvec(dpsi)), qfi_sld(unvec(psi), unvec(fd))
    np.testing.assert_allclose(float(exact), float(approx), rtol=1e-6)


@pytest.mark.parametrize("noise", ["superradiant", "phase"])
def test_trace_and_positivity_over_1000_periods(noise):
    # Phi is a CPTP map up to expm round-off (~1e-15 per period): after 1000 periods the trace
    # must stay 1 to 1e-10 and no eigenvalue may fall below -1e-12.
    task = KickedTopSensor(j=3, n_periods=1000, noise=noise, gamma=0.02)
    params = task.default_params()
    cache = task.precompute(params)
    ks = jnp.asarray(np.random.default_rng(3).uniform(0, 6, 1000))
    _, state = task.reset(None, params, cache=cache)

    def body(carry, k):
        psi, dpsi = task._evolve(carry[0], carry[1], k, cache)
        rho = unvec(psi)
        lam = jnp.linalg.eigvalsh(0.5 * (rho + rho.conj().T))
        return (psi, dpsi), (jnp.trace(rho), lam.min(), jnp.abs(rho - rho.conj().T).max())

    _, (traces, min_eigs, herm_err) = jax.lax.scan(body, (state.psi, state.dpsi), ks)
    np.testing.assert_allclose(np.asarray(traces), 1.0, atol=1e-10)
    assert float(np.min(min_eigs)) > -1e-12
    assert float(np.max(herm_err)) < 1e-12


@pytest.mark.parametrize("noise", ["none", "superradiant", "phase"])
def test_heisenberg_limit_bounds_random_sequences(noise):
    task = KickedTopSensor(j=3, n_periods=25, noise=noise)
    ks = np.random.default_rng(5).uniform(0, 6, (8, 25))
    q = np.asarray(jax.vmap(lambda k: task.qfi_trajectory(task.default_params(), k))(jnp.asarray(ks)))
    t = np.arange(1, 26)
    assert np.all(q <= 4 * 3**2 * t**2 * (1 + 1e-12))
    assert np.all(q >= -1e-9)


def test_braun_rate_convention_is_gamma_over_j():
    a = KickedTopSensor(j=4, noise="superradiant", gamma=0.04, rate_convention="braun")
    b = KickedTopSensor(j=4, noise="superradiant", gamma=0.01)
    assert math.isclose(float(a.default_params().gamma_sr), float(b.default_params().gamma_sr))
