"""NV-DC-24: our NN gradient estimator against qsensoropt's, at identical network weights.

Why: with the spec's settings our NN arm stalls on some seeds and qsensoropt's does not
(docs/results/nv-dc-24/). This script separates "the two estimators differ" from "the same
estimator, a different lottery": both libraries compute the gradient of the NV-DC-24 training
loss (log + cumulative, outcome score term, Ścibior–Wood resampling; batch 256) at the SAME
weights (qsensoropt's preconditioned network for --seed), over many independent batches, and
the means are compared parameter by parameter; then one Adam first step (lr * sign(g), what
Adam's first update is) is taken from each batch gradient and the loss after it is measured.

Three stages, two interpreters (qsensoropt needs its own venv, experiments/qsensoropt_venv.sh):

    .venv-qsensoropt/bin/python experiments/nv_gradient_compare.py tf   --seed 0 --batches 128 --out /tmp/g
    .venv/bin/python -m qsmgym.experiments.nv_gradient_compare ours     --batches 128 --out /tmp/g
    .venv/bin/python -m qsmgym.experiments.nv_gradient_compare compare  --out /tmp/g [--sign-steps 6]

At a network of ours (e.g. a seed that collapsed at the spec rate), first
    .venv/bin/python -m qsmgym.experiments.nv_gradient_compare train-ours --seed 6 --out /tmp/g6
then the tf stage with --weights /tmp/g6/ours_weights.npz --out /tmp/g6, and ours / compare.

The ``tf`` stage writes tf.npz (weights, per-batch gradients and losses); ``ours`` loads those
weights into our TauNetwork and writes ours.npz; ``compare`` prints the loss means, the norm
ratio and cosine of the mean gradients, per-parameter z-scores (difference of means over the
combined standard error), and with --sign-steps the loss (16 fixed evaluation batches, our
core) after one lr * sign(g) step from each side's first batch gradients and from the mean.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def load_weights(path: Path) -> list[np.ndarray]:
    """Keras-order arrays (kernel, bias per layer) from an npz: plain arrays w0, w1, ... (what
    ``save_weights``, ``qsensoropt_nv_dc.py --save-weights`` and the tf stage write). Read
    without pickle, so NumPy 1 in qsensoropt's venv reads what NumPy 2 wrote, and a file
    cannot run code. Other arrays in the file (the tf stage's grads, losses) are ignored.

    Raises:
        ValueError: the file has no w0, or its w-arrays are not numbered 0..K-1."""
    with np.load(path, allow_pickle=False) as f:
        names = [k for k in f.files if k[:1] == "w" and k[1:].isdigit()]
        if sorted(int(k[1:]) for k in names) != list(range(len(names))) or not names:
            raise ValueError(f"{path}: expected arrays w0, w1, ..., got {sorted(f.files)}")
        return [np.asarray(f[f"w{i}"]) for i in range(len(names))]


def save_weights(path: Path, arrays) -> None:
    """Keras-order arrays as plain float32 arrays w0, w1, ... in an npz: what ``load_weights``
    reads back without pickle (qsensoropt_nv_dc.py --save-weights writes the same format)."""
    np.savez(path, **{f"w{i}": np.asarray(a, np.float32) for i, a in enumerate(arrays)})


def keras_arrays(policy_params) -> list[np.ndarray]:
    """Our TauNetwork's params as Keras-order float32 arrays (kernel, bias per layer, layers in
    order): what ``load_weights`` reads and qsensoropt's ``set_weights`` takes."""
    layers = policy_params["params"]
    names = sorted(layers, key=lambda s: int(s.split("_")[1]))
    return [np.asarray(layers[n][part], np.float32) for n in names for part in ("kernel", "bias")]


def params_from_keras(arrays, template, source: str = "weights") -> dict:
    """The inverse of ``keras_arrays``: Keras-order arrays as our TauNetwork params, float32,
    shaped like ``template`` (any params of the same network). ``source`` names the arrays in
    the errors (a wrong count or shape raises ValueError)."""
    import jax.numpy as jnp

    layers = template["params"]
    names = sorted(layers, key=lambda s: int(s.split("_")[1]))
    if len(arrays) != 2 * len(names):
        raise ValueError(f"{source}: {len(arrays)} arrays, expected {2 * len(names)} (kernel, bias per layer)")
    out = {"params": {}}
    for j, name in enumerate(names):
        out["params"][name] = {}
        for part, w in (("kernel", arrays[2 * j]), ("bias", arrays[2 * j + 1])):
            if layers[name][part].shape != np.shape(w):
                raise ValueError(f"{source}: {name}/{part}: shape {np.shape(w)}, ours {layers[name][part].shape}")
            out["params"][name][part] = jnp.asarray(w, jnp.float32)
    return out


def _tf_stage(seed: int, batches: int, out: Path, weights: Path | None = None) -> None:
    import tensorflow as tf

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import qsensoropt_nv_dc as Q  # the same builders as the side-by-side runs

    tf.keras.utils.set_random_seed(seed)
    net = Q._make_trainable("nn")
    if weights is not None:  # e.g. a trained network: compare the estimators away from the start
        net.set_weights(load_weights(weights))
    sim = Q._build_simulation(Q._make_classes(), 256, Q._control_strategy("nn", net), "nn", "gradcmp")
    variables = net.trainable_variables

    @tf.function(jit_compile=False)
    def grad(rangen):
        with tf.GradientTape() as tape:
            loss_diff, loss = sim.execute(rangen)
        return tape.gradient(loss_diff, variables), loss

    rangen = tf.random.Generator.from_seed(seed + 7)
    grads, losses = [], []
    for _ in range(batches):
        g, loss = grad(rangen)
        grads.append(np.concatenate([x.numpy().ravel() for x in g]))
        losses.append(float(loss))
    np.savez(out / "tf.npz", **{f"w{i}": np.asarray(v.numpy(), np.float32) for i, v in enumerate(variables)},
             grads=np.array(grads), losses=np.array(losses))
    print(f"tf: {batches} batches, mean loss {np.mean(losses):.4f}")


def _our_setup(weights_file: Path):
    import jax

    from qsmgym.agents import model_aware_pf as mapf
    from qsmgym.envs.bayesian_magnetometry import BayesianMagnetometry
    from qsmgym.physics.precision import ensure_x64

    ensure_x64()
    task = BayesianMagnetometry()
    config = mapf.ModelAwarePFConfig(policy="nn", batch=256)
    init, loss = mapf.make_loss(config, task, task.default_params())
    template = init(jax.random.PRNGKey(0))
    weights = [np.asarray(w, np.float32) for w in load_weights(weights_file)]
    params_from_keras(weights, template, str(weights_file))  # count and shapes checked here
    sizes = np.cumsum([w.size for w in weights])[:-1]

    def to_params(flat):
        return params_from_keras([part.reshape(w.shape) for part, w in zip(np.split(flat, sizes), weights)],
                                 template, str(weights_file))

    def flatten(p):
        return np.concatenate([w.ravel() for w in keras_arrays(p)])

    w0 = np.concatenate([w.ravel() for w in weights])
    return loss, to_params, flatten, w0


def _ours_stage(batches: int, out: Path) -> None:
    import jax

    loss, to_params, flatten, w0 = _our_setup(out / "tf.npz")
    value_and_grad = jax.jit(jax.value_and_grad(lambda p, k: loss(p, k)[0]))
    p = to_params(w0)
    grads, losses = [], []
    for i in range(batches):
        value, g = value_and_grad(p, jax.random.PRNGKey(1000 + i))
        grads.append(flatten(g))
        losses.append(float(value))
    np.savez(out / "ours.npz", grads=np.array(grads), losses=np.array(losses))
    print(f"ours: {batches} batches, mean loss {np.mean(losses):.4f}")


def _train_ours_stage(seed: int, out: Path) -> None:
    """Train our NN arm as the side-by-side does (spec settings, PRNGKey(seed)) and write the
    final network as ours_weights.npz (w0, w1, ...: Keras order) and its loss history, e.g. to
    compare the two estimators at a network of ours that collapsed."""
    import jax

    from qsmgym.agents import model_aware_pf as mapf
    from qsmgym.envs.bayesian_magnetometry import BayesianMagnetometry
    from qsmgym.physics.precision import ensure_x64

    ensure_x64()
    task = BayesianMagnetometry()
    config = mapf.ModelAwarePFConfig(policy="nn", batch=256)
    result = jax.jit(mapf.make_train(config, task, task.default_params()))(jax.random.PRNGKey(seed),
                                                                          mapf.default_hyper("nn"))
    arrays = keras_arrays(result.final_params)
    save_weights(out / "ours_weights.npz", arrays)
    history = np.asarray(result.history)
    np.save(out / "ours_history.npy", history)
    blocks = history.reshape(-1, 16).mean(1)
    print(f"train-ours seed {seed}: loss per 16-step block {[round(float(b), 2) for b in blocks]}; "
          f"wrote {out / 'ours_weights.npz'}")


def second_moments(ga: np.ndarray, gb: np.ndarray, n_boot: int = 500, seed: int = 0) -> dict:
    """What Adam divides by: per parameter, the rms of the batch gradients (sqrt of E[g^2], Adam's
    v), for tf (``ga``, batches x parameters) and ours (``gb``). Reports the median over
    parameters of rms_ours / rms_tf with a bootstrap over batches, the median |mean| / rms per
    side (how far Adam's normalised step points along the mean gradient), and the batch-gradient
    norm's median and 99th percentile per side."""
    rng = np.random.default_rng(seed)

    def rms(g):
        return np.sqrt((g.astype(np.float64) ** 2).mean(0)) + 1e-30

    ratio = rms(gb) / rms(ga)
    boot = [np.median(rms(gb[rng.integers(0, len(gb), len(gb))]) / rms(ga[rng.integers(0, len(ga), len(ga))]))
            for _ in range(n_boot)]
    norms = {side: np.linalg.norm(g.astype(np.float64), axis=1) for side, g in (("tf", ga), ("ours", gb))}
    return {
        "rms_ratio_median": float(np.median(ratio)),
        "rms_ratio_q25": float(np.quantile(ratio, 0.25)),
        "rms_ratio_q75": float(np.quantile(ratio, 0.75)),
        "rms_ratio_median_ci": tuple(float(q) for q in np.quantile(boot, [0.025, 0.975])),
        "snr_median_tf": float(np.median(np.abs(ga.mean(0)) / rms(ga))),
        "snr_median_ours": float(np.median(np.abs(gb.mean(0)) / rms(gb))),
        "norm_q_tf": tuple(float(q) for q in np.quantile(norms["tf"], [0.5, 0.99])),
        "norm_q_ours": tuple(float(q) for q in np.quantile(norms["ours"], [0.5, 0.99])),
    }


def _compare_stage(out: Path, sign_steps: int, lr: float) -> dict:
    a, b = np.load(out / "tf.npz", allow_pickle=False), np.load(out / "ours.npz", allow_pickle=False)
    ga, gb = a["grads"], b["grads"]
    la, lb = a["losses"], b["losses"]
    ma, mb = ga.mean(0), gb.mean(0)
    sa, sb = ga.std(0, ddof=1) / np.sqrt(len(ga)), gb.std(0, ddof=1) / np.sqrt(len(gb))
    z = (ma - mb) / np.sqrt(sa**2 + sb**2 + 1e-30)
    report = {
        "loss_tf": (la.mean(), la.std(ddof=1) / np.sqrt(len(la))),
        "loss_ours": (lb.mean(), lb.std(ddof=1) / np.sqrt(len(lb))),
        "norm_ratio_ours_over_tf": np.linalg.norm(mb) / np.linalg.norm(ma),
        "cosine": float(ma @ mb / np.linalg.norm(ma) / np.linalg.norm(mb)),
        "frac_abs_z_gt_3": float((np.abs(z) > 3).mean()),
        "rms_z": float(np.sqrt((z**2).mean())),
        "n_params": int(z.size),
    }
    print(f"loss (log + cumulative) tf {report['loss_tf'][0]:.4f} +- {report['loss_tf'][1]:.4f}, "
          f"ours {report['loss_ours'][0]:.4f} +- {report['loss_ours'][1]:.4f}  ({len(ga)} / {len(gb)} batches)")
    print(f"mean gradient: |ours| / |tf| = {report['norm_ratio_ours_over_tf']:.3f}, cosine {report['cosine']:.3f}; "
          f"per-parameter z: {100 * report['frac_abs_z_gt_3']:.2f}% beyond 3, rms {report['rms_z']:.2f} "
          f"({report['n_params']} parameters)")
    report.update(second_moments(ga, gb))
    print(f"Adam's scale, per-parameter rms of the batch gradients: ours / tf median "
          f"{report['rms_ratio_median']:.3f} (quartiles {report['rms_ratio_q25']:.3f}, {report['rms_ratio_q75']:.3f}; "
          f"bootstrap 95% of the median {report['rms_ratio_median_ci'][0]:.3f}-{report['rms_ratio_median_ci'][1]:.3f})")
    print(f"mean / rms per parameter (Adam's step along the mean, in units of the rate): median |.| "
          f"tf {report['snr_median_tf']:.3f}, ours {report['snr_median_ours']:.3f}; batch-gradient norm "
          f"median / 99th pct: tf {report['norm_q_tf'][0]:.1f} / {report['norm_q_tf'][1]:.1f}, "
          f"ours {report['norm_q_ours'][0]:.1f} / {report['norm_q_ours'][1]:.1f}")
    if sign_steps:
        import jax

        loss, to_params, _, w0 = _our_setup(out / "tf.npz")
        f = jax.jit(lambda p, k: loss(p, k)[0])

        def evaluate(flat):
            p = to_params(flat.astype(np.float32))
            return float(np.mean([float(f(p, jax.random.PRNGKey(9000 + i))) for i in range(16)]))

        report["loss_at_weights"] = evaluate(w0)
        print(f"loss at the weights (16 fixed batches): {report['loss_at_weights']:.3f}")
        for side, g in (("tf", ga), ("ours", gb)):
            after = [evaluate(w0 - lr * np.sign(g[i])) for i in range(min(sign_steps, len(g)))]
            mean_step = evaluate(w0 - lr * np.sign(g.mean(0)))
            report[f"after_sign_step_{side}"] = after
            report[f"after_mean_sign_step_{side}"] = mean_step
            print(f"{side}: loss after one {lr:g} * sign(g) step from each of its first {len(after)} batch "
                  f"gradients: {np.round(after, 2).tolist()}; from the mean gradient: {mean_step:.2f}")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("tf", "ours", "compare", "train-ours"))
    parser.add_argument("--out", required=True, help="folder for tf.npz and ours.npz")
    parser.add_argument("--seed", type=int, default=0,
                        help="tf stage: seed of qsensoropt's preconditioned network; train-ours: our training seed")
    parser.add_argument("--weights", default=None,
                        help="tf stage: an npz whose 'weights' (Keras order) replace the fresh network")
    parser.add_argument("--batches", type=int, default=128, help="independent batches of 256 episodes")
    parser.add_argument("--sign-steps", type=int, default=0, help="compare stage: batch gradients to step from")
    parser.add_argument("--lr", type=float, default=1e-3, help="compare stage: the step's size (spec NN rate)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.batches < 2:
        parser.error(f"--batches must be >= 2, got {args.batches}")
    if args.stage == "tf":
        out.mkdir(parents=True, exist_ok=True)
        _tf_stage(args.seed, args.batches, out, Path(args.weights) if args.weights else None)
    elif args.stage == "ours":
        _ours_stage(args.batches, out)
    elif args.stage == "train-ours":
        out.mkdir(parents=True, exist_ok=True)
        _train_ours_stage(args.seed, out)
    else:
        _compare_stage(out, args.sign_steps, args.lr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
