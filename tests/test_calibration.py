"""A small version of benchmarks/calibration.py: the error rates the report prints are measured.

Synthetic studies with a known truth (seed, state and arm x state effects on the logit scale; see
ablation/calibration.py). Each check has a tolerance that the pre-calibration method (the
hierarchical bootstrap, `stats.paired_effect`) fails: `test_the_old_method_fails_the_same_checks`
runs it on the same draws, so these tests can tell a broken method from a calibrated one.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from ablation.analysis import ArmFacts, with_demo_spread
from ablation.calibration import (calibration_for, draw_outcomes, draw_world, mu_for_rate, plan_hypotheses,
                                  run_procedure, to_records, trained_arms)
from ablation.rules import DEFAULT_RULES
from ablation.stats import paired_effect, seed_effect

SD_STATE = 1.0


def null_pvalues(method, n: int, rate: float = 0.5, sd_seed: float = 0.6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mu = mu_for_rate(rate, sd_seed, SD_STATE)
    out = []
    for _ in range(n):
        w = draw_world(rng, {"a": mu, "c": mu}, n_seeds=3, n_states=50, sd_seed=sd_seed, sd_state=SD_STATE)
        out.append(method(to_records(draw_outcomes(rng, w), {"a": 50, "c": 50})))
    return np.array(out)


def coverage(method, n: int, rc: float = 0.03, ra: float = 0.60, sd_seed: float = 0.6, seed: int = 1) -> float:
    rng = np.random.default_rng(seed)
    mu_c, mu_a = mu_for_rate(rc, sd_seed, SD_STATE, 0.3), mu_for_rate(ra, sd_seed, SD_STATE, 0.3)
    hit = 0
    for _ in range(n):
        w = draw_world(rng, {"a": mu_a, "c": mu_c}, n_seeds=3, n_states=50, sd_seed=sd_seed, sd_state=SD_STATE,
                       sd_inter=0.3)
        lo, hi = method(to_records(draw_outcomes(rng, w), {"a": 50, "c": 50}))
        hit += lo <= w.true_effect("a", "c", 50) <= hi
    return hit / n


def new_p(r):
    return seed_effect(r, "a", "c").p_value


def new_ci(r):
    e = seed_effect(r, "a", "c")
    return e.lo, e.hi


# The tolerances: the tail at alpha = 0.01 may be at most 1.5x nominal (+2 Monte Carlo SE), the 95%
# interval must cover at least 0.93 (-2 Monte Carlo SE).
N_TAIL, N_COV = 1500, 500
TAIL_MAX = 1.5 * 0.01 + 2 * math.sqrt(0.01 * 0.99 / N_TAIL)
COV_MIN = 0.93 - 2 * math.sqrt(0.93 * 0.07 / N_COV)


def test_seed_level_tail_holds_its_level():
    p = null_pvalues(new_p, N_TAIL)
    assert (p < 0.01).mean() <= TAIL_MAX, (p < 0.01).mean()
    assert (p < 0.05).mean() <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / N_TAIL)


def test_seed_level_interval_covers_where_the_measured_data_sit():
    assert coverage(new_ci, N_COV) >= COV_MIN


@pytest.mark.slow
def test_the_old_method_fails_the_same_checks():
    """The hierarchical bootstrap that the report used before: its null p falls below 0.01 several times
    too often and its interval under-covers in the 3 -> 60% regime (measured 0.86-0.88 there)."""
    def old_p(r):
        return paired_effect(r, "a", "c", n_boot=1000).p_value

    def old_ci(r):
        e = paired_effect(r, "a", "c", n_boot=1000)
        return e.lo, e.hi

    p = null_pvalues(old_p, 600)
    tail = (p < 0.01).mean()
    cov = coverage(old_ci, 300)
    assert tail > 1.5 * 0.01 + 2 * math.sqrt(0.01 * 0.99 / 600) or cov < 0.93 - 2 * math.sqrt(0.93 * 0.07 / 300), \
        (tail, cov)


def test_plan_procedure_keeps_the_family_wise_error_under_the_global_null():
    """--plan all's own procedure (hypothesis files, looks, spending, one family) on studies where every
    arm is the same, at the seed spread that made the old procedure err 11.5% of the time."""
    hyps, skipped = plan_hypotheses("all")
    arms = trained_arms(hyps, skipped, 2.0)
    assert arms == ["baseline_rdt", "fix_pos_cm", "fix_minmax"]
    facts = with_demo_spread({a: ArmFacts(rot_spread_deg=2.0) for a in arms}, {a for h in hyps for a in h.arms()})
    rng = np.random.default_rng(3)
    mu = mu_for_rate(0.5, 1.0, SD_STATE)
    n, bad, words = 120, 0, set()
    for _ in range(n):
        out = draw_outcomes(rng, draw_world(rng, {a: mu for a in arms}, n_seeds=3, sd_seed=1.0, sd_state=SD_STATE))
        comps = run_procedure(hyps, skipped, out, facts, (20, 35, 50), DEFAULT_RULES)
        bad += any(c.word in ("better", "worse") for c in comps)
        words |= {c.word for c in comps}
    assert bad / n <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / n), bad / n
    # the rotation cells are untestable there, the loss-term arms left out, the rest judged
    assert {"untestable", "left out"} <= words


def test_report_quotes_the_table_for_its_design(tmp_path):
    table = tmp_path / "t.json"
    table.write_text('{"command": "benchmarks/calibration.py", "designs": [{"seeds": 3, "looks": [20, 35, 50], '
                     '"n_regimes": 9, "fwer_max": 0.027, "fwer_se": 0.009, "coverage_min": 0.92, '
                     '"equiv_size_max": 0.01, "power25_min": 0.05, "power25_max": 0.3}]}')
    s = calibration_for(3, [20, 35, 50], table)
    assert "family-wise error" in s and "0.027" in s and "coverage 0.920" in s
    assert calibration_for(5, [20, 35, 50], table) == ""
    assert calibration_for(3, [20], tmp_path / "none.json") == ""
