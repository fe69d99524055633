"""Test-wide setup.

- The physics needs complex128, so tests enable x64 explicitly (the library itself only does so
  at env construction, with a warning).
- XLA's LLVM back end runs at optimisation level 0 in the default suite. That suite is
  dominated by compiling small programs that then run briefly (tiny budgets, a few steps), and
  -O0 compiles them about twice as fast: a set of the slowest tests went from 618 s to 393 s
  (session 17). The level changes how fast the machine code runs, not what it computes (XLA
  does not enable fast-math on CPU), and every tolerance here is stated for round-off anyway.
  Runs that select the slow learning tests (``-m slow``), which are bound by run time, keep
  XLA's default, as do users and benchmarks. ``QSM_TEST_XLA_OPT=default`` keeps the default
  for any run; an ``xla_backend_optimization_level`` already in XLA_FLAGS is left alone.
  Subprocesses started by tests inherit the setting through the environment.
"""

import os
import warnings

import jax

jax.config.update("jax_enable_x64", True)

_OPT_FLAG = "--xla_backend_optimization_level=0"


def _selects_slow(markexpr: str) -> bool:
    expr = " ".join(markexpr.split())
    return "slow" in expr and "not slow" not in expr


def pytest_configure(config):
    flags = os.environ.get("XLA_FLAGS", "")
    if (os.environ.get("QSM_TEST_XLA_OPT", "") == "default" or "xla_backend_optimization_level" in flags
            or _selects_slow(config.option.markexpr or "")):
        return
    # before any test touches a device: XLA reads XLA_FLAGS once, when the backend starts
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        warnings.warn(f"the XLA backend started before conftest could set {_OPT_FLAG}; the suite "
                      "compiles at the default level (slower, same results)", stacklevel=1)
    os.environ["XLA_FLAGS"] = (flags + " " + _OPT_FLAG).strip()
