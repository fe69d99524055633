"""The NV-DC-24 side-by-side statistics (experiments/nv_side_by_side.py), on synthetic records:
no training, no qsensoropt. The trained runs themselves are reported in docs/results/nv-dc-24/."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qsmgym.experiments import nv_side_by_side as nv


def _population(rng, n_seeds, n_episodes, mu=1.0, tau=0.5, sigma=1.0):
    """Seed means ~ N(mu, tau^2) (the training lottery), episodes ~ N(seed mean, sigma^2)."""
    means = mu + tau * rng.standard_normal(n_seeds)
    return [m + sigma * rng.standard_normal(n_episodes) for m in means]


def test_seed_bootstrap_covers_the_population_mean_and_the_pooled_episode_ci_does_not():
    # 300 synthetic experiments of 8 seeds x 400 episodes with a seed spread (tau = 0.5) much
    # larger than the episode SE (1/sqrt(400) = 0.05). The seed CI must cover mu about 95 % of
    # the time: a percentile bootstrap over 8 units undercovers a little (about 0.90), and 300
    # trials give a binomial SE of 0.017, so 0.83 is a 4-SE floor. The pooled-episode CI has
    # width ~ 0.05 against a seed-mean spread of 0.18: it covers about 25 % of the time.
    rng = np.random.default_rng(1)
    seed_hits = pooled_hits = 0
    for t in range(300):
        samples = _population(rng, 8, 400)
        _, lo, hi = nv.seed_bootstrap_ci(samples, seed=t, n_boot=1000)
        seed_hits += lo <= 1.0 <= hi
        _, lo, hi = nv.bootstrap_ci(np.concatenate(samples), seed=t, n_boot=300)
        pooled_hits += lo <= 1.0 <= hi
    assert seed_hits / 300 >= 0.83
    assert pooled_hits / 300 <= 0.5


def test_seed_bootstrap_needs_two_seeds():
    with pytest.raises(ValueError, match=">= 2 seeds"):
        nv.seed_bootstrap_ci([np.ones(10)])


def _records(samples, mode="nn", implementation="qsm-gym", first_seed=0):
    return [{"implementation": implementation, "mode": mode, "seed": first_seed + i, "mse_samples": x.tolist(),
             "mse_final": float(x.mean()), "mse_n": [float(x.mean())] * 24, "sec_per_step": 0.3,
             "compile_s": 5.0, "peak_mem_mb": 900.0} for i, x in enumerate(samples)]


def test_compare_arms_same_law_is_not_told_apart_and_a_shift_is():
    rng = np.random.default_rng(2)
    a = _records([np.abs(x) for x in _population(rng, 12, 500, mu=3.0, tau=0.3, sigma=1.0)])
    b = _records([np.abs(x) for x in _population(rng, 12, 500, mu=3.0, tau=0.3, sigma=1.0)])
    same = nv.compare_arms(a, b)
    assert same["ratio_ci"][0] <= 1.0 <= same["ratio_ci"][1]
    assert same["mannwhitney_p"] > 0.05
    c = _records([np.abs(x) for x in _population(rng, 12, 500, mu=6.0, tau=0.3, sigma=1.0)])
    shifted = nv.compare_arms(a, c)
    assert shifted["ratio_ci"][1] < 1.0  # ours (a) clearly below theirs (c)
    assert shifted["mannwhitney_p"] < 1e-3
    assert shifted["median_ours"] < shifted["median_theirs"]


def test_merge_records_joins_arms_and_refuses_a_seed_counted_twice():
    rng = np.random.default_rng(3)
    first = {"ours nn": _records(_population(rng, 2, 10))}
    second = {"ours nn": _records(_population(rng, 2, 10), first_seed=2),
              "qsensoropt nn": _records(_population(rng, 2, 10), implementation="qsensoropt")}
    merged = nv.merge_records([("a.json", first), ("b.json", second)])
    assert [r["seed"] for r in merged["ours nn"]] == [0, 1, 2, 3]
    assert len(merged["qsensoropt nn"]) == 2
    with pytest.raises(ValueError, match=r"'ours nn' has seed 0 in both a.json and c.json"):
        nv.merge_records([("a.json", first), ("c.json", first)])


def test_from_summary_tabulates_joined_runs_with_seed_cis(tmp_path, capsys):
    rng = np.random.default_rng(4)
    paths = []
    for i in range(2):
        records = {"ours nn": _records(_population(rng, 3, 200, mu=2.0), first_seed=3 * i),
                   "qsensoropt nn": _records(_population(rng, 3, 200, mu=2.0), implementation="qsensoropt",
                                             first_seed=3 * i)}
        path = tmp_path / f"s{i}.json"
        path.write_text(json.dumps({"records": records}))
        paths.append(str(path))
    assert nv.main(["--from-summary", *paths, "--out-dir", str(tmp_path / "joined")]) == 0
    out = capsys.readouterr().out
    assert "two-stage bootstrap over seeds" in out
    assert "nn: MSE(24) ours/qsensoropt = " in out and "Mann-Whitney p = " in out
    summary = json.loads((tmp_path / "joined" / "summary.json").read_text())
    assert summary["arms"]["ours nn"]["seeds"] == [0, 1, 2, 3, 4, 5]
    assert summary["arms"]["ours nn"]["ci_kind"] == "seeds"
    lo, hi = summary["verdicts"]["nn"]["ratio_ci"]
    assert lo < summary["verdicts"]["nn"]["ratio"] < hi


def test_from_summary_takes_only_the_named_arms_of_a_file(tmp_path, capsys):
    rng = np.random.default_rng(5)
    both = {"ours nn": _records(_population(rng, 3, 50)),
            "qsensoropt nn": _records(_population(rng, 3, 50), implementation="qsensoropt")}
    more_ours = {"ours nn": _records(_population(rng, 2, 50), first_seed=3)}
    (tmp_path / "a.json").write_text(json.dumps({"records": both}))
    (tmp_path / "b.json").write_text(json.dumps({"records": more_ours}))
    # a's "ours nn" left out: b's seeds 3-4 are the only ours; a's qsensoropt seeds 0-2 kept
    assert nv.main(["--from-summary", f"{tmp_path / 'a.json'}#qsensoropt nn", str(tmp_path / "b.json"),
                    "--out-dir", str(tmp_path / "joined")]) == 0
    summary = json.loads((tmp_path / "joined" / "summary.json").read_text())
    assert summary["arms"]["ours nn"]["seeds"] == [3, 4]
    assert summary["arms"]["qsensoropt nn"]["seeds"] == [0, 1, 2]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        nv.main(["--from-summary", f"{tmp_path / 'b.json'}#qsensoropt nn"])
    assert exc.value.code == 2
    assert "has no arm 'qsensoropt nn' (it has ['ours nn'])" in capsys.readouterr().err


def test_from_summary_bad_file_is_one_argparse_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit) as exc:
        nv.main(["--from-summary", str(bad)])
    assert exc.value.code == 2
    assert f"--from-summary {bad}: not a summary.json with records" in capsys.readouterr().err
