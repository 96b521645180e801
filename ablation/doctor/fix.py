"""`run_ablation.py doctor --fix OUT`: a corrected copy of a demo file, for what is mechanically fixable.

    gripper.sign (D102)          negate the gripper command
    gripper.range (D101)         map a [0, 1] command to LIBERO's -1 open / +1 close (its own sign kept)
    alignment.convention (D201)  relabel the file with the obs timing its data show (lossless: the
                                 reader pairs obs and actions by that label)
    alignment.noop (D202)        drop the no-op steps after which nothing moved (arm and fingers still);
                                 a no-op while the fingers still close is kept (it is part of a grasp)

The input is only read; the copy is written to a temporary name and renamed. Everything else (a double
delta transform, blank frames, a wrong task) needs the converter or the simulator, not a rewrite.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import demo_evidence as L
from ..demo_io import read_demo_file
from ..episodes import DemoSet, Episode
from ..libero_file import write_demo_file
from ..errors import UserError
from ..provenance import file_sha256

FIXABLE = ("gripper.sign", "gripper.range", "alignment.convention", "alignment.noop")
STILL_POS_M = 1e-4      # EEF moved less than 0.1 mm over a no-op step: nothing happened
STILL_GRIP_M = 1e-4     # finger joints moved less than 0.1 mm: the gripper was not closing or opening


@dataclass
class FixResult:
    source: str
    out: str
    applied: list[str] = field(default_factory=list)   # one line per fix: code, id, what, how many
    not_fixable: list[str] = field(default_factory=list)  # serious/warning findings left for the converter

    def text(self) -> str:
        lines = [f"fix: {self.source} -> {self.out} (the input is unchanged)"]
        lines += [f"  fixed: {a}" for a in self.applied] or ["  nothing mechanically fixable was found"]
        lines += [f"  not fixed (needs the converter or new data): {n}" for n in self.not_fixable]
        return "\n".join(lines)


def _read(src: Path) -> DemoSet:
    try:
        return read_demo_file(src, load_images=True)
    except UserError as e:
        if "obs_convention" not in str(e):
            raise
        return read_demo_file(src, obs_convention="after", load_images=True)


def _map_gripper(ep: Episode, f) -> Episode:
    def g(a):
        a = np.array(a, dtype=np.float64, copy=True)
        a[:, 6] = f(a[:, 6])
        return a

    extras = dict(ep.extras)
    if "executed_actions" in extras:
        extras["executed_actions"] = g(extras["executed_actions"])
    return replace(ep, actions=g(ep.actions), extras=extras)


def _still_noops(ep: Episode, convention: str) -> np.ndarray:
    """No-op steps (OpenVLA's test) after which the EEF and the fingers stayed where they were."""
    noop = L.noop_mask(ep.actions)
    T = len(ep.actions)
    pos = ep.obs.get("ee_pos")
    grip = ep.obs.get("gripper_states")
    if pos is None or T < 2:
        return np.zeros(T, bool)
    moved = np.ones(T, bool)
    # obs before each step: step t's effect is obs[t+1] - obs[t]; after each step: obs[t] - obs[t-1]
    dp = np.abs(np.diff(pos, axis=0)).max(1)
    dg = np.abs(np.diff(grip, axis=0)).max(1) if grip is not None else np.zeros(T - 1)
    still = (dp < STILL_POS_M) & (dg < STILL_GRIP_M)
    if convention == "before":
        moved[:-1] = ~still
    else:
        moved[1:] = ~still
    drop = noop & ~moved
    drop[-1] = False  # the last step carries done = 1
    return drop


def _drop_steps(ep: Episode, drop: np.ndarray) -> Episode:
    keep = ~drop
    T = len(ep.actions)
    per_step = lambda v: v[keep] if len(v) == T else v  # noqa: E731
    return replace(ep, actions=ep.actions[keep], obs={k: per_step(v) for k, v in ep.obs.items()},
                   states=per_step(ep.states), rewards=per_step(ep.rewards), dones=per_step(ep.dones),
                   robot_states=per_step(ep.robot_states), extras={k: per_step(v) for k, v in ep.extras.items()})


def fix_file(src: str | Path, out: str | Path, findings) -> FixResult:
    """Write a corrected copy of `src` to `out` for the fixable findings among `findings` (a doctor
    report's). Refuses to write over the input."""
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise UserError(f"--fix {out}: that is the input file; the doctor never changes its input, give another path")
    if out.is_dir():
        raise UserError(f"--fix {out}: is a folder; give a file path such as {out / (src.stem + '_fixed.hdf5')}")
    sha_before = file_sha256(src)
    ds = _read(src)
    res = FixResult(str(src), str(out))
    by_id = {}
    for f in findings:
        if f.severity in ("serious", "warning"):
            by_id.setdefault(f.id, f)
    eps, meta = list(ds.episodes), ds.meta
    ev = L.gripper_evidence(ds.episodes)
    if "gripper.range" in by_id and ev.range == "[0, 1]":
        if ev.sign is None:
            res.not_fixable.append("D101 gripper.range: [0, 1] command, but which end closes cannot be told")
        else:
            closes_high = ev.sign == "ok"
            f = (lambda g: 2 * g - 1) if closes_high else (lambda g: 1 - 2 * g)
            eps = [_map_gripper(e, f) for e in eps]
            res.applied.append(f"D101 gripper.range: [0, 1] -> [-1, 1] as {'2a - 1' if closes_high else '1 - 2a'} "
                               f"in {len(eps)} demos")
    elif "gripper.sign" in by_id and ev.sign == "flipped":
        eps = [_map_gripper(e, np.negative) for e in eps]
        res.applied.append(f"D102 gripper.sign: gripper command negated in {len(eps)} demos")
    conv = by_id.get("alignment.convention")
    if conv is not None and conv.numbers.get("convention") in ("before", "after"):
        new = conv.numbers["convention"]
        if new != meta.obs_convention:
            res.applied.append(f"D201 alignment.convention: obs_convention {meta.obs_convention} -> {new} (the "
                               "timing the data show; obs and actions are paired by it when read)")
            meta = replace(meta, obs_convention=new)
    if "alignment.noop" in by_id:
        masks = [_still_noops(e, meta.obs_convention) for e in eps]
        n = int(sum(m.sum() for m in masks))
        if n:
            eps = [_drop_steps(e, m) for e, m in zip(eps, masks)]
            res.applied.append(f"D202 alignment.noop: dropped {n} no-op steps after which nothing moved, in "
                               f"{sum(bool(m.any()) for m in masks)} demos")
    for fid, f in by_id.items():
        if fid not in FIXABLE and f.severity == "serious":
            res.not_fixable.append(f"{f.code} {fid}: {f.title}")
    attrs = {k: v for k, v in meta.attrs.items() if k != "cache_key"}  # not the generator's file any more
    attrs["doctor_fix"] = {"source": str(src), "source_sha256": sha_before, "applied": res.applied}
    meta = replace(meta, attrs=attrs)
    write_demo_file(out, eps, meta)  # temp name + rename
    if file_sha256(src) != sha_before:  # pragma: no cover - would be a bug in the reader
        raise RuntimeError(f"{src} changed while a fixed copy was written")
    return res


__all__ = ["fix_file", "FixResult", "FIXABLE"]
