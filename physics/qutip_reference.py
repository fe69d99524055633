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
