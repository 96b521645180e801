"""Training data from demos: each episode aligned to "obs before action k" in physical units, the split
by demo, and the training windows (obs history, proprio state, action chunks in model space).

Reading is elsewhere: `demo_io.read_demo_file` takes a LIBERO HDF5 file or a LeRobot v3 dataset and
returns `episodes.DemoSet`. Observation features live in `obs_features`. Data knows no network: RDT's
image tokens are the caller's choice (`spec_data.prepare_spec_data`).

Observation timing (`DemoMeta.obs_convention`, see `libero_file`): training always uses the obs *before*
an action; for "after" files obs_before[k] = obs[k-1] (and obs[0] for k = 0, the one frame not stored).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import rotation as R
from .codec import ActionCodec, phys_state
from .demo_io import read_demo_file
from .episodes import ACTION_DIM, REQUIRED_OBS, DemoFileError, DemoMeta, DemoSet, Episode
from .libero_file import write_demo_file
from .obs_features import (DERIVED_OBS, GRIPPER_HISTORY_CAP, IMAGE_KEYS, LOWDIM_KEYS, env_obs_to_libero,
                           gripper_history_features, obs_feature_dim, obs_features, obs_value)
from .representations import CONTROLLER_POS_SCALE_M, CONTROLLER_ROT_SCALE_RAD, Representation, representation
from .spec import DataSpec

# Names that moved to their own modules, kept importable from here (tests, benchmarks, older callers).
__all__ = ["ACTION_DIM", "REQUIRED_OBS", "DemoFileError", "DemoMeta", "DemoSet", "Episode", "read_demo_file",
           "write_demo_file", "DERIVED_OBS", "GRIPPER_HISTORY_CAP", "IMAGE_KEYS", "LOWDIM_KEYS", "env_obs_to_libero",
           "gripper_history_features", "obs_feature_dim", "obs_features", "obs_value", "EpisodeView", "episode_view",
           "physical_actions", "Windows", "split_demos", "build_windows", "PreparedData", "prepare_data"]


# ----------------------------------------------------------------------------- physical views

@dataclass(frozen=True)
class EpisodeView:
    """One episode aligned to "obs before action k", in physical units."""

    actions: np.ndarray       # (T, 7) native
    obs: dict[str, np.ndarray]  # (T, ...) obs before each action, plus gripper_history
    ee_pos: np.ndarray        # (T, 3) m, before each action
    ee_rot: np.ndarray        # (T, 3, 3)
    next_ee_pos: np.ndarray   # (T, 3) m, after each action
    next_ee_rot: np.ndarray   # (T, 3, 3)
    state: np.ndarray         # (T, 10) proprio state, physical


def episode_view(ep: Episode, convention: str) -> EpisodeView:
    T = len(ep)
    if convention == "before":
        obs = {k: v for k, v in ep.obs.items()}
    else:  # shift: obs before action k is the obs stored after action k-1
        obs = {k: np.concatenate([v[:1], v[:-1]], axis=0) for k, v in ep.obs.items()}
    ee_pos = obs["ee_pos"].astype(np.float64)
    ee_rot = R.axis_angle_to_matrix(obs["ee_ori"])
    if convention == "after":
        next_pos, next_rot = ep.obs["ee_pos"].astype(np.float64), R.axis_angle_to_matrix(ep.obs["ee_ori"])
    else:
        # The pose after the last action is not stored; use the commanded target there.
        last_pos = ee_pos[-1] + ep.actions[-1, :3] * CONTROLLER_POS_SCALE_M
        last_rot = R.axis_angle_to_matrix(ep.actions[-1, 3:6] * CONTROLLER_ROT_SCALE_RAD) @ ee_rot[-1]
        next_pos = np.concatenate([ee_pos[1:], last_pos[None]], axis=0)
        next_rot = np.concatenate([ee_rot[1:], last_rot[None]], axis=0)
    grip_hist = np.stack([gripper_history_features(ep.actions[:k, 6]) for k in range(T)])
    obs["gripper_history"] = grip_hist
    state = phys_state(ee_pos, ee_rot, obs["gripper_states"])
    return EpisodeView(ep.actions.astype(np.float64), obs, ee_pos, ee_rot, next_pos, next_rot, state)


def physical_actions(view: EpisodeView, rep: Representation) -> np.ndarray:
    """The episode's actions in the representation's physical units, (T, rep.dim)."""
    return rep.from_demo(view.actions, view.ee_pos, view.ee_rot, view.next_ee_pos, view.next_ee_rot)


# ----------------------------------------------------------------------------- windows

@dataclass
class Windows:
    """Training samples, one per (demo, step). Model-space arrays are float32.

    obs[i, j]      = low-dim features of step t-To+1+j (repeated first frame before the start)
    actions[i, h]  = model-space action of step t+h (repeated last action past the end)
    action_valid   = 1 for real steps, 0 for padding
    """

    obs: np.ndarray           # (N, To, F)
    state: np.ndarray         # (N, Ws) model-space proprio state at t
    actions: np.ndarray       # (N, H, W)
    action_valid: np.ndarray  # (N, H)
    phys_actions: np.ndarray  # (N, H, D) physical targets, for errors in physical units
    native_actions: np.ndarray  # (N, H, 7)
    ee_pos: np.ndarray        # (N, 3)
    ee_rot: np.ndarray        # (N, 3, 3)
    demo_index: np.ndarray    # (N,)
    step: np.ndarray          # (N,)
    images: np.ndarray | None = None  # (N, To, n_cams, h, w, 3) uint8

    def __len__(self) -> int:
        return int(self.obs.shape[0])


def split_demos(n: int, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split demo indices into train / validation, by demo (never by frame)."""
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def build_windows(views: list[EpisodeView], ids: list[int], codec: ActionCodec, data: DataSpec,
                  images: list[dict[str, np.ndarray]] | None = None) -> Windows:
    To, H = data.obs_history, data.action_chunk
    keys = [k for k in data.obs_keys]
    cols: dict[str, list] = {k: [] for k in ("obs", "state", "actions", "valid", "phys", "native",
                                              "pos", "rot", "demo", "step", "img")}
    for i in ids:
        v = views[i]
        T = len(v.actions)
        missing = [k for k in keys if k not in v.obs and not (k in DERIVED_OBS and "ee_ori" in v.obs)]
        if missing:
            raise DemoFileError(f"demo {i}: obs key(s) {', '.join(missing)} requested by data.obs_keys are not "
                                f"in the file (have: {', '.join(sorted(v.obs))}); drop them from data.obs_keys, or "
                                "give demos that store them (a LeRobot dataset stores object_state as the feature "
                                "observation.environment_state)")
        stored = [k for k in v.obs if k in keys or k == "ee_ori"]
        feats = np.stack([obs_features({k: v.obs[k][t] for k in stored}, keys) for t in range(T)])
        phys = physical_actions(v, codec.rep)
        model = codec.encode(phys)
        state = codec.encode_state(v.state)
        for t in range(T):
            hist = np.clip(np.arange(t - To + 1, t + 1), 0, None)
            fut = np.arange(t, t + H)
            valid = (fut < T).astype(np.float32)
            fut = np.minimum(fut, T - 1)
            cols["obs"].append(feats[hist])
            cols["state"].append(state[t])
            cols["actions"].append(model[fut])
            cols["valid"].append(valid)
            cols["phys"].append(phys[fut])
            cols["native"].append(v.actions[fut])
            cols["pos"].append(v.ee_pos[t])
            cols["rot"].append(v.ee_rot[t])
            cols["demo"].append(i)
            cols["step"].append(t)
            if images is not None:
                cams = [images[i][k] for k in IMAGE_KEYS if k in images[i]]
                cols["img"].append(np.stack([np.stack([c[h] for c in cams]) for h in hist]))
    if not cols["obs"]:
        raise DemoFileError("no training windows: the split holds no demo steps")
    return Windows(
        obs=np.asarray(cols["obs"], dtype=np.float32), state=np.asarray(cols["state"], dtype=np.float32),
        actions=np.asarray(cols["actions"], dtype=np.float32), action_valid=np.asarray(cols["valid"], dtype=np.float32),
        phys_actions=np.asarray(cols["phys"]), native_actions=np.asarray(cols["native"]),
        ee_pos=np.asarray(cols["pos"]), ee_rot=np.asarray(cols["rot"]),
        demo_index=np.asarray(cols["demo"]), step=np.asarray(cols["step"]),
        images=np.asarray(cols["img"], dtype=np.uint8) if images is not None else None)


@dataclass
class PreparedData:
    codec: ActionCodec
    train: Windows
    val: Windows | None
    train_ids: list[int]
    val_ids: list[int]
    demo_set: DemoSet
    # Observation windows the observation normaliser is fitted on; None: `train.obs` (the run's own
    # training split). Set when the normalisers are frozen from other demos (ablation/frozen_norm.py).
    obs_fit: np.ndarray | None = None


def prepare_data(spec_data: DataSpec, codec_spec, demo_path: str | Path, split_seed: int = 0) -> PreparedData:
    """Read a demo file, split by demo, fit the codec on the training split, build windows."""
    ds = read_demo_file(demo_path, obs_convention=spec_data.obs_convention, load_images=spec_data.images)
    views = [episode_view(ep, ds.meta.obs_convention) for ep in ds.episodes]
    train_ids, val_ids = split_demos(len(views), spec_data.val_fraction, split_seed)
    rep = representation(codec_spec.representation, codec_spec.rotation)
    # Statistics come from the training split only, so validation measures generalisation honestly.
    phys = np.concatenate([physical_actions(views[i], rep) for i in train_ids])
    states = np.concatenate([views[i].state for i in train_ids])
    native = np.concatenate([views[i].actions for i in train_ids])
    codec = ActionCodec.fit(codec_spec, phys, states, native)
    imgs = [{k: ep.obs[k] for k in IMAGE_KEYS if k in ep.obs} for ep in ds.episodes] if spec_data.images else None
    train = build_windows(views, train_ids, codec, spec_data, imgs)
    val = build_windows(views, val_ids, codec, spec_data, imgs) if val_ids else None
    return PreparedData(codec, train, val, train_ids, val_ids, ds)
