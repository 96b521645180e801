"""Every threshold a verdict uses, with its one default, in one place.

A plan's `episodes:` section and a hypothesis file may override them; nothing else in the package
hard-codes a threshold. Units: rates and margins are success fractions (0.10 = 10 points); angles in
degrees; correlations are rank correlations in [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping


@dataclass(frozen=True)
class DecisionRules:
    """alpha: family-wise error over every comparison word of one plan, all looks together.
    spending: how alpha is spent across looks ("obrien_fleming" or "bonferroni").
    margin: |effect| below which two arms show "no meaningful difference".
    floor: both arms at or below this success cannot show a difference (another failure masks it).
    ceiling: both arms at or above this success cannot show a difference (no headroom).
    baseline_fails_below: the seed's failure signature, "success near 0".
    corr_strong: |rank correlation| below this is "no strong relation".
    rot_spread_min_deg: demos that turn less than this make rotation-scale comparisons untestable.
    power: the power that seeds_needed / episodes_needed plan for.
    positive_control_min: a hypothesis's positive control (an arm that must work for its comparisons to
        mean anything, `positive_control` in the file) below this success makes it untestable."""

    alpha: float = 0.05
    spending: str = "obrien_fleming"
    margin: float = 0.15
    floor: float = 0.10
    ceiling: float = 0.90
    baseline_fails_below: float = 0.10
    corr_strong: float = 0.3
    rot_spread_min_deg: float = 5.0
    power: float = 0.8
    positive_control_min: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha}")
        if not 0.0 < self.margin < 1.0:
            raise ValueError(f"margin must be in (0, 1) (a success fraction), got {self.margin}")
        if not 0.0 <= self.floor < self.ceiling <= 1.0:
            raise ValueError(f"need 0 <= floor < ceiling <= 1, got floor {self.floor}, ceiling {self.ceiling}")

    def with_overrides(self, over: Mapping[str, Any] | None) -> "DecisionRules":
        """These rules with the known keys of `over` (a plan's episodes section, a hypothesis's
        `rules`) replacing the defaults; None values and unknown keys are ignored."""
        names = {f.name for f in fields(self)}
        kw = {k: v for k, v in (over or {}).items() if k in names and v is not None}
        return replace(self, **kw) if kw else self


DEFAULT_RULES = DecisionRules()
