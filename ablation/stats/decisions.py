"""Decisions on top of `Effect`s: Holm across a family of comparisons, alpha spending across planned
looks (group-sequential evaluation), the verdict words, and the episodes needed for 80% power.

Units: alphas and p-values are probabilities; effects and margins are success fractions (0.10 =
10 percentage points); looks and episode counts are episodes per (arm, seed) network.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np
from scipy.stats import norm
from statsmodels.stats.multitest import multipletests

from ..rules import DEFAULT_RULES
from .effect import Effect

VERDICTS = ("better", "worse", "no meaningful difference", "inconclusive")


def holm(p_values: Mapping[str, float], alpha: float = 0.05) -> dict[str, float]:
    """Holm step-down adjusted p-values for a family of comparisons ({name: p} -> {name: adjusted p},
    statsmodels `multipletests(method="holm")`). A comparison is significant at family-wise level
    alpha when its adjusted p <= alpha (the adjusted p does not depend on alpha)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not p_values:
        return {}
    names = list(p_values)
    p = np.array([float(p_values[n]) for n in names])
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"p-values must lie in [0, 1]: {dict(p_values)}")
    adj = multipletests(p, alpha=alpha, method="holm")[1]
    return {n: float(v) for n, v in zip(names, adj)}


def obrien_fleming_spent(t: float, alpha: float) -> float:
    """Lan-DeMets O'Brien-Fleming-type cumulative alpha spent by information fraction t in (0, 1]:
    alpha*(t) = 2 - 2 Phi(z_{1 - alpha/2} / sqrt(t)); alpha*(1) = alpha."""
    if not 0.0 < t <= 1.0:
        raise ValueError(f"information fraction must be in (0, 1], got {t}")
    return float(2.0 - 2.0 * norm.cdf(norm.ppf(1.0 - alpha / 2.0) / math.sqrt(t)))


@dataclass(frozen=True)
class SequentialDesign:
    """Planned looks at the data as episodes accumulate, with alpha spent across them.

    looks: cumulative episodes per (arm, seed) at each look, strictly increasing (e.g. 20, 35, 50).
    alpha: the overall two-sided level. spending: "obrien_fleming" (Lan-DeMets O'Brien-Fleming
    spending function, t = look / last look: little alpha early, most at the end) or "bonferroni"
    (alpha / K at each of the K looks).

    The nominal level of look k is the increment alpha*(t_k) - alpha*(t_{k-1}). Testing each look at
    its increment (the Holm-adjusted p of the comparison at that look against it) keeps the
    probability of ever declaring a false difference, over all looks and the whole Holm family, at or
    below alpha by the union bound, whatever the correlation between looks; it is conservative
    compared with exact group-sequential boundaries, which also use that correlation. Equivalence
    ("no meaningful difference") claims at a look's nominal level are covered by the same bound.
    """

    looks: tuple[int, ...] = (20, 35, 50)
    alpha: float = 0.05
    spending: Literal["obrien_fleming", "bonferroni"] = "obrien_fleming"

    def __post_init__(self) -> None:
        looks = tuple(int(x) for x in self.looks)
        object.__setattr__(self, "looks", looks)
        if not looks or looks[0] <= 0 or any(b <= a for a, b in zip(looks, looks[1:])):
            raise ValueError(f"looks must be positive and strictly increasing, got {self.looks}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.spending not in ("obrien_fleming", "bonferroni"):
            raise ValueError(f"spending must be 'obrien_fleming' or 'bonferroni', got {self.spending!r}")

    @property
    def information_fractions(self) -> tuple[float, ...]:
        """t_k = looks[k] / looks[-1]."""
        return tuple(x / self.looks[-1] for x in self.looks)

    def cumulative_alpha(self) -> tuple[float, ...]:
        """Alpha spent by each look (cumulative); the last equals alpha."""
        k = len(self.looks)
        if self.spending == "bonferroni":
            return tuple(self.alpha * (i + 1) / k for i in range(k))
        return tuple(obrien_fleming_spent(t, self.alpha) for t in self.information_fractions)

    def nominal_alphas(self) -> tuple[float, ...]:
        """The level each look is tested at: the increments of `cumulative_alpha` (sum = alpha)."""
        cum = (0.0,) + self.cumulative_alpha()
        return tuple(b - a for a, b in zip(cum, cum[1:]))

    def nominal_alpha(self, look: int) -> float:
        """Nominal level of look index `look` (0-based)."""
        return self.nominal_alphas()[self._check(look)]

    def required_n_boot(self, family_size: int = 1) -> int:
        """Bootstrap resamples needed for a decision at the first look to be possible at all: a
        bootstrap p is at least 2 / (n_boot + 1) and Holm multiplies the smallest by family_size,
        so n_boot >= 2 family_size / (smallest nominal alpha) (O'Brien-Fleming's first level is
        tiny: 0.0019 at looks 20/35/50 -> 1030 resamples per comparison in the family)."""
        return math.ceil(2.0 * max(1, family_size) / min(self.nominal_alphas()))

    def look_index(self, episodes: int) -> int | None:
        """0-based index of the last planned look reached with `episodes` per (arm, seed); None
        before the first look."""
        reached = [i for i, x in enumerate(self.looks) if x <= episodes]
        return reached[-1] if reached else None

    def decide_at_look(self, adjusted_p: float, look: int, *, equivalent: bool = False) -> str:
        """"decided" when the comparison's Holm-adjusted p <= this look's nominal alpha (or when
        `equivalent`, i.e. `verdict` at this look's nominal alpha said "no meaningful difference"):
        stop adding episodes for it; otherwise "continue" before the last look and "final" at the
        last look (no more episodes are planned; the verdict stays as it is)."""
        k = self._check(look)
        if equivalent or adjusted_p <= self.nominal_alphas()[k]:
            return "decided"
        return "final" if k == len(self.looks) - 1 else "continue"

    def describe(self) -> str:
        """One line for the report."""
        name = ("Lan-DeMets O'Brien-Fleming spending" if self.spending == "obrien_fleming"
                else "Bonferroni across looks")
        levels = ", ".join(f"{x} eps: {a:.4f}" for x, a in zip(self.looks, self.nominal_alphas()))
        return (f"group-sequential looks at {', '.join(map(str, self.looks))} episodes per arm x seed, "
                f"{name}, overall alpha {self.alpha:g}; nominal level per look ({levels}), "
                f"Holm-adjusted p compared with it (union bound)")

    def _check(self, look: int) -> int:
        if not 0 <= int(look) < len(self.looks):
            raise ValueError(f"look index {look} out of range 0..{len(self.looks) - 1} for looks {self.looks}")
        return int(look)


def verdict(effect: Effect, adjusted_p: float, alpha_nominal: float, *, margin: float = DEFAULT_RULES.margin,
            family_size: int = 1) -> str:
    """The verdict word for one comparison, in this order:

    1. "better" / "worse": adjusted_p <= alpha_nominal (the Holm-adjusted p at this look's nominal
       level), by the sign of the estimate. A significant effect smaller than the margin is still
       "better"/"worse": the direction is established; the report shows its size.
    2. "no meaningful difference": the (1 - 2 alpha_nominal / family_size) equivalence interval
       (`Effect.equivalence_interval`: bootstrap percentile interval, widened to Newcombe's on the
       pooled counts) lies strictly inside (-margin, +margin). This is two one-sided tests (TOST) at
       alpha_nominal / family_size each; family_size > 1 makes it Bonferroni across the family.
    3. "inconclusive": anything else (too few episodes or seeds to tell).
    """
    if not 0.0 < alpha_nominal < 0.5:
        raise ValueError(f"alpha_nominal must be in (0, 0.5), got {alpha_nominal}")
    if margin <= 0:
        raise ValueError(f"margin must be > 0 (a success fraction, 0.10 = 10 points), got {margin}")
    if family_size < 1:
        raise ValueError(f"family_size must be >= 1, got {family_size}")
    if adjusted_p <= alpha_nominal and effect.estimate != 0:
        return "better" if effect.estimate > 0 else "worse"
    lo, hi = effect.equivalence_interval(alpha_nominal / family_size)
    if -margin < lo and hi < margin:
        return "no meaningful difference"
    return "inconclusive"


def episodes_needed(effect: Effect | float, *, alpha: float = 0.05, power: float = 0.8,
                    p_control: float | None = None) -> int | None:
    """Episodes per (arm, seed) network needed to detect the observed effect with a two-sided test at
    `alpha` with probability `power`, keeping the current number of seeds and states design.

    With an `Effect`: the estimate's variance is split as v(n) = v_seed + v_ep * n0 / n, where
    v_seed = `effect.seed_variance` (between-seed spread, method of moments; more episodes per seed
    do not shrink it), v_ep = bootstrap variance - v_seed, n0 = `effect.episodes_per_seed`; solve
    v(n) = (delta / (z_{1-alpha/2} + z_power))^2 with delta the observed effect. The bootstrap
    variance carries the pairing and the design effect of the seeds; with one seed and no
    per-state difficulty it is the textbook two-proportion formula. It is an approximation: it
    takes the observed effect as true (post-hoc power, so it is optimistic for effects that were
    lucky), uses z (not the small-df t of `Effect.interval`), and with tasks as a random factor
    treats the between-task variance as if it shrank with episodes (use `per_task_effects` for a
    per-task statement).

    With a float (an effect in fractions): the textbook two-proportion formula
    n = (z_{1-alpha/2} + z_power)^2 (p1 q1 + p0 q0) / delta^2 with p0 = p_control (default 0.5)
    and p1 = p0 + delta (independent episodes, one seed).

    Returns None when the effect is 0 (nothing to detect) or when the seed-level variance alone
    exceeds the target variance (more episodes cannot reach the power: add seeds instead).
    """
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha}, {power}")
    z2 = (norm.ppf(1.0 - alpha / 2.0) + norm.ppf(power)) ** 2
    if isinstance(effect, Effect):
        delta = effect.estimate
        if not math.isfinite(delta) or abs(delta) < 1e-12:
            return None
        target = delta ** 2 / z2
        v_seed = effect.seed_variance
        v_ep = max(effect.boot_variance - v_seed, 0.0)
        if target <= v_seed:
            return None
        if v_ep == 0.0:
            # all episodes agree (e.g. 0% vs 100%): the variance of one more Bernoulli pair is the
            # floor, i.e. at least one episode per network
            return 1
        return max(1, math.ceil(effect.episodes_per_seed * v_ep / (target - v_seed)))
    delta = float(effect)
    if not math.isfinite(delta) or abs(delta) < 1e-12:
        return None
    p0 = 0.5 if p_control is None else float(p_control)
    p1 = p0 + delta
    if not (0.0 <= p0 <= 1.0 and 0.0 <= p1 <= 1.0):
        raise ValueError(f"p_control={p0} with effect {delta} leaves [0, 1]")
    var = p1 * (1 - p1) + p0 * (1 - p0)
    return max(1, math.ceil(z2 * var / delta ** 2))


@dataclass(frozen=True)
class StepDown:
    """Result of `holm_difference_equivalence` for one comparison.

    p_diff_adj / p_equiv_adj: adjusted p of the difference test (effect = 0) and of the equivalence
    test (|effect| >= margin); divisor: the Holm divisor the difference test was judged with (the
    decision interval is at level 1 - alpha / divisor, so it excludes 0 exactly when "better"/"worse"
    was declared); equiv_divisor likewise for the equivalence test (its interval is at 1 - 2 alpha /
    equiv_divisor)."""

    p_diff_adj: float
    p_equiv_adj: float
    divisor: int
    equiv_divisor: int


def holm_difference_equivalence(p_diff: Mapping[str, float], p_equiv: Mapping[str, float],
                                alpha: float) -> dict[str, StepDown]:
    """One Holm-type family over both questions of every comparison: "is there a difference?" (H0:
    effect = 0) and "is it smaller than the margin?" (H0: |effect| >= margin).

    The two nulls of one comparison are disjoint, so at most one of them is true: at most M of the 2M
    hypotheses can be true at once. Shaffer's (1986) step-down uses that: the i-th smallest p is
    compared with alpha / t_i, t_i = the number of comparisons that still have an unrejected
    hypothesis before step i (it starts at M, not 2M, and drops only when both of a comparison's
    hypotheses are rejected). This keeps the family-wise error over every "better", "worse" and "no
    meaningful difference" at alpha, with the power of Holm over M for the difference tests.
    Adjusted p = running max of t_i p_(i), capped at 1."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if set(p_diff) != set(p_equiv):
        raise ValueError(f"difference and equivalence p-values must name the same comparisons: "
                         f"{sorted(p_diff)} vs {sorted(p_equiv)}")
    tests = sorted([(float(p), name, "d") for name, p in p_diff.items()] +
                   [(float(p), name, "e") for name, p in p_equiv.items()], key=lambda x: (x[0], x[2]))
    open_ = {name: 2 for name in p_diff}   # unrejected hypotheses per comparison
    running, stopped = 0.0, False
    adj: dict[tuple[str, str], float] = {}
    div: dict[tuple[str, str], int] = {}
    stop_div = None
    for p, name, kind in tests:
        t = sum(1 for v in open_.values() if v > 0)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-values must lie in [0, 1]: {name} {kind} {p}")
        running = max(running, min(1.0, t * p))
        adj[(name, kind)] = running
        if not stopped and running <= alpha:
            div[(name, kind)] = t
            open_[name] -= 1   # treated as rejected for the next steps' t
        else:
            if not stopped:
                stopped, stop_div = True, t
            div[(name, kind)] = stop_div
    return {n: StepDown(adj[(n, "d")], adj[(n, "e")], div[(n, "d")], div[(n, "e")]) for n in p_diff}

