"""Invertible action codecs: representation -> slot layout -> normaliser, and back to env actions.

    native LIBERO action a (7, [-1,1])  +  EEF poses from the demo
          | Representation.from_demo                     ^ Representation.to_env (+ clip report)
          |   (one class per meaning: ablation/representations.py)
          v                                              |
    physical vector x  (pos | rot | grip, SI units) -----+
          | SlotLayout.place                              ^ SlotLayout.take
          v                                              |
    slot vector (128-d RDT unified, or compact) ---------+
          | Affine normaliser  y = (x*u - c)/s            ^ x = (y*s + c)/u
          v                                              |
    model vector y (what the network sees and predicts) -+

Everything is float64 numpy, so decode(encode(x)) == x to ~1e-12. The codec is saved as versioned
JSON inside every checkpoint; loading is strict and never falls back to defaults.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import rotation as R
from .errors import UserError
from .representations import (CLIP_TOL, CONTROLLER_POS_SCALE_M, CONTROLLER_ROT_SCALE_RAD,  # noqa: F401 (re-exported)
                              EnvActions, Representation, representation)
from .spec import GROUPS, CodecSpec, codec_guarantees_unit_range

CODEC_FORMAT_VERSION = 1
# Guards the denominator of constant dimensions (e.g. rotation when the expert never rotates).
CONST_EPS = 1e-6
STATE_DIM = 10  # eef pos (3, m) | eef rot6d (6) | gripper finger width (1, m)
RDT_WIDTH = 128


class CodecError(UserError):
    """A codec file is missing, malformed or does not match the spec."""


# ----------------------------------------------------------------------------- slot layouts

# RDT configs/state_vec.py, right arm: gripper-open slot 10, EEF pos 30-32, 6D rot 33-38,
# EEF linear velocity 39-41, angular velocity 42-44.
_RDT_SLOTS = {
    "rdt_eef": {"pos": [30, 31, 32], "rot6d": list(range(33, 39)), "axis_angle": [33, 34, 35], "grip": [10]},
    "rdt_velocity": {"pos": [39, 40, 41], "axis_angle": [42, 43, 44], "grip": [10]},
}
_RDT_STATE_SLOTS = {"pos": [30, 31, 32], "rot": list(range(33, 39)), "grip": [10]}


@dataclass(frozen=True)
class SlotLayout:
    """Where each physical dim goes in the model vector; unfilled slots hold 0 with mask 0."""

    name: str
    width: int
    slots: np.ndarray  # (dim,) model index of each physical dim, in pos|rot|grip order

    @classmethod
    def for_actions(cls, layout: str, rep: Representation) -> "SlotLayout":
        if layout == "compact":
            return cls(layout, rep.dim, np.arange(rep.dim))
        table = _RDT_SLOTS[layout]
        if rep.rotation not in table:
            raise CodecError(f"layout '{layout}' has no slots for rotation '{rep.rotation}'")
        slots = table["pos"] + table[rep.rotation] + table["grip"]
        return cls(layout, RDT_WIDTH, np.asarray(slots))

    @classmethod
    def for_state(cls, layout: str) -> "SlotLayout":
        if layout == "compact":
            return cls(layout, STATE_DIM, np.arange(STATE_DIM))
        s = _RDT_STATE_SLOTS
        return cls(layout, RDT_WIDTH, np.asarray(s["pos"] + s["rot"] + s["grip"]))

    @property
    def mask(self) -> np.ndarray:
        m = np.zeros(self.width, dtype=np.float64)
        m[self.slots] = 1.0
        return m

    def place(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros(x.shape[:-1] + (self.width,), dtype=np.float64)
        out[..., self.slots] = x
        return out

    def take(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=np.float64)[..., self.slots]


# ----------------------------------------------------------------------------- normaliser

@dataclass(frozen=True)
class Affine:
    """Per physical dim: y = (x * unit - center) / scale. Exactly invertible (scale >= CONST_EPS)."""

    unit: np.ndarray
    center: np.ndarray
    scale: np.ndarray

    def forward(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) * self.unit - self.center) / self.scale

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, dtype=np.float64) * self.scale + self.center) / self.unit

    def to_json(self) -> dict:
        return {"unit": self.unit.tolist(), "center": self.center.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_json(cls, d: dict, dim: int, where: str) -> "Affine":
        arrs = {}
        for k in ("unit", "center", "scale"):
            if k not in d:
                raise CodecError(f"{where}: missing '{k}'")
            a = np.asarray(d[k], dtype=np.float64)
            if a.shape != (dim,) or not np.all(np.isfinite(a)):
                raise CodecError(f"{where}.{k}: expected {dim} finite numbers, got shape {a.shape}")
            arrs[k] = a
        if np.any(arrs["scale"] <= 0) or np.any(arrs["unit"] == 0):
            raise CodecError(f"{where}: scale must be > 0 and unit non-zero")
        return cls(**arrs)


def dim_stats(x: np.ndarray) -> dict[str, list[float]]:
    """Per-dimension statistics of (N, d) data, the input to every normaliser."""
    x = np.asarray(x, dtype=np.float64)
    return {
        "min": x.min(0).tolist(), "max": x.max(0).tolist(),
        "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
        "q01": np.quantile(x, 0.01, axis=0).tolist(), "q99": np.quantile(x, 0.99, axis=0).tolist(),
    }


def fit_affine(kind: str, stats: dict, unit: np.ndarray) -> Affine:
    """Build the normaliser `kind` from physical-unit stats; statistics are taken after `unit`."""
    dim = len(stats["min"])
    s = {k: np.asarray(v, dtype=np.float64) * unit for k, v in stats.items() if k != "std"}
    s["std"] = np.asarray(stats["std"], dtype=np.float64) * np.abs(unit)
    zeros, ones = np.zeros(dim), np.ones(dim)
    if kind == "identity":
        return Affine(ones, zeros, ones)
    if kind == "scale":
        return Affine(unit, zeros, ones)
    if kind == "minmax":
        lo, hi = np.minimum(s["min"], s["max"]), np.maximum(s["min"], s["max"])
        center, half = (hi + lo) / 2, (hi - lo) / 2
    elif kind == "meanstd":
        center, half = s["mean"], s["std"]
    elif kind == "quantile":
        lo, hi = np.minimum(s["q01"], s["q99"]), np.maximum(s["q01"], s["q99"])
        center, half = (hi + lo) / 2, (hi - lo) / 2
    else:
        raise CodecError(f"unknown normalizer '{kind}'")
    return Affine(unit, center, np.maximum(half, CONST_EPS))


# ----------------------------------------------------------------------------- the codec

@dataclass(frozen=True)
class ActionCodec:
    """Representation + slot layout + fitted normaliser, for actions and for the proprio state."""

    spec: CodecSpec
    action_tf: Affine
    state_tf: Affine
    stats: dict = field(default_factory=dict)  # physical-unit stats fitted on the training split

    @property
    def rep(self) -> Representation:
        return representation(self.spec.representation, self.spec.rotation)

    @property
    def layout(self) -> SlotLayout:
        return SlotLayout.for_actions(self.spec.layout, self.rep)

    @property
    def state_layout(self) -> SlotLayout:
        return SlotLayout.for_state(self.spec.layout)

    @property
    def width(self) -> int:
        return self.layout.width

    @property
    def action_mask(self) -> np.ndarray:
        return self.layout.mask

    @property
    def state_mask(self) -> np.ndarray:
        return self.state_layout.mask

    @property
    def group_slots(self) -> dict[str, np.ndarray]:
        """Model-vector indices of each group."""
        slots = self.layout.slots
        return {g: slots[i] for g, i in self.rep.group_index.items()}

    @property
    def bounded(self) -> bool:
        """True when encoded training actions lie in [-1, 1] (what clip_sample assumes)."""
        return codec_guarantees_unit_range(self.spec)

    # -- actions
    def encode(self, phys: np.ndarray) -> np.ndarray:
        """Physical (..., dim) -> model (..., width)."""
        return self.layout.place(self.action_tf.forward(phys))

    def decode(self, model: np.ndarray) -> np.ndarray:
        """Model (..., width) -> physical (..., dim); unfilled slots are ignored."""
        return self.action_tf.inverse(self.layout.take(model))

    def to_env(self, model: np.ndarray, ee_pos: np.ndarray, ee_rot: np.ndarray) -> EnvActions:
        """Model-space chunk (N, width) -> env actions, with the clip report."""
        return self.rep.to_env(self.decode(model), ee_pos, ee_rot)

    # -- proprio state
    def encode_state(self, phys_state: np.ndarray) -> np.ndarray:
        return self.state_layout.place(self.state_tf.forward(phys_state))

    def decode_state(self, model: np.ndarray) -> np.ndarray:
        return self.state_tf.inverse(self.state_layout.take(model))

    # -- fitting and storage
    @classmethod
    def fit(cls, spec: CodecSpec, phys_actions: np.ndarray, phys_states: np.ndarray,
            native_actions: np.ndarray | None = None) -> "ActionCodec":
        """Fit normaliser statistics on training data (physical units)."""
        rep = representation(spec.representation, spec.rotation)
        phys_actions = np.asarray(phys_actions, dtype=np.float64)
        if phys_actions.ndim != 2 or phys_actions.shape[1] != rep.dim or len(phys_actions) == 0:
            raise CodecError(f"fit: expected actions (N>0, {rep.dim}) for {spec.representation}/"
                             f"{spec.rotation}, got {phys_actions.shape}")
        phys_states = np.asarray(phys_states, dtype=np.float64)
        if phys_states.ndim != 2 or phys_states.shape[1] != STATE_DIM:
            raise CodecError(f"fit: expected states (N, {STATE_DIM}), got {phys_states.shape}")
        unit = np.concatenate([np.full(rep.group_dims[g], spec.unit_scales.as_dict()[g]) for g in GROUPS])
        a_stats, s_stats = dim_stats(phys_actions), dim_stats(phys_states)
        stats = {"action": a_stats, "state": s_stats}
        if native_actions is not None:
            step = np.asarray(native_actions, dtype=np.float64)[:, :3] * CONTROLLER_POS_SCALE_M
            stats["pos_step_m"] = {"min": step.min(0).tolist(), "max": step.max(0).tolist(),
                                   "absmax": float(np.abs(step).max())}
        state_unit = np.ones(STATE_DIM)
        return cls(spec, fit_affine(spec.normalizer, a_stats, unit),
                   fit_affine(spec.state_normalizer, s_stats, state_unit), stats)

    def group_variance_model(self) -> dict[str, float]:
        """Mean per-dim variance of each group in model space on the training data (for nMSE)."""
        std = np.asarray(self.stats["action"]["std"]) * np.abs(self.action_tf.unit) / self.action_tf.scale
        return {g: float(np.mean(std[i] ** 2)) for g, i in self.rep.group_index.items()}

    def group_variance_phys(self) -> dict[str, float]:
        std = np.asarray(self.stats["action"]["std"])
        return {g: float(np.mean(std[i] ** 2)) for g, i in self.rep.group_index.items()}

    def to_json(self) -> dict:
        return {
            "format_version": CODEC_FORMAT_VERSION,
            "spec": self.spec.model_dump(mode="json"),
            "action": self.action_tf.to_json(),
            "state": self.state_tf.to_json(),
            "stats": self.stats,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def from_json(cls, d: dict, where: str = "codec") -> "ActionCodec":
        if not isinstance(d, dict):
            raise CodecError(f"{where}: expected a JSON object")
        ver = d.get("format_version")
        if ver != CODEC_FORMAT_VERSION:
            raise CodecError(f"{where}: format_version {ver!r} is not {CODEC_FORMAT_VERSION}; "
                             "re-fit the codec (retrain) with this version of the harness")
        for k in ("spec", "action", "state", "stats"):
            if k not in d:
                raise CodecError(f"{where}: missing '{k}'")
        try:
            spec = CodecSpec.model_validate(d["spec"])
        except Exception as e:  # pydantic error text is already specific
            raise CodecError(f"{where}.spec: {e}") from None
        rep = representation(spec.representation, spec.rotation)
        return cls(spec, Affine.from_json(d["action"], rep.dim, f"{where}.action"),
                   Affine.from_json(d["state"], STATE_DIM, f"{where}.state"), d["stats"])

    @classmethod
    def load(cls, path: str | Path, expected: CodecSpec | None = None) -> "ActionCodec":
        """Strict load. A missing file, or one fitted for another codec spec, is an error."""
        path = Path(path)
        if not path.is_file():
            raise CodecError(f"{path}: codec statistics file is missing; a policy cannot be decoded "
                             "without the codec it was trained with (re-train, or point at the right checkpoint)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CodecError(f"{path}: not valid JSON ({e})") from None
        codec = cls.from_json(d, str(path))
        if expected is not None and codec.spec != expected:
            diff = {k: (v, expected.model_dump(mode="json")[k])
                    for k, v in codec.spec.model_dump(mode="json").items()
                    if v != expected.model_dump(mode="json")[k]}
            raise CodecError(f"{path}: codec was fitted for a different spec: "
                             + ", ".join(f"codec.{k}: file has {a!r}, spec wants {b!r}" for k, (a, b) in diff.items()))
        return codec


def phys_state(ee_pos: np.ndarray, ee_rot: np.ndarray, gripper_qpos: np.ndarray) -> np.ndarray:
    """Proprio state in physical units: (..., 10) = eef pos (m) | rot6d | finger width (m)."""
    gq = np.asarray(gripper_qpos, dtype=np.float64)
    width = (gq[..., 0] - gq[..., 1])[..., None]
    return np.concatenate([np.asarray(ee_pos, dtype=np.float64), R.matrix_to_rot6d(ee_rot), width], axis=-1)
