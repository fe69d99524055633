"""sigma^-1 and PGH on NV-DC-24: ours against qsensoropt 1.1.0 run on the same machine, and
both against qsensoropt's published MSE(20) (shared/reference/bayesian-magnetometry.md
section 7, pass criterion 1: "untrained heuristics agree with a qsensoropt run at the same
settings").

    python -m qsmgym.experiments.nv_heuristics_compare --runs 16 --out-dir docs/results/nv-dc-24/heuristics
    python -m qsmgym.experiments.nv_heuristics_compare --runs 16 --records q/*.json   # reuse qsensoropt runs
    python -m qsmgym.experiments.nv_heuristics_compare --runs 16 --resample-fraction 0.98 --batch 2048 \
        --out-dir docs/results/nv-dc-24/heuristics-published-settings

``--resample-fraction 0.98 --batch 2048``: both sides resample whole batches of 2048 episodes once
98 % of a batch needs it (qsensoropt 1.0.0's ``check_resampling``; ``examples/nv_center_dc.py``
sets it), the evaluation that made the published curves. Without them: qsensoropt 1.1.0's
defaults, each episode's filter resampling on its own (batches of 1024, which then do not
change the results).

Each side makes R independent runs of 16,384 episodes (qsensoropt's evaluation size):
- ours through the env's functional core (float64 filter, unclipped tau;
  ``nv_heuristics.rollout_tau_policy``), run r with key PRNGKey(OUR_KEY_OFFSET + r);
- qsensoropt through experiments/qsensoropt_nv_dc.py ``--mode pgh|sigma --seed
  FIRST_SEED + r`` (its float32 filter, in its own virtual environment).

A side's MSE(n) is the mean of its runs' MSE(n). Its standard error is the run-to-run standard
deviation over sqrt(R): the runs are independent, so this needs no per-episode errors (the
qsensoropt script keeps those only at n = 24), and it holds for the heavy-tailed squared
error as long as each run's mean is near normal (16,384 episodes each). Agreement at n = 20
and n = 24: the two-sample z-test |ours - theirs| <= 1.96 sqrt(se_ours^2 + se_theirs^2).
The published value has no standard error of its own; ``published_z`` uses ours.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from qsmgym.experiments.nv_side_by_side import QSENSOROPT_SCRIPT, _subprocess_json, qsensoropt_python

HEURISTICS = {"sigma_inverse": "sigma", "pgh": "pgh"}  # our name -> qsensoropt_nv_dc.py --mode
OUR_KEY_OFFSET = 1000
FIRST_SEED = 11
STEPS = (20, 24)  # MSE(n) compared: the published n and the horizon
# The recorded comparison (session 19) that `qsm reproduce belliardo2024` and the slow heuristic
# tests read qsensoropt's runs from; absent from an installed (non-checkout) package.
RECORDED_SUMMARY = Path(__file__).resolve().parents[1] / "docs" / "results" / "nv-dc-24" / "heuristics" / "summary.json"
# The same at the published curves' evaluation settings (session 28): batches of 2048 episodes
# that resample together once 98 % of a batch needs it (qsensoropt 1.0.0; see the module doc).
PUBLISHED_SETTINGS = {"resample_fraction": 0.98, "batch": 2048}
DEFAULT_BATCH = 1024  # episodes a batch without --batch (per-episode resampling: changes no result)
RECORDED_SUMMARY_PUBLISHED_SETTINGS = RECORDED_SUMMARY.parents[1] / "heuristics-published-settings" / "summary.json"
Z95 = 1.959963984540054


@functools.lru_cache(maxsize=None)
def nv_task(n_particles: int = 480, resample_fraction: float | None = None):
    """NV-DC-24's BayesianMagnetometry with a filter of ``n_particles`` (480 as in the spec) and
    ``resample_fraction`` (None: per-episode resampling, qsensoropt 1.1.0), one object per
    setting: the compiled rollout and evaluation programs are cached per task object, so the
    runs that share it compile once."""
    from qsmgym.envs.bayesian_magnetometry import BayesianMagnetometry

    return BayesianMagnetometry(n_particles=n_particles, resample_fraction=resample_fraction)


def run_ours(name: str, run: int, episodes: int, n_particles: int = 480, resample_fraction: float | None = None,
             batch: int = DEFAULT_BATCH) -> dict:
    """One run of our heuristic ``name`` (episodes x 24 measurements, a filter of
    ``n_particles``, vmapped in batches of ``batch``, which resample together with
    ``resample_fraction``): a record with mse_n."""
    import jax

    from qsmgym.agents.nv_heuristics import policy_by_name, rollout_tau_policy

    task = nv_task(n_particles, resample_fraction)
    t0 = time.perf_counter()
    se = np.asarray(rollout_tau_policy(task, task.default_params(), policy_by_name(name),
                                       jax.random.PRNGKey(OUR_KEY_OFFSET + run), episodes, chunk=batch)["se"],
                    np.float64)
    return {"implementation": "qsm-gym", "mode": HEURISTICS[name], "seed": OUR_KEY_OFFSET + run,
            "n_eval": episodes, "eval_batch": batch, "resample_fraction": resample_fraction,
            "n_particles": n_particles, "mse_n": se.mean(0).tolist(), "wall_s": time.perf_counter() - t0}


def run_theirs(python: str, name: str, seed: int, episodes: int, timeout: float | None,
               resample_fraction: float | None = None, batch: int = DEFAULT_BATCH) -> dict | None:
    cmd = [python, str(QSENSOROPT_SCRIPT), "--mode", HEURISTICS[name], "--seed", str(seed),
           "--n-eval", str(episodes), "--eval-batch", str(batch)]
    if resample_fraction is not None:
        cmd += ["--resample-fraction", repr(float(resample_fraction))]
    return _subprocess_json(cmd, f"qsensoropt {HEURISTICS[name]} seed {seed}", timeout)


def side_stats(records: list[dict], n: int) -> dict:
    """Mean over runs of MSE(n) (n = 1..24), its standard error (run-to-run sd / sqrt(R)) and R."""
    if len(records) < 2:
        raise ValueError(f"need at least 2 runs a side for a standard error, got {len(records)}")
    x = np.array([r["mse_n"][n - 1] for r in records], np.float64)
    return {"mean": float(x.mean()), "se": float(x.std(ddof=1) / math.sqrt(x.size)), "runs": int(x.size),
            "episodes": int(sum(r["n_eval"] for r in records))}


def compare(ours: list[dict], theirs: list[dict], published: float | None, steps=STEPS) -> dict:
    """Per n in steps: both sides' stats, z = (ours - theirs)/sqrt(se_o^2 + se_t^2), agree =
    |z| <= 1.96, ours/theirs; at n = 20 also the published value, ours/published and
    published_z = (ours - published)/se_ours."""
    out = {}
    for n in steps:
        o, t = side_stats(ours, n), side_stats(theirs, n)
        z = (o["mean"] - t["mean"]) / math.hypot(o["se"], t["se"])
        row = {"ours": o, "qsensoropt": t, "z": z, "agree": bool(abs(z) <= Z95), "ratio": o["mean"] / t["mean"]}
        if published is not None and n == 20:
            row.update(published=published, ratio_published=o["mean"] / published,
                       published_z=(o["mean"] - published) / o["se"],
                       qsensoropt_published_z=(t["mean"] - published) / t["se"])
        out[n] = row
    return out


def load_records(paths: list[str], resample_fraction: float | None = None) -> dict[str, list[dict]]:
    """qsensoropt_nv_dc.py result JSONs (mode pgh or sigma) by our heuristic name; other modes,
    files of ours (implementation qsm-gym) and runs at another ``resample_fraction`` (absent:
    None, the script's default) are refused."""
    by_mode = {v: k for k, v in HEURISTICS.items()}
    out: dict[str, list[dict]] = {}
    for path in paths:
        r = json.loads(Path(path).read_text())
        if r.get("implementation") == "qsm-gym" or r.get("mode") not in by_mode:
            raise ValueError(f"--records takes qsensoropt_nv_dc.py results of mode pgh or sigma, got "
                             f"mode={r.get('mode')!r} in {path}")
        if r.get("resample_fraction") != resample_fraction:
            raise ValueError(f"--records: {path} was run with resample_fraction={r.get('resample_fraction')!r}, "
                             f"this comparison has --resample-fraction {resample_fraction!r}")
        out.setdefault(by_mode[r["mode"]], []).append(_slim(r))
    return out


def _slim(r: dict) -> dict:
    """The keys kept in summary.json (the per-episode errors at n = 24 are dropped)."""
    keys = ("implementation", "mode", "seed", "n_eval", "eval_batch", "resample_fraction", "n_particles", "mse_n",
            "wall_s", "eval_wall_s", "loadavg_1m_start", "qsensoropt_version", "tensorflow_version")
    return {k: r[k] for k in keys if k in r}


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    """``--resample-fraction F`` and ``--batch B``, as this script and nv_published_compare take them."""
    p.add_argument("--resample-fraction", type=float, default=None, metavar="F",
                   help="both sides: a batch resamples all its filters once a fraction F of them needs it "
                        "(0.98 with --batch 2048: the published curves' evaluation); default: each episode on "
                        "its own (qsensoropt 1.1.0)")
    p.add_argument("--batch", type=int, default=None,
                   help="episodes a batch, both sides; must divide the episodes of a run; needed with "
                        "--resample-fraction (default without: 1024, which then changes nothing)")


def batch_from_arguments(p: argparse.ArgumentParser, args: argparse.Namespace, *episodes: int) -> int:
    """The batch size of ``add_batch_arguments``' options (DEFAULT_BATCH if not given), after checking them
    against the runs' ``episodes``; ``p.error`` names the option and value otherwise."""
    fraction, batch = args.resample_fraction, args.batch
    if fraction is not None and not 0 < fraction <= 1:
        p.error(f"--resample-fraction must lie in (0, 1], got {fraction!r}")
    if fraction is not None and batch is None:
        p.error("--resample-fraction needs --batch (the episodes that resample together)")
    if batch is None:
        return DEFAULT_BATCH
    if batch < 1 or any(n % batch for n in episodes):
        p.error(f"--batch must divide the episodes of a run {list(episodes)} and be positive, got --batch {batch}")
    return batch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=16, help="runs a side and heuristic (>= 2)")
    p.add_argument("--episodes", type=int, default=16384, help="episodes a run")
    p.add_argument("--heuristics", nargs="+", choices=sorted(HEURISTICS), default=["pgh", "sigma_inverse"])
    p.add_argument("--qsensoropt-python", default=None)
    p.add_argument("--no-qsensoropt", action="store_true", help="ours only (no comparison)")
    p.add_argument("--records", nargs="+", default=None,
                   help="qsensoropt_nv_dc.py results to use instead of running qsensoropt")
    add_batch_arguments(p)
    p.add_argument("--timeout", type=float, default=1800.0, help="per qsensoropt run, seconds")
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)
    if args.runs < 2 or args.episodes < 1:
        p.error(f"--runs must be >= 2 and --episodes >= 1, got --runs {args.runs} --episodes {args.episodes}")
    batch = batch_from_arguments(p, args, args.episodes)
    from qsmgym.envs.bayesian_magnetometry import QSENSOROPT_MSE20

    theirs = load_records(args.records, args.resample_fraction) if args.records else {}
    py = None
    if not args.records and not args.no_qsensoropt:
        py = qsensoropt_python(args.qsensoropt_python)
        if py is None:
            print("qsensoropt: skipped: no interpreter (--qsensoropt-python, $QSENSOROPT_PYTHON)", flush=True)
    ours: dict[str, list[dict]] = {}
    for name in args.heuristics:
        for r in range(args.runs):
            rec = run_ours(name, r, args.episodes, resample_fraction=args.resample_fraction, batch=batch)
            print(f"[ours {name} run {r}] MSE(20) {rec['mse_n'][19]:.4e}  MSE(24) {rec['mse_n'][23]:.4e}  "
                  f"{rec['wall_s']:.0f} s", flush=True)
            ours.setdefault(name, []).append(rec)
            if py:
                t = run_theirs(py, name, FIRST_SEED + r, args.episodes, args.timeout, args.resample_fraction,
                               batch)
                theirs.setdefault(name, []).extend([_slim(t)] if t else [])
    results = {}
    for name in args.heuristics:
        if len(theirs.get(name, [])) >= 2:
            results[name] = compare(ours[name], theirs[name], QSENSOROPT_MSE20.get(name))
        else:
            results[name] = {n: {"ours": side_stats(ours[name], n)} for n in STEPS}
    print()
    print(f"{'heuristic':14s} {'n':>3s} {'ours':>22s} {'qsensoropt here':>22s} {'z':>6s}  agree  published")
    for name, rows in results.items():
        for n, row in rows.items():
            o = row["ours"]
            t = row.get("qsensoropt")
            ts = f"{t['mean']:.3e} +- {t['se']:.1e}" if t else "-"
            pub = f"{row['published']:.2e} (ours/pub {row['ratio_published']:.2f})" if "published" in row else ""
            z = f"{row['z']:6.2f}" if t else "     -"
            print(f"{name:14s} {n:3d} {o['mean']:.3e} +- {o['se']:.1e} {ts:>22s} {z}  "
                  f"{('yes' if row.get('agree') else 'NO') if t else '-':5s}  {pub}")
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps({
            "command": ["python", "-m", "qsmgym.experiments.nv_heuristics_compare", *(argv or sys.argv[1:])],
            "loadavg_end": os.getloadavg(), "results": results,
            "records": {"ours": ours, "qsensoropt": theirs}}, indent=1))
        print(f"wrote {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
