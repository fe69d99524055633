"""qsm/TimeDependentEstimation-v0: control-enhanced estimation of a rotating field's frequency."""

from __future__ import annotations

import math
from typing import Any, Callable

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from qsmgym.envs.core import FunctionalEnv
from qsmgym.envs.kicked_top import _check_choice, _check_positive_int, _check_real
from qsmgym.physics.bloch import (
    dissipator_bloch,
    expm_taylor,
    generator,
    matmul_small,
    qfi_bloch,
    rotation_matrix,
    taylor_squarings,
)

PARAMETERS = ("omega", "B")
NOISE_MODELS = ("none", "dephasing", "emission")
DEPHASING_CONVENTIONS = ("lindblad", "coherence_rate")
CONTROL_MODES = ("zoh", "increment", "ramp")
REWARDS = ("increment", "ratio")
INTEGRATORS = ("magnus6", "magnus4", "midpoint")
DEFAULT_GAMMA = 0.05
_GAUSS = (0.5 - math.sqrt(3) / 6, 0.5 + math.sqrt(3) / 6)
# GRAPE optima (agents/grape.py, fraction of the bound) for configurations without a closed
# form, keyed by ``_grape_key``; regenerate with ``python -m qsmgym.experiments.grape_references``
# (seed 0; settings in its ROWS). They are lower bounds on the true optimum (best of 4
# restarts); the slow test tests/agents/test_grape.py re-runs them.
GRAPE_REFERENCES: dict[tuple, float] = {
    # (param, B, omega, T, n_bins, u_max, du_max, control_mode, noise, gamma, dephasing_convention)
    ("omega", 1.0, 1.0, 10.0, 50, 2.0, 1.0, "zoh", "none", 0.0, "lindblad"): 0.9999136833349811,
    ("omega", 1.0, 1.0, 10.0, 50, 2.0, 1.0, "zoh", "dephasing", 0.05, "lindblad"): 0.4040192421196266,
    ("omega", 1.0, 1.0, 10.0, 50, 2.0, 1.0, "zoh", "emission", 0.05, "lindblad"): 0.7770534966884065,
    ("omega", 1.0, 1.0, 5.0, 20, 2.0, 1.0, "zoh", "none", 0.0, "lindblad"): 0.999959925589806,
    ("omega", 1.0, 1.0, 5.0, 20, 2.0, 1.0, "zoh", "dephasing", 0.05, "lindblad"): 0.6581798288096153,
    ("omega", 1.0, 1.0, 5.0, 20, 2.0, 1.0, "zoh", "emission", 0.05, "lindblad"): 0.8942213478297761,
}
_GAUSS3 = (0.5 - math.sqrt(15) / 10, 0.5, 0.5 + math.sqrt(15) / 10)


def _comm(X, Y):
    return matmul_small(X, Y) - matmul_small(Y, X)


def _homogeneous(R):
    """[[R, 0], [0, 1]] (4x4) from a 3x3 map."""
    top = jnp.concatenate([R, jnp.zeros((3, 1), R.dtype)], axis=1)
    return jnp.concatenate([top, jnp.eye(4, dtype=R.dtype)[3:]], axis=0)


@struct.dataclass
class TimeDependentParams:
    """Physical constants (a pytree: vmap over them).

    B, omega: nominal field strength and rotation frequency (the controls are designed for
    these). total_time: T. gamma: noise rate (meaning set by the noise model and convention).
    u_max: per-axis control bound. du_max: largest change of a control per bin (increment
    and ramp modes). shift, spread: the true value of the estimated parameter is
    nominal + shift + spread * U(-1, 1), drawn at reset (0, 0: the nominal value).
    """

    B: jnp.ndarray
    omega: jnp.ndarray
    total_time: jnp.ndarray
    gamma: jnp.ndarray
    u_max: jnp.ndarray
    du_max: jnp.ndarray
    shift: jnp.ndarray
    spread: jnp.ndarray


@struct.dataclass
class TimeDependentState:
    """r, dr: Bloch vector and its derivative in the estimated parameter; qfi: I(t_k);
    u: control at the end of the last bin; theta: true value of the estimated parameter;
    time: bins done."""

    r: jnp.ndarray
    dr: jnp.ndarray
    qfi: jnp.ndarray
    u: jnp.ndarray
    theta: jnp.ndarray
    time: jnp.ndarray


class TimeDependentEstimation(FunctionalEnv):
    r"""Estimating the rotation frequency (or strength) of a rotating field with a controlled qubit.

    ## Description
    A qubit sees a field of strength B rotating at frequency omega in the x-z plane. The agent
    adds a control field per time bin to make the final state as sensitive as possible to the
    estimated parameter theta (omega by default), measured by the quantum Fisher information
    I(T). Pang & Jordan (Nat. Commun. 8, 14695, 2017) bound it by B^2 T^4 for omega (against
    the T^2 of a static signal) and give a control that reaches the bound; Xiao, Fan & Zeng
    (npj QI 8, 2, 2022) train deep RL agents on this task with QFI rewards. Spec:
    shared/reference/time-dependent-estimation.md (the paper's exact settings are unknown;
    this is the canonical Pang–Jordan model).

    ## Physics (hbar = 1; time in units of 1/B, omega in units of B)
    H(t) = -B [cos(omega t) sigma_x + sin(omega t) sigma_z] + u_x sigma_x + u_y sigma_y + u_z sigma_z,
    |psi(0)> = |+y> = (|0> + i|1>)/sqrt(2), sigma_z|0> = +|0>. Noise, during the whole evolution,
    d rho/dt = -i[H, rho] + D[L] rho with D[L] rho = L rho L^dag - {L^dag L, rho}/2:
    - "dephasing": L = sqrt(gamma) sigma_z; coherences decay as exp(-2 gamma t) (T2 = 1/(2 gamma)).
      With ``dephasing_convention="coherence_rate"``, L = sqrt(gamma/2) sigma_z and T2 = 1/gamma
      (the factor-2 trap: both conventions are in the literature).
    - "emission": L = sqrt(gamma) sigma_-, sigma_- = |1><0|; T1 = 1/gamma, T2 = 2/gamma.
    The effective T2 is ``references()["T2"]``. The state is kept as its Bloch vector r and the
    exact derivative dr/dtheta (forward-mode differentiation of each sub-step map); the QFI is
    the qubit closed form I = |dr|^2 + (r . dr)^2 / (1 - |r|^2).
    Time stepping: each bin is split into ``n_substeps`` sub-steps; each sub-step applies
    exp(Omega) with the sixth-order Magnus Omega (three Gauss points, Blanes–Casas–Ros; global
    error O(dt^6)), or "magnus4" (two Gauss points, O(dt^4)), or "midpoint" (the generator at
    the sub-step midpoint, O(dt^2): the spec's reference scheme). exp is a fixed-order Taylor
    polynomial with static squarings (physics/bloch.py), exact to round-off.

    ## Action Space
    Box(-1, 1, (3,), float32), the control of one bin, per ``control_mode``:
    | control_mode | control on bin k |
    |---|---|
    | "zoh" (default) | u = u_max a_k, constant on the bin |
    | "increment" | u_k = clip(u_{k-1} + du_max a_k, -u_max, u_max), constant on the bin (time-correlated) |
    | "ramp" | linear from u_{k-1} to clip(u_{k-1} + du_max a_k, -u_max, u_max): piecewise linear, continuous |
    u_0 = 0 before the first bin. The clip in the last two modes is the actuator's saturation,
    part of the dynamics; the action itself must lie in [-1, 1] (never clipped: ValueError).

    ## Observation Space
    | index | observation | range |
    |---|---|---|
    | 0 | t_k / T | [0, 1] |
    | 1-3 | Bloch vector r | [-1, 1] |
    | 4-6 | dr/dtheta / sqrt(bound(T)) | [-1, 1] (|dr|^2 <= I(t) <= bound(t)) |
    | 7-9 | last control u / u_max | [-1, 1] |

    ## Rewards
    "increment" (default): r_k = [I(t_k) - I(t_{k-1})] / bound(T), I(0) = 0; the return is
    I(T)/bound(T) in [0, 1] (the score). Increments can be negative.
    "ratio": r_k = I(t_k) / bound(t_k) (does not telescope; the score is still I(T)/bound(T),
    in ``info["score"]``).

    ## Starting State
    |+y> with dr = 0. The true theta is nominal + shift + spread * U(-1, 1) (drawn with the
    reset key; deterministic with the defaults shift = spread = 0).

    ## Episode End
    - Termination: after n_bins steps (t = T, part of the task).
    - Truncation: only if ``max_episode_steps`` < n_bins is given.

    ## Arguments
    | name | default | meaning |
    |---|---|---|
    | param | "omega" | estimated parameter: "omega" or "B" |
    | B, omega | 1.0, 1.0 | nominal field strength and frequency |
    | total_time | 5.0 | T |
    | n_bins | 20 | control bins = steps per episode |
    | u_max | 2.0 | per-axis control bound (the ideal control needs max(B, omega/2)) |
    | du_max | 1.0 | largest change per bin in "increment"/"ramp" modes |
    | control_mode | "zoh" | "zoh", "increment", "ramp" |
    | noise | "none" | "none", "dephasing", "emission" |
    | gamma | 0.05 if noise else 0 | noise rate |
    | dephasing_convention | "lindblad" | "lindblad" or "coherence_rate" (see Physics) |
    | shift, spread | 0, 0 | transferability: true theta around the nominal value |
    | reward | "increment" | "increment" or "ratio" |
    | n_substeps | 10 | sub-steps per bin (sixth-order Magnus: ~1e-9 relative error at the defaults) |
    | integrator | "magnus6" | "magnus6", "magnus4" or "midpoint" |
    | max_episode_steps | None | optional time limit (truncation) |

    ## References (``references(params)``)
    bound: B^2 T^4 (omega) or 4 T^2 (B). ideal_control: I(T) of the continuous Pang–Jordan
    control H_c = -H_omega(t) - (omega/2) sigma_y (with the env's noise); ideal_zoh: that control
    sampled at bin midpoints and held; no_control: u = 0 from |+y>; no_control_best_state: the
    best initial pure state with u = 0 (noiseless, (lambda_max - lambda_min)^2). Each also as
    a fraction of the bound (``*_fraction``). physical_limit = 1 and naive_baseline =
    no_control / bound, in units of the return. T2: effective coherence time. The ideal
    control as a policy: ``ideal_policy(params)``; as per-bin actions: ``ideal_actions(params)``.
    grape_fraction: the GRAPE optimum (agents/grape.py) as a fraction of the bound, where it has
    been computed (``GRAPE_REFERENCES``); with noise it is the practical reference (e.g. T = 10,
    N = 50, gamma = 0.05: 0.404 dephasing, 0.777 emission, against 0.183 and 0.568 for the
    noiseless-optimal control).

    ## Validation
    Bound reached by the ideal control (624.999 of 625 at T = 5 with 1000 midpoint sub-steps,
    as the spec; 1 - 1e-13 with the default Magnus); ZOH ratios 0.9786 (N = 20) and 0.9994 (N = 50) at T = 10;
    best no-control value 23.78 at T = 5; QuTiP sesolve/mesolve with the dual-number derivative
    agree to <= 1e-8 relative for random controls with each noise model (tests/envs/
    test_time_dependent.py); the Bloch map and the qubit QFI against physics/lindblad.py and
    the SLD formula (tests/physics/test_bloch.py).

    ## Version History
    - v0: first release.
    """

    name = "TimeDependentEstimation"
    version = 0

    def __init__(
        self,
        param: str = "omega",
        B: float = 1.0,
        omega: float = 1.0,
        total_time: float = 5.0,
        n_bins: int = 20,
        u_max: float = 2.0,
        du_max: float = 1.0,
        control_mode: str = "zoh",
        noise: str = "none",
        gamma: float | None = None,
        dephasing_convention: str = "lindblad",
        shift: float = 0.0,
        spread: float = 0.0,
        reward: str = "increment",
        n_substeps: int = 10,
        integrator: str = "magnus6",
        max_episode_steps: int | None = None,
    ):
        super().__init__(max_episode_steps=max_episode_steps)
        _check_choice("param", param, PARAMETERS)
        _check_choice("control_mode", control_mode, CONTROL_MODES)
        _check_choice("noise", noise, NOISE_MODELS)
        _check_choice("dephasing_convention", dephasing_convention, DEPHASING_CONVENTIONS)
        _check_choice("reward", reward, REWARDS)
        _check_choice("integrator", integrator, INTEGRATORS)
        for name, value in (("n_bins", n_bins), ("n_substeps", n_substeps)):
            _check_positive_int(name, value)
        self.param, self.control_mode, self.noise = param, control_mode, noise
        self.dephasing_convention, self.reward_mode, self.integrator = dephasing_convention, reward, integrator
        self.n_bins, self.n_substeps = int(n_bins), int(n_substeps)
        self._B = _check_real("B", B, positive=True)
        self._omega = _check_real("omega", omega)
        self._T = _check_real("total_time", total_time, positive=True)
        self._u_max = _check_real("u_max", u_max, positive=True)
        self._du_max = _check_real("du_max", du_max, positive=True)
        self._shift = _check_real("shift", shift)
        self._spread = _check_real("spread", spread, nonneg=True)
        if gamma is None:
            gamma = 0.0 if noise == "none" else DEFAULT_GAMMA
        gamma = _check_real("gamma", gamma, nonneg=True)
        if noise == "none" and gamma != 0.0:
            raise ValueError(f"gamma must be 0 with noise='none', got gamma={gamma!r}")
        self._gamma = gamma
        self.mixed = noise != "none"
        if param == "B" and self._B + self._shift - self._spread <= 0:
            raise ValueError(
                f"the true B = B + shift + spread * U(-1, 1) must stay > 0, got B={B!r}, "
                f"shift={shift!r}, spread={spread!r}"
            )
        # Static number of squarings for the sub-step exponential, from a bound on ||Omega||_1
        # (||A||_1 <= 4 max|h_i| + 3 gamma) with 1.5x headroom on the fields and rates: params
        # vmapped beyond that still converge, with a larger Taylor remainder.
        dt = self._T / (self.n_bins * self.n_substeps)
        field = abs(self._B) + abs(self._shift) + self._spread + math.sqrt(3) * self._u_max
        norm = dt * 1.5 * (4.0 * field + 3.0 * self._gamma + 1e-3)
        self._squarings = taylor_squarings(norm)

    # ------------------------------------------------------------------ params and helpers
    def default_params(self) -> TimeDependentParams:
        f = lambda x: jnp.asarray(x, dtype=jnp.float64)  # noqa: E731
        return TimeDependentParams(
            B=f(self._B), omega=f(self._omega), total_time=f(self._T), gamma=f(self._gamma),
            u_max=f(self._u_max), du_max=f(self._du_max), shift=f(self._shift), spread=f(self._spread),
        )

    @property
    def horizon(self) -> int:
        """Steps per episode (fixed: the episode terminates at t = T)."""
        return self.n_bins

    def nominal_theta(self, params) -> jnp.ndarray:
        return params.omega if self.param == "omega" else params.B

    def bound(self, params, t) -> jnp.ndarray:
        """Pang–Jordan bound at time t: B^2 t^4 (omega) or 4 t^2 (B), at the nominal B."""
        return params.B**2 * t**4 if self.param == "omega" else 4.0 * t**2

    def _dissipation(self, params) -> tuple[jnp.ndarray, jnp.ndarray] | None:
        """(M, c) of the Bloch equation, or None without noise (rotation fast path)."""
        if self.noise == "none":
            return None
        gamma = params.gamma
        if self.noise == "dephasing" and self.dephasing_convention == "coherence_rate":
            gamma = gamma / 2
        M, c = dissipator_bloch(self.noise, 1.0)  # linear in gamma
        return gamma * jnp.asarray(M), gamma * jnp.asarray(c)

    def t2(self, gamma: float | None = None) -> float:
        """Effective coherence time of the noise model (inf without noise)."""
        gamma = self._gamma if gamma is None else float(gamma)
        if self.noise == "none" or gamma == 0:
            return math.inf
        if self.noise == "dephasing":
            return 1.0 / gamma if self.dephasing_convention == "coherence_rate" else 1.0 / (2 * gamma)
        return 2.0 / gamma

    def field(self, B, omega, t, u) -> jnp.ndarray:
        """h(t) of H = h . sigma: signal plus control u (3,)."""
        return jnp.stack([-B * jnp.cos(omega * t) + u[0], u[1], -B * jnp.sin(omega * t) + u[2]])

    # ------------------------------------------------------------------------- propagation
    def _substep_map(self, theta, other, t0, dt, control: Callable, diss):
        """exp(Omega) of one sub-step [t0, t0 + dt] as a function of the true theta (4x4).

        ``diss=None`` (no noise): the generators are 2 [h]_x, commutators of cross matrices
        are cross products, so Omega is a rotation vector and exp is Rodrigues' formula
        (exact, cheap). With noise: 4x4 Magnus Omega and the Taylor exponential."""
        B, omega = (other, theta) if self.param == "omega" else (theta, other)
        if diss is None:
            v = lambda t: 2.0 * self.field(B, omega, t, control(t))  # noqa: E731
            return _homogeneous(rotation_matrix(self._magnus(v, t0, dt, jnp.cross)))
        M, c = diss
        A = lambda t: generator(self.field(B, omega, t, control(t)), M, c)  # noqa: E731
        # order 10 at ||Omega|| / 2^s <= 1/4: remainder < 0.25^11 / 11! ~ 6e-15
        return expm_taylor(self._magnus(A, t0, dt, _comm), self._squarings, order=10)

    def _magnus(self, A: Callable, t0, dt, comm: Callable):
        """Omega of one sub-step for the generator t -> A(t), with the commutator ``comm``."""
        if self.integrator == "midpoint":
            return dt * A(t0 + 0.5 * dt)
        if self.integrator == "magnus6":
            # sixth-order Magnus with three Gauss points (Blanes, Casas & Ros, BIT 40, 434 (2000))
            A1, A2, A3 = (A(t0 + g * dt) for g in _GAUSS3)
            a1 = dt * A2
            a2 = (math.sqrt(15) * dt / 3) * (A3 - A1)
            a3 = (10 * dt / 3) * (A3 - 2 * A2 + A1)
            C1 = comm(a1, a2)
            C2 = -comm(a1, 2 * a3 + C1) / 60
            return a1 + a3 / 12 + comm(-20 * a1 - a3 + C1, a2 + C2) / 240
        A1, A2 = A(t0 + _GAUSS[0] * dt), A(t0 + _GAUSS[1] * dt)
        return 0.5 * dt * (A1 + A2) + (math.sqrt(3) / 12) * dt**2 * comm(A2, A1)

    def propagate(self, r, dr, theta, params, t0, duration, control: Callable, n_sub: int):
        """Evolve (r, dr/dtheta) over [t0, t0 + duration] in n_sub sub-steps under the
        control function t -> u(t) (3,). Exact derivative: forward-mode through each map."""
        other = params.B if self.param == "omega" else params.omega
        diss = self._dissipation(params)
        dt = duration / n_sub
        x = jnp.concatenate([r, jnp.ones(1, r.dtype)])
        dx = jnp.concatenate([dr, jnp.zeros(1, dr.dtype)])

        def body(carry, i):
            x, dx = carry
            t = t0 + i * dt
            E, dE = jax.jvp(lambda th: self._substep_map(th, other, t, dt, control, diss), (theta,), (jnp.ones_like(theta),))
            return (E @ x, E @ dx + dE @ x), None  # matrix-vector: cheap either way

        (x, dx), _ = jax.lax.scan(body, (x, dx), jnp.arange(n_sub, dtype=jnp.float64))
        return x[:3], dx[:3]

    def _qfi(self, r, dr):
        return qfi_bloch(r, dr, mixed=self.mixed)

    def _bin_control(self, action, u_prev, params, t0, dt_bin):
        """(control function on the bin, control at its end) for one action."""
        a = jnp.asarray(action, jnp.float64)
        if self.control_mode == "zoh":
            u = params.u_max * a
            return (lambda t: u), u
        u_end = jnp.clip(u_prev + params.du_max * a, -params.u_max, params.u_max)
        if self.control_mode == "increment":
            return (lambda t: u_end), u_end
        return (lambda t: u_prev + (u_end - u_prev) * (t - t0) / dt_bin), u_end

    # ----------------------------------------------------------------------- the contract
    def observation_space(self, params: Any = None) -> gym.spaces.Box:
        low = np.array([0.0] + [-1.0] * 9, np.float32)
        return gym.spaces.Box(low, np.ones(10, np.float32), dtype=np.float32)

    def action_space(self, params: Any = None) -> gym.spaces.Box:
        return gym.spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)

    def _obs(self, state: TimeDependentState, params) -> jnp.ndarray:
        T = params.total_time
        scale = jnp.sqrt(self.bound(params, T))
        return jnp.concatenate(
            [jnp.reshape(state.time / self.n_bins, (1,)), state.r, state.dr / scale, state.u / params.u_max]
        ).astype(jnp.float32)

    def _initial(self, params) -> tuple[jnp.ndarray, jnp.ndarray]:
        return jnp.array([0.0, 1.0, 0.0]), jnp.zeros(3)

    def reset_env(self, key, params, cache):
        r, dr = self._initial(params)
        theta = self.nominal_theta(params) + params.shift + params.spread * jax.random.uniform(
            key, (), jnp.float64, -1.0, 1.0
        )
        state = TimeDependentState(
            r=r, dr=dr, qfi=jnp.zeros(()), u=jnp.zeros(3), theta=theta, time=jnp.zeros((), jnp.int32)
        )
        return self._obs(state, params), state

    def step_env(self, key, state, action, params, cache):
        T = params.total_time
        dt_bin = T / self.n_bins
        t0 = state.time * dt_bin
        control, u_end = self._bin_control(action, state.u, params, t0, dt_bin)
        r, dr = self.propagate(state.r, state.dr, state.theta, params, t0, dt_bin, control, self.n_substeps)
        qfi = self._qfi(r, dr)
        time = state.time + 1
        terminated = time >= self.n_bins
        bound_T = self.bound(params, T)
        if self.reward_mode == "increment":
            reward = (qfi - state.qfi) / bound_T
        else:
            reward = qfi / self.bound(params, time * dt_bin)
        new_state = TimeDependentState(r=r, dr=dr, qfi=qfi, u=u_end, theta=state.theta, time=time)
        info = {"qfi": qfi, "score": qfi / bound_T, "theta": state.theta, "u": u_end}
        return self._obs(new_state, params), new_state, reward, terminated, info

    # -------------------------------------------------------------- sequences and references
    def qfi_of_actions(self, params, actions, *, theta=None) -> jnp.ndarray:
        """I(t_k) after each bin for an action sequence (n_bins, 3), at the true theta
        (default: nominal + shift). Jittable and differentiable."""
        theta = self.nominal_theta(params) + params.shift if theta is None else theta
        T = params.total_time
        dt_bin = T / self.n_bins
        r0, dr0 = self._initial(params)

        def body(carry, inputs):
            r, dr, u = carry
            k, a = inputs
            control, u_end = self._bin_control(a, u, params, k * dt_bin, dt_bin)
            r, dr = self.propagate(r, dr, theta, params, k * dt_bin, dt_bin, control, self.n_substeps)
            return (r, dr, u_end), self._qfi(r, dr)

        ks = jnp.arange(self.n_bins, dtype=jnp.float64)
        _, qfis = jax.lax.scan(body, (r0, dr0, jnp.zeros(3)), (ks, jnp.asarray(actions, jnp.float64)))
        return qfis

    def qfi_of_control(self, params, control: Callable, *, n_steps: int | None = None, theta=None, r0=None) -> jnp.ndarray:
        """Final I(T) under a continuous control function t -> u(t) (3,), integrated with
        n_steps sub-steps over [0, T] (default n_bins * n_substeps)."""
        theta = self.nominal_theta(params) + params.shift if theta is None else theta
        n = self.n_bins * self.n_substeps if n_steps is None else int(n_steps)
        r, dr = self._initial(params)
        r = r if r0 is None else jnp.asarray(r0, jnp.float64)
        r, dr = self.propagate(r, dr, theta, params, 0.0, params.total_time, control, n)
        return self._qfi(r, dr)

    def ideal_control(self, params) -> Callable:
        """u(t) of the Pang–Jordan control H_c = -H_omega(t) - (omega/2) sigma_y at the nominal
        (B, omega)."""
        B, omega = params.B, params.omega
        return lambda t: jnp.stack([B * jnp.cos(omega * t), -0.5 * omega * jnp.ones_like(t), B * jnp.sin(omega * t)])

    def ideal_actions(self, params) -> jnp.ndarray:
        """Per-bin actions (n_bins, 3) that follow the ideal control in this control mode:
        zoh: its value at the bin midpoints; increment/ramp: steps towards its midpoint /
        end-of-bin values (limited to [-1, 1], i.e. by du_max)."""
        dt_bin = params.total_time / self.n_bins
        control = self.ideal_control(params)
        k = jnp.arange(self.n_bins, dtype=jnp.float64)
        if self.control_mode == "zoh":
            return jnp.clip(jax.vmap(control)((k + 0.5) * dt_bin) / params.u_max, -1.0, 1.0)
        targets = jax.vmap(control)((k + (0.5 if self.control_mode == "increment" else 1.0)) * dt_bin)

        def body(u, target):
            a = jnp.clip((target - u) / params.du_max, -1.0, 1.0)
            return jnp.clip(u + params.du_max * a, -params.u_max, params.u_max), a

        _, actions = jax.lax.scan(body, jnp.zeros(3), targets)
        return actions

    def ideal_policy(self, params=None) -> Callable[[np.ndarray], np.ndarray]:
        """The ideal control as a policy obs -> action (reads t/T and the last control from
        the observation; works in every control mode, in the shell or the core)."""
        params = self.default_params() if params is None else params
        table = np.asarray(self.ideal_actions(params), np.float32)
        u_max, du_max = float(params.u_max), float(params.du_max)
        dt_bin = float(params.total_time) / self.n_bins
        control = self.ideal_control(params)
        mode, n = self.control_mode, self.n_bins

        def policy(obs):
            obs = np.asarray(obs)
            k = min(int(round(float(obs[0]) * n)), n - 1)
            if mode == "zoh":
                return table[k]
            target = np.asarray(control((k + (0.5 if mode == "increment" else 1.0)) * dt_bin))
            u_prev = obs[7:10].astype(np.float64) * u_max
            return np.clip((target - u_prev) / du_max, -1.0, 1.0).astype(np.float32)

        return policy

    def _references_jit(self):
        if getattr(self, "_refs_fn", None) is None:

            def refs(params):
                theta = self.nominal_theta(params) + params.shift
                ideal = self.qfi_of_control(params, self.ideal_control(params), theta=theta)
                zoh = self.qfi_of_actions(params, self.ideal_actions_zoh(params), theta=theta)[-1]
                none = self.qfi_of_actions(params, jnp.zeros((self.n_bins, 3)), theta=theta)[-1]
                return ideal, zoh, none, self._best_state_no_control(params, theta)

            self._refs_fn = jax.jit(refs)
        return self._refs_fn

    def ideal_actions_zoh(self, params) -> jnp.ndarray:
        """The spec's ideal_zoh: ideal control at the bin midpoints, as zoh-mode actions."""
        dt_bin = params.total_time / self.n_bins
        k = jnp.arange(self.n_bins, dtype=jnp.float64)
        return jax.vmap(self.ideal_control(params))((k + 0.5) * dt_bin) / params.u_max

    def _best_state_no_control(self, params, theta):
        """max over initial pure states of I(T) with u = 0, noiseless: the Bloch map is a
        rotation R and R^T dR = [w]_x, so I(r0) = |w x r0|^2, maximal = |w|^2."""
        other = params.B if self.param == "omega" else params.omega
        zero = lambda t: jnp.zeros(3)  # noqa: E731
        n = self.n_bins * self.n_substeps
        dt = params.total_time / n

        def body(carry, i):
            R, dR = carry
            E, dE = jax.jvp(lambda th: self._substep_map(th, other, i * dt, dt, zero, None)[:3, :3], (theta,), (jnp.ones_like(theta),))
            return (E @ R, E @ dR + dE @ R), None

        (R, dR), _ = jax.lax.scan(body, (jnp.eye(3), jnp.zeros((3, 3))), jnp.arange(n, dtype=jnp.float64))
        W = R.T @ dR
        w = jnp.stack([W[2, 1], W[0, 2], W[1, 0]])
        return jnp.sum(w * w)

    def _grape_key(self, params) -> tuple:
        f = lambda x: round(float(x), 12)  # noqa: E731
        return (
            self.param, f(params.B), f(params.omega), f(params.total_time), self.n_bins, f(params.u_max),
            f(params.du_max), self.control_mode, self.noise, f(params.gamma), self.dephasing_convention,
        )

    def references(self, params=None, *, cache=None) -> dict[str, float]:
        """Bound, ideal-control, ZOH and no-control values at T (see the class docstring);
        plus ``grape`` (fraction of the bound) where ``GRAPE_REFERENCES`` has this setting."""
        params = self.default_params() if params is None else params
        if np.any(np.abs(np.asarray(self.ideal_actions_zoh(params))) > 1):
            ideal_zoh_ok = False
        else:
            ideal_zoh_ok = True
        ideal, zoh, none, best = (float(x) for x in self._references_jit()(params))
        bound = float(self.bound(params, params.total_time))
        out = {
            "bound": bound,
            "ideal_control": ideal,
            "ideal_zoh": zoh if ideal_zoh_ok else math.nan,
            "no_control": none,
            "no_control_best_state": best,
            "T2": self.t2(float(params.gamma)),
            "physical_limit": 1.0,
            "naive_baseline": none / bound,
        }
        for key in ("ideal_control", "ideal_zoh", "no_control", "no_control_best_state"):
            out[key + "_fraction"] = out[key] / bound
        if float(params.shift) == 0 and float(params.spread) == 0:
            grape = GRAPE_REFERENCES.get(self._grape_key(params))
            if grape is not None:
                out["grape_fraction"] = grape
        return out

    # ------------------------------------------------------------------------ QuTiP model
    def reference_stepper(self, params=None, seed: int = 0, options: dict | None = None):
        """The same model stepped by QuTiP (``reset()``, ``step(action) -> (reward, done)``,
        increment rewards), for the benchmark; deterministic (``seed`` unused)."""
        from qsmgym.physics.qutip_reference import QutipTimeDependentStepper

        return QutipTimeDependentStepper(self, self.default_params() if params is None else params, options)

    def qutip_qfi_of_actions(self, params, actions, options: dict | None = None) -> np.ndarray:
        """I(t_k) after each bin computed by QuTiP (sesolve / mesolve of the continuous model
        with the dual-number derivative; see physics/qutip_reference.py) at nominal + shift."""
        from qsmgym.physics.qutip_reference import qfi_trajectory_time_dependent

        return qfi_trajectory_time_dependent(self, params, np.asarray(actions, np.float64), options)
