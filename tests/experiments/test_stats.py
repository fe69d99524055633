"""IQM and stratified-bootstrap CIs against hand-computed cases and a slow reference loop."""

import numpy as np
import pytest
import scipy.stats

from qsmgym.experiments.stats import BootstrapCI, bootstrap_indices, iqm, stratified_bootstrap_ci


def _slow_iqm(values):
    """Textbook IQM: sort, drop floor(n/4) from each end, average the rest."""
    v = sorted(float(x) for x in values)
    cut = int(0.25 * len(v))
    kept = v[cut: len(v) - cut]
    return sum(kept) / len(kept)


def test_iqm_hand_computed_cases():
    assert iqm([1.0, 2.0, 3.0, 4.0, 100.0]) == 3.0  # n=5: drop 1 each end -> mean(2, 3, 4)
    assert iqm([4.0, 1.0, 3.0, 2.0]) == 2.5  # n=4: drop 1 each end -> mean(2, 3)
    assert iqm([7.0]) == 7.0
    assert iqm([1.0, 5.0, 9.0]) == 5.0  # n=3: int(0.75) = 0, nothing dropped
    assert iqm(np.arange(8.0)) == 3.5  # drop 0, 1 and 6, 7 -> mean(2..5)


def test_iqm_matches_scipy_and_slow_loop_with_axis():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 11))
    np.testing.assert_allclose(iqm(x, axis=1), scipy.stats.trim_mean(x, 0.25, axis=1), rtol=0, atol=1e-15)
    np.testing.assert_allclose(iqm(x, axis=1), [_slow_iqm(row) for row in x], rtol=0, atol=1e-14)
    assert iqm(x) == pytest.approx(_slow_iqm(x.ravel()), abs=1e-14)


def test_iqm_rejects_empty():
    with pytest.raises(ValueError, match="x must not be empty"):
        iqm([])


def _slow_stratified_ci(scores_by_task, statistic, n_boot, alpha, seed):
    """Reference: one replicate at a time, with the same draws (bootstrap_indices)."""
    tasks = list(scores_by_task)
    idx = bootstrap_indices([len(scores_by_task[t]) for t in tasks], n_boot, seed)
    values = []
    for b in range(n_boot):
        pooled = []
        for t, ind in zip(tasks, idx):
            pooled.extend(float(scores_by_task[t][i]) for i in ind[b])
        values.append(statistic(pooled))
    values = sorted(values)
    pooled_all = [float(v) for t in tasks for v in scores_by_task[t]]
    # np.percentile's default "linear" rule, written out
    def pct(q):
        pos = q / 100.0 * (n_boot - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, n_boot - 1)
        return values[lo] + (pos - lo) * (values[hi] - values[lo])
    return statistic(pooled_all), pct(100 * alpha / 2), pct(100 * (1 - alpha / 2))


def test_stratified_ci_matches_slow_loop():
    rng = np.random.default_rng(3)
    scores = {"a": rng.normal(0.3, 0.1, 5), "b": rng.normal(0.7, 0.05, 7), "c": rng.uniform(0, 1, 4)}
    ci = stratified_bootstrap_ci(scores, n_boot=300, alpha=0.1, seed=11)
    ref = _slow_stratified_ci(scores, _slow_iqm, 300, 0.1, 11)
    np.testing.assert_allclose(tuple(ci), ref, rtol=0, atol=1e-12)  # same draws: round-off only


def test_statistic_without_axis_falls_back_to_a_loop():
    scores = {"a": np.array([0.1, 0.4, 0.2, 0.9]), "b": np.array([1.0, 2.0, 3.0])}
    fast = stratified_bootstrap_ci(scores, statistic=np.mean, n_boot=200, seed=2)
    slow = stratified_bootstrap_ci(scores, statistic=lambda v: float(np.mean(v)), n_boot=200, seed=2)
    np.testing.assert_allclose(tuple(fast), tuple(slow), rtol=0, atol=1e-15)
    assert fast.point == pytest.approx(np.mean([0.1, 0.4, 0.2, 0.9, 1.0, 2.0, 3.0]), abs=1e-15)


def test_stratification_keeps_each_task_in_every_replicate():
    # two tasks whose scores never overlap: an unstratified bootstrap of the pool could draw
    # six runs of one task; stratified, every replicate holds three runs of each, so its mean
    # lies in [(3 * 0.0 + 3 * 10.0) / 6, (3 * 0.2 + 3 * 10.2) / 6] = [5.0, 5.2].
    scores = {"low": np.array([0.0, 0.1, 0.2]), "high": np.array([10.0, 10.1, 10.2])}
    ci = stratified_bootstrap_ci(scores, statistic=np.mean, n_boot=2000)
    assert ci.low >= (0.0 + 10.0) / 2 and ci.high <= (0.2 + 10.2) / 2


def test_single_task_is_plain_bootstrap_and_constant_scores_give_zero_width():
    x = np.array([0.2, 0.5, 0.1, 0.8, 0.4])
    ci = stratified_bootstrap_ci({"t": x}, n_boot=500, seed=5)
    rng = np.random.default_rng(5)
    boot = np.sort([iqm(x[i]) for i in rng.integers(0, 5, size=(500, 5))])
    np.testing.assert_allclose((ci.low, ci.high), np.percentile(boot, [2.5, 97.5]), rtol=0, atol=1e-15)
    assert ci.point == iqm(x) and ci.low <= ci.point <= ci.high
    flat = stratified_bootstrap_ci({"t": np.full(5, 0.3)})
    assert flat == BootstrapCI(pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.3))


def test_coverage_of_the_mean_is_near_nominal():
    # Sampling check: 95% percentile-bootstrap CIs of the mean of 30 normal draws cover the
    # true mean in ~93-95% of 400 repeats (percentile CIs undercover slightly at n=30);
    # binomial sd of the rate is ~1.1%, so [0.88, 0.99] is > 4 sd wide on either side.
    rng = np.random.default_rng(0)
    hits = 0
    for r in range(400):
        x = rng.normal(1.0, 1.0, 30)
        ci = stratified_bootstrap_ci({"t": x}, statistic=np.mean, n_boot=400, seed=r)
        hits += ci.low <= 1.0 <= ci.high
    assert 0.88 <= hits / 400 <= 0.99


@pytest.mark.parametrize("kwargs, match", [
    (dict(scores_by_task={}), "non-empty dict"),
    (dict(scores_by_task={"a": []}), r"scores_by_task\['a'\] must hold"),
    (dict(scores_by_task={"a": [0.1, np.nan]}), "must be finite"),
    (dict(scores_by_task={"a": [0.1]}, n_boot=0), "n_boot"),
    (dict(scores_by_task={"a": [0.1]}, alpha=1.5), "alpha"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        stratified_bootstrap_ci(**kwargs)
