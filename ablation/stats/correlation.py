"""Rank correlation with a bootstrap interval: is a cheap proxy (e.g. final training loss) ordered
like closed-loop success across arms x seeds?"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Sequence

import numpy as np
from scipy import stats as sps


class RankCorrelation(NamedTuple):
    """Spearman's rho (unitless, -1..1), its bootstrap percentile interval (lo, hi) and n pairs."""

    rho: float
    lo: float
    hi: float
    n: int


def _spearman_vec(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho along `axis` (Pearson on average ranks); NaN where a sample is constant."""
    rx = sps.rankdata(x, axis=axis)
    ry = sps.rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    den = np.sqrt((rx ** 2).sum(axis=axis) * (ry ** 2).sum(axis=axis))
    num = (rx * ry).sum(axis=axis)
    return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=den > 0)


def rank_correlation(x: Sequence[float], y: Sequence[float], *, conf: float = 0.95, n_boot: int = 4000,
                     rng_seed: int = 0) -> RankCorrelation:
    """Spearman's rho of paired observations (scipy.stats.spearmanr) with an equal-tailed percentile
    interval from a paired bootstrap of the (x, y) pairs (scipy.stats.bootstrap, paired=True).
    Resamples in which x or y is constant have no rho and are left out of the interval; with fewer
    than 3 pairs, or constant x or y, everything but n is NaN. NaN pairs are rejected."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError(f"x and y must be 1-D and of equal length, got {xa.shape} and {ya.shape}")
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
        raise ValueError("x and y must be finite")
    n = int(xa.size)
    if n < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return RankCorrelation(math.nan, math.nan, math.nan, n)
    rho = float(np.clip(sps.spearmanr(xa, ya).statistic, -1.0, 1.0))
    with warnings.catch_warnings():  # a degenerate (e.g. rho = 1 everywhere) distribution is fine here
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)
        res = sps.bootstrap((xa, ya), _spearman_vec, paired=True, vectorized=True, n_resamples=n_boot,
                            confidence_level=conf, method="percentile", rng=np.random.default_rng(rng_seed))
    dist = np.asarray(res.bootstrap_distribution, dtype=float)
    dist = dist[np.isfinite(dist)]
    if dist.size == 0:
        return RankCorrelation(rho, math.nan, math.nan, n)
    lo, hi = np.quantile(dist, [(1 - conf) / 2, (1 + conf) / 2])
    return RankCorrelation(rho, float(lo), float(hi), n)


def within_group_rank_correlation(x: Sequence[float], y: Sequence[float], groups: Sequence[str], *,
                                  conf: float = 0.95, n_boot: int = 4000, rng_seed: int = 0) -> RankCorrelation:
    """Rank correlation of x with y *within* groups, with a bootstrap of the points within each group.

    For a proxy whose units differ between groups (the training loss of arms with different action
    scales), a correlation across groups is mechanical: it ranks the units, not the runs. Within each
    group x and y are ranked (average ranks) and centred; rho is the correlation of those centred
    ranks pooled over the groups (groups of one point carry nothing). The groups are the fixed arms of
    the study and their runs (independently trained networks) are the replicates, so the interval
    resamples runs within each group and re-ranks them. (Resampling whole groups, as this did before,
    ignores the noise within a group: with 3 arms x 8 runs and no true relation its 95% interval held
    0 in 77% of studies; tests/test_stats.py measures this one.) n counts the points in groups of two
    or more; NaNs when fewer than 2 such groups or no variation within them."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    g = np.asarray([str(v) for v in groups], dtype=object)
    if not (xa.shape == ya.shape == g.shape) or xa.ndim != 1:
        raise ValueError(f"x, y and groups must be 1-D and of equal length, got {xa.shape}, {ya.shape}, {g.shape}")
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
        raise ValueError("x and y must be finite")
    names = [n for n in dict.fromkeys(g.tolist()) if (g == n).sum() >= 2]
    members = [(xa[g == n], ya[g == n]) for n in names]
    n_pts = int(sum(len(a) for a, _ in members))
    if len(members) < 2:
        return RankCorrelation(math.nan, math.nan, math.nan, n_pts)

    def sums(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centred-rank cross and square sums along the last axis (one row per resample)."""
        rx, ry = sps.rankdata(xs, axis=-1), sps.rankdata(ys, axis=-1)
        rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
        return (rx * ry).sum(-1), (rx * rx).sum(-1), (ry * ry).sum(-1)

    def pooled(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
        sxy, sxx, syy = (sum(p[k] for p in parts) for k in range(3))
        den = np.sqrt(sxx * syy)
        return np.divide(sxy, den, out=np.full(np.shape(sxy), np.nan), where=den > 0)

    rho = float(pooled([sums(a, b) for a, b in members]))
    if not math.isfinite(rho):
        return RankCorrelation(math.nan, math.nan, math.nan, n_pts)
    rng = np.random.default_rng(rng_seed)
    parts = []
    for a, b in members:
        idx = rng.integers(0, len(a), size=(n_boot, len(a)))
        parts.append(sums(a[idx], b[idx]))
    dist = pooled(parts)
    dist = dist[np.isfinite(dist)]
    lo, hi = np.quantile(dist, [(1 - conf) / 2, (1 + conf) / 2]) if dist.size else (math.nan, math.nan)
    return RankCorrelation(rho, float(lo), float(hi), n_pts)
