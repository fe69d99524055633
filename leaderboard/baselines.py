"""Baseline submissions for every registered task, from the agents and references we ship.

    python -m qsmgym.leaderboard.baselines --out leaderboard/submissions     # ~ minutes on 2 CPU cores
    python -m qsmgym.leaderboard.baselines --out /tmp/subs --tasks qsm/PhotonShaping-v0

Each entry is a folder ``<out>/<Name-vN>/<agent>/`` holding submission.json (and, for
policies, policy.msgpack). Small budgets on purpose (the whole generation runs in minutes and
the files stay a few KB); they are honest entries, not tuned ones:

| task | entries |
|---|---|
| KickedTopSensor-v0 | CEM open-loop kick sequence |
| PhotonShaping-v0, PhotonStorage-v0 | analytic made-to-measure (inverted) pulse, bin-averaged, open loop; CEM open loop (generation only) |
| MemoryCutoff-v0 | PPO MLP policy (weights); "no cut-off" open loop (never discard: the naive baseline) |
| RepeaterDelivery-v0 | PPO MLP policy (weights); "swap ASAP" open loop (all swap flags set: the naive baseline) |
| TimeDependentEstimation-v0 | GRAPE open-loop controls |
| BayesianMagnetometry-v0 | CEM-optimised *static* tau sequence (open loop); constant tau = 1 (the naive baseline) |

BayesianMagnetometry is adaptive by nature and its strong references (sigma^-1, PGH) are
heuristic functions of the particle filter, not networks of a declared architecture, so they
cannot be submitted as data; the entries here are non-adaptive tau schedules. (A good static
schedule is a strong entry: qsensoropt reports static strategies beating sigma^-1 and PGH on
MSE, see the task's ``qsensoropt_mse20_*`` references.)

Claimed results are the submitter's own evaluation: ``scorer.episode_returns`` on the public
seeds 0..n-1, one episode each (``--claim-episodes``). The scorer's hidden seeds are HMAC
outputs, so they differ from these (a chance collision would be harmless).

Regenerating rewrites the folders of the selected tasks; training is seeded, so on the same
machine and versions the files come out the same (training on another CPU or XLA version may
differ in the last bits, and then in the CEM/PPO results).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np

from qsmgym.leaderboard.submission import FORMAT, SUBMISSION_FILE, load_submission

from qsmgym.experiments.runs import git_commit

COMMAND = "python -m qsmgym.leaderboard.baselines --out leaderboard/submissions"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qsm-gym")
    except PackageNotFoundError:
        return "0.0.0"


def _device() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform} ({d.device_kind})"


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x)
    return x


def _curve(steps, returns, label):
    steps, returns = np.asarray(steps, float), np.asarray(returns, float)
    keep = np.isfinite(returns)
    if not keep.any():
        return None
    return {"env_steps": steps[keep].tolist(), "returns": returns[keep].tolist(), "label": label}


def write_entry(out: Path, task, *, agent: str, description: str, config: dict, seeds, wall_s: float,
                env_steps: int, solution: dict, curve=None, weights: bytes | None = None,
                claim_episodes: int = 32, log=print) -> Path:
    """Write one submission folder and fill its claimed results by evaluating it on seeds
    0..claim_episodes-1 (the submitter's own evaluation). Returns the folder."""
    from qsmgym.leaderboard.scorer import episode_returns

    folder = out / f"{task.name}-v{task.version}" / agent.replace(" ", "_").replace("(", "").replace(")", "")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if weights is not None:
        (folder / solution["weights_file"]).write_bytes(weights)
    data = {
        "format": FORMAT, "env_id": task.id, "qsmgym_version": _version(), "qsmgym_commit": git_commit(),
        "agent": {"name": agent, "description": description}, "config": _jsonable(config),
        "training_seeds": [int(s) for s in seeds],
        "compute": {"device": _device(), "wall_seconds": round(float(wall_s), 2), "env_steps": int(env_steps)},
        "solution": _jsonable(solution),
        "claimed_results": {"episode_returns": [0.0]},
    }
    if curve is not None:
        data["curve"] = _jsonable(curve)
    path = folder / SUBMISSION_FILE
    path.write_text(json.dumps(data))
    sub = load_submission(folder, task=task)
    eval_seeds = list(range(claim_episodes))
    returns = episode_returns(sub, task, task.default_params(), eval_seeds).reshape(-1)
    data["claimed_results"] = {"episode_returns": [float(r) for r in returns], "eval_seeds": eval_seeds}
    path.write_text(json.dumps(data, indent=1) + "\n")
    log(f"  {task.id} / {agent}: claimed mean return {returns.mean():.5g} ({wall_s:.1f} s training)")
    return folder


# ------------------------------------------------------------------------------- producers
def _cem(task, out, *, population, n_elite, iterations, seed=0, agent="CEM", description=None, **kw):
    import jax

    from qsmgym.agents import cem

    config = cem.CEMConfig(n_steps=int(task.horizon), population=population, n_elite=n_elite,
                           iterations=iterations)
    start = time.perf_counter()
    res = cem.train_cem(task, seed=seed, config=config)
    wall = time.perf_counter() - start
    per_iter = population * config.n_steps
    return write_entry(
        out, task, agent=agent,
        description=description or "Cross-entropy method over open-loop action sequences "
                                   "(agents.cem), best sequence seen; small budget.",
        config={"agent": "cem", **dataclasses.asdict(config),
                "hyper": {k: float(v) for k, v in cem.default_hyper().items()}},
        seeds=[seed], wall_s=wall, env_steps=iterations * per_iter,
        solution={"kind": "open_loop", "actions": np.asarray(jax.device_get(res.best_actions)).tolist()},
        curve=_curve(per_iter * np.arange(1, iterations + 1), res.best_so_far, "best return so far"), **kw)


def _grape(task, out, *, iterations, restarts, seed=0, **kw):
    import jax

    from qsmgym.agents import grape

    config = grape.GrapeConfig(n_steps=int(task.horizon), iterations=iterations, restarts=restarts)
    start = time.perf_counter()
    res = jax.device_get(grape.train_grape(task, config=config, seed=seed))
    wall = time.perf_counter() - start
    per_iter = restarts * config.n_keys * config.n_steps
    return write_entry(
        out, task, agent="GRAPE",
        description="Gradient ascent (Adam) on the open-loop controls through the JAX physics "
                    "(agents.grape), best restart; small budget.",
        config={"agent": "grape", **dataclasses.asdict(config),
                "hyper": {k: float(v) for k, v in grape.default_hyper().items()}},
        seeds=[seed], wall_s=wall, env_steps=iterations * per_iter,
        solution={"kind": "open_loop", "actions": np.asarray(res.actions).tolist()},
        curve=_curve(per_iter * np.arange(1, iterations + 1), res.history,
                     "best mean return over restarts"), **kw)


def _ppo(task, out, *, num_envs, num_steps, total_timesteps, hidden_sizes=(32, 32), seed=0, hyper=None, **kw):
    import flax.serialization
    import jax

    from qsmgym.agents import ppo

    config = ppo.PPOConfig(num_envs=num_envs, num_steps=num_steps, total_timesteps=total_timesteps,
                           num_minibatches=4, hidden_sizes=tuple(hidden_sizes))
    h = dict(ppo.default_hyper(), **{k: jax.numpy.asarray(v) for k, v in (hyper or {}).items()})
    start = time.perf_counter()
    res = ppo.train_ppo(task, config=config, seed=seed, hyper=h)
    wall = time.perf_counter() - start
    payload = {"params": jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), res.params),
               "obs_rms": {"mean": np.asarray(res.obs_rms.mean, np.float32),
                           "var": np.asarray(res.obs_rms.var, np.float32),
                           "count": np.asarray(res.obs_rms.count, np.float32)}}
    batch = num_envs * num_steps
    arch = {"agent": "ppo", "network": config.network, "hidden_sizes": list(config.hidden_sizes),
            "lstm_size": config.lstm_size, "normalize_obs": config.normalize_obs, "obs_clip": config.obs_clip}
    return write_entry(
        out, task, agent="PPO",
        description="PPO (agents.ppo), MLP actor-critic, deterministic policy (argmax/mode) at "
                    "evaluation; small training budget.",
        config={"agent": "ppo", **dataclasses.asdict(config),
                "hyper": {k: float(v) for k, v in h.items()}},
        seeds=[seed], wall_s=wall, env_steps=config.num_updates * batch,
        solution={"kind": "policy", "architecture": arch, "weights_file": "policy.msgpack"},
        weights=flax.serialization.msgpack_serialize(payload),
        curve=_curve(batch * np.arange(1, config.num_updates + 1), res.metrics["episode_return"],
                     "mean return of training episodes (stochastic policy)"), **kw)


def _constant(task, out, *, agent, description, value, **kw):
    space = task.action_space(task.default_params())
    shape = tuple(getattr(space, "shape", ()) or ())
    actions = np.full((int(task.horizon),) + shape, value).tolist()
    return write_entry(out, task, agent=agent, description=description, config={"agent": "constant",
                       "value": value}, seeds=[], wall_s=0.0, env_steps=0,
                       solution={"kind": "open_loop", "actions": actions}, **kw)


def _inverted(task, out, **kw):
    actions = np.asarray(task.inverted_pulse(task.default_params()), np.float64)
    return write_entry(
        out, task, agent="inverted pulse (analytic)",
        description="Made-to-measure pulse from inverting the adiabatic-elimination equations "
                    "for the target shape (PhotonShaping.inverted_pulse), bin-averaged, open loop.",
        config={"agent": "analytic", "source": "PhotonShaping.inverted_pulse"}, seeds=[], wall_s=0.0,
        env_steps=0, solution={"kind": "open_loop", "actions": actions.tolist()}, **kw)


def produce(env_id: str, out: Path, *, claim_episodes: int = 32, log=print) -> list[Path]:
    """Write every baseline entry of ``env_id`` under ``out``; returns the folders."""
    from qsmgym.envs.registry import make_task

    task = make_task(env_id)
    kw = {"claim_episodes": claim_episodes, "log": log}
    if env_id == "qsm/KickedTopSensor-v0":
        return [_cem(task, out, population=64, n_elite=8, iterations=20, **kw)]
    if env_id == "qsm/PhotonShaping-v0":
        return [_inverted(task, out, **kw), _cem(task, out, population=32, n_elite=4, iterations=30, **kw)]
    if env_id == "qsm/PhotonStorage-v0":
        return [_inverted(task, out, **kw)]
    if env_id in ("qsm/MemoryCutoff-v0", "qsm/RepeaterDelivery-v0"):
        memory = env_id == "qsm/MemoryCutoff-v0"
        naive = _constant(task, out, agent="no cut-off" if memory else "swap ASAP", value=0 if memory else 1,
                          description=("Never discard a stored link (all cut-off flags 0) at every "
                                       "slot: the task's naive baseline, as an open-loop sequence."
                                       if memory else "Swap wherever possible (all swap flags 1) at "
                                       "every slot: the task's naive baseline, as an open-loop sequence."),
                          **kw)
        return [_ppo(task, out, num_envs=8, num_steps=100, total_timesteps=8 * 100 * 40, **kw), naive]
    if env_id == "qsm/TimeDependentEstimation-v0":
        return [_grape(task, out, iterations=150, restarts=2, **kw)]
    if env_id == "qsm/BayesianMagnetometry-v0":
        return [
            _cem(task, out, population=32, n_elite=4, iterations=10, agent="CEM static tau",
                 description="CEM over a static (non-adaptive) sequence of Ramsey times tau, open "
                             "loop; the adaptive sigma^-1/PGH heuristics are functions of the "
                             "particle filter, not submittable networks.", **kw),
            _constant(task, out, agent="constant tau 1", value=-1.0,
                      description="tau = 1 (action -1) at every measurement: the task's naive "
                                  "baseline, as an open-loop sequence.", **kw),
        ]
    raise ValueError(f"env_id has no baseline producer: {env_id!r}")


def main(argv=None) -> int:
    from qsmgym.envs.registry import TASKS

    p = argparse.ArgumentParser(prog="python -m qsmgym.leaderboard.baselines", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="leaderboard/submissions", help="submissions folder")
    p.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=None, help="subset of task ids")
    p.add_argument("--claim-episodes", type=int, default=32, help="episodes of the claimed evaluation")
    args = p.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    out = Path(args.out)
    start = time.perf_counter()
    for env_id in args.tasks or TASKS:
        print(f"{env_id} ...", flush=True)
        produce(env_id, out, claim_episodes=args.claim_episodes, log=lambda s: print(s, flush=True))
    print(f"wrote baselines under {out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
