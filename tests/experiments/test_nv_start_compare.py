"""experiments/nv_start_compare.py: the per-n comparison, the trained records it picks, and one
tiny run of the ours stage on weights written in Keras order (qsensoropt's format)."""

import json

import jax
import numpy as np
import pytest

from qsmgym.experiments import nv_start_compare as sc
from qsmgym.experiments.nv_gradient_compare import keras_arrays, save_weights


EPISODES = 64  # one evaluation size for the three stage tests: evaluate compiles once for the file


@pytest.fixture(scope="module")
def small():
    """A small task (same 5 inputs as NV-DC-24, cheap to compile), its evaluator pieces, and one
    jitted precondition(key) shared by the stage tests (one compile per file, not per test)."""
    from qsmgym.agents import model_aware_pf as mapf
    from qsmgym.envs.bayesian_magnetometry import BayesianMagnetometry

    task = BayesianMagnetometry(n_measurements=4, n_particles=32)
    config, task, params, _, mse_n = sc.evaluator(EPISODES, task=task)
    pre = jax.jit(lambda k: mapf.precondition(config, task, params, k, mapf.default_hyper("nn"))[0])
    return task, mse_n, pre


def _rows(ours, theirs):
    return ([{"seed": i, "side": "ours", "fit_mse": 2e-3, "mse_n": list(v)} for i, v in enumerate(ours)]
            + [{"seed": i, "side": "qsensoropt", "fit_mse": 3e-3, "mse_n": list(v)} for i, v in enumerate(theirs)])


def test_compare_reports_means_medians_and_a_test_that_separates_shifted_sides():
    rng = np.random.default_rng(0)
    a = rng.lognormal(-3, 0.2, (20, 3))
    same = sc.compare(_rows(a, a))
    assert all(row["mann_whitney_p"] == 1.0 for row in same["per_n"].values())
    c = sc.compare(_rows(a, a * 1.5))
    assert c["per_n"]["2"]["ours_mean"] == pytest.approx(a[:, 1].mean(), rel=1e-12)
    assert c["per_n"]["2"]["qsensoropt_median"] == pytest.approx(np.median(a[:, 1] * 1.5), rel=1e-12)
    assert all(row["mann_whitney_p"] < 1e-3 for row in c["per_n"].values())
    assert c["fit_mse"] == {"ours": pytest.approx(2e-3), "qsensoropt": pytest.approx(3e-3)}
    with pytest.raises(ValueError, match="both sides"):
        sc.compare(_rows(a, [])[:20])


def test_trained_mse_takes_the_seeds_asked_at_the_spec_rate(tmp_path):
    rec = lambda seed, lr, v: {"seed": seed, "learning_rate": lr, "mse_n": [v]}  # noqa: E731
    (tmp_path / "a.json").write_text(json.dumps({"records": {
        "ours nn": [rec(0, 1e-3, 1.0), rec(1, 1e-4, 9.0), rec(2, 1e-3, 2.0)],
        "qsensoropt nn": [rec(0, None, 3.0)]}}))
    (tmp_path / "b.json").write_text(json.dumps({"records": {"ours nn": [rec(0, 1e-3, 5.0), rec(1, 1e-3, 4.0)]}}))
    got = sc.trained_mse([str(tmp_path / "*.json")], [0, 1])
    assert got == {"ours nn": {"0": [1.0], "1": [4.0]}, "qsensoropt nn": {"0": [3.0]}}


def test_ours_stage_on_keras_order_weights_of_our_own_network(tmp_path, capsys, small):
    # "qsensoropt" weights written from our own preconditioned networks, in the Keras order the
    # tf stage writes: both columns must then agree exactly (a wrong layer or kernel order would not)
    task, _, precondition = small
    for seed in (0, 1):
        p = precondition(jax.random.split(jax.random.PRNGKey(seed))[0])
        save_weights(tmp_path / f"q{seed}.npz", keras_arrays(p))
    summary = sc._ours_stage(range(0, 2), tmp_path, EPISODES, [], task=task)
    ours = [r for r in summary["rows"] if r["side"] == "ours"]
    theirs = [r for r in summary["rows"] if r["side"] == "qsensoropt"]
    assert [r["mse_n"] for r in ours] == [r["mse_n"] for r in theirs]
    assert len(ours[0]["mse_n"]) == task.horizon and ours[0]["mse_n"] != ours[1]["mse_n"]
    assert json.loads((tmp_path / "summary.json").read_text())["comparison"]["per_n"]["4"]["mann_whitney_p"] == 1.0
    assert "Starting (preconditioned) NN, 2 seeds a side" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="tf stage"):
        sc._ours_stage(range(5, 6), tmp_path, EPISODES, [], task=task)


def test_trained_stage_scores_a_network_against_its_record_and_flags_a_wrong_record(tmp_path, capsys, small):
    # a network's weights (Keras order) and a record of it: a record equal to our core's MSE(n)
    # gives z = 0 at every n; one 3x too large gives large |z| (64 episodes: SE ~ MSE/8 or less)
    task, mse_n, pre = small
    p = pre(jax.random.PRNGKey(3))
    save_weights(tmp_path / "q0.npz", keras_arrays(p))
    truth = np.asarray(mse_n(p))
    for seed, scale in ((0, 1.0), (1, 3.0)):
        if seed:
            (tmp_path / "q1.npz").write_bytes((tmp_path / "q0.npz").read_bytes())
        (tmp_path / f"qs{seed}.json").write_text(json.dumps({"mse_n": (truth * scale).tolist(), "n_eval": EPISODES}))
    rows = sc._trained_stage(range(0, 2), tmp_path, EPISODES, task=task)["rows"]
    np.testing.assert_allclose(rows[0]["z"], 0.0, atol=1e-6)  # float64 means of the same float32 errors
    assert min(abs(z) for z in rows[1]["z"]) > 3
    assert json.loads((tmp_path / "trained_summary.json").read_text())["rows"][1]["seed"] == 1
    assert "seed 1: MSE(4) our core" in capsys.readouterr().out  # 4 measurements: n = 5 would not exist
    with pytest.raises(FileNotFoundError, match="save-weights"):
        sc._trained_stage(range(2, 3), tmp_path, EPISODES, task=task)


def test_same_start_stage_trains_ours_from_the_given_start(tmp_path, capsys, small):
    task, mse_n, pre = small
    trained = tmp_path / "trained"
    trained.mkdir()
    starts = {}
    for seed in (0, 1):
        p = pre(jax.random.PRNGKey(10 + seed))
        starts[seed] = p
        arrays = keras_arrays(p)
        save_weights(tmp_path / f"q{seed}.npz", arrays)
        save_weights(trained / f"q{seed}.npz", [a * 0.9 for a in arrays])
    (trained / "qs0.json").write_text(json.dumps({"train_losses": [-4.0, -4.5]}))  # seed 0's run only
    summary = sc._same_start_stage(range(0, 2), tmp_path, trained, EPISODES, steps=2, batch=4, task=task)
    rows = summary["rows"]
    for seed, row in zip((0, 1), rows):
        np.testing.assert_allclose(row["start"], np.asarray(mse_n(starts[seed])), rtol=1e-6)
        assert row["ours_from_their_start"] != row["start"] and len(row["block_losses"]) == 1
        assert len(row["history"]) == 2 and np.mean(row["history"]) == pytest.approx(row["block_losses"][0], rel=1e-6)
    assert set(summary["per_n"]) == {"1", "2", "3", "4"}
    assert summary["losses"]["seeds"] == [0] and rows[0]["qsensoropt_history"] == [-4.0, -4.5]
    assert summary["losses"]["blocks"][0]["qsensoropt_mean"] == pytest.approx(-4.25)
    assert summary["losses"]["blocks"][0]["ours_mean"] == pytest.approx(np.mean(rows[0]["history"]))
    assert json.loads((tmp_path / "same_start_summary.json").read_text())["steps"] == 2
    assert "Same start, 2 seeds" in capsys.readouterr().out
    (trained / "q1.npz").unlink()
    with pytest.raises(FileNotFoundError, match="save-weights"):
        sc._same_start_stage(range(1, 2), tmp_path, trained, EPISODES, steps=2, batch=4, task=task)


def test_join_merges_seed_ranges_and_tests_the_pairs(tmp_path):
    rng = np.random.default_rng(2)

    def part(seeds, shift, name, episodes=4096):
        rows = [{"seed": s, "start": list(rng.lognormal(-4, 0.1, 3)), "qsensoropt_trained": list(b),
                 "ours_from_their_start": list(b * shift)} for s, b in zip(seeds, rng.lognormal(-3, 0.3, (len(seeds), 3)))]
        (tmp_path / name).write_text(json.dumps({"n_episodes": episodes, "eval_key": 5, "steps": 256, "rows": rows}))
        return tmp_path / name

    a, b = part(range(0, 6), 1.3, "a.json"), part(range(6, 12), 1.3, "b.json")
    joined = sc.join_same_start([a, b], tmp_path / "joined.json")
    assert [r["seed"] for r in joined["rows"]] == list(range(12))
    assert joined["per_n"]["2"]["ours_wins"] == 0 and joined["per_n"]["2"]["wilcoxon_p"] < 0.001  # 12 of 12 worse
    even = sc.join_same_start([part(range(0, 8), 1.0, "c.json")], tmp_path / "even.json")
    assert even["per_n"]["1"]["wilcoxon_p"] == 1.0  # identical pairs
    with pytest.raises(ValueError, match="different --episodes"):
        sc.join_same_start([a, part(range(20, 22), 1.0, "d.json", episodes=64)], tmp_path / "x.json")


def test_join_compares_the_per_step_losses_by_block(tmp_path):
    # rows with our loop's history and qsensoropt's train_losses read from qs{seed}.json: ours
    # 0.1 lower at every step of every seed gives 12/12 lower per block (Wilcoxon p < 0.001);
    # a seed without a qs file, or one from an older run without train_losses, is left out
    rng = np.random.default_rng(3)
    rows, trained = [], tmp_path / "T"
    trained.mkdir()
    for seed in range(14):
        theirs = list(-4 + 0.3 * rng.standard_normal(64))
        rows.append({"seed": seed, "start": [1.0], "qsensoropt_trained": [1.0], "ours_from_their_start": [1.0],
                     "history": [x - 0.1 for x in theirs]})
        if seed < 12:
            (trained / f"qs{seed}.json").write_text(json.dumps({"train_losses": theirs}))
    (trained / "qs12.json").write_text(json.dumps({"mse_n": [1.0]}))  # no train_losses
    (tmp_path / "a.json").write_text(json.dumps({"n_episodes": 64, "eval_key": 5, "steps": 64, "rows": rows}))
    joined = sc.join_same_start([tmp_path / "a.json"], tmp_path / "j.json", [trained])
    losses = joined["losses"]
    assert losses["seeds"] == list(range(12)) and [b["steps"] for b in losses["blocks"]] == [[0, 32], [32, 64]]
    for b in losses["blocks"]:
        assert b["ours_lower"] == 12 and b["wilcoxon_p"] < 1e-3
        assert b["ours_mean"] == pytest.approx(b["qsensoropt_mean"] - 0.1)
    assert sc.join_same_start([tmp_path / "a.json"], tmp_path / "k.json")["losses"] is None  # no T given
