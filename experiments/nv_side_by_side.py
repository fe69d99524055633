"""NV-DC-24 side by side: qsm-gym's model-aware agent against qsensoropt 1.1.0 at equal settings.

Spec: shared/reference/bayesian-magnetometry.md, section 7. The same problem on both sides:
T2 = inf, prior U(0, 1), N = 24 measurements, 480 particles, partial soft resampling (alpha
0.5, Ścibior–Wood on, N_eff < N/2), Liu–West beta = 0.98 with the coded jitter, float32;
static (tau_k = |30 v_k + 1|, v_k = k/24, InverseSqrtDecay(0.1)) and NN (5 x Dense(64),
tau = 30 |NN| + 1, preconditioned, InverseSqrtDecay(1e-3)) policies trained on log +
cumulative losses for 256 Adam steps at 256 episodes per step, keeping the better of two
128-step blocks; evaluation on 16,384 fresh episodes.

    python -m qsmgym.experiments.nv_side_by_side                      # 3 seeds, both libraries
    python -m qsmgym.experiments.nv_side_by_side --seeds 0 --no-qsensoropt --eval-episodes 4096

Every trained arm and seed runs in its own process (``--worker``), so compile time, seconds
per step and peak RSS are those of one training. qsensoropt runs through
experiments/qsensoropt_nv_dc.py with its own virtual environment's python (``--qsensoropt-python``,
else $QSENSOROPT_PYTHON, else /work/main/.venv-qsensoropt/bin/python); if that is missing the
qsensoropt rows are skipped with a message. Both write the same JSON keys: mode, steps, batch,
mse_n (MSE after each measurement), mse_final, mse_samples (per-episode SE at n = 24),
compile_s, sec_per_step, peak_mem_mb.

Our particle filter runs in the native C++ kernel (agents/pf_native.py) where it can
(``--backend auto``, the default, on a CPU); ``--backend jax`` times the JAX filter instead. The
record's "backend" says which ran.

Our ``sec_per_step`` is the wall time of the compiled training's second execution (the
first also pays one-time costs, as qsensoropt's warm-up steps do; until session 24 it was the
first, still recorded as ``sec_per_step_first_run``), less the NN's preconditioning fit
(timed separately, also on its second execution), divided by the number of Adam steps.
qsensoropt's is the median step time after its warm-up steps.
``compile_s`` is tracing + XLA compilation of the whole training program. Peak memory is the
worker's peak RSS. The heuristics (sigma^-1, PGH) run through the env's own float64 core.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_QSENSOROPT_PYTHON = "/work/main/.venv-qsensoropt/bin/python"
QSENSOROPT_SCRIPT = Path(__file__).resolve().parent / "qsensoropt_nv_dc.py"
EVAL_SEED_OFFSET = 1_000_003  # evaluation keys never used in training
MODES = ("static", "nn")
HEURISTICS = ("sigma_inverse", "pgh")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_ours(mode: str, seed: int, steps: int, batch: int, eval_episodes: int, baseline: str = "none",
             learning_rate: float | None = None, warmup_steps: int = 0, backend: str = "auto") -> dict:
    """Train and evaluate one arm in this process; returns the shared JSON record."""
    import jax

    from qsmgym.agents import model_aware_pf as mapf
    from qsmgym.envs.bayesian_magnetometry import BayesianMagnetometry

    task = BayesianMagnetometry()  # the NV-DC-24 defaults (section 7)
    params = task.default_params()
    config = mapf.ModelAwarePFConfig(policy=mode, iterations=steps, batch=batch,
                                     checkpoint_every=min(128, steps), dtype="float32",
                                     baseline=baseline, warmup_steps=warmup_steps, backend=backend)
    used = mapf.resolve_backend(config, task)
    hyper = mapf.default_hyper(mode)
    if learning_rate is not None:
        hyper["learning_rate"] = jax.numpy.asarray(learning_rate)
    key = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    train = jax.jit(mapf.make_train(config, task, params), compiler_options=mapf.compiler_options()).lower(key, hyper).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = jax.block_until_ready(train(key, hyper))
    first_s = time.perf_counter() - t0
    # the steady state, as qsensoropt's side reports it (the median step after its warm-up
    # steps): the same compiled training again; the first execution also paid one-time costs
    # (first touch of ~0.5 GB of buffers), kept in the record as first_run_s
    t0 = time.perf_counter()
    jax.block_until_ready(train(key, hyper))
    run_s = time.perf_counter() - t0
    pre_s = 0.0
    if mode == "nn":  # time the preconditioning fit alone (compiled and run once first) and leave it out
        pre = jax.jit(lambda k: mapf.precondition(config, task, params, k, hyper),
                      compiler_options=mapf.compiler_options()).lower(key).compile()
        jax.block_until_ready(pre(key))
        t0 = time.perf_counter()
        jax.block_until_ready(pre(key))
        pre_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    se = mapf.evaluate(config, task, params, result.policy_params,
                       jax.random.PRNGKey(EVAL_SEED_OFFSET + seed), eval_episodes)["se"]
    eval_s = time.perf_counter() - t0
    return {
        "implementation": "qsm-gym", "mode": mode, "seed": seed, "steps": steps, "batch": batch, "baseline": baseline,
        "learning_rate": float(hyper["learning_rate"]),
        "warmup_steps": warmup_steps,
        "mse_n": se.mean(0).tolist(), "mse_final": float(se[:, -1].mean()),
        "mse_samples": se[:, -1].tolist(), "median_se": float(np.median(se[:, -1])),
        "compile_s": compile_s, "sec_per_step": (run_s - pre_s) / steps, "run_s": run_s,
        "first_run_s": first_s, "sec_per_step_first_run": (first_s - pre_s) / steps,
        "precondition_s": pre_s, "eval_s": eval_s, "peak_mem_mb": _peak_mb(),
        "block_losses": np.asarray(result.block_losses).tolist(), "best_block": int(result.best_block),
        "jax_version": jax.__version__, "loadavg": os.getloadavg(),
        "sw_order": task.resample_config.sw_order,  # where the Ścibior–Wood factor is attached
        "backend": used,  # the particle filter that ran: "native" (C++ kernel) or "jax"
    }


def run_heuristic(name: str, seed: int, eval_episodes: int) -> dict:
    """sigma^-1 or PGH through the env's functional core (float64 filter, unclipped tau)."""
    import jax

    from qsmgym.agents.nv_heuristics import pgh_tau, rollout_tau_policy, sigma_inverse_tau
    from qsmgym.envs.bayesian_magnetometry import BayesianMagnetometry

    task = BayesianMagnetometry()
    policy = sigma_inverse_tau if name == "sigma_inverse" else pgh_tau
    t0 = time.perf_counter()
    se = np.asarray(rollout_tau_policy(task, task.default_params(), policy,
                                       jax.random.PRNGKey(EVAL_SEED_OFFSET + seed), eval_episodes)["se"])
    return {"implementation": "qsm-gym", "mode": name, "seed": seed, "steps": 0, "batch": 0,
            "mse_n": se.mean(0).tolist(), "mse_final": float(se[:, -1].mean()),
            "mse_samples": se[:, -1].tolist(), "median_se": float(np.median(se[:, -1])),
            "compile_s": float("nan"), "sec_per_step": float("nan"), "eval_s": time.perf_counter() - t0,
            "peak_mem_mb": _peak_mb(), "loadavg": os.getloadavg()}


def _subprocess_json(cmd: list[str], label: str, timeout: float | None) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        t0 = time.perf_counter()
        print(f"[{label}] {' '.join(cmd + ['--out', str(out)])}", flush=True)
        try:
            proc = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"[{label}] timed out after {timeout} s", flush=True)
            return None
        if proc.returncode != 0 or not out.exists():
            print(f"[{label}] failed (exit {proc.returncode}); last output:\n{(proc.stdout + proc.stderr)[-2000:]}",
                  flush=True)
            return None
        record = json.loads(out.read_text())
        record["wall_s"] = time.perf_counter() - t0
        print(f"[{label}] done in {record['wall_s']:.0f} s: MSE(24) {record['mse_final']:.3e}", flush=True)
        return record


def qsensoropt_python(flag: str | None) -> str | None:
    """The qsensoropt interpreter: the flag, else $QSENSOROPT_PYTHON, else the default path."""
    path = flag or os.environ.get("QSENSOROPT_PYTHON") or DEFAULT_QSENSOROPT_PYTHON
    return path if Path(path).exists() else None


def bootstrap_ci(x, seed: int = 0, n_boot: int = 2000) -> tuple[float, float, float]:
    """Mean and 95 % percentile-bootstrap CI, resampling the episodes (one seed or an
    untrained policy: the episodes are the only source of spread)."""
    x = np.asarray(x, np.float64)
    rng = np.random.default_rng(seed)
    means = np.array([x[rng.integers(0, x.size, x.size)].mean() for _ in range(n_boot)])
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(x.mean()), float(lo), float(hi)


def _seed_replicates(per_seed_means, per_seed_se, rng, n_boot: int) -> np.ndarray:
    """Two-stage bootstrap replicates of the mean over seeds: draw the seeds with replacement,
    then each drawn seed's episode mean from N(mean_s, se_s^2) (the episode stage, normal:
    16,384 episodes per seed make the exact resample indistinguishable and 1000x slower)."""
    m, se = np.asarray(per_seed_means, np.float64), np.asarray(per_seed_se, np.float64)
    idx = rng.integers(0, m.size, (n_boot, m.size))
    return (m[idx] + se[idx] * rng.standard_normal(idx.shape)).mean(axis=1)


def seed_bootstrap_ci(per_seed_samples, seed: int = 0, n_boot: int = 4000) -> tuple[float, float, float]:
    """Mean over seeds of the per-seed mean, with a 95 % two-stage (seeds, then episodes)
    percentile-bootstrap CI. With trained policies the seeds, not the episodes, carry most of
    the spread: pooling the episodes of 5 seeds and resampling them gives a CI that ignores
    which seeds happened to stall (what this file printed before session 14)."""
    samples = [np.asarray(x, np.float64) for x in per_seed_samples]
    if len(samples) < 2:
        raise ValueError(f"seed_bootstrap_ci needs >= 2 seeds, got {len(samples)}")
    means = [x.mean() for x in samples]
    se = [x.std(ddof=1) / np.sqrt(x.size) for x in samples]
    reps = _seed_replicates(means, se, np.random.default_rng(seed), n_boot)
    lo, hi = np.quantile(reps, [0.025, 0.975])
    return float(np.mean(means)), float(lo), float(hi)


def compare_arms(ours: list[dict], theirs: list[dict], seed: int = 0, n_boot: int = 4000) -> dict:
    """Ours against qsensoropt over seeds: the ratio of the seed means of MSE(24) with a
    two-stage bootstrap CI (each side resampled on its own), the medians of the per-seed
    MSE(24), and a two-sided Mann-Whitney U test on the per-seed MSE(24) (are the seed
    outcomes of one library shifted against the other's?)."""
    from scipy.stats import mannwhitneyu

    a = [np.asarray(r["mse_samples"], np.float64) for r in ours]
    b = [np.asarray(r["mse_samples"], np.float64) for r in theirs]
    ma, mb = np.array([x.mean() for x in a]), np.array([x.mean() for x in b])
    out = {"ratio": float(ma.mean() / mb.mean()), "median_ours": float(np.median(ma)),
           "median_theirs": float(np.median(mb)), "n_seeds": (len(a), len(b))}
    if len(a) >= 2 and len(b) >= 2:
        rng = np.random.default_rng(seed)
        sa = [x.std(ddof=1) / np.sqrt(x.size) for x in a]
        sb = [x.std(ddof=1) / np.sqrt(x.size) for x in b]
        ratios = _seed_replicates(ma, sa, rng, n_boot) / _seed_replicates(mb, sb, rng, n_boot)
        out["ratio_ci"] = tuple(float(v) for v in np.quantile(ratios, [0.025, 0.975]))
        out["mannwhitney_p"] = float(mannwhitneyu(ma, mb, alternative="two-sided").pvalue)
    return out


def summarise(records: list[dict]) -> dict:
    """Pool the seeds of one arm: MSE(n) mean curve; MSE(24) as the mean over seeds with a
    two-stage seed bootstrap CI (one record: an episode bootstrap); per-seed MSE(24); mean
    s/step and compile s; max peak MB."""
    per_seed = [np.asarray(r["mse_samples"]) for r in records]
    samples = np.concatenate(per_seed)
    if len(per_seed) >= 2:
        mean, lo, hi = seed_bootstrap_ci(per_seed)
        ci_kind = "seeds"
    else:
        mean, lo, hi = bootstrap_ci(samples)
        ci_kind = "episodes"
    curves = np.asarray([r["mse_n"] for r in records])
    def nanmean(k):  # NaN for the heuristics (no training), without numpy's empty-slice warning
        v = np.asarray([r.get(k, np.nan) for r in records], np.float64)
        return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")

    return {"seeds": [r.get("seed") for r in records], "mse24": mean, "mse24_ci": (lo, hi), "ci_kind": ci_kind,
            "mse24_per_seed": [r["mse_final"] for r in records], "mse_n": curves.mean(0).tolist(),
            "mse20": float(curves[:, 19].mean()), "median_se": float(np.median(samples)),
            "sec_per_step": nanmean("sec_per_step"), "compile_s": nanmean("compile_s"),
            "peak_mem_mb": float(np.nanmax([r["peak_mem_mb"] for r in records]))}


def merge_records(sources: list[tuple[str, dict[str, list[dict]]]]) -> dict[str, list[dict]]:
    """Join the records of several runs (e.g. seeds 0-4 and 5-14 from two sessions) arm by arm.
    Raises ValueError when one arm has the same seed twice (the two runs would be counted as
    independent)."""
    out: dict[str, list[dict]] = {}
    seen: dict[tuple[str, object], str] = {}
    for origin, records in sources:
        for arm, rs in records.items():
            for r in rs:
                key = (arm, r.get("seed"))
                if key in seen:
                    raise ValueError(f"arm {arm!r} has seed {r.get('seed')!r} in both {seen[key]} and {origin}")
                seen[key] = origin
                out.setdefault(arm, []).append(r)
    return out


def print_table(arms: dict[str, dict]) -> None:
    head = f"{'arm':<22}{'seeds':>6}  {'MSE(24) [95% CI]':<34}{'MSE(20)':>10}{'median SE':>11}" \
           f"{'s/step':>9}{'compile s':>10}{'peak MB':>9}"
    print(head)
    print("-" * len(head))
    for name, s in arms.items():
        ci = f"{s['mse24']:.3e} [{s['mse24_ci'][0]:.2e}, {s['mse24_ci'][1]:.2e}]"
        f = lambda v, fmt: "-" if not np.isfinite(v) else format(v, fmt)  # noqa: E731
        print(f"{name:<22}{len(s['seeds']):>6}  {ci:<34}{s['mse20']:>10.3e}{s['median_se']:>11.2e}"
              f"{f(s['sec_per_step'], '.4f'):>9}{f(s['compile_s'], '.1f'):>10}{s['peak_mem_mb']:>9.0f}")
    print("CI: 95 % two-stage bootstrap over seeds, then episodes (one record: over its episodes).")
    print("\nMSE(n), n = 1..24 (mean over seeds):")
    for name, s in arms.items():
        print(f"{name:<22}" + " ".join(f"{v:.2e}" for v in s["mse_n"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--qsensoropt-seeds", type=int, nargs="+", default=None,
                        help="seeds for qsensoropt (default: --seeds)")
    parser.add_argument("--eval-episodes", type=int, default=16384)
    parser.add_argument("--qsensoropt-python", default=None)
    parser.add_argument("--no-qsensoropt", action="store_true")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="trained arms to run (default: static nn)")
    parser.add_argument("--no-heuristics", action="store_true", help="skip the sigma^-1 and PGH rows")
    parser.add_argument("--baseline", choices=("none", "batch_mean"), default="none",
                        help="score-term baseline of our agent (spec NV-DC-24: none)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="initial Adam rate of both sides (default: the spec's, 0.1 static / 1e-3 nn)")
    parser.add_argument("--learning-rate-ours-only", action="store_true",
                        help="leave qsensoropt at its spec rate when --learning-rate is given")
    parser.add_argument("--warmup-steps", type=int, default=0,
                        help="our agent's linear learning-rate warm-up (spec NV-DC-24 and qsensoropt: 0)")
    parser.add_argument("--backend", choices=("auto", "jax", "native"), default="auto",
                        help="our particle filter (model_aware_pf backend; auto: the native kernel on a CPU)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="per qsensoropt run, seconds")
    parser.add_argument("--out-dir", default=None, help="write summary.json (and the raw records) here")
    parser.add_argument("--from-summary", nargs="+", default=None,
                        help="print the table from earlier summary.json files (their records joined arm by "
                             "arm, e.g. seeds 0-4 and 5-14 of two runs) instead of running anything; "
                             "PATH#ARM[,ARM...] takes only the named arms of that file, e.g. "
                             "'summary.json#qsensoropt nn' (quote it: arm names have a space)")
    parser.add_argument("--records", nargs="+", default=None,
                        help="result JSONs (our --worker outputs or experiments/qsensoropt_nv_dc.py's) to "
                             "tabulate; with them nothing is run")
    parser.add_argument("--worker", choices=MODES + HEURISTICS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("steps", "batch", "eval_episodes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")

    if args.worker:  # one arm in this process
        if args.worker in MODES:
            record = run_ours(args.worker, args.seed, args.steps, args.batch, args.eval_episodes, args.baseline,
                              args.learning_rate, args.warmup_steps, args.backend)
        else:
            record = run_heuristic(args.worker, args.seed, args.eval_episodes)
        Path(args.out).write_text(json.dumps(record))
        return 0

    if args.from_summary:
        sources = []
        for spec in args.from_summary:
            path, _, arms = spec.partition("#")
            try:
                found = json.loads(Path(path).read_text())["records"]
            except (OSError, ValueError, KeyError) as exc:
                parser.error(f"--from-summary {path}: not a summary.json with records ({exc!r})")
            if arms:
                wanted = [a.strip() for a in arms.split(",")]
                missing = [a for a in wanted if a not in found]
                if missing:
                    parser.error(f"--from-summary {spec}: {path} has no arm {missing[0]!r} (it has {sorted(found)})")
                found = {a: found[a] for a in wanted}
            sources.append((spec, found))
        try:
            records = merge_records(sources)
        except ValueError as exc:
            parser.error(f"--from-summary: {exc}")
    elif args.records:
        records = {}
    else:
        records = run_arms(args)
    for path in args.records or []:  # ours carry implementation="qsm-gym"; qsensoropt's do not
        r = json.loads(Path(path).read_text())
        side = "ours" if r.get("implementation") == "qsm-gym" else "qsensoropt"
        records.setdefault(f"{side} {r['mode']}", []).append(r)
    records = {k: records[k] for k in sorted(records, key=_arm_order)}
    report(records, args)
    return 0


def _arm_order(name: str) -> tuple:
    side, mode = name.split(" ", 1)
    order = HEURISTICS + MODES
    return (order.index(mode) if mode in order else len(order), side != "ours")


def run_arms(args) -> dict[str, list[dict]]:
    """Run our heuristics and trained arms (one process each) and, unless told otherwise,
    qsensoropt's; returns the records per arm."""
    me = [sys.executable, "-m", "qsmgym.experiments.nv_side_by_side"]
    common = ["--steps", str(args.steps), "--batch", str(args.batch), "--eval-episodes", str(args.eval_episodes),
              "--baseline", args.baseline, "--warmup-steps", str(args.warmup_steps), "--backend", args.backend] + ([] if args.learning_rate is None else
                                              ["--learning-rate", str(args.learning_rate)])
    print(f"NV-DC-24 side by side: {args.steps} Adam steps at batch {args.batch}, {args.eval_episodes} evaluation "
          f"episodes, seeds {args.seeds}; host {os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)
    records: dict[str, list[dict]] = {}
    for name in ([] if args.no_heuristics else HEURISTICS):
        r = _subprocess_json(me + common + ["--worker", name, "--seed", "0"], f"ours {name}", None)
        records[f"ours {name}"] = [r] if r else []

    py = None if args.no_qsensoropt else qsensoropt_python(args.qsensoropt_python)
    if args.no_qsensoropt:
        print("qsensoropt: skipped (--no-qsensoropt)")
    elif py is None:
        print(f"qsensoropt: skipped: no interpreter at --qsensoropt-python / $QSENSOROPT_PYTHON / "
              f"{DEFAULT_QSENSOROPT_PYTHON}")
    elif not QSENSOROPT_SCRIPT.exists():
        print(f"qsensoropt: skipped: {QSENSOROPT_SCRIPT} is missing")
        py = None
    # Interleaved (ours seed s, qsensoropt seed s, ours seed s+1, ...) so that a change in the
    # machine's load during the session touches both sides alike.
    for mode in args.modes:
        ours_seeds = list(args.seeds)
        their_seeds = list(args.qsensoropt_seeds or args.seeds) if py else []
        for i in range(max(len(ours_seeds), len(their_seeds))):
            if i < len(ours_seeds):
                seed = ours_seeds[i]
                r = _subprocess_json(me + common + ["--worker", mode, "--seed", str(seed)],
                                     f"ours {mode} seed {seed}", None)
                records.setdefault(f"ours {mode}", []).extend([r] if r else [])
            if i < len(their_seeds):
                seed = their_seeds[i]
                cmd = [py, str(QSENSOROPT_SCRIPT), "--mode", mode, "--steps", str(args.steps), "--batch",
                       str(args.batch), "--seed", str(seed), "--n-eval", str(args.eval_episodes)]
                if args.learning_rate is not None and not args.learning_rate_ours_only:
                    cmd += ["--learning-rate", str(args.learning_rate)]
                r = _subprocess_json(cmd, f"qsensoropt {mode} seed {seed}", args.timeout)
                records.setdefault(f"qsensoropt {mode}", []).extend([r] if r else [])
    return records


def report(records: dict[str, list[dict]], args) -> dict:
    """Print the table and the pass/fail lines; write summary.json to --out-dir."""
    arms = {name: summarise(rs) for name, rs in records.items() if rs}
    print()
    print_table(arms)
    print(f"\nload average at the end: {os.getloadavg()}")
    verdicts = {}
    for mode in MODES:
        ours, theirs = arms.get(f"ours {mode}"), arms.get(f"qsensoropt {mode}")
        if ours and theirs:
            speedup = theirs["sec_per_step"] / ours["sec_per_step"]
            cmp = compare_arms(records[f"ours {mode}"], records[f"qsensoropt {mode}"])
            mse_ok = ours["mse24"] <= theirs["mse24"]
            verdicts[mode] = {"mse24_ratio": cmp["ratio"], "speedup": speedup, "mse_ok": mse_ok,
                              "speed_ok": speedup >= 10, **cmp}
            ci = f" [{cmp['ratio_ci'][0]:.2f}, {cmp['ratio_ci'][1]:.2f}]" if "ratio_ci" in cmp else ""
            mw = f", Mann-Whitney p = {cmp['mannwhitney_p']:.2f}" if "mannwhitney_p" in cmp else ""
            print(f"{mode}: MSE(24) ours/qsensoropt = {cmp['ratio']:.2f}{ci} "
                  f"({'PASS' if mse_ok else 'FAIL'}: ours <= qsensoropt); per-seed median "
                  f"{cmp['median_ours']:.3e} vs {cmp['median_theirs']:.3e}{mw}; "
                  f"s/step speed-up = {speedup:.1f}x ({'PASS' if speedup >= 10 else 'FAIL'}: >= 10x)")
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps({"args": vars(args), "arms": arms, "verdicts": verdicts,
                                                      "records": records}, default=float))
        print(f"wrote {out / 'summary.json'}")
    return verdicts


if __name__ == "__main__":
    raise SystemExit(main())
