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
