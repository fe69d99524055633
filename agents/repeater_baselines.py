"""Exact and Monte Carlo baselines for the repeater tasks (qsm/MemoryCutoff-v0,
qsm/RepeaterDelivery-v0).

MemoryCutoff (secret-key rate):
    two_segment_markov_chain   exact absorbing Markov chain for N = 2 with a fixed cut-off
                               (an independent check of the closed forms in physics.repeater)
    evaluate_cutoffs_mc        Monte Carlo of fixed cut-off policies through the JAX core
                               (vmapped over cut-offs and envs, one lax.scan over slots)
    best_fixed_cutoff          m* by SKR_pp: closed forms for N = 2, Monte Carlo otherwise

RepeaterDelivery (delivery time, Inesta et al., arXiv:2207.06533, re-implemented):
    build_delivery_mdp         enumerate the reachable link configurations and transitions
    value_iteration            optimal values and greedy policy, then exact policy evaluation
    policy_evaluation          exact expected delivery time of a policy (sparse linear solve)
    solve_delivery             optimal and swap-ASAP delivery times in one call (cached)
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from qsmgym.physics.repeater import no_cutoff_exact, secret_fraction, two_segment_rates

INF_CUTOFF = 2**30  # "no cut-off" as an int age threshold


# ------------------------------------------------------------------------ memory cut-off
def two_segment_markov_chain(p: float, m: int) -> dict[str, np.ndarray | float]:
    """Exact E[T] and law of D for two segments with a fixed cut-off m, by an absorbing chain.

    Transient states: empty, or one stored link of age a = 0..m (which side does not matter).
    One slot (MemoryCutoff order): discard if a >= m; age; generate free segments; deliver if
    both are covered (D = the stored link's age). Solved with the fundamental matrix.

    Returns:
        {"delivery_time": E[T] from empty, "wait_distribution": P(D = d), d = 0..m}
    """
    q = 1.0 - p
    n = m + 2  # 0: empty, 1 + a: link of age a
    Q = np.zeros((n, n))
    R = np.zeros((n, m + 1))  # absorption: delivered with D = d

    def from_empty(row):
        R[row, 0] += p * p
        Q[row, 1] += 2 * p * q
        Q[row, 0] += q * q

    from_empty(0)
    for a in range(m + 1):
        row = 1 + a
        if a >= m:
            from_empty(row)  # discarded; both segments attempt in this slot
        else:
            R[row, a + 1] += p
            Q[row, a + 2] += q
    N = np.linalg.inv(np.eye(n) - Q)
    return {"delivery_time": float(N[0].sum()), "wait_distribution": N[0] @ R}


def evaluate_cutoffs_mc(
    task, cutoffs, *, params=None, n_envs: int = 256, n_slots: int = 4000, seed: int = 0,
    groups: int = 16,
) -> list[dict[str, float]]:
    """Monte Carlo of fixed cut-off policies on a MemoryCutoff core.

    Each of ``n_envs`` independent chains runs ``n_slots`` slots per cut-off from the empty
    (renewal) state. Rates are time averages (SKR_pp = sum of rewards / slots, E[T] = slots /
    deliveries); their bias is O(1 / n_slots) relative (renewal theory; the ratio
    "time of the last delivery / deliveries" would be biased by about -E[T]^2 / n_slots by
    length-biased sampling of the unfinished cycle). Standard errors: the envs are split into
    ``groups`` independent batches; se = std(batch estimates) / sqrt(groups).

    Args:
        task: a ``MemoryCutoff`` instance. cutoffs: ints (``math.inf`` = no cut-off).

    Returns:
        one dict per cut-off: delivery_time, mean_lambda, skr_pp, skr_avg, deliveries and
        the ``*_stderr`` of the first four.
    """
    params = task.default_params() if params is None else params
    cut = jnp.asarray([INF_CUTOFF if math.isinf(m) else int(m) for m in cutoffs], jnp.int32)
    if n_envs % groups:
        raise ValueError(f"n_envs must be a multiple of groups={groups}, got n_envs={n_envs}")
    totals = _mc_totals(task, params, cut, n_envs, n_slots, seed)
    deliveries, reward, lam_sum = (np.asarray(x, np.float64) for x in totals)
    w = float(params.w0) ** task.N
    out = []
    for c in range(len(cutoffs)):
        def estimates(sl):
            nd, tt = deliveries[c, sl].sum(), n_slots * deliveries[c, sl].size
            ET, ml = tt / nd, lam_sum[c, sl].sum() / nd
            r_avg = float(secret_fraction(w, ml, task.protocol, task.memory_noise))
            return np.array([ET, ml, reward[c, sl].sum() / tt, r_avg / ET])

        point = estimates(slice(None))
        batches = np.stack([estimates(slice(g, None, groups)) for g in range(groups)])
        se = batches.std(axis=0, ddof=1) / math.sqrt(groups)
        names = ("delivery_time", "mean_lambda", "skr_pp", "skr_avg")
        row = {k: float(v) for k, v in zip(names, point)}
        row.update({k + "_stderr": float(v) for k, v in zip(names, se)})
        row["deliveries"] = float(deliveries[c].sum())
        out.append(row)
    return out


def _mc_totals(task, params, cut, n_envs, n_slots, seed):
    def run(key, m):
        _, s0 = task.reset_env(key, params, None)

        def body(s, t):
            a = task.cutoff_action(s, m)
            _, s, _, _, _ = task.step_env(jax.random.fold_in(key, t), s, a, params, None)
            return s, None

        s, _ = jax.lax.scan(body, s0, jnp.arange(n_slots))
        return s.deliveries, s.sum_reward, s.sum_lambda

    keys = jax.random.split(jax.random.PRNGKey(seed), cut.shape[0] * n_envs).reshape(cut.shape[0], n_envs, -1)
    fn = jax.jit(jax.vmap(jax.vmap(run, in_axes=(0, None)), in_axes=(0, 0)))
    return fn(keys, cut)


def best_fixed_cutoff(
    task, *, p: float | None = None, lam: float | None = None, w0: float | None = None,
    patience: int = 5, m_max: int = 200, n_envs: int = 256, n_slots: int = 4000, seed: int = 0,
) -> dict[str, float]:
    """The fixed cut-off m* maximising SKR_pp (the task's reward) and its rates.

    N = 2: exact closed forms (physics.repeater.two_segment_rates); N <= 4: the exact chain
    ``fixed_cutoff_exact``. Both scan m = 0, 1, ... and stop ``patience`` cut-offs past the
    best so far (or at ``m_max``), then compare with no cut-off (m = inf, exact). SKR_pp was
    unimodal in m in every case checked; the scan is a search, not a proof of optimality.
    N > 4: ``evaluate_cutoffs_mc`` over ``task.CUTOFF_GRID`` + inf with a fixed seed, and
    ``skr_pp_stderr`` is its Monte Carlo standard error (0 for the exact cases).
    """
    params = task.default_params()
    p = float(params.p) if p is None else p
    lam = float(params.lam) if lam is None else lam
    w0 = float(params.w0) if w0 is None else w0
    proto, noise = task.protocol, task.memory_noise
    if task.N <= 4:
        if task.N == 2:
            rate = lambda m: two_segment_rates(p, m, lam, w0, proto, noise)  # noqa: E731
        else:
            rate = lambda m: fixed_cutoff_exact(task.N, p, lam, m, w0, proto, noise)  # noqa: E731
        best, best_m, m = None, None, 0
        while m <= m_max and (best_m is None or m - best_m <= patience):
            row = rate(m)
            if best is None or row["skr_pp"] > best["skr_pp"]:
                best, best_m = row, m
            m += 1
        inf = no_cutoff_exact(task.N, p, lam, w0, proto, noise)
        if inf["skr_pp"] > best["skr_pp"]:
            best, best_m = inf, math.inf
        return dict(best, cutoff=best_m, skr_pp_stderr=0.0)
    grid = list(task.CUTOFF_GRID) + [math.inf]
    params = type(params)(p=jnp.float64(p), lam=jnp.float64(lam), w0=jnp.float64(w0))
    rows = evaluate_cutoffs_mc(task, grid, params=params, n_envs=n_envs, n_slots=n_slots, seed=seed)
    best = int(np.argmax([r["skr_pp"] for r in rows]))
    return dict(rows[best], cutoff=grid[best])


# --------------------------------------------------------------------- delivery-time MDP
TERMINAL = "delivered"


@dataclass(frozen=True)
class DeliveryMDP:
    """The delivery-time MDP of a repeater chain (Inesta et al.), states just before swaps.

    states: tuples of links (i, j, age), sorted; states[0] is the empty state.
    rows: one per (state, action): row_state[k], row_action[k] (tuple of swapping nodes);
    P: (rows, states) sparse transition probabilities; the missing mass goes to delivery.
    """

    n_nodes: int
    p: float
    p_swap: float
    t_cut: int
    states: list
    index: dict
    row_state: np.ndarray
    row_action: list
    P: scipy.sparse.csr_matrix

    @property
    def n_states(self) -> int:
        return len(self.states)


def swappable_nodes(links, n_nodes: int) -> tuple[int, ...]:
    """Nodes holding exactly two links (one to the left, one to the right)."""
    left = {j for _, j, _ in links}
    right = {i for i, _, _ in links}
    return tuple(k for k in range(1, n_nodes - 1) if k in left and k in right)


def _after_swaps(links, nodes, p_swap):
    """Distribution over link sets after the swaps at ``nodes`` (merging by shared node, in
    node order). A merged link whose swaps all succeed survives (prob p_swap^k); any failure
    destroys the whole run (every link it was made of)."""
    cur = {(i, j): (a, ()) for i, j, a in links}
    for k in nodes:
        (i, _), (la, ln) = next(((key, v) for key, v in cur.items() if key[1] == k))
        (_, j), (ra, rn) = next(((key, v) for key, v in cur.items() if key[0] == k))
        del cur[(i, k)], cur[(k, j)]
        cur[(i, j)] = (max(la, ra), ln + rn + (k,))
    fixed = [(i, j, a) for (i, j), (a, ks) in cur.items() if not ks]
    risky = [((i, j, a), p_swap ** len(ks)) for (i, j), (a, ks) in cur.items() if ks]
    out = []
    for bits in itertools.product((True, False), repeat=len(risky)):
        prob = 1.0
        kept = list(fixed)
        for ok, (link, ps) in zip(bits, risky):
            prob *= ps if ok else 1.0 - ps
            if ok:
                kept.append(link)
        if prob > 0:
            out.append((kept, prob))
    return out


def _generation(links, n_nodes, p):
    """Distribution over states after generation on every free segment (both memories free)."""
    right_used = {i for i, _, _ in links}
    left_used = {j for _, j, _ in links}
    free = [k for k in range(n_nodes - 1) if k not in right_used and k + 1 not in left_used]
    out = []
    for bits in itertools.product((True, False), repeat=len(free)):
        prob = 1.0
        new = list(links)
        for ok, k in zip(bits, free):
            prob *= p if ok else 1.0 - p
            if ok:
                new.append((k, k + 1, 0))
        if prob > 0:
            out.append((tuple(sorted(new)), prob))
    return out


def delivery_transition(links, action, n_nodes, p, p_swap, t_cut):
    """{next state or TERMINAL: probability} of one slot: swaps, delivery check, drop links with
    age >= t_cut, age + 1, generation."""
    out: dict = {}
    for kept, prob in _after_swaps(links, action, p_swap):
        if any(i == 0 and j == n_nodes - 1 for i, j, _ in kept):
            out[TERMINAL] = out.get(TERMINAL, 0.0) + prob
            continue
        aged = [(i, j, a + 1) for i, j, a in kept if a < t_cut]
        for nxt, pg in _generation(aged, n_nodes, p):
            out[nxt] = out.get(nxt, 0.0) + prob * pg
    return out


def build_delivery_mdp(n_nodes: int, p: float, p_swap: float, t_cut: int, *, actions: str = "all") -> DeliveryMDP:
    """Enumerate the states reachable from the empty chain and their transitions.

    Args:
        actions: "all" (every subset of the swappable nodes, including none) or "swap_asap"
            (only the set of all swappable nodes).
    """
    states = [()]
    index = {(): 0}
    row_state, row_action, rows, cols, vals = [], [], [], [], []
    s = 0
    while s < len(states):
        links = states[s]
        nodes = swappable_nodes(links, n_nodes)
        if actions == "all":
            choices = [c for r in range(len(nodes) + 1) for c in itertools.combinations(nodes, r)]
        else:
            choices = [nodes]
        for action in choices:
            row = len(row_state)
            row_state.append(s)
            row_action.append(action)
            for nxt, prob in delivery_transition(links, action, n_nodes, p, p_swap, t_cut).items():
                if nxt == TERMINAL:
                    continue
                if nxt not in index:
                    index[nxt] = len(states)
                    states.append(nxt)
                rows.append(row)
                cols.append(index[nxt])
                vals.append(prob)
        s += 1
    P = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(len(row_state), len(states)))
    return DeliveryMDP(n_nodes, p, p_swap, t_cut, states, index, np.asarray(row_state), row_action, P)


def policy_evaluation(mdp: DeliveryMDP, rows: np.ndarray) -> np.ndarray:
    """Exact values V (reward -1 per slot) of the policy choosing row ``rows[s]`` in state s:
    (I - P_pi) V = -1, solved sparse."""
    P_pi = mdp.P[rows]
    A = scipy.sparse.identity(mdp.n_states, format="csc") - P_pi.tocsc()
    return scipy.sparse.linalg.spsolve(A, -np.ones(mdp.n_states))


def _row_groups(mdp: DeliveryMDP) -> np.ndarray:
    return np.flatnonzero(np.r_[True, mdp.row_state[1:] != mdp.row_state[:-1]])


def _greedy(mdp: DeliveryMDP, V: np.ndarray, *, with_rows: bool = True):
    """Bellman backup: best Q per state and (optionally) the first maximising row per state
    (ties within 1e-12 relative: the earliest row, i.e. the fewest swaps)."""
    Q = -1.0 + mdp.P @ V
    starts = _row_groups(mdp)
    best = np.maximum.reduceat(Q, starts)
    if not with_rows:
        return best, None
    is_best = Q >= np.repeat(best, np.diff(np.r_[starts, len(Q)])) - 1e-12 * np.maximum(1.0, np.abs(np.repeat(best, np.diff(np.r_[starts, len(Q)]))))
    # first True per group: reduceat of the row index where is_best, else a large number
    idx = np.where(is_best, np.arange(len(Q)), len(Q))
    return best, np.minimum.reduceat(idx, starts)


def value_iteration(mdp: DeliveryMDP, *, tol: float = 1e-10, max_iter: int = 2000) -> dict:
    """Value iteration V <- max_a (-1 + P_a V) from V = 0 until the sup-norm change is below
    ``tol`` (relative to max |V|) or ``max_iter`` sweeps; then policy iteration from the greedy
    policy (exact sparse evaluations) until the policy is stable, so the returned values are
    exact up to the linear solve even where value iteration converges slowly (small p: the
    error contracts only by about 1 - 1/T per sweep).

    Returns:
        {"values", "policy_rows", "iterations", "policy_iterations", "delivery_time"} with
        delivery_time = -(V(empty) + 1) (the empty state's first slot only generates: spec
        A-2 off-by-one).
    """
    V = np.zeros(mdp.n_states)
    for it in range(1, max_iter + 1):
        V_new, _ = _greedy(mdp, V, with_rows=False)
        delta = np.max(np.abs(V_new - V))
        V = V_new
        if delta < tol * max(1.0, np.max(np.abs(V))):
            break
    _, rows = _greedy(mdp, V)
    for pi_it in range(1, 101):
        V = policy_evaluation(mdp, rows)
        _, new_rows = _greedy(mdp, V)
        if np.array_equal(new_rows, rows):
            break
        rows = new_rows
    else:  # pragma: no cover - never seen
        raise RuntimeError("policy iteration did not stabilise in 100 iterations")
    return {"values": V, "policy_rows": rows, "iterations": it, "policy_iterations": pi_it,
            "delivery_time": float(-(V[0] + 1.0))}


@functools.lru_cache(maxsize=64)
def solve_delivery(n_nodes: int, p: float, p_swap: float, t_cut: int) -> dict[str, float]:
    """Optimal (value iteration) and swap-ASAP expected delivery times, in slots, plus the
    number of non-terminal states. Cached."""
    mdp = build_delivery_mdp(n_nodes, p, p_swap, t_cut)
    vi = value_iteration(mdp)
    asap_rows = _asap_rows(mdp)
    V_asap = policy_evaluation(mdp, asap_rows)
    return {
        "optimal_delivery_time": vi["delivery_time"],
        "swap_asap_delivery_time": float(-(V_asap[0] + 1.0)),
        "n_states": float(mdp.n_states),
        "value_iterations": float(vi["iterations"]),
    }


def _asap_rows(mdp: DeliveryMDP) -> np.ndarray:
    """Per state, the row whose action is every swappable node (the last subset listed)."""
    starts = np.flatnonzero(np.r_[True, mdp.row_state[1:] != mdp.row_state[:-1]])
    ends = np.r_[starts[1:], len(mdp.row_state)]
    rows = ends - 1
    for s, r in enumerate(rows):
        if mdp.row_action[r] != swappable_nodes(mdp.states[s], mdp.n_nodes):
            raise RuntimeError("actions are not listed with swap-ASAP last")  # pragma: no cover
    return rows


def optimal_policy_table(n_nodes: int, p: float, p_swap: float, t_cut: int) -> dict:
    """{state: action} of the optimal policy (ties broken towards fewer swaps)."""
    mdp = build_delivery_mdp(n_nodes, p, p_swap, t_cut)
    vi = value_iteration(mdp)
    return {mdp.states[s]: mdp.row_action[r] for s, r in enumerate(vi["policy_rows"])}


# ----------------------------------------------------- exact fixed cut-off chain (any N)
def _cutoff_slot(links, n_segments, p, m):
    """One MemoryCutoff slot under the fixed cut-off m from ``links`` ((first, last, age,
    storage) tuples; Lambda = lam^storage): [(prob, next links, or (TERMINAL, storage))]."""
    kept = [(a, b, age + 1, st + 1) for a, b, age, st in links if age < m]
    covered = set()
    for a, b, _, _ in kept:
        covered.update(range(a, b + 1))
    free = [i for i in range(n_segments) if i not in covered]
    out = []
    for bits in itertools.product((True, False), repeat=len(free)):
        prob = 1.0
        new = list(kept)
        for ok, i in zip(bits, free):
            prob *= p if ok else 1.0 - p
            if ok:
                new.append((i, i, 0, 0))
        if prob == 0:
            continue
        new.sort()
        merged = [new[0]] if new else []
        for lk in new[1:]:
            last = merged[-1]
            if lk[0] == last[1] + 1:  # shares a node: swap (age max, Lambda product)
                merged[-1] = (last[0], lk[1], max(last[2], lk[2]), last[3] + lk[3])
            else:
                merged.append(lk)
        if merged and merged[0][0] == 0 and merged[0][1] == n_segments - 1:
            out.append((prob, (TERMINAL, merged[0][3])))
        else:
            out.append((prob, tuple(merged)))
    return out


def fixed_cutoff_exact(n_segments: int, p: float, lam: float, m: int, w0: float,
                       protocol: str = "bb84", memory_noise: str = "dephasing") -> dict[str, float]:
    """Exact E[T], <Lambda>, SKR_pp and SKR_avg of the fixed cut-off m, any N (MemoryCutoff).

    The link configurations reachable from the empty chain, each link carrying its age
    (<= m) and its storage exponent (Lambda = lam^storage), form a finite absorbing chain in
    which the delivered pair's Lambda is known at absorption. With P the transient part,
    (I - P) x = b gives E[T] (b = 1), E[r] (b = expected r of this slot's delivery) and
    E[Lambda] (likewise), all from the empty state (a renewal point).
    The state count grows fast with m and N (about 3e3 for N = 4, m = 6); keep m small.
    """
    w = w0**n_segments
    states, index = [()], {(): 0}
    rows, cols, vals, r_in, lam_in = [], [], [], [], []
    s = 0
    while s < len(states):
        r_s = l_s = 0.0
        for prob, nxt in _cutoff_slot(states[s], n_segments, p, m):
            if nxt and nxt[0] == TERMINAL:
                Lam = lam ** nxt[1]
                r_s += prob * float(secret_fraction(w, Lam, protocol, memory_noise))
                l_s += prob * Lam
                continue
            if nxt not in index:
                index[nxt] = len(states)
                states.append(nxt)
            rows.append(s)
            cols.append(index[nxt])
            vals.append(prob)
        r_in.append(r_s)
        lam_in.append(l_s)
        s += 1
    n = len(states)
    P = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(n, n))
    A = (scipy.sparse.identity(n, format="csc") - P).tocsc()
    sol = scipy.sparse.linalg.splu(A).solve(np.stack([np.ones(n), np.asarray(r_in), np.asarray(lam_in)], axis=1))
    ET, Er, mean_lam = (float(x) for x in sol[0])
    r_avg = float(secret_fraction(w, mean_lam, protocol, memory_noise))
    return {"delivery_time": ET, "mean_lambda": mean_lam, "skr_pp": Er / ET, "skr_avg": r_avg / ET,
            "n_states": float(n)}
