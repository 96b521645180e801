"""From per-episode records to decisions: the plan's comparisons judged at a look.

Used by the plan between looks (which comparisons are still undecided, so which arms get more
episodes) and by the report (the verdict of each comparison and hypothesis). All statistics come
from ablation/stats; this module only decides what is compared with what, and what is testable.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .hypothesis import NEEDS, ROT_SPREAD_MIN_DEG, Hypothesis
from .plan_record import task_label

DECIDED_WORDS = ("better", "worse", "no meaningful difference")


@dataclass
class ArmFacts:
    """What the needs of a hypothesis are checked against, per arm."""

    rot_spread_deg: float | None = None   # median over demos of the largest turn (audit)
    pretrained: bool = False              # fine-tunes a network with slot meanings


@dataclass
class ComparisonResult:
    hypothesis: str
    arm: str
    control: str
    expect: str
    label: str
    word: str                     # better | worse | no meaningful difference | inconclusive | untestable | missing
    decided_at_look: int | None = None
    estimate: float | None = None  # success(arm) - success(control), fraction
    lo: float | None = None        # 95% interval (seeds and states resampled)
    hi: float | None = None
    p_value: float | None = None
    p_holm: float | None = None
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
    # same paired effect on that task alone ({task, estimate, lo, hi, rate_arm, rate_control,
    # n_states, p_value}), and whether the tasks disagree (Cochran's Q, or intervals on both sides of 0).
    n_tasks: int = 1
    per_task: list = field(default_factory=list)
    heterogeneity: str = ""
    tasks_disagree: bool | None = None

    @property
    def decided(self) -> bool:
        return self.word in DECIDED_WORDS

    @property
    def matches_expectation(self) -> bool:
        want = {"better": "better", "worse": "worse", "same": "no meaningful difference"}[self.expect]
        return self.word == want


def starts_pretrained(spec) -> bool:
    """Whether the spec's network starts from pretrained weights (a checkpoint or a pretraining stage)."""
    return bool(spec.model.pretrained or getattr(spec.train, "init_from", None))


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


def unmet_needs(needs: tuple[str, ...], arms: list[str], facts: dict[str, ArmFacts]) -> list[str]:
    """The needs (with the measured reason) that these arms do not meet."""
    out = []
    for need in needs:
        if need == "rotation_varies":
            spreads = [facts[a].rot_spread_deg for a in arms if a in facts and facts[a].rot_spread_deg is not None]
            if spreads and max(spreads) < ROT_SPREAD_MIN_DEG:
                out.append(f"the demos' rotation spread is {max(spreads):.1f} deg (< {ROT_SPREAD_MIN_DEG:g} deg): "
                           "the expert barely turns on this task, so scaling rotation cannot matter here")
            elif not spreads:
                out.append("the demos' rotation spread was not measured (no audit)")
        elif need == "pretrained_slots":
            cold = [a for a in arms if a in facts and not facts[a].pretrained]
            if cold:
                out.append(f"{', '.join(cold)} start(s) from random weights: slot positions have no meaning "
                           "before pretraining (" + NEEDS[need].split(';')[0] + ")")
    return out


def judge(hypotheses: list[Hypothesis], records: list[dict], facts: dict[str, ArmFacts], *,
          look_index: int, looks: list[int | None], alpha: float = 0.05,
          spending: str = "obrien_fleming", margin: float = 0.15, n_boot: int | None = None,
          previous: dict[tuple[str, str, str], ComparisonResult] | None = None) -> list[ComparisonResult]:
    """Judge every comparison of `hypotheses` on `records` (dicts with arm, task, seed, init_state,
    success) at look `look_index` (0-based). Holm controls the family-wise error across all the
    comparisons; the look's alpha comes from the spending rule. A comparison decided at an earlier look
    (`previous`) keeps its decision: stopping early is what the looks are for."""
    from .stats import SequentialDesign, episodes_needed, heterogeneity, holm, paired_effect, per_task_effects, verdict

    real_looks = [x for x in looks if x is not None] or [1]
    design = SequentialDesign(looks=tuple(real_looks), alpha=alpha, spending=spending)
    alpha_k = design.nominal_alpha(min(look_index, len(real_looks) - 1))
    n_comp = sum(len(h.comparisons) for h in hypotheses)
    # A bootstrap p cannot go below 2 / (n_boot + 1); Holm multiplies it by the family size. Enough
    # resamples that the first look can decide at all.
    n_boot = n_boot or max(4000, 2 * design.required_n_boot(max(1, n_comp)))
    arms_with_data = {r["arm"] for r in records}
    out: list[ComparisonResult] = []
    effects = {}
    for h in hypotheses:
        for c in h.comparisons:
            key = (h.name, c.arm, c.control)
            res = ComparisonResult(h.name, c.arm, c.control, c.expect, c.label, "inconclusive")
            unmet = unmet_needs((*h.needs, *c.needs), [c.arm, c.control], facts)
            if unmet:
                res.word, res.why = "untestable", "; ".join(unmet)
            elif c.arm not in arms_with_data or c.control not in arms_with_data:
                missing = [a for a in (c.arm, c.control) if a not in arms_with_data]
                res.word, res.why = "missing", f"no finished episodes of {', '.join(missing)}"
            else:
                try:
                    # Tasks are a random factor: the verdict is about tasks like these, not only these.
                    # multitask=False: each (arm, task, seed) is its own network (single-task policies),
                    # so a seed is resampled per task, never shared across tasks.
                    eff = paired_effect(records, c.arm, c.control, n_boot=n_boot, rng_seed=0, tasks="random",
                                        multitask=False)
                except ValueError as e:
                    res.word, res.why = "missing", str(e)
                else:
                    effects[key] = eff
                    res.estimate, res.lo, res.hi, res.p_value = eff.estimate, eff.lo, eff.hi, eff.p_value
                    res.rate_arm, res.rate_control, res.n_states = eff.rate_arm, eff.rate_control, eff.n_states
                    res.seeds_arm, res.seeds_control, res.method = eff.n_seeds_arm, eff.n_seeds_control, eff.method
                    res.n_tasks = eff.n_tasks
                    if eff.n_tasks > 1:
                        per = per_task_effects(records, c.arm, c.control, n_boot=n_boot, rng_seed=0)
                        het = heterogeneity(per, alpha=alpha)
                        res.per_task = [{"task": t, "estimate": e.estimate, "lo": e.lo, "hi": e.hi,
                                         "rate_arm": e.rate_arm, "rate_control": e.rate_control,
                                         "n_states": e.n_states, "p_value": e.p_value} for t, e in per.items()]
                        res.heterogeneity, res.tasks_disagree = het.note, het.disagree
            out.append(res)
    adjusted = holm({"|".join(k): e.p_value for k, e in effects.items()}, alpha) if effects else {}
    for res in out:
        key = (res.hypothesis, res.arm, res.control)
        prev = (previous or {}).get(key)
        if key not in effects:
            continue
        eff = effects[key]
        res.p_holm = float(adjusted["|".join(key)])
        res.alpha_look = alpha_k
        if prev is not None and prev.decided:
            res.word, res.decided_at_look = prev.word, prev.decided_at_look
            continue
        word = verdict(eff, res.p_holm, alpha_k, margin=margin)
        if word in DECIDED_WORDS:
            res.word, res.decided_at_look = word, look_index
        else:
            res.word = "inconclusive"
            try:
                need = episodes_needed(eff, alpha=alpha_k)
            except Exception:
                need = None
            res.episodes_needed = None if need is None or need != need or need == float("inf") else int(need)
            # The power formula uses z; the interval uses t with the seeds' few degrees of freedom. When
            # it asks for no more episodes than were run, the seeds, not the episodes, are short.
            if res.episodes_needed is not None and res.episodes_needed <= eff.episodes_per_seed:
                res.episodes_needed = None
            if res.episodes_needed:
                res.why = (f"the effect seen ({100 * eff.estimate:+.0f} pts) would need about {res.episodes_needed} "
                           f"episodes per arm x seed (with {eff.n_seeds_arm} seeds) to be detected at 80% power")
            elif abs(eff.estimate) < 1e-12:
                res.why = ("no difference was seen; showing it is smaller than the margin needs more episodes "
                           "or seeds")
            else:
                res.why = (f"the effect seen ({100 * eff.estimate:+.0f} pts) varies too much between seeds for more "
                           "episodes to settle it: it needs more seeds")
    return out


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
    kw = dict(alpha=sched.alpha, spending=sched.spending, margin=sched.margin) if sched else {}
    results = mark_left_out(judge(rp.hypotheses, records, facts, look_index=look_index, looks=looks,
                                  previous=previous, **kw), rp.skipped)
    more = look_index + 1 < len(looks) and looks[look_index] is not None
    extend = set()
    if more:
        for c in results:
            if c.word == "inconclusive":  # pooled over tasks: every task of both arms gets more
                extend |= {u.key for u in rp.units() if u.arm.name in (c.arm, c.control)}
    return LookDecision(look_index, results, extend)


def _metric(latest: dict, arm: str, key: str) -> float | None:
    vals = [r.metrics.get(key) for k, r in latest.items() if k[0] == arm and r.metrics.get(key) is not None]
    return float(max(vals)) if vals else None
