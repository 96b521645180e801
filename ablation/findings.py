"""A recorded plan judged: its comparisons at the last look, each hypothesis's verdict and the baseline
check, from what `recorded_plan` read. The rules are `analysis.judge` and `verdicts`; the report only
presents what this returns.
"""
from __future__ import annotations

from dataclasses import dataclass

from .analysis import ArmFacts, ComparisonResult, judge, mark_left_out, with_demo_spread
from .correlation_verdicts import correlation_of
from .hypothesis import Hypothesis
from .recorded_plan import ArmRow, RecordedPlan
from .rules import DEFAULT_RULES, DecisionRules
from .verdicts import HypothesisVerdict, baseline_check, excuse_floors, hypothesis_verdict


@dataclass(frozen=True)
class Findings:
    """baseline: the plan's common control; reproduced: whether it showed the seed's failure signature
    (None: no finished baseline run), with `baseline_note` saying why; looks: the planned looks in
    episodes per arm x seed ([None] for a plan without looks); planned: the plan had an `episodes:`
    schedule (so its family, alpha and looks are stated in the method)."""

    comparisons: list[ComparisonResult]
    verdicts: list[HypothesisVerdict]
    baseline: str | None
    baseline_reproduced: bool | None
    baseline_note: str
    rules: DecisionRules
    looks: list
    planned: bool


def baseline_arm(hyps: list[Hypothesis]) -> str | None:
    """The plan's common control: the arm most comparisons are made against."""
    counts: dict[str, int] = {}
    for h in hyps:
        for c in h.comparisons:
            counts[c.control] = counts.get(c.control, 0) + 1
    return max(counts, key=counts.get) if counts else None


def previous_decisions(record: dict) -> dict[tuple[str, str, str], ComparisonResult]:
    """The first decided result of each (hypothesis, arm, control) over the recorded looks: a decision
    taken at a look stands (stopping early is what the looks are for)."""
    previous = {}
    for look in record.get("looks", []):
        for c in look.get("comparisons", []):
            res = ComparisonResult(**c)
            if res.decided and (c["hypothesis"], c["arm"], c["control"]) not in previous:
                previous[(c["hypothesis"], c["arm"], c["control"])] = res
    return previous


def correlation_points(h: Hypothesis, rows: list[ArmRow], curves: dict) -> list[tuple[str, float | None, float | None]]:
    """(arm, x, success) per finished run, for a correlation hypothesis."""
    out = []
    for r in rows:
        for _s, loss, rate in curves.get(r.arm, {}).get("_scatter", []):
            x = loss if h.correlation.x == "final_train_loss" else r.openloop_nmse.get("pos")
            out.append((r.arm, x, rate))
    return out


def judge_recorded(plan: RecordedPlan) -> Findings:
    """Judge the plan at its last recorded look, with the decision rules its record overrides."""
    record, hyps, rows = plan.record, plan.hypotheses, plan.rows
    sched = record.get("episodes") or {}
    rules = DEFAULT_RULES.with_overrides(sched)
    baseline = baseline_arm(hyps)
    reproduced, note = baseline_check(rows, baseline, rules)
    facts = {r.arm: ArmFacts(rot_spread_deg=r.rot_spread_deg,
                             pretrained=bool(record["arms"][r.arm].get("pretrained", False))) for r in rows}
    facts = with_demo_spread(facts, record.get("skipped_arms", {}))
    looks = list(sched.get("looks") or [None])
    k = max(0, len(record.get("looks", [])) - 1)
    comps = judge(hyps, plan.episodes, facts, look_index=k, looks=looks, previous=previous_decisions(record),
                  rules=rules)
    mark_left_out(comps, record.get("skipped_arms") or {})
    arm_rates = {r.arm: r.rate for r in rows if r.rate is not None}
    excuse_floors(hyps, comps, arm_rates, rules)
    warn = "" if reproduced is not False else "baseline"
    verdicts = [hypothesis_verdict(h, comps, correlation_of(h, correlation_points(h, rows, plan.curves), rules)
                                   if h.kind == "correlation" else None, warn, rules, arm_rates) for h in hyps]
    return Findings(comps, verdicts, baseline, reproduced, note, rules, looks, bool(sched))
