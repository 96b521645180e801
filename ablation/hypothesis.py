"""Hypotheses as data: one YAML file per hypothesis under experiments/hypotheses/.

A hypothesis names its claim and mechanism, the arms that isolate it (each compared with a control
on the same init states), the decision rule in words and in fields, what it needs to be testable,
and what each outcome would mean. Plans list hypotheses; the arms follow from them. The report reads
everything from these files and from MLflow, so adding a hypothesis means writing one file.

    name: H4_training_length            # defaults to the file name
    title: "Training length"
    claim: "The baseline fails because 1200 steps are too few."
    mechanism: "..."
    needs: []                           # see NEEDS below
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

from .rules import DEFAULT_RULES, DecisionRules
from .spec import EXPERIMENTS_DIR, SpecError, _Frozen, _read_yaml, format_validation_error

HYPOTHESES_DIR = EXPERIMENTS_DIR / "hypotheses"

# What a hypothesis may need before it can be tested, and how the harness checks it.
NEEDS = {
    "rotation_varies": "the demos turn the gripper (rotation spread >= ROT_SPREAD_MIN_DEG degrees); "
                       "with a constant orientation, a change to how rotation is scaled cannot matter",
    "pretrained_slots": "the arms fine-tune a network pretrained with meanings in its action slots "
                        "(model.pretrained or train.init_from); a randomly initialised network gives "
                        "slot positions no meaning",
}
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
    kind: Literal["comparisons", "correlation"] = "comparisons"
    comparisons: tuple[Comparison, ...] = ()
    correlation: Optional[Correlation] = None
    decide: Literal["any", "all"] = "any"
    rule: str
    # The seed report's own diagnosis: when the data contradict it, the answer paragraph says so.
    seed_claim: bool = False
    outcomes: Outcomes = Outcomes()
    # Thresholds of this hypothesis that differ from the plan's (margin, corr_strong, floor, ceiling);
    # the defaults live in ablation/rules.py.
    rules: dict[str, float] = {}
    path: Optional[str] = Field(None, exclude=True)

    def rule_overrides(self, rules: DecisionRules) -> DecisionRules:
        """The plan's rules with this hypothesis's own thresholds on top."""
        return rules.with_overrides(self.rules)

    def arms(self) -> list[str]:
        """Every spec this hypothesis trains, controls first, in file order."""
        out: list[str] = []
        for c in self.comparisons:
            for name in (c.control, c.arm):
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
    if h.kind == "correlation" and h.correlation is None:
        raise SpecError(f"{path}: correlation: a hypothesis of kind 'correlation' says x, y and expect")
    from .spec import spec_path

    for arm in h.arms():
        try:
            spec_path(arm, relative_to=path.parent)
        except SpecError as e:
            raise SpecError(f"{path}: comparisons: {e}") from None
    return h
