"""GRAPE optima that serve as tasks' practical references where no closed form is known.

    python -m qsmgym.experiments.grape_references            # all rows, prints JSON lines
    python -m qsmgym.experiments.grape_references --rows 0 1

Each row is (task id, constructor kwargs, GRAPE settings). The printed values are what the
tables in the env modules hold (e.g. ``time_dependent.GRAPE_REFERENCES``); the slow test
tests/agents/test_grape.py::test_grape_reproduces_the_tabulated_references re-runs them.
"""

from __future__ import annotations

import argparse
import json
import time

ROWS = [
    # TimeDependentEstimation: the spec's T = 10, N = 50 setting and the env defaults (T = 5, N = 20)
    ("qsm/TimeDependentEstimation-v0", {"total_time": 10.0, "n_bins": 50}, {"iterations": 2000, "restarts": 4}),
    ("qsm/TimeDependentEstimation-v0", {"total_time": 10.0, "n_bins": 50, "noise": "dephasing", "gamma": 0.05}, {"iterations": 2000, "restarts": 4}),
    ("qsm/TimeDependentEstimation-v0", {"total_time": 10.0, "n_bins": 50, "noise": "emission", "gamma": 0.05}, {"iterations": 2000, "restarts": 4}),
    ("qsm/TimeDependentEstimation-v0", {}, {"iterations": 1000, "restarts": 4}),
    ("qsm/TimeDependentEstimation-v0", {"noise": "dephasing", "gamma": 0.05}, {"iterations": 1000, "restarts": 4}),
    ("qsm/TimeDependentEstimation-v0", {"noise": "emission", "gamma": 0.05}, {"iterations": 1000, "restarts": 4}),
]


def run_row(index: int, seed: int = 0) -> dict:
    """Run GRAPE for ROWS[index]; returns the row with its best return and run time."""
    import jax

    from qsmgym.agents import grape
    from qsmgym.envs import make_task

    env_id, kwargs, settings = ROWS[index]
    task = make_task(env_id, **kwargs)
    params = task.default_params()
    config = grape.GrapeConfig(n_steps=task.horizon, **settings)
    start = time.perf_counter()
    result = grape.train_grape(task, params, config, seed=seed)
    best = float(jax.block_until_ready(result.best_return))
    return {
        "env_id": env_id,
        "kwargs": kwargs,
        "grape": settings,
        "seed": seed,
        "best_return": best,
        "restart_returns": [float(x) for x in result.restart_returns],
        "seconds": time.perf_counter() - start,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=None, help="row indices (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for i in range(len(ROWS)) if args.rows is None else args.rows:
        if not 0 <= i < len(ROWS):
            parser.error(f"--rows must lie in [0, {len(ROWS)}), got {i}")
        print(json.dumps(run_row(i, args.seed)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
