"""The verdict rules, branch by branch: comparison words in, hypothesis verdict and outcome text out.

Table-driven over every hypothesis kind (`decide: any`, `decide: all`, `expect: same`, correlation),
with the words a plan can produce (better, worse, no meaningful difference, inconclusive, missing,
left out, untestable) and the bounds (floor, ceiling, no headroom). No MLflow, no simulator: the
words are what `analysis.judge` hands to `verdicts.hypothesis_verdict`.
"""
from __future__ import annotations

import pytest

from ablation.analysis import ComparisonResult, bound_of
from ablation.hypothesis import Hypothesis, load_hypothesis
from ablation.rules import DEFAULT_RULES, DecisionRules
from ablation.correlation_verdicts import correlation_needs, correlation_of, correlation_verdict
from ablation.verdicts import baseline_check, comparisons_verdict, hypothesis_verdict, recommendation

ANY = Hypothesis.model_validate({
    "name": "Hany", "title": "t", "claim": "c", "rule": "r", "decide": "any",
    "comparisons": [{"arm": "a", "control": "base", "expect": "better"},
                    {"arm": "b", "control": "base", "expect": "better"}],
    "outcomes": {"supported": "S", "not_supported": "NS", "contradicted": "C", "inconclusive": "I",
                 "untestable": "U"}})
ALL = ANY.model_copy(update={"name": "Hall", "decide": "all"})
SAME = Hypothesis.model_validate({
    "name": "Hsame", "title": "t", "claim": "c", "rule": "r", "decide": "all",
    "comparisons": [{"arm": "a", "control": "base", "expect": "same",
                     "means": {"better": "a beats base", "worse": "base beats a"}}],
    "outcomes": {"supported": "S", "not_supported": "NS", "inconclusive": "I"}})

DECIDED = {"better", "worse", "no meaningful difference"}


def comp(h: Hypothesis, i: int, word: str, rate_arm: float = 0.5, rate_control: float = 0.3) -> ComparisonResult:
    c = h.comparisons[i]
    r = ComparisonResult(h.name, c.arm, c.control, c.expect, c.label, word)
    if word not in ("untestable", "missing", "left out"):
        r.estimate, r.rate_arm, r.rate_control = rate_arm - rate_control, rate_arm, rate_control
        r.lo, r.hi, r.p_holm, r.level = r.estimate - 0.1, r.estimate + 0.1, 0.01, 0.99
        r.bound = bound_of(rate_arm, rate_control, c.expect, DEFAULT_RULES)
        if word in DECIDED:
            r.decided_at_look = 0
    else:
        r.why = {"untestable": "the demos do not turn", "missing": "no finished episodes of x",
                 "left out": "left out of this plan: moved"}[word]
    return r


# (hypothesis, [(word, rate_arm, rate_control), ...], expected verdict)
CASES = [
    # decide: any
    (ANY, [("better", .6, .2), ("inconclusive", .3, .2)], "SUPPORTED"),
    (ANY, [("no meaningful difference", .3, .25), ("no meaningful difference", .35, .25)], "NOT SUPPORTED"),
    (ANY, [("worse", .1, .5), ("no meaningful difference", .5, .5)], "CONTRADICTED"),
    (ANY, [("inconclusive", .3, .2), ("no meaningful difference", .3, .25)], "INCONCLUSIVE"),
    (ANY, [("no meaningful difference", .3, .25), ("missing", 0, 0)], "INCONCLUSIVE"),
    (ANY, [("no meaningful difference", .3, .25), ("left out", 0, 0)], "INCONCLUSIVE"),
    (ANY, [("no meaningful difference", .3, .25), ("untestable", 0, 0)], "NOT SUPPORTED"),
    (ANY, [("untestable", 0, 0), ("untestable", 0, 0)], "UNTESTABLE HERE"),
    # floor: both arms fail -> a non-difference says nothing, in every comparison
    (ANY, [("no meaningful difference", .05, .02), ("no meaningful difference", .0, .02)], "UNTESTABLE HERE"),
    # no headroom: the control at 87% cannot gain the margin (goal 7's case)
    (ANY, [("no meaningful difference", .95, .87), ("no meaningful difference", .99, .87)], "UNTESTABLE HERE"),
    # decide: all
    (ALL, [("better", .6, .2), ("better", .7, .2)], "SUPPORTED"),
    (ALL, [("better", .6, .2), ("missing", 0, 0)], "INCONCLUSIVE"),
    (ALL, [("better", .6, .2), ("left out", 0, 0)], "INCONCLUSIVE"),
    (ALL, [("better", .6, .2), ("untestable", 0, 0)], "INCONCLUSIVE"),
    (ALL, [("better", .6, .2), ("worse", .1, .2)], "CONTRADICTED"),
    (ALL, [("better", .6, .2), ("no meaningful difference", .3, .25)], "NOT SUPPORTED"),
    (ALL, [("better", .6, .2), ("inconclusive", .3, .2)], "INCONCLUSIVE"),
    # expect: same
    (SAME, [("no meaningful difference", .5, .45)], "SUPPORTED"),
    (SAME, [("no meaningful difference", .04, .02)], "UNTESTABLE HERE"),     # at the floor: not support
    (SAME, [("no meaningful difference", .97, .95)], "UNTESTABLE HERE"),     # at the ceiling: not support
    (SAME, [("better", .8, .4)], "NOT SUPPORTED"),
    (SAME, [("worse", .2, .6)], "NOT SUPPORTED"),
    (SAME, [("inconclusive", .5, .4)], "INCONCLUSIVE"),
    (SAME, [("missing", 0, 0)], "INCONCLUSIVE"),
]


@pytest.mark.parametrize("h,words,want", CASES, ids=[f"{h.name}-{'+'.join(w for w, *_ in ws)}-{i}"
                                                     for i, (h, ws, _) in enumerate(CASES)])
def test_verdict_follows_the_pattern_of_words(h, words, want):
    comps = [comp(h, i, w, ra, rc) for i, (w, ra, rc) in enumerate(words)]
    v = hypothesis_verdict(h, comps, None, "")
    assert v.word == want, (v.word, v.meaning)
    text = {"SUPPORTED": "S", "INCONCLUSIVE": "I"}
    if want in text:
        assert v.meaning.startswith(text[want])
    if want == "UNTESTABLE HERE":
        assert v.meaning.startswith("untestable here, because ")
    if want == "NOT SUPPORTED" and h is SAME:
        # the text says what the actual word means, never the other direction's reading
        assert v.meaning == ("a beats base" if words[0][0] == "better" else "base beats a")


def test_floor_and_ceiling_reasons_are_named():
    v = hypothesis_verdict(SAME, [comp(SAME, 0, "no meaningful difference", .97, .95)], None, "")
    assert "both arms succeed (at least 90% success)" in v.meaning
    v = hypothesis_verdict(ANY, [comp(ANY, 0, "no meaningful difference", .95, .87),
                                 comp(ANY, 1, "no meaningful difference", .99, .87)], None, "")
    assert "within the margin (15 pts) of the limit" in v.meaning
    assert bound_of(0.5, 0.5, "better", DEFAULT_RULES) == ""
    assert bound_of(0.05, 0.9, "worse", DEFAULT_RULES) == ""     # a worse arm far below: room to show it
    assert bound_of(0.3, 0.1, "worse", DEFAULT_RULES) == "no headroom"
    # the thresholds come from the rules (a plan's or a hypothesis's override)
    assert bound_of(0.15, 0.12, "better", DecisionRules(floor=0.2)) == "floor"


def test_h1_mechanism_cm_worse_than_weight_never_prints_signal_to_noise():
    h = load_hypothesis("H1_mechanism")
    weight = comp(h, 0, "better", .65, .01)
    for word, ra, rc, want in (("worse", .41, .65, "NOT SUPPORTED"), ("better", .9, .65, "NOT SUPPORTED")):
        cm = comp(h, 1, word, ra, rc)
        v = hypothesis_verdict(h, [weight, cm], None, "")
        assert v.word == want
        if word == "worse":
            assert "favour the signal-to-noise" not in v.meaning and "signal-to-noise predicts the opposite" in v.meaning
        else:
            assert "favour the signal-to-noise" in v.meaning
    # the cm comparison left out: never SUPPORTED on the weight alone
    left = comp(h, 1, "left out")
    assert hypothesis_verdict(h, [weight, left], None, "").word == "INCONCLUSIVE"
    # the weight making things worse is contradicted, with the comparison's own meaning
    v = hypothesis_verdict(h, [comp(h, 0, "worse", .0, .3), comp(h, 1, "no meaningful difference", .3, .3)], None, "")
    assert v.word == "CONTRADICTED" and "makes things worse" in v.meaning


CORR = Hypothesis.model_validate({"name": "Hc", "title": "t", "claim": "c", "rule": "r", "kind": "correlation",
                                  "correlation": {"x": "final_train_loss", "expect": "none"}})


@pytest.mark.parametrize("corr,want", [
    ({"rho": 0.1, "lo": -0.2, "hi": 0.4}, "SUPPORTED"),
    ({"rho": -0.8, "lo": -0.95, "hi": -0.5}, "NOT SUPPORTED"),
    ({"rho": -0.3, "lo": -0.8, "hi": 0.3}, "INCONCLUSIVE"),
    ({"word": "inconclusive", "n": 2, "why": "only 2 points"}, "INCONCLUSIVE"),
    (None, "INCONCLUSIVE"),
])
def test_correlation_branches(corr, want):
    assert correlation_verdict(CORR, corr, DEFAULT_RULES) == want
    h = CORR.model_copy(update={"correlation": CORR.correlation.model_copy(update={"expect": "negative"})})
    if corr and "lo" in corr:
        neg = "SUPPORTED" if corr["hi"] < 0 else "CONTRADICTED" if corr["lo"] > 0 else "INCONCLUSIVE"
        assert correlation_verdict(h, corr, DEFAULT_RULES) == neg


def test_an_inconclusive_correlation_says_how_many_runs_it_would_need():
    """--plan all's H2 on 24 runs: rho +0.07 [-0.42, +0.63]; the rule needs the interval above -0.3. Centre
    +0.105, half-width 0.525; it clears -0.3 once the half-width is under 0.405: 24 x (0.525/0.405)^2 =
    40.3 -> 41 runs."""
    corr = {"rho": 0.07, "lo": -0.42, "hi": 0.63, "n": 24, "word": "unclear"}
    assert correlation_verdict(CORR, corr, DEFAULT_RULES) == "INCONCLUSIVE"
    need = correlation_needs(CORR, corr, DEFAULT_RULES)
    assert "+-0.53 over 24 runs" in need and "clear -0.30 at about 41 runs" in need
    v = hypothesis_verdict(CORR, [], corr, "")
    assert v.word == "INCONCLUSIVE" and "about 41 runs" in v.meaning
    # an expected sign: the interval must clear 0; centre +0.2, half-width 0.3 -> 12 x (0.3/0.2)^2 = 27 runs
    pos = CORR.model_copy(update={"correlation": CORR.correlation.model_copy(update={"expect": "positive"})})
    assert "clear +0.00 at about 27 runs" in correlation_needs(pos, {"lo": -0.1, "hi": 0.5, "n": 12}, DEFAULT_RULES)
    # nothing to scale: no words invented
    assert correlation_needs(CORR, {"word": "inconclusive", "n": 2, "why": "only 2 points"}, DEFAULT_RULES) == ""
    assert "no number of runs" in correlation_needs(CORR, {"lo": -0.5, "hi": -0.1, "n": 10}, DEFAULT_RULES)


REV = CORR.model_copy(update={"correlation": CORR.correlation.model_copy(update={"reversal": True})})
PRACTICAL = Hypothesis.model_validate({"name": "Hp", "title": "t", "claim": "c", "rule": "r",
                                       "comparisons": [{"arm": "fix", "control": "base", "expect": "better"}]})


def _losses(fix: list[float], base: list[float], rate_fix: float = .9, rate_base: float = .1) -> list:
    return [("fix", x, rate_fix) for x in fix] + [("base", x, rate_base) for x in base]


def test_a_decided_reversal_across_arms_supports_the_loss_claim():
    """--plan all's shape: the fix beat the baseline (H1_practical, decided in the family) while every one of
    its 8 runs ended at a higher final loss than every baseline run. The within-arm correlation is
    inconclusive on 16 runs; the reversal alone settles "a lower loss did not mean more success"."""
    pts_ = _losses([2e-3 + 1e-4 * i for i in range(8)], [8e-5 + 1e-6 * i for i in range(8)])
    pts_ = [(a, x, y + 0.01 * ((i * 7) % 5)) for i, (a, x, y) in enumerate(pts_)]  # within-arm noise
    corr = correlation_of(REV, pts_)
    assert corr["arm_x"]["fix"][2] == 8 and corr["arm_x"]["base"][1] < corr["arm_x"]["fix"][0]
    better = comp(PRACTICAL, 0, "better", .9, .1)
    v = hypothesis_verdict(REV, [better], corr, "")
    assert v.word == "SUPPORTED" and v.lines[0].startswith("reversal across arms: fix succeeded more (90% vs 10%")
    assert "exact rank test of that separation p = 7.8e-05" in v.lines[0]  # 1 / C(16, 8)
    # without the flag, the same data are left to the within-arm correlation
    plain = hypothesis_verdict(CORR, [better], correlation_of(CORR, pts_), "")
    assert not any(line.startswith("reversal") for line in plain.lines)


@pytest.mark.parametrize("fix,base,word,why", [
    ([1e-3, 2e-3, 3e-3, 4e-3], [5e-4, 6e-4, 2.5e-3, 7e-4], "better", "the losses overlap"),
    ([1e-4, 2e-4, 3e-4, 4e-4], [5e-4, 6e-4, 7e-4, 8e-4], "better", "the winner had the lower loss"),
    ([1e-3, 2e-3, 3e-3, 4e-3], [1e-4, 2e-4, 3e-4, 4e-4], "inconclusive", "the comparison is not decided"),
    ([1e-3, 2e-3], [1e-4, 2e-4], "better", "2 runs against 2: p = 1/6, a separation could be luck"),
])
def test_no_reversal_without_a_decided_comparison_and_separated_losses(fix, base, word, why):
    corr = correlation_of(REV, _losses(fix, base))
    v = hypothesis_verdict(REV, [comp(PRACTICAL, 0, word, .9, .1)], corr, "")
    assert not any(line.startswith("reversal") for line in v.lines), why


def test_a_worse_comparison_reverses_the_other_way():
    """The arm with the lower loss lost: 'worse' makes the control the winner."""
    pts_ = _losses([1e-4, 2e-4, 3e-4], [1e-3, 2e-3, 3e-3], rate_fix=.1, rate_base=.8)
    v = hypothesis_verdict(REV, [comp(PRACTICAL, 0, "worse", .1, .8)], correlation_of(REV, pts_), "")
    assert v.word == "SUPPORTED" and "base succeeded more (80% vs 10%" in v.lines[0] and "p = 0.05" in v.lines[0]


def test_use_x_only_where_compared_directly():
    h = Hypothesis.model_validate({"name": "H", "title": "t", "claim": "c", "rule": "r",
                                   "comparisons": [{"arm": "a", "control": "base"}, {"arm": "b", "control": "base"},
                                                   {"arm": "a", "control": "b"}]})
    a, b = comp(h, 0, "better", .9, .1), comp(h, 1, "better", .6, .1)
    rec = recommendation([a, b], "base")
    assert rec["use"] is None and {c.arm for c in rec["wins"]} == {"a", "b"} and rec["between"] == []
    ab = comp(h, 2, "better", .9, .6)
    assert recommendation([a, b, ab], "base")["use"] is a
    ab_same = comp(h, 2, "inconclusive", .9, .6)
    assert recommendation([a, b, ab_same], "base")["use"] is None
    assert recommendation([a], "base")["use"] is a


class Row:
    def __init__(self, arm, rate, pos, loss, steps=600):
        self.arm, self.rate, self.episodes = arm, rate, 150
        self.openloop_nmse, self.final_train_loss, self.train_steps = {"pos": pos}, loss, steps


def test_baseline_check_ranks_unit_free_figures_not_the_loss():
    # the baseline logs a larger loss than an arm in other units: that must not unseat it
    ok, note = baseline_check([Row("base", 0.02, 0.9, 1e-2), Row("cm", 0.5, 0.2, 1e-4)], "base")
    assert ok and "not ranked across arms" in note and "the worst of all arms" in note
    ok, note = baseline_check([Row("base", 0.02, 0.3, 1e-6), Row("cm", 0.5, 0.5, 1e-2)], "base")
    assert ok is False and "NOT the worst" in note


def test_decide_all_reason_names_the_gap():
    word, why = comparisons_verdict(ALL, [comp(ALL, 0, "better", .6, .2), comp(ALL, 1, "left out")], DEFAULT_RULES)
    assert word == "INCONCLUSIVE" and "b vs base is left out" in why


FACT = Hypothesis.model_validate({
    "name": "Hf", "title": "t", "claim": "c", "rule": "r", "kind": "factorial",
    "factorial": {"a": "scale", "b": "weight", "claim": "loss share",
                  "cells": {"a0b0": "m1", "a0b1": "m4", "a1b0": "cm1", "a1b1": "cm4"},
                  "mechanisms": {"loss share": {"a": "none", "b": "none", "ab": "negative"},
                                 "signal-to-noise": {"a": "positive", "b": "none", "ab": "none"}}},
    "outcomes": {"supported": "S", "not_supported": "NS", "inconclusive": "I"}})


def contrasts(words: dict[str, str]) -> list[ComparisonResult]:
    out = []
    for k in ("a", "b", "ab"):
        r = ComparisonResult("Hf", FACT.factorial.label(k), "2x2 contrast", "same", "", words[k], contrast=k,
                             arms=list(FACT.factorial.weights()[k]))
        if words[k] not in ("missing", "untestable"):
            r.estimate, r.rate_arm, r.rate_control, r.p_holm = 0.1, 0.5, 0.4, 0.01
        out.append(r)
    return out


@pytest.mark.parametrize("words,want,text", [
    ({"a": "inconclusive", "b": "inconclusive", "ab": "worse"}, "SUPPORTED", "favours the loss share"),
    ({"a": "no meaningful difference", "b": "no meaningful difference", "ab": "worse"}, "SUPPORTED",
     "fits the loss share"),
    ({"a": "better", "b": "inconclusive", "ab": "inconclusive"}, "NOT SUPPORTED",
     "favours the signal-to-noise mechanism, not the loss share"),
    ({"a": "better", "b": "inconclusive", "ab": "worse"}, "NOT SUPPORTED", "fits none of the mechanisms"),
    ({"a": "inconclusive", "b": "better", "ab": "inconclusive"}, "NOT SUPPORTED", "fits none"),
    ({"a": "inconclusive", "b": "inconclusive", "ab": "inconclusive"}, "INCONCLUSIVE", "do not yet tell"),
    ({"a": "inconclusive", "b": "inconclusive", "ab": "better"}, "NOT SUPPORTED", "fits none"),  # both rule out
    ({"a": "inconclusive", "b": "no meaningful difference", "ab": "no meaningful difference"}, "NOT SUPPORTED",
     "rules out the loss share mechanism; signal-to-noise not yet decided"),
    ({"a": "better", "b": "inconclusive", "ab": "missing"}, "INCONCLUSIVE", "2x2 is incomplete"),
])
def test_factorial_names_the_mechanism_the_pattern_favours(words, want, text):
    v = hypothesis_verdict(FACT, contrasts(words), None, "")
    assert v.word == want and text in v.meaning, (v.word, v.meaning)


def test_factorial_contrasts_are_judged_at_the_seed_level():
    """Synthetic 2x2 with a pure interaction (the loss-share pattern): the interaction is decided
    'worse', the main effects are not decided as effects."""
    from ablation.analysis import judge

    n, recs = 50, []
    rates = {"m1": (0.1, 0.12, 0.1), "m4": (0.7, 0.72, 0.7), "cm1": (0.7, 0.7, 0.72), "cm4": (0.1, 0.1, 0.12)}
    for arm, rs in rates.items():
        for s, r in enumerate(rs):
            k = round(r * n)
            recs += [{"arm": arm, "task": "t", "seed": s, "init_state": i, "success": ((i + s) * k) % n < k}
                     for i in range(n)]
    res = {c.contrast: c for c in judge([FACT], recs, {}, look_index=0, looks=[50])}
    assert res["ab"].word == "worse" and res["ab"].estimate == pytest.approx(-0.6, abs=0.02)
    assert res["a"].word != "better" and res["b"].word != "better"
    assert set(res["ab"].involved) == {"m1", "m4", "cm1", "cm4"}
    assert hypothesis_verdict(FACT, list(res.values()), None, "").word == "SUPPORTED"
