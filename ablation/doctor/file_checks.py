"""Checks that need only the demo file: gripper convention, obs/action alignment, no-ops, the kind of
the actions (delta / double delta / absolute), images (blank frames), versions."""
from __future__ import annotations

import numpy as np

from .. import demo_evidence as L
from ..demo_io import image_frames
from ..episodes import Episode
from .findings import Finding, where_demos, where_steps

BLANK_STD = 1.0  # uint8 grey levels: a frame whose std is under this is blank (headless rendering failed)


def _doctor_cmd(data: str) -> str:
    return f"run_ablation.py doctor --data {data}"


def check_gripper(eps: list[Episode], data: str) -> list[Finding]:
    ev = L.gripper_evidence(eps)
    nums = ev.to_dict()
    names = [ep.name for ep in eps]
    out = []

    def flips(agreeing: bool) -> list[Episode]:
        masks = []
        for ep in eps:
            m = np.zeros(len(ep), bool)
            m[[k for d, k, ok in ev.events if d == ep.name and ok == agreeing]] = True
            masks.append(m)
        return where_steps(names, masks)

    # [0, 1] files: the steps commanding 0, which robosuite reads as 'hold'
    zero_steps = where_steps(names, [np.abs(ep.actions[:, 6]) < 1e-6 for ep in eps])
    evid = (f"gripper command values {ev.values} (min {ev.min:g}, max {ev.max:g}); over {ev.n_events} command "
            f"flip(s) followed by a finger-width change > 1 mm, "
            + (f"{ev.agree:.0%} moved the fingers the LIBERO way (+ closes, - opens)" if ev.agree is not None
               else "none to judge by")
            + f"; the plain per-step correlation of the command with the width change over the next 5 steps is "
              f"{ev.corr:+.2f} (weak by nature: the fingers move only in the few steps after a flip)")
    if ev.range == "[0, 1]":
        closes_high = ev.sign == "ok"
        mapping = "a -> 2a - 1 (here 1 = close)" if closes_high else "a -> 1 - 2a (here 1 = open)"
        out.append(Finding(
            "gripper.range", "serious", "gripper command is in [0, 1], LIBERO wants -1 open / +1 close",
            evid + "; robosuite reads only the sign, so 0 means 'hold' and the gripper never opens (or closes)",
            fix=f"map the gripper dimension {mapping} when converting the file; LIBERO wants -1 open, +1 close",
            next=f"run_ablation.py doctor --data {data} --fix FIXED.hdf5 (or fix the converter)", numbers=nums,
            where=zero_steps))
    elif ev.range == "other":
        out_of = where_steps(names, [(ep.actions[:, 6] < -1 - 1e-6) | (ep.actions[:, 6] > 1 + 1e-6) for ep in eps])
        out.append(Finding("gripper.range", "warning", f"gripper command range [{ev.min:g}, {ev.max:g}] is unusual",
                           evid, fix="LIBERO gripper commands are -1 (open) and +1 (close)",
                           next=_doctor_cmd(data), numbers=nums, where=out_of))
    if ev.sign == "flipped" and ev.range != "[0, 1]":
        out.append(Finding(
            "gripper.sign", "serious", "gripper command is sign-flipped (+ opens, - closes)", evid,
            fix="negate the gripper dimension (a[:, 6] *= -1) when converting the file; LIBERO: -1 open, +1 close",
            next=f"run_ablation.py doctor --data {data} --fix FIXED.hdf5 (or fix the converter)", numbers=nums,
            where=flips(False)))
    elif ev.sign is None and ev.n_events:
        out.append(Finding("gripper.sign", "warning", "gripper sign unclear", evid,
                           fix="check the gripper convention of the converter (LIBERO: -1 open, +1 close)",
                           next=_doctor_cmd(data), numbers=nums, where=flips(False)))
    elif ev.sign == "ok" and ev.range == "[-1, 1]":
        out.append(Finding("gripper.sign", "info", "gripper convention is LIBERO's (-1 open, +1 close)", evid, numbers=nums))
    elif not ev.n_events:
        out.append(Finding("gripper.sign", "info", "gripper convention cannot be told (no flip moved the fingers)",
                           evid, numbers=nums))
    return out


def check_alignment(eps: list[Episode], data: str, declared: str | None, spec_says: str | None) -> list[Finding]:
    """declared: the file's obs_convention attribute; spec_says: the spec's data.obs_convention."""
    ev = L.alignment_evidence(eps)
    nums = ev.to_dict()
    names = [ep.name for ep in eps]
    said = spec_says if spec_says in ("before", "after") else declared
    who = ("the spec (data.obs_convention)" if spec_says in ("before", "after")
           else "the file (attribute data.obs_convention)")
    out = []
    if ev.convention is not None and said is not None and ev.convention != said:
        out.append(Finding(
            "alignment.convention", "serious",
            f"obs are recorded {ev.convention} each step, but {who} says {said}",
            f"{ev.reason}; training on it pairs each action with the obs one step off",
            fix=(f"set data.obs_convention: {ev.convention} in the spec" if spec_says in ("before", "after") else
                 f"fix the file's attribute data.obs_convention to '{ev.convention}' (or re-export it), or set "
                 f"data.obs_convention: {ev.convention} in the spec"),
            next=f"run_ablation.py doctor --data {data} --fix FIXED.hdf5 (relabels the file), or set it in the spec",
            numbers=nums, where=where_demos(_demos_read_as(eps, ev.convention))))
    elif ev.convention is not None:
        sev, what = "info", f"obs are recorded {ev.convention} each step"
        how = (f"; matches what {who} says" if said else
               "; the file does not say so (no data.obs_convention attribute): it is read that way (auto)")
        out.append(Finding("alignment.convention", sev, what, ev.reason + how, numbers=nums))
    else:
        sev = "info" if said else "warning"
        out.append(Finding("alignment.convention", sev, "obs/action timing cannot be told from the data",
                           ev.reason + (f"; {who} says {said}" if said else "; the file does not say either"),
                           fix="" if said else "set data.obs_convention: before or after in the spec",
                           next=_doctor_cmd(data), numbers=nums, where=where_demos(names)))
    share, k, n = L.noop_share(eps)
    noops = where_steps(names, [L.noop_mask(ep.actions) for ep in eps])
    nums = {"share": share, "noops": k, "steps": n, "threshold": L.NOOP_WARN_SHARE}
    evid = (f"{k} of {n} actions ({share:.1%}) are no-ops (||a[:6]|| < 1e-4 and the gripper command unchanged; "
            f"warn above {L.NOOP_WARN_SHARE:.0%})")
    if share > L.NOOP_WARN_SHARE:
        out.append(Finding("alignment.noop", "warning", f"{share:.0%} of the actions are no-ops", evid
                           + "; a policy learns to stand still from them",
                           fix="drop no-op steps when converting (as OpenVLA's no_noops data does)",
                           next=f"run_ablation.py doctor --data {data} --fix FIXED.hdf5 (drops the steps where "
                                "nothing moves)", numbers=nums, where=noops))
    else:
        out.append(Finding("alignment.noop", "info", f"no-op share {share:.1%}", evid, numbers=nums, where=noops))
    return out


def _demos_read_as(eps: list[Episode], convention: str) -> list[str]:
    """The demos whose own data shows `convention` (each judged alone; all of them when none can be)."""
    own = [ep.name for ep in eps if L.alignment_evidence([ep]).convention == convention]
    return own or [ep.name for ep in eps]


def _demos_of_kind(eps: list[Episode], kind: str) -> list[str]:
    own = [ep.name for ep in eps if L.delta_kind_evidence([ep]).kind == kind]
    return own or [ep.name for ep in eps]


def check_action_kind(eps: list[Episode], data: str) -> list[Finding]:
    ev = L.delta_kind_evidence(eps)
    nums = ev.to_dict()
    names = [ep.name for ep in eps]
    corr = ", ".join(f"{k} {v:.2f}" for k, v in ev.corr.items())
    if ev.kind == "double_delta":
        return [Finding("actions.kind", "serious", "actions look delta-transformed twice (deltas of deltas)",
                        f"{ev.reason} (correlation with the EEF position change when read as: {corr})",
                        fix="LIBERO actions are already deltas: remove the extra delta transform from the converter "
                            "(openpi #804, RDT #102)",
                        next=f"fix the file, then {_doctor_cmd(data)}", numbers=nums,
                        where=where_demos(_demos_of_kind(eps, "double_delta")))]
    if ev.kind == "absolute":
        return [Finding("actions.kind", "serious", "actions look like absolute positions, not LIBERO deltas",
                        f"{ev.reason} (correlation when read as: {corr})",
                        fix="convert absolute targets to OSC deltas ((target - current) / 0.05 m) before training",
                        next=f"fix the file, then {_doctor_cmd(data)}", numbers=nums,
                        where=where_demos(_demos_of_kind(eps, "absolute")))]
    if ev.kind == "delta":
        return [Finding("actions.kind", "info", "actions are deltas (LIBERO's)", f"{ev.reason} ({corr})", numbers=nums)]
    return [Finding("actions.kind", "warning", "the kind of the actions cannot be told", f"{ev.reason} ({corr})",
                    fix="check the converter: LIBERO actions are OSC deltas in [-1, 1]", next=_doctor_cmd(data),
                    numbers=nums, where=where_demos(names))]


def check_images(frames: dict[str, list[np.ndarray]], data: str, spec_uses_images: bool | None,
                 names: list[str] | None = None) -> list[Finding]:
    if not frames:
        return []
    out = []
    for cam, eps in frames.items():
        per_demo = [e.reshape(len(e), -1).astype(np.float32).std(1) for e in eps]
        stds = np.concatenate(per_demo)
        blank = stds < BLANK_STD
        cam_names = names if names is not None and len(names) == len(eps) else [f"demo_{i}" for i in range(len(eps))]
        nums = {"camera": cam, "frames": int(stds.size), "blank": int(blank.sum()), "min_std": float(stds.min()),
                "median_std": float(np.median(stds)), "threshold": BLANK_STD}
        evid = (f"{cam}: {int(blank.sum())} of {stds.size} frames have pixel std < {BLANK_STD:g} "
                f"(min {stds.min():.2f}, median {np.median(stds):.1f})")
        if blank.any():
            first = [(i, int(np.argmax(s < BLANK_STD))) for i, s in enumerate(per_demo) if (s < BLANK_STD).any()][:3]
            evid += "; first blank frames at " + ", ".join(f"{cam_names[i]} step {k}" for i, k in first)
            out.append(Finding("images.blank", "serious" if spec_uses_images is not False else "warning",
                               f"blank frames in {cam}", evid,
                               fix="re-render with a working headless backend (MUJOCO_GL=egl, or osmesa with "
                                   "PYOPENGL_PLATFORM=osmesa; `python -m ablation.sim.libero_setup` checks it), "
                                   "or drop the blank frames' demos",
                               next=f"run_ablation.py demos --images ... then {_doctor_cmd(data)}", numbers=nums,
                               where=where_steps(cam_names, [s < BLANK_STD for s in per_demo])))
        else:
            out.append(Finding("images.blank", "info", f"{cam}: no blank frames", evid, numbers=nums))
    return out


# MuJoCo >= 3.3.3 renders floors darker; >= 3.4 changes the libero_spatial task-5 start scene (LIBERO #88,
# lerobot #4390).
def _ver(s: str) -> tuple:
    out = []
    for p in str(s).split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def check_versions(file_versions: dict, suite: str | None, task: int | None, has_images: bool) -> list[Finding]:
    from ..provenance import versions

    now = versions()
    out = []
    keys = ("mujoco", "robosuite", "hf-libero")
    diff = {k: (file_versions.get(k), now.get(k)) for k in keys if file_versions.get(k) and file_versions.get(k) != now.get(k)}
    nums = {"now": {k: now.get(k) for k in keys}, "file": {k: file_versions.get(k) for k in keys}}
    mj = _ver(now.get("mujoco", "0"))
    notes = []
    if mj >= (3, 4, 0) and suite == "libero_spatial" and task == 5:
        notes.append("MuJoCo >= 3.4 changes the libero_spatial task-5 start scene (LIBERO #88)")
    if mj >= (3, 3, 3) and has_images:
        notes.append("MuJoCo >= 3.3.3 renders floors darker than the original LIBERO data (lerobot #4390)")
    evid = ("now " + ", ".join(f"{k} {now.get(k)}" for k in keys)
            + ("; file recorded with " + ", ".join(f"{k} {a}" for k, (a, _b) in diff.items()) if diff else
               ("; the file records the same versions" if file_versions else "; the file records no versions")))
    if notes:
        evid += "; " + "; ".join(notes)
    drift = bool(diff) or (mj >= (3, 4, 0) and suite == "libero_spatial" and task == 5)
    if drift:
        out.append(Finding("versions", "warning", "simulator versions differ from the file's, or hit a known drift",
                           evid, fix="record and compare versions with every run; evaluate old data with the "
                           "versions it was recorded with, or re-generate it",
                           next="run_ablation.py replay FILE (Gate A) under the current versions", numbers=nums))
    else:
        out.append(Finding("versions", "info", "simulator versions", evid, numbers=nums))
    return out
