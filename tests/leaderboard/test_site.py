"""Site generation without a browser: submitted strings are escaped, pages and plots exist."""

from __future__ import annotations

import pytest

from qsmgym.leaderboard.site import build_site


def _result(env_id, agent, iqm, description="d", flagged=False):
    ci = {"iqm": iqm, "low": iqm - 0.1, "high": iqm + 0.1}
    return {"env_id": env_id, "agent": agent, "kind": "open_loop", "description": description,
            "n_seeds": 4, "episodes_per_seed": 1, "episode_iqm": ci, "references": {"physical_limit": 1.0, "naive_baseline": 0.0},
            "returns": [iqm] * 4, "score": ci, "normalised": ci, "normalised_mean": {"mean": iqm, "low": 0, "high": 1},
            "claimed": {"n": 4, "normalised": ci}, "flagged": flagged,
            "flag_message": "flagged: claimed <b>1</b>" if flagged else None,
            "compute": {"device": "cpu", "wall_seconds": 1.0, "env_steps": 10},
            "curve": {"env_steps": [1, 10], "normalised": [0.1, iqm], "label": "best"}}


def test_submitted_strings_are_escaped_and_pages_exist(tmp_path):
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    scores = {"secret_source": "release-salt", "results": [
        _result("qsm/A-v0", "good", 0.8), _result("qsm/A-v0", "x<i>", 0.5, description=evil, flagged=True),
        _result("qsm/B-v0", "other", 0.3)]}
    index = build_site(scores, tmp_path)
    pages = [index, tmp_path / "tasks" / "A-v0.html", tmp_path / "tasks" / "B-v0.html"]
    for page in pages:
        text = page.read_text()
        assert "<script" not in text and "onerror=alert" not in text.replace("onerror=alert(1)&gt;", "")
        assert "<i>" not in text and "<b>1</b>" not in text
    assert "&lt;script&gt;" in pages[1].read_text()
    for png in ("overview.png", "tasks/A-v0_bars.png", "tasks/A-v0_curves.png", "tasks/B-v0_curves.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # ranking within a task follows the normalised IQM
    a = pages[1].read_text()
    assert a.index(">good<") < a.index(">x&lt;i&gt;<")
    with pytest.raises(ValueError, match="at least one scored submission"):
        build_site({"results": []}, tmp_path / "empty")
