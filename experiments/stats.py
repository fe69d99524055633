"""Aggregate statistics for results tables: the interquartile mean and stratified-bootstrap
confidence intervals (Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice",
the method of the rliable library).

    from qsmgym.experiments.stats import iqm, stratified_bootstrap_ci
    scores = {"qsm/KickedTopSensor-v0": np.array([0.31, 0.35, 0.29, 0.40, 0.33]),
              "qsm/MemoryCutoff-v0": np.array([0.52, 0.55, 0.49, 0.51, 0.60])}
    ci = stratified_bootstrap_ci(scores)          # BootstrapCI(point, low, high)
    ci.point == iqm(np.concatenate(list(scores.values())))

Pure NumPy/SciPy: no JAX here, so the statistics are exact float64 and cheap.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import scipy.stats


def iqm(x, axis: int | None = None) -> np.ndarray | float:
    """Interquartile mean: the mean of the middle 50% of the values.

    ``scipy.stats.trim_mean(x, 0.25)`` semantics: sort, drop ``int(0.25 * n)`` values from each
    end, average the rest (so n = 5 averages the middle 3; n < 4 drops nothing).

    Args:
        x: array of scores (any shape).
        axis: axis to reduce (None: all values, flattened).

    Returns:
        float for ``axis=None``, else the array reduced over ``axis``.

    Raises:
        ValueError: x is empty.

    Example:
        >>> iqm([1.0, 2.0, 3.0, 4.0, 100.0])
        3.0
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        raise ValueError(f"x must not be empty, got shape {x.shape}")
    out = scipy.stats.trim_mean(x, 0.25, axis=axis)
    return float(out) if axis is None else out


class BootstrapCI(NamedTuple):
    """A point estimate and its percentile confidence interval [low, high]."""

    point: float
    low: float
    high: float


def _check_scores(scores_by_task) -> dict[str, np.ndarray]:
    if not isinstance(scores_by_task, dict) or not scores_by_task:
        raise ValueError(f"scores_by_task must be a non-empty dict of task -> scores, got {scores_by_task!r}")
    out = {}
    for task, scores in scores_by_task.items():
        arr = np.asarray(scores, dtype=np.float64).reshape(-1)
        if arr.size == 0:
            raise ValueError(f"scores_by_task[{task!r}] must hold at least one score, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"scores_by_task[{task!r}] must be finite, got {arr.tolist()}")
        out[task] = arr
    return out


def bootstrap_indices(sizes: list[int], n_boot: int, seed: int) -> list[np.ndarray]:
    """The resampling of ``stratified_bootstrap_ci``: for each stratum (task) of ``sizes[i]``
    runs, an (n_boot, sizes[i]) array of indices drawn with replacement within the stratum.
    Strata are drawn in order from one ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, size=(n_boot, n)) for n in sizes]


def stratified_bootstrap_ci(
    scores_by_task: dict[str, np.ndarray],
    statistic: Callable = iqm,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> BootstrapCI:
    """Point estimate and percentile bootstrap CI of ``statistic`` over all runs of all tasks.

    Each bootstrap replicate resamples the runs (seeds) of every task with replacement,
    keeping each task's number of runs (stratification: every task keeps its weight), pools
    the resampled scores and applies ``statistic``. The CI is the (alpha/2, 1 - alpha/2)
    percentiles of the replicates. With one task this is the plain bootstrap over seeds.

    Args:
        scores_by_task: task -> (n_runs,) normalised scores (finite; tasks may differ in n_runs).
        statistic: maps a 1-D array to a float; if it accepts ``axis=`` (as ``iqm``,
            ``np.mean``, ``np.median``) the replicates are evaluated in one vectorised call,
            else one call per replicate.
        n_boot: bootstrap replicates (>= 1).
        alpha: 1 - confidence level, in (0, 1).
        seed: seed of the resampling (the CI is deterministic given it).

    Returns:
        ``BootstrapCI(point, low, high)``: statistic of the pooled original scores and the
        percentile interval.

    Raises:
        ValueError: empty input, a task without scores, non-finite scores, bad n_boot/alpha.

    Example:
        >>> ci = stratified_bootstrap_ci({"a": np.arange(10.0)}, n_boot=500)
        >>> ci.low <= ci.point <= ci.high
        True
    """
    scores = _check_scores(scores_by_task)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got n_boot={n_boot!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie in (0, 1), got alpha={alpha!r}")
    arrays = list(scores.values())
    point = float(statistic(np.concatenate(arrays)))
    indices = bootstrap_indices([a.size for a in arrays], int(n_boot), seed)
    # (n_boot, total runs): replicate b pools every task's resampled runs
    replicates = np.concatenate([a[idx] for a, idx in zip(arrays, indices)], axis=1)
    try:
        values = np.asarray(statistic(replicates, axis=1), dtype=np.float64)
        if values.shape != (n_boot,):
            raise TypeError
    except TypeError:
        values = np.array([float(statistic(row)) for row in replicates])
    low, high = np.percentile(values, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return BootstrapCI(point, float(low), float(high))
