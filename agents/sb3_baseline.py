"""Stable-Baselines3 PPO on the Gymnasium shells, unmodified, and a throughput comparison
with our jitted PPO (``qsmgym.agents.ppo``).

SB3 is a user's first choice: ``PPO("MlpPolicy", gym.make(env_id, **env_kwargs), device="cpu")``
with no wrapper beyond what ``gym.make`` adds. ``train_sb3_ppo`` trains and evaluates the
deterministic policy through Gymnasium; ``ppo_throughput`` measures, in one process, env
steps per second of SB3's ``learn()`` and of our jitted ``train`` (after compilation).

Each side runs its own default algorithm settings: SB3: one env, n_steps=2048, batch 64,
10 epochs (320 gradient steps per 2048 env steps); ours: ``PPOConfig(num_envs=64)``, 64 steps,
4 epochs x 4 minibatches (16 gradient steps per 4096 env steps). The ratio is therefore that
of the two ways of training a user would actually run, not of equal work per env step.

    python -m qsmgym.agents.sb3_baseline --env qsm/TimeDependentEstimation-v0
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from typing import Any

import gymnasium as gym
import jax
import numpy as np

import qsmgym.envs  # noqa: F401  (registers the ids)
from qsmgym.agents import ppo
from qsmgym.envs.registry import make_task


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (``None``: leave torch's setting).

    Measured on a loaded 2-core machine: SB3's update of a 64x64 MLP took 71 s per 2048 steps
    with torch's default 2 threads and 1.0 s with 1 (intra-op threads fighting JAX and
    other processes for the cores), so 1 thread is the default here.
    """
    import torch

    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def evaluate_sb3(model: Any, env: gym.Env, n_episodes: int, seed: int = 10_000) -> dict:
    """Undiscounted returns of ``model``'s deterministic policy over ``n_episodes`` episodes
    run through ``env`` (reset seeds ``seed, seed + 1, ...``).

    Returns:
        {"mean_return": float, "episode_returns": list of floats, "episode_lengths": list}.
    """
    returns, lengths = [], []
    for i in range(int(n_episodes)):
        obs, _ = env.reset(seed=seed + i)
        done, total, steps = False, 0.0, 0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            steps += 1
            done = terminated or truncated
        returns.append(total)
        lengths.append(steps)
    return {"mean_return": float(np.mean(returns)), "episode_returns": returns, "episode_lengths": lengths}


def train_sb3_ppo(env_id: str, env_kwargs: dict | None = None, total_timesteps: int = 10_000,
                  seed: int = 0, *, eval_episodes: int = 10, threads: int | None = 1,
                  **ppo_kwargs) -> dict:
    """Train SB3 PPO ("MlpPolicy", CPU) on ``gym.make(env_id, **env_kwargs)`` and evaluate it.

    Args:
        env_id: a registered id, e.g. ``qsm/TimeDependentEstimation-v0``.
        env_kwargs: keyword arguments of ``gym.make``.
        total_timesteps: SB3 ``learn`` budget (SB3 rounds up to a multiple of ``n_steps``).
        seed: SB3's seed (policy init, env seeding).
        eval_episodes: episodes of the deterministic policy, on a fresh env from ``gym.make``.
        threads: torch intra-op threads during training (see ``torch_threads``).
        **ppo_kwargs: passed to ``stable_baselines3.PPO`` (e.g. ``n_steps=256``).

    Returns:
        {"model", "wall_time_s" (of learn), "timesteps" (done by learn), "eval" (see
        ``evaluate_sb3``)}.

    Raises:
        ValueError: a non-positive ``total_timesteps`` or ``eval_episodes``.
    """
    from stable_baselines3 import PPO

    for name, value in (("total_timesteps", total_timesteps), ("eval_episodes", eval_episodes)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
    env_kwargs = dict(env_kwargs or {})
    model = _quiet(PPO("MlpPolicy", gym.make(env_id, **env_kwargs), device="cpu", seed=seed, verbose=0, **ppo_kwargs))
    with torch_threads(threads):
        start = time.perf_counter()
        model.learn(total_timesteps=int(total_timesteps))
        wall = time.perf_counter() - start
    eval_env = gym.make(env_id, **env_kwargs)
    try:
        evaluation = evaluate_sb3(model, eval_env, eval_episodes)
    finally:
        eval_env.close()
    return {"model": model, "wall_time_s": wall, "timesteps": int(model.num_timesteps), "eval": evaluation}


def _quiet(model):
    """SB3's default logger makes an empty ``SB3-<time>`` folder in the temp dir at every
    ``learn()``, verbose=0 included; a Logger with no outputs writes nothing. Left alone when
    the caller asked for TensorBoard logs."""
    from stable_baselines3.common.logger import Logger

    if model.tensorboard_log is None:
        model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def _sb3_steps_per_s(env_id: str, env_kwargs: dict, seconds: float, seed: int, sb3_kwargs: dict,
                     threads: int | None) -> dict:
    with torch_threads(threads):
        return _sb3_steps_per_s_inner(env_id, env_kwargs, seconds, seed, sb3_kwargs)


def _sb3_steps_per_s_inner(env_id: str, env_kwargs: dict, seconds: float, seed: int, sb3_kwargs: dict) -> dict:
    from stable_baselines3 import PPO

    model = _quiet(PPO("MlpPolicy", gym.make(env_id, **env_kwargs), device="cpu", seed=seed, verbose=0, **sb3_kwargs))
    n_steps = model.n_steps * model.n_envs
    start = time.perf_counter()
    model.learn(total_timesteps=n_steps)  # warm-up: one rollout and one update (also the rate probe)
    probe = time.perf_counter() - start
    rollouts = max(1, int(seconds / max(probe, 1e-9)))
    total = rollouts * n_steps
    start = time.perf_counter()
    model.learn(total_timesteps=total, reset_num_timesteps=True)
    wall = time.perf_counter() - start
    steps = int(model.num_timesteps)
    return {"steps": steps, "wall_s": wall, "steps_per_s": steps / wall, "n_steps": model.n_steps}


def _jax_steps_per_s(env_id: str, env_kwargs: dict, seconds: float, seed: int, config: ppo.PPOConfig) -> dict:
    task = make_task(env_id, **env_kwargs)
    params = task.default_params()
    hyper = ppo.default_hyper()
    batch = config.num_envs * config.num_steps

    def timed(num_updates: int) -> dict:
        cfg = dataclasses.replace(config, total_timesteps=num_updates * batch)
        train = jax.jit(ppo.make_train(cfg, task, params))
        start = time.perf_counter()
        jax.block_until_ready(train(jax.random.PRNGKey(seed), hyper))  # compile + first run
        compile_and_run = time.perf_counter() - start
        start = time.perf_counter()
        jax.block_until_ready(train(jax.random.PRNGKey(seed + 1), hyper))  # same shapes: no compile
        wall = time.perf_counter() - start
        steps = cfg.num_updates * batch
        return {"steps": steps, "wall_s": wall, "steps_per_s": steps / wall,
                "first_call_s": compile_and_run, "num_updates": cfg.num_updates}

    probe = timed(1)
    updates = int(seconds / max(probe["wall_s"], 1e-9))
    # a longer run (one more compile) when compiling is cheap next to the budget; otherwise the
    # one-update probe is the measurement
    if updates >= 4 and probe["first_call_s"] < seconds:
        return timed(updates)
    return probe


def ppo_throughput(env_id: str, env_kwargs: dict | None = None, seconds_budget: float = 60.0, *,
                   seed: int = 0, sb3_kwargs: dict | None = None,
                   ppo_config: ppo.PPOConfig | None = None, threads: int | None = 1) -> dict:
    """Env steps per second of SB3 PPO and of our jitted PPO on the same task, in this process.

    SB3: ``learn()`` over a fixed number of timesteps (a whole number of rollouts, sized from
    a one-rollout warm-up to take about half the budget), timed after the warm-up. Ours:
    ``ppo.make_train`` with ``ppo_config`` (default ``PPOConfig(num_envs=64, num_steps=64)``),
    jitted; a second call with the same shapes is timed (compilation excluded; its time is
    reported as ``first_call_s``). The number of updates is sized from a one-update probe.

    Args:
        env_id, env_kwargs: the task (``gym.make`` for SB3, ``make_task`` for ours).
        seconds_budget: rough total seconds of timed training, split evenly (warm-ups and
            compilation come on top).
        seed: seeds of both.
        sb3_kwargs: extra ``stable_baselines3.PPO`` arguments (default: SB3's defaults).
        ppo_config: our PPO's config (its ``total_timesteps`` is replaced).
        threads: torch intra-op threads for SB3 (see ``torch_threads``; JAX keeps its own).

    Returns:
        {"sb3": {...steps_per_s}, "jax": {...steps_per_s}, "ratio": jax / sb3, "env_id",
        "env_kwargs", "device"}.
    """
    if not (isinstance(seconds_budget, (int, float)) and np.isfinite(seconds_budget) and seconds_budget > 0):
        raise ValueError(f"seconds_budget must be a positive number, got seconds_budget={seconds_budget!r}")
    env_kwargs = dict(env_kwargs or {})
    config = ppo_config or ppo.PPOConfig(num_envs=64, num_steps=64, total_timesteps=64 * 64)
    sb3 = _sb3_steps_per_s(env_id, env_kwargs, seconds_budget / 2, seed, dict(sb3_kwargs or {}), threads)
    ours = _jax_steps_per_s(env_id, env_kwargs, seconds_budget / 2, seed, config)
    return {"env_id": env_id, "env_kwargs": env_kwargs, "sb3": sb3, "jax": ours,
            "ratio": ours["steps_per_s"] / sb3["steps_per_s"], "device": str(jax.devices()[0]),
            "torch_threads": threads,
            "jax_config": {"num_envs": config.num_envs, "num_steps": config.num_steps,
                           "update_epochs": config.update_epochs, "num_minibatches": config.num_minibatches}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="SB3 PPO vs jitted PPO: env steps per second.")
    parser.add_argument("--env", required=True, help="registered id, e.g. qsm/TimeDependentEstimation-v0")
    parser.add_argument("--env-kwargs", default="{}", help='JSON dict for gym.make, e.g. \'{"j": 5}\'')
    parser.add_argument("--seconds", type=float, default=60.0, help="timed seconds in all (split evenly)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-envs", type=int, default=64, help="our PPO's parallel envs")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads for SB3 (0: torch's default)")
    args = parser.parse_args(argv)
    env_kwargs = json.loads(args.env_kwargs)
    if not isinstance(env_kwargs, dict):
        parser.error(f"--env-kwargs must be a JSON object, got {args.env_kwargs!r}")
    config = ppo.PPOConfig(num_envs=args.num_envs, num_steps=64, total_timesteps=args.num_envs * 64)
    out = ppo_throughput(args.env, env_kwargs, args.seconds, seed=args.seed, ppo_config=config,
                         threads=args.torch_threads or None)
    sb3, ours = out["sb3"], out["jax"]
    print(f"{args.env} {env_kwargs or ''} on {out['device']}")
    print(f"  SB3 PPO (1 env, n_steps={sb3['n_steps']}, torch threads {out['torch_threads']}): {sb3['steps_per_s']:10.0f} env steps/s "
          f"({sb3['steps']} steps in {sb3['wall_s']:.1f} s)")
    print(f"  jitted PPO ({config.num_envs} envs):       {ours['steps_per_s']:10.0f} env steps/s "
          f"({ours['steps']} steps in {ours['wall_s']:.1f} s; first call incl. compile "
          f"{ours['first_call_s']:.1f} s)")
    print(f"  ratio jitted / SB3: {out['ratio']:.1f}x")
    return out


if __name__ == "__main__":
    main()
