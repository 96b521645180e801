"""Hypotheses as data: one YAML file per hypothesis under experiments/hypotheses/.

A hypothesis names its claim and mechanism, the arms that isolate it (each compared with a control
on the same init states), the decision rule in words and in fields, what it needs to be testable,
and what each outcome would mean. Plans list hypotheses; the arms follow from them. The report reads
everything from these files and from MLflow, so adding a hypothesis means writing one file.

    name: H4_training_length            # defaults to the file name
    title: "Training length"
    claim: "The baseline fails because 1200 steps are too few."
    mechanism: "..."
    needs: []                           # registered names: ablation/needs.py NEEDS
    kind: comparisons                   # or: correlation
    comparisons:
      - {arm: baseline_2x, control: baseline_rdt, expect: better}
    decide: any                         # supported when any (or all) comparisons go the expected way
    rule: "Supported when a longer run beats the baseline's success (Holm-adjusted, paired)."
    outcomes: {supported: "...", not_supported: "...", contradicted: "...", inconclusive: "...",
               untestable: "..."}
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, ValidationError

from .needs import NEEDS  # what a hypothesis may need before it can be tested: registered Need classes
from .rules import DEFAULT_RULES, DecisionRules
from .spec import EXPERIMENTS_DIR, SpecError, _Frozen, _read_yaml, format_validation_error

HYPOTHESES_DIR = EXPERIMENTS_DIR / "hypotheses"

ROT_SPREAD_MIN_DEG = DEFAULT_RULES.rot_spread_min_deg

Expect = Literal["better", "worse", "same"]


class WordMeanings(_Frozen):
    """What this comparison's word would mean for the claim, when it is not the expected one. The
    verdict's text is assembled from these, so a hypothesis never prints a reading that the pattern of
    words does not support (e.g. "favours signal-to-noise" when cm did *worse* than the weight)."""

    better: str = ""
    worse: str = ""
    same: str = ""


class Comparison(_Frozen):
    arm: str
    control: str
    expect: Expect = "better"
    label: str = ""                 # what the arm changes, in a few words
    needs: tuple[str, ...] = ()     # needs of this comparison only (besides the hypothesis's own)
    means: WordMeanings = WordMeanings()


class Correlation(_Frozen):
    """A rank correlation across every arm x seed of the plan (e.g. final training loss vs success)."""

    x: Literal["final_train_loss", "openloop_pos_nmse"] = "final_train_loss"
    y: Literal["success"] = "success"
    expect: Literal["positive", "negative", "none"] = "negative"
    # "arm": rank within each arm (its runs share the loss's units) and bootstrap whole arms; "none":
    # one correlation over every run (only for a unit-free x, e.g. openloop_pos_nmse).
    within: Literal["arm", "none"] = "arm"
    # Also read x across arms, as a user reads a loss printed by different set-ups: a decided comparison of
    # the plan (any hypothesis's, so its error is the family's) in which the arm that succeeded more ended
    # every run at a higher x than every run of the other arm is a reversal, and settles expect "none"
    # ("a lower x does not mean more success") on its own; without one, the within-arm correlation decides.
    reversal: bool = False


Prediction = Literal["positive", "negative", "none"]
CONTRASTS = ("a", "b", "ab")   # main effect of A, main effect of B, their interaction


class Factorial(_Frozen):
    """A 2x2 design: factor A (levels 0 -> 1) x factor B (levels 0 -> 1), one arm per cell, and what each
    candidate mechanism predicts for the three contrasts on success:

        a  = [(a1b0 + a1b1) - (a0b0 + a0b1)] / 2     main effect of A
        b  = [(a0b1 + a1b1) - (a0b0 + a1b0)] / 2     main effect of B
        ab = [(a0b0 + a1b1) - (a0b1 + a1b0)] / 2     interaction

    `claim` names the mechanism the hypothesis's claim states; the verdict says which mechanism the
    pattern of contrast words favours, or that it fits none."""

    a: str                                   # factor A, e.g. "data scale (m -> cm)"
    b: str
    cells: dict[Literal["a0b0", "a0b1", "a1b0", "a1b1"], str]
    mechanisms: dict[str, dict[Literal["a", "b", "ab"], Prediction]]
    claim: str

    def weights(self) -> dict[str, dict[str, float]]:
        """Contrast -> {arm: weight}."""
        c = self.cells
        return {"a": {c["a1b0"]: 0.5, c["a1b1"]: 0.5, c["a0b0"]: -0.5, c["a0b1"]: -0.5},
                "b": {c["a0b1"]: 0.5, c["a1b1"]: 0.5, c["a0b0"]: -0.5, c["a1b0"]: -0.5},
                "ab": {c["a0b0"]: 0.5, c["a1b1"]: 0.5, c["a0b1"]: -0.5, c["a1b0"]: -0.5}}

    def label(self, contrast: str) -> str:
        return {"a": f"main effect of {self.a}", "b": f"main effect of {self.b}",
                "ab": f"interaction {self.a} x {self.b}"}[contrast]


class Outcomes(_Frozen):
    supported: str = ""
    not_supported: str = ""
    contradicted: str = ""
    inconclusive: str = ""
    untestable: str = ""


class Hypothesis(_Frozen):
    name: str
    title: str
    claim: str
    mechanism: str = ""
    needs: tuple[str, ...] = ()
    kind: Literal["comparisons", "correlation", "factorial"] = "comparisons"
    comparisons: tuple[Comparison, ...] = ()
    correlation: Optional[Correlation] = None
    factorial: Optional[Factorial] = None
    decide: Literal["any", "all"] = "any"
    rule: str
    # The seed report's own diagnosis: when the data contradict it, the answer paragraph says so.
    seed_claim: bool = False
    # An arm that must itself succeed (at least rules.positive_control_min) for the comparisons to mean
    # something; below that the verdict is "untestable here, because ..." (verdicts.py). Once it is met,
    # a non-difference with both arms at the floor counts: the set-up can succeed, so the floor is the
    # arms' own failure. It may be an arm of the comparisons (H3's consistent arm) or one trained
    # beside them only to show the task can be learnt (the rotation plan's min-max).
    positive_control: Optional[str] = None
    outcomes: Outcomes = Outcomes()
    # Thresholds of this hypothesis that differ from the plan's (margin, corr_strong, floor, ceiling);
    # the defaults live in ablation/rules.py.
    rules: dict[str, float] = {}
    path: Optional[str] = Field(None, exclude=True)

    def rule_overrides(self, rules: DecisionRules) -> DecisionRules:
        """The plan's rules with this hypothesis's own thresholds on top."""
        return rules.with_overrides(self.rules)

    def arms(self) -> list[str]:
        """Every spec this hypothesis trains, controls first, in file order; the positive control last."""
        out: list[str] = []
        names = [n for c in self.comparisons for n in (c.control, c.arm)]
        if self.factorial is not None:
            names += [self.factorial.cells[k] for k in ("a0b0", "a0b1", "a1b0", "a1b1") if k in self.factorial.cells]
        if self.positive_control is not None:
            names.append(self.positive_control)
        for name in names:
            if name not in out:
                out.append(name)
        return out


def hypothesis_path(name: str, relative_to: Path | None = None) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    for cand in ([relative_to / f"{name}.yaml", relative_to / name] if relative_to else []) + \
            [HYPOTHESES_DIR / f"{name}.yaml"]:
        if cand.is_file():
            return cand
    known = ", ".join(sorted(q.stem for q in HYPOTHESES_DIR.glob("*.yaml")))
    raise SpecError(f"hypothesis '{name}' not found: not a file, and not one of {known} "
                    f"(write experiments/hypotheses/{name}.yaml; see the README)")


def load_hypothesis(name: str, relative_to: Path | None = None) -> Hypothesis:
    """Load and check a hypothesis file (a name under experiments/hypotheses/, or beside the plan)."""
    path = hypothesis_path(name, relative_to)
    raw = _read_yaml(path)
    raw.setdefault("name", path.stem)
    try:
        h = Hypothesis.model_validate({**raw, "path": str(path)})
    except ValidationError as e:
        raise SpecError(format_validation_error(e, str(path))) from None
    unknown = [n for n in (*h.needs, *(x for c in h.comparisons for x in c.needs)) if n not in NEEDS]
    if unknown:
        raise SpecError(f"{path}: needs: {', '.join(unknown)} not known; known: {', '.join(NEEDS)}")
    if h.kind == "comparisons" and not h.comparisons:
        raise SpecError(f"{path}: comparisons: a hypothesis of kind 'comparisons' lists at least one "
                        "{arm, control, expect}")
    bad = sorted(set(h.rules) - set(DecisionRules.__dataclass_fields__))
    if bad:
        raise SpecError(f"{path}: rules: {', '.join(bad)} not known; known: "
                        f"{', '.join(DecisionRules.__dataclass_fields__)}")
    if h.kind == "factorial":
        f = h.factorial
        if f is None or set(f.cells) != {"a0b0", "a0b1", "a1b0", "a1b1"}:
            raise SpecError(f"{path}: factorial: a hypothesis of kind 'factorial' names its four cells "
                            "a0b0, a0b1, a1b0, a1b1 (one arm each)")
        if f.claim not in f.mechanisms:
            raise SpecError(f"{path}: factorial.claim: {f.claim!r} is not one of the mechanisms "
                            f"({', '.join(f.mechanisms) or 'none given'})")
    if h.kind == "correlation" and h.correlation is None:
        raise SpecError(f"{path}: correlation: a hypothesis of kind 'correlation' says x, y and expect")
    from .spec import spec_path

    for arm in h.arms():
        field = "positive_control" if arm == h.positive_control else "comparisons"
        try:
            spec_path(arm, relative_to=path.parent)
        except SpecError as e:
            raise SpecError(f"{path}: {field}: {e}") from None
    return h
