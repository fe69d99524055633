"""NV-DC-24: the NN's starting policy, ours against qsensoropt's, and what 256 Adam steps do to it.

Why (session 20): with the spec's rate 1e-3, qsensoropt's trained NN reduced the error faster
than ours over the first ~10 measurements (35 seeds a side, docs/results/nv-dc-24: median
MSE(5) 3.6e-2 against 5.9e-2, Mann-Whitney p = 0.004), while MSE(24) was alike. This script
asks whether the starting networks already differ. For each seed it builds both libraries'
preconditioned networks (the NN as ``train`` has it before its first Adam step: Glorot
initialisation, then the 12-epoch fit of o_0 to the resource ramp), and evaluates every one of
them with OUR core on the SAME evaluation episodes (one compiled program, fixed keys), so the two
columns differ only by the network. With ``--trained`` it also prints, for the same seeds, the
MSE of the networks the side-by-side runs trained from these starts.

Two stages, two interpreters (qsensoropt needs its own venv, experiments/qsensoropt_venv.sh):

    .venv-qsensoropt/bin/python experiments/nv_start_compare.py tf --seeds 0 35 --out D
    .venv/bin/python -m qsmgym.experiments.nv_start_compare ours --seeds 0 35 --out D \\
        --trained docs/results/nv-dc-24/summary.json docs/results/nv-dc-24/nn-seeds*/summary.json

The ``tf`` stage writes D/q{seed}.npz (Keras-order kernel, bias arrays w0, w1, ...; no pickle).
The ``ours`` stage writes D/summary.json (per seed and side: MSE(n), the preconditioning fit's
MSE on fresh inputs) and prints the comparison.

Stage ``trained`` (session 21) asks the other half: are qsensoropt's TRAINED networks as good in
our core as qsensoropt's own evaluation says? Per seed, after
``.venv-qsensoropt/bin/python experiments/qsensoropt_nv_dc.py --mode nn --seed S --out D/qsS.json
--save-weights D/qS.npz``:

    .venv/bin/python -m qsmgym.experiments.nv_start_compare trained --seeds 0 4 --episodes 16384 --out D

Stage ``same-start`` (sessions 21-22) trains OUR loop from qsensoropt's preconditioned network of
each seed (D/q{seed}.npz from the tf stage) and pairs it, per seed, with qsensoropt's network
trained from that start (T/q{seed}.npz from ``qsensoropt_nv_dc.py --save-weights``), both
evaluated in our core on the same episodes. Where T/qs{seed}.json holds qsensoropt's per-step
``train_losses``, the two loops' training losses are also compared in 32-step blocks.
``--join`` merges the summaries of separate seed ranges:

    .venv/bin/python -m qsmgym.experiments.nv_start_compare same-start --seeds 0 8 --out D --qsensoropt-trained T
    .venv/bin/python -m qsmgym.experiments.nv_start_compare same-start --join D1/same_start_summary.json \
        D2/same_start_summary.json --qsensoropt-trained T1 T2 --out D
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

EVAL_KEY = 5  # PRNGKey of the evaluation episodes (the same for every network)
FIT_KEY = 99  # PRNGKey of the fresh inputs the preconditioning fit is scored on
REPORT_N = (1, 3, 5, 8, 10, 15, 20, 24)


def _tf_stage(seeds: range, out: Path) -> None:
    import tensorflow as tf

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import nv_gradient_compare as G  # numpy only at import: fine in qsensoropt's venv
    import qsensoropt_nv_dc as Q  # the builders of the side-by-side runs

    for seed in seeds:
        tf.keras.utils.set_random_seed(seed)  # as qsensoropt_nv_dc.py's main does
        net = Q._make_trainable("nn")
        G.save_weights(out / f"q{seed}.npz", net.get_weights())
        print(f"tf: seed {seed} -> {out / f'q{seed}.npz'}", flush=True)


def evaluator(n_episodes: int, chunk: int = 1024, task=None):
    """(setup pieces, mse_n(policy_params) -> MSE(n) over fixed episodes, the same for every
    network: ``model_aware_pf.evaluate`` with key EVAL_KEY, compiled once). ``task``: NV-DC-24's
    BayesianMagnetometry() unless given (the tests pass a small one)."""
    import jax

    from qsmgym.agents import model_aware_pf as mapf
    from qsmgym.envs.bayesian_magnetometry import BayesianMagnetometry

    task = BayesianMagnetometry() if task is None else task
    params = task.default_params()
    config = mapf.ModelAwarePFConfig(policy="nn", dtype="float32")  # the side-by-side's NN arm
    setup = mapf._Setup(config, task, params)

    def mse_n(policy_params):
        return mapf.evaluate(config, task, params, policy_params, jax.random.PRNGKey(EVAL_KEY), n_episodes,
                             chunk=chunk)["se"].mean(axis=0, dtype=np.float64)

    return config, task, params, setup, mse_n


def _network(path: Path, template) -> dict:
    """The Keras-order network in ``path`` (a tf stage or --save-weights file) as our params."""
    from qsmgym.experiments.nv_gradient_compare import load_weights, params_from_keras

    return params_from_keras(load_weights(path), template, str(path))


def _ours_stage(seeds: range, out: Path, n_episodes: int, trained: list[str], task=None) -> dict:
    import jax
    import jax.numpy as jnp

    from qsmgym.agents import model_aware_pf as mapf

    config, task, params, setup, mse_n = evaluator(n_episodes, task=task)
    template = setup.init_policy(jax.random.PRNGKey(0))
    hyper = mapf.default_hyper("nn")
    precondition = jax.jit(lambda k: mapf.precondition(config, task, params, k, hyper)[0])
    x = jax.random.uniform(jax.random.PRNGKey(FIT_KEY), (16384, setup.n_features), jnp.float32, -1.0, 1.0)
    fit = jax.jit(lambda p: jnp.mean((jax.vmap(lambda xi: setup.network.apply(p, xi))(x)[:, 0] - (x[:, -1] + 1) / 2) ** 2))
    rows = []
    for seed in seeds:
        weights = out / f"q{seed}.npz"
        if not weights.exists():
            raise FileNotFoundError(f"{weights} is missing: run the tf stage for seed {seed} first")
        k_init = jax.random.split(jax.random.PRNGKey(seed))[0]  # make_train's split of the seed
        for side, p in (("ours", precondition(k_init)), ("qsensoropt", _network(weights, template))):
            rows.append({"seed": seed, "side": side, "fit_mse": float(fit(p)),
                         "mse_n": [float(v) for v in np.asarray(mse_n(p))]})
        a, b = rows[-2]["mse_n"], rows[-1]["mse_n"]
        k = min(5, len(a))
        print(f"seed {seed}: MSE({k}) ours {a[k - 1]:.3e} qsensoropt {b[k - 1]:.3e}; "
              f"MSE({len(a)}) {a[-1]:.3e} {b[-1]:.3e}", flush=True)
    summary = {"n_episodes": n_episodes, "eval_key": EVAL_KEY, "rows": rows,
               "comparison": compare(rows), "trained": trained_mse(trained, [s for s in seeds])}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print_report(summary)
    return summary


def compare(rows: list[dict]) -> dict:
    """Per n: each side's mean and median over seeds and the Mann-Whitney p (two-sided)."""
    from scipy.stats import mannwhitneyu

    sides = {s: np.array([r["mse_n"] for r in rows if r["side"] == s]) for s in ("ours", "qsensoropt")}
    fits = {s: np.array([r["fit_mse"] for r in rows if r["side"] == s]) for s in ("ours", "qsensoropt")}
    if any(len(v) == 0 for v in sides.values()):
        raise ValueError("rows must hold both sides, 'ours' and 'qsensoropt'")
    out = {"fit_mse": {s: float(v.mean()) for s, v in fits.items()}, "per_n": {}}
    for n in range(1, sides["ours"].shape[1] + 1):
        a, b = sides["ours"][:, n - 1], sides["qsensoropt"][:, n - 1]
        p = 1.0 if np.array_equal(np.sort(a), np.sort(b)) else float(mannwhitneyu(a, b).pvalue)
        out["per_n"][str(n)] = {"ours_mean": float(a.mean()), "ours_median": float(np.median(a)),
                                "qsensoropt_mean": float(b.mean()), "qsensoropt_median": float(np.median(b)),
                                "mann_whitney_p": p}
    return out


def trained_mse(paths: list[str], seeds: list[int]) -> dict:
    """Side-by-side summary.json files -> {"ours nn" / "qsensoropt nn": MSE(n) per seed} for
    ``seeds`` (the first record of a seed wins; other learning rates than 1e-3 are skipped)."""
    found: dict[str, dict[int, list]] = {"ours nn": {}, "qsensoropt nn": {}}
    for pattern in paths:
        for path in sorted(glob.glob(pattern)) or [pattern]:
            records = json.loads(Path(path).read_text())["records"]
            for arm in found:
                for r in records.get(arm, []):
                    if r["seed"] in seeds and r.get("learning_rate") in (None, 1e-3) and r["seed"] not in found[arm]:
                        found[arm][r["seed"]] = r["mse_n"]
    return {arm: {str(s): v for s, v in sorted(d.items())} for arm, d in found.items()}


def print_report(summary: dict) -> None:
    c = summary["comparison"]
    seeds = sorted({r["seed"] for r in summary["rows"]})
    print(f"\nStarting (preconditioned) NN, {len(seeds)} seeds a side, {summary['n_episodes']} shared "
          f"evaluation episodes; preconditioning fit MSE: ours {c['fit_mse']['ours']:.2e}, "
          f"qsensoropt {c['fit_mse']['qsensoropt']:.2e}")
    trained = summary.get("trained") or {}
    head = f"{'n':>3s}  {'ours mean':>10s} {'median':>10s}  {'qsopt mean':>10s} {'median':>10s}  {'MW p':>5s}"
    if trained.get("ours nn") and trained.get("qsensoropt nn"):
        head += f"   trained at 1e-3, median: {'ours':>9s} {'qsopt':>9s} {'MW p':>5s}"
    print(head)
    for n in REPORT_N:
        row = c["per_n"].get(str(n))
        if row is None:
            continue
        line = (f"{n:3d}  {row['ours_mean']:10.3e} {row['ours_median']:10.3e}  {row['qsensoropt_mean']:10.3e} "
                f"{row['qsensoropt_median']:10.3e}  {row['mann_whitney_p']:5.2f}")
        if trained.get("ours nn") and trained.get("qsensoropt nn"):
            from scipy.stats import mannwhitneyu

            a = np.array([v[n - 1] for v in trained["ours nn"].values()])
            b = np.array([v[n - 1] for v in trained["qsensoropt nn"].values()])
            line += (f"   {'':25s}{np.median(a):9.3e} {np.median(b):9.3e} {mannwhitneyu(a, b).pvalue:5.3f}"
                     f" ({len(a)}, {len(b)} seeds)")
        print(line)


def _trained_stage(seeds: range, out: Path, n_episodes: int, task=None) -> dict:
    """qsensoropt's TRAINED networks (D/q{seed}.npz from ``qsensoropt_nv_dc.py --save-weights``)
    evaluated in our core, against qsensoropt's own evaluation of the same network (the run's
    D/qs{seed}.json). Equal MSE(n) within the Monte Carlo error says the two evaluations agree
    for NN policies too (the heuristics were checked per n before); a gap would put the NN
    difference at small n in the evaluation, not the training.

    Error bars: our core gives each episode's squared error, so SE(n) = sd(se_n)/sqrt(N). The run's
    JSON keeps qsensoropt's per-episode errors only for n = 24; the same network and episode law
    have the same spread, so the difference's SE is taken as sqrt(SE_ours^2 + SE_ours^2 N/N_q)."""
    import jax

    from qsmgym.agents import model_aware_pf as mapf

    config, task, params, setup, _ = evaluator(n_episodes, task=task)
    template = setup.init_policy(jax.random.PRNGKey(0))
    rows = []
    for seed in seeds:
        weights, record = out / f"q{seed}.npz", out / f"qs{seed}.json"
        for path in (weights, record):
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: run qsensoropt_nv_dc.py --mode nn --seed {seed} "
                                        f"--out {record} --save-weights {weights} first")
        se = mapf.evaluate(config, task, params, _network(weights, template), jax.random.PRNGKey(EVAL_KEY),
                           n_episodes)["se"]
        theirs = json.loads(record.read_text())
        q = np.asarray(theirs["mse_n"], np.float64)
        ours = se.mean(axis=0, dtype=np.float64)
        sd = se.std(axis=0, ddof=1, dtype=np.float64) / np.sqrt(n_episodes)
        diff_se = np.sqrt(sd**2 * (1 + n_episodes / theirs["n_eval"]))
        z = (ours - q) / diff_se
        rows.append({"seed": seed, "mse_n_our_core": ours.tolist(), "mse_n_qsensoropt": q.tolist(),
                     "z": z.tolist(), "n_our_core": n_episodes, "n_qsensoropt": theirs["n_eval"]})
        k = min(5, len(q))
        print(f"seed {seed}: MSE({k}) our core {ours[k - 1]:.3e} qsensoropt {q[k - 1]:.3e} (z {z[k - 1]:+.1f}); "
              f"MSE({len(q)}) {ours[-1]:.3e} {q[-1]:.3e} (z {z[-1]:+.1f}); max |z| over n {np.abs(z).max():.1f}",
              flush=True)
    summary = {"n_episodes": n_episodes, "eval_key": EVAL_KEY, "rows": rows}
    (out / "trained_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _same_start_stage(seeds: range, out: Path, trained_dir: Path, n_episodes: int, steps: int = 256,
                      batch: int = 256, task=None) -> dict:
    """OUR training loop from qsensoropt's start. For each seed: D/q{seed}.npz (the tf stage: the
    preconditioned network qsensoropt's run of that seed starts from) is trained by our NN arm
    with the side-by-side's settings and key, and evaluated in our core next to qsensoropt's
    network trained from the same start (T/q{seed}.npz, qsensoropt_nv_dc.py --save-weights), on
    the same episodes. A per-seed paired comparison: if ours still trails at small n, the
    difference is in the training loop; if not, in the starting networks."""
    import jax

    from qsmgym.agents import model_aware_pf as mapf

    _, task, params, setup, mse_n = evaluator(n_episodes, task=task)
    template = setup.init_policy(jax.random.PRNGKey(0))
    train_config = mapf.ModelAwarePFConfig(policy="nn", iterations=steps, checkpoint_every=min(128, steps),
                                           dtype="float32", batch=batch)
    train = jax.jit(mapf.make_train(train_config, task, params), compiler_options=mapf.compiler_options())
    hyper = mapf.default_hyper("nn")
    rows = []
    for seed in seeds:
        start, theirs = out / f"q{seed}.npz", trained_dir / f"q{seed}.npz"
        for path, how in ((start, "the tf stage"), (theirs, "qsensoropt_nv_dc.py --save-weights")):
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: run {how} for seed {seed} first")
        start_params = _network(start, template)
        result = train(jax.random.PRNGKey(seed), hyper, start_params)
        rows.append({"seed": seed, "ours_from_their_start": [float(v) for v in mse_n(result.policy_params)],
                     "qsensoropt_trained": [float(v) for v in mse_n(_network(theirs, template))],
                     "start": [float(v) for v in mse_n(start_params)],
                     "block_losses": np.asarray(result.block_losses).tolist(),
                     "history": np.asarray(result.history).tolist()})  # per-step training loss
        a, b = rows[-1]["ours_from_their_start"], rows[-1]["qsensoropt_trained"]
        k = min(5, len(a))
        print(f"seed {seed}: MSE({k}) ours-from-their-start {a[k - 1]:.3e} qsensoropt {b[k - 1]:.3e} "
              f"(start {rows[-1]['start'][k - 1]:.3e}); MSE({len(a)}) {a[-1]:.3e} {b[-1]:.3e}", flush=True)
    attach_qsensoropt_losses(rows, trained_dir)
    summary = {"n_episodes": n_episodes, "eval_key": EVAL_KEY, "steps": steps, "rows": rows, "per_n": paired(rows),
               "losses": loss_blocks(rows)}
    (out / "same_start_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print_paired(summary)
    print_loss_blocks(summary["losses"])
    return summary


def _wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of per-seed pairs; 1.0 for one pair or identical pairs."""
    from scipy.stats import wilcoxon

    return float(wilcoxon(a, b).pvalue) if len(a) > 1 and np.any(a != b) else 1.0


def paired(rows: list[dict]) -> dict:
    """Per n over the same-start rows: each side's median, the seeds where ours is lower, and
    the two-sided Wilcoxon signed-rank p of the per-seed pairs."""
    per_n = {}
    for n in range(1, len(rows[0]["start"]) + 1):
        a = np.array([r["ours_from_their_start"][n - 1] for r in rows])
        b = np.array([r["qsensoropt_trained"][n - 1] for r in rows])
        per_n[str(n)] = {"ours_median": float(np.median(a)), "qsensoropt_median": float(np.median(b)),
                         "start_median": float(np.median([r["start"][n - 1] for r in rows])),
                         "ours_wins": int((a < b).sum()), "wilcoxon_p": _wilcoxon_p(a, b)}
    return per_n


def attach_qsensoropt_losses(rows: list[dict], trained_dir: Path | None) -> None:
    """Add "qsensoropt_history" (train()'s per-step losses, qsensoropt_nv_dc.py's train_losses
    in T/qs{seed}.json) to the rows whose seed has them; rows without stay as they are."""
    if trained_dir is None:
        return
    for row in rows:
        path = Path(trained_dir) / f"qs{row['seed']}.json"
        if path.exists():
            losses = json.loads(path.read_text()).get("train_losses") or []
            if losses:
                row["qsensoropt_history"] = [float(x) for x in losses]


def loss_blocks(rows: list[dict], block: int = 32) -> dict | None:
    """The two loops' per-step training losses from the same start, by ``block``-step blocks:
    per block the mean over seeds of each side, the seeds where ours is lower, and the paired
    Wilcoxon p; None unless some rows hold both histories of equal length."""
    both = [r for r in rows if r.get("history") and r.get("qsensoropt_history")
            and len(r["history"]) == len(r["qsensoropt_history"])]
    if not both:
        return None
    ours = np.array([r["history"] for r in both], np.float64)
    theirs = np.array([r["qsensoropt_history"] for r in both], np.float64)
    out = {"seeds": [r["seed"] for r in both], "block": block, "blocks": []}
    for start in range(0, ours.shape[1], block):
        a, b = ours[:, start:start + block].mean(axis=1), theirs[:, start:start + block].mean(axis=1)
        out["blocks"].append({"steps": [start, min(start + block, ours.shape[1])], "ours_mean": float(a.mean()),
                              "qsensoropt_mean": float(b.mean()), "ours_lower": int((a < b).sum()),
                              "wilcoxon_p": _wilcoxon_p(a, b)})
    out["first_step"] = {"ours_mean": float(ours[:, 0].mean()), "qsensoropt_mean": float(theirs[:, 0].mean())}
    return out


def print_loss_blocks(losses: dict | None) -> None:
    if losses is None:
        return
    n = len(losses["seeds"])
    print(f"\nTraining loss (each library's own, per step) from the same start, {n} seeds, by "
          f"{losses['block']}-step block: mean over seeds ours, qsensoropt; seeds where ours is lower; Wilcoxon p")
    for b in losses["blocks"]:
        print(f"  steps {b['steps'][0]:3d}-{b['steps'][1] - 1:3d}  {b['ours_mean']:+.4f} {b['qsensoropt_mean']:+.4f}  "
              f"{b['ours_lower']}/{n}  {b['wilcoxon_p']:.3f}")
    f = losses["first_step"]
    print(f"  first step (the start, each on its own batch): {f['ours_mean']:+.4f} {f['qsensoropt_mean']:+.4f}")


def print_paired(summary: dict) -> None:
    rows = summary["rows"]
    print(f"\nSame start, {len(rows)} seeds: n, median MSE(n) of the start, of ours trained from it, of qsensoropt "
          f"trained from it; seeds where ours is lower; Wilcoxon p")
    for n in REPORT_N:
        r = summary["per_n"].get(str(n))
        if r is not None:
            print(f"{n:3d}  {r['start_median']:.3e}  {r['ours_median']:.3e} {r['qsensoropt_median']:.3e}  "
                  f"{r['ours_wins']}/{len(rows)}  {r['wilcoxon_p']:.3f}")


def join_same_start(paths: list[Path], out: Path, trained_dirs: list[Path] = ()) -> dict:
    """Merge same_start_summary.json files of separate seed ranges (one row per seed); with
    ``trained_dirs``, also read qsensoropt's per-step losses from their qs{seed}.json."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    rows = sorted({r["seed"]: r for part in parts for r in part["rows"]}.values(), key=lambda r: r["seed"])
    if len({(p["n_episodes"], p["steps"]) for p in parts}) != 1:
        raise ValueError("the summaries were made with different --episodes or steps; not joined")
    for trained_dir in trained_dirs:
        attach_qsensoropt_losses(rows, trained_dir)
    summary = {**{k: parts[0][k] for k in ("n_episodes", "eval_key", "steps")}, "rows": rows,
               "per_n": paired(rows), "losses": loss_blocks(rows), "joined": [str(p) for p in paths]}
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print_paired(summary)
    print_loss_blocks(summary["losses"])
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("tf", "ours", "trained", "same-start"))
    parser.add_argument("--seeds", type=int, nargs=2, default=(0, 35), metavar=("FIRST", "STOP"),
                        help="seeds FIRST..STOP-1 (default 0 35)")
    parser.add_argument("--episodes", type=int, default=4096, help="shared evaluation episodes (ours and trained stages)")
    parser.add_argument("--trained", nargs="*", default=[],
                        help="side-by-side summary.json files (globs) with the trained runs of these seeds")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--qsensoropt-trained", type=Path, nargs="+", default=None, metavar="T",
                        help="same-start stage: folder with qsensoropt's trained networks q{seed}.npz and "
                             "its runs qs{seed}.json (one folder; with --join, any number, for the losses)")
    parser.add_argument("--join", type=Path, nargs="+", default=None, metavar="JSON",
                        help="same-start stage: only merge these same_start_summary.json files into --out")
    args = parser.parse_args(argv)
    first, stop = args.seeds
    if not 0 <= first < stop:
        parser.error(f"--seeds must be 0 <= FIRST < STOP, got {first} {stop}")
    if args.episodes < 1:
        parser.error(f"--episodes must be positive, got {args.episodes}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage == "tf":
        _tf_stage(range(first, stop), args.out)
    elif args.stage == "same-start" and args.join:
        join_same_start(args.join, args.out / "same_start_summary.json", args.qsensoropt_trained or [])
    elif args.stage == "same-start":
        if args.qsensoropt_trained is None or len(args.qsensoropt_trained) != 1:
            parser.error("same-start needs one --qsensoropt-trained T (qsensoropt's trained q{seed}.npz)")
        _same_start_stage(range(first, stop), args.out, args.qsensoropt_trained[0], args.episodes)
    elif args.stage == "trained":
        _trained_stage(range(first, stop), args.out, args.episodes)
    else:
        _ours_stage(range(first, stop), args.out, args.episodes, args.trained)
    return 0


if __name__ == "__main__":
    sys.exit(main())
