"""The report's prose: the answer paragraph, the caveats and the method, written from the judged plan.

Every sentence states what `findings` decided, with its numbers; nothing here decides. The tables and
the document's order are `builder`'s.
"""
from __future__ import annotations

from ..analysis import ComparisonResult
from ..calibration import calibration_for
from ..correlation_verdicts import REVERSAL, rho_text
from ..hypothesis import Hypothesis
from ..recorded_plan import ArmRow
from ..rules import DEFAULT_RULES, DecisionRules
from ..verdicts import HypothesisVerdict, pts, recommendation

# Seeds per arm below which seed-to-seed variation is barely estimated: the caveats name such arms, and the
# answer qualifies a verdict decided on one network a side with it.
SEEDS_FOR_VARIATION = 3


def level_text(c: ComparisonResult) -> str:
    return f"{100 * c.level:.2f}%" if c.level else "-"


def carried(v: HypothesisVerdict, comps: list[ComparisonResult]) -> str:
    """A supported hypothesis in the answer, by the comparisons that carried it. Not its claim: a claim
    ('a normaliser or the x100 weight fixes it') can name arms this plan left out or that did not decide."""
    held = [f"{c.arm} vs {c.control} {c.word}, {pts(c.estimate)} pts"
            for c in comps if c.hypothesis == v.name and c.matches_expectation]
    corr = v.correlation
    if corr and corr.get("rho") is not None:
        held.insert(0, f"rank correlation {rho_text(corr)} over {corr['n']} runs")
    held[:0] = [line for line in v.lines[:1] if line.startswith(REVERSAL)]  # what decided it
    meaning = v.meaning if v.meaning.endswith((".", ")")) else v.meaning + "."
    return f"{v.name} ({'; '.join(held) or 'see below'}): {meaning}"


def write_answer(rows: list[ArmRow], comps: list[ComparisonResult], verdicts: list[HypothesisVerdict],
                 baseline: str | None, reproduced: bool | None, hyps: list[Hypothesis]) -> str:
    """One paragraph: why the baseline fails and which fix to use, with the numbers."""
    by = {r.arm: r for r in rows}
    out = []
    b = by.get(baseline) if baseline else None
    if b is not None and b.rate is not None:
        out.append(f"The baseline ({baseline}) succeeded in {100 * b.rate:.0f}% of {b.episodes} episodes"
                   + (f" with a final training loss of {b.final_train_loss:.2g}" if b.final_train_loss else "")
                   + ("; it reproduces the seed's failure (no success, the worst open-loop position error)." if reproduced else
                      "; it does NOT reproduce the seed's failure signature, so read every verdict with care."))
    supported = [v for v in verdicts if v.word == "SUPPORTED"]
    if supported:
        out.append("Supported: " + " ".join(carried(v, comps) for v in supported))
    seed = [v for v, h in zip(verdicts, hyps) if getattr(h, "seed_claim", False) and
            v.word in ("NOT SUPPORTED", "CONTRADICTED")]
    for v in seed:
        verb = "contradict" if v.word == "CONTRADICTED" else "do not support"
        out.append(f"The data {verb} the seed's hypothesis that {v.claim[0].lower() + v.claim[1:].rstrip('.')} "
                   f"({v.name}: {v.word.lower()}).")
    out += recommendation_sentences(comps, baseline)
    out += one_seed_sentences(comps)
    open_ = [v.name for v in verdicts if v.word in ("INCONCLUSIVE", "UNTESTABLE HERE")]
    if open_:
        out.append(f"Still open: {', '.join(open_)} (see below for what each would need).")
    return " ".join(out) if out else "No finished runs: nothing can be concluded yet."


def one_seed_sentences(comps: list[ComparisonResult]) -> list[str]:
    """The answer's own qualifier for decided comparisons with one trained network on a side: the seed
    is the unit of replication, so such a verdict says these networks differ, not that training with
    the fix does (the method line and the caveats say it too, but a reader may stop at the answer)."""
    one = [c for c in comps if c.decided and min(c.seeds_arm, c.seeds_control) == 1]
    if not one:
        return []
    names = ", ".join(f"{c.arm} vs {c.control} ({c.seeds_arm}/{c.seeds_control} seeds)" for c in one)
    return [f"One trained network on a side decided {names}: a statement about these networks, not about "
            f"training with the fix; run {SEEDS_FOR_VARIATION} or more seeds per arm before acting on it."]


def recommendation_sentences(comps: list[ComparisonResult], baseline: str | None) -> list[str]:
    """Which fix to use, with its effect and interval; or the fixes that beat the baseline and what was
    compared among them; or that none is shown better yet (`verdicts.recommendation` decides)."""
    out = []
    rec = recommendation(comps, baseline)
    best = rec["use"]
    if best is not None:
        tasks = f", pooled over {best.n_tasks} tasks as a random factor" if best.n_tasks > 1 else ""
        others = [c.arm for c in rec["wins"] if c is not best]
        out.append(f"Use {best.arm}: {100 * (best.rate_arm or 0):.0f}% against {100 * (best.rate_control or 0):.0f}%, "
                   f"{pts(best.estimate)} points [{pts(best.lo)}, {pts(best.hi)}] ({level_text(best)} decision interval "
                   f"over seeds{tasks}, adjusted p {best.p_holm:.2g})"
                   + (f"; it beat {', '.join(others)} in direct comparisons." if others else "."))
        if best.tasks_disagree:
            out.append(f"But the tasks disagree about {best.arm} ({best.heterogeneity}): see the per-task effects.")
    elif rec["wins"]:
        names = [c.arm for c in rec["wins"]]
        figs = "; ".join(f"{c.arm} {pts(c.estimate)} pts [{pts(c.lo)}, {pts(c.hi)}]" for c in rec["wins"])
        between = "; ".join(f"{c.arm} vs {c.control}: {c.word}" for c in rec["between"])
        out.append(f"{' and '.join([', '.join(names[:-1]), names[-1]])} all beat the baseline ({figs}); "
                   + (f"compared directly: {between}, so none is shown better than the others." if between else
                      "they were not compared with each other, so the data do not say which is better."))
    else:
        pending = [c for c in comps if c.control == baseline and c.word == "inconclusive"]
        out.append("No fix is shown better than the baseline yet" +
                   (f" (inconclusive: {pending[0].why})." if pending else "."))
    return out


def caveats_of(rows: list[ArmRow], comps: list[ComparisonResult], record: dict, reproduced: bool | None,
               baseline_note: str, demos: dict, rules: DecisionRules = DEFAULT_RULES) -> list[str]:
    """Confounds collapsed: one line per confound, naming the arms it touches."""
    out = []
    if reproduced is False:
        out.append(f"Baseline: {baseline_note}.")
    crashed = [f"{r.arm} ({r.crashed})" for r in rows if r.crashed]
    if crashed:
        out.append(f"Crashed episodes (counted as failures): {', '.join(crashed)}.")
    failed = [f"{r.arm} seed {s}: {why}" for r in rows for s, why in r.failed.items()]
    if failed:
        out.append(f"Runs that did not finish (left out): {'; '.join(failed)}.")
    few = [r.arm for r in rows if r.finished_seeds and len(r.finished_seeds) < SEEDS_FOR_VARIATION]
    if few:
        out.append(f"Fewer than {SEEDS_FOR_VARIATION} finished seeds, so seed-to-seed variation is barely estimated: "
                   f"{', '.join(few)}.")
    const = [r.arm for r in rows if r.rot_spread_deg is not None and r.rot_spread_deg < rules.rot_spread_min_deg]
    if const:
        out.append(f"The demos barely turn (rotation spread < {rules.rot_spread_min_deg:g} deg): rotation errors cannot rank "
                   f"{', '.join(const)}; rotation-scale comparisons are untestable on this task.")
    starts = sorted({str(v.get('starts', 'unknown')) for v in demos.values()})
    if starts:
        out.append(f"Training demos started from: {', '.join(starts)}; closed-loop episodes start from the "
                   "benchmark's fixed init states (episode i from init state i, the same for every arm).")
    for arm, why in (record.get("skipped_arms") or {}).items():
        out.append(f"{arm} left out of this plan: {why}.")
    for c in comps:
        if c.tasks_disagree:
            out.append(f"{c.arm} vs {c.control}: {c.heterogeneity}; the pooled effect averages tasks that differ "
                       "(see the per-task effects).")
    und = [f"{c.arm} vs {c.control}" for c in comps if c.word == "inconclusive"]
    if und:
        out.append(f"Inconclusive after the last look: {', '.join(und)}.")
    return out


def seeds_per_arm(rows: list[ArmRow]) -> int:
    counts = [len(r.finished_seeds) for r in rows if r.finished_seeds]
    return min(counts) if counts else 0


def method_text(plan: str, comps: list[ComparisonResult], looks: list, rules: DecisionRules, planned: bool,
                seeds: int) -> str:
    """The method paragraph: the test, the family and what it spends, and the calibration figures
    measured for this design (benchmarks/calibration.py)."""
    method = next((c.method for c in comps if c.method), "")
    method = method.rstrip(".") + "." if method else ""
    if not planned:
        return method
    n_fam = sum(c.p_holm is not None for c in comps)  # untestable and left-out ones have no p
    method += (f" Family: the {n_fam} comparisons of plan '{plan}' with data (of its {len(comps)}), each tested "
               f"for a difference and for equivalence within +-{100 * rules.margin:.0f} points in one Shaffer-Holm "
               f"step-down; alpha {rules.alpha:g} spent over them and over the looks at {looks} episodes per arm x "
               f"seed ({rules.spending}). Other plans run in the same workdir reuse this plan's shared runs (e.g. "
               f"its baseline) and spend their own alpha: a conclusion that combines plans spends the sum. Each "
               f"interval shown is at the level its decision used; the 95% interval beside it is for reference. "
               f"Both arms at or below {100 * rules.floor:.0f}% or at or above {100 * rules.ceiling:.0f}% success "
               f"(or a control within the margin of the limit) make 'no meaningful difference' say nothing.")
    cal = calibration_for(seeds, [x for x in looks if x is not None])
    if cal:
        method += " " + cal
    return method
