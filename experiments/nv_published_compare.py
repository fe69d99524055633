"""qsensoropt's published NV-DC-24 curves against our filter and against qsensoropt 1.1.0 itself.

The spec's anchors (shared/reference/bayesian-magnetometry.md section 7: MSE(20) of the NN
9.36e-4, static 6.41e-4, PGH 6.51e-3, sigma^-1 3.57e-3) are rows of the result CSVs in
qsensoropt's source distribution (``examples/nv_center_dc/data``). The same sdist ships the two
trained policies behind the NN and static curves (``examples/nv_center_dc/trained_models``). So
the published numbers can be checked policy by policy: evaluate the shipped policies, and the
two heuristics, in our core and in qsensoropt 1.1.0, and compare MSE(n) for n = 1..20 with
the published curves.

    bash experiments/qsensoropt_venv.sh     # the venv, and the sdist in .venv-qsensoropt/sdist
    python -m qsmgym.experiments.nv_published_compare --runs 5 --episodes 65536 \\
        --particles 480 1920 --heuristic-records docs/results/nv-dc-24/heuristics/summary.json \\
        --out-dir docs/results/nv-dc-24/published
    python -m qsmgym.experiments.nv_published_compare --runs 5 --episodes 65536 --resample-fraction 0.98 \\
        --batch 2048 --heuristic-records docs/results/nv-dc-24/heuristics-published-settings/summary.json \\
        --out-dir docs/results/nv-dc-24/published-settings

``--resample-fraction 0.98 --batch 2048`` evaluates as the published curves were made: qsensoropt
1.0.0's full-batch resampling (``examples/nv_center_dc.py`` passes ``resample_fraction=0.98``;
1.1.0's default is per-episode resampling) in batches of 2048 episodes, on both sides (ours
then runs the JAX filter: the native kernel decides per filter).

Per (policy, implementation, particle count) it makes R runs of E fresh episodes:
- ours, static and NN: ``model_aware_pf.evaluate`` (float32 filter, as in training and in
  the side-by-side; the native kernel on a CPU), the shipped v_k and network weights, key
  PRNGKey(KEY_OFFSET + r);
- ours, sigma^-1 and PGH: the env's float64 core (``nv_heuristics_compare.run_ours``);
- qsensoropt, static and NN (480 particles, its defaults): ``qsensoropt_nv_dc.py --policy-from``
  with seed KEY_OFFSET + r (the NN run also writes the weights our side loads);
- qsensoropt, sigma^-1 and PGH, and ours at 480 particles: read from ``--heuristic-records``
  (``nv_heuristics_compare``'s summary: 16 runs of 16,384 episodes a side) instead of rerun.
A group's MSE(n) is the mean of its runs; its standard error is the run-to-run standard
deviation over sqrt(R) (as in nv_heuristics_compare). ``ratio`` = MSE(n) / published(n), and
z(20) = (MSE(20) - published(20)) / se(20): the published curve has no error bar of its own
(its evaluation, 4096 batches of 2048 episodes, makes it small).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qsmgym.experiments.nv_heuristics_compare import (
    DEFAULT_BATCH,
    add_batch_arguments,
    batch_from_arguments,
    nv_task,
)
from qsmgym.experiments.nv_heuristics_compare import run_ours as run_ours_heuristic
from qsmgym.experiments.nv_side_by_side import QSENSOROPT_SCRIPT, _subprocess_json, qsensoropt_python

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SDIST = REPO / ".venv-qsensoropt" / "sdist" / "qsensoropt-1.1.0"
EXAMPLE = "examples/nv_center_dc"
# nv_center_dc.py's first call: 24 measurements, batch 2048, rate 1e-4, log + cumulative loss.
_RUN = "batchsize_2048_num_steps_24_max_resources_24.00_ll_True_cl_True"
PUBLISHED_CSV = {  # our policy name -> the example's file (its sim_name + "_eval.csv")
    "nn": f"nv_center_meas_lr_0.0001_{_RUN}_eval.csv",
    "static": f"nv_center_meas_lr_0.0001_static_{_RUN}_eval.csv",
    "pgh": f"nv_center_meas_lr_0.0001_PGH_{_RUN}_eval.csv",
    "sigma_inverse": f"nv_center_meas_lr_0.0001_Sigma_{_RUN}_eval.csv",
}
SHIPPED_POLICY = {  # trained_models/: the static v_k (savetxt) and the NN (Keras SavedModel)
    "static": f"nv_center_meas_lr_0.0001_static_{_RUN}",
    "nn": f"nv_center_meas_lr_0.0001_{_RUN}",
}
# --out-dir gets a copy of the shipped static policy under this name (qsensoropt's v_k, as shipped)
SHIPPED_STATIC_COPY = "shipped_static_v.txt"
RECORDED_SUMMARY = REPO / "docs" / "results" / "nv-dc-24" / "published" / "summary.json"
# the same at the published curves' settings (--resample-fraction 0.98 --batch 2048; session 28)
RECORDED_SUMMARY_PUBLISHED_SETTINGS = RECORDED_SUMMARY.parents[1] / "published-settings" / "summary.json"
POLICIES = ("nn", "static", "pgh", "sigma_inverse")
TRAINED = ("nn", "static")
N_PUBLISHED = 20  # these CSVs stop at n = 20 (a first row n = 0 holds the prior's variance)
PRIOR_VARIANCE = 1.0 / 12.0
KEY_OFFSET = 2000
REPORT_N = (1, 5, 10, 12, 15, 18, 20)


def published_curves(sdist: Path) -> dict[str, np.ndarray]:
    """MSE(n), n = 1..20, of each policy's published CSV (columns Resources, MSE; rows
    Resources = 0, 1, ..., 20, the first the prior's variance 1/12).

    Raises:
        FileNotFoundError: a CSV is missing (the path in the message).
        ValueError: a CSV is not that table (the file named).
    """
    out = {}
    for name, fname in PUBLISHED_CSV.items():
        path = Path(sdist) / EXAMPLE / "data" / fname
        if not path.is_file():
            raise FileNotFoundError(f"published curve of {name!r} not found: {path} "
                                    f"(bash experiments/qsensoropt_venv.sh downloads the sdist)")
        lines = path.read_text().split()
        if not lines or lines[0].strip() != "Resources,MSE":
            raise ValueError(f"{path}: expected the header 'Resources,MSE', got {lines[:1]}")
        try:
            table = np.array([[float(x) for x in line.split(",")] for line in lines[1:]], np.float64)
        except ValueError as e:
            raise ValueError(f"{path}: not a table of numbers ({e})") from None
        if table.shape != (N_PUBLISHED + 1, 2) or not np.array_equal(table[:, 0], np.arange(N_PUBLISHED + 1)):
            raise ValueError(f"{path}: expected rows Resources = 0..{N_PUBLISHED}, got {table[:, 0].tolist()}")
        if not math.isclose(table[0, 1], PRIOR_VARIANCE, rel_tol=1e-9):
            raise ValueError(f"{path}: row 0 should be the prior's variance 1/12, got {float(table[0, 1])!r}")
        if not np.all(np.isfinite(table[1:, 1]) & (table[1:, 1] > 0)):
            raise ValueError(f"{path}: MSE values must be finite and > 0")
        out[name] = table[1:, 1]
    return out


def shipped_policy_path(sdist: Path, mode: str) -> Path:
    """Where the sdist keeps the trained policy ``mode`` ("static": a text file, "nn": a directory)."""
    return Path(sdist) / EXAMPLE / "trained_models" / SHIPPED_POLICY[mode]


def static_controls(sdist: Path) -> np.ndarray:
    """The shipped static policy's v_k (tau_k = |30 v_k + 1|), 24 floats."""
    from qsmgym.experiments.qsensoropt_nv_dc import read_static_controls

    return np.asarray(read_static_controls(str(shipped_policy_path(sdist, "static"))))


def run_ours_trained(mode: str, policy_params, n_particles: int, run: int, episodes: int,
                     resample_fraction: float | None = None, batch: int = DEFAULT_BATCH) -> dict:
    """One run of a given static / NN policy in our float32 evaluator (batches of ``batch``
    episodes, resampling together with ``resample_fraction``): a record with mse_n."""
    import jax

    from qsmgym.agents import model_aware_pf as mapf

    task = nv_task(n_particles, resample_fraction)
    # the native kernel decides resampling per filter: name the JAX filter rather than have
    # backend "auto" warn that it falls back to it
    config = mapf.ModelAwarePFConfig(policy=mode, dtype="float32",
                                     backend="auto" if resample_fraction is None else "jax")
    t0 = time.perf_counter()
    se = mapf.evaluate(config, task, task.default_params(), policy_params, jax.random.PRNGKey(KEY_OFFSET + run),
                       episodes, chunk=batch)["se"]
    return {"implementation": "qsm-gym", "policy": mode, "n_particles": n_particles, "seed": KEY_OFFSET + run,
            "n_eval": episodes, "eval_batch": batch, "resample_fraction": resample_fraction,
            "mse_n": se.mean(0, dtype=np.float64).tolist(), "wall_s": time.perf_counter() - t0,
            "backend": mapf.resolve_backend(config, task)}


def our_policy_params(mode: str, sdist: Path, weights: Path | None):
    """The shipped policy as our params: {"v": v_k} (static) or the TauNetwork params read from
    ``weights`` (Keras-order npz, written by qsensoropt_nv_dc.py --save-weights)."""
    import jax
    import jax.numpy as jnp

    from qsmgym.agents import model_aware_pf as mapf
    from qsmgym.experiments.nv_gradient_compare import load_weights, params_from_keras

    if mode == "static":
        return {"v": jnp.asarray(static_controls(sdist), jnp.float32)}
    if weights is None or not Path(weights).is_file():
        raise FileNotFoundError(f"the shipped NN's weights npz is missing: {weights} (the qsensoropt NN run "
                                f"writes it; or pass --nn-weights)")
    task = nv_task()
    template = mapf._Setup(mapf.ModelAwarePFConfig(policy="nn", dtype="float32"), task,
                           task.default_params()).init_policy(jax.random.PRNGKey(0))
    return params_from_keras(load_weights(Path(weights)), template, str(weights))


def run_theirs_trained(python: str, mode: str, sdist: Path, run: int, episodes: int, timeout: float | None,
                       save_weights: Path | None = None, resample_fraction: float | None = None,
                       batch: int = DEFAULT_BATCH) -> dict | None:
    """One qsensoropt 1.1.0 evaluation (480 particles) of a shipped policy."""
    cmd = [python, str(QSENSOROPT_SCRIPT), "--mode", mode, "--policy-from", str(shipped_policy_path(sdist, mode)),
           "--seed", str(KEY_OFFSET + run), "--n-eval", str(episodes), "--eval-batch", str(batch)]
    if resample_fraction is not None:
        cmd += ["--resample-fraction", repr(float(resample_fraction))]
    if save_weights is not None:
        cmd += ["--save-weights", str(save_weights)]
    rec = _subprocess_json(cmd, f"qsensoropt {mode} shipped, run {run}", timeout)
    if rec is None:
        return None
    return {"implementation": "qsensoropt", "policy": mode, "n_particles": 480, "seed": rec["seed"],
            "n_eval": rec["n_eval"], "eval_batch": rec.get("eval_batch"),
            "resample_fraction": rec.get("resample_fraction"), "mse_n": rec["mse_n"], "wall_s": rec.get("eval_wall_s"),
            "qsensoropt_version": rec.get("qsensoropt_version")}


def heuristic_records(path: Path, resample_fraction: float | None = None) -> list[dict]:
    """Both sides' sigma^-1 / PGH runs (480 particles) of an nv_heuristics_compare summary.

    Raises:
        ValueError: not such a summary, or a run at another ``resample_fraction`` (a record
            without one ran at None, the default)."""
    data = json.loads(Path(path).read_text())
    try:
        recs = data["records"]
        out = []
        for side, implementation in (("ours", "qsm-gym"), ("qsensoropt", "qsensoropt")):
            for name in ("pgh", "sigma_inverse"):
                for r in recs[side][name]:
                    if r.get("resample_fraction") != resample_fraction:
                        raise ValueError(f"{path}: a {side} {name} run has resample_fraction="
                                         f"{r.get('resample_fraction')!r}, this comparison {resample_fraction!r}")
                    out.append({"implementation": implementation, "policy": name, "n_particles": 480,
                                "seed": r["seed"], "n_eval": r["n_eval"], "mse_n": r["mse_n"],
                                "resample_fraction": resample_fraction})
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: not an nv_heuristics_compare summary (missing {e})") from None
    return out


def summarise(records: list[dict], published: dict[str, np.ndarray]) -> list[dict]:
    """One row per (policy, implementation, n_particles): runs, episodes, mean and se of MSE(n)
    (n = 1..24), ratio = mean / published for n = 1..20, z20.

    Raises:
        ValueError: a group with fewer than 2 runs (no standard error), or a record's mse_n
            shorter than 20.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["policy"], r["implementation"], int(r["n_particles"])), []).append(r)
    rows = []
    for (policy, impl, n_p), recs in sorted(groups.items(), key=lambda kv: (POLICIES.index(kv[0][0]), kv[0][1],
                                                                           kv[0][2])):
        if len(recs) < 2:
            raise ValueError(f"{policy} / {impl} / {n_p} particles: need at least 2 runs for a standard error, "
                             f"got {len(recs)}")
        x = np.array([r["mse_n"] for r in recs], np.float64)
        if x.shape[1] < N_PUBLISHED:
            raise ValueError(f"{policy} / {impl}: mse_n has {x.shape[1]} entries, need >= {N_PUBLISHED}")
        mean, se = x.mean(0), x.std(0, ddof=1) / math.sqrt(len(recs))
        pub = published[policy]
        rows.append({"policy": policy, "implementation": impl, "n_particles": n_p, "runs": len(recs),
                     "episodes": int(sum(r["n_eval"] for r in recs)), "mse_n": mean.tolist(), "se_n": se.tolist(),
                     "ratio": (mean[:N_PUBLISHED] / pub).tolist(),
                     "z20": float((mean[N_PUBLISHED - 1] - pub[N_PUBLISHED - 1]) / se[N_PUBLISHED - 1])})
    return rows


def print_table(rows: list[dict], published: dict[str, np.ndarray]) -> None:
    head = " ".join(f"n={n:<3d}" for n in REPORT_N)
    print(f"\nMSE(n) / published(n) (published MSE(20): "
          + ", ".join(f"{k} {v[-1]:.3e}" for k, v in published.items()) + ")")
    print(f"{'policy':14s} {'implementation':11s} {'particles':>9s} {'runs':>4s}  {head}   MSE(20) +- se      z20")
    for r in rows:
        ratios = " ".join(f"{r['ratio'][n - 1]:5.3f}" for n in REPORT_N)
        print(f"{r['policy']:14s} {r['implementation']:11s} {r['n_particles']:9d} {r['runs']:4d}  {ratios}   "
              f"{r['mse_n'][N_PUBLISHED - 1]:.3e} +- {r['se_n'][N_PUBLISHED - 1]:.1e}  {r['z20']:5.1f}")


def _run_trained(args, py: str | None, nn_weights: Path | None, scratch: Path) -> list[dict]:
    """The static / NN rows of ``main``: qsensoropt's evaluations (if ``py``), then ours."""
    out: list[dict] = []
    for mode in [m for m in args.policies if m in TRAINED]:
        if py is not None:
            for r in range(args.runs):
                save = scratch / "shipped_nn_weights.npz" if mode == "nn" and nn_weights is None else None
                rec = run_theirs_trained(py, mode, args.sdist_dir, r, args.episodes, args.timeout, save,
                                         args.resample_fraction, args.batch)
                if rec is not None:
                    out.append(rec)
                    if save is not None and save.is_file():
                        nn_weights = save
        params = our_policy_params(mode, args.sdist_dir, nn_weights)
        for n_p in args.particles:
            for r in range(args.runs):
                rec = run_ours_trained(mode, params, n_p, r, args.episodes, args.resample_fraction, args.batch)
                print(f"ours {mode} {n_p} particles run {r}: MSE(20) {rec['mse_n'][19]:.4e} ({rec['wall_s']:.0f} s)",
                      flush=True)
                out.append(rec)
    return out


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sdist-dir", type=Path, default=DEFAULT_SDIST,
                   help="qsensoropt 1.1.0's extracted sdist (default: where qsensoropt_venv.sh puts it)")
    p.add_argument("--runs", type=_positive, default=5, help="runs per group (>= 2)")
    p.add_argument("--episodes", type=_positive, default=65536, help="episodes a run (static and NN)")
    p.add_argument("--heuristic-episodes", type=_positive, default=16384, help="episodes a run (sigma^-1, PGH)")
    p.add_argument("--particles", type=_positive, nargs="+", default=[480], help="our filter's particle counts")
    p.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    p.add_argument("--heuristic-records", type=Path, default=None,
                   help="nv_heuristics_compare summary: both sides' sigma^-1/PGH runs at 480 particles "
                        "(otherwise ours are run and qsensoropt's heuristics are left out)")
    p.add_argument("--nn-weights", type=Path, default=None,
                   help="the shipped NN as a Keras-order npz (default: written by the qsensoropt run)")
    add_batch_arguments(p)
    p.add_argument("--qsensoropt-python", default=None)
    p.add_argument("--no-qsensoropt", action="store_true", help="ours only")
    p.add_argument("--timeout", type=float, default=1800.0, help="per qsensoropt run, seconds")
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    if args.runs < 2:
        p.error(f"--runs must be >= 2 (a standard error needs two runs), got --runs {args.runs}")
    args.batch = batch_from_arguments(p, args, args.episodes, args.heuristic_episodes)
    try:
        published = published_curves(args.sdist_dir)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    heuristics = [h for h in args.policies if h not in TRAINED]
    if args.heuristic_records is not None and heuristics:
        try:
            found = heuristic_records(args.heuristic_records, args.resample_fraction)
        except ValueError as e:
            p.error(str(e))
        records += [r for r in found if r["policy"] in heuristics]
    py = None if args.no_qsensoropt else qsensoropt_python(args.qsensoropt_python)
    if not args.no_qsensoropt and py is None:
        print("qsensoropt: skipped: no interpreter (--qsensoropt-python, $QSENSOROPT_PYTHON)", flush=True)
    nn_weights = args.nn_weights
    if "nn" in args.policies and py is None and nn_weights is None:
        p.error("--policies nn without qsensoropt needs --nn-weights (the shipped NN as a Keras-order npz, "
                "e.g. from qsensoropt_nv_dc.py --mode nn --policy-from ... --save-weights F)")
    scratch = Path(tempfile.mkdtemp(prefix="nv_published_"))  # the shipped NN's npz, removed at the end
    try:
        records += _run_trained(args, py, nn_weights, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name in heuristics:
        for n_p in args.particles:
            if n_p == 480 and args.heuristic_records is not None:
                continue  # in the records
            for r in range(args.runs):
                rec = run_ours_heuristic(name, r, args.heuristic_episodes, n_particles=n_p,
                                         resample_fraction=args.resample_fraction, batch=args.batch)
                rec.update(policy=name, n_particles=n_p)
                print(f"ours {name} {n_p} particles run {r}: MSE(20) {rec['mse_n'][19]:.4e} ({rec['wall_s']:.0f} s)",
                      flush=True)
                records.append(rec)
    rows = summarise(records, published)
    print_table(rows, published)
    if args.out_dir is not None:
        summary = {"command": [sys.executable, "-m", "qsmgym.experiments.nv_published_compare", *(argv or sys.argv[1:])],
                   "published": {k: v.tolist() for k, v in published.items()}, "rows": rows, "records": records}
        (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        if "static" in args.policies:  # 24 numbers (Apache-2.0, as the sdist): lets the tests rerun our side
            shutil.copyfile(shipped_policy_path(args.sdist_dir, "static"), args.out_dir / SHIPPED_STATIC_COPY)
        print(f"wrote {args.out_dir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
