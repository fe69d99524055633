"""Session fixture of the leaderboard tests: the checked-in submissions scored once (CI settings)."""

from __future__ import annotations

import pytest

from lb_helpers import CI_SEEDS, SUBMISSIONS


@pytest.fixture(scope="session")
def ci_scores():
    """``score_all`` of every checked-in submission with the public release salt."""
    from qsmgym.leaderboard.scorer import score_all

    mp = pytest.MonkeyPatch()
    mp.delenv("QSM_LEADERBOARD_SECRET", raising=False)  # CI: the public salt, reproducible by anyone
    try:
        return score_all(SUBMISSIONS, n_seeds=CI_SEEDS, episodes_per_seed=1, log=print)
    finally:
        mp.undo()
