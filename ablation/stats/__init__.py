"""Statistics for paired, multi-seed, multi-look comparisons of closed-loop success rates.

All rates, effects, interval bounds and margins are fractions in [0, 1] (differences in [-1, 1]).

    records -> seed_effect(...) per arm vs control (a trained network is the unit: Welch t on per-seed
    rates) -> holm_difference_equivalence(...) over the plan's family at the look's level.
    paired_effect (hierarchical bootstrap) + holm + verdict: the earlier method, kept for the
    calibration benchmark's comparison (it under-covers with 3 seeds).
    SequentialDesign: the nominal alpha of each planned look; episodes_needed: a power statement;
    per_task_effects + heterogeneity: do tasks agree; rank_correlation: proxy metric vs success.
"""
from __future__ import annotations

from .correlation import RankCorrelation, rank_correlation, within_group_rank_correlation
from .decisions import (VERDICTS, SequentialDesign, StepDown, episodes_needed, holm, holm_difference_equivalence,
                        obrien_fleming_spent, verdict)
from .effect import Effect, calibrated_p, paired_effect, per_task_effects, sign_test_midp
from .heterogeneity import Heterogeneity, heterogeneity
from .records import EpisodeArrays, EpisodeOutcome, to_arrays
from .seed_level import (ArmSeeds, SeedEffect, contrast_effect, episodes_needed_t, per_task_seed_effects, seed_effect,
                         seeds_needed)

__all__ = [
    "EpisodeOutcome", "EpisodeArrays", "to_arrays",
    "Effect", "paired_effect", "per_task_effects", "Heterogeneity", "heterogeneity",
    "calibrated_p", "sign_test_midp",
    "holm", "obrien_fleming_spent", "SequentialDesign", "verdict", "VERDICTS", "episodes_needed",
    "RankCorrelation", "rank_correlation", "within_group_rank_correlation",
    "ArmSeeds", "SeedEffect", "seed_effect", "contrast_effect", "per_task_seed_effects", "seeds_needed", "episodes_needed_t",
    "StepDown", "holm_difference_equivalence",
]
