"""A Λ-type atom in a one-sided cavity in the single-excitation subspace (photon shaping).

Amplitudes x = (c_u, c_e, c_g) of |u,0>, |e,0>, |g,1> (rotating frame, RWA, hbar = 1):

    dx/dt = M(Omega) x + b f_in(t),   b = -sqrt(2 kappa_ex) e_g   (storage input only)
    M = [[0,          -i Omega*/2,      0     ],
         [-i Omega/2, -(gamma + i Delta), -i g ],
         [0,          -i g,             -kappa]]
    phi_out(t) = sqrt(2 kappa_ex) c_g(t)        (input-output, one-sided cavity)

kappa and gamma are AMPLITUDE decay rates (population rates 2 kappa, 2 gamma), so the
cooperativity is C = g^2 / (kappa gamma) and the efficiency bound is C / (1 + C) (Gorshkov et
al., PRA 76, 033804 (2007)); kappa = kappa_ex + kappa_in (intrinsic loss multiplies eta by
kappa_ex / kappa). Units: kappa = 1 in the tasks; nothing here assumes it.

Two halves:

* JAX (differentiable, jit/vmap): ``generator``, ``expm_taylor``, ``panel_operators``,
  ``propagate_bin``, ``tail_energy``, ``solve_small`` (LAPACK-free). A bin with constant Omega
  is cut into panels of length H; inside a panel the dynamics are integrated EXACTLY (matrix
  exponentials of augmented matrices), and the target / input mode is the quadratic through
  its samples at the panel's start, middle and end. So the only discretisation error is the
  quadratic interpolation of f (local O(H^4) in the overlap), never the dynamics; the emitted
  energy is exact.
* NumPy/SciPy (reference, not on the hot path): target shapes with analytic derivatives,
  the made-to-measure (inverted) pulse, the shape-dependent limit eta_max[f] = 1 / sup B,
  and a DOP853 integrator for continuous pulses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import cumulative_simpson, solve_ivp
from scipy.interpolate import CubicSpline

# ---------------------------------------------------------------------------------- scalars


def cooperativity(g: float, kappa: float, gamma: float) -> float:
    """C = g^2 / (kappa gamma) with AMPLITUDE decay rates kappa (cavity) and gamma (e-state).

    The Kuhn-style C_K = g^2 / (2 kappa gamma) = C / 2 gives the same bound 2 C_K / (2 C_K + 1).
    """
    return g**2 / (kappa * gamma)


def efficiency_bound(g: float, kappa: float, gamma: float, kappa_ex: float | None = None) -> float:
    """Shape-independent limit (kappa_ex / kappa) C / (1 + C) of generation and storage."""
    c = cooperativity(g, kappa, gamma)
    ratio = 1.0 if kappa_ex is None else kappa_ex / kappa
    return ratio * c / (1.0 + c)


# ----------------------------------------------------------------------------- JAX dynamics


def generator(omega, delta, g, kappa, gamma) -> jnp.ndarray:
    """M of dx/dt = M x for x = (c_u, c_e, c_g); shape (..., 3, 3) complex128.

    Args:
        omega: pump Rabi frequency Omega (complex allowed), shape (...).
        delta, g, kappa, gamma: detuning, coupling, amplitude decay rates (real).
    """
    omega = jnp.asarray(omega, jnp.complex128)
    shape = omega.shape
    z = jnp.zeros(shape, jnp.complex128)
    b = lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.complex128), shape)  # noqa: E731
    rows = [
        [z, -0.5j * jnp.conj(omega), z],
        [-0.5j * omega, -(b(gamma) + 1j * b(delta)), -1j * b(g)],
        [z, -1j * b(g), -b(kappa)],
    ]
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def expm_taylor(A: jnp.ndarray, squarings: int, order: int = 16) -> jnp.ndarray:
    """expm(A) by a fixed-order Taylor series with ``squarings`` static squarings.

    Fixed trip counts, so reverse-mode differentiation and vmap are plain (jax.scipy's expm
    chooses its squarings at run time, and its vmapped gradient compiled for minutes here).
    Truncation error per call: ||A / 2^s||^(order+1) / (order+1)! relative, e.g. 2e-19 at
    ||A / 2^s|| = 0.5 and order 16, then amplified at most ~2^s by the squarings.
    """
    X = A / (2.0**squarings)
    n = A.shape[-1]
    eye = jnp.eye(n, dtype=A.dtype)
    inv_k = 1.0 / jnp.arange(order, 0, -1, dtype=jnp.float64)

    def horner(result, c):  # I + X/1 (I + X/2 (I + ...)), innermost first
        return eye + (X @ result) * c, None

    # scans, not unrolled Python loops: XLA compiled the unrolled chain ~5x slower
    result, _ = jax.lax.scan(horner, eye, inv_k)
    if squarings:
        result, _ = jax.lax.scan(lambda r, _: (r @ r, None), result, None, length=squarings)
    return result


def squarings_for(norm_bound: float, target: float = 0.5) -> int:
    """Static squarings so that norm_bound / 2^s <= target (for ``expm_taylor``)."""
    if norm_bound <= target:
        return 0
    return int(math.ceil(math.log2(norm_bound / target)))


def panel_operators(M: jnp.ndarray, H, squarings: int):
    """Exact one-panel operators of dx/dt = M x + u(t) over a panel of length H.

    With tau = (t - t0) / H in [0, 1] and A = M H:
        Phi = e^A,
        K_n = int_0^1 e^{A (1 - s)} s^n ds  (n = 0, 1, 2; the response to an input s^n),
        L_n = int_0^1 tau^n e^{A tau} dtau  (overlap of tau^n with the free evolution),
        G   = int_0^1 e^{A^dag tau} P_g e^{A tau} dtau  (P_g = |g><g|; Van Loan's formula).
    K_n come from expm of [[A, I, 0, 0], [0, 0, I, 0], [0, 0, 0, I], 0] (12 x 12), whose first
    block row is (e^A, K_0, K_1, K_2 / 2); L_n = K_n mirrored by tau = 1 - s. G is
    (e^A)^dag X with X the upper-right block of expm([[-A^dag, P_g], [0, A]]).

    Returns:
        (Phi, K (3, 3, 3) stacked K_0..K_2, L (3, 3, 3) stacked L_0..L_2, G), complex128.
    """
    A = M * H
    n = A.shape[-1]
    eye = jnp.eye(n, dtype=A.dtype)
    zero = jnp.zeros_like(A)
    F = jnp.block(
        [[A, eye, zero, zero], [zero, zero, eye, zero], [zero, zero, zero, eye], [zero, zero, zero, zero]]
    )
    E = expm_taylor(F, squarings)
    Phi, K0, K1, K2 = E[:n, :n], E[:n, n : 2 * n], E[:n, 2 * n : 3 * n], 2.0 * E[:n, 3 * n :]
    L = jnp.stack([K0, K0 - K1, K0 - 2.0 * K1 + K2])
    Pg = jnp.zeros_like(A).at[2, 2].set(1.0)
    V = expm_taylor(jnp.block([[-jnp.conj(A.T), Pg], [zero, A]]), squarings)
    G = jnp.conj(Phi.T) @ V[:n, n:]
    return Phi, jnp.stack([K0, K1, K2]), L, G


def quadratic_coefficients(samples: np.ndarray) -> np.ndarray:
    """Coefficients (q0, q1, q2) of the quadratic through each panel's 3 samples.

    Args:
        samples: (..., 2 P + 1) values on a grid with two intervals per panel (P panels).

    Returns:
        (..., P, 3): p(tau) = q0 + q1 tau + q2 tau^2 on tau in [0, 1] for every panel.
    """
    s = np.asarray(samples)
    f0, fm, f1 = s[..., 0:-1:2], s[..., 1::2], s[..., 2::2]
    return np.stack([f0, -3 * f0 + 4 * fm - f1, 2 * f0 - 4 * fm + 2 * f1], axis=-1)


def propagate_bin(x, M, H, out_q, in_q, kappa_ex, squarings: int):
    """Advance one bin (constant M) made of P panels of length H.

    Args:
        x: (3,) amplitudes at the bin start.
        M: (3, 3) generator of the bin.
        H: panel length (bin length / P).
        out_q: (P, 3) quadratic coefficients of the target f (overlap int f* phi_out), or None.
        in_q: (P, 3) quadratic coefficients of the incoming photon f_in, or None.
        kappa_ex: external cavity decay (amplitude rate) of the input-output port.

    Returns:
        (x_end (3,), overlap int f* phi_out dt over the bin (complex), emitted energy
        int |phi_out|^2 dt over the bin (real)). The energy is exact; the overlap is exact for
        f quadratic on each panel.
    """
    Phi, K, L, G = panel_operators(M, H, squarings)
    root = jnp.sqrt(2.0 * kappa_ex)
    b = jnp.zeros(3, jnp.complex128).at[2].set(-root)
    Kb = K @ b  # (3, 3): response to s^n, n = 0, 1, 2
    Lg = L[:, 2, :]  # (3, 3): rows e_g^T L_n

    def panel(carry, q):
        x, overlap, energy = carry
        q_out, q_in = q
        overlap = overlap + root * H * jnp.dot(jnp.conj(q_out), Lg @ x)
        energy = energy + 2.0 * kappa_ex * H * jnp.real(jnp.vdot(x, G @ x))
        x_new = Phi @ x + H * (q_in @ Kb)
        return (x_new, overlap, energy), None

    P = (out_q if out_q is not None else in_q).shape[0]
    zeros = jnp.zeros((P, 3), jnp.complex128)
    q_out = zeros if out_q is None else jnp.asarray(out_q, jnp.complex128)
    q_in = zeros if in_q is None else jnp.asarray(in_q, jnp.complex128)
    init = (x, jnp.zeros((), jnp.complex128), jnp.zeros((), jnp.float64))
    (x, overlap, energy), _ = _unrolled_scan(panel, init, (q_out, q_in), P)
    return x, overlap, energy


def _unrolled_scan(fn, carry, xs, n):
    for i in range(n):  # P is small (a few panels): unrolled, so XLA fuses the matvecs
        carry, _ = fn(carry, (xs[0][i], xs[1][i]))
    return carry, None


def tail_energy(x, delta, g, kappa, gamma, kappa_ex) -> jnp.ndarray:
    """Energy emitted after the pulse (Omega = 0, t -> inf): 2 kappa_ex y^dag X y, exact.

    y = (c_e, c_g) decays under A0 = [[-(gamma + i Delta), -i g], [-i g, -kappa]] (c_u is
    frozen); X solves the Lyapunov equation A0^dag X + X A0 = -|g><g| (a 4 x 4 linear solve).
    """
    A0 = generator(0.0, delta, g, kappa, gamma)[1:, 1:]
    eye = jnp.eye(2, dtype=jnp.complex128)
    # vec (column stacking): vec(A0^dag X) = (I kron A0^dag) vec X, vec(X A0) = (A0^T kron I) vec X
    lhs = jnp.kron(eye, jnp.conj(A0.T)) + jnp.kron(A0.T, eye)
    rhs = -jnp.array([0.0, 0.0, 0.0, 1.0], jnp.complex128)
    X = solve_small(lhs, rhs).reshape(2, 2).T
    y = x[1:]
    return 2.0 * kappa_ex * jnp.real(jnp.vdot(y, X @ y))


def solve_small(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """x = a^-1 b for a small square a (n, n), n static, and b (n,): Gaussian elimination with
    partial pivoting, unrolled, in plain jax.numpy (differentiable; vmap gives a batched solve).

    Not ``jnp.linalg.solve``: under vmap that is a batched LAPACK getrf, and jaxlib 0.10.2's
    batched LAPACK kernels can deadlock XLA's CPU thread pool (docs/results/README.md). Same
    backward stability as LAPACK's getrf + getrs (partial pivoting)."""
    n = a.shape[-1]
    if a.shape != (n, n) or b.shape != (n,):
        raise ValueError(f"solve_small needs a (n, n) and b (n,), got a.shape={a.shape}, b.shape={b.shape}")
    dtype = jnp.result_type(a, b)
    m = jnp.concatenate([jnp.asarray(a, dtype), jnp.asarray(b, dtype)[:, None]], axis=1)
    rows = jnp.arange(n)
    for k in range(n):
        piv = k + jnp.argmax(jnp.abs(m[k:, k]))
        swap = jnp.where(rows == k, piv, jnp.where(rows == piv, k, rows))
        m = m[swap]
        factors = jnp.where(rows > k, m[:, k] / m[k, k], 0.0)
        m = m - factors[:, None] * m[k][None, :]
    x = jnp.zeros((n,), dtype)
    for k in reversed(range(n)):
        x = x.at[k].set((m[k, n] - m[k, k + 1:n] @ x[k + 1:]) / m[k, k])
    return x


# ------------------------------------------------------------------------- NumPy reference


@dataclass(frozen=True)
class TargetShape:
    """A normalised wave packet with derivatives: f(t), f'(t), f''(t) (complex NumPy arrays).

    Build with ``gaussian``, ``sech`` or ``sampled``. ``grad2_norm`` is int |f'|^2 dt (or None).
    """

    name: str
    f: Callable[[np.ndarray], np.ndarray]
    df: Callable[[np.ndarray], np.ndarray]
    ddf: Callable[[np.ndarray], np.ndarray]
    grad2_norm: float | None = None

    def reversed(self) -> "TargetShape":
        """f~(t) = f*(-t): the time-reversed mode (storage of f_in is generation of f~)."""
        return TargetShape(
            self.name + "~",
            lambda t: np.conj(self.f(-t)),
            lambda t: -np.conj(self.df(-t)),
            lambda t: np.conj(self.ddf(-t)),
            self.grad2_norm,
        )


def gaussian(sigma: float) -> TargetShape:
    """f = (pi sigma^2)^(-1/4) exp(-t^2 / (2 sigma^2)); int |f'|^2 = 1 / (2 sigma^2)."""
    norm = (math.pi * sigma**2) ** -0.25
    f = lambda t: norm * np.exp(-np.asarray(t) ** 2 / (2 * sigma**2)) + 0j  # noqa: E731
    df = lambda t: -np.asarray(t) / sigma**2 * f(t)  # noqa: E731
    ddf = lambda t: (np.asarray(t) ** 2 / sigma**4 - 1 / sigma**2) * f(t)  # noqa: E731
    return TargetShape("gaussian", f, df, ddf, 1 / (2 * sigma**2))


def sech(T: float) -> TargetShape:
    """f = sech(t / T) / sqrt(2 T); int |f'|^2 = 1 / (3 T^2)."""
    a = 1 / math.sqrt(2 * T)
    f = lambda t: a / np.cosh(np.asarray(t) / T) + 0j  # noqa: E731
    df = lambda t: -np.tanh(np.asarray(t) / T) / T * f(t)  # noqa: E731
    ddf = lambda t: (1 - 2 / np.cosh(np.asarray(t) / T) ** 2) / T**2 * f(t)  # noqa: E731
    return TargetShape("sech", f, df, ddf, 1 / (3 * T**2))


def sampled(t: np.ndarray, values: np.ndarray) -> TargetShape:
    """A user-supplied shape: cubic spline through (t, values) (Re and Im), zero outside.

    Derivatives are the spline's (f'' piecewise linear): the made-to-measure pulse of a
    sampled shape is only as smooth as the spline.
    """
    t = np.asarray(t, np.float64)
    values = np.asarray(values, np.complex128)
    re, im = CubicSpline(t, values.real), CubicSpline(t, values.imag)
    lo, hi = t[0], t[-1]

    def make(nu):
        def fn(x):
            x = np.asarray(x, np.float64)
            inside = (x >= lo) & (x <= hi)
            return np.where(inside, re(x, nu) + 1j * im(x, nu), 0.0)

        return fn

    return TargetShape("sampled", make(0), make(1), make(2), None)


def departed_population(t, shape: TargetShape, g, kappa, gamma, kappa_ex=None) -> np.ndarray:
    """B(t): population that has left |u> by t for an eta = 1 emission of ``shape``.

    c_g = f / sqrt(2 kappa_ex), c_e = i (c_g' + kappa c_g) / g,
    B = |c_e|^2 + |c_g|^2 + int_{t_0}^t (2 kappa |c_g|^2 + 2 gamma |c_e|^2) (cumulative Simpson
    on the grid ``t``, which must start where f is negligible).
    """
    kex = kappa if kappa_ex is None else kappa_ex
    cg = shape.f(t) / math.sqrt(2 * kex)
    ce = 1j * (shape.df(t) / math.sqrt(2 * kex) + kappa * cg) / g
    loss = 2 * kappa * np.abs(cg) ** 2 + 2 * gamma * np.abs(ce) ** 2
    return np.abs(ce) ** 2 + np.abs(cg) ** 2 + cumulative_simpson(loss, x=t, initial=0.0)


def shape_limit(t, shape: TargetShape, g, kappa, gamma, kappa_ex=None) -> float:
    """eta_max[f] = 1 / sup_t B(t), the largest efficiency with which f can be emitted
    (independent of Delta). Equals C / (1 + C + int|f'|^2 / kappa^2) when B is monotone."""
    return float(1.0 / np.max(departed_population(t, shape, g, kappa, gamma, kappa_ex)))


def shape_limit_formula(shape: TargetShape, g, kappa, gamma) -> float:
    """C / (1 + C + int |f'|^2 dt / kappa^2): eta_max[f] for smooth, slow pulses (B monotone)."""
    c = cooperativity(g, kappa, gamma)
    return c / (1 + c + shape.grad2_norm / kappa**2)


def made_to_measure(t, shape: TargetShape, eta, g, kappa, gamma, delta=0.0, kappa_ex=None) -> dict:
    """The exact (inverted) pulse Omega(t) that emits phi_out = sqrt(eta) f, on the grid ``t``.

    c_g = sqrt(eta) f / sqrt(2 kappa_ex); c_e = i (c_g' + kappa c_g) / g;
    |c_u|^2 = 1 - eta B(t); d arg c_u / dt = -Re(X* c_e) / |c_u|^2;
    Omega = 2 X / c_u with X = i c_e' + i (gamma + i Delta) c_e - g c_g.
    Requires eta < eta_max[f] (else |c_u| reaches 0 and Omega diverges).

    Returns:
        dict of arrays on ``t``: omega (complex), c_u, c_e, c_g.

    Raises:
        ValueError: if eta >= the shape limit on this grid.
    """
    kex = kappa if kappa_ex is None else kappa_ex
    s = math.sqrt(eta / (2 * kex))
    cg, dcg, ddcg = s * shape.f(t), s * shape.df(t), s * shape.ddf(t)
    ce = 1j * (dcg + kappa * cg) / g
    dce = 1j * (ddcg + kappa * dcg) / g
    pop_u = 1.0 - eta * departed_population(t, shape, g, kappa, gamma, kappa_ex)
    if np.min(pop_u) <= 0:
        raise ValueError(
            f"eta must be below the shape limit {1 / (1 - np.min(pop_u) + 1e-300) * eta:.6g}, got eta={eta!r}"
        )
    X = 1j * dce + 1j * (gamma + 1j * delta) * ce - g * cg
    phase = cumulative_simpson(-np.real(np.conj(X) * ce) / pop_u, x=t, initial=0.0)
    cu = np.sqrt(pop_u) * np.exp(1j * phase)
    return {"omega": 2 * X / cu, "c_u": cu, "c_e": ce, "c_g": cg}


def integrate_continuous(
    omega: Callable[[float], complex],
    t_span: tuple[float, float],
    g, kappa, gamma, delta=0.0, kappa_ex=None,
    *,
    target: Callable[[float], complex] | None = None,
    f_in: Callable[[float], complex] | None = None,
    x0=(1.0, 0.0, 0.0),
    rtol: float = 1e-10,
    atol: float = 1e-12,
) -> dict:
    """Reference integration (DOP853) of the amplitudes for a continuous pulse Omega(t).

    Also integrates the emitted energy int |phi_out|^2 and, with ``target``, the overlap
    int target* phi_out. With ``f_in`` the cavity is driven by -sqrt(2 kappa_ex) f_in(t).

    Returns:
        dict: x (3,) at the end, eta, overlap (complex), sol (the solve_ivp result).
    """
    kex = kappa if kappa_ex is None else kappa_ex
    root = math.sqrt(2 * kex)

    def rhs(t, y):
        cu, ce, cg = y[0] + 1j * y[1], y[2] + 1j * y[3], y[4] + 1j * y[5]
        om = omega(t)
        dcu = -0.5j * np.conj(om) * ce
        dce = -(gamma + 1j * delta) * ce - 0.5j * om * cu - 1j * g * cg
        dcg = -kappa * cg - 1j * g * ce
        if f_in is not None:
            dcg = dcg - root * f_in(t)
        phi = root * cg
        dov = np.conj(target(t)) * phi if target is not None else 0.0
        return [dcu.real, dcu.imag, dce.real, dce.imag, dcg.real, dcg.imag,
                abs(phi) ** 2, np.real(dov), np.imag(dov)]

    x0 = np.asarray(x0, np.complex128)
    y0 = [x0[0].real, x0[0].imag, x0[1].real, x0[1].imag, x0[2].real, x0[2].imag, 0.0, 0.0, 0.0]
    sol = solve_ivp(rhs, t_span, y0, method="DOP853", rtol=rtol, atol=atol, dense_output=True)
    if not sol.success:  # pragma: no cover
        raise RuntimeError(f"DOP853 failed: {sol.message}")
    y = sol.y[:, -1]
    x = np.array([y[0] + 1j * y[1], y[2] + 1j * y[3], y[4] + 1j * y[5]])
    return {"x": x, "eta": y[6], "overlap": y[7] + 1j * y[8], "sol": sol}


def emit_made_to_measure(
    shape: TargetShape, eta, t_span, g, kappa, gamma, delta=0.0, kappa_ex=None,
    *, rtol: float = 1e-10, atol: float = 1e-12,
) -> dict:
    """Forward-integrate (DOP853) the atom-cavity driven by the continuous inverted pulse.

    Omega(t) is evaluated on the fly from the analytic target amplitudes (``made_to_measure``'s
    formulas), with the cumulative loss int (2 kappa |c_g|^2 + 2 gamma |c_e|^2) and the phase of
    c_u carried as two extra ODE components, so the pulse is exact to solver tolerance (no
    interpolation). Returns ``integrate_continuous``'s dict (x, eta, overlap with f, sol).
    """
    kex = kappa if kappa_ex is None else kappa_ex
    s = math.sqrt(eta / (2 * kex))
    root = math.sqrt(2 * kex)

    def target_amps(t):
        cg, dcg, ddcg = s * shape.f(t), s * shape.df(t), s * shape.ddf(t)
        ce = 1j * (dcg + kappa * cg) / g
        dce = 1j * (ddcg + kappa * dcg) / g
        return cg, ce, dce

    def rhs(t, y):
        cu, ce, cg = y[0] + 1j * y[1], y[2] + 1j * y[3], y[4] + 1j * y[5]
        tg, te, tde = target_amps(t)
        pop_u = 1.0 - abs(te) ** 2 - abs(tg) ** 2 - y[9]
        X = 1j * tde + 1j * (gamma + 1j * delta) * te - g * tg
        tu = np.sqrt(pop_u) * np.exp(1j * y[10])
        om = 2 * X / tu
        dcu = -0.5j * np.conj(om) * ce
        dce = -(gamma + 1j * delta) * ce - 0.5j * om * cu - 1j * g * cg
        dcg = -kappa * cg - 1j * g * ce
        phi = root * cg
        dov = np.conj(shape.f(t)) * phi
        dloss = 2 * kappa * abs(tg) ** 2 + 2 * gamma * abs(te) ** 2
        dphase = -np.real(np.conj(X) * te) / pop_u
        return [dcu.real, dcu.imag, dce.real, dce.imag, dcg.real, dcg.imag,
                abs(phi) ** 2, np.real(dov), np.imag(dov), dloss, dphase]

    y0 = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    sol = solve_ivp(rhs, t_span, y0, method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:  # pragma: no cover
        raise RuntimeError(f"DOP853 failed: {sol.message}")
    y = sol.y[:, -1]
    x = np.array([y[0] + 1j * y[1], y[2] + 1j * y[3], y[4] + 1j * y[5]])
    return {"x": x, "eta": y[6], "overlap": y[7] + 1j * y[8], "sol": sol}
