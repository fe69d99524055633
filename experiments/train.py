"""`qsm train` and `qsm evaluate`: train an agent on a registered task into a run folder, and
re-evaluate a run folder's saved policies on fresh seeds.

    qsm train --env qsm/TimeDependentEstimation-v0 --agent grape --budget tiny --seeds 2
    qsm train --env qsm/KickedTopSensor-v0 --agent cem --set env.noise='"superradiant"' \\
              --set env.gamma=0.01 --set config.iterations=20 --out runs
    qsm evaluate runs/qsm_KickedTopSensor-v0-cem-20261124-040000 --episodes 32

Training reuses the results-table runners (``experiments.results.run_ppo`` / ``run_cem`` /
``run_grape`` / ``run_model_aware``): all seeds train in one jitted program
(``jax.vmap(train, in_axes=(0, None))``) and are scored on evaluation keys training never saw.
Budgets come from the results table's entry for the same (id, agent) where there is one, else
from ``GENERIC_BUDGETS``; ``--set`` overrides them.

The run folder (see ``experiments.runs``) holds config.json, meta.json, metrics.json/.csv, the
trained policies as data (PPO / model-aware: flax msgpack + JSON sidecar per seed under
policy/; open-loop agents: policy/actions.npy, (n_seeds, n_steps, ...)), and plots/:
learning_curve.png, pulses.png (the actions of one evaluation episode of the best seed) and,
for the spin tasks, husimi.png (Husimi Q of that episode's final state: the spin-j state of the
kicked top; the qubit of the time-dependent task from its Bloch vector).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from qsmgym.experiments.runs import QsmError

AGENTS = ("ppo", "cem", "grape", "model-aware")
BUDGETS = ("tiny", "default", "full")
EVAL_SEED = 2_000_003  # `qsm evaluate` default: disjoint from training seeds and results' eval keys
_RESULTS_AGENT = {"ppo": "PPO", "cem": "CEM", "grape": "GRAPE", "model-aware": "model-aware"}


def _ppo(num_envs, num_steps, total_timesteps, minibatches=4, eval_episodes=16):
    return {"config": dict(num_envs=num_envs, num_steps=num_steps, total_timesteps=total_timesteps,
                           num_minibatches=minibatches), "hyper": {}, "eval_episodes": eval_episodes}


# For (id, agent) pairs without a results-table entry. "tiny" is for tests (meaningless scores).
GENERIC_BUDGETS: dict[str, dict[str, dict]] = {
    "ppo": {"tiny": _ppo(2, 10, 20, minibatches=2, eval_episodes=2),
            "default": _ppo(16, 64, 100_000), "full": _ppo(32, 64, 1_000_000)},
    "cem": {"tiny": {"config": dict(population=8, n_elite=2, iterations=2), "eval_episodes": 2},
            "default": {"config": dict(population=256, n_elite=25, iterations=60)},
            "full": {"config": dict(population=512, n_elite=50, iterations=300)}},
    "grape": {"tiny": {"config": dict(iterations=2, restarts=1), "eval_episodes": 2},
              "default": {"config": dict(iterations=400, restarts=4)},
              "full": {"config": dict(iterations=2000, restarts=8)}},
    "model-aware": {"tiny": {"config": dict(iterations=2, batch_episodes=1, eval_episodes=1,
                                            hidden_sizes=[16]), "eval_episodes": 2},
                    "default": {"config": dict(iterations=500, batch_episodes=4)},
                    "full": {"config": dict(iterations=3000, batch_episodes=16)}},
}


# ------------------------------------------------------------------------------- configs
def _f(default, help: str, **kw):
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a `qsm train` run (saved as config.json; `qsm evaluate` reads it)."""

    env_id: str = _f("", "registered task id, e.g. qsm/KickedTopSensor-v0 (see `qsm train --list`)")
    agent: str = _f("ppo", f"agent: one of {', '.join(AGENTS)}")
    budget: str = _f("default", "training budget: tiny (tests only), default (2-core CPU minutes), "
                                "full (GPU-scale)")
    seeds: tuple = _f((0,), "training seeds, trained together in one vmapped program")
    env_kwargs: dict = _f(None, "task constructor arguments (--set env.NAME=VALUE)")
    settings: dict = _f(None, "agent settings after --set: config (agent config), hyper (traced "
                              "hyperparameters), eval_episodes")
    out: str = _f("runs", "parent folder of the run folder")
    tensorboard: bool = _f(False, "also log the learning curve to TensorBoard (run_dir/tensorboard)")
    wandb: bool = _f(False, "also log to Weights & Biases (needs wandb)")


def field_help(cls, name: str) -> str:
    """The help text of a config field (argparse help = the dataclass's documentation)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}[name]


# ------------------------------------------------------------------------------- helpers
def _import_jax():
    import jax

    jax.config.update("jax_enable_x64", True)  # the physics needs complex128
    return jax


def registered_ids() -> list[str]:
    from qsmgym.envs.registry import TASKS

    return sorted(TASKS)


def build_task(env_id: str, env_kwargs: dict, *, references: bool = True):
    """(task, params, references or None) of a registered id; QsmError on an unknown id or bad
    kwargs. ``references=False`` skips computing them (some run Monte Carlo or compile)."""
    from qsmgym.envs.registry import TASKS, make_task

    if env_id not in TASKS:
        raise QsmError(f"unknown env id {env_id!r}; registered: {', '.join(sorted(TASKS))}")
    try:
        task = make_task(env_id, **env_kwargs)
    except (TypeError, ValueError) as exc:
        raise QsmError(f"bad env arguments {env_kwargs} for {env_id}: {exc}") from exc
    params = task.default_params()
    return task, params, (task.references(params) if references else None)


def action_kind(task, params) -> str:
    import gymnasium as gym

    space = task.action_space(params)
    for kind, cls in (("box", gym.spaces.Box), ("discrete", gym.spaces.Discrete),
                      ("multibinary", gym.spaces.MultiBinary)):
        if isinstance(space, cls):
            return kind
    return type(space).__name__


def compatible_agents(task, params) -> tuple[str, ...]:
    """Agents that can train on ``task``: PPO everywhere; open-loop CEM needs a fixed horizon
    and a Box or Discrete action; GRAPE and model-aware need a Box action (gradients) and a
    fixed horizon."""
    kind = action_kind(task, params)
    fixed = getattr(task, "horizon", None) is not None
    out = ["ppo"]
    if fixed and kind in ("box", "discrete"):
        out.append("cem")
    if fixed and kind == "box":
        out += ["grape", "model-aware"]
    return tuple(out)


def budget_settings(env_id: str, agent: str, budget: str) -> dict:
    """The results table's budget for (id, agent) where it has one, else ``GENERIC_BUDGETS``."""
    from qsmgym.experiments.results import ENTRIES

    for e in ENTRIES:
        if e.task_id == env_id and e.agent == _RESULTS_AGENT[agent] and e.runner is not None \
                and budget in e.budgets:
            return copy.deepcopy(e.budgets[budget])
    return copy.deepcopy(GENERIC_BUDGETS[agent][budget])


def _agent_module(agent: str):
    from qsmgym.agents import cem, grape, model_aware, ppo

    return {"ppo": ppo, "cem": cem, "grape": grape, "model-aware": model_aware}[agent]


def _agent_config(agent: str, task, config_kwargs: dict):
    """The agent's frozen config from settings (validated by its constructor)."""
    mod = _agent_module(agent)
    kw = dict(config_kwargs)
    if "hidden_sizes" in kw and isinstance(kw["hidden_sizes"], list):
        kw["hidden_sizes"] = tuple(kw["hidden_sizes"])
    if agent == "ppo":
        return mod.PPOConfig(**kw)
    if agent == "model-aware":
        return mod.ModelAwareConfig(**kw)
    cls = mod.CEMConfig if agent == "cem" else mod.GrapeConfig
    return cls(n_steps=int(task.horizon), **kw)


def resolve_config(env_id: str, agent: str, budget: str, seeds, overrides: dict, *, out="runs",
                   tensorboard=False, wandb=False) -> TrainConfig:
    """Validate everything a run needs before any training (fail fast, one-line errors).

    Args:
        overrides: ``runs.parse_overrides`` output with sections env, config, hyper.

    Raises:
        QsmError: unknown id/agent/budget, agent not suited to the task, bad seeds, bad
            --set values (each message names the value).
    """
    from qsmgym.experiments.runs import ExperimentLoggers

    if agent not in AGENTS:
        raise QsmError(f"unknown agent {agent!r}; choose from {', '.join(AGENTS)}")
    ExperimentLoggers.check(tensorboard=tensorboard, wandb=wandb)
    if budget not in BUDGETS:
        raise QsmError(f"unknown budget {budget!r}; choose from {', '.join(BUDGETS)}")
    seeds = tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise QsmError(f"seeds must be distinct non-negative ints, got {list(seeds)}")
    env_kwargs = dict(overrides.get("env", {}))
    task, params, _ = build_task(env_id, env_kwargs, references=False)
    ok = compatible_agents(task, params)
    if agent not in ok:
        raise QsmError(f"agent {agent!r} does not fit {env_id} (action space "
                       f"{task.action_space(params)}, horizon {getattr(task, 'horizon', None)}); "
                       f"use one of {', '.join(ok)}")
    settings = budget_settings(env_id, agent, budget)
    settings.setdefault("hyper", {})
    settings["config"] = dict(settings.get("config", {}), **overrides.get("config", {}))
    try:
        _agent_config(agent, task, settings["config"])
    except (TypeError, ValueError) as exc:
        raise QsmError(f"bad agent config for {agent}: {exc}") from exc
    known = _agent_module(agent).default_hyper()
    for k, v in overrides.get("hyper", {}).items():
        if k not in known:
            raise QsmError(f"unknown hyperparameter hyper.{k} for {agent}; known: {', '.join(sorted(known))}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise QsmError(f"hyper.{k} must be a finite number, got {v!r}")
        settings["hyper"][k] = v
    return TrainConfig(env_id=env_id, agent=agent, budget=budget, seeds=seeds, env_kwargs=env_kwargs,
                       settings=settings, out=str(out), tensorboard=bool(tensorboard), wandb=bool(wandb))


# ------------------------------------------------------------------------------- runners
def _runner(agent: str) -> Callable:
    from qsmgym.experiments import results

    return {"ppo": results.run_ppo, "cem": results.run_cem, "grape": results.run_grape,
            "model-aware": results.run_model_aware}[agent]


# ------------------------------------------------------------------------------- policies
def _index(tree, i):
    import jax

    return jax.tree_util.tree_map(lambda x: x[i], tree)


def save_policies(run_dir: Path, agent: str, task, params, seeds, artifacts: dict) -> list[str]:
    """Write the trained policies as data under run_dir/policy; returns the relative paths."""
    from qsmgym.agents.distributions import PolicySpec

    pdir = run_dir / "policy"
    pdir.mkdir(exist_ok=True)
    if agent in ("cem", "grape"):
        np.save(pdir / "actions.npy", np.asarray(artifacts["actions"]), allow_pickle=False)
        return ["policy/actions.npy"]
    mod = _agent_module(agent)
    spec = PolicySpec.from_task(task, params)
    paths = []
    for i, s in enumerate(seeds):
        path = pdir / f"seed{s}.msgpack"
        if agent == "ppo":
            mod.save_checkpoint(path, _index(artifacts["params"], i), artifacts["config"], spec,
                                obs_rms=_index(artifacts["obs_rms"], i))
        else:
            mod.save_checkpoint(path, _index(artifacts["params"], i), artifacts["config"], spec)
        paths.append(f"policy/{path.name}")
    return paths


def load_policies(run_dir: Path, agent: str, seeds) -> list[Any]:
    """Per seed: a PPO / model-aware checkpoint, or an (n_steps, ...) action array. Never
    unpickles (msgpack checkpoints; .npy with allow_pickle=False)."""
    pdir = run_dir / "policy"
    try:
        if agent in ("cem", "grape"):
            actions = np.load(pdir / "actions.npy", allow_pickle=False)
            if actions.shape[0] != len(seeds):
                raise QsmError(f"{pdir / 'actions.npy'} holds {actions.shape[0]} sequences for "
                               f"{len(seeds)} seeds")
            return list(actions)
        mod = _agent_module(agent)
        return [mod.load_checkpoint(pdir / f"seed{s}.msgpack") for s in seeds]
    except (OSError, ValueError) as exc:
        raise QsmError(f"cannot load the saved policy of {run_dir}: {exc}") from exc


def _policy_fn(agent: str, task, params, policy):
    """(init_carry, act(carry, obs, state) -> (carry, action)) of one saved policy, one env."""
    import jax
    import jax.numpy as jnp

    from qsmgym.agents import distributions as dist

    if agent in ("cem", "grape"):
        actions = jnp.asarray(policy)
        return jnp.zeros((), jnp.int32), lambda t, obs, state: (t + 1, actions[t])
    if agent == "model-aware":
        from qsmgym.agents import model_aware as ma

        spec = ma.policy_spec(task, params)
        net = ma.make_policy(policy.config, spec)

        def act(rnn, obs, state):
            rnn, z = net.apply(policy.params, rnn, jnp.asarray(obs, jnp.float32).reshape(1, -1))
            return rnn, ma.to_action(spec, z)[0]

        return ma.initial_carry(policy.config, 1), act
    from qsmgym.agents import ppo
    from qsmgym.agents.networks import initial_carry

    config, spec = policy.config, policy.spec
    net = ppo.make_network(config, spec)

    def act(rnn, obs, state):
        x = jnp.asarray(obs, jnp.float32).reshape(1, -1)
        if config.normalize_obs:
            x = policy.obs_rms.normalize(x, config.obs_clip)
        rnn, pi, _ = net.apply(policy.params, rnn, x[None], jnp.zeros((1, 1), bool))
        mask = dist.mask_of(spec, task, state)[None]
        raw = dist.mode(spec, jax.tree_util.tree_map(lambda p: p[0], pi), mask)
        return rnn, dist.to_env_action(spec, raw[0])

    return initial_carry(config.network, config.lstm_size, 1), act


def episode_trajectory(agent: str, task, params, policy, key) -> dict:
    """One evaluation episode of a saved policy: actions (n_steps, ...), rewards, the return
    and the state at the episode's end (frozen after termination/truncation)."""
    import jax
    import jax.numpy as jnp

    n_steps = getattr(task, "horizon", None) or task.max_episode_steps
    carry0, act = _policy_fn(agent, task, params, policy)
    cache = task.precompute(params)

    @jax.jit
    def run(key):
        k_reset, k_steps = jax.random.split(key)
        obs, state = task.reset(k_reset, params, cache=cache)

        def body(c, k):
            state, obs, pc, done = c
            pc, a = act(pc, obs, state)
            obs2, state2, r, term, trunc, _ = task.step(k, state, a, params, cache=cache)
            keep = lambda new, old: jax.tree_util.tree_map(lambda x, y: jnp.where(done, y, x), new, old)
            return (keep(state2, state), obs2, pc, done | term | trunc), (a, jnp.where(done, 0.0, r), done)

        (state, _, _, _), (actions, rewards, was_done) = jax.lax.scan(
            body, (state, obs, carry0, jnp.zeros((), bool)), jax.random.split(k_steps, int(n_steps)))
        return actions, rewards, was_done, state

    actions, rewards, was_done, state = run(key)
    n_live = int(np.sum(~np.asarray(was_done)))
    return {"actions": np.asarray(actions)[:n_live], "rewards": np.asarray(rewards)[:n_live],
            "return": float(np.sum(rewards)), "final_state": state}


def policy_returns(agent: str, task, params, policy, key, n_episodes: int) -> np.ndarray:
    """(n_episodes,) undiscounted returns of one saved policy (jitted, episodes vmapped)."""
    import jax

    if agent == "ppo":
        from qsmgym.agents import ppo

        fn = lambda k: ppo.evaluate(task, params, policy.params, policy.config, k, n_episodes,
                                    obs_rms=policy.obs_rms)
    elif agent == "model-aware":
        from qsmgym.agents import model_aware as ma

        fn = lambda k: ma.evaluate(task, params, policy.params, policy.config, k, n_episodes)
    else:
        from qsmgym.agents.rollout import open_loop_return

        cache = task.precompute(params)
        actions = jax.numpy.asarray(policy)
        fn = lambda k: jax.vmap(lambda kk: open_loop_return(task, params, cache, kk, actions)[0])(
            jax.random.split(k, n_episodes))
    return np.asarray(jax.block_until_ready(jax.jit(fn)(key)), np.float64)


# ------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curve(path, steps, curves, seeds, refs, label: str, title: str) -> None:
    """Training curve per seed, normalised to the physical limit, with the naive baseline."""
    plt = _plt()
    limit = float(refs["physical_limit"])
    scale = limit if limit != 0 else 1.0
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for s, c in zip(seeds, np.atleast_2d(curves)):
        ok = np.isfinite(c)
        ax.plot(np.asarray(steps)[ok], c[ok] / scale, marker="." if ok.sum() < 30 else None,
                label=f"seed {s}")
    ax.axhline(float(refs["naive_baseline"]) / scale, color="k", ls="--", lw=1, label="naive baseline")
    if limit != 0:
        ax.axhline(1.0, color="gray", ls=":", lw=1, label="physical limit")
    ax.set_xlabel("env steps per seed")
    ax.set_ylabel("return / physical limit" if limit != 0 else "return")
    ax.set_title(f"{title}\n{label}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pulses(path, actions, title: str) -> None:
    """Actions against step of one episode, one line per action component."""
    plt = _plt()
    a = np.asarray(actions, np.float64).reshape(len(actions), -1)
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    steps = np.arange(len(a))
    for i in range(a.shape[1]):
        ax.step(steps, a[:, i], where="post", label=f"component {i}" if a.shape[1] > 1 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("action (env units)")
    ax.set_title(title, fontsize=9)
    if a.shape[1] > 1:
        ax.legend(fontsize=7, ncol=min(4, a.shape[1]))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def final_spin_state(task, state):
    """("spin", rho in the |j,m> basis) for the kicked top, ("qubit", Bloch vector) for the
    time-dependent task, else None."""
    from qsmgym.envs.kicked_top import KickedTopSensor
    from qsmgym.envs.time_dependent import TimeDependentEstimation
    from qsmgym.physics.lindblad import unvec

    if isinstance(task, KickedTopSensor):
        psi = np.asarray(state.psi)
        rho = np.asarray(unvec(psi)) if task.mixed else np.outer(psi, psi.conj())
        w = np.asarray(task._w)  # the env's kick-axis basis -> |j, m> (as its "density" observation)
        return "spin", w @ rho @ w.conj().T
    if isinstance(task, TimeDependentEstimation):
        return "qubit", np.asarray(state.r, np.float64)
    return None


def plot_husimi(path, kind: str, state, title: str) -> None:
    """Husimi Q on the sphere (theta, phi map) of a spin density matrix or a Bloch vector."""
    import jax.numpy as jnp

    from qsmgym.physics.husimi import husimi_q_qubit, husimi_q_spin, sphere_grid

    TH, PH = sphere_grid(90, 180)
    q = husimi_q_spin(jnp.asarray(state), TH, PH) if kind == "spin" else husimi_q_qubit(state, TH, PH)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    im = ax.pcolormesh(PH, TH, np.asarray(q), shading="auto", cmap="viridis")
    ax.invert_yaxis()
    ax.set_xlabel("azimuth phi")
    ax.set_ylabel("polar angle theta")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="Husimi Q = <theta,phi|rho|theta,phi>")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------- scores
def scores(returns, refs) -> dict:
    """Mean return and its normalisations (None where the references give no scale)."""
    from qsmgym.experiments.results import normalise

    r = np.asarray(returns, np.float64)
    out = {"mean_return": float(r.mean()), "physical_limit": float(refs["physical_limit"]),
           "naive_baseline": float(refs["naive_baseline"])}
    try:
        score, base = normalise(r, refs)
        out.update(score=float(score.mean()), baseline_normalised=float(base.mean()))
    except ValueError:
        out.update(score=None, baseline_normalised=None)
    return out


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


# ------------------------------------------------------------------------------- train
def train(config: TrainConfig, *, command: list[str], log=print) -> Path:
    """Train ``config`` and write its run folder; returns the folder.

    Raises:
        QsmError: bad input (checked again here for callers that bypass ``resolve_config``).
    """
    from tqdm import tqdm

    from qsmgym.experiments import runs

    jax = _import_jax()
    start_time = runs.utc_now()
    task, params, refs = build_task(config.env_id, dict(config.env_kwargs or {}))
    run_dir = runs.create_run_dir(config.out, f"{config.env_id}-{config.agent}")
    runs.write_config(run_dir, config)
    runs.write_meta(run_dir, command=command, start=start_time)
    loggers = runs.ExperimentLoggers(run_dir, tensorboard=config.tensorboard, wandb=config.wandb,
                                     config=config)
    seeds = list(config.seeds)
    with tqdm(total=4, desc=f"{config.agent} on {config.env_id}", unit="stage", file=sys.stderr,
              disable=None) as bar:
        bar.set_postfix_str(f"compile + train {len(seeds)} seed(s)")
        rec = _runner(config.agent)(task, params, np.asarray(seeds), config.settings)
        bar.update()
        bar.set_postfix_str("save policies")
        policy_files = save_policies(run_dir, config.agent, task, params, seeds, rec.artifacts)
        bar.update()
        bar.set_postfix_str("evaluation episode")
        best = int(np.argmax(rec.final_returns))
        policy = load_policies(run_dir, config.agent, seeds)[best]  # round trip through the files
        traj = episode_trajectory(config.agent, task, params, policy,
                                  jax.random.PRNGKey(EVAL_SEED + seeds[best]))
        bar.update()
        bar.set_postfix_str("plots")
        title = f"{config.env_id}, {config.agent}, budget {config.budget}"
        plots = run_dir / "plots"
        plot_learning_curve(plots / "learning_curve.png", rec.curve_steps, rec.curve_returns, seeds,
                            refs, rec.curve_label, title)
        plot_pulses(plots / "pulses.png", traj["actions"],
                    f"{title}\nactions of one evaluation episode (seed {seeds[best]}, "
                    f"return {traj['return']:.4g})")
        spin = final_spin_state(task, traj["final_state"])
        if spin is not None:
            plot_husimi(plots / "husimi.png", spin[0], spin[1],
                        f"{title}\nHusimi Q of the final state of that episode ({spin[0]})")
        bar.update()
    curve_rows = []
    for i, s in enumerate(seeds):
        for step, value in zip(rec.curve_steps, np.atleast_2d(rec.curve_returns)[i]):
            curve_rows.append({"seed": s, "env_steps": int(step),
                               "return": float(value) if np.isfinite(value) else None})
    with np.errstate(all="ignore"):
        mean_curve = np.nanmean(np.atleast_2d(rec.curve_returns), axis=0)
    for step, value in zip(rec.curve_steps, mean_curve):
        loggers.scalar("train/return", value, step)
    final = scores(rec.final_returns, refs)
    loggers.scalar("eval/score", final["score"] if final["score"] is not None else math.nan,
                   int(rec.env_steps))
    loggers.close()
    metrics = {
        "env_id": config.env_id, "agent": config.agent, "seeds": seeds,
        "final_returns": rec.final_returns.tolist(), **final,
        "references": {k: v for k, v in refs.items() if isinstance(v, (int, float))},
        "env_steps_per_seed": int(rec.env_steps), "compile_s": rec.compile_s,
        "train_s": rec.train_s, "eval_s": rec.eval_s, "curve_label": rec.curve_label,
        "eval_episode": {"seed": seeds[best], "return": traj["return"],
                         "actions": traj["actions"].tolist()},
        "policy_files": policy_files,
        "plots": sorted(p.name for p in plots.glob("*.png")),
    }
    runs.write_metrics(run_dir, metrics, curve_rows)
    runs.write_meta(run_dir, command=command, start=start_time, end=runs.utc_now())
    log(f"{config.env_id} / {config.agent} ({config.budget}, seeds {seeds}): mean final return "
        f"{final['mean_return']:.6g}; score (fraction of physical limit) {_fmt(final['score'])}; "
        f"baseline-normalised {_fmt(final['baseline_normalised'])}; train {rec.train_s:.1f} s "
        f"(+ compile {rec.compile_s:.1f} s)")
    log(f"run folder: {run_dir}")
    return run_dir


# ------------------------------------------------------------------------------- evaluate
def evaluate_run(run_dir, *, episodes: int = 32, seed: int = EVAL_SEED, log=print) -> dict:
    """Re-evaluate a run folder's saved policies on fresh seeds; writes evaluation.json.

    Args:
        run_dir: a folder written by ``qsm train``.
        episodes: episodes per saved policy.
        seed: evaluation seed (policy i uses PRNGKey(seed + i)).

    Raises:
        QsmError: not a run folder, unreadable policy, bad episodes/seed.
    """
    from tqdm import tqdm

    from qsmgym.experiments import runs

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise QsmError(f"--episodes must be a positive int, got {episodes!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise QsmError(f"--seed must be a non-negative int, got {seed!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise QsmError(f"run folder {str(run_dir)!r} does not exist")
    cfg = runs.read_json(run_dir / "config.json")
    try:
        env_id, agent, seeds = cfg["env_id"], cfg["agent"], list(cfg["seeds"])
        env_kwargs = dict(cfg.get("env_kwargs") or {})
    except (KeyError, TypeError) as exc:
        raise QsmError(f"{run_dir / 'config.json'} is not a qsm train config ({exc})") from None
    if agent not in AGENTS:
        raise QsmError(f"{run_dir / 'config.json'} names unknown agent {agent!r}")
    jax = _import_jax()
    task, params, refs = build_task(env_id, env_kwargs)
    policies = load_policies(run_dir, agent, seeds)
    per_policy = []
    for i, (s, pol) in enumerate(tqdm(list(zip(seeds, policies)), desc="evaluate", unit="policy",
                                      file=sys.stderr, disable=None)):
        returns = policy_returns(agent, task, params, pol, jax.random.PRNGKey(seed + i), episodes)
        per_policy.append({"train_seed": s, "eval_key": seed + i, "returns": returns.tolist(),
                           **scores(returns, refs)})
    all_returns = np.concatenate([np.asarray(p["returns"]) for p in per_policy])
    summary = {"env_id": env_id, "agent": agent, "episodes_per_policy": episodes, "eval_seed": seed,
               "evaluated_at": runs.utc_now(), **scores(all_returns, refs), "per_policy": per_policy}
    runs.write_json(run_dir / "evaluation.json", summary)
    log(f"{env_id} / {agent}: {len(seeds)} polic{'y' if len(seeds) == 1 else 'ies'} x {episodes} "
        f"episodes: mean return {summary['mean_return']:.6g}; score (fraction of physical limit "
        f"{summary['physical_limit']:.6g}) {_fmt(summary['score'])}; baseline-normalised (naive "
        f"baseline {summary['naive_baseline']:.6g} -> 0, limit -> 1) {_fmt(summary['baseline_normalised'])}")
    log(f"wrote {run_dir / 'evaluation.json'}")
    return summary


# ------------------------------------------------------------------------------- CLI
def train_parser() -> argparse.ArgumentParser:
    from qsmgym.experiments import runs

    h = lambda name: field_help(TrainConfig, name)
    p = runs.ArgumentParser(prog="qsm train", description="Train an agent on a registered "
                                "task; writes a run folder (config, meta, metrics, policy, plots).")
    p.add_argument("--env", dest="env_id", help=h("env_id"))
    p.add_argument("--agent", default="ppo", help=h("agent"))
    p.add_argument("--budget", default="default", help=h("budget"))
    p.add_argument("--seeds", default="1", help="number of seeds N (trains seeds 0..N-1), or a "
                   "comma-separated list of seeds, e.g. 3,7")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override: env.NAME (task argument), config.NAME (agent config), "
                        "hyper.NAME (traced hyperparameter) or eval.episodes; VALUE is JSON "
                        "(numbers, true/false, lists, quoted strings) or a bare string")
    p.add_argument("--out", default="runs", help=h("out"))
    p.add_argument("--tensorboard", action="store_true", help=h("tensorboard"))
    p.add_argument("--wandb", action="store_true", help=h("wandb"))
    p.add_argument("--list", action="store_true", help="list registered ids and the agents each takes")
    return p


def parse_seeds(text: str) -> tuple[int, ...]:
    """'3' -> (0, 1, 2); '3,7' -> (3, 7). QsmError on anything else."""
    text = str(text).strip()
    try:
        if "," in text:
            seeds = tuple(int(s) for s in text.split(",") if s.strip())
        else:
            n = int(text)
            if n < 1:
                raise QsmError(f"--seeds must be >= 1, got {text!r}")
            seeds = tuple(range(n))
    except ValueError:
        raise QsmError(f"--seeds must be a count N or a comma-separated list of ints, got {text!r}") from None
    return seeds


def train_main(argv=None) -> int:
    """`qsm train` entry point (raises QsmError on bad input; cli.main prints it)."""
    from qsmgym.experiments import runs

    argv = list(sys.argv[1:] if argv is None else argv)
    args = train_parser().parse_args(argv)
    if args.list:
        _import_jax()
        for env_id in registered_ids():
            task, params, _ = build_task(env_id, {}, references=False)
            print(f"{env_id:36s} action {action_kind(task, params):12s} agents: "
                  f"{', '.join(compatible_agents(task, params))}")
        return 0
    if not args.env_id:
        raise QsmError("--env is required (e.g. --env qsm/KickedTopSensor-v0; --list shows all ids)")
    over = runs.parse_overrides(args.overrides, ("env", "config", "hyper", "eval"))
    _import_jax()
    config = resolve_config(args.env_id, args.agent, args.budget, parse_seeds(args.seeds), over,
                            out=args.out, tensorboard=args.tensorboard, wandb=args.wandb)
    if over["eval"]:
        unknown = set(over["eval"]) - {"episodes"}
        n = over["eval"].get("episodes")
        if unknown or isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise QsmError(f"--set eval.episodes=N (N >= 1) is the only eval setting, got {over['eval']}")
        config = dataclasses.replace(config, settings=dict(config.settings, eval_episodes=n))
    train(config, command=["qsm", "train", *argv])
    return 0


def evaluate_main(argv=None) -> int:
    """`qsm evaluate RUN_DIR [--episodes N] [--seed S]`."""
    from qsmgym.experiments import runs

    p = runs.ArgumentParser(prog="qsm evaluate", description="Re-evaluate a run folder's saved "
                                "policies on fresh seeds; writes evaluation.json and prints scores "
                                "normalised to the physical limit and the naive baseline.")
    p.add_argument("run_dir", help="a folder written by `qsm train`")
    p.add_argument("--episodes", type=int, default=32, help="evaluation episodes per saved policy")
    p.add_argument("--seed", type=int, default=EVAL_SEED,
                   help=f"evaluation seed (default {EVAL_SEED}, never used in training)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    evaluate_run(args.run_dir, episodes=args.episodes, seed=args.seed)
    return 0
