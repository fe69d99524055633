"""Launch N `qsm sweep` workers on a SLURM cluster with submitit (or locally as subprocesses).

    # 16 GPU workers on SLURM, one shared journal (everything after -- goes to `qsm sweep`):
    python experiments/cluster/submitit_sweep.py --workers 16 --partition gpu --gpus-per-worker 1 \\
        --time-min 240 --log-dir sweeps/logs -- \\
        --env qsm/MemoryCutoff-v0 --agent ppo --n-trials 200 --storage journal:/shared/sweeps/mc.journal

    # the same sweep as 3 local worker processes (no submitit needed), for testing:
    python experiments/cluster/submitit_sweep.py --local --workers 3 -- \\
        --env qsm/MemoryCutoff-v0 --agent cem --budget tiny --n-trials 6 --storage journal:/tmp/mc.journal

Every worker runs the same command (``python -m qsmgym.experiments.sweep ARGS``); the shared
storage does the coordination (docs/sweeps.md). submitit is optional (``pip install submitit``);
without it only ``--local`` works, and the launcher says so. submitit ships the worker's
command to the nodes as its own pickled job file; no data of ours is pickled.

Exit code: the largest exit code of the workers (0 when all finished), 2 for bad input.
"""

from __future__ import annotations

import argparse
import subprocess
import sys


class LaunchError(Exception):
    """Bad launcher input: one line, exit 2."""


def worker_command(sweep_args: list[str]) -> list[str]:
    """The command every worker runs.

    Raises:
        LaunchError: no sweep arguments, or several workers without a shared ``--storage``
            (the default sqlite file is for one process).
    """
    if not sweep_args:
        raise LaunchError("give the `qsm sweep` arguments after --, e.g. -- --env ID --agent ppo "
                          "--n-trials 100 --storage journal:/shared/x.journal")
    if not any(a == "--storage" or a.startswith("--storage=") for a in sweep_args):
        raise LaunchError("workers need a shared --storage (journal:/shared/path.journal or a "
                          "postgresql+psycopg2:// URL); the default sqlite file is for one process")
    return [sys.executable, "-m", "qsmgym.experiments.sweep", *sweep_args]


def run_local(command: list[str], workers: int) -> int:
    """Start ``workers`` processes of ``command`` at once; wait for all; the largest exit code."""
    procs = [subprocess.Popen(command) for _ in range(workers)]
    codes = []
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # Ctrl-C reaches the workers too (same process group); wait for them
        codes = [p.wait() for p in procs]
    return max(codes)


def run_submitit(command: list[str], args) -> int:
    """Submit ``args.workers`` copies of ``command`` as one SLURM array; wait; the largest exit code."""
    try:
        import submitit
    except ImportError as exc:
        raise LaunchError("submitit is not installed (pip install submitit); use --local for "
                          "subprocess workers or experiments/cluster/slurm_sweep.sbatch") from exc
    executor = submitit.AutoExecutor(folder=args.log_dir)
    params = dict(timeout_min=args.time_min, cpus_per_task=args.cpus_per_worker,
                  slurm_array_parallelism=args.workers, name="qsm-sweep")
    if args.gpus_per_worker:
        params["gpus_per_node"] = args.gpus_per_worker
    if args.partition:
        params["slurm_partition"] = args.partition
    executor.update_parameters(**params)
    with executor.batch():
        jobs = [executor.submit(submitit.helpers.CommandFunction(command)) for _ in range(args.workers)]
    print(f"submitted {len(jobs)} workers: {', '.join(j.job_id for j in jobs)}; logs in {args.log_dir}",
          flush=True)
    if args.no_wait:
        return 0
    codes = []
    for job in jobs:
        try:
            job.result()
            codes.append(0)
        except Exception as exc:  # submitit raises on a non-zero exit or a failed job
            print(f"worker {job.job_id} failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}",
                  file=sys.stderr)
            codes.append(1)
    return max(codes)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, sweep_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="submitit_sweep.py", description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=4, help="worker processes / array tasks")
    p.add_argument("--local", action="store_true", help="run the workers here as subprocesses")
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--gpus-per-worker", type=int, default=0, help="GPUs per worker (needs jax[cuda12])")
    p.add_argument("--cpus-per-worker", type=int, default=4)
    p.add_argument("--time-min", type=int, default=240, help="time limit per worker, minutes")
    p.add_argument("--log-dir", default="sweeps/logs", help="submitit's job folder")
    p.add_argument("--no-wait", action="store_true", help="submit and return")
    try:
        args = p.parse_args(own)
        if args.workers < 1:
            raise LaunchError(f"--workers must be >= 1, got {args.workers}")
        command = worker_command(sweep_args)
        return run_local(command, args.workers) if args.local else run_submitit(command, args)
    except LaunchError as exc:
        print(f"submitit_sweep: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
