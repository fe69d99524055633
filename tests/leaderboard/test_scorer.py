"""The scorer: hidden seeds (HMAC-SHA256), deterministic re-scoring for a given secret,
re-evaluation against the tasks' own references, flags for inflated claims, the CLI."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil

import numpy as np
import pytest

from lb_helpers import SUBMISSIONS
from qsmgym.leaderboard import cli
from qsmgym.leaderboard.scorer import (FLAG_TOLERANCE, RELEASE_SALT, SECRET_ENV, evaluation_seeds, flag,
                                       score_submission)

SWAP_ASAP = SUBMISSIONS / "RepeaterDelivery-v0" / "swap_ASAP"  # stochastic task, cheap to build
NO_CUTOFF = SUBMISSIONS / "MemoryCutoff-v0" / "no_cut-off"  # stochastic, per-episode spread ~4% of limit - baseline
INVERTED = SUBMISSIONS / "PhotonStorage-v0" / "inverted_pulse_analytic"  # deterministic task


def _copy(src, tmp_path, scale=None, shift=None):
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    if scale is not None or shift is not None:
        data = json.loads((dst / "submission.json").read_text())
        r = np.asarray(data["claimed_results"]["episode_returns"])
        data["claimed_results"]["episode_returns"] = (r * (scale or 1.0) + (shift or 0.0)).tolist()
        (dst / "submission.json").write_text(json.dumps(data))
    return dst


def test_evaluation_seeds_are_hmac_sha256_of_the_secret(monkeypatch):
    """The documented derivation, recomputed here from hmac/hashlib directly."""
    def reference(secret, i):
        mac = hmac.new(secret.encode(), f"qsm/MemoryCutoff-v0|PPO|{i}".encode(), hashlib.sha256).digest()
        return int.from_bytes(mac[:4], "big")

    monkeypatch.delenv(SECRET_ENV, raising=False)
    assert evaluation_seeds("qsm/MemoryCutoff-v0", "PPO", 5) == [reference(RELEASE_SALT, i) for i in range(5)]
    monkeypatch.setenv(SECRET_ENV, "hunter2")
    seeds = evaluation_seeds("qsm/MemoryCutoff-v0", "PPO", 5)
    assert seeds == [reference("hunter2", i) for i in range(5)]
    assert seeds != evaluation_seeds("qsm/MemoryCutoff-v0", "PPO", 5, secret=RELEASE_SALT)
    assert seeds[:3] == evaluation_seeds("qsm/MemoryCutoff-v0", "PPO", 3)  # prefix-stable
    assert seeds != evaluation_seeds("qsm/MemoryCutoff-v0", "CEM", 5)  # per submission
    with pytest.raises(ValueError, match="n must be a positive int, got n=0"):
        evaluation_seeds("qsm/MemoryCutoff-v0", "PPO", 0)


def test_rescoring_is_deterministic_for_a_given_secret(tmp_path):
    sub = _copy(SWAP_ASAP, tmp_path)
    a = score_submission(sub, n_seeds=4, episodes_per_seed=3, secret="s1")
    b = score_submission(sub, n_seeds=4, episodes_per_seed=3, secret="s1")
    c = score_submission(sub, n_seeds=4, episodes_per_seed=3, secret="s2")
    assert a["returns"] == b["returns"] and a["normalised"] == b["normalised"]
    assert a["secret_source"] == "argument"
    # the task is stochastic (random link generation), so other hidden seeds give other episodes
    assert a["returns"] != c["returns"]
    assert not a["flagged"], a["flag_message"]
    # the reported statistics, recomputed from the per-episode returns and the references
    refs = a["references"]
    norm = (np.asarray(a["returns"]) - refs["naive_baseline"]) / (refs["physical_limit"] - refs["naive_baseline"])
    assert norm.shape == (4, 3)
    seed_means = np.sort(norm.mean(axis=1))
    assert a["normalised"]["iqm"] == pytest.approx(seed_means[1:3].mean(), rel=1e-12)  # 4 seeds: drop 1 each end
    assert a["normalised_mean"]["mean"] == pytest.approx(norm.mean(), rel=1e-12)
    assert a["episode_iqm"]["iqm"] == pytest.approx(np.sort(norm.reshape(-1))[3:9].mean(), rel=1e-12)  # 12: drop 3


def test_hidden_episode_keys_follow_the_documented_derivation(tmp_path):
    """Episode j of hidden seed i runs from fold_in(PRNGKey(seed_i), j): one episode replayed
    here through ``open_loop_return`` directly gives the scorer's return exactly."""
    import jax

    from qsmgym.agents.rollout import open_loop_return
    from qsmgym.envs.registry import make_task
    from qsmgym.leaderboard.submission import load_submission

    sub = load_submission(SWAP_ASAP)
    r = score_submission(SWAP_ASAP, n_seeds=2, episodes_per_seed=3, secret="k")
    seed = evaluation_seeds(sub.env_id, sub.agent, 2, secret="k")[1]
    task = make_task(sub.env_id)
    params = task.default_params()
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 2)
    ret, _ = open_loop_return(task, params, task.precompute(params), key, jax.numpy.asarray(sub.actions))
    assert r["returns"][1][2] == float(ret)


def test_inflated_claim_is_flagged_stochastic_task(tmp_path):
    honest = score_submission(_copy(NO_CUTOFF, tmp_path / "h"), n_seeds=8, episodes_per_seed=4)
    assert not honest["flagged"], honest["flag_message"]
    # claimed returns 20% above what was measured (+0.06 normalised; the per-episode spread is
    # ~0.04, so 32 episodes give CIs about +-0.015 wide: disjoint)
    inflated = score_submission(_copy(NO_CUTOFF, tmp_path / "i", scale=1.2), n_seeds=8, episodes_per_seed=4)
    assert inflated["flagged"]
    m = inflated["episode_iqm"]
    assert inflated["flag_message"].startswith("flagged: claimed ")
    assert f"measured {m['iqm']:.4f} [{m['low']:.4f}, {m['high']:.4f}]" in inflated["flag_message"]
    assert inflated["returns"] == honest["returns"]  # the claim does not change the re-evaluation


def test_deterministic_task_matches_its_reference_and_flags_a_one_percent_inflation(tmp_path):
    """PhotonStorage's binned inverted pulse: the re-evaluated return (the env stepped bin by
    bin) must equal the task's own ``inverted_binned`` reference (computed by ``run_pulse``,
    one scan over the same propagators): agreement to 1e-9 (float64 rounding of two orderings
    of the same products, observed ~1e-15)."""
    from qsmgym.envs.registry import make_task

    task = make_task("qsm/PhotonStorage-v0")
    refs = task.references(task.default_params())
    honest = score_submission(_copy(INVERTED, tmp_path / "h"), n_seeds=2, episodes_per_seed=1)
    np.testing.assert_allclose(honest["returns"], refs["inverted_binned"], rtol=0, atol=1e-9)
    expected = (refs["inverted_binned"] - refs["naive_baseline"]) / (refs["physical_limit"] - refs["naive_baseline"])
    assert honest["normalised"]["iqm"] == pytest.approx(expected, abs=1e-9)
    assert honest["normalised"]["low"] == honest["normalised"]["high"]  # deterministic: a point
    assert not honest["flagged"]
    inflated = score_submission(_copy(INVERTED, tmp_path / "i", scale=1.01), n_seeds=2, episodes_per_seed=1)
    assert inflated["flagged"] and "flagged: claimed" in inflated["flag_message"]


def test_flag_rule_disjoint_intervals_with_tolerance():
    m = {"iqm": 0.5, "low": 0.4, "high": 0.6}
    assert flag({"iqm": 0.65, "low": 0.55, "high": 0.75}, m) is None  # overlapping
    assert flag({"iqm": 0.7, "low": 0.6 + 2 * FLAG_TOLERANCE, "high": 0.8}, m).startswith("flagged")
    assert flag({"iqm": 0.2, "low": 0.1, "high": 0.4 - 2 * FLAG_TOLERANCE}, m).startswith("flagged")
    assert flag({"iqm": 0.6, "low": 0.6 + FLAG_TOLERANCE / 2, "high": 0.6}, m) is None  # within tolerance


def test_cli_exit_codes_and_one_line_errors(tmp_path, capsys):
    good = _copy(SWAP_ASAP, tmp_path / "g")
    assert cli.main(["validate", str(good)]) == 0
    assert "ok " in capsys.readouterr().out
    bad = _copy(SWAP_ASAP, tmp_path / "b")
    (bad / "evil.pkl").write_bytes(b"\x80\x04.")
    assert cli.main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "evil.pkl" in err and "extension not allowed" in err
    inflated = _copy(NO_CUTOFF, tmp_path / "i", scale=1.3)
    out_json = tmp_path / "scores.json"
    assert cli.main(["score", str(inflated), "--seeds", "8", "--episodes-per-seed", "4", "--out", str(out_json)]) == 1
    assert "flagged: claimed" in capsys.readouterr().out
    assert json.loads(out_json.read_text())["results"][0]["flagged"] is True
    assert cli.main(["score", str(good), "--seeds", "0"]) == 2
    assert "--seeds must be >= 1, got 0" in capsys.readouterr().err


def test_lstm_policy_weights_run_and_an_inflated_policy_claim_is_flagged(tmp_path):
    """The declared-architecture path with an LSTM: random weights of the right shapes load
    and run (deterministically: fixed weights, release-salt seeds). Random weights deliver no
    link within the 1000-slot horizon (measured: -1000 per episode), far below the fixture's
    claimed returns of about -9, so the claim is flagged."""
    from lb_helpers import ARCH, policy_folder, policy_weights
    from qsmgym.envs.registry import make_task

    task = make_task("qsm/RepeaterDelivery-v0")
    params = task.default_params()
    arch = dict(ARCH, network="lstm", lstm_size=6)
    folder = policy_folder(tmp_path, task, params, weights=policy_weights(task, params, arch), arch=arch)
    r = score_submission(folder, n_seeds=2, episodes_per_seed=2)
    assert np.shape(r["returns"]) == (2, 2) and r["kind"] == "policy"
    assert max(max(x) for x in r["returns"]) < -20  # far from the -9 claimed
    assert r["flagged"]
