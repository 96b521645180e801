"""The known pitfalls, planted in a copy of a clean demo file: what the doctor must find, and the finding
it must rank first. Used by tests/test_doctor.py and benchmarks/doctor_corpus.py (precision and recall).

Each planting rewrites the episodes as a converter with that mistake would have written them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..episodes import DemoSet, Episode
from ..libero_file import write_demo_file


def clone(ep: Episode) -> Episode:
    return Episode(actions=ep.actions.copy(), obs={k: v.copy() for k, v in ep.obs.items()}, states=ep.states.copy(),
                   rewards=ep.rewards.copy(), dones=ep.dones.copy(), robot_states=ep.robot_states.copy(),
                   init_state=np.array(ep.init_state, copy=True), model_file=ep.model_file,
                   extras={k: v.copy() for k, v in ep.extras.items()}, name=ep.name)


def map_actions(ep: Episode, f) -> Episode:
    """Apply f to the recorded and the executed actions alike."""
    e = clone(ep)
    e.actions = f(e.actions)
    if "executed_actions" in e.extras:
        e.extras["executed_actions"] = f(e.extras["executed_actions"])
    return e


def flip_gripper(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[:, 6] *= -1
    return a


def zero_one_gripper(a: np.ndarray) -> np.ndarray:
    """LeRobot-style [0, 1] with 1 = open."""
    a = a.copy()
    a[:, 6] = (1 - a[:, 6]) / 2
    return a


def double_delta(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[:, :6] = np.diff(a[:, :6], axis=0, prepend=np.zeros((1, 6)))
    return a


def obs_late(ep: Episode) -> Episode:
    """Obs recorded after each step (LIBERO's original script) in a file that says 'before'."""
    e = clone(ep)
    T = len(e.actions)
    e.actions = e.actions[:T - 1]
    e.extras = {k: v[:T - 1] for k, v in e.extras.items()}
    e.obs = {k: v[1:] for k, v in e.obs.items()}
    e.states, e.robot_states = e.states[1:], e.robot_states[1:]
    e.rewards, e.dones = e.rewards[1:], e.dones[1:]
    return e


def insert_noops(ep: Episode, rng: np.random.Generator, share: float = 0.10) -> Episode:
    """Insert no-op actions (arm still, gripper unchanged) so that `share` of the steps are no-ops;
    the obs at an inserted step repeat the obs the robot stands at."""
    e = clone(ep)
    T = len(ep.actions)
    k = int(round(share * T / (1 - share)))
    pos = np.sort(rng.choice(np.arange(1, T), size=k, replace=False))
    aidx = np.insert(np.arange(T), pos, pos - 1)
    noop = np.zeros(len(aidx), bool)
    noop[pos + np.arange(len(pos))] = True

    def fix(a):
        a = a[aidx].copy()
        a[noop, :6] = 0.0
        return a

    oidx = np.insert(np.arange(T), pos, pos)
    e.actions = fix(ep.actions)
    e.extras = {n: fix(v) for n, v in ep.extras.items()}
    e.obs = {n: v[oidx] for n, v in ep.obs.items()}
    e.states, e.robot_states = ep.states[oidx], ep.robot_states[oidx]
    e.rewards, e.dones = ep.rewards[oidx], ep.dones[oidx]
    return e


def blank_frames(ep: Episode, first: int = 5, last: int = 15) -> Episode:
    e = clone(ep)
    for k in ("agentview_rgb", "eye_in_hand_rgb"):
        if k in e.obs:
            e.obs[k][first:last] = 0
    return e


# planted pitfall -> (the finding id the doctor must rank first, its severity, how to plant it)
PITFALLS: dict[str, tuple[str, str, Callable]] = {
    "flipped_gripper": ("gripper.sign", "serious", lambda e, rng: map_actions(e, flip_gripper)),
    "zero_one_gripper": ("gripper.range", "serious", lambda e, rng: map_actions(e, zero_one_gripper)),
    "double_delta": ("actions.kind", "serious", lambda e, rng: map_actions(e, double_delta)),
    "obs_late": ("alignment.convention", "serious", lambda e, rng: obs_late(e)),
    "noops": ("alignment.noop", "warning", lambda e, rng: insert_noops(e, rng)),
    "blank_frames": ("images.blank", "serious", lambda e, rng: blank_frames(e)),
}


def plant(ds: DemoSet, kind: str, out: str | Path, seed: int = 0) -> Path:
    """Write a copy of `ds` (read with its images for blank_frames) with the pitfall `kind` planted."""
    if kind not in PITFALLS:
        raise ValueError(f"unknown pitfall {kind!r}; known: {', '.join(PITFALLS)}")
    rng = np.random.default_rng(seed)
    f = PITFALLS[kind][2]
    write_demo_file(out, [f(ep, rng) for ep in ds.episodes], ds.meta)
    return Path(out)


__all__ = ["PITFALLS", "plant", "clone", "map_actions", "flip_gripper", "zero_one_gripper", "double_delta",
           "obs_late", "insert_noops", "blank_frames"]
