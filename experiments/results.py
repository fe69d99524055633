"""Results table: every (task, agent) over seeds, normalised to the task's physical limit.

    python -m qsmgym.experiments.results --out results_out              # default table, 5 seeds
    python -m qsmgym.experiments.results --out results_out --seeds 10 --tasks kicked-top
    python -m qsmgym.experiments.results --out results_out --full       # larger budgets

For each entry (task, agent) of ``ENTRIES`` the agent trains once per seed, the seeds vmapped
in one jitted program (``jax.vmap(train, in_axes=(0, None))``); the final policy is evaluated
on evaluation keys that training never saw (PPO: ``ppo.evaluate``, deterministic policy; CEM
and GRAPE: the open-loop return of the best sequence). Each final return R becomes

    score = R / physical_limit,    baseline-normalised = (R - naive_baseline) / (physical_limit - naive_baseline)

with the task's ``references(params)`` (both in units of the episode return), summarised by
the interquartile mean with a 95% stratified-bootstrap CI over seeds (``experiments.stats``).
Reference rows (e.g. MemoryCutoff's exact best fixed cut-off) are read from the references.

Writes ``results.json`` (every number, the per-seed returns and the curves), ``results.md``
(the table, with the hardware line and the command) and ``learning_curves.png`` (one panel per
task: mean normalised score over seeds with a min/max band against env steps).

Env steps count transitions of the functional core per seed during training: PPO's rollouts;
CEM's population rollouts; GRAPE's forward rollouts (each also pays a backward pass). Wall
time is per entry for all seeds together, compilation included (also reported alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from qsmgym.experiments.runs import git_commit
from qsmgym.experiments.stats import iqm, stratified_bootstrap_ci

EVAL_SEED_OFFSET = 1_000_003  # evaluation keys: PRNGKey(EVAL_SEED_OFFSET + seed), never used in training
BUDGETS = ("tiny", "default", "full")
COMMAND = "python -m qsmgym.experiments.results --out results_out --seeds 5"


# ------------------------------------------------------------------------------- records
@dataclasses.dataclass
class RunRecord:
    """What an agent runner returns for one entry over all its seeds.

    final_returns: (n_seeds,) evaluated return of each seed's final policy.
    curve_steps: (n_points,) env steps per seed at each curve point.
    curve_returns: (n_seeds, n_points) training return at those points (NaN where none).
    env_steps: training env steps per seed. compile_s, train_s, eval_s: seconds.
    curve_label: what the curve shows.
    """

    final_returns: np.ndarray
    curve_steps: np.ndarray
    curve_returns: np.ndarray
    env_steps: int
    compile_s: float
    train_s: float
    eval_s: float
    curve_label: str
    settings: dict
    # the trained policies, for callers that save them (``qsm train``): PPO: params, obs_rms,
    # config (leading seed axis on arrays); open-loop agents: actions (n_seeds, n_steps, ...)
    artifacts: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the table: a task (id + constructor kwargs) and an agent.

    Attributes:
        task: short task key (``--tasks``), e.g. "kicked-top".
        label: task label in the table.
        task_id, task_kwargs: ``make_task(task_id, **task_kwargs)``.
        agent: agent name in the table.
        runner: ``runner(task, params, seeds, settings) -> RunRecord``; None for a reference row.
        budgets: budget name ("tiny", "default", "full") -> settings passed to the runner.
        reference_key: for a reference row, the key of ``references(params)`` holding its return.
    """

    task: str
    label: str
    task_id: str
    task_kwargs: dict
    agent: str
    runner: Callable | None = None
    budgets: dict = dataclasses.field(default_factory=dict)
    reference_key: str | None = None


# ------------------------------------------------------------------------------- runners
def _keys(seeds):
    import jax
    import jax.numpy as jnp

    return jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])


def _eval_keys(seeds):
    return _keys([EVAL_SEED_OFFSET + int(s) for s in seeds])


def _compile_and_run(fn, *args):
    """(result as numpy, compile seconds, run seconds) of jax.jit(fn)(*args)."""
    import jax

    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    run_s = time.perf_counter() - start
    return jax.tree_util.tree_map(np.asarray, out), compile_s, run_s


def _hyper(defaults: dict, overrides: dict) -> dict:
    import jax.numpy as jnp

    return dict(defaults, **{k: jnp.asarray(v) for k, v in overrides.items()})


def run_ppo(task, params, seeds, settings: dict) -> RunRecord:
    """PPO (``agents.ppo``), seeds vmapped; final score: ``ppo.evaluate`` (deterministic policy)
    over ``settings["eval_episodes"]`` episodes on evaluation keys.

    settings: ``config`` (PPOConfig kwargs), ``hyper`` (overrides of ``ppo.default_hyper``),
    ``eval_episodes``.
    """
    import jax

    from qsmgym.agents import ppo

    config = ppo.PPOConfig(**settings["config"])
    hyper = _hyper(ppo.default_hyper(), settings.get("hyper", {}))
    train = jax.vmap(ppo.make_train(config, task, params), in_axes=(0, None))
    result, compile_s, train_s = _compile_and_run(train, _keys(seeds), hyper)
    n_eval = int(settings.get("eval_episodes", 16))

    def evaluate(net_params, obs_rms, key):
        return ppo.evaluate(task, params, net_params, config, key, n_eval, obs_rms=obs_rms)

    start = time.perf_counter()
    returns = jax.jit(jax.vmap(evaluate))(result.params, result.obs_rms, _eval_keys(seeds))
    returns = np.asarray(jax.block_until_ready(returns), np.float64)
    eval_s = time.perf_counter() - start
    batch = config.num_envs * config.num_steps
    return RunRecord(
        final_returns=returns.mean(axis=1),
        curve_steps=batch * np.arange(1, config.num_updates + 1),
        curve_returns=np.asarray(result.metrics["episode_return"], np.float64),
        env_steps=config.num_updates * batch,
        compile_s=compile_s, train_s=train_s, eval_s=eval_s,
        curve_label="mean return of training episodes (stochastic policy)",
        settings={"config": dataclasses.asdict(config), "hyper": settings.get("hyper", {}),
                  "eval_episodes": n_eval},
        artifacts={"params": result.params, "obs_rms": result.obs_rms, "config": config},
    )


def _open_loop_eval(task, params, actions, seeds, n_episodes: int):
    """(n_seeds,) mean open-loop return of each seed's (n_steps, ...) sequence on eval keys."""
    import jax

    from qsmgym.agents.rollout import open_loop_return

    cache = task.precompute(params)

    def one(actions, key):
        keys = jax.random.split(key, n_episodes)
        return jax.vmap(lambda k: open_loop_return(task, params, cache, k, actions)[0])(keys).mean()

    start = time.perf_counter()
    out = jax.block_until_ready(jax.jit(jax.vmap(one))(actions, _eval_keys(seeds)))
    return np.asarray(out, np.float64), time.perf_counter() - start


def _run_open_loop(agent, config, task, params, seeds, settings: dict, *, best_actions: str,
                   curve: str, per_iter: int, curve_label: str) -> RunRecord:
    """Shared body of the open-loop agents (CEM, GRAPE): train all seeds in one vmapped jit,
    score the best sequence on evaluation keys. ``best_actions`` and ``curve`` name the
    result fields; ``per_iter`` is the env steps per iteration and seed."""
    import jax

    hyper = _hyper(agent.default_hyper(), settings.get("hyper", {}))
    train = jax.vmap(agent.make_train(config, task, params), in_axes=(0, None))
    result, compile_s, train_s = _compile_and_run(train, _keys(seeds), hyper)
    n_eval = int(settings.get("eval_episodes", 1))
    returns, eval_s = _open_loop_eval(task, params, getattr(result, best_actions), seeds, n_eval)
    return RunRecord(
        final_returns=returns,
        curve_steps=per_iter * np.arange(1, config.iterations + 1),
        curve_returns=np.asarray(getattr(result, curve), np.float64),
        env_steps=config.iterations * per_iter,
        compile_s=compile_s, train_s=train_s, eval_s=eval_s,
        curve_label=curve_label,
        settings={"config": dataclasses.asdict(config), "hyper": settings.get("hyper", {}),
                  "eval_episodes": n_eval},
        artifacts={"actions": np.asarray(getattr(result, best_actions))},
    )


def run_cem(task, params, seeds, settings: dict) -> RunRecord:
    """CEM over open-loop sequences (``agents.cem``), seeds vmapped; final score: the open-loop
    return of the best sequence on evaluation keys.

    settings: ``config`` (CEMConfig kwargs except n_steps = task.horizon), ``hyper``
    (overrides of ``cem.default_hyper``), ``eval_episodes``.
    """
    from qsmgym.agents import cem

    config = cem.CEMConfig(n_steps=int(task.horizon), **settings["config"])
    return _run_open_loop(cem, config, task, params, seeds, settings, best_actions="best_actions",
                          curve="best_so_far", per_iter=config.population * config.n_steps,
                          curve_label="best return so far")


def run_grape(task, params, seeds, settings: dict) -> RunRecord:
    """GRAPE (``agents.grape``), seeds vmapped (each seed runs its own restarts); final score:
    the open-loop return of the best sequence on evaluation keys.

    settings: ``config`` (GrapeConfig kwargs except n_steps = task.horizon), ``hyper``
    (overrides of ``grape.default_hyper``), ``eval_episodes``.
    """
    from qsmgym.agents import grape

    config = grape.GrapeConfig(n_steps=int(task.horizon), **settings["config"])
    return _run_open_loop(grape, config, task, params, seeds, settings, best_actions="actions",
                          curve="history", per_iter=config.restarts * config.n_keys * config.n_steps,
                          curve_label="best mean return over restarts (forward env steps)")


def run_model_aware(task, params, seeds, settings: dict) -> RunRecord:
    """Model-aware RL (``agents.model_aware``: a deterministic policy trained by backpropagating
    the episode return through the functional core), seeds vmapped; final score: the policy's
    deterministic return over ``settings["eval_episodes"]`` episodes on evaluation keys.

    settings: ``config`` (ModelAwareConfig kwargs; n_steps = task.horizon), ``hyper``
    (overrides of ``model_aware.default_hyper``), ``eval_episodes``.
    """
    import jax

    from qsmgym.agents import model_aware

    n_eval = int(settings.get("eval_episodes", 1))
    config = model_aware.ModelAwareConfig(**dict(settings["config"], eval_episodes=n_eval))
    hyper = _hyper(model_aware.default_hyper(), settings.get("hyper", {}))
    train = jax.vmap(model_aware.make_train(config, task, params), in_axes=(0, None))
    result, compile_s, train_s = _compile_and_run(train, _keys(seeds), hyper)

    def evaluate(net_params, key):
        return model_aware.evaluate(task, params, net_params, config, key, n_eval)

    start = time.perf_counter()
    returns = jax.jit(jax.vmap(evaluate))(result.params, _eval_keys(seeds))
    returns = np.asarray(jax.block_until_ready(returns), np.float64)
    eval_s = time.perf_counter() - start
    per_iter = config.batch_episodes * int(task.horizon)
    return RunRecord(
        final_returns=returns.mean(axis=1),
        curve_steps=per_iter * np.arange(1, config.iterations + 1),
        curve_returns=np.asarray(result.history, np.float64),
        env_steps=config.iterations * per_iter,
        compile_s=compile_s, train_s=train_s, eval_s=eval_s,
        curve_label="mean return of each gradient step's episodes (forward env steps)",
        settings={"config": dataclasses.asdict(config), "hyper": settings.get("hyper", {}),
                  "eval_episodes": n_eval},
        artifacts={"params": result.params, "config": config},
    )


# ------------------------------------------------------------------------------- registry
_KT = dict(j=5, n_periods=20, noise="superradiant", gamma=0.01, theta0=math.pi / 2, phi0=math.pi / 2)
_MC = dict(N=2, horizon=200)
_MC4 = dict(N=4, horizon=200)
_TD_DEPH = dict(noise="dephasing", gamma=0.05)
_TD_EMIS = dict(noise="emission", gamma=0.05)


def _ppo(num_envs, num_steps, total_timesteps, minibatches=4, eval_episodes=16, **hyper):
    return {"config": dict(num_envs=num_envs, num_steps=num_steps, total_timesteps=total_timesteps,
                           num_minibatches=minibatches), "hyper": hyper, "eval_episodes": eval_episodes}


def _ma(iterations, batch_episodes, eval_episodes=4, hidden_sizes=(64, 64), **hyper):
    return {"config": dict(iterations=iterations, batch_episodes=batch_episodes, hidden_sizes=hidden_sizes),
            "hyper": hyper, "eval_episodes": eval_episodes}


_MA_TD = {"tiny": _ma(2, 1, hidden_sizes=(8,)), "default": _ma(1000, 1), "full": _ma(4000, 1)}
# dephasing: a smaller rate (measured over 5 seeds: 3e-3 left one at 0.58, 1e-3 gives 0.634-0.648);
# emission keeps 3e-3 (1e-3: 0.84-0.88 against 0.887-0.892)
_MA_TD_DEPH = {"tiny": _ma(2, 1, hidden_sizes=(8,)), "default": _ma(1000, 1, learning_rate=1e-3),
               "full": _ma(4000, 1, learning_rate=1e-3)}

# Budgets: "default" keeps the whole table near 10 minutes on a 2-core CPU (measured there);
# "full" scales the training budgets up ~4-10x (not run on the 2-core CPU); "tiny" is for tests only (meaningless scores).
ENTRIES: list[Entry] = [
    Entry("kicked-top", "KickedTop j=5 superradiant", "qsm/KickedTopSensor-v0", _KT, "CEM", run_cem, {
        "tiny": {"config": dict(population=8, n_elite=2, iterations=2)},
        "default": {"config": dict(population=256, n_elite=25, iterations=40), "hyper": {"smoothing": 0.3}},
        "full": {"config": dict(population=512, n_elite=50, iterations=200), "hyper": {"smoothing": 0.3}},
    }),
    Entry("kicked-top", "KickedTop j=5 superradiant", "qsm/KickedTopSensor-v0", _KT, "PPO", run_ppo, {
        "tiny": _ppo(4, 20, 160, minibatches=2, eval_episodes=2),
        "default": _ppo(16, 20, 96_000, learning_rate=1e-3, gamma=1.0),
        "full": _ppo(32, 20, 960_000, learning_rate=1e-3, gamma=1.0),
    }),
    Entry("time-dependent", "TimeDependent T=5, 20 bins", "qsm/TimeDependentEstimation-v0", {}, "PPO", run_ppo, {
        "tiny": _ppo(4, 20, 160, minibatches=2, eval_episodes=2),
        "default": _ppo(16, 40, 192_000, learning_rate=1e-3, gamma=1.0, ent_coef=0.0),
        "full": _ppo(32, 40, 1_920_000, learning_rate=1e-3, gamma=1.0, ent_coef=0.0),
    }),
    Entry("time-dependent", "TimeDependent T=5, 20 bins", "qsm/TimeDependentEstimation-v0", {}, "CEM", run_cem, {
        "tiny": {"config": dict(population=8, n_elite=2, iterations=2)},
        "default": {"config": dict(population=256, n_elite=25, iterations=100)},
        "full": {"config": dict(population=512, n_elite=50, iterations=400)},
    }),
    Entry("time-dependent", "TimeDependent T=5, 20 bins", "qsm/TimeDependentEstimation-v0", {}, "GRAPE", run_grape, {
        "tiny": {"config": dict(iterations=3, restarts=1)},
        "default": {"config": dict(iterations=500, restarts=4)},
        "full": {"config": dict(iterations=2000, restarts=8)},
    }),
    Entry("memory-cutoff", "MemoryCutoff N=2, 200 slots", "qsm/MemoryCutoff-v0", _MC, "PPO", run_ppo, {
        "tiny": _ppo(4, 50, 400, minibatches=2, eval_episodes=2),
        "default": _ppo(16, 50, 200_000, eval_episodes=32),
        "full": _ppo(32, 50, 2_000_000, eval_episodes=64),
    }),
    Entry("memory-cutoff", "MemoryCutoff N=2, 200 slots", "qsm/MemoryCutoff-v0", _MC,
          "best fixed cut-off (exact)", reference_key="best_fixed_cutoff_return"),
    Entry("photon-shaping", "PhotonShaping C=9 gaussian", "qsm/PhotonShaping-v0", {}, "CEM", run_cem, {
        "tiny": {"config": dict(population=8, n_elite=2, iterations=2)},
        "default": {"config": dict(population=64, n_elite=8, iterations=100)},  # ~2e4 steps/s: 3.2M steps
        "full": {"config": dict(population=512, n_elite=50, iterations=600)},
    }),
    Entry("photon-shaping", "PhotonShaping C=9 gaussian", "qsm/PhotonShaping-v0", {}, "GRAPE", run_grape, {
        "tiny": {"config": dict(iterations=2, restarts=1)},
        "default": {"config": dict(iterations=300, restarts=2)},
        "full": {"config": dict(iterations=1000, restarts=4)},
    }),
    Entry("photon-shaping", "PhotonShaping C=9 gaussian", "qsm/PhotonShaping-v0", {}, "PPO", run_ppo, {
        "tiny": _ppo(4, 25, 100, minibatches=2, eval_episodes=2),
        "default": _ppo(16, 50, 96_000, learning_rate=1e-3, gamma=1.0),
        "full": _ppo(32, 50, 960_000, learning_rate=1e-3, gamma=1.0),
    }),
]

for _label, _kw in (("TimeDependent dephasing 0.05", _TD_DEPH), ("TimeDependent emission 0.05", _TD_EMIS)):
    ENTRIES += [
        Entry("time-dependent-noisy", _label, "qsm/TimeDependentEstimation-v0", _kw, "PPO", run_ppo, {
            "tiny": _ppo(4, 20, 160, minibatches=2, eval_episodes=2),
            "default": _ppo(16, 40, 192_000, learning_rate=1e-3, gamma=1.0, ent_coef=0.0),
            "full": _ppo(32, 40, 1_920_000, learning_rate=1e-3, gamma=1.0, ent_coef=0.0),
        }),
        Entry("time-dependent-noisy", _label, "qsm/TimeDependentEstimation-v0", _kw, "CEM", run_cem, {
            "tiny": {"config": dict(population=8, n_elite=2, iterations=2)},
            "default": {"config": dict(population=256, n_elite=25, iterations=100)},
            "full": {"config": dict(population=512, n_elite=50, iterations=400)},
        }),
        Entry("time-dependent-noisy", _label, "qsm/TimeDependentEstimation-v0", _kw, "model-aware",
              run_model_aware, _MA_TD_DEPH if _kw["noise"] == "dephasing" else _MA_TD),
        Entry("time-dependent-noisy", _label, "qsm/TimeDependentEstimation-v0", _kw,
              "GRAPE optimum (tabulated)", reference_key="grape_fraction"),
    ]
# model-aware RL (backprop through the core) on every differentiable task. Kicked top: the
# continuous kick strength k in [0, k_max = 6] (a relaxation of the discrete grid 0, 0.5, .., 6;
# same references), with exploration noise that smooths its rugged landscape.
ENTRIES += [
    Entry("kicked-top", "KickedTop j=5 superradiant", "qsm/KickedTopSensor-v0",
          dict(_KT, action_type="continuous"), "model-aware", run_model_aware, {
              "tiny": _ma(2, 1, hidden_sizes=(8,)),
              "default": _ma(500, 4, action_noise=0.3),
              "full": _ma(2000, 8, action_noise=0.3),
          }),
    Entry("time-dependent", "TimeDependent T=5, 20 bins", "qsm/TimeDependentEstimation-v0", {}, "model-aware",
          run_model_aware, _MA_TD),
    Entry("photon-shaping", "PhotonShaping C=9 gaussian", "qsm/PhotonShaping-v0", {}, "model-aware",
          run_model_aware, {
              "tiny": _ma(2, 1, hidden_sizes=(8,)),
              "default": _ma(300, 1),  # deterministic task: one episode per gradient
              "full": _ma(1500, 1),
          }),
]
ENTRIES += [
    Entry("memory-cutoff-4", "MemoryCutoff N=4, 200 slots", "qsm/MemoryCutoff-v0", _MC4, "PPO", run_ppo, {
        "tiny": _ppo(4, 50, 400, minibatches=2, eval_episodes=2),
        "default": _ppo(16, 50, 400_000, eval_episodes=32),
        "full": _ppo(32, 50, 4_000_000, eval_episodes=64),
    }),
    Entry("memory-cutoff-4", "MemoryCutoff N=4, 200 slots", "qsm/MemoryCutoff-v0", _MC4,
          "best fixed cut-off (exact)", reference_key="best_fixed_cutoff_return"),
    Entry("repeater-delivery", "RepeaterDelivery n=5 p=0.9 ps=0.5 tcut=2", "qsm/RepeaterDelivery-v0", {}, "PPO", run_ppo, {
        "tiny": _ppo(4, 20, 160, minibatches=2, eval_episodes=2),
        "default": _ppo(16, 64, 600_000, eval_episodes=4096, gamma=1.0),
        "full": _ppo(32, 64, 3_000_000, eval_episodes=16384, gamma=1.0),
    }),
    Entry("repeater-delivery", "RepeaterDelivery n=5 p=0.9 ps=0.5 tcut=2", "qsm/RepeaterDelivery-v0", {},
          "value-iteration optimum (exact)", reference_key="physical_limit"),
    Entry("repeater-delivery", "RepeaterDelivery n=5 p=0.9 ps=0.5 tcut=2", "qsm/RepeaterDelivery-v0", {},
          "swap ASAP (exact)", reference_key="naive_baseline"),
]

TASK_KEYS = tuple(dict.fromkeys(e.task for e in ENTRIES))


def select(tasks=None, agents=None, entries=None) -> list[Entry]:
    """Entries whose task key is in ``tasks`` and agent in ``agents`` (None: all).

    Raises:
        ValueError: an unknown task key or agent name.
    """
    entries = ENTRIES if entries is None else entries
    for name, wanted, known in (("tasks", tasks, {e.task for e in entries}),
                                ("agents", agents, {e.agent for e in entries})):
        unknown = sorted(set(wanted or ()) - known)
        if unknown:
            raise ValueError(f"{name} must be among {sorted(known)}, got unknown {unknown}")
    return [e for e in entries if (tasks is None or e.task in tasks) and (agents is None or e.agent in agents)]


# ---------------------------------------------------------------------------- evaluation
def _finite_floats(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
            out[k] = float(v) if math.isfinite(float(v)) else None
    return out


def normalise(returns, references: dict) -> tuple[np.ndarray, np.ndarray]:
    """(R / physical_limit, (R - naive_baseline) / (physical_limit - naive_baseline)).

    Raises:
        ValueError: physical_limit is 0 or equals naive_baseline (no scale to normalise by).
    """
    limit, naive = float(references["physical_limit"]), float(references["naive_baseline"])
    if limit == 0.0 or limit == naive:
        raise ValueError(f"references must have physical_limit != 0 and != naive_baseline, "
                         f"got physical_limit={limit}, naive_baseline={naive}")
    r = np.asarray(returns, np.float64)
    return r / limit, (r - naive) / (limit - naive)


def _ci_dict(ci) -> dict:
    return {"iqm": ci.point, "low": ci.low, "high": ci.high}


def _run_entry(entry: Entry, seeds, budget: str, tasks_cache: dict, log) -> dict:
    from qsmgym.envs.registry import make_task

    key = (entry.task_id, json.dumps(entry.task_kwargs, sort_keys=True))
    if key not in tasks_cache:
        task = make_task(entry.task_id, **entry.task_kwargs)
        params = task.default_params()
        tasks_cache[key] = (task, params, task.references(params))
    task, params, refs = tasks_cache[key]
    row = {"task": entry.task, "label": entry.label, "task_id": entry.task_id,
           "task_kwargs": entry.task_kwargs, "agent": entry.agent,
           "references": _finite_floats(refs)}
    if entry.runner is None:
        ret = float(refs[entry.reference_key])
        score, base = normalise([ret], refs)
        row.update(kind="reference", reference_key=entry.reference_key, returns=[ret],
                   scores=score.tolist(), baseline_normalised=base.tolist(), seeds=[],
                   iqm_score={"iqm": float(score[0]), "low": None, "high": None},
                   iqm_baseline_normalised={"iqm": float(base[0]), "low": None, "high": None},
                   env_steps=0, wall_s=0.0, compile_s=0.0)
        return row
    if budget not in entry.budgets:
        raise ValueError(f"budget must be one of {sorted(entry.budgets)} for {entry.task}/{entry.agent}, "
                         f"got budget={budget!r}")
    log(f"  {entry.label} / {entry.agent}: {len(seeds)} seeds ...")
    start = time.perf_counter()
    rec = entry.runner(task, params, np.asarray(seeds), entry.budgets[budget])
    wall = time.perf_counter() - start
    score, base = normalise(rec.final_returns, refs)
    if not (np.all(np.isfinite(score)) and np.all(np.isfinite(base))):
        raise RuntimeError(f"{entry.task}/{entry.agent}: non-finite final returns {rec.final_returns.tolist()}")
    curve = rec.curve_returns / float(refs["physical_limit"])
    keep = ~np.all(np.isnan(curve), axis=0)  # PPO: updates in which no episode ended
    with np.errstate(all="ignore"):
        curve_stats = {"env_steps": rec.curve_steps[keep].tolist(),
                       "mean": np.nanmean(curve[:, keep], axis=0).tolist(),
                       "min": np.nanmin(curve[:, keep], axis=0).tolist(),
                       "max": np.nanmax(curve[:, keep], axis=0).tolist(),
                       "label": rec.curve_label}
    row.update(kind="agent", seeds=[int(s) for s in seeds], returns=rec.final_returns.tolist(),
               scores=score.tolist(), baseline_normalised=base.tolist(),
               iqm_score=_ci_dict(stratified_bootstrap_ci({entry.task: score})),
               iqm_baseline_normalised=_ci_dict(stratified_bootstrap_ci({entry.task: base})),
               env_steps=int(rec.env_steps), wall_s=wall, compile_s=rec.compile_s,
               train_s=rec.train_s, eval_s=rec.eval_s, settings=rec.settings,
               curve=curve_stats)
    log(f"    IQM score {row['iqm_score']['iqm']:.4f}, {wall:.1f} s (compile {rec.compile_s:.1f} s)")
    return row


def aggregates(rows: list[dict]) -> list[dict]:
    """Per agent run on >= 2 tasks: IQM over all its runs with a stratified-bootstrap CI
    (tasks are the strata)."""
    out = []
    by_agent: dict[str, dict[str, np.ndarray]] = {}
    for row in rows:
        if row["kind"] == "agent":
            by_agent.setdefault(row["agent"], {})[row["label"]] = row
    for agent, per_task in by_agent.items():
        if len(per_task) < 2:
            continue
        score = stratified_bootstrap_ci({t: np.asarray(r["scores"]) for t, r in per_task.items()})
        base = stratified_bootstrap_ci({t: np.asarray(r["baseline_normalised"]) for t, r in per_task.items()})
        out.append({"agent": agent, "tasks": sorted(per_task), "iqm_score": _ci_dict(score),
                    "iqm_baseline_normalised": _ci_dict(base)})
    return out


# ------------------------------------------------------------------------------- outputs
MD_COLUMNS = ("task", "agent", "IQM score [95% CI]", "IQM baseline-normalised [95% CI]", "seeds",
              "env steps", "wall s", "compile s")


def _fmt_ci(d: dict) -> str:
    if d["low"] is None:
        return f"{d['iqm']:.3f}"
    return f"{d['iqm']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def markdown(result: dict) -> str:
    """The Markdown table (plus aggregate table, hardware line and command) of a result dict."""
    lines = [
        f"Hardware: {result['hardware']}. Budget: {result['budget']}; "
        f"{result['total_wall_s']:.0f} s in all.",
        "",
        "| " + " | ".join(MD_COLUMNS) + " |",
        "|" + "|".join("---" for _ in MD_COLUMNS) + "|",
    ]
    for r in result["rows"]:
        ref = r["kind"] == "reference"
        lines.append("| " + " | ".join([
            r["label"], r["agent"], _fmt_ci(r["iqm_score"]), _fmt_ci(r["iqm_baseline_normalised"]),
            "exact" if ref else str(len(r["seeds"])),
            "-" if ref else f"{r['env_steps']:,}",
            "-" if ref else f"{r['wall_s']:.1f}",
            "-" if ref else f"{r['compile_s']:.1f}",
        ]) + " |")
    if result["aggregates"]:
        lines += ["", "| agent | tasks | IQM score [95% CI] | IQM baseline-normalised [95% CI] |",
                  "|---|---|---|---|"]
        for a in result["aggregates"]:
            lines.append(f"| {a['agent']} | {len(a['tasks'])} | {_fmt_ci(a['iqm_score'])} | "
                         f"{_fmt_ci(a['iqm_baseline_normalised'])} |")
    lines += [
        "",
        "Score = final return / physical limit; baseline-normalised = (return - naive baseline) / "
        "(limit - naive baseline), so 0 is the naive baseline and 1 the limit. IQM over seeds with "
        "a 95% percentile bootstrap CI (2000 resamples; stratified over tasks in the aggregate "
        "table). PPO and model-aware RL are scored by their deterministic policy on unseen "
        "evaluation seeds, CEM and GRAPE by the open-loop return of their best sequence. Env steps are training steps per "
        "seed; wall s covers all seeds of a row together (vmapped in one program), compilation "
        "included.",
        "",
        f"Regenerate: `{result['command']}`",
    ]
    return "\n".join(lines) + "\n"


AGENT_COLORS = {"CEM": "C0", "PPO": "C1", "GRAPE": "C2", "model-aware": "C3"}  # same colour for an agent in every panel


def plot_curves(result: dict, path: Path) -> None:
    """learning_curves.png: one panel per task; per agent the mean normalised score over seeds
    with a min/max band against env steps (log scale); naive baseline and reference rows dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["label"] for r in result["rows"]))
    ncols = min(2, len(labels))
    nrows = math.ceil(len(labels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4 * nrows), squeeze=False)
    for ax, label in zip(axes.flat, labels):
        rows = [r for r in result["rows"] if r["label"] == label]
        refs = rows[0]["references"]
        naive = refs["naive_baseline"] / refs["physical_limit"]
        ax.axhline(naive, color="k", ls="--", lw=1, label="naive baseline")
        for r in rows:
            if r["kind"] == "reference":
                ax.axhline(r["scores"][0], color="gray", ls=":", lw=1.5, label=r["agent"])
                continue
            c = r["curve"]
            x = np.asarray(c["env_steps"], float)
            if x.size == 0:  # e.g. PPO that finished no training episode (tiny budgets)
                continue
            color = AGENT_COLORS.get(r["agent"])
            (line,) = ax.plot(x, c["mean"], color=color, label=f"{r['agent']} ({c['label']})")
            ax.fill_between(x, c["min"], c["max"], color=line.get_color(), alpha=0.2)
            ax.plot([x[-1]], [r["iqm_score"]["iqm"]], marker="*", ms=10, color=line.get_color(), ls="none")
        ax.set_xscale("log")
        ax.set_xlabel("env steps per seed")
        ax.set_ylabel("return / physical limit")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(labels):]:
        ax.set_visible(False)
    fig.suptitle("Learning curves (mean over seeds, min/max band; star: evaluated IQM)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(entries: list[Entry], seeds, out_dir, *, budget: str = "default", command: str = COMMAND,
        log: Callable[[str], None] = print) -> dict:
    """Train and evaluate every entry over ``seeds``; write results.json, results.md and
    learning_curves.png to ``out_dir``; return the result dict (what results.json holds).

    Args:
        entries: rows to run (``ENTRIES`` or ``select(...)``).
        seeds: training seeds (ints); the issue asks for >= 5.
        out_dir: output folder (created).
        budget: "tiny" (tests), "default" or "full".
        command: the command line recorded with the table.
        log: progress printer.

    Raises:
        ValueError: no entries, no seeds, repeated seeds, an unknown budget.
    """
    import jax

    from qsmgym.experiments.bench import hardware_line

    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got budget={budget!r}")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct ints, got seeds={seeds!r}")
    if not entries:
        raise ValueError("entries must not be empty")
    if not jax.config.jax_enable_x64:
        raise ValueError("the physics needs complex128: call jax.config.update('jax_enable_x64', True) first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cache: dict = {}
    rows = [_run_entry(e, seeds, budget, cache, log) for e in entries]
    result = {
        "hardware": hardware_line(),
        "jax_version": jax.__version__,
        "git_commit": git_commit(),
        "command": command,
        "budget": budget,
        "seeds": seeds,
        "eval_seed_offset": EVAL_SEED_OFFSET,
        "total_wall_s": time.perf_counter() - start,
        "rows": rows,
        "aggregates": aggregates(rows),
    }
    (out / "results.json").write_text(json.dumps(result, indent=1, allow_nan=False))
    (out / "results.md").write_text(markdown(result))
    plot_curves(result, out / "learning_curves.png")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m qsmgym.experiments.results",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", default="results_out", help="output folder")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (0..n-1); the issue asks for >= 5")
    p.add_argument("--tasks", nargs="+", choices=TASK_KEYS, default=None, help="subset of tasks")
    p.add_argument("--agents", nargs="+", default=None, help="subset of agents (e.g. PPO CEM GRAPE)")
    p.add_argument("--full", action="store_true", help="larger training budgets")
    p.add_argument("--budget", choices=BUDGETS, default=None, help="budget by name (overrides --full)")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    budget = args.budget or ("full" if args.full else "default")
    try:
        entries = select(args.tasks, args.agents)
    except ValueError as exc:
        p.error(str(exc))
    import jax

    jax.config.update("jax_enable_x64", True)
    command = "python -m qsmgym.experiments.results " + " ".join(
        sys.argv[1:] if argv is None else list(argv))
    print(f"results table: {len(entries)} rows, {args.seeds} seeds, budget {budget}", flush=True)
    result = run(entries, range(args.seeds), args.out, budget=budget, command=command.strip(),
                 log=lambda s: print(s, flush=True))
    print(markdown(result))
    print(f"wrote {Path(args.out) / 'results.json'}, results.md, learning_curves.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
