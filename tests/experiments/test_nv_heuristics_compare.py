"""experiments/nv_heuristics_compare.py: run statistics, the two-sample agreement test, the
qsensoropt records it accepts, and one tiny end-to-end run of ours."""

import json
import math

import numpy as np
import pytest

from qsmgym.experiments import nv_heuristics_compare as hc


def _records(means20, means24=None, mode="pgh", n_eval=16384, implementation=None):
    out = []
    for i, m in enumerate(means20):
        mse_n = list(np.linspace(0.07, 0.006, 24))
        mse_n[19] = m
        mse_n[23] = (means24 or means20)[i]
        r = {"mode": mode, "seed": i, "n_eval": n_eval, "mse_n": mse_n}
        if implementation:
            r["implementation"] = implementation
        out.append(r)
    return out


def test_side_stats_is_the_mean_of_runs_and_its_standard_error():
    x = [7.1e-3, 7.4e-3, 6.9e-3, 7.6e-3]
    s = hc.side_stats(_records(x), 20)
    assert s["mean"] == pytest.approx(np.mean(x), rel=1e-12)
    assert s["se"] == pytest.approx(np.std(x, ddof=1) / 2.0, rel=1e-12)
    assert s["runs"] == 4 and s["episodes"] == 4 * 16384
    with pytest.raises(ValueError, match="at least 2 runs"):
        hc.side_stats(_records([7e-3]), 20)


def test_compare_agrees_within_noise_and_not_beyond_it():
    rng = np.random.default_rng(0)
    ours = _records(list(7.2e-3 + 1e-4 * rng.standard_normal(16)))
    same = _records(list(7.2e-3 + 1e-4 * rng.standard_normal(16)))
    shifted = _records(list(6.5e-3 + 1e-4 * rng.standard_normal(16)))  # 7 standard deviations of a run below
    ok = hc.compare(ours, same, published=6.51e-3)
    assert ok[20]["agree"] and ok[24]["agree"]
    bad = hc.compare(ours, shifted, published=6.51e-3)
    assert not bad[20]["agree"] and bad[20]["z"] > 10
    # the published value is compared at n = 20 only, with our standard error
    assert "published" not in ok[24]
    o = hc.side_stats(ours, 20)
    assert ok[20]["published_z"] == pytest.approx((o["mean"] - 6.51e-3) / o["se"], rel=1e-12)
    assert ok[20]["ratio_published"] == pytest.approx(o["mean"] / 6.51e-3, rel=1e-12)
    assert bad[20]["ratio"] == pytest.approx(o["mean"] / hc.side_stats(shifted, 20)["mean"], rel=1e-12)


def test_load_records_maps_modes_and_refuses_others(tmp_path):
    paths = []
    for i, (mode, m) in enumerate((("pgh", 7.3e-3), ("sigma", 3.6e-3), ("pgh", 7.2e-3))):
        (r,) = _records([m], mode=mode)
        r["mse_samples"] = [0.1] * 5  # dropped from the summary
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(r))
    got = hc.load_records([str(p) for p in paths])
    assert sorted(got) == ["pgh", "sigma_inverse"] and len(got["pgh"]) == 2
    assert all("mse_samples" not in r for rs in got.values() for r in rs)
    for bad in (_records([1e-3], mode="nn")[0], _records([1e-3], implementation="qsm-gym")[0]):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="--records"):
            hc.load_records([str(tmp_path / "bad.json")])


def test_main_runs_ours_and_compares_with_given_records(tmp_path, capsys):
    recs = []
    for i, m in enumerate((7.3e-3, 7.1e-3, 7.4e-3)):
        (r,) = _records([m])
        recs.append(tmp_path / f"q{i}.json")
        recs[-1].write_text(json.dumps(r))
    out = tmp_path / "out"
    assert hc.main(["--runs", "2", "--episodes", "32", "--heuristics", "pgh", "--records", *map(str, recs),
                    "--out-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    row = summary["results"]["pgh"]["20"]
    ours = summary["records"]["ours"]["pgh"]
    assert len(ours) == 2 and all(r["n_eval"] == 32 and len(r["mse_n"]) == 24 for r in ours)
    assert row["ours"]["mean"] == pytest.approx(np.mean([r["mse_n"][19] for r in ours]), rel=1e-12)
    assert row["qsensoropt"]["runs"] == 3 and math.isfinite(row["z"])
    assert "pgh" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        hc.main(["--runs", "1"])


def test_resample_fraction_is_carried_to_both_sides_and_checked(tmp_path, capsys):
    # --resample-fraction F --batch B: ours resamples whole batches of B (records say so); the
    # qsensoropt records given must have been run at the same F (absent = None, the default)
    (r,) = _records([7.3e-3])
    (tmp_path / "q.json").write_text(json.dumps(r))
    with pytest.raises(ValueError, match="resample_fraction=None"):
        hc.load_records([str(tmp_path / "q.json")], 0.98)
    assert len(hc.load_records([str(tmp_path / "q.json")])["pgh"]) == 1
    out = tmp_path / "out"
    assert hc.main(["--runs", "2", "--episodes", "32", "--batch", "16", "--resample-fraction", "0.98",
                    "--heuristics", "pgh", "--no-qsensoropt", "--out-dir", str(out)]) == 0
    ours = json.loads((out / "summary.json").read_text())["records"]["ours"]["pgh"]
    assert all(r["resample_fraction"] == 0.98 and r["eval_batch"] == 16 for r in ours)
    for bad in (["--batch", "24"], ["--resample-fraction", "0", "--batch", "16"], ["--resample-fraction", "1.5", "--batch", "16"],
                ["--resample-fraction", "0.98"]):
        with pytest.raises(SystemExit):
            hc.main(["--runs", "2", "--episodes", "32", "--no-qsensoropt", *bad])
    assert "--batch" in capsys.readouterr().err
