"""`qsm sweep`: hyperparameter sweeps with Optuna, from one laptop process to a cluster of workers.

    qsm sweep --env qsm/MemoryCutoff-v0 --agent ppo --n-trials 50                 # sqlite, one process
    qsm sweep --env qsm/MemoryCutoff-v0 --agent ppo --n-trials 50 \\
              --storage journal:/shared/sweeps/mc.journal --study mc-ppo         # run N times: N workers

Every worker runs the same command against one Optuna storage; together they finish
``--n-trials`` trials. Storage forms (``--storage``):

- omitted: ``sqlite:///<out>/sweep.db`` (one process; SQLite locking is not for many writers);
- ``journal:PATH`` or a path ending ``.journal`` / ``.log``: Optuna's ``JournalStorage`` on a file
  (file locks; works on a shared filesystem such as NFS or Lustre);
- an SQLAlchemy URL: ``sqlite:///PATH``, ``postgresql+psycopg2://user:pass@host:5432/db``
  (needs ``pip install psycopg2-binary``), ``mysql+pymysql://...``. The connection is checked up
  front with a short timeout.

Each trial samples the traced hyperparameters of the agent (``ppo.default_hyper`` /
``cem.default_hyper`` keys) and trains ``--seeds`` seeds vmapped in ONE jitted program
(``jax.vmap(train_and_evaluate, in_axes=(0, 0, None))``; the hyperparameters are traced, so one
compilation per rung serves every trial of a worker). The objective is the IQM over seeds of the
baseline-normalised score ``(R - naive) / (limit - naive)`` of the final policy on evaluation keys
that training never sees (as ``experiments.results``); every trial uses the same training seeds
(common random numbers).

Pruning (``--pruner sha``, the default) is successive halving over *rungs of real training
budget*: rung k trains from scratch with ``resource / eta**(K-1-k)`` updates (PPO) or iterations
(CEM) and reports its score at step = env steps per seed; a trial that is not in the top 1/eta of
its rung stops there and is never trained at the larger budgets. (The agents' train functions
cannot resume, so a rung retrains from scratch: at most 1/(eta-1) extra compute for a trial that
survives, against the larger budgets skipped for every pruned one. Reporting the points of one
learning curve after the full run would prune nothing real.) ``--pruner none`` trains the full
budget once.

Trial accounting (exactly ``--n-trials`` trials end COMPLETE or PRUNED, across all workers):
every trial that is not FAIL holds a slot; a worker takes a new trial only while slots are free
(or a retry is WAITING), and after ``ask`` checks its trial's rank among the slot holders by trial
number (the storage orders trials), so racing workers never overshoot: a trial ranked past the
cap is closed as FAIL with user attr ``qsm:fail_reason = "over budget"``. (Optuna's
``MaxTrialsCallback`` checks only after a trial ends, so N concurrent workers overshoot by up to
N - 1.) Workers whose slots are all taken wait for the running trials, so that a crash is still
retried while any worker lives.

Crashes: a worker's heartbeat thread stamps its running trial (trial system attr
``qsm:heartbeat``, wall-clock seconds) every ``--heartbeat`` seconds. Any worker that finds a
RUNNING trial silent for ``--grace`` seconds marks it FAIL and enqueues a copy of its parameters
as a WAITING trial (``optuna.storages.RetryHeartbeatStaleTrialCallback``, up to ``--max-retry``
times), which the next free worker runs. (Optuna 5.0's own heartbeat exists only for
``RDBStorage``; this one works with every storage. Worker clocks must agree to well within the
grace period, as NTP gives.) SIGINT/SIGTERM (e.g. SLURM preemption) close the running trial as
FAIL and enqueue its retry at once. Resuming: the same command reattaches to the study
(``load_if_exists``) and continues until ``--n-trials`` are done; a study created with another
env, agent, budget, seeds, search space or pruner is refused.

Outputs in ``--out`` (default ``sweeps/<study>``): ``best.json`` (best value and parameters, trial
counts by state) and one summary line on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np

AGENTS = ("ppo", "cem")
BUDGETS = ("tiny", "default", "full")
HEARTBEAT_ATTR = "qsm:heartbeat"
REASON_ATTR = "qsm:fail_reason"
WORKER_ATTR = "qsm:worker"
STUDY_ATTR = "qsm:config"

# Built-in search spaces: only traced hyperparameters (no recompilation between trials).
DEFAULT_SPACES: dict[str, dict[str, dict]] = {
    "ppo": {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
        "ent_coef": {"type": "float", "low": 0.0, "high": 0.05},
        "clip_eps": {"type": "float", "low": 0.1, "high": 0.3},
        "gae_lambda": {"type": "float", "low": 0.8, "high": 0.99},
    },
    "cem": {
        "smoothing": {"type": "float", "low": 0.1, "high": 0.9},
        "init_std": {"type": "float", "low": 0.05, "high": 1.0, "log": True},
        "min_std": {"type": "float", "low": 0.005, "high": 0.1, "log": True},
    },
}

# Budgets for an env without an ``experiments.results`` entry (same shape as those entries).
GENERIC_BUDGETS = {
    "ppo": {"tiny": {"config": dict(num_envs=4, num_steps=20, total_timesteps=160, num_minibatches=2),
                     "eval_episodes": 2},
            "default": {"config": dict(num_envs=16, num_steps=64, total_timesteps=100_000), "eval_episodes": 16},
            "full": {"config": dict(num_envs=32, num_steps=64, total_timesteps=1_000_000), "eval_episodes": 64}},
    "cem": {"tiny": {"config": dict(population=8, n_elite=2, iterations=2)},
            "default": {"config": dict(population=256, n_elite=25, iterations=60)},
            "full": {"config": dict(population=512, n_elite=50, iterations=300)}},
}


class SweepError(Exception):
    """Bad input or an unusable storage: reported as one line, exit code 2."""


class Interrupted(Exception):
    """SIGINT / SIGTERM arrived: close the running trial and stop."""


class _SignalDeferral:
    """While active, ``main``'s signal handler records SIGINT / SIGTERM instead of raising;
    leaving the block raises ``Interrupted`` for a recorded one. Used around ``study.ask()``:
    a signal landing inside it, after the storage had created the trial but before the worker
    held it, left that trial RUNNING for good (seen once in CI, 2026-11-24)."""

    def __init__(self):
        self.active = False
        self.pending: str | None = None

    def __enter__(self):
        self.active, self.pending = True, None
        return self

    def __exit__(self, *exc):
        self.active = False
        if self.pending is not None and exc[0] is None:
            name, self.pending = self.pending, None
            raise Interrupted(name)
        return False


SIGNALS_DEFERRED = _SignalDeferral()


# ----------------------------------------------------------------------------- search space
def parse_search_space(space: Any, agent: str) -> dict[str, dict]:
    """Validate a search space: ``{name: {"type": "float", "low", "high", "log"?} |
    {"type": "categorical", "choices": [numbers]}}`` with names among the agent's traced
    hyperparameters.

    Raises:
        SweepError: naming the offending entry and its value.
    """
    keys = _hyper_keys(agent)
    if not isinstance(space, dict) or not space:
        raise SweepError(f"search space must be a non-empty JSON object, got {space!r}")
    out = {}
    for name, spec in space.items():
        if name not in keys:
            raise SweepError(f"search space: unknown hyperparameter {name!r} for agent {agent}; "
                             f"choose from {sorted(keys)}")
        if not isinstance(spec, dict) or spec.get("type") not in ("float", "categorical"):
            raise SweepError(f"search space: {name} must be an object with type 'float' or "
                             f"'categorical', got {spec!r}")
        if spec["type"] == "float":
            extra = set(spec) - {"type", "low", "high", "log"}
            low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
            if (extra or not _is_number(low) or not _is_number(high) or not low < high
                    or not isinstance(log, bool) or (log and low <= 0)):
                raise SweepError(f"search space: {name} needs finite numbers low < high (low > 0 if "
                                 f"log) and a bool log, no other keys, got {spec!r}")
            out[name] = {"type": "float", "low": float(low), "high": float(high), "log": log}
        else:
            choices = spec.get("choices")
            if (set(spec) - {"type", "choices"} or not isinstance(choices, list) or not choices
                    or not all(_is_number(c) for c in choices)):
                raise SweepError(f"search space: {name} needs a non-empty list of numbers as "
                                 f"choices, got {spec!r}")
            out[name] = {"type": "categorical", "choices": [float(c) for c in choices]}
    return out


def load_search_space(path: str | None, agent: str) -> dict[str, dict]:
    """The agent's built-in space (``path`` None) or the JSON file at ``path``, validated."""
    if path is None:
        return parse_search_space(DEFAULT_SPACES[agent], agent)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SweepError(f"--search-space {path}: cannot read ({exc.strerror or exc})") from exc
    try:
        space = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SweepError(f"--search-space {path}: not valid JSON ({exc})") from exc
    return parse_search_space(space, agent)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _hyper_keys(agent: str) -> tuple[str, ...]:
    if agent == "ppo":
        from qsmgym.agents.ppo import HYPER_KEYS

        return HYPER_KEYS
    return ("smoothing", "init_std", "min_std")  # cem.default_hyper keys (checked in tests)


def suggest(trial, space: dict[str, dict]) -> dict[str, float]:
    """Sample one point of ``space`` through an Optuna trial."""
    out = {}
    for name, spec in space.items():
        if spec["type"] == "float":
            out[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec["log"])
        else:
            out[name] = float(trial.suggest_categorical(name, spec["choices"]))
    return out


# ---------------------------------------------------------------------------------- storage
def _redact(url: str) -> str:
    """``url`` with any password replaced by ***."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        return f"{scheme}://{creds}@{host}"
    return url


def open_storage(spec: str | None, out_dir: Path, *, timeout_s: float = 5.0):
    """The Optuna storage named by ``--storage`` and a printable description (no password).

    Raises:
        SweepError: an unknown form, a journal folder that does not exist, a missing database
            driver or a database that does not answer within ``timeout_s``.
    """
    import optuna

    if spec is None:
        out_dir.mkdir(parents=True, exist_ok=True)
        spec = f"sqlite:///{out_dir / 'sweep.db'}"
    if spec.startswith("journal:") or spec.endswith((".journal", ".log")):
        path = Path(spec[len("journal:"):] if spec.startswith("journal:") else spec)
        if not path.name:
            raise SweepError(f"--storage {spec}: journal needs a file path, e.g. journal:/shared/x.journal")
        if not path.parent.is_dir():
            raise SweepError(f"--storage {spec}: folder {path.parent} does not exist")
        if not os.access(path.parent, os.W_OK):
            raise SweepError(f"--storage {spec}: folder {path.parent} is not writable")
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend), f"journal:{path}"
    if "://" not in spec:
        raise SweepError(f"--storage {spec!r}: use journal:PATH, a path ending .journal/.log, or a "
                         "database URL (sqlite:///PATH, postgresql+psycopg2://user:pass@host/db)")
    engine_kwargs: dict = {}
    if spec.startswith("postgresql"):
        engine_kwargs = {"connect_args": {"connect_timeout": int(max(1, timeout_s))}}
    elif spec.startswith("mysql"):
        engine_kwargs = {"connect_args": {"connect_timeout": int(max(1, timeout_s))}}
    elif spec.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": float(timeout_s)}}
    # Workers started together on a fresh database (a cluster array, or a watcher opening it while
    # the first worker creates it) race to create Optuna's tables: the losers see "table ...
    # already exists" or a UNIQUE failure on alembic_version. The schema is complete once the
    # winner commits, so those two errors (and "database is locked") are retried until timeout_s.
    deadline = time.monotonic() + max(timeout_s, 1.0)
    delay = 0.05
    while True:
        try:
            storage = optuna.storages.RDBStorage(spec, engine_kwargs=engine_kwargs)
            break
        except (ImportError, ModuleNotFoundError) as exc:
            raise SweepError(f"--storage {_redact(spec)}: database driver missing ({exc}); for "
                             "PostgreSQL: pip install psycopg2-binary") from exc
        except Exception as exc:  # sqlalchemy's OperationalError, IntegrityError, ArgumentError, ...
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            if _schema_race(exc, reason) and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(2 * delay, 0.5)
                continue
            raise SweepError(f"--storage {_redact(spec)}: cannot open ({type(exc).__name__}: {reason})") from exc
    return storage, _redact(spec)


def _schema_race(exc: BaseException, reason: str) -> bool:
    """Whether opening failed because another process was creating the same database."""
    name = type(exc).__name__
    low = reason.lower()
    if name == "IntegrityError":
        return "alembic_version" in low or "unique" in low
    if name == "OperationalError":
        return "already exists" in low or "database is locked" in low
    return False


# --------------------------------------------------------------------------------- training
@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything a trial needs that does not change between trials."""

    env_id: str
    task_kwargs: dict
    agent: str
    budget: str
    settings: dict  # {"config": static config kwargs, "hyper": base hyper, "eval_episodes"}
    seeds: tuple
    rungs: tuple  # resource (PPO updates / CEM iterations) per rung, increasing
    steps: tuple  # env steps per seed per rung (the pruner's step)


def _budget_settings(env_id: str, agent: str, budget: str) -> tuple[dict, dict]:
    """(task kwargs, settings): the task as in the first ``experiments.results`` entry for the
    env (any agent); the budget of its entry for this agent, else the generic budgets."""
    from qsmgym.experiments.results import ENTRIES

    rows = [e for e in ENTRIES if e.task_id == env_id and e.runner is not None]
    task_kwargs = dict(rows[0].task_kwargs) if rows else {}
    for e in rows:
        if e.agent.lower() == agent and e.task_kwargs == task_kwargs and budget in e.budgets:
            return task_kwargs, json.loads(json.dumps(e.budgets[budget]))
    return task_kwargs, json.loads(json.dumps(GENERIC_BUDGETS[agent][budget]))


def parse_overrides(items: list[str]) -> dict:
    """``["iterations=9", "hidden_sizes=[32, 32]"]`` -> dict; values are JSON (never eval).

    Raises:
        SweepError: an item without ``=`` or with a value that is not JSON.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SweepError(f"--set {item!r}: expected KEY=VALUE, e.g. --set iterations=9")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SweepError(f"--set {item!r}: VALUE must be JSON (e.g. 9, 0.5, true, [64, 64])") from exc
    return out


def make_setup(env_id: str, agent: str, budget: str, n_seeds: int, overrides: dict,
               n_rungs: int, eta: int, task=None) -> Setup:
    """Resolve budgets and rungs; validates the static config by building it.

    Raises:
        SweepError: an unknown config key, a config value the agent refuses, or rungs that
            would not grow (too small a budget for ``n_rungs`` and ``eta``).
    """
    from qsmgym.agents import cem, ppo

    task_kwargs, settings = _budget_settings(env_id, agent, budget)
    config_cls = ppo.PPOConfig if agent == "ppo" else cem.CEMConfig
    fields = {f.name for f in dataclasses.fields(config_cls)} - {"n_steps"}
    unknown = sorted(set(overrides) - fields - {"eval_episodes"})
    if unknown:
        raise SweepError(f"--set: unknown {agent} config key(s) {unknown}; choose from {sorted(fields)} "
                         "or eval_episodes")
    if "eval_episodes" in overrides:
        n_eval = overrides["eval_episodes"]
        if isinstance(n_eval, bool) or not isinstance(n_eval, int) or n_eval < 1:
            raise SweepError(f"--set eval_episodes must be a positive int, got {n_eval!r}")
        settings["eval_episodes"] = n_eval
    settings["config"].update({k: v for k, v in overrides.items() if k != "eval_episodes"})
    settings.setdefault("hyper", {})
    settings.setdefault("eval_episodes", 16 if agent == "ppo" else 1)
    config = _config(agent, settings["config"], task)
    if agent == "ppo":
        resource, per_unit = config.num_updates, config.num_envs * config.num_steps
    else:
        resource, per_unit = config.iterations, config.population * (config.n_steps or 1)
    rungs = tuple(resource // eta ** (n_rungs - 1 - k) for k in range(n_rungs))
    if rungs[0] < 1 or len(set(rungs)) != len(rungs):
        what = "updates" if agent == "ppo" else "iterations"
        raise SweepError(f"--rungs {n_rungs} with --eta {eta} needs at least {eta ** (n_rungs - 1)} "
                         f"{what} at the top rung, budget {budget!r} gives {resource}; raise it with "
                         f"--set, or use fewer rungs")
    return Setup(env_id, task_kwargs, agent, budget, settings, tuple(range(n_seeds)), rungs,
                 tuple(r * per_unit for r in rungs))


def _config(agent: str, kwargs: dict, task=None, resource: int | None = None):
    from qsmgym.agents import cem, ppo

    kwargs = dict(kwargs)
    try:
        if agent == "ppo":
            if resource is not None:
                kwargs["total_timesteps"] = resource * kwargs["num_envs"] * kwargs["num_steps"]
            if "hidden_sizes" in kwargs and isinstance(kwargs["hidden_sizes"], list):
                kwargs["hidden_sizes"] = tuple(kwargs["hidden_sizes"])
            return ppo.PPOConfig(**kwargs)
        if resource is not None:
            kwargs["iterations"] = resource
        n_steps = int(task.horizon) if task is not None else 1
        return cem.CEMConfig(n_steps=n_steps, **kwargs)
    except (TypeError, ValueError) as exc:
        raise SweepError(f"--set / budget: {exc}") from exc


class TrialRunner:
    """Builds the task once and one jitted ``(train keys, eval keys, hyper) -> (n_seeds,)
    returns`` program per rung (compiled on first use, reused by every later trial)."""

    def __init__(self, setup: Setup):
        from qsmgym.envs.registry import make_task
        from qsmgym.experiments.results import _eval_keys, _keys

        self.setup = setup
        self.task = make_task(setup.env_id, **setup.task_kwargs)
        self.params = self.task.default_params()
        refs = self.task.references(self.params)
        self.limit, self.naive = float(refs["physical_limit"]), float(refs["naive_baseline"])
        if not self.limit > self.naive:
            raise SweepError(f"{setup.env_id}: physical_limit {self.limit} must exceed naive_baseline "
                             f"{self.naive} to normalise scores")
        self.keys, self.eval_keys = _keys(setup.seeds), _eval_keys(setup.seeds)
        self._programs: dict[int, Any] = {}

    def _program(self, resource: int):
        import jax

        from qsmgym.agents import cem, ppo
        from qsmgym.agents.rollout import open_loop_return

        if resource in self._programs:
            return self._programs[resource]
        agent, task, params, s = self.setup.agent, self.task, self.params, self.setup.settings
        config = _config(agent, s["config"], task, resource)
        n_eval = int(s["eval_episodes"])
        if agent == "ppo":
            train = ppo.make_train(config, task, params)

            def one(key, eval_key, hyper):
                res = train(key, hyper)
                return ppo.evaluate(task, params, res.params, config, eval_key, n_eval,
                                    obs_rms=res.obs_rms).mean()
        else:
            train = cem.make_train(config, task, params)
            cache = task.precompute(params)

            def one(key, eval_key, hyper):
                actions = train(key, hyper).best_actions
                keys = jax.random.split(eval_key, n_eval)
                return jax.vmap(lambda k: open_loop_return(task, params, cache, k, actions)[0])(keys).mean()

        self._programs[resource] = jax.jit(jax.vmap(one, in_axes=(0, 0, None)))
        return self._programs[resource]

    def hyper(self, sampled: dict) -> dict:
        """Agent defaults, then the budget's fixed values, then the sampled ones (float64 arrays,
        the same pytree every trial, so the jit cache hits)."""
        import jax.numpy as jnp

        from qsmgym.agents import cem, ppo

        base = (ppo if self.setup.agent == "ppo" else cem).default_hyper()
        merged = {**{k: float(v) for k, v in base.items()}, **self.setup.settings["hyper"], **sampled}
        return {k: jnp.asarray(float(v), jnp.float64) for k, v in merged.items()}

    def run(self, rung: int, sampled: dict) -> np.ndarray:
        """(n_seeds,) baseline-normalised scores of one rung."""
        import jax

        fn = self._program(self.setup.rungs[rung])
        returns = np.asarray(jax.block_until_ready(fn(self.keys, self.eval_keys, self.hyper(sampled))),
                             np.float64)
        return (returns - self.naive) / (self.limit - self.naive)


# ------------------------------------------------------------------------------- heartbeats
class Heartbeat:
    """Stamps ``HEARTBEAT_ATTR`` on a running trial every ``interval`` seconds (context manager)."""

    def __init__(self, storage, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while True:
            try:
                self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT_ATTR, time.time())
            except Exception:  # the trial finished under us (or the storage hiccuped): stop quietly
                return
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT_ATTR, time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def reap_stale(study, grace: float, max_retry: int, log) -> list[int]:
    """Mark RUNNING trials whose heartbeat is older than ``grace`` seconds FAIL and enqueue a
    retry of each (WAITING, same parameters). Returns the numbers of the trials failed here
    (another worker may have won the race for some; those are skipped)."""
    import optuna
    from optuna.trial import TrialState

    now, failed = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = t.system_attrs.get(HEARTBEAT_ATTR)
        if last is None and t.datetime_start is not None:
            last = t.datetime_start.timestamp()
        if last is None or now - float(last) <= grace:
            continue
        storage = study._storage
        try:
            storage.set_trial_user_attr(t._trial_id, REASON_ATTR, f"heartbeat silent for {now - last:.0f} s")
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished, or another worker failed it first
        failed.append(t.number)
        _retry(study, storage.get_trial(t._trial_id), max_retry, log)
        log(f"trial {t.number} FAIL: heartbeat silent for {now - last:.0f} s (worker died?)")
    return failed


def _retry(study, frozen, max_retry: int, log) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        before = len(study.get_trials(deepcopy=False))
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, frozen)
        if len(study.get_trials(deepcopy=False)) == before:
            log(f"trial {frozen.number}: not retried (max_retry={max_retry} reached)")


# ------------------------------------------------------------------------------ worker loop
def counts(study) -> dict[str, int]:
    """Trials per state name."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _slot_rank(study, number: int) -> int:
    """How many slot holders (trials not FAIL) have a smaller number than trial ``number``."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state != TrialState.FAIL and t.number < number)


def run_trial(study, trial, runner: TrialRunner, space: dict, heartbeat: float, log) -> None:
    """Train the rungs of one trial under a heartbeat, report each, tell the result."""
    from optuna.trial import TrialState

    from qsmgym.experiments.stats import iqm

    sampled = suggest(trial, space)
    retried = study._storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")
    start = time.perf_counter()
    state, value, note = TrialState.COMPLETE, None, ""
    with Heartbeat(study._storage, trial._trial_id, heartbeat):
        trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
        for k, step in enumerate(runner.setup.steps):
            scores = runner.run(k, sampled)
            if not np.all(np.isfinite(scores)):
                trial.set_user_attr(REASON_ATTR, f"non-finite scores at rung {k}: {scores.tolist()}")
                state, note = TrialState.FAIL, f": non-finite scores {scores.tolist()}"
                break
            value = float(iqm(scores))
            trial.set_user_attr(f"scores_rung{k}", scores.tolist())
            trial.report(value, step)
            if k < len(runner.setup.steps) - 1 and trial.should_prune():
                state, note = TrialState.PRUNED, f" at rung {k} ({step} env steps/seed)"
                break
    # told after the heartbeat stopped, so no stamp lands on a finished trial
    told = study.tell(trial, value if state == TrialState.COMPLETE else None, state=state,
                      skip_if_finished=True)
    if told.state != state:
        log(f"trial {trial.number} was failed by another worker while running; its retry is queued")
        return
    if retried is not None:
        note += f" (retry of trial {retried})"
    shown = "" if value is None else f" value {value:.4f}"
    log(f"trial {trial.number} {state.name}{shown}{note} ({time.perf_counter() - start:.1f} s) {sampled}")


def work(study, runner: TrialRunner, space: dict, n_trials: int, *, heartbeat: float, grace: float,
         max_retry: int, timeout: float | None, poll: float, log) -> str:
    """The worker loop: take free slots until ``n_trials`` trials are COMPLETE or PRUNED.

    Returns "finished", "timeout" or "failures" (too many trials failed by the objective).
    """
    import optuna
    from optuna.trial import TrialState

    start = time.monotonic()
    while True:
        reap_stale(study, grace, max_retry, log)
        c = counts(study)
        done = c.get("COMPLETE", 0) + c.get("PRUNED", 0)
        if done >= n_trials:
            return "finished"
        if timeout is not None and time.monotonic() - start > timeout:
            return "timeout"
        if c.get("FAIL", 0) > 2 * n_trials + 10:
            return "failures"
        holders = sum(v for k, v in c.items() if k != "FAIL")
        if holders >= n_trials and c.get("WAITING", 0) == 0:
            time.sleep(poll)  # every slot is running elsewhere: stay to retry crashes
            continue
        trial = None
        try:
            # a signal is held until the new trial is this worker's (then raised, and closed below)
            with SIGNALS_DEFERRED:
                trial = study.ask()
                over = _slot_rank(study, trial.number) >= n_trials  # lost a race for the last slot
                if over:
                    trial.set_user_attr(REASON_ATTR, "over budget")
                    study.tell(trial, state=TrialState.FAIL)
            if over:
                log(f"trial {trial.number} FAIL: over budget (another worker took the last slot)")
                continue
            run_trial(study, trial, runner, space, heartbeat, log)
        except optuna.exceptions.UpdateFinishedTrialError:
            # another worker failed this trial while it ran (heartbeat late, e.g. a stalled
            # node); its retry is queued, so this worker just goes on
            log(f"trial {trial.number} was failed by another worker while running; its retry is queued")
        except (Interrupted, KeyboardInterrupt):
            if trial is not None:
                _close_interrupted(study, trial, max_retry, log)
            raise


def _close_interrupted(study, trial, max_retry: int, log) -> None:
    import optuna
    from optuna.trial import TrialState

    try:
        study._storage.set_trial_user_attr(trial._trial_id, REASON_ATTR, "interrupted")
        study.tell(trial, state=TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError, KeyError):
        return  # it had ended (or was reaped) already
    _retry(study, study._storage.get_trial(trial._trial_id), max_retry, log)
    log(f"trial {trial.number} FAIL: interrupted; a retry is queued")


# ----------------------------------------------------------------------------------- study
def study_config(args, setup: Setup, space: dict) -> dict:
    """What must agree for two commands to share a study."""
    return {"env": setup.env_id, "agent": setup.agent, "budget": setup.budget,
            "settings": setup.settings, "seeds": list(setup.seeds), "rungs": list(setup.rungs),
            "search_space": space, "pruner": args.pruner, "eta": args.eta}


def open_study(storage, name: str, config: dict, pruner: str, steps: tuple, eta: int, sampler_seed):
    """Create or reattach to study ``name`` and check it was made by the same sweep."""
    import optuna

    if pruner == "sha":
        pruner_obj = optuna.pruners.SuccessiveHalvingPruner(min_resource=int(steps[0]), reduction_factor=eta)
    else:
        pruner_obj = optuna.pruners.NopPruner()
    # constant_liar: running trials count as bad guesses, so parallel workers spread out
    sampler = optuna.samplers.TPESampler(seed=sampler_seed, constant_liar=True)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                load_if_exists=True, sampler=sampler, pruner=pruner_obj)
    stored = study.user_attrs.get(STUDY_ATTR)
    canonical = json.loads(json.dumps(config))
    if stored is None:
        study.set_user_attr(STUDY_ATTR, canonical)
        stored = optuna.load_study(study_name=name, storage=storage).user_attrs[STUDY_ATTR]
    if stored != canonical:
        diff = sorted(k for k in set(stored) | set(canonical) if stored.get(k) != canonical.get(k))
        raise SweepError(f"study {name!r} exists with different settings ({', '.join(diff)}); "
                         "use another --study or the original command")
    return study


def write_best(study, out_dir: Path, storage_desc: str, n_trials: int, status: str) -> dict:
    """best.json in ``out_dir`` (written atomically; workers may race) and the summary dict."""
    c = counts(study)
    summary = {"study": study.study_name, "storage": storage_desc, "status": status,
               "n_trials": n_trials, "states": c, "config": study.user_attrs.get(STUDY_ATTR)}
    try:
        best = study.best_trial
        summary.update(best_trial=best.number, best_value=best.value, best_params=best.params)
    except ValueError:
        summary.update(best_trial=None, best_value=None, best_params=None)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".best.{os.getpid()}.json"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out_dir / "best.json")
    return summary


# ------------------------------------------------------------------------------------ CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage + error otherwise)
        raise SweepError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="qsm sweep", description="Optuna hyperparameter sweep (see docs/sweeps.md).")
    p.add_argument("--env", required=True, help="task id, e.g. qsm/MemoryCutoff-v0")
    p.add_argument("--agent", required=True, help="ppo or cem")
    p.add_argument("--budget", default="default", help="tiny (tests), default or full")
    p.add_argument("--seeds", type=int, default=5, help="seeds per trial, vmapped in one jit")
    p.add_argument("--n-trials", type=int, required=True, help="COMPLETE+PRUNED trials, all workers together")
    p.add_argument("--storage", default=None, help="journal:PATH, *.journal, sqlite:///PATH, postgresql+psycopg2://...")
    p.add_argument("--study", default=None, help="study name (default: <agent>-<env name>)")
    p.add_argument("--out", default=None, help="folder for sweep.db / best.json (default sweeps/<study>)")
    p.add_argument("--search-space", default=None, help="JSON file (default: built-in per agent)")
    p.add_argument("--pruner", default="sha", help="sha (successive halving over budget rungs) or none")
    p.add_argument("--rungs", type=int, default=3, help="budget rungs for sha (1 with --pruner none)")
    p.add_argument("--eta", type=int, default=3, help="successive-halving reduction factor")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="static agent config override, e.g. --set iterations=27 (repeatable)")
    p.add_argument("--timeout", type=float, default=None, help="seconds after which no new trial starts")
    p.add_argument("--heartbeat", type=float, default=30.0, help="heartbeat interval, seconds")
    p.add_argument("--grace", type=float, default=120.0, help="silence after which a RUNNING trial is failed")
    p.add_argument("--max-retry", type=int, default=3, help="retries of a crashed trial")
    p.add_argument("--sampler-seed", type=int, default=None, help="TPE seed (reproducible single worker)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _check_args(args) -> None:
    if args.agent not in AGENTS:
        raise SweepError(f"--agent must be one of {list(AGENTS)}, got {args.agent!r}")
    if args.budget not in BUDGETS:
        raise SweepError(f"--budget must be one of {list(BUDGETS)}, got {args.budget!r}")
    if args.pruner not in ("sha", "none"):
        raise SweepError(f"--pruner must be sha or none, got {args.pruner!r}")
    for name in ("seeds", "n_trials", "rungs"):
        if getattr(args, name) < 1:
            raise SweepError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.eta < 2:
        raise SweepError(f"--eta must be >= 2, got {args.eta}")
    if args.max_retry < 0:
        raise SweepError(f"--max-retry must be >= 0, got {args.max_retry}")
    for name in ("timeout", "heartbeat", "grace"):
        v = getattr(args, name)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise SweepError(f"--{name} must be a positive number of seconds, got {v}")
    if args.grace <= 2 * args.heartbeat:
        raise SweepError(f"--grace must exceed 2 x --heartbeat, got grace={args.grace}, heartbeat={args.heartbeat}")


def run_sweep(args, log) -> tuple[int, dict]:
    """The body of ``main`` (raises SweepError on bad input)."""
    _check_args(args)
    from qsmgym.envs.registry import TASKS

    if args.env not in TASKS:
        raise SweepError(f"--env must be a registered id, one of {sorted(TASKS)}, got {args.env!r}")
    space = load_search_space(args.search_space, args.agent)
    overrides = parse_overrides(args.set)
    n_rungs = args.rungs if args.pruner == "sha" else 1
    study_name = args.study or f"{args.agent}-{args.env.split('/')[-1]}"
    out_dir = Path(args.out or Path("sweeps") / study_name.replace("/", "_"))
    storage, storage_desc = open_storage(args.storage, out_dir)  # fail fast, before JAX work

    import jax

    jax.config.update("jax_enable_x64", True)  # the physics needs complex128
    from qsmgym.envs.registry import make_task

    task_kwargs, _ = _budget_settings(args.env, args.agent, args.budget)
    try:
        task = make_task(args.env, **task_kwargs)
    except (TypeError, ValueError) as exc:
        raise SweepError(f"--env {args.env}: {exc}") from exc
    setup = make_setup(args.env, args.agent, args.budget, args.seeds, overrides, n_rungs, args.eta, task)
    study = open_study(storage, study_name, study_config(args, setup, space), args.pruner,
                       setup.steps, args.eta, args.sampler_seed)
    log(f"study {study_name!r} on {storage_desc}: {args.env} / {args.agent} budget {args.budget}, "
        f"{args.seeds} seeds, rungs {list(setup.rungs)}, state {counts(study)}")
    runner = TrialRunner(setup)
    status = work(study, runner, space, args.n_trials, heartbeat=args.heartbeat, grace=args.grace,
                  max_retry=args.max_retry, timeout=args.timeout, poll=min(args.heartbeat, 2.0), log=log)
    summary = write_best(study, out_dir, storage_desc, args.n_trials, status)
    return (0 if status != "failures" else 1), summary


def _summary_line(s: dict) -> str:
    done = s["states"].get("COMPLETE", 0) + s["states"].get("PRUNED", 0)
    states = ", ".join(f"{k} {v}" for k, v in sorted(s["states"].items()))
    best = ("no completed trial" if s["best_trial"] is None else
            f"best IQM baseline-normalised score {s['best_value']:.4f} (trial {s['best_trial']}) "
            f"params {s['best_params']}")
    return f"sweep {s['study']}: {s['status']}, {done}/{s['n_trials']} trials done ({states}); {best}"


def main(argv=None) -> int:
    """``qsm sweep ...``. Exit codes: 0 done (or timeout), 1 too many failed trials or an
    internal error, 2 bad input or storage, 130 interrupted (rerun the same command to resume)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def log(msg: str) -> None:
        print(f"[{worker}] {msg}", flush=True)

    def on_signal(signum, frame):
        if SIGNALS_DEFERRED.active:
            SIGNALS_DEFERRED.pending = signal.Signals(signum).name
            return
        raise Interrupted(signal.Signals(signum).name)

    # explicit handlers: a worker started in the background may inherit SIGINT ignored
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        args = build_parser().parse_args(argv)
        code, summary = run_sweep(args, log)
        out = Path(args.out or Path("sweeps") / summary["study"].replace("/", "_"))
        print(_summary_line(summary) + f"; wrote {out / 'best.json'}", flush=True)
        return code
    except SweepError as exc:
        if debug:
            traceback.print_exc()
        print(f"qsm sweep: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except (Interrupted, KeyboardInterrupt) as exc:
        if debug:
            traceback.print_exc()
        print(f"qsm sweep: interrupted ({exc or 'SIGINT'}); rerun the same command to resume",
              file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # a bug, or the storage failing mid-sweep
        if debug:
            traceback.print_exc()
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"qsm sweep: {type(exc).__name__}: {line} (rerun with --debug for the traceback)",
              file=sys.stderr, flush=True)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(main())
