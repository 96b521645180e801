"""The verdict rules of a hypothesis of kind correlation (H2: the loss as a proxy for success).

The rank correlation of a per-run figure with success (within arms, or over every run), its verdict
and what an inconclusive one would need; and the reading across arms (`Correlation.reversal`): a
decided comparison whose winner ended every run at a higher figure than every run of the loser.
verdicts.hypothesis_verdict combines them with the comparisons.
"""
from __future__ import annotations

import math
from typing import Sequence

from .analysis import ComparisonResult
from .hypothesis import Hypothesis
from .rules import DEFAULT_RULES, DecisionRules
from .stats import rank_correlation, within_group_rank_correlation


def correlation_verdict(h: Hypothesis, corr: dict | None, rules: DecisionRules) -> str:
    lo, hi = (corr or {}).get("lo"), (corr or {}).get("hi")
    if lo is None or hi is None or lo != lo:
        return "INCONCLUSIVE"
    want = h.correlation.expect
    if want == "positive":
        return "SUPPORTED" if lo > 0 else "CONTRADICTED" if hi < 0 else "INCONCLUSIVE"
    if want == "negative":
        return "SUPPORTED" if hi < 0 else "CONTRADICTED" if lo > 0 else "INCONCLUSIVE"
    # "none": no strong negative relation (a lower x does not reliably mean more success)
    return "SUPPORTED" if lo > -rules.corr_strong else "NOT SUPPORTED" if hi < -rules.corr_strong else "INCONCLUSIVE"


REVERSAL_ALPHA = 0.05   # the separation test of loss_reversal (the comparison itself is the family's)
REVERSAL = "reversal across arms"   # how loss_reversal's line starts (the report's answer looks for it)


def loss_reversal(h: Hypothesis, comps: Sequence[ComparisonResult], corr: dict | None) -> str:
    """A reversal across arms (Correlation.reversal): a decided better/worse comparison whose winner ended
    every run at a higher x than every run of the loser. Returns its line, or "" when there is none."""
    ranges = (corr or {}).get("arm_x") or {}
    if not (h.correlation and h.correlation.reversal and ranges):
        return ""
    for c in comps:
        if c.word not in ("better", "worse") or c.arm not in ranges or c.control not in ranges:
            continue
        win, lose = (c.arm, c.control) if c.word == "better" else (c.control, c.arm)
        (w_lo, _w_hi, n_w), (_l_lo, l_hi, n_l) = ranges[win], ranges[lose]
        # Complete separation of the two arms' x, as an exact one-sided rank test: p = 1 / C(n_w + n_l, n_w);
        # it must be <= 0.05 (3 runs against 3 at least), or a separation could be luck.
        p_sep = 1.0 / math.comb(int(n_w) + int(n_l), int(n_w))
        if w_lo > l_hi and p_sep <= REVERSAL_ALPHA:
            rate = {c.arm: c.rate_arm, c.control: c.rate_control}
            return (f"{REVERSAL}: {win} succeeded more ({100 * (rate[win] or 0):.0f}% vs "
                    f"{100 * (rate[lose] or 0):.0f}%, {c.arm} vs {c.control} {c.word}, decided in the family) although "
                    f"every one of its {n_w} runs ended at a higher {h.correlation.x} (>= {w_lo:.3g}) than every one of "
                    f"{lose}'s {n_l} (<= {l_hi:.3g}; exact rank test of that separation p = {p_sep:.2g})")
    return ""


def correlation_needs(h: Hypothesis, corr: dict | None, rules: DecisionRules) -> str:
    """What an inconclusive correlation would need: the runs at which an interval of the same centre
    would clear the rule's threshold, if it narrows as 1/sqrt(runs) (a stated assumption: more runs of the
    same arms). "" when there is no interval to scale."""
    try:
        lo, hi, n = float(corr["lo"]), float(corr["hi"]), int(corr["n"])
    except (TypeError, KeyError, ValueError):
        return ""
    if not (lo == lo and hi == hi) or n < 2 or hi <= lo:
        return ""
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    want = h.correlation.expect
    threshold = -rules.corr_strong if want == "none" else 0.0
    gap = abs(centre - threshold)   # how far the centre sits from the line the interval must clear
    if gap < 1e-9:
        return f"rho sits on the rule's threshold ({threshold:+.2f}): no number of runs would decide it"
    need = math.ceil(n * (half / gap) ** 2)
    return (f"an interval this wide (+-{half:.2f} over {n} runs) would clear {threshold:+.2f} at about {need} runs "
            "of the same arms, if it narrows as 1/sqrt(runs)")


def rho_text(corr: dict) -> str:
    """'rho +0.38 [-0.22, +0.75]': a rank correlation with its interval."""
    return f"rho {corr['rho']:+.2f} [{corr['lo']:+.2f}, {corr['hi']:+.2f}]"


def correlation_of(h: Hypothesis, points: Sequence[tuple[str, float | None, float | None]],
                   rules: DecisionRules = DEFAULT_RULES) -> dict:
    """The correlation a hypothesis of kind correlation asks for, from (arm, x, success) per run.
    within: arm ranks inside each arm and resamples arms; none correlates every run."""
    rules = h.rule_overrides(rules)
    pts_ = [(a, x, y) for a, x, y in points if x is not None and y is not None and y == y and x == x]
    within = h.correlation.within == "arm"
    ranges = arm_x_ranges(pts_)   # for the reversal across arms, whatever the correlation gives
    if len(pts_) < 4:
        return {"word": "inconclusive", "n": len(pts_), "why": f"only {len(pts_)} arm x seed points (need >= 4)",
                "arm_x": ranges}
    arms, xs, ys = zip(*pts_)
    rc = (within_group_rank_correlation(xs, ys, arms) if within else rank_correlation(xs, ys))
    if rc.lo != rc.lo:
        why = ("fewer than 2 arms with 2 or more runs that vary" if within else "x or y is constant")
        return {"word": "inconclusive", "n": rc.n, "why": why, "within": within, "arm_x": ranges}
    word = ("positive" if rc.lo > 0 else "negative" if rc.hi < 0 else
            "none" if max(abs(rc.lo), abs(rc.hi)) < rules.corr_strong else "unclear")
    return {"rho": rc.rho, "lo": rc.lo, "hi": rc.hi, "n": rc.n, "word": word, "within": within,
            "arm_x": ranges}


def arm_x_ranges(points: Sequence[tuple[str, float, float]]) -> dict[str, tuple[float, float, int]]:
    """(lowest x, highest x, runs) per arm: what loss_reversal compares across arms."""
    by: dict[str, list[float]] = {}
    for a, x, _y in points:
        by.setdefault(a, []).append(float(x))
    return {a: (min(v), max(v), len(v)) for a, v in by.items()}
