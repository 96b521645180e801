"""Training data for a whole spec: the caller's choice between plain windows and RDT's SigLIP tokens.

`ablation.data` knows no network; this module is where a spec with `model.kind: rdt` and
`data.images: true` is routed to RDT's feature cache (ablation/rdt/features.py) instead.

    read_spec_demos(spec, demo_path)            the demo file read once, as the spec needs it
    prepare_spec_data(spec, demo_path, demos=)  windows and the codec (fitted once, on the train split)
"""
from __future__ import annotations

from pathlib import Path

from .data import DemoSet, PreparedData, prepare_data, read_demo_file
from .errors import UserError
from .frozen_norm import prepare_frozen_data
from .rdt.features import prepare_rdt_image_data


def _rdt_images(spec) -> bool:
    return spec.model.kind == "rdt" and spec.data.images


def read_spec_demos(spec, demo_path: str | Path) -> DemoSet:
    """The spec's demo file, read once for a whole run: gate, audit and training share it. Camera
    frames are loaded only when the windows hold them (RDT takes SigLIP tokens from its cache)."""
    return read_demo_file(demo_path, obs_convention=spec.data.obs_convention,
                          load_images=spec.data.images and not _rdt_images(spec))


def prepare_spec_data(spec, demo_path: str | Path, *, features_dir: str | Path | None = None,
                      demos: DemoSet | None = None) -> PreparedData:
    """prepare_data for a whole spec (from `demos` when the caller has read the file already).
    model.kind rdt with data.images gets SigLIP tokens of its frames from the feature cache as
    `images` (ablation/rdt/features.py), never the raw frames."""
    stats_from = spec.data.norm_stats_from
    if _rdt_images(spec):
        if stats_from:
            raise UserError(f"{spec.name}: data.norm_stats_from is not supported with model.kind rdt and data.images; "
                            "set data.norm_stats_from: null")
        return prepare_rdt_image_data(spec, demo_path, features_dir, demos=demos)
    if stats_from:  # the codec and observation statistics come from another file (frozen), this one's windows
        return prepare_frozen_data(spec.data, spec.codec, demo_path, stats_from)
    return prepare_data(spec.data, spec.codec, demo_path, demos=demos)
