"""Per-hypothesis extras: blocks a hypothesis's section carries after its verdict lines (a paragraph or
a figure that only some hypotheses' data call for, e.g. a regression signature).

Register one with `@hypothesis_extra("name")` in this module (the builder imports it, so registration
happens on import). An extra is asked for every hypothesis and returns [] where it does not apply;
prefer to decide from the data (`ctx.hypothesis.kind`, its arms, the curves) over naming a hypothesis.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..analysis import ComparisonResult
from ..hypothesis import Hypothesis
from ..recorded_plan import RecordedPlan
from ..verdicts import HypothesisVerdict
from .document import Block


@dataclass(frozen=True)
class HypothesisContext:
    """What an extra may draw on: the hypothesis, its verdict and comparisons, the whole recorded plan
    (rows, per-episode records, curves) and the report's folder (to write a figure into)."""

    hypothesis: Hypothesis
    verdict: HypothesisVerdict
    comparisons: tuple[ComparisonResult, ...]
    plan: RecordedPlan
    out_dir: Path


HypothesisExtra = Callable[[HypothesisContext], "list[Block]"]
HYPOTHESIS_EXTRAS: dict[str, HypothesisExtra] = {}


def hypothesis_extra(name: str) -> Callable[[HypothesisExtra], HypothesisExtra]:
    """Register `fn(ctx) -> blocks` under `name`: its blocks follow the verdict lines of every
    hypothesis it returns any for, in the order registered."""
    def add(fn: HypothesisExtra) -> HypothesisExtra:
        if name in HYPOTHESIS_EXTRAS:
            raise ValueError(f"hypothesis extra {name!r} is registered twice")
        HYPOTHESIS_EXTRAS[name] = fn
        return fn
    return add
