"""Action representations: what the physical action vector means, one class each.

A representation owns everything that depends on that meaning:
  * building the labels from a demo (`from_demo`: native actions + EEF poses -> physical vectors);
  * turning a physical vector into the controller's env action at the current pose (`to_env`);
  * units, per group;
  * the pose before each step of a chunk, as if the arm followed the demo (`chunk_poses`);
  * the position scale (metres per unit of the position group) and the rotation scale (radians per
    unit of an axis-angle group);
  * the action that holds the arm still (`hold`), for replaying past a demo's end.

Group order is always pos | rot | grip. Adding a representation means adding one class here and
registering it in `REPRESENTATIONS`; the spec's `codec.representation` field, the codec, the loss,
open-loop evaluation, rollouts, Gate A and the doctor read it from there.
Only `rotation` is imported, so `spec.py` can validate against the registry without a cycle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from . import rotation as R

GROUPS = ("pos", "rot", "grip")
# robosuite OSC_POSE delta mode, output_max = [0.05]*3 + [0.5]*3: native 1.0 = 5 cm / 0.5 rad.
CONTROLLER_POS_SCALE_M = 0.05
CONTROLLER_ROT_SCALE_RAD = 0.5
# Float round-off in decode (e.g. 1.0000000002) is not "clipping".
CLIP_TOL = 1e-9


def rotation_dim(rotation: str) -> int:
    return 6 if rotation == "rot6d" else 3


@dataclass(frozen=True)
class EnvActions:
    """Env actions from a decoded chunk. `raw` is before clipping to [-1, 1]."""

    clipped: np.ndarray  # (N, 7)
    raw: np.ndarray  # (N, 7)

    @property
    def clip_fraction(self) -> float:
        """Fraction of the 6 arm dims (all steps) that lay outside [-1, 1]."""
        return float(np.mean(np.abs(self.raw[..., :6]) > 1.0 + CLIP_TOL)) if self.raw.size else 0.0

    @property
    def max_excess(self) -> float:
        """How far past [-1, 1] the worst arm dim was (0 when nothing was clipped)."""
        excess = float(np.max(np.abs(self.raw[..., :6])) - 1.0) if self.raw.size else 0.0
        return excess if excess > CLIP_TOL else 0.0

    @property
    def pos_step_m(self) -> np.ndarray:
        """Commanded position step in metres before clipping, (N, 3)."""
        return self.raw[..., :3] * CONTROLLER_POS_SCALE_M


def _env_rows(dpos: np.ndarray, drot: np.ndarray, grip: np.ndarray) -> EnvActions:
    raw = np.concatenate([dpos, drot, grip], axis=1)
    return EnvActions(clipped=np.clip(raw, -1.0, 1.0), raw=raw)


@dataclass(frozen=True)
class Representation:
    """Base: the group layout. Subclasses set the class attributes and the two conversions."""

    rotation: str

    kind: ClassVar[str]
    rotations: ClassVar[tuple[str, ...]]          # the rotation encodings this meaning allows
    absolute_groups: ClassVar[tuple[str, ...]]    # groups that are targets, not steps
    pos_unit_m: ClassVar[float] = 1.0             # metres per unit of the position group
    rot_unit_rad: ClassVar[float] = 1.0           # radians per unit of an axis-angle rotation group
    pos_unit_name: ClassVar[str] = "m (delta)"

    # -- layout
    @property
    def group_dims(self) -> dict[str, int]:
        return {"pos": 3, "rot": rotation_dim(self.rotation), "grip": 1}

    @property
    def dim(self) -> int:
        return sum(self.group_dims.values())

    @property
    def group_index(self) -> dict[str, np.ndarray]:
        out, start = {}, 0
        for g in GROUPS:
            n = self.group_dims[g]
            out[g] = np.arange(start, start + n)
            start += n
        return out

    @property
    def units(self) -> dict[str, str]:
        rot = "6D (absolute target orientation)" if "rot" in self.absolute_groups else \
            {"axis_angle": "rad (axis-angle delta)", "rot6d": "6D (delta rotation)"}[self.rotation]
        return {"pos": self.pos_unit_name, "rot": rot, "grip": "-1 open / +1 close"}

    # -- conversions
    def from_demo(self, actions: np.ndarray, ee_pos: np.ndarray, ee_rot: np.ndarray,
                  next_ee_pos: np.ndarray, next_ee_rot: np.ndarray) -> np.ndarray:
        """Native actions (T,7) + EEF pose before / after each step -> physical vectors (T, dim)."""
        a = np.asarray(actions, dtype=np.float64)
        return np.concatenate([self._pos_label(a, next_ee_pos), self._rot_label(a, next_ee_rot), a[:, 6:7]], axis=1)

    def to_env(self, phys: np.ndarray, ee_pos: np.ndarray, ee_rot: np.ndarray) -> EnvActions:
        """Physical vectors (N, dim) + current EEF pose ((N,3), (N,3,3) or one pose) -> env actions.

        Absolute targets become the controller's delta: (target - current) / 5 cm, and the rotation
        error R_target R_current^T as axis-angle / 0.5 rad; then clipped to [-1, 1]."""
        x = np.atleast_2d(np.asarray(phys, dtype=np.float64))
        n = x.shape[0]
        ee_pos = np.broadcast_to(np.asarray(ee_pos, dtype=np.float64), (n, 3))
        ee_rot = np.broadcast_to(np.asarray(ee_rot, dtype=np.float64), (n, 3, 3))
        idx = self.group_index
        return _env_rows(self._env_pos(x[:, idx["pos"]], ee_pos), self._env_rot(x[:, idx["rot"]], ee_rot),
                         x[:, idx["grip"]])

    def hold(self, last: np.ndarray) -> np.ndarray:
        """A physical action that keeps the arm where `last` (the demo's final action) left it:
        zero steps, absolute targets kept."""
        row = np.array(last, dtype=np.float64)
        for g in ("pos", "rot"):
            if g not in self.absolute_groups:
                row[self.group_index[g]] = 0.0
        return row

    def chunk_poses(self, pos: np.ndarray, rot: np.ndarray, phys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """EEF pose before each chunk step, (n,H,3), (n,H,3,3), as if the arm followed the demo.

        `pos`/`rot` hold the window's start pose at every step; step h>0 of an absolute group takes
        the demo's target of step h-1, the pose reached after it. Steps do not read the pose."""
        pos, rot, gi = pos.copy(), rot.copy(), self.group_index
        if "pos" in self.absolute_groups:
            pos[:, 1:] = phys[:, :-1][..., gi["pos"]]
        if "rot" in self.absolute_groups:
            rot[:, 1:] = R.rot6d_to_matrix(phys[:, :-1][..., gi["rot"]])
        return pos, rot

    def pos_m(self, phys_pos: np.ndarray) -> np.ndarray:
        """The position group in metres (absolute or step, as the representation means it)."""
        return np.asarray(phys_pos, dtype=np.float64) * self.pos_unit_m

    def step_m(self, phys_pos: np.ndarray, ee_pos: np.ndarray) -> np.ndarray:
        """The commanded position step in metres: the group itself, or target - current pose."""
        p = self.pos_m(phys_pos)
        return p - ee_pos if "pos" in self.absolute_groups else p

    def rot_matrices(self, rot: np.ndarray) -> np.ndarray:
        """The rotation group (..., 3 or 6) -> (..., 3, 3)."""
        if self.rotation == "rot6d":
            return R.rot6d_to_matrix(rot)
        return R.axis_angle_to_matrix(np.asarray(rot, dtype=np.float64) * self.rot_unit_rad)

    # -- per-representation pieces
    def _pos_label(self, a: np.ndarray, next_ee_pos: np.ndarray) -> np.ndarray:
        return a[:, :3] * CONTROLLER_POS_SCALE_M / self.pos_unit_m

    def _rot_label(self, a: np.ndarray, next_ee_rot: np.ndarray) -> np.ndarray:
        rad = a[:, 3:6] * CONTROLLER_ROT_SCALE_RAD
        if self.rotation == "rot6d":
            return R.matrix_to_rot6d(R.axis_angle_to_matrix(rad))
        return rad / self.rot_unit_rad

    def _env_pos(self, pos: np.ndarray, ee_pos: np.ndarray) -> np.ndarray:
        return self.step_m(pos, ee_pos) / CONTROLLER_POS_SCALE_M

    def _env_rot(self, rot: np.ndarray, ee_rot: np.ndarray) -> np.ndarray:
        if "rot" in self.absolute_groups:
            err = self.rot_matrices(rot) @ np.swapaxes(ee_rot, -1, -2)
            return R.matrix_to_axis_angle(err) / CONTROLLER_ROT_SCALE_RAD
        if self.rotation == "rot6d":
            return R.matrix_to_axis_angle(self.rot_matrices(rot)) / CONTROLLER_ROT_SCALE_RAD
        return rot * self.rot_unit_rad / CONTROLLER_ROT_SCALE_RAD


@dataclass(frozen=True)
class Native(Representation):
    """LIBERO's own action: controller deltas in [-1, 1] (x 5 cm, x 0.5 rad), gripper -1/+1."""

    kind: ClassVar[str] = "native"
    rotations: ClassVar[tuple[str, ...]] = ("axis_angle",)
    absolute_groups: ClassVar[tuple[str, ...]] = ()
    pos_unit_m: ClassVar[float] = CONTROLLER_POS_SCALE_M
    rot_unit_rad: ClassVar[float] = CONTROLLER_ROT_SCALE_RAD
    pos_unit_name: ClassVar[str] = "native [-1,1] (x0.05 m)"

    @property
    def units(self) -> dict[str, str]:
        return {"pos": self.pos_unit_name, "rot": "native [-1,1] (x0.5 rad)", "grip": "-1 open / +1 close"}

    # The identity both ways, bit for bit (scaling by 0.05 and back would cost an ulp).
    def from_demo(self, actions, ee_pos, ee_rot, next_ee_pos, next_ee_rot) -> np.ndarray:
        return np.array(actions, dtype=np.float64)

    def to_env(self, phys: np.ndarray, ee_pos: np.ndarray, ee_rot: np.ndarray) -> EnvActions:
        raw = np.array(np.atleast_2d(phys), dtype=np.float64)
        return EnvActions(clipped=np.clip(raw, -1.0, 1.0), raw=raw)


@dataclass(frozen=True)
class MetricDelta(Representation):
    """The controller's deltas in SI units: metres, and radians (axis-angle) or a delta 6D."""

    kind: ClassVar[str] = "metric_delta"
    rotations: ClassVar[tuple[str, ...]] = ("axis_angle", "rot6d")
    absolute_groups: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True)
class SeedMix(Representation):
    """The seed's mix: position delta in metres, absolute target orientation as 6D."""

    kind: ClassVar[str] = "seed_mix"
    rotations: ClassVar[tuple[str, ...]] = ("rot6d",)
    absolute_groups: ClassVar[tuple[str, ...]] = ("rot",)

    def _rot_label(self, a: np.ndarray, next_ee_rot: np.ndarray) -> np.ndarray:
        return R.matrix_to_rot6d(next_ee_rot)


@dataclass(frozen=True)
class AbsPose(Representation):
    """RDT's pretraining meaning: absolute target EEF position (m) and orientation (6D)."""

    kind: ClassVar[str] = "abs_pose"
    rotations: ClassVar[tuple[str, ...]] = ("rot6d",)
    absolute_groups: ClassVar[tuple[str, ...]] = ("pos", "rot")
    pos_unit_name: ClassVar[str] = "m (absolute target)"

    def _pos_label(self, a: np.ndarray, next_ee_pos: np.ndarray) -> np.ndarray:
        return np.asarray(next_ee_pos, dtype=np.float64)

    def _rot_label(self, a: np.ndarray, next_ee_rot: np.ndarray) -> np.ndarray:
        return R.matrix_to_rot6d(next_ee_rot)


def commanded_pose(actions: np.ndarray, ee_pos: np.ndarray, ee_rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pose each CLEAN action commands: the current pose plus the step, (T,3) m and (T,3,3).

    LIBERO's OSC_POSE delta controller targets ee_pos + a[:3] * 5 cm and exp(a[3:6] * 0.5 rad) R_current;
    `to_env` of an absolute representation inverts exactly this, so a commanded target decodes back to
    the clean action bit for bit (up to float rounding). The pose reached after the step (next_ee_pos) is
    NOT this: with DART the env executes the action plus noise, so reached poses carry that noise."""
    a = np.asarray(actions, dtype=np.float64)
    pos = np.asarray(ee_pos, dtype=np.float64) + a[:, :3] * CONTROLLER_POS_SCALE_M
    rot = R.axis_angle_to_matrix(a[:, 3:6] * CONTROLLER_ROT_SCALE_RAD) @ np.asarray(ee_rot, dtype=np.float64)
    return pos, rot


@dataclass(frozen=True)
class AbsPoseCommanded(AbsPose):
    """Absolute target EEF pose from the CLEAN commanded step (current pose + clean action), not the
    pose reached after the noisy executed one: the absolute labels carry no DART noise, as delta labels
    do not (issue 24, H3)."""

    kind: ClassVar[str] = "abs_pose_cmd"
    pos_unit_name: ClassVar[str] = "m (absolute commanded target)"

    def from_demo(self, actions, ee_pos, ee_rot, next_ee_pos, next_ee_rot) -> np.ndarray:
        pos, rot = commanded_pose(actions, ee_pos, ee_rot)
        return np.concatenate([pos, R.matrix_to_rot6d(rot), np.asarray(actions, dtype=np.float64)[:, 6:7]], axis=1)


@dataclass(frozen=True)
class SeedMixCommanded(SeedMix):
    """The seed's layout with clean labels: position delta in metres (the clean action, as SeedMix) and
    the absolute target orientation the clean action commands (as AbsPoseCommanded's). Its rotation and
    gripper groups are exactly AbsPoseCommanded's, so the two differ ONLY in what the position slots
    mean: H3's pretraining arms vary that alone."""

    kind: ClassVar[str] = "seed_mix_cmd"

    def from_demo(self, actions, ee_pos, ee_rot, next_ee_pos, next_ee_rot) -> np.ndarray:
        a = np.asarray(actions, dtype=np.float64)
        _pos, rot = commanded_pose(a, ee_pos, ee_rot)
        return np.concatenate([a[:, :3] * CONTROLLER_POS_SCALE_M, R.matrix_to_rot6d(rot), a[:, 6:7]], axis=1)


REPRESENTATIONS: dict[str, type[Representation]] = {
    c.kind: c for c in (Native, MetricDelta, SeedMix, AbsPose, AbsPoseCommanded, SeedMixCommanded)}


def representation(kind: str, rotation: str) -> Representation:
    """The representation `kind` with its rotation encoding; a clear error for either unknown."""
    if kind not in REPRESENTATIONS:
        raise ValueError(f"unknown representation '{kind}'; one of {', '.join(REPRESENTATIONS)}")
    cls = REPRESENTATIONS[kind]
    if rotation not in cls.rotations:
        raise ValueError(f"representation '{kind}' carries rotation as {' or '.join(cls.rotations)}; "
                         f"set codec.rotation: {cls.rotations[0]}")
    return cls(rotation)
