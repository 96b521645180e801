"""Normalisers frozen from other demos: fine-tuning that sees the pretraining statistics.

A run normally fits its codec (action and proprio-state statistics) and its observation normaliser on
the training split of its own demos. `data.norm_stats_from: FILE` fits all three on the training split
of FILE instead (the same split rule and seed as a run training on FILE, so a pretraining run on FILE
and a fine-tuning run frozen from FILE get the same statistics for the same representation), then
builds the run's windows from its own demos with them. H3 needs this (issue 24): every arm fine-tunes
the same representation through the same frozen min-max, so the arms see the same model-space data and
differ only in what pretraining put in the slots.

Values of the run's demos outside FILE's range leave [-1, 1] after min-max; that is the point of
freezing (a physical value keeps the model-space meaning pretraining gave it), and what a fine-tuned
RDT sees too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .codec import ActionCodec
from .data import DemoFileError, PreparedData, build_windows, episode_view, physical_actions, read_demo_file, split_demos
from .representations import representation
from .spec import CodecSpec, DataSpec


def prepare_frozen_data(spec_data: DataSpec, codec_spec: CodecSpec, demo_path: str | Path,
                        stats_path: str | Path, split_seed: int = 0) -> PreparedData:
    """prepare_data with the codec and the observation normaliser's input taken from `stats_path`."""
    stats_path = Path(stats_path)
    if str(stats_path).startswith("@"):
        raise DemoFileError(f"data.norm_stats_from: {stats_path} is a plan marker; it is resolved only by a plan "
                            "with a pretraining stage (plan.pretrain). Give a demo file, or run it in such a plan")
    src = read_demo_file(stats_path)
    src_views = [episode_view(ep, src.meta.obs_convention) for ep in src.episodes]
    src_train, _ = split_demos(len(src_views), spec_data.val_fraction, split_seed)
    rep = representation(codec_spec.representation, codec_spec.rotation)
    codec = ActionCodec.fit(codec_spec, np.concatenate([physical_actions(src_views[i], rep) for i in src_train]),
                            np.concatenate([src_views[i].state for i in src_train]),
                            np.concatenate([src_views[i].actions for i in src_train]))
    obs_fit = build_windows(src_views, src_train, codec, spec_data).obs
    ds = read_demo_file(demo_path, obs_convention=spec_data.obs_convention)
    views = [episode_view(ep, ds.meta.obs_convention) for ep in ds.episodes]
    train_ids, val_ids = split_demos(len(views), spec_data.val_fraction, split_seed)
    train = build_windows(views, train_ids, codec, spec_data)
    if train.obs.shape[-1] != obs_fit.shape[-1]:
        raise DemoFileError(f"data.norm_stats_from: {stats_path} gives {obs_fit.shape[-1]} observation features for "
                            f"data.obs_keys {list(spec_data.obs_keys)}, but {demo_path} gives {train.obs.shape[-1]}; "
                            "the two files must hold the same observations (e.g. object_state of the same width)")
    val = build_windows(views, val_ids, codec, spec_data) if val_ids else None
    return PreparedData(codec, train, val, train_ids, val_ids, ds, obs_fit=obs_fit)
