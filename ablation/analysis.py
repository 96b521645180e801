"""From per-episode records to decisions: the plan's comparisons judged at a look.

Used by the plan between looks (which comparisons are still undecided, so which arms get more
episodes) and by the report (the verdict of each comparison and hypothesis). All statistics come
from ablation/stats; this module only decides what is compared with what, and what is testable.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .hypothesis import Comparison, Hypothesis
from .needs import ArmFacts, starts_pretrained, unmet_needs  # noqa: F401  (ArmFacts: callers import it here too)
from .plan_record import task_label
from .rules import DEFAULT_RULES, DecisionRules
from .stats import (EpisodeArrays, SeedEffect, SequentialDesign, StepDown, contrast_effect, episodes_needed_t,
                    heterogeneity, holm_difference_equivalence, per_task_seed_effects, seed_effect, seeds_needed,
                    to_arrays)

DECIDED_WORDS = ("better", "worse", "no meaningful difference")


@dataclass
class ComparisonResult:
    hypothesis: str
    arm: str
    control: str
    expect: str
    label: str
    word: str                     # better | worse | no meaningful difference | inconclusive | untestable | missing | left out
    decided_at_look: int | None = None
    estimate: float | None = None  # success(arm) - success(control), fraction (difference of mean per-seed rates)
    lo: float | None = None        # the decision interval, at `level` (excludes 0 exactly when better/worse)
    hi: float | None = None
    p_value: float | None = None   # seed-level Welch t, two-sided, H0 effect = 0
    p_holm: float | None = None    # adjusted over the plan's family (difference and equivalence tests)
    alpha_look: float | None = None
    rate_arm: float | None = None
    rate_control: float | None = None
    n_states: int = 0
    seeds_arm: int = 0
    seeds_control: int = 0
    episodes_needed: int | None = None
    why: str = ""                  # for untestable / missing / inconclusive: what it would need
    method: str = ""
    # Several tasks: the estimate above is pooled over them (tasks a random factor); per task, the
    # same effect on that task alone ({task, estimate, lo, hi, rate_arm, rate_control,
    # n_states, p_value}), and whether the tasks disagree (Cochran's Q, or intervals on both sides of 0).
    n_tasks: int = 1
    per_task: list = field(default_factory=list)
    heterogeneity: str = ""
    tasks_disagree: bool | None = None
    level: float | None = None     # confidence level of (lo, hi): 1 - alpha_look / Holm divisor
    lo95: float | None = None      # the plain 95% interval, for reference (labelled so)
    hi95: float | None = None
    p_equiv_holm: float | None = None  # adjusted TOST p of |effect| >= margin
    se: float | None = None
    df: float | None = None
    seeds_needed: int | None = None
    per_seed_arm: list = field(default_factory=list)      # each seed's success fraction (single task)
    per_seed_control: list = field(default_factory=list)
    # Why a non-difference here says nothing of a claim: "floor" (both arms fail), "ceiling" (both
    # succeed), "no headroom" (the control is within the margin of 100% / 0% in the expected direction).
    bound: str = ""
    # Set when a floor no longer masks the claim: the hypothesis's positive control succeeded in the same
    # setting (its line, e.g. "positive control fix_minmax: 90% success (at least 50%): met"); `bound`
    # is then cleared (verdicts.excuse_floors).
    bound_excused: str = ""
    # The arms this result rests on: (arm, control), or a factorial contrast's four cells.
    arms: list = field(default_factory=list)
    contrast: str = ""             # a factorial's contrast: "a", "b" or "ab" ("" for a comparison)

    @property
    def involved(self) -> list[str]:
        return list(self.arms) or [self.arm, self.control]

    @property
    def decided(self) -> bool:
        return self.word in DECIDED_WORDS

    @property
    def matches_expectation(self) -> bool:
        want = {"better": "better", "worse": "worse", "same": "no meaningful difference"}[self.expect]
        return self.word == want


def with_demo_spread(facts: dict[str, ArmFacts], others) -> dict[str, ArmFacts]:
    """`facts` plus entries for arms in `others` that have none (e.g. dropped before training as
    untestable, so never audited): the demos' rotation spread measured by the arms that ran stands
    for them, since a plan's arms share their task's demos."""
    spreads = [f.rot_spread_deg for f in facts.values() if f.rot_spread_deg is not None]
    extra = {a: ArmFacts(rot_spread_deg=max(spreads), pretrained=False)
             for a in others if a not in facts and spreads}
    return {**facts, **extra}


def mark_left_out(comps: list["ComparisonResult"], skipped: dict[str, str]) -> list["ComparisonResult"]:
    """An arm the plan leaves out on purpose (skip_arms, e.g. moved to its own plan) is "left out",
    not "missing": nothing failed. Holm never counted it (it has no effect to adjust)."""
    for c in comps:
        why = (skipped or {}).get(c.arm) or (skipped or {}).get(c.control)
        if c.word == "missing" and why:
            c.word, c.why = "left out", f"left out of this plan: {why}"
    return comps


def bound_of(rate_arm: float, rate_control: float, expect: str, rules: DecisionRules) -> str:
    """Why a "no meaningful difference" between these rates would say nothing of a claim: both arms
    at the floor, both at the ceiling, or a control so close to 100% (or 0%) that the expected
    direction has less room than the margin. "" when the comparison can show what it tests."""
    if max(rate_arm, rate_control) <= rules.floor:
        return "floor"
    if min(rate_arm, rate_control) >= rules.ceiling:
        return "ceiling"
    if (expect == "better" and rate_control > 1.0 - rules.margin) or (expect == "worse" and rate_control < rules.margin):
        return "no headroom"
    return ""


def judge(hypotheses: list[Hypothesis], records: "list[dict] | EpisodeArrays", facts: dict[str, ArmFacts], *,
          look_index: int, looks: list[int | None], alpha: float | None = None, spending: str | None = None,
          margin: float | None = None, floor: float | None = None, ceiling: float | None = None,
          rules: DecisionRules | None = None, n_boot: int | None = None,
          previous: dict[tuple[str, str, str], ComparisonResult] | None = None) -> list[ComparisonResult]:
    """Judge every comparison of `hypotheses` on `records` (dicts with arm, task, seed, init_state,
    success) at look `look_index` (0-based).

    Each comparison is a seed-level Welch t (`stats.seed_effect`): a trained network is the unit.
    One family per plan: the difference test (effect = 0) and the equivalence test (|effect| >=
    margin) of every comparison with data go through one Shaffer-Holm step-down at the look's
    spending level, so "better", "worse" and "no meaningful difference" together keep the
    family-wise error at alpha over all looks (union bound over the looks' levels). The interval
    stored is the decision interval (level 1 - alpha_look / divisor), beside the plain 95% one.
    A comparison decided at an earlier look (`previous`) keeps its decision and that look's figures.
    `n_boot` is accepted for older callers and ignored (the test needs no resampling)."""
    base = rules or DEFAULT_RULES
    rules = base.with_overrides(dict(alpha=alpha, spending=spending, margin=margin, floor=floor, ceiling=ceiling))
    real_looks = [x for x in looks if x is not None] or [1]
    design = SequentialDesign(looks=tuple(real_looks), alpha=rules.alpha, spending=rules.spending)
    alpha_k = design.nominal_alpha(min(look_index, len(real_looks) - 1))
    arrays = records if isinstance(records, EpisodeArrays) else to_arrays(records)
    arms_with_data = set(arrays.arm.tolist())
    out: list[ComparisonResult] = []
    effects: dict[tuple[str, str, str], SeedEffect] = {}
    for h in hypotheses:
        margin_h = h.rule_overrides(rules).margin
        out += [_judge_comparison(h, c, arrays, arms_with_data, facts, rules, margin_h, effects)
                for c in h.comparisons]
        if h.kind == "factorial" and h.factorial is not None:
            out += _judge_factorial(h, arrays, arms_with_data, facts, rules, margin_h, effects)
    names = {k: "|".join(k) for k in effects}
    margins = {k: next(h for h in hypotheses if h.name == k[0]).rule_overrides(rules).margin for k in effects}
    steps = holm_difference_equivalence({names[k]: e.p_value for k, e in effects.items()},
                                        {names[k]: e.p_equivalence(margins[k]) for k, e in effects.items()},
                                        alpha_k) if effects else {}
    for res in out:
        key = (res.hypothesis, res.arm, res.control)
        if key not in effects:
            continue
        prev = (previous or {}).get(key)
        if prev is not None and prev.decided:
            _carry_decision(res, prev)
        else:
            _decide(res, effects[key], steps[names[key]], alpha_k, look_index, rules)
    return out


def _judge_comparison(h: Hypothesis, c: Comparison, arrays: EpisodeArrays, arms_with_data: set, facts: dict,
                      rules: DecisionRules, margin: float, effects: dict) -> ComparisonResult:
    """One comparison's figures before the family's step-down: untestable (a need unmet), missing (no
    episodes), or its seed-level effect (added to `effects`), pooled over tasks with each task's part."""
    res = ComparisonResult(h.name, c.arm, c.control, c.expect, c.label, "inconclusive")
    unmet = unmet_needs((*h.needs, *c.needs), [c.arm, c.control], facts, rules)
    if unmet:
        res.word, res.why = "untestable", "; ".join(unmet)
        return res
    if c.arm not in arms_with_data or c.control not in arms_with_data:
        missing = [a for a in (c.arm, c.control) if a not in arms_with_data]
        res.word, res.why = "missing", f"no finished episodes of {', '.join(missing)}"
        return res
    try:
        # Tasks are a random factor: the verdict is about tasks like these, not only these.
        eff = seed_effect(arrays, c.arm, c.control, tasks="random")
    except ValueError as e:
        res.word, res.why = "missing", str(e)
        return res
    effects[(h.name, c.arm, c.control)] = eff
    _fill(res, eff, margin, rules, c.expect)
    if eff.n_tasks > 1:
        per = per_task_seed_effects(arrays, c.arm, c.control)
        het = heterogeneity(per, alpha=rules.alpha)
        res.per_task = [{"task": t, "estimate": e.estimate, "lo": e.lo, "hi": e.hi,
                         "rate_arm": e.rate_arm, "rate_control": e.rate_control,
                         "n_states": e.n_states, "p_value": e.p_value} for t, e in per.items()]
        res.heterogeneity, res.tasks_disagree = het.note, het.disagree
    return res


def _decide(res: ComparisonResult, eff: SeedEffect, st: StepDown, alpha_k: float, look_index: int,
            rules: DecisionRules) -> None:
    """The word at this look from the family's step-down `st`: better / worse (difference test), no
    meaningful difference (equivalence test, with its TOST interval), else inconclusive with what it
    would need."""
    res.p_holm, res.p_equiv_holm, res.alpha_look = st.p_diff_adj, st.p_equiv_adj, alpha_k
    res.level = 1.0 - alpha_k / st.divisor
    res.lo, res.hi = eff.interval(res.level)
    if st.p_diff_adj <= alpha_k and eff.estimate != 0:
        res.word, res.decided_at_look = ("better" if eff.estimate > 0 else "worse"), look_index
    elif st.p_equiv_adj <= alpha_k:
        res.word, res.decided_at_look = "no meaningful difference", look_index
        res.level = 1.0 - 2.0 * alpha_k / st.equiv_divisor   # the TOST interval inside +-margin
        res.lo, res.hi = eff.interval(res.level)
    else:
        res.word = "inconclusive"
        _what_it_needs(res, eff, alpha_k / st.divisor, rules)


def _judge_factorial(h: Hypothesis, arrays: EpisodeArrays, arms_with_data: set, facts: dict, rules: DecisionRules,
                     margin: float, effects: dict) -> list[ComparisonResult]:
    """The three contrasts of a 2x2 (main effects and interaction), each expected as the claim's
    mechanism predicts; they join the plan's family like any comparison."""
    f = h.factorial
    pred = f.mechanisms[f.claim]
    out = []
    for key_c, weights in f.weights().items():
        label = f.label(key_c)
        expect = {"positive": "better", "negative": "worse", "none": "same"}[pred.get(key_c, "none")]
        res = ComparisonResult(h.name, label, "2x2 contrast", expect, label, "inconclusive", arms=list(weights),
                               contrast=key_c)
        unmet = unmet_needs(h.needs, list(weights), facts, rules)
        missing = [a for a in weights if a not in arms_with_data]
        if unmet:
            res.word, res.why = "untestable", "; ".join(unmet)
        elif missing:
            res.word, res.why = "missing", f"no finished episodes of {', '.join(missing)}"
        else:
            try:
                eff = contrast_effect(arrays, weights, label)
            except ValueError as e:
                res.word, res.why = "missing", str(e)
            else:
                effects[(h.name, label, "2x2 contrast")] = eff
                _fill(res, eff, margin, rules, expect)
        out.append(res)
    return out


def _fill(res: ComparisonResult, eff: SeedEffect, margin: float, rules: DecisionRules, expect: str) -> None:
    res.estimate, res.p_value, res.se, res.df = eff.estimate, eff.p_value, eff.se, eff.df
    res.lo95, res.hi95 = eff.interval(0.95)
    res.rate_arm, res.rate_control, res.n_states = eff.rate_arm, eff.rate_control, eff.n_states
    res.seeds_arm, res.seeds_control, res.method = eff.n_seeds_arm, eff.n_seeds_control, eff.method
    res.n_tasks = eff.n_tasks
    if eff.n_tasks == 1 and eff.per_task_parts:
        _, sa, sc, _ = eff.per_task_parts[0]
        res.per_seed_arm, res.per_seed_control = [float(x) for x in sa.rates], [float(x) for x in sc.rates]
    res.bound = bound_of(eff.rate_arm, eff.rate_control, expect, rules.with_overrides({"margin": margin}))


def _carry_decision(res: ComparisonResult, prev: ComparisonResult) -> None:
    """Stopping early is what the looks are for: the word and the figures it was decided on stay."""
    for name in ("word", "decided_at_look", "estimate", "lo", "hi", "level", "p_value", "p_holm", "p_equiv_holm",
                 "alpha_look", "rate_arm", "rate_control", "n_states", "seeds_arm", "seeds_control", "lo95", "hi95",
                 "se", "df", "per_seed_arm", "per_seed_control"):
        if getattr(prev, name, None) is not None:
            setattr(res, name, getattr(prev, name))


def _what_it_needs(res: ComparisonResult, eff: SeedEffect, level_alpha: float, rules: DecisionRules) -> None:
    """For an inconclusive comparison: the seeds (or episodes) a t test at the level actually used would
    need for 80% power at the effect seen (post hoc: optimistic for lucky effects)."""
    if abs(eff.estimate) < 1e-12:
        res.why = "no difference was seen; showing it is smaller than the margin needs more seeds"
        return
    res.seeds_needed = seeds_needed(eff, alpha=level_alpha, power=rules.power)
    need = episodes_needed_t(eff, alpha=level_alpha, power=rules.power)
    res.episodes_needed = need if need is not None and need > eff.episodes_per_seed else None
    k = max(eff.n_seeds_arm, eff.n_seeds_control)
    if res.seeds_needed is not None and res.seeds_needed > k:
        res.why = (f"the effect seen ({100 * eff.estimate:+.0f} pts) would need about {res.seeds_needed} seeds per arm "
                   f"(now {k}) to be detected at {100 * rules.power:.0f}% power at the level used "
                   f"({level_alpha:.2g})")
        if res.episodes_needed:
            res.why += f", or about {res.episodes_needed} episodes per arm x seed with the seeds run"
    elif res.episodes_needed:
        res.why = (f"the effect seen ({100 * eff.estimate:+.0f} pts) would need about {res.episodes_needed} episodes "
                   f"per arm x seed (with {k} seeds) to be detected at {100 * rules.power:.0f}% power")
    else:
        res.why = (f"the effect seen ({100 * eff.estimate:+.0f} pts) is too small or varies too much between seeds to "
                   f"settle with up to 64 seeds per arm")


@dataclass
class LookDecision:
    look_index: int
    comparisons: list[ComparisonResult]
    arms_to_extend: set = field(default_factory=set)   # {(arm, seed)} to get more episodes next look

    def by_key(self) -> dict:
        return {(c.hypothesis, c.arm, c.control): c for c in self.comparisons}

    @property
    def undecided(self) -> list[ComparisonResult]:
        return [c for c in self.comparisons if c.word == "inconclusive"]

    def summary_line(self) -> str:
        n = len(self.comparisons)
        dec = sum(c.decided for c in self.comparisons)
        parts = [f"{c.arm} vs {c.control}: {c.word}" for c in self.comparisons]
        return (f"[plan] look {self.look_index + 1}: {dec}/{n} comparison(s) decided"
                + (f" ({'; '.join(parts)})" if parts else ""))

    def to_record(self, look: int | None) -> dict:
        from dataclasses import asdict

        return {"look": self.look_index, "episodes": look, "comparisons": [asdict(c) for c in self.comparisons],
                # [arm, seed] or [arm, seed, task] (a single-task plan's keys end in None)
                "extended": sorted([[p for p in x if p is not None] for x in self.arms_to_extend], key=str)}


def records_from_results(latest: dict, task_of: dict) -> list[dict]:
    """Per-episode stats records from RunResults keyed (arm, seed) or (arm, seed, task); `task_of`
    maps that key (or the arm) to the task's label. A crashed episode counts as a failure (it is one,
    for the user); the report shows crashes apart."""
    out = []
    for key, r in latest.items():
        arm, seed = key[0], key[1]
        for e in r.episodes:
            out.append({"arm": arm, "task": task_of.get(key, task_of.get(arm, "")), "seed": int(seed),
                        "init_state": int(e.get("init_state", e.get("episode"))),
                        "success": bool(e.get("success")) and not e.get("error")})
    return out


def analyse_look(rp, latest: dict, look_index: int, looks: list[int | None],
                 previous: dict | None = None) -> LookDecision:
    """The plan's decision after a look: judge every comparison; the arms (all seeds) of the undecided
    ones get more episodes at the next look."""
    task_of = {u.key: task_label(u.spec) for u in rp.units()}
    records = records_from_results(latest, task_of)
    facts = {a: ArmFacts(rot_spread_deg=_metric(latest, a, "audit/rot_spread_deg"),
                         pretrained=starts_pretrained(rp.arms[a].spec))
             for a in rp.arms}
    facts = with_demo_spread(facts, rp.skipped)
    sched = rp.plan.episodes
    kw = dict(alpha=sched.alpha, spending=sched.spending, margin=sched.margin, floor=getattr(sched, "floor", None),
              ceiling=getattr(sched, "ceiling", None)) if sched else {}
    results = mark_left_out(judge(rp.hypotheses, records, facts, look_index=look_index, looks=looks,
                                  previous=previous, **kw), rp.skipped)
    more = look_index + 1 < len(looks) and looks[look_index] is not None
    extend = set()
    if more:
        for c in results:
            if c.word == "inconclusive":  # pooled over tasks: every task of its arms gets more
                extend |= {u.key for u in rp.units() if u.arm.name in c.involved}
    return LookDecision(look_index, results, extend)


def _metric(latest: dict, arm: str, key: str) -> float | None:
    vals = [r.metrics.get(key) for k, r in latest.items() if k[0] == arm and r.metrics.get(key) is not None]
    return float(max(vals)) if vals else None
