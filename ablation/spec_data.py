"""Training data for a whole spec: the caller's choice between plain windows and RDT's SigLIP tokens.

`ablation.data` knows no network; this module is where a spec with `model.kind: rdt` and
`data.images: true` is routed to RDT's feature cache (ablation/rdt/features.py) instead.
"""
from __future__ import annotations

from pathlib import Path

from .data import PreparedData, prepare_data
from .errors import UserError
from .frozen_norm import prepare_frozen_data
from .rdt.features import prepare_rdt_image_data


def prepare_spec_data(spec, demo_path: str | Path, *, features_dir: str | Path | None = None) -> PreparedData:
    """prepare_data for a whole spec. model.kind rdt with data.images gets SigLIP tokens of its frames
    from the feature cache as `images` (ablation/rdt/features.py), never the raw frames."""
    stats_from = spec.data.norm_stats_from
    if spec.model.kind == "rdt" and spec.data.images:
        if stats_from:
            raise UserError(f"{spec.name}: data.norm_stats_from is not supported with model.kind rdt and data.images; "
                            "set data.norm_stats_from: null")
        return prepare_rdt_image_data(spec, demo_path, features_dir)
    if stats_from:
        return prepare_frozen_data(spec.data, spec.codec, demo_path, stats_from)
    return prepare_data(spec.data, spec.codec, demo_path)
