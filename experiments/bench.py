"""Throughput benchmark: the kicked top's four paths, and three paths for every other task.

    python -m qsmgym.experiments.bench            # j in {5, 10, 20}, none + superradiant
    qsm bench --js 10 --seconds 2 --json out.json

(a) QuTiP reference stepping one env (sesolve/mesolve per period with the derivative, QuTiP's
    default tolerances; kick unitaries precomputed), (b) the Gymnasium shell (gym.make, one env),
(c) the JAX vector env (gym.make_vec, --num-envs), (d) batched NumPy with the same
precomputed propagators (what a skilled user writes by hand). All paths compute the QFI reward
and the moments observation every step. Prints steps/s and the ratios b/a, c/a, c/d.

Every other registered task (``TASK_ROWS``): (a) its reference implementation
(``task.reference_stepper``: QuTiP for the quantum-dynamics tasks, plain NumPy/Python for the
repeater models), (b) the shell, (c) the vector env; ratios b/a and c/a.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np


def _timed(step, seconds: float, min_calls: int = 3) -> tuple[int, float]:
    """Call ``step`` until ``seconds`` have passed (at least ``min_calls``); (calls, elapsed)."""
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        step()
        calls += 1
    return calls, time.perf_counter() - start


def bench_qutip(task, params, seconds: float, rng) -> float:
    """(a) steps/s of the QuTiP reference stepping one env."""
    from qsmgym.physics.qutip_reference import QutipTangentStepper

    model = task.qutip_model(params)
    stepper = QutipTangentStepper(
        model["generator"], model["omega"], model["dt"], model["c_ops"],
        options={"normalize_output": False},  # QuTiP's default tolerances otherwise
    )
    kicks = [model["kick"](k) for k in np.asarray(params.k_grid)]
    state = {"t": task.n_periods}

    def step():
        if state["t"] == task.n_periods:
            stepper.reset(model["psi0"])
            state["t"] = 0
        stepper.step(kicks[rng.integers(len(kicks))])
        state["t"] += 1

    calls, elapsed = _timed(step, seconds)
    return calls / elapsed


def bench_shell(env_kwargs, seconds: float, env_id: str = "qsm/KickedTopSensor-v0") -> float:
    """(b) steps/s of the Gymnasium shell (one env, resets included)."""
    import gymnasium as gym

    env = gym.make(env_id, **env_kwargs)
    env.reset(seed=0)
    env.action_space.seed(0)
    done = [False]

    def step():
        if done[0]:
            env.reset()
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        done[0] = term or trunc

    step()  # compile
    calls, elapsed = _timed(step, seconds)
    return calls / elapsed


def bench_vector(env_kwargs, num_envs: int, seconds: float, rng, env_id: str = "qsm/KickedTopSensor-v0") -> float:
    """(c) steps/s (env steps, summed over the batch) of the native JAX vector env."""
    import gymnasium as gym

    venv = gym.make_vec(env_id, num_envs=num_envs, **env_kwargs)
    venv.reset(seed=0)
    venv.action_space.seed(int(rng.integers(2**31)))
    actions = [venv.action_space.sample() for _ in range(8)]
    it = [0]

    def step():
        venv.step(actions[it[0] % 8])
        it[0] += 1

    step()  # compile
    calls, elapsed = _timed(step, seconds)
    return calls * num_envs / elapsed


class NumpyKickedTop:
    """(d) Hand-written batched NumPy kicked top with the env's precomputed propagators."""

    def __init__(self, task, params, cache, num_envs: int):
        self.task, self.B = task, num_envs
        self.P, self.dP = np.asarray(cache.prop), np.asarray(cache.dprop)
        self.PT, self.dPT = self.P.T.copy(), self.dP.T.copy()
        m2 = np.asarray(task._m_b) ** 2
        phases = np.exp(-1j * np.asarray(params.k_grid)[:, None] * m2[None, :] / task.c_j)
        if task.mixed:
            phases = (np.conj(phases)[:, :, None] * phases[:, None, :]).reshape(len(phases), -1)
        self.phases = phases
        self.psi0 = np.asarray(cache.psi0)
        d = task.d
        self.jstack = task._spin_stack_real[: 3 * d, :d] + 1j * task._spin_stack_real[3 * d :, :d]
        self.mom_mixed = task._moments_mixed
        self.reset()

    def reset(self):
        d = self.task.d
        if self.task.mixed:
            rho = np.outer(self.psi0, self.psi0.conj())
            self.psi = np.tile(rho.T.reshape(-1), (self.B, 1))
        else:
            self.psi = np.tile(self.psi0, (self.B, 1))
        self.dpsi = np.zeros_like(self.psi)
        self.qfi = np.zeros(self.B)
        self.t = 0
        self.d = d

    def step(self, actions):
        kick = self.phases[actions]
        new = (self.psi @ self.PT) * kick
        dnew = (self.psi @ self.dPT + self.dpsi @ self.PT) * kick
        self.psi, self.dpsi = new, dnew
        d = self.d
        if self.task.mixed:
            rho = new.reshape(self.B, d, d).transpose(0, 2, 1)
            drho = dnew.reshape(self.B, d, d).transpose(0, 2, 1)
            lam, v = np.linalg.eigh(0.5 * (rho + rho.conj().transpose(0, 2, 1)))
            dh = 0.5 * (drho + drho.conj().transpose(0, 2, 1))
            de = v.conj().transpose(0, 2, 1) @ dh @ v
            s = lam[:, :, None] + lam[:, None, :]
            keep = s > 1e-12 * lam.max(axis=1)[:, None, None]
            qfi = 2 * np.sum(np.where(keep, np.abs(de) ** 2 / np.where(keep, s, 1), 0), axis=(1, 2))
            moments = np.concatenate([new.real, new.imag], axis=1) @ self.mom_mixed
        else:
            ov = np.sum(new.conj() * dnew, axis=1)
            qfi = 4 * (np.sum(np.abs(dnew) ** 2, axis=1) - np.abs(ov) ** 2)
            u = (new @ self.jstack.T).reshape(self.B, 3, d)
            first = np.einsum("bd,bkd->bk", new.conj(), u).real
            pairs = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
            second = np.stack([np.sum(u[:, a].conj() * u[:, b], axis=1).real for a, b in pairs], 1)
            moments = np.concatenate([first, second], axis=1)
        reward = (qfi - self.qfi) / (2 * self.task.j * self.task.total_time**2)
        self.qfi = qfi
        self.t += 1
        obs = np.concatenate([np.full((self.B, 1), self.t / self.task.n_periods), moments], 1)
        if self.t == self.task.n_periods:
            self.reset()
        return obs.astype(np.float32), reward


def bench_numpy(task, params, cache, num_envs: int, seconds: float, rng) -> float:
    """(d) steps/s of the hand-written batched NumPy implementation."""
    sim = NumpyKickedTop(task, params, cache, num_envs)
    actions = [rng.integers(0, len(params.k_grid), num_envs) for _ in range(8)]
    it = [0]

    def step():
        sim.step(actions[it[0] % 8])
        it[0] += 1

    calls, elapsed = _timed(step, seconds)
    return calls * num_envs / elapsed


def run(js=(5, 10, 20), noises=("none", "superradiant"), num_envs=1024, seconds=3.0, paths="abcd"):
    """Measure every path for every (noise, j); return a list of result rows."""
    from qsmgym.envs.kicked_top import KickedTopSensor

    rng = np.random.default_rng(0)
    rows = []
    for noise in noises:
        for j in js:
            kwargs = {"j": j, "noise": noise}
            task = KickedTopSensor(**kwargs)
            params = task.default_params()
            cache = task.precompute(params)
            row = {"j": j, "noise": noise, "num_envs": num_envs}
            if "a" in paths:
                row["qutip"] = bench_qutip(task, params, seconds, rng)
            if "b" in paths:
                row["shell"] = bench_shell(kwargs, seconds)
            if "c" in paths:
                row["jax_vector"] = bench_vector(kwargs, num_envs, seconds, rng)
            if "d" in paths:
                row["numpy_batched"] = bench_numpy(task, params, cache, num_envs, seconds, rng)
            if "qutip" in row:
                row["b/a"] = row.get("shell", np.nan) / row["qutip"]
                row["c/a"] = row.get("jax_vector", np.nan) / row["qutip"]
            if "numpy_batched" in row:
                row["c/d"] = row.get("jax_vector", np.nan) / row["numpy_batched"]
            rows.append(row)
            print(_format_row(row), flush=True)
    return rows


# Every other registered task at the settings of its benchmark rows: (id, kwargs).
TASK_ROWS = [
    ("qsm/TimeDependentEstimation-v0", {}),
    ("qsm/TimeDependentEstimation-v0", {"noise": "dephasing"}),
    ("qsm/MemoryCutoff-v0", {}),
    ("qsm/RepeaterDelivery-v0", {}),
    ("qsm/PhotonShaping-v0", {}),
    ("qsm/PhotonStorage-v0", {}),
    ("qsm/BayesianMagnetometry-v0", {}),
]


def bench_reference(task, params, seconds: float, rng) -> float:
    """(a) steps/s of the task's reference implementation (QuTiP for quantum dynamics, plain
    NumPy/Python for the repeater models): ``task.reference_stepper``."""
    stepper = task.reference_stepper(params, seed=0)
    space = task.action_space(params)
    space.seed(int(rng.integers(2**31)))
    actions = [np.asarray(space.sample(), np.float64) if space.dtype.kind == "f" else space.sample() for _ in range(16)]
    it = [0]

    def step():
        _, done = stepper.step(actions[it[0] % 16])
        it[0] += 1
        if done:
            stepper.reset()

    stepper.reset()
    calls, elapsed = _timed(step, seconds)
    return calls / elapsed


def run_tasks(rows=None, num_envs=1024, seconds=3.0, paths="abc"):
    """Paths a (reference), b (shell), c (vector env) for the non-kicked-top tasks."""
    from qsmgym.envs import make_task

    rng = np.random.default_rng(0)
    out = []
    for env_id, kwargs in TASK_ROWS if rows is None else rows:
        task = make_task(env_id, **kwargs)
        params = task.default_params()
        label = ",".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults"
        row = {"env_id": env_id, "kwargs": kwargs, "label": label, "num_envs": num_envs}
        if "a" in paths:
            row["reference"] = bench_reference(task, params, seconds, rng)
        if "b" in paths:
            row["shell"] = bench_shell(kwargs, seconds, env_id)
        if "c" in paths:
            row["jax_vector"] = bench_vector(kwargs, num_envs, seconds, rng, env_id)
        if "reference" in row:
            row["b/a"] = row.get("shell", np.nan) / row["reference"]
            row["c/a"] = row.get("jax_vector", np.nan) / row["reference"]
        out.append(row)
        print(_format_task_row(row), flush=True)
    return out


def _format_task_row(row) -> str:
    parts = [f"{row['env_id'].split('/')[1]:>30s} {row['label']:<18s}"]
    for key in ("reference", "shell", "jax_vector"):
        if key in row:
            parts.append(f"{key}={row[key]:10.3g}/s")
    for key in ("b/a", "c/a"):
        if key in row:
            parts.append(f"{key}={row[key]:8.3g}")
    return "  ".join(parts)


def _format_row(row) -> str:
    parts = [f"{row['noise']:>12s} j={row['j']:<3d}"]
    for key in ("qutip", "shell", "jax_vector", "numpy_batched"):
        if key in row:
            parts.append(f"{key}={row[key]:10.3g}/s")
    for key in ("b/a", "c/a", "c/d"):
        if key in row:
            parts.append(f"{key}={row[key]:8.3g}")
    return "  ".join(parts)


def hardware_line() -> str:
    import jax

    return (
        f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="qsm bench", description=__doc__.split("\n")[0])
    p.add_argument("--js", type=float, nargs="+", default=[5, 10, 20], help="spin values j")
    p.add_argument("--noise", nargs="+", default=["none", "superradiant"], help="noise models")
    p.add_argument("--num-envs", type=int, default=1024, help="batch of the vector paths")
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    p.add_argument("--paths", default="abcd", help="subset of a, b, c, d to run")
    p.add_argument("--json", default=None, help="write the rows to this JSON file")
    p.add_argument("--tasks", choices=["all", "kicked-top", "others"], default="all",
                   help="kicked-top table (paths a-d), the other tasks (paths a-c), or both")
    args = p.parse_args(argv)
    for name, value in (("num_envs", args.num_envs), ("seconds", args.seconds)):
        if value <= 0:
            p.error(f"{name} must be > 0, got {value}")
    import jax

    jax.config.update("jax_enable_x64", True)
    print("hardware:", hardware_line())
    js = [int(j) if float(j).is_integer() else j for j in args.js]
    rows, task_rows = [], []
    if args.tasks in ("all", "kicked-top"):
        rows = run(js, tuple(args.noise), args.num_envs, args.seconds, args.paths)
    if args.tasks in ("all", "others"):
        print("other tasks: (a) reference implementation, (b) shell, (c) vector env")
        task_rows = run_tasks(None, args.num_envs, args.seconds, args.paths.replace("d", ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"hardware": hardware_line(), "rows": rows, "task_rows": task_rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
