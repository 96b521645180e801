"""Typed, frozen experiment specs loaded from YAML: the one import path for specs and plans.

A fix is written as the difference from a base (`extends: base.yaml` + only what changes);
`resolve_spec` deep-merges the chain, applies `--set` overrides and validates the result.
Every error names the file, the dotted path and what is allowed.

The parts live in three modules, re-exported here: spec_model.py (the sections and the identity hash),
spec_load.py (YAML, `extends`, `--set`, error messages) and spec_plan.py (plan files).
"""
from __future__ import annotations

from .spec_load import (
    _allowed_keys, _allowed_values, apply_sets, deep_merge, format_validation_error, load_raw, parse_set,
    _read_yaml, resolve_spec, _set_item_for, spec_from_dict, _unwrap, with_overrides,
)  # noqa: F401
from .spec_model import (
    affects_identity, _check_dotted_path, codec_guarantees_unit_range, CodecSpec, DataSpec, _Frozen, GROUPS,
    GroupValues, HASH_NEUTRAL_DEFAULTS, Layout, LEGACY_SECTIONS, LossSpec, ModelKind, ModelSize, ModelSpec,
    Normalizer, NOT_IDENTITY, ObsConvention, ObsKey, PredictionType, RDT_SIZES, Reduction, representation,
    RepresentationName, REPRESENTATIONS, RolloutSpec, Rotation, _short_hash, SimSpec, Spec, SpecError,
    TrackingSpec, TrainSpec, TuneParam, TuneSpec,
)  # noqa: F401
from .spec_plan import (
    EpisodeSchedule, EXPERIMENTS_DIR, find_plan, load_plan, Plan, PlanEntry, PretrainStage, spec_path,
)  # noqa: F401
