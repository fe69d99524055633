"""Re-score a validated submission on hidden evaluation seeds.

    from qsmgym.leaderboard.scorer import score_submission
    result = score_submission("leaderboard/submissions/KickedTopSensor-v0/CEM", n_seeds=16, episodes_per_seed=8)
    result["normalised"]     # {"iqm": ..., "low": ..., "high": ...}  (over seeds)
    result["flagged"], result["flag_message"]

Hidden seeds. A submission is evaluated on ``n_seeds`` evaluation seeds

    seed_i = first 4 bytes of HMAC-SHA256(secret, f"{env_id}|{submission_id}|{i}")  (big-endian)

and episode j of seed i runs from ``jax.random.fold_in(jax.random.PRNGKey(seed_i), j)``. The
submission id is the agent name (unique per task in the submissions folder); ``secret`` is
the environment variable ``QSM_LEADERBOARD_SECRET`` when set, else ``RELEASE_SALT``. The
release salt is public (it is in this file), so seeds derived from it are only unknown to a
submitter who does not read the source: it makes the CI re-scoring reproducible by anyone.
Real scoring sets a private secret, which makes the seeds unpredictable; either way
re-scoring is deterministic for a given secret.

Scores. Each episode return R becomes ``score = R / physical_limit`` and ``normalised =
(R - naive_baseline) / (physical_limit - naive_baseline)`` with the task's
``references(params)`` (``experiments.results.normalise``): 0 is the naive baseline, 1 the
physical limit. A seed's score is the mean over its episodes (an unbiased estimate of the
expected return, which is what the references are); the summary is the interquartile mean
over seeds with a 95% percentile bootstrap CI (``experiments.stats``: one stratum, 2000
resamples, resampling seed 0, so deterministic) -- rliable's protocol, seeds as runs.
Ranking uses ``normalised`` (defined for tasks with negative returns, where R / limit is
not). Averaging within a seed matters: single episodes of RepeaterDelivery (geometric
delivery times) or BayesianMagnetometry (squared errors) are heavy-tailed, and an IQM over
single episodes drops the tail and lands far from the expectation (e.g. above the limit).

Flag. The claimed results are per-episode returns, so they are compared like with like: the
per-episode IQM of the claims and of all hidden episodes, each with its 95% bootstrap CI over
episodes. A submission is flagged when the two CIs are disjoint by more than
``FLAG_TOLERANCE`` (normalised units): "flagged: claimed X [lo, hi], measured Y [lo, hi]".
Disjoint CIs rather than "claimed IQM outside the measured CI": an honest claim on other
seeds of a stochastic task lands outside the measured 95% CI about one time in six, while
disjoint 95% CIs happen to honest pairs well under 1% of the time; for deterministic tasks
both CIs are points and the rule reads "claimed and measured differ by more than the
tolerance". The tolerance (1e-4 of the limit-baseline gap) allows for float32 policy
arithmetic differing across CPUs and XLA versions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from qsmgym.leaderboard.submission import Submission, load_submission, ppo_config

RELEASE_SALT = "qsm-gym 0.1.0 public leaderboard salt"  # public; set QSM_LEADERBOARD_SECRET for real scoring
SECRET_ENV = "QSM_LEADERBOARD_SECRET"
DEFAULT_SEEDS = 16
DEFAULT_EPISODES_PER_SEED = 8
FLAG_TOLERANCE = 1e-4
N_BOOT = 2000


def secret_and_source(secret: str | None = None) -> tuple[str, str]:
    """(secret, where it came from: "argument", "env" or "release-salt")."""
    if secret is not None:
        if not isinstance(secret, str) or not secret:
            raise ValueError(f"secret must be a non-empty string, got {secret!r}")
        return secret, "argument"
    env = os.environ.get(SECRET_ENV)
    if env:
        return env, "env"
    return RELEASE_SALT, "release-salt"


def evaluation_seeds(env_id: str, submission_id: str, n: int, secret: str | None = None) -> list[int]:
    """The ``n`` hidden evaluation seeds (uint32) of a submission; prefix-stable in ``n``.

    Example:
        >>> evaluation_seeds("qsm/KickedTopSensor-v0", "CEM", 2, secret="s") == \\
        ...     evaluation_seeds("qsm/KickedTopSensor-v0", "CEM", 3, secret="s")[:2]
        True
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got n={n!r}")
    key = secret_and_source(secret)[0].encode()
    return [int.from_bytes(hmac.new(key, f"{env_id}|{submission_id}|{i}".encode(), hashlib.sha256)
                           .digest()[:4], "big") for i in range(int(n))]


_EVALUATORS: dict = {}  # (env_id, kind, architecture) -> jitted evaluator: re-scoring reuses the compilation


def _evaluator(sub: Submission, task):
    """A jitted ``f(keys, solution, params, cache) -> (n,) returns`` for the submission's kind
    (and architecture); the task is built with default arguments, so one per (env_id, kind)."""
    import jax

    arch = sub.data["solution"].get("architecture")
    key = (sub.env_id, sub.kind, json.dumps(arch, sort_keys=True))
    if key in _EVALUATORS:
        return _EVALUATORS[key]
    if sub.kind == "open_loop":
        from qsmgym.agents.rollout import open_loop_return

        def fn(keys, actions, params, cache):
            return jax.vmap(lambda k: open_loop_return(task, params, cache, k, actions)[0])(keys)
    else:
        from qsmgym.agents import ppo

        config = ppo_config(arch)

        def fn(keys, weights, params, cache):
            net_params, rms = weights
            return jax.vmap(lambda k: ppo.evaluate(task, params, net_params, config, k, 1, obs_rms=rms)[0])(keys)
    _EVALUATORS[key] = jax.jit(fn)
    return _EVALUATORS[key]


def episode_returns(sub: Submission, task, params, seeds, episodes_per_seed: int = 1) -> np.ndarray:
    """(len(seeds), episodes_per_seed) float64 undiscounted returns; episode j of seed s runs
    from ``fold_in(PRNGKey(s), j)``.

    Open loop: ``agents.rollout.open_loop_return`` of the action sequence. Policy: the
    declared PPO actor-critic run deterministically (``agents.ppo.evaluate``, one episode
    per key). Episodes are vmapped in one jitted call (cached per env id, kind and architecture).
    """
    import jax
    import jax.numpy as jnp

    keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(int(s)), j)
                      for s in seeds for j in range(int(episodes_per_seed))])
    cache = task.precompute(params)
    if sub.kind == "open_loop":
        solution = jnp.asarray(sub.actions)
    else:
        from qsmgym.agents import ppo

        w = sub.weights
        rms = None
        if w["obs_rms"] is not None:
            rms = ppo.RunningMeanStd(*(jnp.asarray(w["obs_rms"][k]) for k in ("mean", "var", "count")))
        solution = (jax.tree_util.tree_map(jnp.asarray, w["params"]), rms)
    out = _evaluator(sub, task)(keys, solution, params, cache)
    out = np.asarray(jax.block_until_ready(out), np.float64)
    return out.reshape(len(seeds), int(episodes_per_seed))


def _ci(values: np.ndarray, statistic=None) -> dict:
    from qsmgym.experiments.stats import iqm, stratified_bootstrap_ci

    ci = stratified_bootstrap_ci({"episodes": values}, statistic=statistic or iqm, n_boot=N_BOOT, seed=0)
    return {"iqm" if statistic is None else "mean": ci.point, "low": ci.low, "high": ci.high}


def flag(claimed: dict, measured: dict, tol: float = FLAG_TOLERANCE) -> str | None:
    """The flag message when the claimed and measured CIs are disjoint beyond ``tol``, else None."""
    if claimed["low"] > measured["high"] + tol or claimed["high"] < measured["low"] - tol:
        return (f"flagged: claimed {claimed['iqm']:.4f} [{claimed['low']:.4f}, {claimed['high']:.4f}], "
                f"measured {measured['iqm']:.4f} [{measured['low']:.4f}, {measured['high']:.4f}]")
    return None


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {name}={value!r}")


def score_submission(path, *, n_seeds: int = DEFAULT_SEEDS, episodes_per_seed: int = DEFAULT_EPISODES_PER_SEED,
                     secret: str | None = None, references_cache: dict | None = None) -> dict[str, Any]:
    """Validate the submission at ``path``, re-evaluate it on hidden seeds and score it.

    Args:
        path: submission folder (or its submission.json).
        n_seeds: hidden evaluation seeds (>= 1; the IQM and its CI are over these).
        episodes_per_seed: episodes averaged per seed (>= 1).
        secret: overrides ``QSM_LEADERBOARD_SECRET`` / the release salt.
        references_cache: optional dict env_id -> references, reused across calls (the
            references of some tasks cost seconds).

    Returns:
        A JSON-ready dict: env_id, agent, kind, description, n_seeds, episodes_per_seed,
        n_episodes, secret_source, references (physical_limit, naive_baseline), returns
        (n_seeds lists of episode returns), score and normalised ({"iqm", "low", "high"}
        over seed means), normalised_mean ({"mean", "low", "high"} over seed means),
        episode_iqm (per-episode normalised IQM and CI, what the claim is compared with),
        claimed ({"n", "normalised"}: per-episode IQM and CI), flagged, flag_message,
        compute, curve (normalised, or None), eval_s.

    Raises:
        SubmissionError: the submission is refused (see ``submission.load_submission``).
        ValueError: bad n_seeds, episodes_per_seed or secret.
    """
    import jax

    from qsmgym.experiments.results import normalise

    _check_count("n_seeds", n_seeds)
    _check_count("episodes_per_seed", episodes_per_seed)
    _, source = secret_and_source(secret)
    if not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)  # the physics needs complex128 (as the envs' ensure_x64)
    sub = load_submission(path)
    task = sub.task
    params = task.default_params()
    cache = {} if references_cache is None else references_cache
    if sub.env_id not in cache:
        cache[sub.env_id] = task.references(params)
    refs = cache[sub.env_id]
    seeds = evaluation_seeds(sub.env_id, sub.agent, int(n_seeds), secret)
    start = time.perf_counter()
    returns = episode_returns(sub, task, params, seeds, int(episodes_per_seed))
    eval_s = time.perf_counter() - start
    if not np.all(np.isfinite(returns)):
        raise RuntimeError(f"{sub.env_id}/{sub.agent}: non-finite returns in re-evaluation")
    score, norm = normalise(returns, refs)  # (n_seeds, episodes_per_seed)
    measured_episodes = _ci(norm.reshape(-1))
    claimed = _ci(normalise(sub.claimed_returns, refs)[1])
    message = flag(claimed, measured_episodes)
    curve = None
    if "curve" in sub.data:
        c = sub.data["curve"]
        curve = {"env_steps": list(c["env_steps"]), "label": c["label"],
                 "normalised": normalise(np.asarray(c["returns"], np.float64), refs)[1].tolist()}
    return {
        "env_id": sub.env_id, "agent": sub.agent, "kind": sub.kind,
        "description": sub.data["agent"]["description"], "folder": sub.folder.name,
        "n_seeds": int(n_seeds), "episodes_per_seed": int(episodes_per_seed),
        "n_episodes": int(n_seeds) * int(episodes_per_seed), "secret_source": source,
        "references": {"physical_limit": float(refs["physical_limit"]),
                       "naive_baseline": float(refs["naive_baseline"])},
        "returns": returns.tolist(), "score": _ci(score.mean(axis=1)), "normalised": _ci(norm.mean(axis=1)),
        "normalised_mean": _ci(norm.mean(axis=1), np.mean), "episode_iqm": measured_episodes,
        "claimed": {"n": int(sub.claimed_returns.size), "normalised": claimed},
        "flagged": message is not None, "flag_message": message,
        "compute": dict(sub.data["compute"]), "curve": curve, "eval_s": eval_s,
    }


def find_submissions(root) -> list[Path]:
    """Every folder under ``root`` holding a submission.json, sorted (symlinks not followed)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root must be a folder of submissions, got {str(root)!r}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        if "submission.json" in filenames:
            found.append(Path(dirpath))
    return sorted(found)


def score_all(root, *, n_seeds: int = DEFAULT_SEEDS, episodes_per_seed: int = DEFAULT_EPISODES_PER_SEED,
              secret: str | None = None, log=None) -> dict[str, Any]:
    """Score every submission under ``root``; refused ones are listed with their reason.

    Returns:
        {"secret_source", "n_seeds", "episodes_per_seed", "results": [score dicts, sorted by task then
        normalised IQM descending], "refused": [{"path", "error"}]}.
    """
    from qsmgym.leaderboard.submission import SubmissionError

    refs: dict = {}
    results, refused = [], []
    for folder in find_submissions(root):
        try:
            r = score_submission(folder, n_seeds=n_seeds, episodes_per_seed=episodes_per_seed,
                                 secret=secret, references_cache=refs)
            r["path"] = str(folder.relative_to(Path(root)))
            results.append(r)
            if log:
                log(f"{r['env_id']:34s} {r['agent']:28s} normalised {r['normalised']['iqm']:.4f} "
                    f"[{r['normalised']['low']:.4f}, {r['normalised']['high']:.4f}]"
                    + (f"  {r['flag_message']}" if r["flagged"] else ""))
        except SubmissionError as exc:
            refused.append({"path": str(folder.relative_to(Path(root))), "error": str(exc)})
            if log:
                log(f"REFUSED {folder}: {exc}")
    results.sort(key=lambda r: (r["env_id"], -r["normalised"]["iqm"]))
    return {"secret_source": secret_and_source(secret)[1], "n_seeds": int(n_seeds),
            "episodes_per_seed": int(episodes_per_seed),
            "results": results, "refused": refused}
