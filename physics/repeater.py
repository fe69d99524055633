"""Slotted quantum-repeater physics: secret fractions, link bookkeeping and closed forms.

Model (shared/reference/memory-cutoff.md, section 1): a chain of N segments; one slot is one
heralded generation attempt; a free segment succeeds with probability
p = p_link exp(-L0 / L_att). A stored link loses coherence by a factor lambda per slot
(lambda = exp(-n_q / T_coh), T_coh in slots per memory qubit, n_q = 2 stored qubits per link).
Initial links are Werner states with parameter w0 (fidelity F0 = (1 + 3 w0) / 4); an ideal swap
multiplies Werner parameters and coherence factors, so an end-to-end pair of N segments has
w = w0^N and a coherence factor Lambda = prod(lambda^(storage slots of its pieces)).

Two memory-noise bookkeepings:
    "dephasing"    Bell-diagonal (Pauli) bookkeeping: Werner(w) followed by Z dephasing with
                   coherence factor Lambda (e_Z = (1 - w)/2, e_X = (1 - Lambda w)/2).
    "depolarising" the pair stays Werner with parameter w Lambda.

Secret fractions are asymptotic, one-way post-processing, log base 2 (the Li et al. code uses
the natural log and overestimates by 15.5 %: spec pitfall 1).

Every function here accepts NumPy/Python numbers (returns NumPy) or JAX arrays (returns JAX,
jittable); closed forms (``two_segment_*``, ``elementary_link_*``, ``no_cutoff_exact``) are
NumPy only. Rates are per slot; divide by the slot duration tau = L0 / c for bit/s.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

PROTOCOLS = ("bb84", "six_state")
MEMORY_NOISE = ("dephasing", "depolarising")
SPEED_OF_LIGHT_FIBRE_KM_S = 2e5
ATTENUATION_LENGTH_KM = 22.0
_LN2 = math.log(2.0)


def _xp(*args: Any):
    """jax.numpy if any argument is a JAX array or tracer, else numpy."""
    return jnp if any(isinstance(a, jax.Array) for a in args) else np


def _xlogy(xp, x, y):
    return jax.scipy.special.xlogy(x, y) if xp is jnp else scipy.special.xlogy(x, y)


def binary_entropy(x):
    """h(x) = -x log2 x - (1 - x) log2(1 - x), with h(0) = h(1) = 0. Shape-preserving."""
    xp = _xp(x)
    x = xp.asarray(x, dtype=xp.float64)
    return -(_xlogy(xp, x, x) + _xlogy(xp, 1.0 - x, 1.0 - x)) / _LN2


def shannon_entropy(probs, axis: int = -1):
    """Shannon entropy in bits of probability vectors along ``axis``."""
    xp = _xp(probs)
    probs = xp.asarray(probs, dtype=xp.float64)
    return -xp.sum(_xlogy(xp, probs, probs), axis=axis) / _LN2


def werner_from_fidelity(F):
    """Werner parameter w = (4F - 1) / 3 of a Werner state of fidelity F."""
    return (4.0 * F - 1.0) / 3.0


def fidelity_from_werner(w):
    """Fidelity F = (1 + 3w) / 4 with Phi+ of a Werner state of parameter w."""
    return (1.0 + 3.0 * w) / 4.0


def pauli_probabilities(w, Lambda, memory_noise: str = "dephasing"):
    """Pauli-error probabilities (p_I, p_X, p_Y, p_Z) relative to Phi+, shape (..., 4).

    Args:
        w: Werner parameter of the pair before memory noise (w0^N for N segments).
        Lambda: accumulated memory coherence factor in [0, 1] (1: no storage).
        memory_noise: "dephasing" (Z dephasing on top of Werner) or "depolarising"
            (Werner with parameter w Lambda).
    """
    xp = _xp(w, Lambda)
    w = xp.asarray(w, dtype=xp.float64)
    Lambda = xp.asarray(Lambda, dtype=xp.float64)
    w, Lambda = xp.broadcast_arrays(w, Lambda)
    if memory_noise == "depolarising":
        v = w * Lambda
        return xp.stack([(1 + 3 * v) / 4, (1 - v) / 4, (1 - v) / 4, (1 - v) / 4], axis=-1)
    if memory_noise != "dephasing":
        raise ValueError(f"memory_noise must be one of {MEMORY_NOISE}, got memory_noise={memory_noise!r}")
    # Werner(w) then Z with probability (1 - Lambda)/2: p_I <-> p_Z and p_X <-> p_Y mix.
    return xp.stack(
        [(1 + w + 2 * Lambda * w) / 4, (1 - w) / 4, (1 - w) / 4, (1 + w - 2 * Lambda * w) / 4], axis=-1
    )


def qber(probs):
    """(e_Z, e_X) = (p_X + p_Y, p_Z + p_Y) of Pauli probabilities (..., 4)."""
    return probs[..., 1] + probs[..., 2], probs[..., 3] + probs[..., 2]


def secret_fraction_from_pauli(probs, protocol: str = "bb84"):
    """Asymptotic secret fraction of Pauli probabilities (..., 4); clipped at 0 (no key).

    bb84: 1 - h(e_X) - h(e_Z); six_state: 1 - H(p_I, p_X, p_Y, p_Z).
    """
    xp = _xp(probs)
    if protocol == "bb84":
        e_z, e_x = qber(probs)
        r = 1.0 - binary_entropy(e_x) - binary_entropy(e_z)
    elif protocol == "six_state":
        r = 1.0 - shannon_entropy(probs)
    else:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got protocol={protocol!r}")
    return xp.maximum(r, 0.0)


def secret_fraction(w, Lambda, protocol: str = "bb84", memory_noise: str = "dephasing"):
    """Secret fraction r(w, Lambda) of a delivered pair (bits per pair, log base 2).

    Example:
        >>> float(secret_fraction(werner_from_fidelity(0.95), 1.0))   # r_BB84 at F = 0.95
        0.578315...
    """
    return secret_fraction_from_pauli(pauli_probabilities(w, Lambda, memory_noise), protocol)


def link_success_probability(p_link: float, segment_length_km: float, attenuation_length_km: float = ATTENUATION_LENGTH_KM) -> float:
    """p = p_link exp(-L0 / L_att): heralded generation probability per slot."""
    return p_link * math.exp(-segment_length_km / attenuation_length_km)


def slot_duration(segment_length_km: float, c_km_s: float = SPEED_OF_LIGHT_FIBRE_KM_S) -> float:
    """tau = L0 / c in seconds (spec default; 2 L0 / c is the other common convention)."""
    return segment_length_km / c_km_s


def coherence_factor(coherence_time: float, stored_qubits: int = 2) -> float:
    """lambda = exp(-n_q / T_coh) per slot of one stored link (T_coh in slots per qubit)."""
    return math.exp(-stored_qubits / coherence_time)


# ----------------------------------------------------------------------------- closed forms
def elementary_link_probability(p: float, t_star: int) -> float:
    """Steady-state Pr[link] of one elementary link with a t* cut-off (spec 4a).

    Convention: a link is discarded once its age exceeds t* and re-attempted in the same slot:
    Pr[link] = (t* + 1) p / (1 + t* p).
    """
    return (t_star + 1) * p / (1.0 + t_star * p)


def elementary_link_mean_fidelity(t_star: int, F0: float, lam: float) -> float:
    """<F | link> for a t* cut-off and depolarising memory: the age is uniform on {0..t*},
    F(m) = 1/4 + (F0 - 1/4) lam^m."""
    m = np.arange(t_star + 1)
    return float(np.mean(0.25 + (F0 - 0.25) * lam**m))


def two_segment_delivery_time(p: float, m: float) -> float:
    """E[T](m) in slots for two segments, parallel attempts, swap ASAP, cut-off m (spec 4b).

    m = math.inf: (3 - 2p) / (p (2 - p)); m = 0: 1 / p^2.
    """
    q = 1.0 - p
    if math.isinf(m):
        return (3.0 - 2.0 * p) / (p * (2.0 - p))
    a = 2.0 * q / (1.0 + q)
    return (1.0 / (1.0 - q * q) + a * (1.0 - q**m) / p) / (1.0 - a * q**m)


def two_segment_wait_distribution(p: float, m: float, d_max: int | None = None) -> np.ndarray:
    """P(D = d), d = 0..m, of the waiting slots D of the first link at delivery (spec 4b).

    For m = inf the series is cut at ``d_max`` (default: where q^d < 1e-18).
    """
    q = 1.0 - p
    a = 2.0 * q / (1.0 + q)
    if math.isinf(m):
        norm = 1.0
        if d_max is None:
            d_max = 1 if q == 0 else int(math.ceil(math.log(1e-18) / math.log(q))) + 1
    else:
        norm = 1.0 - a * q**m
        d_max = int(m)
    d = np.arange(1, d_max + 1)
    return np.concatenate([[p / (1.0 + q)], a * p * q ** (d - 1.0)]) / norm


def two_segment_mean_lambda(p: float, m: float, lam: float) -> float:
    """E[lam^D], the mean coherence factor of delivered pairs (spec 4b)."""
    q = 1.0 - p
    a = 2.0 * q / (1.0 + q)
    if math.isinf(m):
        return p / (2.0 - p) * (1.0 + 2.0 * q * lam / (1.0 - q * lam))
    return (p / (1.0 + q) + a * p * lam * (1.0 - (q * lam) ** m) / (1.0 - q * lam)) / (1.0 - a * q**m)


def inesta_three_node_delivery_time(p: float) -> float:
    """Inesta et al.'s closed form for n = 3 nodes, t_cut = 2 (equals E[T](2))."""
    return (2 * p**3 - 6 * p**2 + 4 * p + 1) / (2 * p**4 - 6 * p**3 + 5 * p**2)


def two_segment_rates(
    p: float, m: float, lam: float, w0: float, protocol: str = "bb84", memory_noise: str = "dephasing"
) -> dict[str, float]:
    """Exact rates of the two-segment chain with cut-off m (spec 4b), per slot.

    Returns E[T], <Lambda> = E[lam^D], SKR_avg = r(w0^2, <Lambda>) / E[T] and
    SKR_pp = sum_d P(D=d) r(w0^2, lam^d) / E[T].
    """
    ET = two_segment_delivery_time(p, m)
    PD = two_segment_wait_distribution(p, m)
    mean_lam = two_segment_mean_lambda(p, m, lam)
    w = w0**2
    r_pairs = secret_fraction(w, lam ** np.arange(PD.size), protocol, memory_noise)
    return {
        "delivery_time": ET,
        "mean_lambda": mean_lam,
        "skr_avg": float(secret_fraction(w, mean_lam, protocol, memory_noise)) / ET,
        "skr_pp": float(np.sum(PD * r_pairs)) / ET,
    }


def _runs(pattern: int, n: int) -> int:
    """Number of maximal runs of set bits (stored links under swap ASAP) in an n-bit pattern."""
    bits = [(pattern >> i) & 1 for i in range(n)]
    return sum(1 for i in range(n) if bits[i] and (i == 0 or not bits[i - 1]))


def no_cutoff_exact(
    n_segments: int, p: float, lam: float, w0: float, protocol: str = "bb84",
    memory_noise: str = "dephasing", tail: float = 1e-16,
) -> dict[str, float]:
    """Exact rates of the N-segment chain without cut-off (swap ASAP, spec A-3 dynamics).

    Without cut-offs each segment, once generated, is held until delivery, so T is the maximum
    of N geometric(p) variables, and the storage exponent S (Lambda = lam^S) grows each slot by
    the number of stored links (runs of covered segments). A forward recursion over
    (covered pattern, S) gives the joint law of (T, S) up to a tail mass ``tail``.

    Returns delivery_time E[T], mean_lambda E[lam^S], skr_avg, skr_pp (per slot).
    """
    n = int(n_segments)
    q = 1.0 - p
    full = (1 << n) - 1
    t_max = 1 if q == 0 else int(math.ceil(math.log(tail / n) / math.log(q))) + 2
    s_max = t_max * ((n + 1) // 2) + 1
    runs = np.array([_runs(s, n) for s in range(1 << n)])
    # generation transition between patterns: covered segments stay, free ones succeed w.p. p
    trans = np.zeros((1 << n, 1 << n))
    for s in range(1 << n):
        free = [i for i in range(n) if not (s >> i) & 1]
        for k in range(1 << len(free)):
            new = s
            prob = 1.0
            for b, i in enumerate(free):
                if (k >> b) & 1:
                    new |= 1 << i
                    prob *= p
                else:
                    prob *= q
            trans[s, new] += prob
    dist = np.zeros((1 << n, s_max))
    dist[0, 0] = 1.0
    ET, delivered = 0.0, np.zeros(s_max)
    for t in range(1, t_max + 1):
        shifted = np.zeros_like(dist)
        for s in range(1 << n):  # (b) every stored link decays once
            r = runs[s]
            shifted[s, r:] = dist[s, : s_max - r]
        dist = trans.T @ shifted  # (c) + (d): generation; merging does not change S
        ET += t * dist[full].sum()
        delivered += dist[full]
        dist[full] = 0.0
    S = np.arange(s_max)
    total = delivered.sum()
    mean_lam = float(np.sum(delivered * lam**S) / total)
    r_pairs = secret_fraction(w0**n, lam**S, protocol, memory_noise)
    ET = float(ET / total)
    return {
        "delivery_time": ET,
        "mean_lambda": mean_lam,
        "skr_avg": float(secret_fraction(w0**n, mean_lam, protocol, memory_noise)) / ET,
        "skr_pp": float(np.sum(delivered * r_pairs) / total) / ET,
    }


def expected_max_geometric(n: int, p: float) -> float:
    """E[max of n iid geometric(p) on {1, 2, ...}] = sum_{t>=0} 1 - (1 - q^t)^n (exact series
    by inclusion-exclusion: sum_k (-1)^(k+1) C(n,k) / (1 - q^k))."""
    q = 1.0 - p
    return float(sum((-1) ** (k + 1) * math.comb(n, k) / (1.0 - q**k) for k in range(1, n + 1)))
