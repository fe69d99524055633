"""The statistics of experiments/nv_gradient_compare.py's compare stage, on synthetic gradients
(the tf and ours stages need qsensoropt's venv and minutes; they were run by hand, see the
script's docstring)."""

from __future__ import annotations

import numpy as np
import pytest

from qsmgym.experiments import nv_gradient_compare as gc


def _write(tmp_path, shift: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=500)
    tf = mean + rng.normal(size=(64, 500))
    ours = mean + shift + rng.normal(size=(64, 500))
    np.savez(tmp_path / "tf.npz", w0=np.zeros(1, np.float32), grads=tf, losses=rng.normal(-5, 0.1, 64))
    np.savez(tmp_path / "ours.npz", grads=ours, losses=rng.normal(-5, 0.1, 64))


def test_same_expected_gradient_passes_the_z_test(tmp_path):
    _write(tmp_path, shift=0.0)
    r = gc._compare_stage(tmp_path, 0, 1e-3)
    # 500 parameters, SE 1/8 each side: |z| > 3 has probability 0.27% per parameter
    assert r["frac_abs_z_gt_3"] < 0.02 and 0.8 < r["rms_z"] < 1.2
    assert r["cosine"] > 0.95 and abs(r["norm_ratio_ours_over_tf"] - 1) < 0.05


def test_a_shifted_gradient_is_caught(tmp_path):
    _write(tmp_path, shift=1.0)  # 1.0 against a combined SE of 0.18: z ~ 5.7
    r = gc._compare_stage(tmp_path, 0, 1e-3)
    assert r["frac_abs_z_gt_3"] > 0.9


def test_too_few_batches_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        gc.main(["ours", "--out", str(tmp_path), "--batches", "1"])
    assert info.value.code == 2 and "--batches" in capsys.readouterr().err


def test_load_weights_reads_plain_arrays_without_pickle_and_the_tf_stage_format(tmp_path):
    from qsmgym.experiments.nv_gradient_compare import load_weights

    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32)]
    np.savez(tmp_path / "plain.npz", **{f"w{i}": a for i, a in enumerate(arrays)})
    got = load_weights(tmp_path / "plain.npz")
    assert len(got) == 2 and all(np.array_equal(a, b) for a, b in zip(got, arrays))
    # the tf stage's file: the weights beside its grads and losses, which are not weights
    np.savez(tmp_path / "tf.npz", **{f"w{i}": a for i, a in enumerate(arrays)}, grads=np.zeros((2, 9)),
             losses=np.zeros(2))
    got = load_weights(tmp_path / "tf.npz")
    assert len(got) == 2 and all(np.array_equal(a, b) for a, b in zip(got, arrays))


def test_load_weights_refuses_pickled_or_misnumbered_files(tmp_path):
    from qsmgym.experiments.nv_gradient_compare import load_weights

    np.savez(tmp_path / "old.npz", weights=np.array([np.zeros(2), np.zeros(3)], dtype=object))
    with pytest.raises(ValueError, match=r"old.npz: expected arrays w0, w1, ..., got \['weights'\]"):
        load_weights(tmp_path / "old.npz")
    np.savez(tmp_path / "gap.npz", w0=np.zeros(2), w2=np.zeros(3))
    with pytest.raises(ValueError, match="expected arrays w0, w1"):
        load_weights(tmp_path / "gap.npz")


def test_second_moments_see_a_noisier_estimator_with_the_same_mean():
    # same mean gradient, ours with twice the per-batch noise: Adam's denominator (rms) is larger
    # for ours, so its normalised step along the mean is smaller. mean ~ N(0, 1), noise sd 1 vs 2:
    # rms^2 = mean^2 + sd^2, so the median rms ratio is ~sqrt((1 + 4) / (1 + 1)) ~ 1.5-1.6
    rng = np.random.default_rng(1)
    mean = rng.normal(size=400)
    tf = mean + rng.normal(size=(256, 400))
    ours = mean + 2 * rng.normal(size=(256, 400))
    r = gc.second_moments(tf, ours, n_boot=200)
    assert 1.35 < r["rms_ratio_median"] < 1.85
    assert r["rms_ratio_median_ci"][0] > 1.2 and r["rms_ratio_median_ci"][0] < r["rms_ratio_median"] < r["rms_ratio_median_ci"][1]
    assert r["snr_median_ours"] < r["snr_median_tf"]
    same = gc.second_moments(tf, mean + rng.normal(size=(256, 400)), n_boot=200)
    assert same["rms_ratio_median_ci"][0] < 1 < same["rms_ratio_median_ci"][1]
    assert r["norm_q_ours"][0] > 1.3 * r["norm_q_tf"][0]


def test_params_from_keras_inverts_keras_arrays_and_names_a_wrong_file():
    import jax

    from qsmgym.agents.model_aware_pf import TauNetwork

    net = TauNetwork()
    p = net.init(jax.random.PRNGKey(0), np.zeros(5, np.float32))
    arrays = gc.keras_arrays(p)
    back = gc.params_from_keras(arrays, p)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(p)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(p)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # float32 both ways: exact
    with pytest.raises(ValueError, match=r"q7\.npz: .* arrays, expected"):
        gc.params_from_keras(arrays[:-1], p, "q7.npz")
    with pytest.raises(ValueError, match=r"q7\.npz: .*kernel: shape"):
        gc.params_from_keras([a.T if a.ndim == 2 else a for a in arrays], p, "q7.npz")
