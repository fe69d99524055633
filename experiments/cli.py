"""The `qsm` command line. Subcommands so far: `demo`, `bench`, `results`; train, evaluate,
sweep and reproduce arrive with the experiments issue."""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "demo": "qsmgym.experiments.demo",
        "bench": "qsmgym.experiments.bench",
        "results": "qsmgym.experiments.results",
    }
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: qsm {" + ",".join(commands) + "} [options]\n\n"
              "  demo     train CEM on the kicked-top sensor and compare with its baselines\n"
              "  bench    steps per second: reference (QuTiP/NumPy), Gymnasium shell, JAX vector env\n"
              "  results  the agents' results table (IQM + bootstrap CIs, normalised to physical limits)")
        return 0
    if argv[0] not in commands:
        print(f"qsm: unknown command {argv[0]!r}; choose from {sorted(commands)}", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(commands[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
