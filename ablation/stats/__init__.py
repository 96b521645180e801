"""Statistics for paired, multi-seed, multi-look comparisons of closed-loop success rates.

All rates, effects, interval bounds and margins are fractions in [0, 1] (differences in [-1, 1]).

    records -> paired_effect(...) per arm vs control -> holm({arm: p}) -> verdict(...)
    SequentialDesign: the nominal alpha of each planned look; episodes_needed: a power statement;
    per_task_effects + heterogeneity: do tasks agree; rank_correlation: proxy metric vs success.
"""
from __future__ import annotations

from .correlation import RankCorrelation, rank_correlation
from .decisions import (VERDICTS, SequentialDesign, episodes_needed, holm, obrien_fleming_spent,
                        verdict)
from .effect import (Effect, Heterogeneity, calibrated_p, heterogeneity, paired_effect, per_task_effects,
                     sign_test_midp)
from .records import EpisodeArrays, EpisodeOutcome, to_arrays

__all__ = [
    "EpisodeOutcome", "EpisodeArrays", "to_arrays",
    "Effect", "paired_effect", "per_task_effects", "Heterogeneity", "heterogeneity",
    "calibrated_p", "sign_test_midp",
    "holm", "obrien_fleming_spent", "SequentialDesign", "verdict", "VERDICTS", "episodes_needed",
    "RankCorrelation", "rank_correlation",
]
