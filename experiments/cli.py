"""The `qsm` command line: one console script, one subcommand per job.

    qsm train --env qsm/KickedTopSensor-v0 --agent cem --budget default --seeds 3
    qsm evaluate runs/<run folder> --episodes 64
    qsm reproduce schuff2020
    qsm sweep ... / qsm leaderboard ... / qsm bench / qsm results / qsm demo

Bad input (unknown env id or agent, malformed values, missing run folder) prints one line,
``qsm: error: ...``, to stderr and exits with code 2; any other failure prints one line and
exits with code 1. ``--debug`` (anywhere on the line) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, function, one-line help)
COMMANDS = {
    "train": ("qsmgym.experiments.train", "train_main",
              "train an agent on a registered task into a run folder (config, meta, metrics, policy, plots)"),
    "evaluate": ("qsmgym.experiments.train", "evaluate_main",
                 "re-evaluate a run folder's saved policy on fresh seeds (scores vs limit and naive baseline)"),
    "sweep": ("qsmgym.experiments.sweep", "main", "hyperparameter sweep with Optuna (sqlite, journal or PostgreSQL)"),
    "reproduce": ("qsmgym.experiments.reproduce", "main",
                  "headline comparison of a paper: schuff2020, xiao2022, reiss2023, cai, belliardo2024"),
    "leaderboard": ("qsmgym.leaderboard.cli", "main", "validate, score and publish leaderboard submissions"),
    "bench": ("qsmgym.experiments.bench", "main",
              "steps per second: reference (QuTiP/NumPy), Gymnasium shell, JAX vector env"),
    "results": ("qsmgym.experiments.results", "main",
                "the agents' results table (IQM + bootstrap CIs, normalised to physical limits)"),
    "demo": ("qsmgym.experiments.demo", "main",
             "train CEM on the kicked-top sensor and compare with its baselines"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: qsm {{{','.join(COMMANDS)}}} [options] [--debug]", ""]
    lines += [f"  {name:{width}s}  {text}" for name, (_, _, text) in COMMANDS.items()]
    lines += ["", "`qsm COMMAND --help` shows a command's options; --debug shows tracebacks."]
    return "\n".join(lines)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv=None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a subcommand; returns the exit code."""
    from qsmgym.experiments.runs import QsmError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"qsm: error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[argv[0]]
    try:
        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    except QsmError as exc:
        if debug:
            raise
        print(f"qsm: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qsm: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as exc:  # a library error: one line unless --debug
        if debug:
            raise
        print(f"qsm: error: {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
