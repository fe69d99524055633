"""QuTiP reference for the atom-cavity photon tasks (tests and benchmarks, never the hot path).

Two models:

* ``QutipPhotonStepper``: the amplitude model of ``physics.cavity`` through qutip.sesolve, one
  call per bin. The linear system is augmented so that everything the reward needs is a
  component of one "state" psi = (c_u, c_e, c_g, o, 1): o' = sqrt(2 kappa_ex) f*(t) c_g is the
  running overlap, and the constant 1 carries the storage input -sqrt(2 kappa_ex) f_in(t).
  sesolve integrates d psi/dt = -i H psi with H = i A(t) (not Hermitian: the decays are in A).
  f and f_in are the same piecewise-quadratic interpolants the JAX core uses.
* ``lindblad_bins``: the full Lindblad model, atom {u, e, g, x} (x: the other ground states the
  e-state decays to) times a cavity Fock space with cutoff n_max >= 2, through qutip.mesolve.
"""

from __future__ import annotations

import math

import numpy as np
import qutip

# Tolerances of the benchmark stepper: tighter than QuTiP's defaults (atol 1e-8, rtol 1e-6)
# (normalize_output off: the augmented psi is not a state) so that the 1e-7 agreement the tests ask of it is the core's, not the solver's, error.
STEPPER_OPTIONS = {"atol": 1e-11, "rtol": 1e-9, "nsteps": 100_000, "normalize_output": False}
PRECISE = {"method": "dop853", "atol": 1e-13, "rtol": 1e-11, "nsteps": 1_000_000, "normalize_output": False}


def _piecewise_quadratic(t0: float, H: float, q: np.ndarray):
    """Callable p(t) equal to q[k, 0] + q[k, 1] tau + q[k, 2] tau^2 on panel k (tau in [0, 1])."""
    q = np.asarray(q, np.complex128).reshape(-1, 3)
    n = q.shape[0]

    def p(t):
        k = min(max(int((t - t0) // H), 0), n - 1)
        tau = (t - t0) / H - k
        if tau < -1e-9 or tau > 1 + 1e-9:  # outside the window
            return 0.0
        return complex(q[k, 0] + q[k, 1] * tau + q[k, 2] * tau * tau)

    return p


class QutipPhotonStepper:
    """Steps a ``PhotonShaping`` / ``PhotonStorage`` task's amplitude model with sesolve.

    ``reset()`` starts an episode; ``step(action) -> (reward, done)`` takes the task's action
    (one bin in sequential mode, the whole pulse in whole-pulse mode) and returns the same
    reward as the task's default reward mode. Nominal g and Delta (no per-episode noise).
    """

    def __init__(self, task, params, options: dict | None = None):
        self.task = task
        self.params = params
        self.options = dict(STEPPER_OPTIONS if options is None else options)
        g, kappa, gamma = float(params.g), float(params.kappa), float(params.gamma)
        delta, kex = float(params.delta), float(params.kappa_ex)
        self.root = math.sqrt(2 * kex)
        self.t0 = -task.window / 2
        cache = task.precompute(params)
        q = np.asarray(cache.mode_q).reshape(-1, 3)
        mode = _piecewise_quadratic(self.t0, task.H, q)
        A0 = np.zeros((5, 5), complex)
        A0[1, 1], A0[1, 2], A0[2, 1], A0[2, 2] = -(gamma + 1j * delta), -1j * g, -1j * g, -kappa
        self.A_up = np.zeros((5, 5), complex)  # coefficient of Omega: c_e' += -i Omega/2 c_u
        self.A_up[1, 0] = -0.5j
        self.A_dn = np.zeros((5, 5), complex)  # coefficient of Omega*: c_u' += -i Omega*/2 c_e
        self.A_dn[0, 1] = -0.5j
        self.A0 = A0
        io = np.zeros((5, 5), complex)
        if task.storage:
            io[2, 4] = -self.root  # c_g' += -sqrt(2 kappa_ex) f_in(t) * 1
            coeff = mode
        else:
            io[3, 2] = self.root  # o' += sqrt(2 kappa_ex) f*(t) c_g
            coeff = lambda t: np.conj(mode(t))  # noqa: E731
        self.H_io = qutip.Qobj(1j * io)
        self.coeff = coeff
        self.reset()

    def reset(self) -> None:
        psi = np.zeros(5, complex)
        psi[4] = 1.0
        if not self.task.storage:
            psi[0] = 1.0
        self.psi = qutip.Qobj(psi.reshape(5, 1))
        self.k = 0
        self.score = 0.0

    def _bin(self, omega: complex) -> None:
        A = self.A0 + omega * self.A_up + np.conj(omega) * self.A_dn
        H = qutip.QobjEvo([qutip.Qobj(1j * A), [self.H_io, self.coeff]])
        t_a = self.t0 + self.k * self.task.dt
        tlist = np.linspace(t_a, t_a + self.task.dt, self.task.n_panels + 1)  # panel edges
        res = qutip.sesolve(H, self.psi, tlist, options=self.options)
        self.psi = res.states[-1]
        self.k += 1

    def step(self, action) -> tuple[float, bool]:
        omegas = np.atleast_1d(np.asarray(self.task.omega(np.asarray(action), self.params)))
        for om in omegas:
            self._bin(complex(om))
        done = self.k >= self.task.n_bins
        v = self.psi.full().ravel()
        score = abs(v[0]) ** 2 if self.task.storage else abs(v[3]) ** 2
        if self.task.reward_mode == "increment":
            reward, self.score = score - self.score, score
        else:
            reward = score if done else 0.0
        return float(reward), bool(done)

    def amplitudes(self) -> np.ndarray:
        """(c_u, c_e, c_g) now."""
        return self.psi.full().ravel()[:3]


def lindblad_bins(
    omegas, dt: float, g: float, kappa: float, gamma: float, delta: float = 0.0,
    *, n_max: int = 2, options: dict | None = None,
) -> dict:
    """Full Lindblad model over piecewise-constant bins (mesolve), for the cross-check.

    Atom {u, e, g, x} (x collects the ground states e decays to, outside the Λ system) times
    a cavity Fock space {0..n_max}. H = Delta|e><e| + Omega/2 |e><u| + Omega*/2 |u><e|
    + g (|e><g| a + |g><e| a^dag); collapse operators sqrt(2 kappa) a and sqrt(2 gamma) |x><e|
    (amplitude rates). The initial state is (|u,0> + |g,0>)/sqrt(2): |g,0> is dark and never
    decays, so the coherences rho_{k,(g,0)} evolve with the no-jump (amplitude) dynamics and
    equal c_k / 2 exactly, phases included.

    Returns:
        dict: amps (n_bins + 1, 3) = 2 rho_{k,(g,0)} for k = (u,0), (e,0), (g,1) at the bin
        edges; two_photon (max population with >= 2 photons); n_cav (n_bins + 1,) <a^dag a>.
    """
    options = dict(PRECISE if options is None else options)
    na, nf = 4, n_max + 1
    U, E, G, X = (qutip.basis(na, i) for i in range(4))
    a = qutip.tensor(qutip.qeye(na), qutip.destroy(nf))
    s = lambda p, q: qutip.tensor(p * q.dag(), qutip.qeye(nf))  # noqa: E731
    H0 = delta * s(E, E) + g * (s(E, G) * a + a.dag() * s(G, E))
    c_ops = [math.sqrt(2 * kappa) * a, math.sqrt(2 * gamma) * s(X, E)]
    ket = lambda atom, n: qutip.tensor(atom, qutip.basis(nf, n))  # noqa: E731
    k_u, k_e, k_g1, k_g0 = ket(U, 0), ket(E, 0), ket(G, 1), ket(G, 0)
    psi0 = (k_u + k_g0).unit()
    i_g0 = int(np.argmax(np.abs(k_g0.full().ravel())))
    rho = psi0 * psi0.dag()
    two = sum((ket(A, n) * ket(A, n).dag() for A in (U, E, G, X) for n in range(2, nf)), 0 * rho)

    def record(r):
        amps = [2 * complex(r.full()[np.argmax(np.abs(k.full().ravel())), i_g0]) for k in (k_u, k_e, k_g1)]
        return amps, float(qutip.expect(two, r)) if n_max >= 2 else 0.0, float(qutip.expect(a.dag() * a, r))

    out = [record(rho)]
    for om in omegas:
        H = H0 + 0.5 * om * s(E, U) + 0.5 * np.conj(om) * s(U, E)
        rho = qutip.mesolve(H, rho, [0.0, dt], c_ops=c_ops, options=options).states[-1]
        out.append(record(rho))
    return {
        "amps": np.array([o[0] for o in out]),
        "two_photon": max(o[1] for o in out),
        "n_cav": np.array([o[2] for o in out]),
    }
