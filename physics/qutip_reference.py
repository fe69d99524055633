"""QuTiP reference backend: evaluates a model with qutip.sesolve / mesolve.

Used by tests and benchmarks as the independent check of the JAX core; never on the hot path.

The omega-derivative is propagated with a dual-number embedding: with N = [[0, 1], [0, 0]]
(N^2 = 0), the state psi + eps dpsi of H + eps G evolves under
    H_big = 1 (x) H + N (x) G
acting on e0 (x) dpsi + e1 (x) psi, and rho + eps drho as R = 1 (x) rho + N (x) drho under the
Lindbladian -i[H_big, .] + sum D[1 (x) c]. Both equations are linear and exact, so the
derivative is as accurate as the ODE solver (no finite differences). H_big is not Hermitian,
so the mixed case passes an explicit superoperator: qutip.liouvillian(H) would take
rho H_big^dag for the right multiplication.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import qutip

# Tight tolerances: the reference must be more accurate than the 1e-8 agreement tested. With
# QuTiP's default Adams method at atol 1e-13 the j = 10 phase-damped QFI was off by 1e-8;
# dop853 at these settings agrees with the expm-based core to ~2e-13.
PRECISE = {
    "method": "dop853",
    "atol": 1e-15,
    "rtol": 1e-13,
    "nsteps": 1_000_000,
    "normalize_output": False,
}


def qfi_pure_np(psi: np.ndarray, dpsi: np.ndarray) -> float:
    """4 (<dpsi|dpsi> - |<psi|dpsi>|^2), NumPy."""
    return float(4.0 * (np.vdot(dpsi, dpsi).real - abs(np.vdot(psi, dpsi)) ** 2))


def qfi_sld_np(rho: np.ndarray, drho: np.ndarray, rel_cutoff: float = 1e-12) -> float:
    """SLD QFI, NumPy (same formula as qsmgym.physics.qfi.qfi_sld)."""
    lam, v = np.linalg.eigh(0.5 * (rho + rho.conj().T))
    d = v.conj().T @ (0.5 * (drho + drho.conj().T)) @ v
    s = lam[:, None] + lam[None, :]
    keep = s > rel_cutoff * lam.max()
    return float(2.0 * np.sum(np.abs(d[keep]) ** 2 / s[keep]))


class QutipTangentStepper:
    """Steps (state, d state / d omega) over intervals of length dt with QuTiP's solvers.

    Args:
        generator: G, with H = omega G (qutip.Qobj).
        omega: value of the parameter.
        dt: interval length.
        c_ops: collapse operators (omega-independent); empty -> pure states and sesolve.
        options: QuTiP solver options; defaults to ``PRECISE``.

    Example:
        >>> s = QutipTangentStepper(qutip.jmat(1, "y"), 1.0, 1.0)
        >>> s.reset(qutip.basis(3, 0)); s.step()  # QFI after one interval
    """

    def __init__(self, generator, omega: float, dt: float, c_ops=(), options: dict | None = None):
        self.d = generator.shape[0]
        self.dt = float(dt)
        self.mixed = len(c_ops) > 0
        self.options = dict(PRECISE if options is None else options)
        self.options.setdefault("normalize_output", False)
        eye2 = qutip.qeye(2)
        nil = qutip.Qobj(np.array([[0.0, 1.0], [0.0, 0.0]]))
        H = omega * generator
        self.H_big = qutip.tensor(eye2, H) + qutip.tensor(nil, generator)
        if self.mixed:
            L = -1j * (qutip.spre(self.H_big) - qutip.spost(self.H_big))
            for c in c_ops:
                L = L + qutip.lindblad_dissipator(qutip.tensor(eye2, c))
            self.L_big = L
        self.state = None

    def reset(self, psi0) -> None:
        """Start from a ket (converted to a density matrix in the mixed case)."""
        d = self.d
        if self.mixed:
            rho = (psi0 * psi0.dag()).full()
            big = np.zeros((2 * d, 2 * d), complex)
            big[:d, :d] = rho
            big[d:, d:] = rho
            self.state = qutip.Qobj(big, dims=[[2, d], [2, d]])
        else:
            big = np.zeros(2 * d, complex)
            big[d:] = psi0.full().ravel()
            self.state = qutip.Qobj(big, dims=[[2, d], [1, 1]])

    def step(self, unitary=None) -> float:
        """Evolve one interval, apply ``unitary`` (omega-independent) if given; return QFI."""
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        if self.mixed:
            res = qutip.mesolve(self.L_big, self.state, [0.0, self.dt], options=self.options)
        else:
            res = qutip.sesolve(self.H_big, self.state, [0.0, self.dt], options=self.options)
        state = res.states[-1]
        if unitary is not None:
            U = qutip.tensor(qutip.qeye(2), unitary)
            state = U * state * U.dag() if self.mixed else U * state
        self.state = state
        return self.qfi()

    def state_and_derivative(self) -> tuple[np.ndarray, np.ndarray]:
        """(psi, dpsi) or (rho, drho) as NumPy arrays."""
        d = self.d
        a = self.state.full()
        if self.mixed:
            return a[:d, :d], a[:d, d:]
        a = a.ravel()
        return a[d:], a[:d]

    def qfi(self) -> float:
        s, ds = self.state_and_derivative()
        return qfi_sld_np(s, ds) if self.mixed else qfi_pure_np(s, ds)


def qfi_trajectory_qutip(model: dict[str, Any], strengths, options: dict | None = None) -> np.ndarray:
    """QFI after each period for a kicked model from ``KickedTopSensor.qutip_model``."""
    stepper = QutipTangentStepper(
        model["generator"], model["omega"], model["dt"], model["c_ops"], options
    )
    stepper.reset(model["psi0"])
    return np.array([stepper.step(model["kick"](k)) for k in strengths])


def _coeff(f):
    """A one-argument coefficient function t -> f(t) (hides f's defaults from QuTiP)."""

    def coefficient(t):
        return f(t)

    return coefficient


class QutipTimeDependentStepper:
    """``TimeDependentEstimation`` stepped bin by bin with QuTiP, at theta = nominal + shift.

    The continuous-time model H(t) = h(t) . sigma (signal field rotating continuously, the
    control per the env's control mode, written here independently of the JAX core) is
    integrated with sesolve (noiseless) or mesolve (explicit dual-number superoperator), with
    d H / d theta as the tangent generator. The QFI comes from the Hilbert-space state:
    4 Var for kets, the SLD formula for rho. ``step(action)`` returns (reward, done) with the
    env's "increment" reward; ``qfi`` holds I(t_k).
    """

    def __init__(self, task, params, options: dict | None = None):
        opts = dict(PRECISE if options is None else options)
        opts.setdefault("normalize_output", False)
        self.task, self.params, self.options = task, params, opts
        B, omega = float(params.B), float(params.omega)
        if task.param == "omega":
            omega += float(params.shift)
        else:
            B += float(params.shift)
        self.B, self.omega = B, omega
        sx, sy, sz = qutip.sigmax(), qutip.sigmay(), qutip.sigmaz()
        eye2 = qutip.qeye(2)
        nil = qutip.Qobj(np.array([[0.0, 1.0], [0.0, 0.0]]))
        self._ops = [qutip.tensor(eye2, op) for op in (sx, sy, sz)] + [qutip.tensor(nil, sx), qutip.tensor(nil, sz)]
        if task.param == "omega":
            self._dgx = lambda t: B * t * np.sin(omega * t)
            self._dgz = lambda t: -B * t * np.cos(omega * t)
        else:
            self._dgx = lambda t: -np.cos(omega * t)
            self._dgz = lambda t: -np.sin(omega * t)
        gamma = float(params.gamma)
        c_ops = []
        if task.noise == "dephasing":
            rate = gamma / 2 if task.dephasing_convention == "coherence_rate" else gamma
            c_ops = [np.sqrt(rate) * sz]
        elif task.noise == "emission":
            c_ops = [np.sqrt(gamma) * qutip.Qobj(np.array([[0.0, 0.0], [1.0, 0.0]]))]  # |1><0|
        self.mixed = bool(c_ops)
        if self.mixed:
            self._superops = [-1j * (qutip.spre(op) - qutip.spost(op)) for op in self._ops]
            self._diss = sum(qutip.lindblad_dissipator(qutip.tensor(eye2, c)) for c in c_ops)
        self.dt_bin = float(params.total_time) / task.n_bins
        self.bound = float(task.bound(params, params.total_time))
        self.reset()

    def reset(self) -> None:
        psi0 = np.array([1.0, 1j]) / np.sqrt(2)
        if self.mixed:
            rho = np.outer(psi0, psi0.conj())
            M = np.zeros((4, 4), complex)
            M[:2, :2] = rho
            M[2:, 2:] = rho
            self.state = qutip.Qobj(M, dims=[[2, 2], [2, 2]])
        else:
            v = np.zeros(4, complex)
            v[2:] = psi0
            self.state = qutip.Qobj(v, dims=[[2, 2], [1, 1]])
        self.k, self.qfi, self.u = 0, 0.0, np.zeros(3)

    def _control(self, action):
        a = np.asarray(action, np.float64)
        u_max, du_max, t0 = float(self.params.u_max), float(self.params.du_max), self.k * self.dt_bin
        mode = self.task.control_mode
        if mode == "zoh":
            u = u_max * a
            return (lambda t: u), u
        u_end = np.clip(self.u + du_max * a, -u_max, u_max)
        if mode == "increment":
            return (lambda t: u_end), u_end
        u0, dt = self.u, self.dt_bin
        return (lambda t: u0 + (u_end - u0) * (t - t0) / dt), u_end

    def step(self, action) -> tuple[float, bool]:
        control, self.u = self._control(action)
        B, omega = self.B, self.omega
        # QuTiP 5 reads a coefficient's parameters other than t from ``args``: closures only
        coeffs = [
            _coeff(lambda t: -B * np.cos(omega * t) + control(t)[0]),
            _coeff(lambda t: control(t)[1]),
            _coeff(lambda t: -B * np.sin(omega * t) + control(t)[2]),
            _coeff(self._dgx),
            _coeff(self._dgz),
        ]
        tlist = [self.k * self.dt_bin, (self.k + 1) * self.dt_bin]
        if self.mixed:
            L = qutip.QobjEvo([self._diss] + [[op, f] for op, f in zip(self._superops, coeffs)])
            self.state = qutip.mesolve(L, self.state, tlist, options=self.options).states[-1]
            a = self.state.full()
            qfi = qfi_sld_np(a[:2, :2], a[:2, 2:])
        else:
            H = qutip.QobjEvo([[op, f] for op, f in zip(self._ops, coeffs)])
            self.state = qutip.sesolve(H, self.state, tlist, options=self.options).states[-1]
            a = self.state.full().ravel()
            qfi = qfi_pure_np(a[2:], a[:2])
        reward = (qfi - self.qfi) / self.bound
        self.qfi = qfi
        self.k += 1
        return reward, self.k >= self.task.n_bins


def qfi_trajectory_time_dependent(task, params, actions: np.ndarray, options: dict | None = None) -> np.ndarray:
    """I(t_k) after each bin of ``TimeDependentEstimation`` from QuTiP (``QutipTimeDependentStepper``)."""
    stepper = QutipTimeDependentStepper(task, params, options)
    out = []
    for a in np.asarray(actions, np.float64):
        stepper.step(a)
        out.append(stepper.qfi)
    return np.array(out)
