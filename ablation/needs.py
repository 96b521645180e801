"""Needs known before training: arms that only serve untestable comparisons are not run.

A hypothesis may need something of the task (`rotation_varies`) or of the arms (`pretrained_slots`),
see `hypothesis.NEEDS`. Both can be read before any training: the rotation spread from the demo
files the plan has just made, pretraining from the specs. A comparison whose need is unmet would be
judged "untestable" after training anyway, so training its arms only costs time (on libero_object
task 0 the expert never turns, and the rotation-scaled arms are 6 of the plan's runs). An arm that
some testable comparison still uses is kept.
"""
from __future__ import annotations

from pathlib import Path

from .analysis import ArmFacts, starts_pretrained, unmet_needs
from .hypothesis import Hypothesis


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
