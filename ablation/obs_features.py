"""Observation features: robosuite obs -> LIBERO obs names, derived features, and the flat low-dim vector.

Shared by the demo readers (what a step stores), training windows (what the network sees) and the
rollout policy (the same features from the live simulator). Knows no file format and no network.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from . import rotation as R

LOWDIM_KEYS = ("ee_pos", "ee_ori", "ee_states", "gripper_states", "joint_states", "object_state")
IMAGE_KEYS = ("agentview_rgb", "eye_in_hand_rgb")
GRIPPER_HISTORY_CAP = 30  # steps; "since last flip" saturates here (also for "never flipped")


def env_obs_to_libero(raw: dict) -> dict[str, np.ndarray]:
    """robosuite observation dict -> LIBERO HDF5 obs names (low-dim, plus images when present)."""
    pos = np.asarray(raw["robot0_eef_pos"], dtype=np.float64)
    ori = R.quat_to_axis_angle(np.asarray(raw["robot0_eef_quat"], dtype=np.float64))
    out = {
        "ee_pos": pos,
        "ee_ori": ori,
        "ee_states": np.concatenate([pos, ori]),
        "gripper_states": np.asarray(raw["robot0_gripper_qpos"], dtype=np.float64),
        "joint_states": np.asarray(raw["robot0_joint_pos"], dtype=np.float64),
    }
    if "object-state" in raw:
        out["object_state"] = np.asarray(raw["object-state"], dtype=np.float64)
    if "agentview_image" in raw:
        out["agentview_rgb"] = np.asarray(raw["agentview_image"], dtype=np.uint8)
    if "robot0_eye_in_hand_image" in raw:
        out["eye_in_hand_rgb"] = np.asarray(raw["robot0_eye_in_hand_image"], dtype=np.uint8)
    return out


def gripper_history_features(prev_grip_cmds: Iterable[float]) -> np.ndarray:
    """(2,) = [last gripper command (-1 open/+1 close), steps since it last flipped / cap].

    A memoryless policy cannot tell the motionless steps of a grasp apart; this counter can.
    Before any flip the counter reads saturated (1.0), so wait steps do not shift it.
    """
    prev = np.asarray(list(prev_grip_cmds), dtype=np.float64).ravel()
    if prev.size == 0:
        return np.array([-1.0, 1.0])
    signs = np.where(prev > 0, 1.0, -1.0)
    flips = np.nonzero(signs[1:] != signs[:-1])[0]
    since = GRIPPER_HISTORY_CAP if flips.size == 0 else len(prev) - (flips[-1] + 1)
    return np.array([signs[-1], min(since, GRIPPER_HISTORY_CAP) / GRIPPER_HISTORY_CAP])


# Features computed from stored obs rather than read from the file. `ee_rot6d` is the policy's
# orientation input: `ee_ori` (axis-angle with the quaternion forced to w >= 0) jumps from about
# (+3.1, +0.5, 0) to (-3.1, -0.5, 0) under a 0.01 rad tilt at the top-down gripper pose, where LIBERO
# arms spend their time; the first two columns of the rotation matrix are continuous everywhere.
# `ee_ori` stays what LIBERO files store.
DERIVED_OBS = {"ee_rot6d": lambda obs: R.matrix_to_rot6d(R.axis_angle_to_matrix(np.asarray(obs["ee_ori"], dtype=np.float64)))}


def obs_value(obs: dict[str, np.ndarray], key: str) -> np.ndarray:
    """A stored or derived observation (derived keys are computed from the stored ones)."""
    if key in obs:
        return np.asarray(obs[key])
    if key in DERIVED_OBS:
        return DERIVED_OBS[key](obs)
    raise KeyError(key)


def obs_feature_dim(key: str, ep_obs: dict[str, np.ndarray] | None = None) -> int:
    fixed = {"ee_pos": 3, "ee_ori": 3, "ee_rot6d": 6, "ee_states": 6, "gripper_states": 2, "joint_states": 7,
             "gripper_history": 2}
    if key in fixed:
        return fixed[key]
    if ep_obs is not None and key in ep_obs:
        return int(np.prod(ep_obs[key].shape[1:]))
    raise KeyError(key)


def obs_features(obs: dict[str, np.ndarray], keys: Iterable[str]) -> np.ndarray:
    """One step's low-dim observation dict -> flat float vector in `keys` order."""
    return np.concatenate([np.asarray(obs_value(obs, k), dtype=np.float64).ravel() for k in keys])
