"""qsm/MemoryCutoff-v0: memory cut-off policies for a quantum-repeater chain (secret-key rate)."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from qsmgym.envs.core import FunctionalEnv
from qsmgym.envs.kicked_top import _check_choice, _check_real
from qsmgym.physics.repeater import (
    MEMORY_NOISE,
    PROTOCOLS,
    expected_max_geometric,
    no_cutoff_exact,
    secret_fraction,
)

MAX_SEGMENTS = 8


@struct.dataclass
class MemoryCutoffParams:
    """Physical constants (a pytree; vmap over them for domain randomisation).

    p: generation success probability per free segment per slot. lam: coherence factor of one
    stored link per slot (exp(-stored_qubits / coherence_time)). w0: Werner parameter of a
    fresh elementary link.
    """

    p: jnp.ndarray
    lam: jnp.ndarray
    w0: jnp.ndarray


@struct.dataclass
class MemoryCutoffState:
    """Per segment: covered (a stored link spans it), age of the covering link (max of its
    pieces' ages) and its coherence factor Lambda. Episode accumulators: deliveries, sum of
    delivered Lambda and of rewards. time: slots taken."""

    covered: jnp.ndarray  # (N,) bool
    age: jnp.ndarray  # (N,) int32
    coherence: jnp.ndarray  # (N,) float64
    deliveries: jnp.ndarray  # () int32
    sum_lambda: jnp.ndarray  # () float64
    sum_reward: jnp.ndarray  # () float64
    time: jnp.ndarray  # () int32


def check_probability(name: str, value: Any) -> float:
    """A probability in (0, 1] (0 would never generate), named in the error."""
    value = _check_real(name, value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must lie in (0, 1], got {name}={value!r}")
    return value


def check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """An int in [lo, hi], named in the error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {name}={value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an int {bound}, got {name}={value!r}")
    return int(value)


def check_coherence_time(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"coherence_time must be a real number, got coherence_time={value!r}")
    value = float(value)
    if math.isnan(value) or value <= 0:
        raise ValueError(f"coherence_time must be > 0 (inf: no memory noise), got coherence_time={value!r}")
    return value


def _run_reduce(values, joined, op):
    """Reduce ``values`` (N,) over maximal runs (joined[i]: segment i continues the run of
    segment i-1) and broadcast each run's result back to its segments. Unrolled: N <= 8."""
    n = values.shape[0]
    acc = [values[0]]
    for i in range(1, n):
        acc.append(jnp.where(joined[i], op(acc[i - 1], values[i]), values[i]))
    out = [None] * n
    out[n - 1] = acc[n - 1]
    for i in range(n - 2, -1, -1):
        out[i] = jnp.where(joined[i + 1], out[i + 1], acc[i])
    return jnp.stack(out)


def _joined(covered):
    return jnp.concatenate([jnp.zeros(1, bool), covered[1:] & covered[:-1]])


class MemoryCutoff(FunctionalEnv):
    r"""Memory cut-offs for an N-segment quantum-repeater chain, rewarded by secret key.

    ## Description
    A chain of N + 1 nodes generates elementary entanglement on all free segments in parallel;
    stored links are swapped as soon as possible (automatically) and an end-to-end pair is used
    for QKD the moment it exists. Memories decohere while links wait. Each slot the agent
    decides, for every stored link, whether to keep or discard it (a memory cut-off): old links
    carry little key, but discarding them costs time. The reward is the secret fraction of each
    delivered pair, so the average reward per slot is the secret-key rate SKR_pp. Casting A-3
    of shared/reference/memory-cutoff.md (after Reiss & van Loock, arXiv:2207.09930, and Kamin
    et al., arXiv:2203.10318; the defaults are ours, not theirs).

    ## Physics
    One step = one slot (duration tau = L0 / c; rates are per slot):
    (a) discard the links flagged by the action (their memories are free in this slot);
    (b) every stored link ages by 1 and its coherence factor Lambda is multiplied by
        lambda = exp(-stored_qubits / coherence_time);
    (c) every uncovered segment generates a link with probability p (age 0, Lambda = 1);
    (d) swap ASAP, deterministic: links sharing a node merge (age = max, Lambda = product);
    (e) if a link spans (0, N) it is delivered: reward r(w0^N, Lambda), all memories freed.
    Secret fraction r (log base 2, asymptotic, one-way): memory_noise="dephasing" (default)
    keeps Bell-diagonal bookkeeping, e_Z = (1 - w)/2, e_X = (1 - Lambda w)/2;
    "depolarising" keeps a Werner state with parameter w Lambda. protocol "bb84":
    r = max(0, 1 - h(e_X) - h(e_Z)); "six_state": r = max(0, 1 - H(p_I, p_X, p_Y, p_Z)).
    A fixed cut-off m (flag every link with age >= m) discards a link after it has waited m
    slots; this m equals Inesta's t_cut and Li et al.'s mt_cut (spec pitfall 4).
    Swap ASAP merges every pair of links sharing a node, so stored links never touch and each
    maximal run of covered segments is exactly one link: the per-segment observation below is
    Markov.

    ## Action Space
    MultiBinary(N). A stored link is discarded iff the flag of its **leftmost** segment is 1;
    every other flag is ignored. ``info["action_mask"]`` (N,) marks, after each step, the
    segments whose flag has an effect in the next step (all zero after reset: nothing is
    stored). Arrays of the wrong shape, non-finite values or values other than 0/1 raise
    ValueError in the shell and the vector env (never clipped).

    ## Observation Space
    Box(0, 1, (3N,), float32): for segment i = 0..N-1,
    | index | entry |
    |---|---|
    | i | covered (1 if a stored link spans segment i) |
    | N + i | age of the covering link / max_observed_age, clipped to 1 (the physics keeps the true age) |
    | 2N + i | Lambda of the covering link (0 if uncovered) |

    ## Rewards
    r(w0^N, Lambda) of the pair delivered in this slot, else 0. Average reward per slot ->
    SKR_pp (renewal-reward). ``info``: delivered, secret_fraction, delivered_lambda,
    skr_pp and skr_avg of the episode so far (SKR_avg = r(mean error rates) x deliveries /
    slots, the averaged-state rate of Li et al.), action_mask.

    ## Starting State
    All memories empty (a renewal point); deterministic.

    ## Episode End
    - Termination: never (a continuing task).
    - Truncation: after ``horizon`` slots (default 1000; the core's ``max_episode_steps``);
      agents must bootstrap through it.

    ## Arguments
    | name | default | meaning |
    |---|---|---|
    | N | 4 | segments, 1..8 (the spec studies 2 and 4) |
    | p | 0.2 | generation probability per segment and slot, in (0, 1] (p_link exp(-L0/L_att): physics.repeater.link_success_probability) |
    | coherence_time | 40.0 | T_coh per memory qubit, in slots (> 0; inf: no memory noise) |
    | stored_qubits | 2 | n_q, memory qubits decohering per stored link |
    | w0 | 0.99 | Werner parameter of fresh links, in (0, 1] |
    | protocol | "bb84" | "bb84" or "six_state" |
    | memory_noise | "dephasing" | "dephasing" or "depolarising" |
    | max_observed_age | 100 | age scale a_max of the observation |
    | horizon | 1000 | slots per episode (truncation) |

    ## References (``references(params)``)
    Per slot: decoherence_free_skr = r(w0^N, 1) / E[max of N geometric(p)] (no policy can beat
    it: delivery needs every segment generated since the last delivery, and r <= r(w0^N, 1));
    no_cutoff_* (exact, forward recursion over (pattern, storage exponent));
    best_fixed_cutoff (m*, by SKR_pp) and best_fixed_cutoff_* (exact for N <= 4: closed forms for
    N = 2, the exact absorbing chain of agents.repeater_baselines.fixed_cutoff_exact otherwise,
    scanning m = 0, 1, ... until 5 past the best, and m = inf; for N > 4 a seeded Monte Carlo
    scan of ``CUTOFF_GRID`` with its standard error best_fixed_cutoff_skr_pp_stderr).
    In units of the episode return (horizon x rate, starting from the renewal state; the
    finite-horizon edge effect is O(E[T]/horizon)): physical_limit = horizon x
    decoherence_free_skr, naive_baseline = horizon x no_cutoff_skr_pp, best_fixed_cutoff_return.

    ## Validation
    Two segments: closed forms of spec 4(b) = an exact Markov chain = Monte Carlo of this core;
    no cut-off: exact recursion = Monte Carlo; the spec's N = 4 fixed-cut-off table within
    Monte Carlo error; secret fractions at the spec's check points; the NumPy
    ``reference_stepper`` agrees with this core within Monte Carlo error
    (tests/physics/test_repeater.py, tests/envs/test_memory_cutoff.py,
    tests/agents/test_repeater_baselines.py).

    ## Version History
    - v0: first release (casting A-3, deterministic swaps).
    """

    name = "MemoryCutoff"
    version = 0

    def __init__(
        self,
        N: int = 4,
        p: float = 0.2,
        coherence_time: float = 40.0,
        stored_qubits: int = 2,
        w0: float = 0.99,
        protocol: str = "bb84",
        memory_noise: str = "dephasing",
        max_observed_age: int = 100,
        horizon: int = 1000,
    ):
        # named horizon, not max_episode_steps: gym.make would take that one for its own
        # TimeLimit wrapper and never pass it here
        check_int("horizon", horizon, 1)
        super().__init__(max_episode_steps=int(horizon))
        self.N = check_int("N", N, 1, MAX_SEGMENTS)
        self._p = check_probability("p", p)
        self.coherence_time = check_coherence_time(coherence_time)
        self.stored_qubits = check_int("stored_qubits", stored_qubits, 1)
        self._w0 = check_probability("w0", w0)
        _check_choice("protocol", protocol, PROTOCOLS)
        _check_choice("memory_noise", memory_noise, MEMORY_NOISE)
        self.protocol, self.memory_noise = protocol, memory_noise
        self.max_observed_age = check_int("max_observed_age", max_observed_age, 1)
        self._lam = math.exp(-self.stored_qubits / self.coherence_time)

    # ------------------------------------------------------------------ params and spaces
    def default_params(self) -> MemoryCutoffParams:
        f = lambda x: jnp.asarray(x, dtype=jnp.float64)  # noqa: E731
        return MemoryCutoffParams(p=f(self._p), lam=f(self._lam), w0=f(self._w0))

    @property
    def horizon(self) -> int:
        """Slots per episode (a truncation: the task itself is continuing)."""
        return self.max_episode_steps

    def observation_space(self, params: Any = None) -> gym.spaces.Box:
        return gym.spaces.Box(0.0, 1.0, (3 * self.N,), np.float32)

    def action_space(self, params: Any = None) -> gym.spaces.MultiBinary:
        return gym.spaces.MultiBinary(self.N)

    # ---------------------------------------------------------------------------- physics
    def secret_fraction(self, Lambda, params: MemoryCutoffParams):
        """r(w0^N, Lambda) of a delivered pair under this task's protocol and noise model."""
        return secret_fraction(params.w0**self.N, Lambda, self.protocol, self.memory_noise)

    @staticmethod
    def action_mask(state: MemoryCutoffState) -> jnp.ndarray:
        """(N,) bool: leftmost segments of stored links, the only flags that act."""
        c = state.covered
        return c & ~jnp.concatenate([jnp.zeros(1, bool), c[:-1]])

    def cutoff_action(self, state: MemoryCutoffState, m) -> jnp.ndarray:
        """The fixed cut-off m policy: flag every link whose age is >= m. (N,) int32."""
        return (state.covered & (state.age >= m)).astype(jnp.int32)

    def _obs(self, state: MemoryCutoffState) -> jnp.ndarray:
        cov = state.covered.astype(jnp.float64)
        age = jnp.minimum(state.age / self.max_observed_age, 1.0) * cov
        return jnp.concatenate([cov, age, state.coherence * cov]).astype(jnp.float32)

    def reset_env(self, key, params, cache):
        N = self.N
        state = MemoryCutoffState(
            covered=jnp.zeros(N, bool),
            age=jnp.zeros(N, jnp.int32),
            coherence=jnp.ones(N, jnp.float64),
            deliveries=jnp.zeros((), jnp.int32),
            sum_lambda=jnp.zeros((), jnp.float64),
            sum_reward=jnp.zeros((), jnp.float64),
            time=jnp.zeros((), jnp.int32),
        )
        return self._obs(state), state

    def step_env(self, key, state, action, params, cache):
        N = self.N
        flags = jnp.asarray(action).reshape(N) != 0
        covered = state.covered
        # (a) a link's fate is the flag of its leftmost segment, broadcast along its run
        joined = _joined(covered)
        idx = jnp.arange(N)
        start = _run_reduce(jnp.where(joined, 0, idx), joined, lambda a, b: a)
        discard = covered & (jax.nn.one_hot(start, N, dtype=jnp.int32) @ flags.astype(jnp.int32) > 0)
        covered = covered & ~discard
        # (b) storage: age and decohere every surviving link
        age = jnp.where(covered, state.age + 1, 0)
        coherence = jnp.where(covered, state.coherence * params.lam, 1.0)
        link_start = covered & ~_joined_prev(covered)
        # (c) generation on uncovered segments
        gen = ~covered & (jax.random.uniform(key, (N,)) < params.p)
        covered = covered | gen
        # (d) swap ASAP: each run of covered segments becomes one link
        joined = _joined(covered)
        piece_lambda = jnp.where(link_start, coherence, 1.0)  # one factor per pre-merge link
        age = _run_reduce(age, joined, jnp.maximum)
        coherence = _run_reduce(piece_lambda, joined, jnp.multiply)
        # (e) delivery
        delivered = jnp.all(covered)
        lam_e2e = coherence[0]
        reward = jnp.where(delivered, self.secret_fraction(lam_e2e, params), 0.0)
        covered = covered & ~delivered
        age = jnp.where(covered, age, 0)
        coherence = jnp.where(covered, coherence, 1.0)
        deliveries = state.deliveries + delivered.astype(jnp.int32)
        sum_lambda = state.sum_lambda + jnp.where(delivered, lam_e2e, 0.0)
        time = state.time + 1
        new_state = MemoryCutoffState(
            covered=covered, age=age.astype(jnp.int32), coherence=coherence, deliveries=deliveries,
            sum_lambda=sum_lambda, sum_reward=state.sum_reward + reward, time=time,
        )
        n_del = jnp.maximum(deliveries, 1)
        skr_avg = jnp.where(
            deliveries > 0, self.secret_fraction(sum_lambda / n_del, params) * deliveries / time, 0.0
        )
        info = {
            "delivered": delivered.astype(jnp.float64),
            "secret_fraction": reward,
            "delivered_lambda": jnp.where(delivered, lam_e2e, 0.0),
            "skr_pp": new_state.sum_reward / time,
            "skr_avg": skr_avg,
            "action_mask": self.action_mask(new_state).astype(jnp.float64),
        }
        terminated = jnp.zeros((), bool)
        return self._obs(new_state), new_state, reward, terminated, info

    # --------------------------------------------------------------------------- references
    CUTOFF_GRID = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 30)

    def references(self, params=None, *, cache=None) -> dict[str, float]:
        """Physical limit and baselines (see the class docstring). Cached per parameter set."""
        params = self.default_params() if params is None else params
        p, lam, w0 = float(params.p), float(params.lam), float(params.w0)
        key = (self.N, p, lam, w0, self.protocol, self.memory_noise, self.max_episode_steps)
        if key not in _REFERENCE_CACHE:
            _REFERENCE_CACHE[key] = self._compute_references(p, lam, w0)
        return dict(_REFERENCE_CACHE[key])

    def _compute_references(self, p: float, lam: float, w0: float) -> dict[str, float]:
        from qsmgym.agents.repeater_baselines import best_fixed_cutoff

        H = float(self.max_episode_steps)
        r_max = float(secret_fraction(w0**self.N, 1.0, self.protocol, self.memory_noise))
        free = r_max / expected_max_geometric(self.N, p)
        nocut = no_cutoff_exact(self.N, p, lam, w0, self.protocol, self.memory_noise)
        best = best_fixed_cutoff(self, p=p, lam=lam, w0=w0)
        ref = {
            "horizon": H,
            "decoherence_free_skr": free,
            "no_cutoff_skr_pp": nocut["skr_pp"],
            "no_cutoff_skr_avg": nocut["skr_avg"],
            "no_cutoff_delivery_time": nocut["delivery_time"],
            "best_fixed_cutoff": float(best["cutoff"]),
            "best_fixed_cutoff_skr_pp": best["skr_pp"],
            "best_fixed_cutoff_skr_pp_stderr": best["skr_pp_stderr"],
            "best_fixed_cutoff_skr_avg": best["skr_avg"],
            "best_fixed_cutoff_delivery_time": best["delivery_time"],
            "best_fixed_cutoff_return": H * best["skr_pp"],
            "physical_limit": H * free,
            "naive_baseline": H * nocut["skr_pp"],
        }
        return ref

    # ------------------------------------------------------------------ benchmark reference
    def reference_stepper(self, params=None, seed: int = 0) -> "MemoryCutoffReference":
        """The same model in plain NumPy/Python (no JAX): ``reset()``, ``step(action)`` ->
        (reward, done). ``done`` is the truncation at ``horizon``."""
        params = self.default_params() if params is None else params
        return MemoryCutoffReference(
            self.N, float(params.p), float(params.lam), float(params.w0), self.protocol,
            self.memory_noise, self.max_episode_steps, seed,
        )


def _joined_prev(covered):
    return jnp.concatenate([jnp.zeros(1, bool), covered[:-1]])


_REFERENCE_CACHE: dict[tuple, dict[str, float]] = {}


class MemoryCutoffReference:
    """Plain-Python reference implementation of MemoryCutoff (links as [start, end, age,
    Lambda] lists), for benchmarks and cross-checks. Random numbers from NumPy's PCG64."""

    def __init__(self, N, p, lam, w0, protocol, memory_noise, horizon, seed=0):
        self.N, self.p, self.lam, self.w = N, p, lam, w0**N
        self.protocol, self.memory_noise, self.horizon = protocol, memory_noise, horizon
        self.rng = np.random.default_rng(seed)
        self.reset()

    def _r(self, Lambda: float) -> float:
        return float(secret_fraction(self.w, Lambda, self.protocol, self.memory_noise))

    def reset(self):
        self.links: list[list] = []  # [first segment, last segment, age, Lambda]
        self.t = 0

    def step(self, action) -> tuple[float, bool]:
        links = [lk for lk in self.links if not action[lk[0]]]
        for lk in links:
            lk[2] += 1
            lk[3] *= self.lam
        covered = [False] * self.N
        for lk in links:
            for i in range(lk[0], lk[1] + 1):
                covered[i] = True
        u = self.rng.random(self.N)
        for i in range(self.N):
            if not covered[i] and u[i] < self.p:
                links.append([i, i, 0, 1.0])
        links.sort()
        merged = [links[0]] if links else []
        for lk in links[1:]:
            last = merged[-1]
            if lk[0] == last[1] + 1:  # shares a node: swap
                merged[-1] = [last[0], lk[1], max(last[2], lk[2]), last[3] * lk[3]]
            else:
                merged.append(lk)
        reward = 0.0
        if merged and merged[0][0] == 0 and merged[0][1] == self.N - 1:
            reward = self._r(merged[0][3])
            merged = []
        self.links = merged
        self.t += 1
        return reward, self.t >= self.horizon
