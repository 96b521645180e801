"""Scripted expert with privileged object poses, driven by the task's BDDL goal.

The goal is read from the task's BDDL file (`bddl_goal.parse_bddl`) and turned into steps
(`bddl_goal.plan_goal`): pick-and-place (On / In, one or several objects in sequence) and
articulated steps (Open / Close / TurnOn / TurnOff). Each pick-and-place step runs a phase machine
with a proportional controller (gain ~10) on the end-effector position:

    approach (above the grasp point) -> descend -> grasp (close ~15 steps, motionless) -> lift
    -> transport (over the target) -> lower -> release (open) -> retreat

Grasps, from the object's geometry (privileged: geom bounding boxes in the simulator):
- `across`: the object fits between the open fingers across its narrow side: grasp at its centre,
  about mid-height. An elongated object (boxes, flat packs, bottles lying down) wider than the
  fingers along its long side is grasped across its short side: the expert turns the gripper about
  the vertical (yaw) first, so these demos carry real rotation.
- `rim`: the object is wider than the open gripper both ways (bowls, mugs, plates): one finger goes
  inside the rim, the other outside, on the side with the most room.
The target height is found by casting a ray down onto the target (plate, basket floor, stove, cabinet
top); the object is released a little above it. A failed grasp (object left behind) sends the
machine back to `approach`; a step whose predicate does not hold at the end is tried again.

The native position action is limited to `max_step * speed` (default 0.8: ~1 cm per step, like
LIBERO's human demos) and rate-limited so the motion is smooth.

`python -m ablation.sim.expert --suite S --tasks 0-9 --n 10` prints the coverage table.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .bddl_goal import Articulate, PickPlace, Unsupported, parse_bddl, plan_goal  # noqa: F401

EXPERT_VERSION = "bddl-goal-v3"
SUPPORTED_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")

PHASES = ("approach", "descend", "grasp", "lift", "transport", "lower", "release", "retreat", "turn", "push",
          "idle")
# Phases where DART noise is injected ("while moving"); never while closing/opening the gripper.
MOVING_PHASES = ("approach", "lift", "transport", "lower", "retreat")   # not while turning or pushing


@dataclass(frozen=True)
class ExpertConfig:
    gain: float = 10.0             # native action per metre of position error
    max_step: float = 0.8          # max |native pos| per dim at speed 1 (OSC moves ~0.25 x 5 cm x a per step)
    max_jerk: float = 0.08         # max change of native pos action per step at speed 1
    hover: float = 0.10            # approach height above the grasp point, m
    grasp_height: float = 0.5      # grasp point at this fraction of the object's height (across grasps) ...
    max_grasp_height: float = 0.05     # ... but at most this far above its bottom, m
    finger_reach: float = 0.04     # tall objects: grip site at most this far below their top (the palm stops there)
    min_grasp_z: float = 0.012     # grip site at least this far above the surface under the object
    rim_depth: float = 0.025       # rim grasps: grip site this far below the rim, m
    rim_inset: float = 0.012       # rim grasps: grip site this far inside the outer edge, m
    close_steps: int = 15
    carry_height: float = 0.28     # transport with the object's bottom at least this far above where it started, m
    carry_margin: float = 0.08     # ... and this far above the target surface, m
    place_clear_on: float = 0.015  # release with the object's bottom this far above the target surface, m
    place_clear_in: float = 0.03
    release_steps: int = 12
    tol_xy: float = 0.008
    tol_z: float = 0.01
    lost_gap: float = 0.03         # grip site this far outside the object's bounding box while carrying = grasp lost
    max_grip_width: float = 0.065  # objects wider than this across the fingers need a yaw turn, m
    fit_width: float = 0.09        # objects narrower than this (short side) are grasped across, else by the rim
    ki: float = 0.5                # integral gain (native action per m per step)
    max_integ: float = 0.3
    rot_gain: float = 2.0          # native rotation action per rad of yaw error
    max_rot: float = 0.6
    tol_yaw: float = 0.08          # rad
    open_width: float = 0.08       # opening of the Panda fingers, m
    neighbour_dist: float = 0.13   # objects closer than this (xy) to the target shift the grasp point
    max_offset: float = 0.015
    max_retries: int = 4
    knob_turn: float = 1.0         # turn a knob to this joint angle (rad; LIBERO's stove is on from 0.5)
    push_standoff: float = 0.04    # start pushing a drawer / door this far before its face, m
    push_step: float = 0.04        # push target ahead of the gripper, m
    # A wrist turn before an "across" grasp that needs none (a round object: any yaw grasps it), deg; 0
    # is the stock expert. Its sign follows the scene (the side of the fingers' closing axis on which the
    # place target lies), so the turn is predictable from the observation. It gives demos that turn on a
    # task where the expert otherwise never does (libero_object: the rotation plan, docs/rotation_setting.md).
    turn_deg: float = 0.0


def task_objects(goal_state: list) -> tuple[str, str]:
    """(object, container) of the first 'In' predicate of a goal like ['in', 'ketchup_1', 'basket_1_contain_region']."""
    for pred in goal_state:
        if len(pred) == 3 and str(pred[0]).lower() == "in":
            obj, region = str(pred[1]), str(pred[2])
            container = region.split("_contain_region")[0] if "_contain_region" in region else region
            return obj, container
    raise ValueError(f"no 'In' predicate in {goal_state}")


@lru_cache(maxsize=256)
def _plan_for_bddl(bddl_file: str) -> tuple:
    return tuple(plan_goal(parse_bddl(bddl_file)))


def task_plan(bddl_file: str) -> list:
    """The expert's steps for a task (PickPlace / Articulate / Unsupported), from its BDDL file."""
    return list(_plan_for_bddl(str(bddl_file)))


def coverage_of(steps: list) -> tuple[bool, str]:
    """(covered, what / why not) for a plan: covered when the expert scripts every step. Scripted:
    pick-and-place, turning a knob (TurnOn / TurnOff), closing a drawer or door by pushing it. Not
    scripted: opening (pulling a handle). An Open the plan only implies (placing into a drawer) is
    fine when the drawer starts open."""
    if not steps:
        return False, "empty goal"
    what, why = [], []
    for s in steps:
        if isinstance(s, PickPlace):
            what.append("pick-place")
        elif isinstance(s, Articulate) and s.action in ARTICULATED_SCRIPTED:
            what.append({"turnon": "turn on", "turnoff": "turn off", "close": "close"}[s.action] + f" {s.owner}")
        elif isinstance(s, Articulate) and s.action == "open" and s.implied:
            what.append(f"({s.target} must start open)")
        elif isinstance(s, Articulate):
            why.append(f"open {s.target} (pulling a handle is not scripted)")
        else:
            why.append(f"{s.predicate}: {s.reason}")
    if why:
        return False, "; ".join(why)
    n = sum(w == "pick-place" for w in what)
    rest = [w for w in what if w != "pick-place"]
    return True, ", ".join(([f"pick-place x{n}" if n > 1 else "pick-place"] if n else []) + rest)


def covered_tasks(suite: str) -> list[int]:
    """The task ids of `suite` whose goal the expert scripts in full (what a plan's `tasks: all`
    means). Reads the BDDL files only; no simulator is started."""
    from .env import task_info
    from .libero_setup import get_suite

    n = get_suite(suite).get_num_tasks()
    return [t for t in range(n) if coverage_of(task_plan(task_info(suite, t).bddl_file))[0]]


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


_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)


class Scene:
    """Privileged queries on the simulator: object bounds, surfaces under a point, site positions,
    and LIBERO's own goal predicates."""

    def __init__(self, env):
        self.env = env
        self._geoms: dict[str, np.ndarray] = {}
        m = env.sim.model._model if hasattr(env.sim.model, "_model") else env.sim.model
        self.m = m
        import mujoco

        self._mj = mujoco
        names = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, b) or "" for b in range(m.nbody)]
        self.robot_body = np.array([n.startswith(("robot0", "gripper0", "mount0")) for n in names])

    @property
    def d(self):
        d = self.env.sim.data
        return d._data if hasattr(d, "_data") else d

    def body_id(self, name: str) -> int:
        return int(self.env.robosuite_env.obj_body_id[name])

    def geoms(self, name: str) -> np.ndarray:
        if name not in self._geoms:
            m, bid = self.m, self.body_id(name)
            ids = []
            for g in range(m.ngeom):
                b = int(m.geom_bodyid[g])
                while b not in (0, bid):
                    b = int(m.body_parentid[b])
                if b == bid:
                    ids.append(g)
            self._geoms[name] = np.asarray(ids, dtype=np.int64)
        return self._geoms[name]

    def bounds(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World axis-aligned box (lo, hi) around an object's geoms."""
        g = self.geoms(name)
        if len(g) == 0:
            p = self.body_pos(name)
            return p.copy(), p.copy()
        m, d = self.m, self.d
        aabb = np.asarray(m.geom_aabb[g])                          # (G, 6): centre, half size
        corners = aabb[:, None, :3] + _SIGNS[None] * aabb[:, None, 3:]     # (G, 8, 3)
        mats = np.asarray(d.geom_xmat[g]).reshape(-1, 3, 3)
        world = np.asarray(d.geom_xpos[g])[:, None, :] + np.einsum("gij,gkj->gki", mats, corners)
        world = world.reshape(-1, 3)
        return world.min(0), world.max(0)

    def body_pos(self, name: str) -> np.ndarray:
        return np.asarray(self.d.xpos[self.body_id(name)], dtype=np.float64).copy()

    def site_pos(self, name: str) -> np.ndarray:
        return np.asarray(self.env.sim.data.get_site_xpos(name), dtype=np.float64).copy()

    def target_pos(self, name: str) -> np.ndarray:
        """An object's body position, or a region site's position."""
        if name in self.env.robosuite_env.obj_body_id:
            return self.body_pos(name)
        return self.site_pos(name)

    def surface_z(self, x: float, y: float, start_z: float, skip: tuple[str, ...] = ()) -> float:
        """Height of the first surface under (x, y) below start_z, ignoring the robot and `skip` objects."""
        mj, m, d = self._mj, self.m, self.d
        skip_bodies = {self.body_id(s) for s in skip}
        z = float(start_z)
        gid = np.zeros(1, np.int32)
        for _ in range(20):
            dist = mj.mj_ray(m, d, np.array([x, y, z]), np.array([0.0, 0.0, -1.0]), None, 1, -1, gid)
            if dist < 0 or gid[0] < 0:
                return z - 2.0
            hit = z - dist
            b = int(m.geom_bodyid[gid[0]])
            root = b
            while root != 0 and root not in skip_bodies:
                root = int(m.body_parentid[root])
            if self.robot_body[b] or root in skip_bodies:
                z = hit - 1e-4
                continue
            return float(hit)
        return z

    def top_z(self, name: str, n: int = 7) -> float:
        """Highest point of an object's actual surface, from a grid of rays cast down over its bounding
        box (mesh bounding boxes can be loose: a mug's box reaches well above its rim)."""
        mj, m, d = self._mj, self.m, self.d
        lo, hi = self.bounds(name)
        bid = self.body_id(name)
        gid = np.zeros(1, np.int32)
        best = None
        for x in np.linspace(lo[0], hi[0], n):
            for y in np.linspace(lo[1], hi[1], n):
                z0 = float(hi[2]) + 0.05
                for _ in range(6):
                    dist = mj.mj_ray(m, d, np.array([x, y, z0]), np.array([0.0, 0.0, -1.0]), None, 1, -1, gid)
                    if dist < 0 or gid[0] < 0 or z0 - dist < lo[2] - 1e-3:
                        break
                    b = int(m.geom_bodyid[gid[0]])
                    root = b
                    while root not in (0, bid):
                        root = int(m.body_parentid[root])
                    if root == bid:
                        z = z0 - dist
                        best = z if best is None else max(best, z)
                        break
                    z0 = z0 - dist - 1e-4
        return float(hi[2]) if best is None else float(best)

    def obstacles(self, exclude: tuple[str, ...] = ()) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(name, lo, hi) of every object and fixture but `exclude` (tables are filtered by height by callers)."""
        out = []
        for name in self.env.robosuite_env.obj_body_id:
            if name in exclude:
                continue
            lo, hi = self.bounds(name)
            out.append((name, lo, hi))
        return out

    def hand_clearance(self, eef: np.ndarray, axis_xy: np.ndarray, exclude: tuple[str, ...], z_lo: float,
                       half_width: float = 0.1) -> float:
        """Smallest xy distance from the gripper (a segment eef +- half_width along the finger axis,
        from z_lo up) to any obstacle box that reaches above z_lo."""
        pts = eef[None, :2] + np.linspace(-half_width, half_width, 9)[:, None] * axis_xy[None, :2]
        best = 1.0
        for _name, lo, hi in self.obstacles(exclude):
            if hi[2] < z_lo + 0.01:
                continue
            dx = np.maximum(0.0, np.maximum(lo[0] - pts[:, 0], pts[:, 0] - hi[0]))
            dy = np.maximum(0.0, np.maximum(lo[1] - pts[:, 1], pts[:, 1] - hi[1]))
            best = min(best, float(np.min(np.hypot(dx, dy))))
        return best

    def holds(self, pred: list) -> bool:
        try:
            return bool(self.env.robosuite_env._eval_predicate([str(p).lower() for p in pred]))
        except Exception:
            return False


class _Step:
    """Runtime state of one pick-and-place step."""

    def __init__(self, spec: PickPlace):
        self.spec = spec
        self.extents: np.ndarray | None = None
        self.mode = "across"
        self.start_bottom: float | None = None
        self.carry_offset: np.ndarray | None = None   # obj body pos - eef while held
        self.hold_below: float = 0.0                  # eef z - object bottom while held
        self.grasp_xy: np.ndarray | None = None
        self.grasp_z: float | None = None
        self.rim_dir: np.ndarray | None = None
        self.place: np.ndarray | None = None          # eef xy z to release at
        self.carry_z: float | None = None
        self.top: float | None = None                 # measured top of the object (approach only)
        self.rim_radius: float = 0.0
        self.banned: list[np.ndarray] = []            # rim directions that failed before

    def clear(self) -> None:
        self.start_bottom = self.carry_offset = self.grasp_xy = self.grasp_z = self.place = None
        self.carry_z = self.rim_dir = self.top = None


ARTICULATED_SCRIPTED = ("turnon", "turnoff", "close")


class _Art:
    """Runtime state of an articulated step: the joint(s) behind the target, and where to act on them."""

    def __init__(self, spec: Articulate, scene: Scene):
        import mujoco

        self.spec, self.scene = spec, scene
        env = scene.env.robosuite_env
        if spec.target in getattr(env, "object_sites_dict", {}) and spec.target != spec.owner:
            names = list(env.object_sites_dict[spec.target].joints)
        else:
            names = list(env.get_object(spec.owner).joints)
        m = scene.m
        self.joints = [int(mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n)) for n in names]
        self.joints = [j for j in self.joints if j >= 0 and int(m.jnt_type[j]) in (2, 3)]  # slide, hinge
        if not self.joints:
            raise ValueError(f"no slide/hinge joint behind {spec.target}")
        self.j = self.joints[0]
        self.body = int(m.jnt_bodyid[self.j])
        self.geoms = np.array([g for g in range(m.ngeom) if self._under(int(m.geom_bodyid[g]))
                               and (int(m.geom_contype[g]) != 0 or int(m.geom_group[g]) == 0)], dtype=np.int64)
        self.sign = 1.0
        self.clear()

    def _under(self, b: int) -> bool:
        m = self.scene.m
        while b not in (0, self.body):
            b = int(m.body_parentid[b])
        return b == self.body

    def clear(self) -> None:
        self.grip = None
        self.grip_axis = None
        self.hold = None

    @property
    def qpos(self) -> float:
        m, d = self.scene.m, self.scene.d
        return float(d.qpos[int(m.jnt_qposadr[self.j])])

    def done(self) -> bool:
        return self.scene.holds([self.spec.action, self.spec.target])

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        m, d = self.scene.m, self.scene.d
        g = self.geoms
        aabb = np.asarray(m.geom_aabb[g])
        corners = aabb[:, None, :3] + _SIGNS[None] * aabb[:, None, 3:]
        mats = np.asarray(d.geom_xmat[g]).reshape(-1, 3, 3)
        world = np.asarray(d.geom_xpos[g])[:, None, :] + np.einsum("gij,gkj->gki", mats, corners)
        world = world.reshape(-1, 3)
        return world.min(0), world.max(0)

    # knob
    def plan_knob(self) -> None:
        """Grasp the knob's highest collision box across its narrow horizontal side."""
        m, d = self.scene.m, self.scene.d
        best, best_top = None, -1e9
        for g in self.geoms:
            if int(m.geom_type[g]) != 6:  # box
                continue
            mat = np.asarray(d.geom_xmat[g]).reshape(3, 3)
            size = np.asarray(m.geom_size[g])
            top = float(d.geom_xpos[g][2] + np.sum(np.abs(mat[2, :]) * size))
            if top > best_top:
                best, best_top = g, top
        if best is None:
            lo, hi = self._bounds()
            self.grip = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, hi[2] - 0.012])
            self.grip_axis = np.array([1.0, 0.0])
            return
        mat = np.asarray(d.geom_xmat[best]).reshape(3, 3)
        size = np.asarray(m.geom_size[best])
        horiz = [(size[i], mat[:2, i]) for i in range(3) if abs(mat[2, i]) < 0.5]
        narrow = min(horiz, key=lambda t: t[0])[1] if horiz else np.array([1.0, 0.0])
        self.grip_axis = narrow / max(np.linalg.norm(narrow), 1e-9)
        p = np.asarray(d.geom_xpos[best], dtype=np.float64)
        self.grip = np.array([p[0], p[1], best_top - 0.012])
        self.sign = 1.0 if float(np.asarray(d.xaxis[self.j])[2]) >= 0 else -1.0

    def turn_goal(self, target: float = 1.0) -> float:
        """Signed world yaw still to turn to bring the knob to `target` rad (turn on) or 0 (turn off)."""
        want = max(0.0, target - self.qpos) if self.spec.action == "turnon" else min(0.0, -self.qpos)
        return self.sign * want

    # push
    def push_point(self) -> tuple[np.ndarray, np.ndarray]:
        """(point on the moving part to push at, unit push direction) for closing (qpos increasing)."""
        m, d = self.scene.m, self.scene.d
        axis = np.asarray(d.xaxis[self.j], dtype=np.float64)
        lo, hi = self._bounds()
        centre = (lo + hi) / 2
        sign = 1.0 if self.spec.action == "close" else -1.0
        if int(m.jnt_type[self.j]) == 2:  # slide
            v = sign * axis
            v[2] = 0.0
            v /= max(np.linalg.norm(v), 1e-9)
            half = 0.5 * float(np.sum(np.abs((hi - lo) * v)))
            return centre - v * half, v
        # hinge: push at the part of the door farthest from the axis, along its motion
        piv = np.asarray(d.xanchor[self.j], dtype=np.float64)
        g = self.geoms
        pts = np.asarray(d.geom_xpos[g], dtype=np.float64)
        r = pts - piv
        r_perp = r - np.outer(r @ axis, axis)
        far = pts[int(np.argmax(np.linalg.norm(r_perp, axis=1)))]
        x = np.array([far[0], far[1], centre[2]])
        v = sign * np.cross(axis, x - piv)
        v[2] = 0.0
        v /= max(np.linalg.norm(v), 1e-9)
        return x, v


class ScriptedExpert:
    """Closed-loop goal-driven expert. `act(obs)` -> native action (7,). Needs the env (privileged
    geometry); build it with `ScriptedExpert.for_env(env)`."""

    def __init__(self, env, steps: list, speed: float = 1.0, config: ExpertConfig = ExpertConfig()):
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.env, self.speed, self.cfg = env, float(speed), config
        self.plan = list(steps)
        self.covered, self.coverage_reason = coverage_of(self.plan)
        self.scene = Scene(env)
        self.steps: list = []
        for spec in self.plan:
            if isinstance(spec, PickPlace):
                st = _Step(spec)
                st.extents = object_local_extents(env, spec.obj)
                self.steps.append(st)
            elif isinstance(spec, Articulate) and spec.action in ARTICULATED_SCRIPTED:
                self.steps.append(_Art(spec, self.scene))
        self.reset()

    @classmethod
    def for_env(cls, env, speed: float = 1.0, config: ExpertConfig = ExpertConfig()) -> "ScriptedExpert":
        if env.suite not in SUPPORTED_SUITES:
            raise ValueError(f"the scripted expert supports {', '.join(SUPPORTED_SUITES)}, not {env.suite}")
        return cls(env, task_plan(env.info.bddl_file), speed, config)

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        self.phase = "approach"
        self.phase_steps = 0
        self.prev = np.zeros(3)
        self.integ = np.zeros(3)
        self.k = 0
        self.retries = 0
        self._z_hist: list[float] = []
        self._started = False
        self._turn_to: float | None = None  # heading (rad) of the fingers' closing axis after cfg.turn_deg
        for st in self.steps:
            st.clear()
            if isinstance(st, _Step):
                st.banned = []
        if not self.steps:
            self.phase = "idle"

    @property
    def moving(self) -> bool:
        return self.phase in MOVING_PHASES

    @property
    def obj(self) -> str | None:
        st = self.steps[self.k] if self.steps and self.k < len(self.steps) else None
        return st.spec.obj if isinstance(st, _Step) else None

    def _goto(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0
        self._z_hist = []
        self.integ = np.zeros(3)

    def _step_done(self, st) -> bool:
        s = st.spec
        if isinstance(st, _Art):
            return st.done()
        return self.scene.holds([s.relation, s.obj, s.target])

    def _next_step(self, count_retry: bool = True) -> None:
        """Go to the first step whose predicate does not hold (retry), or idle."""
        for i, st in enumerate(self.steps):
            if not self._step_done(st):
                if count_retry and i <= self.k:
                    self.retries += 1
                self.k = i
                st.clear()
                self._goto("approach" if self.retries <= self.cfg.max_retries * len(self.steps) else "idle")
                return
        self._goto("idle")

    # ------------------------------------------------------------------ geometry
    def _needs_turn(self, ex: np.ndarray) -> bool:
        return bool(ex.max() > self.cfg.max_grip_width and ex.max() >= 1.3 * ex.min())

    def yaw_error(self, obs: dict, st: _Step) -> float:
        """Yaw (rad) that would put the fingers across the object's narrow side; 0 when not needed."""
        from .. import rotation as R

        if st.mode == "rim" and st.rim_dir is not None and "ee_ori" in obs:
            close_axis = R.axis_angle_to_matrix(np.asarray(obs["ee_ori"], dtype=np.float64))[:2, 1]
            ang = np.arctan2(st.rim_dir[1], st.rim_dir[0]) - np.arctan2(close_axis[1], close_axis[0])
            return _wrap_half_pi(ang)
        if st.mode != "across" or st.extents is None or "ee_ori" not in obs or st.spec.obj + "_quat" not in obs:
            return 0.0

        ex = st.extents[:2]
        if not self._needs_turn(ex):
            return self._chosen_turn_error(obs, st)  # fits across the fingers: 0 unless cfg.turn_deg asks
        r_obj = R.quat_to_matrix(np.asarray(obs[st.spec.obj + "_quat"], dtype=np.float64))
        narrow = r_obj[:2, int(np.argmin(ex))]
        close_axis = R.axis_angle_to_matrix(np.asarray(obs["ee_ori"], dtype=np.float64))[:2, 1]
        if np.linalg.norm(narrow) < 1e-6 or np.linalg.norm(close_axis) < 1e-6:
            return 0.0
        ang = np.arctan2(narrow[1], narrow[0]) - np.arctan2(close_axis[1], close_axis[0])
        return _wrap_half_pi(ang)

    def _chosen_turn_error(self, obs: dict, st: _Step) -> float:
        """Yaw (rad) still to turn for cfg.turn_deg, fixed once per episode from the start heading: toward
        the side of the closing axis on which the place target lies (a turn the observation predicts).
        Kept across a retried grasp, so a lost object does not add a second turn."""
        from .. import rotation as R

        if self.cfg.turn_deg == 0.0:
            return 0.0
        close = R.axis_angle_to_matrix(np.asarray(obs["ee_ori"], dtype=np.float64))[:2, 1]
        heading = float(np.arctan2(close[1], close[0]))
        if self._turn_to is None:
            obj = st.spec.obj
            pos = np.asarray(obs.get(obj + "_pos", self.scene.body_pos(obj)), dtype=np.float64)
            d = self.scene.target_pos(st.spec.target)[:2] - pos[:2]  # toward where the object goes
            side = 1.0 if close[0] * d[1] - close[1] * d[0] >= 0 else -1.0
            self._turn_to = heading + side * np.radians(self.cfg.turn_deg)
        return _wrap_half_pi(self._turn_to - heading)

    def _close_axis(self, obs: dict) -> np.ndarray | None:
        from .. import rotation as R

        if "ee_ori" not in obs:
            return None
        c = R.axis_angle_to_matrix(np.asarray(obs["ee_ori"], dtype=np.float64))[:, 1].copy()
        c[2] = 0.0
        n = np.linalg.norm(c)
        return None if n < 1e-6 else c / n

    def _neighbours(self, obs: dict, st: _Step) -> list[np.ndarray]:
        skip = {st.spec.obj + "_pos", st.spec.target_owner + "_pos", "ee_pos"}
        return [np.asarray(v, dtype=np.float64)[:3] for k, v in obs.items()
                if k.endswith("_pos") and k not in skip and np.asarray(v).shape == (3,)]

    def grasp_offset(self, obs: dict, st: _Step, obj: np.ndarray) -> np.ndarray:
        """Across grasps: shift (3,) along the finger axis away from the nearest neighbour object,
        within the slack the open fingers leave around the object (fat fingers hit close neighbours)."""
        c = self._close_axis(obs)
        if st.extents is None or c is None:
            return np.zeros(3)
        ex = st.extents[:2]
        width = float(ex.min()) if self._needs_turn(ex) else float(ex.max())
        slack = max(0.0, (self.cfg.open_width - width) / 2 - 0.004)
        if slack <= 0:
            return np.zeros(3)
        best, push = None, 0.0
        for p in self._neighbours(obs, st):
            dvec = p - obj
            dist = float(np.linalg.norm(dvec[:2]))
            if dist < self.cfg.neighbour_dist and (best is None or dist < best):
                best, push = dist, float(np.dot(dvec, c))
        if best is None or abs(push) < 1e-6:
            return np.zeros(3)
        return -np.sign(push) * min(slack, self.cfg.max_offset) * c

    def _grasp_point(self, obs: dict, st: _Step) -> np.ndarray:
        c = self.cfg
        obj = st.spec.obj
        lo, hi = self.scene.bounds(obj)
        pos = np.asarray(obs.get(obj + "_pos", self.scene.body_pos(obj)), dtype=np.float64)
        if st.top is None:
            st.top = min(float(hi[2]), self.scene.top_z(obj))
        hi = hi.copy()
        hi[2] = st.top
        h = float(hi[2] - lo[2])
        support = self.scene.surface_z(float(pos[0]), float(pos[1]), float(lo[2]) + 0.005, skip=(obj,))
        floor = max(support, float(lo[2]) - 0.01) + c.min_grasp_z
        if st.mode == "rim":
            centre = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2])
            if st.rim_dir is None:
                ax = self._close_axis(obs)
                ax = np.array([1.0, 0.0]) if ax is None else ax[:2]
                perp = np.array([-ax[1], ax[0]])
                radius = 0.5 * float(min(hi[0] - lo[0], hi[1] - lo[1]))
                z = max(float(hi[2]) - c.rim_depth, floor)
                best, best_score = ax, -1e9
                # The rim point along the finger axis (no turn) or across it (a 90 degree yaw turn),
                # whichever leaves the hand the most room (cabinets, bottles, other bowls).
                for cand, bonus in ((ax, 0.03), (-ax, 0.03), (perp, 0.0), (-perp, 0.0)):
                    if any(float(np.dot(cand, b)) > 0.7 for b in st.banned):
                        continue
                    p = np.array([*(centre + cand * radius), z])
                    score = self.scene.hand_clearance(p, cand, (obj, st.spec.target_owner), z) + bonus
                    if score > best_score + 1e-4:
                        best, best_score = cand, score
                st.rim_dir = best
                st.rim_radius = radius
            xy = centre + st.rim_dir * max(0.0, st.rim_radius - c.rim_inset)
            z = max(float(hi[2]) - c.rim_depth, floor)
            return np.array([xy[0], xy[1], z])
        z = float(lo[2]) + min(c.grasp_height * h, c.max_grasp_height)
        z = max(z, float(hi[2]) - c.finger_reach, floor)
        g = np.array([pos[0], pos[1], z])
        return g + self.grasp_offset(obs, st, g)

    def _free_spot(self, s: PickPlace, centre: np.ndarray) -> np.ndarray:
        """Where in a region target to put the object: its centre, or, when several objects go onto the
        same surface region (two pots on one stove), one spot each spread along the region's longer
        side. An object target: its own position."""
        env = self.env.robosuite_env
        site = getattr(env, "object_sites_dict", {}).get(s.target)
        size = np.asarray(getattr(site, "size", None) if site is not None else [], dtype=np.float64).ravel()
        if s.target in env.obj_body_id or size.size < 2:
            return centre
        mat = np.asarray(self.env.sim.data.get_site_xmat(s.target)).reshape(3, 3)
        same = [st.spec.obj for st in self.steps if isinstance(st, _Step) and st.spec.target == s.target]
        cands = [(0.0, 0.0)]
        if len(same) > 1 and s.relation == "on":
            # Several objects onto one surface region: spread them along its longer side, one spot
            # each (into a container they may pile up: its centre).
            ax = 0 if size[0] >= size[1] else 1
            offs = np.linspace(-0.85, 0.85, len(same))
            i = same.index(s.obj)
            cands = [(offs[i], 0.0) if ax == 0 else (0.0, offs[i])]
        (fx, fy), = cands
        p = centre + mat[:, 0] * fx * size[0] + mat[:, 1] * fy * size[1]
        return np.array([p[0], p[1], centre[2]])

    def _replan_place(self, obs: dict, st: _Step, eef: np.ndarray) -> None:
        """Re-measure how the object hangs in the gripper (it may have slipped) and move the release point."""
        carry_z = st.carry_z
        self._plan_place(obs, st, eef)
        st.carry_z = carry_z

    def _plan_place(self, obs: dict, st: _Step, eef: np.ndarray) -> None:
        """Where to release (eef position) and how high to carry, once the object is held."""
        c, s = self.cfg, st.spec
        lo, hi = self.scene.bounds(s.obj)
        pos = np.asarray(obs[s.obj + "_pos"], dtype=np.float64)
        st.carry_offset = pos - eef
        st.hold_below = float(eef[2] - lo[2])
        tgt = self._free_spot(s, self.scene.target_pos(s.target))
        if s.relation == "in" and s.target_is_region:
            start = tgt[2] + 0.05
        else:
            thi = self.scene.bounds(s.target)[1] if s.target in self.env.robosuite_env.obj_body_id else tgt
            start = max(float(thi[2]), float(tgt[2])) + 0.3
        surf = self.scene.surface_z(float(tgt[0]), float(tgt[1]), start, skip=(s.obj,))
        clear = c.place_clear_in if s.relation == "in" else c.place_clear_on
        xy = tgt[:2] - st.carry_offset[:2]
        st.place = np.array([xy[0], xy[1], surf + st.hold_below + clear])
        start_bottom = st.start_bottom if st.start_bottom is not None else float(lo[2])
        st.carry_z = max(start_bottom + c.carry_height + st.hold_below,
                         surf + c.carry_margin + st.hold_below,
                         float(hi[2]) + c.carry_margin,
                         st.place[2] + 0.05)

    # ------------------------------------------------------------------ control
    def act(self, obs: dict) -> np.ndarray:
        c = self.cfg
        eef = np.asarray(obs["ee_pos"], dtype=np.float64)
        self.phase_steps += 1
        grip = -1.0
        if not self._started and self.steps:
            self._started = True
            self._next_step(count_retry=False)   # skip what already holds (e.g. a drawer already open)
        if self.phase == "idle" or not self.steps:
            self.prev = np.zeros(3)
            return np.concatenate([np.zeros(6), [grip]])
        st = self.steps[self.k]
        if isinstance(st, _Art):
            return self._act_art(obs, st, eef)
        s = st.spec
        if self.phase in ("lift", "transport", "lower") and st.carry_offset is not None:
            lo, hi = self.scene.bounds(s.obj)
            gap = float(np.linalg.norm(np.maximum(0.0, np.maximum(lo - eef, eef - hi))))
            if gap > c.lost_gap:
                self.retries += 1
                if st.rim_dir is not None:
                    st.banned = (st.banned + [st.rim_dir])[-3:]
                st.grasp_xy = st.place = st.carry_z = st.rim_dir = st.top = None
                self._goto("approach")  # grasp lost: go back for it
        ph = self.phase
        target, yaw, grip = self._pick_place_target(obs, st, eef, ph)
        return self._motion(target, eef, ph, yaw, grip)

    def _pick_place_target(self, obs: dict, st: _Step, eef: np.ndarray, ph: str) -> tuple[np.ndarray, float, float]:
        """(target position, yaw error, gripper command) of pick-and-place step `st` in phase `ph`, moving
        to the next phase (or step) when this one is done."""
        c = self.cfg
        grip = -1.0
        yaw = 0.0
        s = st.spec
        if ph in ("approach", "descend"):
            if st.start_bottom is None:
                st.start_bottom = float(self.scene.bounds(s.obj)[0][2])
            if st.extents is not None:
                ex = st.extents[:2]
                st.mode = "across" if float(ex.min()) <= c.fit_width else "rim"
            g = self._grasp_point(obs, st)
            yaw = self.yaw_error(obs, st)
        if ph == "approach":
            target = g + np.array([0.0, 0.0, c.hover])
            err = target - eef
            if np.linalg.norm(err[:2]) < c.tol_xy * 1.5 and abs(err[2]) < 0.03 and abs(yaw) < c.tol_yaw:
                self._goto("descend")
        elif ph == "descend":
            target = g
            err = target - eef
            self._z_hist.append(float(eef[2]))
            stalled = len(self._z_hist) > 6 and abs(self._z_hist[-6] - eef[2]) < 0.001 and err[2] > -0.02
            xy_ok = np.linalg.norm(err[:2]) < c.tol_xy * (2 if stalled else 1)
            if (xy_ok and (abs(err[2]) < 0.5 * c.tol_z or stalled)) or self.phase_steps > 60:
                st.grasp_xy, st.grasp_z = target[:2].copy(), float(target[2])
                self._goto("grasp")
        elif ph == "grasp":
            target = np.array([st.grasp_xy[0], st.grasp_xy[1], st.grasp_z])
            grip = 1.0
            if self.phase_steps >= c.close_steps:
                self._plan_place(obs, st, eef)
                self._goto("lift")
        elif ph == "lift":
            target = np.array([st.grasp_xy[0], st.grasp_xy[1], st.carry_z])
            grip = 1.0
            if eef[2] > st.carry_z - 0.03:
                self._replan_place(obs, st, eef)
                self._goto("transport")
        elif ph == "transport":
            target = np.array([st.place[0], st.place[1], st.carry_z])
            grip = 1.0
            if np.linalg.norm((target - eef)[:2]) < c.tol_xy * 2:
                self._replan_place(obs, st, eef)
                self._goto("lower")
        elif ph == "lower":
            target = st.place.copy()
            grip = 1.0
            self._z_hist.append(float(eef[2]))
            stalled = len(self._z_hist) > 8 and abs(self._z_hist[-8] - eef[2]) < 0.002
            if abs(target[2] - eef[2]) < c.tol_z or stalled or self.phase_steps > 80:
                self._goto("release")
        elif ph == "release":
            target = eef.copy()
            grip = -1.0
            if self.phase_steps >= c.release_steps:
                self._goto("retreat")
        else:  # retreat
            up = (st.carry_z if st.carry_z is not None else eef[2] + 0.1)
            target = np.array([eef[0], eef[1], up])
            grip = -1.0
            if eef[2] > up - 0.05 or self.phase_steps > 40:
                self._next_step()
        return target, yaw, grip

    def _motion(self, target: np.ndarray, eef: np.ndarray, ph: str, yaw: float, grip: float,
                yaw_rate: float | None = None) -> np.ndarray:
        c = self.cfg
        err = target - eef
        # Integral term near the target: the OSC controller leaves a steady offset of ~1-2 cm in some
        # arm poses (small commands barely move it); anti-windup: only within 3 cm, clipped.
        near = np.abs(err) < 0.03
        self.integ = np.where(near, np.clip(self.integ + c.ki * err, -c.max_integ, c.max_integ), 0.0)
        want = c.gain * err + self.integ
        lim = c.max_step * self.speed
        want = np.clip(want, -lim, lim)
        jerk = c.max_jerk * self.speed
        if ph in ("grasp", "release"):
            want = want * 0.5  # hold still while the fingers move
        pos = self.prev + np.clip(want - self.prev, -jerk, jerk)
        self.prev = pos
        rot = np.zeros(3)
        if yaw_rate is not None:
            rot[2] = float(yaw_rate)
        elif yaw != 0.0:
            rot[2] = float(np.clip(c.rot_gain * yaw, -c.max_rot, c.max_rot))
        return np.concatenate([pos, rot, [grip]])

    # ------------------------------------------------------------------ articulated steps
    def _act_art(self, obs: dict, st: "_Art", eef: np.ndarray) -> np.ndarray:
        c = self.cfg
        ph = self.phase
        grip = 1.0
        yaw = 0.0
        rate = None
        if st.spec.action == "turnon" or st.spec.action == "turnoff":
            if st.grip is None:
                st.plan_knob()
            g, axis = st.grip, st.grip_axis
            close_axis = self._close_axis(obs)
            if close_axis is not None and ph in ("approach", "descend"):
                ang = np.arctan2(axis[1], axis[0]) - np.arctan2(close_axis[1], close_axis[0])
                yaw = _wrap_half_pi(ang)
            if ph == "approach":
                grip = -1.0
                target = g + np.array([0.0, 0.0, c.hover])
                if np.linalg.norm((target - eef)[:2]) < c.tol_xy * 1.5 and abs(target[2] - eef[2]) < 0.03 \
                        and abs(yaw) < c.tol_yaw:
                    self._goto("descend")
            elif ph == "descend":
                grip = -1.0
                target = g
                if (np.linalg.norm((target - eef)[:2]) < c.tol_xy and abs(target[2] - eef[2]) < c.tol_z) \
                        or self.phase_steps > 60:
                    st.hold = eef.copy()
                    self._goto("grasp")
            elif ph == "grasp":
                target = st.hold
                if self.phase_steps >= c.close_steps:
                    self._goto("turn")
            elif ph == "turn":
                target = st.hold
                want = st.turn_goal(c.knob_turn)
                rate = float(np.clip(2.0 * want, -c.max_rot, c.max_rot)) if abs(want) > 0.02 else 0.0
                if st.done() and abs(want) < 0.15 or self.phase_steps > 80:
                    self._goto("release")
            elif ph == "release":
                grip = -1.0
                target = eef.copy()
                if self.phase_steps >= c.release_steps:
                    self._goto("retreat")
            else:
                grip = -1.0
                target = np.array([eef[0], eef[1], st.grip[2] + c.hover + 0.05])
                if eef[2] > target[2] - 0.03 or self.phase_steps > 40:
                    self._next_step()
            return self._motion(target, eef, ph, yaw, grip, rate)
        # close / open by pushing along the joint's motion (slide: its axis; hinge: the door's tangent)
        x, v = st.push_point()
        start = x - v * c.push_standoff
        if ph == "approach":
            target = np.array([start[0], start[1], start[2] + c.hover])
            if np.linalg.norm((target - eef)[:2]) < c.tol_xy * 2 and abs(target[2] - eef[2]) < 0.03:
                self._goto("descend")
        elif ph == "descend":
            target = start
            if np.linalg.norm(target - eef) < 0.015 or self.phase_steps > 60:
                self._goto("push")
        elif ph == "push":
            target = eef + v * c.push_step
            target[2] = start[2]
            if st.done() or self.phase_steps > 120:
                self._goto("retreat")
        else:
            target = eef - v * 0.05
            target[2] = start[2] + c.hover
            if eef[2] > target[2] - 0.03 or self.phase_steps > 40:
                self._next_step()
        return self._motion(target, eef, ph, 0.0, grip)


def eef_yaw(ee_ori: np.ndarray) -> float:
    """Yaw (rad) of the gripper's finger axis about the vertical, from LIBERO's ee_ori (axis-angle)."""
    from .. import rotation as R

    c = R.axis_angle_to_matrix(np.asarray(ee_ori, dtype=np.float64))[:, 1]
    return float(np.arctan2(c[1], c[0]))


def yaw_spread_deg(yaws: np.ndarray) -> float:
    """Range (5th to 95th percentile, degrees) of yaw angles, measured relative to their circular mean."""
    y = np.asarray(yaws, dtype=np.float64)
    if y.size == 0:
        return 0.0
    mean = np.arctan2(np.sin(y).mean(), np.cos(y).mean())
    rel = np.degrees((y - mean + np.pi) % (2 * np.pi) - np.pi)
    return float(np.percentile(rel, 95) - np.percentile(rel, 5))


def run_expert_episode(env, init_state: np.ndarray, speed: float = 1.0, wait_steps: int = 10,
                       max_steps: int | None = None, dart_sigma: float = 0.0,
                       rng: np.random.Generator | None = None, expert: ScriptedExpert | None = None,
                       yaws: list | None = None) -> tuple[bool, int]:
    """One closed-loop expert episode under the standard protocol. Returns (success, policy steps).
    `yaws`, when given, collects the gripper yaw (rad) at every policy step."""
    from .env import WAIT_ACTION

    obs = env.reset_to(init_state)
    for _ in range(wait_steps):
        obs, _ = env.step(WAIT_ACTION)
    ex = expert or ScriptedExpert.for_env(env, speed)
    ex.reset()
    rng = rng or np.random.default_rng(0)
    for t in range(max_steps or env.max_steps):
        if yaws is not None:
            yaws.append(eef_yaw(obs["ee_ori"]))
        a = ex.act(obs)
        if dart_sigma > 0 and ex.moving:
            a[:3] += rng.normal(0.0, dart_sigma, 3)
        obs, done = env.step(np.clip(a, -1.0, 1.0))
        if done:
            return True, t + 1
    return False, max_steps or env.max_steps


def _task_list(spec: str, n_tasks: int = 10) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-")
            out += list(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


def main(argv: list[str] | None = None) -> int:
    """Coverage table of the scripted expert: `python -m ablation.sim.expert --suite S --tasks 0-9 --n 10`.

    Per task: whether its goal is covered (and why not), success from the benchmark's init states
    0..n-1 (standard protocol: 10 wait steps, the suite's step budget), mean length of the successful
    episodes, and the spread of the gripper's yaw over those episodes (rotation in the demos)."""
    import argparse
    import time

    from .env import make_env, task_info

    p = argparse.ArgumentParser(prog="python -m ablation.sim.expert", description=main.__doc__)
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--tasks", default="0-9", help="e.g. 0-9 or 1,3,5")
    p.add_argument("--n", type=int, default=10, help="init states 0..n-1 per task")
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--dart-sigma", type=float, default=0.0)
    p.add_argument("--all", action="store_true", help="also run tasks whose goal is not covered")
    a = p.parse_args(argv)
    rows = []
    total_ok = total_n = 0
    print(f"expert {EXPERT_VERSION}, {a.suite}, init states 0..{a.n - 1}, speed {a.speed}, dart sigma {a.dart_sigma}",
          flush=True)
    for tid in _task_list(a.tasks):
        t0 = time.time()
        info = task_info(a.suite, tid)
        covered, why = coverage_of(task_plan(info.bddl_file))
        if not covered and not a.all:
            rows.append((tid, info.name, "no", why, "-", "-", "-"))
            print(f"task {tid} {info.name}: not covered ({why})", flush=True)
            continue
        env = make_env(a.suite, tid)
        try:
            ex = ScriptedExpert.for_env(env, a.speed)
            res, yaws = [], []
            for i in range(a.n):
                y: list[float] = []
                r = run_expert_episode(env, env.init_states[i], a.speed, dart_sigma=a.dart_sigma,
                                       rng=np.random.default_rng([i, tid]), expert=ex, yaws=y)
                res.append(r)
                if r[0]:
                    yaws += y
        finally:
            env.close()
        ok = sum(r[0] for r in res)
        total_ok += ok
        total_n += a.n
        lens = [r[1] for r in res if r[0]]
        fails = [i for i, r in enumerate(res) if not r[0]]
        rows.append((tid, info.name, "yes" if covered else "no", why if covered else why,
                     f"{ok}/{a.n}", f"{np.mean(lens):.0f}" if lens else "-",
                     f"{yaw_spread_deg(np.asarray(yaws)):.0f}" if yaws else "-"))
        print(f"task {tid} {info.name}: {ok}/{a.n}, mean steps {np.mean(lens) if lens else 0:.0f}, "
              f"failed init states {fails}, {time.time() - t0:.0f} s", flush=True)
    print()
    print(f"| {a.suite} task | name | covered | goal / why not | success (init 0-{a.n - 1}) | mean length | yaw spread (deg) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    if total_n:
        print(f"\noverall on covered tasks: {total_ok}/{total_n} = {total_ok / total_n:.1%}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
