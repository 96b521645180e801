"""The demo model every reader fills: Episode, DemoMeta, DemoSet, the one error class and the checks
both formats share (LIBERO HDF5 in `libero_file`, LeRobot v3 in `lerobot_file`).

An Episode holds the steps as stored (no timing shift): `obs[k]` is the observation the file stores at
step k; `DemoMeta.obs_convention` says whether it was taken before ("before") or after ("after") the
action at k. `ablation.data.episode_view` aligns both to "obs before the action".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError

ACTION_DIM = 7
# Keys every file needs: the codec builds the proprio state and absolute targets from them.
REQUIRED_OBS = ("ee_pos", "ee_ori", "gripper_states")
OBS_CONVENTIONS = ("before", "after")


class DemoFileError(UserError):
    """A demo file (LIBERO HDF5 or LeRobot dataset) is unreadable, inconsistent or cannot be mapped;
    the message names the file, the demo, the field and the fix."""


@dataclass
class Episode:
    actions: np.ndarray                 # (T, 7) native LIBERO actions: delta xyz, delta axis-angle, gripper
    obs: dict[str, np.ndarray]          # (T, ...) per stored obs key (LIBERO names)
    states: np.ndarray                  # (T, S) flattened MuJoCo states, or (T, 0) when not stored
    rewards: np.ndarray
    dones: np.ndarray
    robot_states: np.ndarray
    init_state: np.ndarray              # the MuJoCo state a replay resets to; size 0 when unknown
    model_file: str = ""
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # extra per-demo datasets (executed_actions)
    name: str = ""                      # demo_<i> in the file

    def __len__(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class DemoMeta:
    env_name: str
    problem_info: dict
    bddl_file_name: str
    bddl_file_content: str
    env_args: dict
    obs_convention: str = "before"
    attrs: dict = field(default_factory=dict)  # provenance: suite, task, expert, noise, versions


@dataclass
class DemoSet:
    path: Path
    meta: DemoMeta
    episodes: list[Episode]
    names: list[str]


def check_actions(where: str, actions: np.ndarray, field_name: str = "actions") -> None:
    """Actions must be (T, 7) with T >= 1: LIBERO's delta xyz, delta axis-angle and gripper command."""
    if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
        raise DemoFileError(f"{where}: '{field_name}' has shape {actions.shape}; LIBERO actions are (T, {ACTION_DIM}) "
                            "(xyz, axis-angle, gripper)")
    if actions.shape[0] == 0:
        raise DemoFileError(f"{where}: '{field_name}' is empty")


def check_steps(where: str, arrays: dict[str, np.ndarray], T: int, ref: str = "actions") -> None:
    """Every per-step array has T steps and no NaN or inf."""
    for key, arr in arrays.items():
        if arr.shape[0] != T:
            raise DemoFileError(f"{where}: '{key}' has {arr.shape[0]} steps but '{ref}' has {T}")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            bad = int(np.argwhere(~np.isfinite(arr.reshape(T, -1)))[0][0])
            raise DemoFileError(f"{where}: '{key}' contains NaN or inf (first at step {bad})")


def check_convention(where: str, value: str | None, field_name: str) -> None:
    if value not in (None, "auto", *OBS_CONVENTIONS):
        raise DemoFileError(f"{where}: {field_name} '{value}' is not one of auto, before, after")


def resolve_convention(where: str, asked: str | None, stated: str | None, detect,
                       stated_by: str = "attribute data.obs_convention") -> str:
    """The obs convention: the file's own statement when it has one (a spec that contradicts it is an
    error), else `detect()` (from the data; None when it cannot tell), else the spec must say.
    `asked`: data.obs_convention of the spec (None or "auto": the file decides)."""
    check_convention(where, asked, "data.obs_convention")
    if stated is not None and stated not in OBS_CONVENTIONS:
        raise DemoFileError(f"{where}: {stated_by} '{stated}' is not one of before, after")
    if asked in (None, "auto"):
        if stated:
            return stated
        detected = detect()
        if detected is None:
            raise DemoFileError(
                f"{where}: the file does not say when its obs were recorded (no data.obs_convention attribute) and "
                "the actions do not tell it apart; set data.obs_convention: before (obs recorded before each "
                "step) or after (LIBERO's original create_dataset.py) in the spec")
        return detected
    if stated and stated != asked:
        raise DemoFileError(
            f"{where}: the spec says data.obs_convention: {asked} but the file records obs {stated} each step "
            f"({stated_by}); set data.obs_convention: auto or {stated}")
    return asked


def check_replayable(ds: DemoSet, n: int) -> None:
    """A replay resets each of the first n demos to its own MuJoCo state; demos without one (a LeRobot
    dataset recorded without `libero.sim_state`) cannot be replayed: say so before the simulator starts."""
    for ep in ds.episodes[:n]:
        if not np.size(ep.init_state) and not np.size(ep.states):
            raise DemoFileError(
                f"{ds.path}: {ep.name} stores no simulator state to start a replay from (LIBERO HDF5: the "
                "init_state attribute or 'states'; LeRobot: the feature 'libero.sim_state'); record the demos with "
                "their MuJoCo states, or skip the replay checks (doctor --no-sim)")
