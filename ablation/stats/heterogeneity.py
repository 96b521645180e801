"""Do tasks disagree about an effect: Cochran's Q and the opposite-signs rule over per-task effects."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class Heterogeneity:
    """Do tasks disagree about an effect?

    opposite_signs: some task's interval lies wholly above 0 and another's wholly below 0.
    q, df, p: Cochran's Q = sum_t w_t (e_t - e_pooled)^2 with w_t = 1 / var_t (bootstrap variance,
      floored, see `heterogeneity`), df = n_tasks - 1, p from chi-square(df); i2 = max(0, (Q - df) / Q).
    disagree: opposite_signs or p < alpha. note: the one-line text for the report.
    """

    n_tasks: int
    opposite_signs: bool
    q: float
    df: int
    p: float
    i2: float
    disagree: bool
    note: str


def heterogeneity(per_task: Mapping[str, Any], *, alpha: float = 0.05) -> Heterogeneity:
    """Heterogeneity of per-task effects (`Effect`s from `per_task_effects`, or `SeedEffect`s from
    `per_task_seed_effects`: anything with estimate, lo, hi, variance and episode counts).

    Each task's variance is its estimate's variance, floored at the variance of a difference of two
    proportions of 1 / (N + 2) over N episodes per arm (so a task at 0% or 100% in both arms, whose
    bootstrap variance is 0, does not get infinite weight). Cochran's Q has low power with few
    tasks, hence the additional opposite-signs rule."""
    items = sorted(per_task.items())
    names = [k for k, _ in items]
    if len(items) < 2:
        return Heterogeneity(len(items), False, 0.0, 0, 1.0, 0.0, False,
                             "heterogeneity: fewer than 2 tasks, not assessed")
    e = np.array([ef.estimate for _, ef in items])
    floor = []
    for _, ef in items:
        n = max(min(ef.n_episodes_arm, ef.n_episodes_control), 1)
        p0 = 1.0 / (n + 2)
        floor.append(2 * p0 * (1 - p0) / n)
    v = np.maximum([ef.variance for _, ef in items], floor)
    w = 1.0 / v
    pooled = float((w * e).sum() / w.sum())
    q = float((w * (e - pooled) ** 2).sum())
    df = len(items) - 1
    p = float(sps.chi2.sf(q, df))
    i2 = max(0.0, (q - df) / q) if q > 0 else 0.0
    above = [n for n, (_, ef) in zip(names, items) if ef.lo > 0]
    below = [n for n, (_, ef) in zip(names, items) if ef.hi < 0]
    opposite = bool(above and below)
    disagree = opposite or p < alpha
    if opposite:
        note = f"tasks disagree: better on {', '.join(above)}, worse on {', '.join(below)}"
    elif p < alpha:
        note = f"tasks disagree in size (Cochran's Q={q:.2f}, df={df}, p={p:.3g}, I2={100 * i2:.0f}%)"
    else:
        note = f"no evidence that tasks disagree (Cochran's Q={q:.2f}, df={df}, p={p:.3g}, I2={100 * i2:.0f}%)"
    return Heterogeneity(len(items), opposite, q, df, p, i2, disagree, note)
