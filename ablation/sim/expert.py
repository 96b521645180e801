"""Scripted expert with privileged object poses, for every libero_object task (pick X, place in basket).

A phase machine drives a proportional controller (gain ~10) on the end-effector position:

    approach (above the object) -> descend -> grasp (close ~15 steps, motionless) -> lift
    -> transport (over the basket) -> lower -> release (open) -> retreat

The native position action is limited to `max_step * speed` (default 0.8: the OSC controller moves
about a quarter of the commanded 5 cm x a per step, so ~1 cm per step, like LIBERO's human demos) and rate-limited so the motion is smooth. Rotation
actions are 0 (the gripper keeps its top-down orientation) except a yaw turn before grasping an
object too wide across the fingers (cream cheese, butter, chocolate pudding). A failed grasp (object
left behind during the lift or transport) sends the machine back to `approach`, so the expert also
recovers from DART noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXPERT_VERSION = "object-pick-place-v1"
SUPPORTED_SUITES = ("libero_object",)

PHASES = ("approach", "descend", "grasp", "lift", "transport", "lower", "release", "retreat")
# Phases where DART noise is injected ("while moving"); never while closing/opening the gripper.
MOVING_PHASES = ("approach", "lift", "transport", "lower", "retreat")


@dataclass(frozen=True)
class ExpertConfig:
    gain: float = 10.0             # native action per metre of position error
    max_step: float = 0.8          # max |native pos| per dim at speed 1 (OSC moves ~0.25 x 5 cm x a per step)
    max_jerk: float = 0.08         # max change of native pos action per step at speed 1
    hover: float = 0.10            # approach height above the grasp point, m
    grasp_depth: float = 0.0       # grasp point relative to the object's centre, m (negative = lower)
    min_grasp_z: float = 0.012     # grip-site floor; fingertips touch the table (z = 0) near 0.02 m: a stall ends the descent
    close_steps: int = 15
    lift_z: float = 0.30           # absolute eef height while carrying, m
    place_above_basket: float = 0.15   # eef height over the basket origin when releasing, m
    release_steps: int = 12
    tol_xy: float = 0.008
    tol_z: float = 0.01
    lost_dist: float = 0.08        # object further than this from the eef while carrying = grasp lost
    max_grip_width: float = 0.065  # objects wider than this across the fingers need a yaw turn, m
    rot_gain: float = 2.0          # native rotation action per rad of yaw error
    max_rot: float = 0.6
    tol_yaw: float = 0.08          # rad
    open_width: float = 0.08       # opening of the Panda fingers, m
    neighbour_dist: float = 0.13   # objects closer than this (xy) to the target shift the grasp point
    max_offset: float = 0.015


def task_objects(goal_state: list) -> tuple[str, str]:
    """(object, container) from a libero_object goal like ['in', 'ketchup_1', 'basket_1_contain_region']."""
    for pred in goal_state:
        if len(pred) == 3 and str(pred[0]).lower() == "in":
            obj, region = str(pred[1]), str(pred[2])
            container = region.split("_contain_region")[0] if "_contain_region" in region else region
            return obj, container
    raise ValueError(f"the scripted expert only handles 'pick X, place in Y' goals; got {goal_state}")


def task_objects_from_bddl(bddl_file: str) -> tuple[str, str]:
    from libero.libero.envs.bddl_utils import robosuite_parse_problem

    return task_objects(robosuite_parse_problem(bddl_file)["goal_state"])


def object_local_extents(env, name: str) -> np.ndarray:
    """Full extents (3,) of an object's geoms in the object's own frame (privileged sim geometry)."""

    m, d = env.sim.model, env.sim.data
    bid = env.robosuite_env.obj_body_id[name]
    r_obj = np.asarray(d.body_xmat[bid]).reshape(3, 3)
    p_obj = np.asarray(d.body_xpos[bid])
    pts = []
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    for g in range(m.ngeom):
        b = int(m.geom_bodyid[g])
        while b not in (0, bid):
            b = int(m.body_parentid[b])
        if b != bid:
            continue
        aabb = np.asarray(m.geom_aabb[g])
        corners = aabb[:3] + signs * aabb[3:]
        world = np.asarray(d.geom_xpos[g]) + corners @ np.asarray(d.geom_xmat[g]).reshape(3, 3).T
        pts.append((world - p_obj) @ r_obj)
    if not pts:
        return np.zeros(3)
    pts = np.concatenate(pts)
    return pts.max(0) - pts.min(0)


def _wrap_half_pi(a: float) -> float:
    """Angle difference modulo pi (a two-finger grasp is symmetric), in [-pi/2, pi/2)."""
    return float((a + np.pi / 2) % np.pi - np.pi / 2)


class ScriptedExpert:
    """Closed-loop pick-and-place expert. `act(obs)` -> native action (7,), using `<obj>_pos` obs.

    `extents`: the object's full size in its own frame (see `object_local_extents`). When the object
    is wider than the open gripper across the fingers, the expert turns the gripper about the
    vertical (yaw only) to grasp its narrow side; otherwise the rotation action is always 0.
    """

    def __init__(self, obj: str, container: str, speed: float = 1.0, config: ExpertConfig = ExpertConfig(),
                 extents: np.ndarray | None = None):
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.obj, self.container, self.speed, self.cfg = obj, container, float(speed), config
        self.extents = None if extents is None else np.asarray(extents, dtype=np.float64)
        self.reset()

    @classmethod
    def for_env(cls, env, speed: float = 1.0, config: ExpertConfig = ExpertConfig()) -> "ScriptedExpert":
        if env.suite not in SUPPORTED_SUITES:
            raise ValueError(f"the scripted expert supports {', '.join(SUPPORTED_SUITES)}, not {env.suite}")
        obj, container = task_objects(env.goal_state)
        return cls(obj, container, speed, config, extents=object_local_extents(env, obj))

    def yaw_error(self, obs: dict) -> float:
        """Yaw (rad) that would put the fingers across the object's narrow side; 0 when not needed."""
        if self.extents is None or "ee_ori" not in obs or self.obj + "_quat" not in obs:
            return 0.0
        from .. import rotation as R

        ex = self.extents[:2]
        if ex.max() <= self.cfg.max_grip_width or ex.max() < 1.3 * ex.min():
            return 0.0  # fits across the fingers, or round-ish: turning would not help
        r_obj = R.quat_to_matrix(np.asarray(obs[self.obj + "_quat"], dtype=np.float64))
        narrow = r_obj[:2, int(np.argmin(ex))]
        close_axis = R.axis_angle_to_matrix(np.asarray(obs["ee_ori"], dtype=np.float64))[:2, 1]
        if np.linalg.norm(narrow) < 1e-6 or np.linalg.norm(close_axis) < 1e-6:
            return 0.0
        ang = np.arctan2(narrow[1], narrow[0]) - np.arctan2(close_axis[1], close_axis[0])
        return _wrap_half_pi(ang)

    def reset(self) -> None:
        self.phase = "approach"
        self.phase_steps = 0
        self.prev = np.zeros(3)
        self.grasp_xy: np.ndarray | None = None
        self.grasp_z: float | None = None
        self.retries = 0
        self._z_hist = []

    @property
    def moving(self) -> bool:
        return self.phase in MOVING_PHASES

    def _goto(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0
        self._z_hist: list[float] = []

    def grasp_offset(self, obs: dict, obj: np.ndarray) -> np.ndarray:
        """Shift (3,) of the grasp point along the finger axis, away from the nearest neighbour object,
        within the slack the open fingers leave around the object (fat fingers hit close neighbours)."""
        if self.extents is None or "ee_ori" not in obs:
            return np.zeros(3)
        from .. import rotation as R

        c = R.axis_angle_to_matrix(np.asarray(obs["ee_ori"], dtype=np.float64))[:, 1].copy()
        c[2] = 0.0
        if np.linalg.norm(c) < 1e-6:
            return np.zeros(3)
        c /= np.linalg.norm(c)
        ex = self.extents[:2]
        turns = ex.max() > self.cfg.max_grip_width and ex.max() >= 1.3 * ex.min()
        width = float(ex.min()) if turns else float(ex.max())
        slack = max(0.0, (self.cfg.open_width - width) / 2 - 0.004)
        if slack <= 0:
            return np.zeros(3)
        best, push = None, 0.0
        for k, v in obs.items():
            if not k.endswith("_pos") or k in ("ee_pos", self.obj + "_pos", self.container + "_pos"):
                continue
            d = np.asarray(v, dtype=np.float64)[:3] - obj
            dist = float(np.linalg.norm(d[:2]))
            if dist < self.cfg.neighbour_dist and (best is None or dist < best):
                best, push = dist, float(np.dot(d, c))
        if best is None or abs(push) < 1e-6:
            return np.zeros(3)
        return -np.sign(push) * min(slack, self.cfg.max_offset) * c

    def _grasp_z(self, obj_pos: np.ndarray) -> float:
        return float(max(obj_pos[2] + self.cfg.grasp_depth, self.cfg.min_grasp_z))

    def act(self, obs: dict) -> np.ndarray:
        c = self.cfg
        eef = np.asarray(obs["ee_pos"], dtype=np.float64)
        obj = np.asarray(obs[self.obj + "_pos"], dtype=np.float64)
        box = np.asarray(obs[self.container + "_pos"], dtype=np.float64)
        grip = -1.0
        self.phase_steps += 1
        carrying_phases = ("lift", "transport", "lower")
        if self.phase in carrying_phases and np.linalg.norm(obj - eef) > c.lost_dist:
            self.retries += 1
            self._goto("approach")  # grasp lost: go back for it
        ph = self.phase
        yaw = self.yaw_error(obs) if ph in ("approach", "descend") else 0.0
        if ph in ("approach", "descend"):
            obj = obj + self.grasp_offset(obs, obj)
        if ph == "approach":
            target = np.array([obj[0], obj[1], self._grasp_z(obj) + c.hover])
            err = target - eef
            if np.linalg.norm(err[:2]) < c.tol_xy * 1.5 and abs(err[2]) < 0.03 and abs(yaw) < c.tol_yaw:
                self._goto("descend")
        elif ph == "descend":
            target = np.array([obj[0], obj[1], self._grasp_z(obj)])
            err = target - eef
            self._z_hist.append(float(eef[2]))
            stalled = len(self._z_hist) > 6 and abs(self._z_hist[-6] - eef[2]) < 0.001 and err[2] > -0.02
            xy_ok = np.linalg.norm(err[:2]) < c.tol_xy * (2 if stalled else 1)
            if (xy_ok and (abs(err[2]) < 0.5 * c.tol_z or stalled)) or self.phase_steps > 60:
                self.debug_descend_z = float(eef[2])
                self.grasp_xy, self.grasp_z = target[:2].copy(), target[2]
                self._goto("grasp")
        elif ph == "grasp":
            target = np.array([self.grasp_xy[0], self.grasp_xy[1], self.grasp_z])
            grip = 1.0
            if self.phase_steps >= c.close_steps:
                self._goto("lift")
        elif ph == "lift":
            target = np.array([self.grasp_xy[0], self.grasp_xy[1], c.lift_z])
            grip = 1.0
            if eef[2] > c.lift_z - 0.03:
                self._goto("transport")
        elif ph == "transport":
            target = np.array([box[0], box[1], c.lift_z])
            grip = 1.0
            if np.linalg.norm((target - eef)[:2]) < c.tol_xy * 2:
                self._goto("lower")
        elif ph == "lower":
            target = np.array([box[0], box[1], box[2] + c.place_above_basket])
            grip = 1.0
            if abs(target[2] - eef[2]) < c.tol_z or self.phase_steps > 60:
                self._goto("release")
        elif ph == "release":
            target = eef.copy()
            grip = -1.0
            if self.phase_steps >= c.release_steps:
                self._goto("retreat")
        else:  # retreat
            target = np.array([eef[0], eef[1], c.lift_z])
            grip = -1.0
        if ph in ("grasp", "release"):
            target = target if ph == "grasp" else eef
        want = c.gain * (target - eef)
        lim = c.max_step * self.speed
        want = np.clip(want, -lim, lim)
        jerk = c.max_jerk * self.speed
        if ph in ("grasp", "release"):
            want = want * 0.5  # hold still while the fingers move
        pos = self.prev + np.clip(want - self.prev, -jerk, jerk)
        self.prev = pos
        rot = np.zeros(3)
        if yaw != 0.0:
            rot[2] = float(np.clip(c.rot_gain * yaw, -c.max_rot, c.max_rot))
        return np.concatenate([pos, rot, [grip]])


def run_expert_episode(env, init_state: np.ndarray, speed: float = 1.0, wait_steps: int = 10,
                       max_steps: int | None = None, dart_sigma: float = 0.0,
                       rng: np.random.Generator | None = None) -> tuple[bool, int]:
    """One closed-loop expert episode under the standard protocol. Returns (success, policy steps)."""
    from .env import WAIT_ACTION

    obs = env.reset_to(init_state)
    for _ in range(wait_steps):
        obs, _ = env.step(WAIT_ACTION)
    ex = ScriptedExpert.for_env(env, speed)
    rng = rng or np.random.default_rng(0)
    for t in range(max_steps or env.max_steps):
        a = ex.act(obs)
        if dart_sigma > 0 and ex.moving:
            a[:3] += rng.normal(0.0, dart_sigma, 3)
        obs, done = env.step(np.clip(a, -1.0, 1.0))
        if done:
            return True, t + 1
    return False, max_steps or env.max_steps


def main(argv: list[str] | None = None) -> int:
    """Measure the expert: `python -m ablation.sim.expert --tasks 0-9 --n 50 [--dart-sigma 0.3]`."""
    import argparse
    import time

    from .env import make_env

    p = argparse.ArgumentParser(prog="python -m ablation.sim.expert", description=main.__doc__)
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--tasks", default="0-9", help="e.g. 0-9 or 1,3,5")
    p.add_argument("--n", type=int, default=50, help="init states 0..n-1 per task")
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--dart-sigma", type=float, default=0.0)
    a = p.parse_args(argv)
    if "-" in a.tasks:
        lo, hi = a.tasks.split("-")
        tasks = list(range(int(lo), int(hi) + 1))
    else:
        tasks = [int(x) for x in a.tasks.split(",")]
    total = 0
    for tid in tasks:
        t0 = time.time()
        env = make_env(a.suite, tid)
        res = [run_expert_episode(env, env.init_states[i], a.speed, dart_sigma=a.dart_sigma,
                                  rng=np.random.default_rng([i, tid])) for i in range(a.n)]
        env.close()
        ok = sum(r[0] for r in res)
        total += ok
        fails = [i for i, r in enumerate(res) if not r[0]]
        print(f"{a.suite} task {tid} ({env.info.name}): {ok}/{a.n} = {ok / a.n:.0%}, mean steps "
              f"{np.mean([r[1] for r in res if r[0]] or [0]):.0f}, failed init states {fails}, "
              f"{time.time() - t0:.0f} s", flush=True)
    print(f"overall {total}/{a.n * len(tasks)} = {total / (a.n * len(tasks)):.1%} (expert {EXPERT_VERSION}, "
          f"speed {a.speed}, dart sigma {a.dart_sigma})")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
