"""What a hypothesis needs of the task or the arms: the registry of needs, the facts they are checked on,
and the arms a plan need not train because every comparison they serve is untestable.

A need is a registered class with its check and its message: `rotation_varies` (the demos turn the
gripper) and `pretrained_slots` (the arms fine-tune a network whose action slots have meanings). A
hypothesis file names needs by their registry key (`hypothesis.load_hypothesis` refuses unknown ones);
`unmet_needs` is what `analysis.judge` asks after training and `untestable_arms` before it. Both can be
read before any training: the rotation spread from the demo files the plan has just made, pretraining
from the specs. A comparison whose need is unmet would be judged "untestable" after training anyway,
so training its arms only costs time (on libero_object task 0 the expert never turns, and the
rotation-scaled arms are 6 of the plan's runs). An arm that some testable comparison still uses is kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from .rules import DEFAULT_RULES, DecisionRules

if TYPE_CHECKING:
    from .hypothesis import Hypothesis


@dataclass
class ArmFacts:
    """What the needs of a hypothesis are checked against, per arm."""

    rot_spread_deg: float | None = None   # median over demos of the largest turn (audit)
    pretrained: bool = False              # fine-tunes a network with slot meanings


class Need:
    """One need: its registry `name`, the `description` a hypothesis file's reader sees, and `unmet`,
    the measured reason these arms do not meet it (None when they do)."""

    name: ClassVar[str]
    description: ClassVar[str]

    def unmet(self, arms: list[str], facts: dict[str, ArmFacts], rules: DecisionRules) -> str | None:
        raise NotImplementedError


NEEDS: dict[str, Need] = {}


def register_need(cls: type[Need]) -> type[Need]:
    """Class decorator: add one instance of `cls` to NEEDS under its name (a name is registered once)."""
    if cls.name in NEEDS:
        raise ValueError(f"need {cls.name!r} is registered twice ({type(NEEDS[cls.name]).__name__}, {cls.__name__})")
    NEEDS[cls.name] = cls()
    return cls


@register_need
class RotationVaries(Need):
    name = "rotation_varies"
    description = ("the demos turn the gripper (rotation spread >= ROT_SPREAD_MIN_DEG degrees); "
                   "with a constant orientation, a change to how rotation is scaled cannot matter")

    def unmet(self, arms: list[str], facts: dict[str, ArmFacts], rules: DecisionRules) -> str | None:
        min_deg = rules.rot_spread_min_deg
        spreads = [facts[a].rot_spread_deg for a in arms if a in facts and facts[a].rot_spread_deg is not None]
        if not spreads:
            return "the demos' rotation spread was not measured (no audit)"
        if max(spreads) < min_deg:
            return (f"the demos' rotation spread is {max(spreads):.1f} deg (< {min_deg:g} deg): "
                    "the expert barely turns on this task, so scaling rotation cannot matter here")
        return None


@register_need
class PretrainedSlots(Need):
    name = "pretrained_slots"
    description = ("the arms fine-tune a network pretrained with meanings in its action slots "
                   "(model.pretrained or train.init_from); a randomly initialised network gives "
                   "slot positions no meaning")

    def unmet(self, arms: list[str], facts: dict[str, ArmFacts], rules: DecisionRules) -> str | None:
        cold = [a for a in arms if a in facts and not facts[a].pretrained]
        if not cold:
            return None
        return (f"{', '.join(cold)} start(s) from random weights: slot positions have no meaning "
                "before pretraining (" + self.description.split(';')[0] + ")")


def unmet_needs(needs: tuple[str, ...], arms: list[str], facts: dict[str, ArmFacts],
                rules: DecisionRules = DEFAULT_RULES) -> list[str]:
    """The needs (with the measured reason) that these arms do not meet, in the order named."""
    unknown = [n for n in needs if n not in NEEDS]
    if unknown:
        raise ValueError(f"needs {', '.join(unknown)} not known; known: {', '.join(NEEDS)}")
    return [why for why in (NEEDS[n].unmet(arms, facts, rules) for n in needs) if why]


def starts_pretrained(spec) -> bool:
    """Whether the spec's network starts from pretrained weights (a checkpoint or a pretraining stage)."""
    return bool(spec.model.pretrained or getattr(spec.train, "init_from", None))


def demo_rotation_spread_deg(demo_file: Path) -> float:
    """The audit's rotation spread (median over demos of the largest turn, degrees) of one file."""
    from .audit import rotation_spread_deg
    from .data import episode_view, read_demo_file

    ds = read_demo_file(demo_file)
    return rotation_spread_deg([episode_view(ep, ds.meta.obs_convention) for ep in ds.episodes])


def plan_time_facts(arms: dict, demo_files: dict[str, list[Path]]) -> dict[str, ArmFacts]:
    """ArmFacts from what exists before training: each arm's demo files (max spread over its tasks)
    and its spec (pretrained weights or a pretraining stage)."""
    cache: dict[Path, float] = {}
    facts = {}
    for name, arm in arms.items():
        files = demo_files.get(name, [])
        for f in files:  # arms share their task's file: read each once
            if f not in cache:
                cache[f] = demo_rotation_spread_deg(f)
        spreads = [cache[f] for f in files]
        facts[name] = ArmFacts(rot_spread_deg=max(spreads) if spreads else None,
                               pretrained=starts_pretrained(arm.spec))
    return facts


def untestable_arms(hypotheses: list[Hypothesis], planned: list[str], facts: dict[str, ArmFacts]) -> dict[str, str]:
    """{arm: why} for planned arms that appear only in comparisons whose needs are unmet."""
    used: set[str] = set()
    why: dict[str, str] = {}
    for h in hypotheses:
        groups = [((*h.needs, *c.needs), [c.arm, c.control]) for c in h.comparisons]
        if h.factorial is not None:  # a 2x2's cells stand or fall together
            groups.append((h.needs, list(h.factorial.cells.values())))
        if h.positive_control is not None and not any(h.positive_control in arms for _n, arms in groups):
            groups.append((h.needs, [h.positive_control]))  # trained beside them: it falls with the hypothesis
        for needs, arms in groups:
            if any(a not in facts or facts[a].rot_spread_deg is None for a in arms):
                used |= set(arms)  # not measurable before training (no demos): let the run say why
                continue
            unmet = unmet_needs(needs, arms, facts)
            if unmet:
                for a in arms:
                    why.setdefault(a, f"untestable here ({h.name}): " + "; ".join(unmet))
            else:
                used |= set(arms)
    return {a: w for a, w in why.items() if a in planned and a not in used}
