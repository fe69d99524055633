"""Repeater physics: secret fractions and closed forms against the spec's check values
(shared/reference/memory-cutoff.md) and against exact Markov chains."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq

from qsmgym.agents.repeater_baselines import two_segment_markov_chain
from qsmgym.physics.repeater import (
    binary_entropy,
    elementary_link_mean_fidelity,
    elementary_link_probability,
    expected_max_geometric,
    fidelity_from_werner,
    inesta_three_node_delivery_time,
    no_cutoff_exact,
    pauli_probabilities,
    qber,
    secret_fraction,
    two_segment_delivery_time,
    two_segment_mean_lambda,
    two_segment_rates,
    two_segment_wait_distribution,
    werner_from_fidelity,
)

# The spec quotes 6 decimals: agreement to half a unit of the last digit.
HALF_ULP_6 = 5e-7


def test_secret_fraction_check_values():
    w = werner_from_fidelity(0.95)
    assert abs(float(secret_fraction(w, 1.0)) - 0.578315) < HALF_ULP_6
    assert abs(float(secret_fraction(w, 1.0, "six_state")) - 0.634355) < HALF_ULP_6
    # BB84 zero: 1 - 2 h(e) = 0 at e = 11.0028 %, F = 0.834958, w = 0.779944
    e0 = brentq(lambda e: 1 - 2 * float(binary_entropy(e)), 0.05, 0.2, xtol=1e-14)
    assert abs(e0 - 0.110028) < HALF_ULP_6
    F0 = fidelity_from_werner(1 - 2 * e0)
    assert abs(F0 - 0.834958) < HALF_ULP_6 and abs(1 - 2 * e0 - 0.779944) < HALF_ULP_6
    # six-state zero at F = 0.810710 (e = 12.6193 %)
    F6 = brentq(lambda F: 1 - float(-np.sum([x * math.log2(x) for x in (F, (1 - F) / 3, (1 - F) / 3, (1 - F) / 3)])), 0.6, 0.99, xtol=1e-14)
    assert abs(F6 - 0.810710) < HALF_ULP_6 and abs(2 * (1 - F6) / 3 - 0.126193) < HALF_ULP_6
    assert float(secret_fraction(werner_from_fidelity(F6 + 1e-4), 1.0, "six_state")) > 0
    assert float(secret_fraction(werner_from_fidelity(F6 - 1e-4), 1.0, "six_state")) == 0.0  # clipped


@pytest.mark.parametrize("noise", ["dephasing", "depolarising"])
def test_pauli_bookkeeping(noise):
    w, lam = 0.93, np.linspace(0.0, 1.0, 11)
    probs = pauli_probabilities(w, lam, noise)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-15)
    e_z, e_x = qber(probs)
    if noise == "dephasing":  # spec section 2: e_Z = (1-w)/2, e_X = (1 - Lambda w)/2
        np.testing.assert_allclose(e_z, (1 - w) / 2, atol=1e-15)
        np.testing.assert_allclose(e_x, (1 - lam * w) / 2, atol=1e-15)
        # pure dephasing: r = 1 - h((1 - Lambda)/2)
        r = secret_fraction(1.0, lam)
        np.testing.assert_allclose(r, np.maximum(0, 1 - binary_entropy((1 - lam) / 2)), atol=1e-14)
    else:
        np.testing.assert_allclose(e_z, (1 - w * lam) / 2, atol=1e-15)
        np.testing.assert_allclose(e_x, e_z, atol=1e-15)
    # the JAX path is the same function
    np.testing.assert_allclose(
        np.asarray(secret_fraction(jnp.asarray(w), jnp.asarray(lam), "six_state", noise)),
        secret_fraction(w, lam, "six_state", noise), rtol=1e-13, atol=1e-15,
    )


def _elementary_link_chain(p, t_star):
    """Stationary law of the elementary link (states: none, age 0..t*), solved directly."""
    n = t_star + 2
    P = np.zeros((n, n))
    P[0, 0], P[0, 1] = 1 - p, p
    for a in range(t_star):
        P[1 + a, 2 + a] = 1.0
    P[1 + t_star, 0], P[1 + t_star, 1] = 1 - p, p  # discarded, re-attempted in the same slot
    A = np.vstack([P.T - np.eye(n), np.ones(n)])
    pi = np.linalg.lstsq(A, np.r_[np.zeros(n), 1.0], rcond=None)[0]
    return pi


@pytest.mark.parametrize("p,t_star,expected", [(0.1, 5, 0.400000), (0.3, 10, 0.825000)])
def test_elementary_link_probability(p, t_star, expected):
    pi = _elementary_link_chain(p, t_star)
    assert abs(elementary_link_probability(p, t_star) - expected) < HALF_ULP_6
    assert abs(pi[1:].sum() - expected) < 1e-12  # exact chain, linear-solve rounding
    np.testing.assert_allclose(pi[1:], pi[1], rtol=1e-10)  # age uniform given a link


@pytest.mark.parametrize("t_star,expected", [(5, 0.870002), (10, 0.802000)])
def test_elementary_link_mean_fidelity(t_star, expected):
    assert abs(elementary_link_mean_fidelity(t_star, 0.95, math.exp(-1 / 20)) - expected) < HALF_ULP_6


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("m", [0, 1, 2, 5, 17])
def test_two_segment_closed_forms_equal_markov_chain(p, m):
    chain = two_segment_markov_chain(p, m)
    # both exact; 1e-10 relative covers the matrix inversion's rounding
    assert two_segment_delivery_time(p, m) == pytest.approx(chain["delivery_time"], rel=1e-10)
    np.testing.assert_allclose(two_segment_wait_distribution(p, m), chain["wait_distribution"], atol=1e-12)
    lam = math.exp(-2 / 40)
    PD = chain["wait_distribution"]
    assert two_segment_mean_lambda(p, m, lam) == pytest.approx(np.sum(PD * lam ** np.arange(m + 1)), rel=1e-10)


def test_two_segment_limits_and_inesta_checks():
    p = 0.3
    assert two_segment_delivery_time(p, 0) == pytest.approx(1 / p**2, rel=1e-14)
    # m -> inf: the finite-m form converges geometrically (q^m < 1e-30 at m = 200)
    assert two_segment_delivery_time(p, 200) == pytest.approx(two_segment_delivery_time(p, math.inf), rel=1e-13)
    lam = 0.97
    assert two_segment_mean_lambda(p, 200, lam) == pytest.approx(two_segment_mean_lambda(p, math.inf, lam), rel=1e-13)
    assert abs(two_segment_delivery_time(0.5, 2) - 2.800000) < HALF_ULP_6
    assert abs(inesta_three_node_delivery_time(0.5) - 2.800000) < HALF_ULP_6
    assert abs(inesta_three_node_delivery_time(0.3) - 5.634451) < HALF_ULP_6
    for q in (0.1, 0.37, 0.8):
        assert two_segment_delivery_time(q, 2) == pytest.approx(inesta_three_node_delivery_time(q), rel=1e-13)


@pytest.mark.parametrize(
    "p,m,t_coh,w0,ET,w_mean",
    [(0.1, 10, 400, 0.98, 17.073365, 0.950201), (0.05, 30, 200, 1.0, 32.320171, 0.945316),
     (0.1, 1000, 400, 0.98, 14.736842, 0.938181)],
)
def test_li_coopmans_elkouss_table(p, m, t_coh, w0, ET, w_mean):
    lam = math.exp(-1 / t_coh)
    assert abs(two_segment_delivery_time(p, m) - ET) < HALF_ULP_6
    assert abs(w0**2 * two_segment_mean_lambda(p, m, lam) - w_mean) < HALF_ULP_6


@pytest.mark.parametrize("protocol", ["bb84", "six_state"])
@pytest.mark.parametrize("noise", ["dephasing", "depolarising"])
def test_no_cutoff_recursion(protocol, noise):
    lam = math.exp(-2 / 40)
    # N = 2: the recursion equals the m = inf closed forms (tail mass 1e-16)
    two = no_cutoff_exact(2, 0.2, lam, 0.99, protocol, noise)
    ref = two_segment_rates(0.2, math.inf, lam, 0.99, protocol, noise)
    for k in ("delivery_time", "mean_lambda", "skr_avg", "skr_pp"):
        assert two[k] == pytest.approx(ref[k], rel=1e-12)
    # N = 4: E[T] is the expected maximum of 4 geometric variables, 9.836 (spec section 5)
    four = no_cutoff_exact(4, 0.2, lam, 0.99, protocol, noise)
    assert four["delivery_time"] == pytest.approx(expected_max_geometric(4, 0.2), rel=1e-12)
    assert abs(four["delivery_time"] - 9.836) < 5e-4
