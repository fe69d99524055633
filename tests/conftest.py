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
- One persistent JAX compilation cache for the whole run: a temporary folder, made by the
  first pytest process (the xdist controller, or the only process) and removed when it ends,
  passed to the xdist workers and to the subprocesses that tests start (``qsm`` runs, sweep
  workers, fresh-interpreter imports) through ``JAX_COMPILATION_CACHE_DIR``. A program that one
  process compiled is then loaded, not compiled, by the next process that needs it. Same
  results: the cache returns the executable XLA built for that program, flags and options
  (all in JAX's cache key). It also serves a process's own re-created jits (a new closure of
  the same program misses JAX's in-memory cache). Programs that took 0.2 s or more to compile
  are written (JAX's default is 1 s; most of the suite's ~5000 compilations are shorter).
  Session 23, fresh clone, 2 cores, runs back to back: 1151.5 s without the cache, 1070.6 s
  with it at JAX's 1 s threshold, 967.3 s at 0.2 s (145 programs loaded from the cache). A
  cache folder already in the environment (the user's own) is used as it is, and so is a
  threshold set there; ``QSM_TEST_JAX_CACHE=off`` turns this off.
"""

import os
import shutil
import tempfile
import warnings

import jax

jax.config.update("jax_enable_x64", True)

_OPT_FLAG = "--xla_backend_optimization_level=0"
_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_MIN_TIME_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
_made_cache_dir: str | None = None  # set in the process that made the run's cache folder


def _selects_slow(markexpr: str) -> bool:
    expr = " ".join(markexpr.split())
    return "slow" in expr and "not slow" not in expr


def _use_one_compilation_cache() -> None:
    global _made_cache_dir
    if os.environ.get("QSM_TEST_JAX_CACHE", "") == "off":
        return
    path = os.environ.get(_CACHE_ENV)
    if not path:  # first process of the run: xdist starts its workers after this, with this environment
        path = _made_cache_dir = tempfile.mkdtemp(prefix="qsm-test-jax-cache-")
        os.environ[_CACHE_ENV] = path
    # programs that took 0.2 s or more to compile are written (JAX's default: 1 s); a value the
    # user set is kept
    os.environ.setdefault(_MIN_TIME_ENV, "0.2")
    # jax read the variables when it was imported, before this: tell it now (nothing compiled yet)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(os.environ[_MIN_TIME_ENV]))


def pytest_unconfigure(config):
    if _made_cache_dir is not None:
        shutil.rmtree(_made_cache_dir, ignore_errors=True)


def pytest_configure(config):
    _use_one_compilation_cache()
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
