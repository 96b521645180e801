"""Verdict rules: from the comparison words that `analysis.judge` gives to a hypothesis's verdict, the
baseline's failure signature, and which fix the answer may recommend.

The rules never say more than the effects table: a hypothesis is SUPPORTED only when every
comparison its rule needs has the expected word; a "no meaningful difference" where no difference
could show (both arms at the floor or the ceiling, or no headroom in the expected direction) counts
as untestable, in either direction; the outcome text is assembled from what each comparison's actual
word means (the hypothesis file's `means`), not picked from one word. The report only presents.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .analysis import DECIDED_WORDS as DECIDED, ComparisonResult
from .hypothesis import Hypothesis
from .rules import DEFAULT_RULES, DecisionRules
from .correlation_verdicts import correlation_needs, correlation_verdict, loss_reversal, rho_text

WORDS_WITHOUT_DATA = ("untestable", "missing", "left out")
BOUND_WHY = {
    "floor": "both arms fail (at most {floor:.0f}% success): another failure masks any difference",
    "ceiling": "both arms succeed (at least {ceiling:.0f}% success): no room for a difference",
    "no headroom": "the control is within the margin ({margin:.0f} pts) of the limit in the expected direction, "
                   "so a meaningful gain cannot show",
}


@dataclass
class HypothesisVerdict:
    name: str
    title: str
    claim: str
    word: str          # SUPPORTED | NOT SUPPORTED | CONTRADICTED | INCONCLUSIVE | UNTESTABLE HERE
    meaning: str       # what the pattern of words means (from the hypothesis file)
    lines: list[str]
    correlation: dict | None = None


def bound_why(c: ComparisonResult, rules: DecisionRules) -> str:
    return BOUND_WHY[c.bound].format(floor=100 * rules.floor, ceiling=100 * rules.ceiling, margin=100 * rules.margin)


def effective_word(c: ComparisonResult) -> str:
    """The word the hypothesis logic uses: a "no meaningful difference" that could not have been
    anything else (floor, ceiling, no headroom) is untestable, whatever the expectation."""
    if c.word == "no meaningful difference" and c.bound:
        return "untestable"
    return c.word


def _opposes(c: ComparisonResult) -> bool:
    return {c.word, c.expect} == {"better", "worse"}


def comparisons_verdict(h: Hypothesis, mine: Sequence[ComparisonResult], rules: DecisionRules) -> tuple[str, str]:
    """(word, reason) for a hypothesis of kind comparisons, from the whole pattern of its words.

    - every comparison untestable (needs unmet, or a non-difference at a bound) -> UNTESTABLE HERE;
    - decide all: SUPPORTED only when every comparison has its expected word; any missing, left out or
      untestable comparison -> INCONCLUSIVE (the rule needs all of them); else CONTRADICTED when a
      comparison went the opposite way (better vs worse), NOT SUPPORTED when all are decided;
    - decide any: SUPPORTED when one has its expected word; CONTRADICTED when one went the opposite way;
      NOT SUPPORTED when every testable one is decided and none is missing or left out (untestable
      ones are named, not counted); else INCONCLUSIVE."""
    eff = {id(c): effective_word(c) for c in mine}
    testable = [c for c in mine if eff[id(c)] not in WORDS_WITHOUT_DATA]
    absent = [c for c in mine if eff[id(c)] in ("missing", "left out")]
    untestable = [c for c in mine if eff[id(c)] == "untestable"]
    if not testable:
        if untestable and not absent:
            return "UNTESTABLE HERE", "; ".join(_untestable_why(c, rules) for c in untestable)
        return "INCONCLUSIVE", "; ".join(f"{c.arm} vs {c.control}: {c.word} ({c.why})" for c in absent + untestable)
    match = [c for c in testable if c.matches_expectation]
    opposite = [c for c in testable if c.decided and _opposes(c)]
    all_decided = all(c.decided for c in testable)
    if h.decide == "all":
        if absent or untestable:
            gaps = absent + untestable
            return "INCONCLUSIVE", ("the rule needs every comparison, and " + "; ".join(
                f"{c.arm} vs {c.control} is {effective_word(c)}"
                + (f" ({_untestable_why(c, rules)})" if effective_word(c) == "untestable" else
                   f" ({c.why})" if c.why else "") for c in gaps))
        if len(match) == len(testable):
            return "SUPPORTED", ""
        if opposite:
            return "CONTRADICTED", ""
        return ("NOT SUPPORTED", "") if all_decided else ("INCONCLUSIVE", _pending(testable))
    if match:
        return "SUPPORTED", ""
    if opposite:
        return "CONTRADICTED", ""
    if all_decided and not absent:
        return "NOT SUPPORTED", ""
    parts = [_pending(testable)] + [f"{c.arm} vs {c.control} {c.word} ({c.why})" for c in absent]
    return "INCONCLUSIVE", "; ".join(x for x in parts if x)


def _pending(cs: Sequence[ComparisonResult]) -> str:
    return "; ".join(f"{c.arm} vs {c.control} inconclusive: {c.why}" for c in cs if not c.decided and c.why)


def _untestable_why(c: ComparisonResult, rules: DecisionRules) -> str:
    if c.word == "untestable":
        return c.why
    rates = f"{c.arm} {100 * (c.rate_arm or 0):.0f}%, {c.control} {100 * (c.rate_control or 0):.0f}%"
    return f"{c.arm} vs {c.control} shows no meaningful difference, but {bound_why(c, rules)} ({rates})"


def _meaning_of_pattern(h: Hypothesis, word: str, mine: Sequence[ComparisonResult]) -> str:
    """The outcome text for NOT SUPPORTED / CONTRADICTED from what each comparison's actual word
    means; the file's generic text only when no comparison defines one."""
    key = {"better": "better", "worse": "worse", "no meaningful difference": "same"}
    spec = {(c.arm, c.control): c for c in h.comparisons}
    texts = []
    for c in mine:
        if not c.decided or c.matches_expectation or effective_word(c) == "untestable":
            continue
        m = getattr(spec[(c.arm, c.control)].means, key[c.word], "") if (c.arm, c.control) in spec else ""
        if m:
            texts.append(m)
    if texts:
        return " ".join(dict.fromkeys(texts))
    return (h.outcomes.contradicted or h.outcomes.not_supported) if word == "CONTRADICTED" else h.outcomes.not_supported


PREDICTED_WORD = {"positive": "better", "negative": "worse"}


def mechanism_status(pred: dict[str, str], words: dict[str, str]) -> str:
    """How the contrast words sit with one mechanism's predictions: "ruled out" (a predicted effect
    decided the other way or absent, or an effect it predicts absent decided present), "fits" (every
    prediction decided as predicted, absences shown as "no meaningful difference"), "favoured" (every
    predicted effect decided as predicted, no predicted absence contradicted), else "open"."""
    status = "fits"
    for k in ("a", "b", "ab"):
        p, w = pred.get(k, "none"), words.get(k, "missing")
        if p == "none":
            if w in ("better", "worse"):
                return "ruled out"
            if w != "no meaningful difference":
                status = "favoured" if status == "fits" else status
        elif w != PREDICTED_WORD[p]:
            if w in DECIDED:
                return "ruled out"
            status = "open"
    return status


def factorial_verdict(h: Hypothesis, mine: Sequence[ComparisonResult]) -> tuple[str, str]:
    """(word, text) for a 2x2: the mechanism the pattern of contrast words favours, or that it fits none."""
    f = h.factorial
    words = {c.contrast: effective_word(c) for c in mine if c.contrast}
    pattern = "; ".join(f"{f.label(k)}: {words.get(k, 'missing')}" for k in ("a", "b", "ab"))
    status = {m: mechanism_status(pred, words) for m, pred in f.mechanisms.items()}
    good = [m for m, st in status.items() if st in ("fits", "favoured")]
    if mine and all(words.get(k) == "untestable" for k in ("a", "b", "ab")):
        return "UNTESTABLE HERE", "; ".join(dict.fromkeys(c.why or c.bound for c in mine))
    if any(words.get(k) in WORDS_WITHOUT_DATA for k in ("a", "b", "ab")):
        return "INCONCLUSIVE", f"the 2x2 is incomplete ({pattern})"
    if status[f.claim] in ("fits", "favoured") and good == [f.claim]:
        how = "fits" if status[f.claim] == "fits" else "favours"
        return "SUPPORTED", f"The pattern {how} the {f.claim} mechanism ({pattern})."
    if status[f.claim] == "ruled out":
        if good:
            return "NOT SUPPORTED", (f"The pattern favours the {' and the '.join(good)} mechanism, not the {f.claim} "
                                     f"mechanism ({pattern}).")
        if all(st == "ruled out" for st in status.values()):
            return "NOT SUPPORTED", f"The pattern fits none of the mechanisms ({', '.join(status)}): {pattern}."
        open_ = [m for m, st in status.items() if st == "open"]
        return "NOT SUPPORTED", (f"The pattern rules out the {f.claim} mechanism; {', '.join(open_)} not yet decided "
                                 f"({pattern}).")
    return "INCONCLUSIVE", f"the contrasts do not yet tell the mechanisms apart ({pattern})"


def positive_control_check(h: Hypothesis, mine: Sequence[ComparisonResult], rules: DecisionRules,
                           arm_rates: Mapping[str, float] | None = None) -> tuple[bool | None, str]:
    """(met, line) for the hypothesis's positive control: the arm that must work for a comparison to test
    the claim (e.g. H3's consistent arm: when it fails too, a clash cannot show). Its success is its
    mean per-seed rate over the init states of the comparisons it is in (the highest such rate, so the
    check never fails for a comparison's smaller overlap); for a control trained beside the comparisons
    (in none of them), its success over all its episodes (`arm_rates`). None when there is no positive
    control."""
    pc = h.positive_control
    if pc is None:
        return None, ""
    rates = [c.rate_arm if c.arm == pc else c.rate_control for c in mine
             if pc in (c.arm, c.control) and c.word not in WORDS_WITHOUT_DATA]
    rates = [r for r in rates if r is not None]
    if not rates and (arm_rates or {}).get(pc) is not None:
        rates = [arm_rates[pc]]
    need = f"{100 * rules.positive_control_min:.0f}%"
    if not rates:
        return False, (f"the positive control {pc} has no finished runs (or is in no comparison with data), "
                       "so nothing shows that the set-up can succeed")
    rate = max(rates)
    if rate < rules.positive_control_min:
        return False, (f"the positive control {pc} reached only {100 * rate:.0f}% success (it must reach {need}), "
                       "so the set-up fails for another reason and no comparison can show the claim")
    return True, f"positive control {pc}: {100 * rate:.0f}% success (at least {need}): met"


def excuse_floors(hypotheses: Sequence[Hypothesis], comps: Sequence[ComparisonResult],
                  arm_rates: Mapping[str, float], rules: DecisionRules = DEFAULT_RULES) -> None:
    """Where a hypothesis's positive control is met, its comparisons' floor no longer masks the claim:
    the set-up can succeed (another arm did, on the same task, demos and budget), so two arms at the
    floor are failing for their own reasons, and a non-difference between them tests the claim (e.g.
    "shrinking rotation alone leaves the baseline's failure in place"). Clears `bound` "floor" on those
    comparisons (in place, as `mark_left_out` marks) and records why in `bound_excused`. The ceiling
    and no-headroom bounds stay: a control's success says nothing of the room for a difference."""
    for h in hypotheses:
        mine = [c for c in comps if c.hypothesis == h.name]
        met, line = positive_control_check(h, mine, h.rule_overrides(rules), arm_rates)
        if not met:
            continue
        for c in mine:
            if c.bound == "floor":
                c.bound, c.bound_excused = "", line


def hypothesis_verdict(h: Hypothesis, comps: list[ComparisonResult], corr: dict | None, warn: str,
                       rules: DecisionRules = DEFAULT_RULES,
                       arm_rates: Mapping[str, float] | None = None) -> HypothesisVerdict:
    rules = h.rule_overrides(rules)
    mine = [c for c in comps if c.hypothesis == h.name]
    lines = [comparison_line(c, rules) for c in mine]
    reason = ""
    if h.kind == "correlation":
        if corr is not None and "rho" in corr:
            lines.insert(0, f"rank correlation of {h.correlation.x} with {h.correlation.y}"
                            f"{' within arms (each arm its own units), runs resampled within arms' if corr.get('within') else ''}: "
                            f"{rho_text(corr)} over {corr['n']} runs ({corr['word']})")
        elif corr is not None:
            lines.insert(0, f"rank correlation: {corr['why']}")
        word = correlation_verdict(h, corr, rules)
        reversal = loss_reversal(h, comps, corr) if h.correlation.expect == "none" else ""
        if reversal:
            lines.insert(0, reversal)
            word = "SUPPORTED"   # the lower-x arm failed more: across arms, a lower x did not mean more success
        elif word == "INCONCLUSIVE":
            reason = correlation_needs(h, corr, rules)
    elif h.kind == "factorial":
        word, reason = factorial_verdict(h, mine)
    else:
        word, reason = comparisons_verdict(h, mine, rules)
    pc_met, pc_line = positive_control_check(h, mine, rules, arm_rates)
    if pc_met is False:
        word, reason = "UNTESTABLE HERE", pc_line
    elif pc_met:
        lines.append(pc_line)
    if h.kind == "factorial" and word in ("SUPPORTED", "NOT SUPPORTED"):
        meaning = f"{reason} {h.outcomes.supported if word == 'SUPPORTED' else ''}".strip()
    elif word == "SUPPORTED":
        meaning = h.outcomes.supported
    elif word in ("NOT SUPPORTED", "CONTRADICTED"):
        meaning = _meaning_of_pattern(h, word, mine)
    elif word == "UNTESTABLE HERE":
        meaning = f"untestable here, because {reason}. {h.outcomes.untestable}".strip()
    else:
        meaning = h.outcomes.inconclusive + (f" ({reason})" if reason else "")
    untestable = [c for c in mine if effective_word(c) == "untestable"]
    if untestable and word != "UNTESTABLE HERE":
        lines.append("untestable here: " + "; ".join(_untestable_why(c, rules) for c in untestable))
    if warn:
        meaning = f"{meaning} (Warning: the baseline did not reproduce the seed's failure.)".strip()
    return HypothesisVerdict(h.name, h.title, h.claim, word, meaning.strip(), lines, corr)


def pts(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.0f}"


def comparison_line(c: ComparisonResult, rules: DecisionRules = DEFAULT_RULES) -> str:
    if c.word in WORDS_WITHOUT_DATA:
        return f"{c.arm} vs {c.control}: {c.word} ({c.why})"
    lvl = f"{100 * c.level:.2f}% decision interval" if c.level else "interval"
    name = f"{c.arm} (2x2 contrast)" if c.contrast else f"{c.arm} vs {c.control}"
    s = (f"{name}: {pts(c.estimate)} pts [{pts(c.lo)}, {pts(c.hi)}] ({lvl}), "
         f"{100 * (c.rate_arm or 0):.0f}% vs {100 * (c.rate_control or 0):.0f}%, adjusted p "
         f"{c.p_holm:.3g} -> {c.word}" if c.p_holm is not None else
         f"{name}: {pts(c.estimate)} pts -> {c.word}")
    if c.decided_at_look is not None:
        s += f" (decided at look {c.decided_at_look + 1})"
    if c.word == "inconclusive" and c.why:
        s += f"; {c.why}"
    if c.word == "no meaningful difference" and c.bound:
        s += f"; but {bound_why(c, rules)}: this says nothing of the claim"
    if c.bound_excused:
        s += (f"; both arms at the floor, but the set-up can succeed ({c.bound_excused}), so the floor is "
              "these arms' own failure and the non-difference tests the claim")
    if c.n_tasks > 1:
        est = [t["estimate"] for t in c.per_task]
        spread = f"per task {pts(min(est))} to {pts(max(est))} pts" if est else "no per-task effect"
        s += f"; pooled over {c.n_tasks} tasks ({spread}); {c.heterogeneity}"
    return s


def recommendation(comps: Sequence[ComparisonResult], baseline: str | None) -> dict[str, Any]:
    """Which fix the answer may name. "use": an arm that beat the baseline and beat every other arm
    that beat the baseline in a direct, decided comparison (or the only one that beat it); otherwise
    "unranked": the winners, with what was (or was not) compared among them."""
    wins = [c for c in comps if c.control == baseline and c.word == "better"]
    by_arm: dict[str, ComparisonResult] = {}
    for c in wins:
        if c.arm not in by_arm or (c.estimate or 0) > (by_arm[c.arm].estimate or 0):
            by_arm[c.arm] = c
    arms = list(by_arm)
    if not arms:
        return {"use": None, "wins": [], "between": []}
    if len(arms) == 1:
        return {"use": by_arm[arms[0]], "wins": [by_arm[arms[0]]], "between": []}
    between = [c for c in comps if c.arm in by_arm and c.control in by_arm and c.arm != c.control]
    for a in arms:
        beaten = set()
        for c in between:
            if c.arm == a and c.word == "better":
                beaten.add(c.control)
            if c.control == a and c.word == "worse":
                beaten.add(c.arm)
        if beaten >= set(arms) - {a}:
            return {"use": by_arm[a], "wins": list(by_arm.values()), "between": between}
    return {"use": None, "wins": list(by_arm.values()), "between": between}


def baseline_check(rows: Sequence[Any], baseline: str | None, rules: DecisionRules = DEFAULT_RULES
                   ) -> tuple[bool | None, str]:
    """Did the baseline reproduce the seed's failure signature? Success near 0, and, among the arms
    trained for as many steps, the worst unit-free open-loop position error (sampled nMSE). The
    training loss is reported, never ranked: each arm's loss is in its own units (an arm in cm or
    with a x10^4 weight logs a larger loss for the same fit)."""
    by = {r.arm: r for r in rows}
    b = by.get(baseline) if baseline else None
    if b is None or b.rate is None:
        return None, "no finished baseline run: the seed's failure could not be checked"
    others = [r for r in rows if r.arm != baseline and r.openloop_nmse.get("pos") is not None]
    peers = [r for r in others if b.train_steps is None or r.train_steps in (None, b.train_steps)]
    low_success = b.rate <= rules.baseline_fails_below
    pos = b.openloop_nmse.get("pos")
    among = "all arms" if len(peers) == len(others) else f"the arms trained for {b.train_steps} steps"
    if peers and pos is not None:
        worst_pos = all(pos >= r.openloop_nmse["pos"] for r in peers)
        pos_word = f"the worst of {among}" if worst_pos else f"NOT the worst of {among}"
    elif pos is None:
        worst_pos, pos_word = False, ""
    else:
        worst_pos, pos_word = True, f"no other arm trained for {b.train_steps} steps to rank against"
    parts = [f"success {100 * b.rate:.0f}% over {b.episodes} episodes ({'near 0' if low_success else 'NOT near 0'})",
             f"open-loop position nMSE {pos:.3g} ({pos_word}; sampled actions, unit-free)" if pos is not None
             else "no open-loop position error recorded",
             f"final training loss {b.final_train_loss:.3g} (in its own units: not ranked across arms)"
             if b.final_train_loss is not None else "no training loss recorded"]
    ok = low_success and worst_pos
    return ok, ("reproduced the seed's failure signature: " if ok else
                "did NOT reproduce the seed's failure signature; every verdict below carries that warning: ") \
        + "; ".join(parts)
