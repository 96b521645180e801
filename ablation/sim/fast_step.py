"""A faster `env.step` for LIBERO's robosuite env with cameras off: the same physics, bit for bit.

robosuite 1.4's `MujocoEnv.step` runs, per 2 ms physics substep (25 per 20 Hz control step):
`mj_forward` (the step's), `mj_forward` again (the OSC controller's `update`), then `mj_step`, which
computes the same forward pass a third time before integrating; then all ~40 observables tick.
Profiled on libero_object 0 (cProfile, 100 steps, 4.0 s): mj_forward 5,000 calls 0.90 s beside
mj_step's 0.55 s; the controller's update/run_controller 1.7 s (name lookups, fresh arrays, properties
such as action_limits and torque_limits recomputed per substep); 92,500 Observable.update calls.
benchmarks/env_step.py prints what is left (the stock step costs ~8x raw physics, this one <3x).

`FastStepper.step` does per substep what that loop does, in the same floating-point operations:
- `mj_step1` (position and velocity stages: what the controller reads), the controller, then
  `mj_step2` (actuation, acceleration, constraints, integration). MuJoCo's split step computes
  exactly what `mj_step` does; the two forwards before it only recompute the same quantities (the
  warm start the solver reads is written by the integrator alone), so nothing downstream changes.
- The OSC torque: robosuite's own `set_goal` once per control step, and per substep the operations
  of `OperationalSpaceController.update`/`run_controller` in the same order on arrays of the same
  layout, calling robosuite's own (numba) `opspace_matrices`, `nullspace_torques` and
  `orientation_error`, so BLAS and numba see what they see in the stock path.
- Observables: their shared sampling clock is advanced per substep with the same float operations,
  and the sensors run (all of them, in order, on the same cache) only at the substep where robosuite
  samples them. With delay-free 20 Hz observables that is once per control step.
- Constants (indices, torque limits, gripper control range) are looked up once per sim.

What it leaves out changes no physics: the robot's `recent_*` history buffers (read by nothing in
LIBERO or this project) are not pushed. Anything it cannot vouch for (another controller, gripper,
integrator, an overridden step, delayed observables) is refused when it binds, with the fix.
The parity test (tests/test_fast_env.py) checks states, observations and outcomes bit for bit.
"""
from __future__ import annotations

import functools
import importlib.metadata
import re

import numpy as np

from ..errors import UserError

__all__ = ["FastPathError", "FastStepper", "VALIDATED_VERSIONS", "check_versions"]

# The versions the parity test passed on. Another robosuite could change the step loop, another
# LIBERO the env's step, another MuJoCo the split-step equivalence: each is refused until re-checked.
VALIDATED_VERSIONS = {"robosuite": ("1.4.0",), "libero": ("hf-libero 0.1.4",), "mujoco": ("3.8.1",)}
FIX = "use the stock env step with --set sim.fast=false (same results, slower)"


class FastPathError(UserError):
    """The fast env step cannot vouch for this install or env; the message names why and the fix."""


@functools.lru_cache(maxsize=1)
def installed_versions() -> dict[str, str]:
    """{'robosuite': '1.4.0', 'libero': 'hf-libero 0.1.4', 'mujoco': '3.8.1'} as installed ('missing'
    when absent). LIBERO is named by the distribution that provides the `libero` package."""
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "missing"

    libero = " ".join(f"{d} {version(d)}" for d in sorted(_libero_distributions())) or "missing"
    return {"robosuite": version("robosuite"), "libero": libero, "mujoco": version("mujoco")}


def _libero_distributions() -> set[str]:
    """PEP 503 names of the installed distributions that provide the `libero` package. Those with
    "libero" in their name are asked first (~0.1 s); `packages_distributions`, which reads every
    distribution's file list (~0.5 s in each new process), only when none of them does."""
    def norm(name: str) -> str:  # names are spelled as installed (hf_libero)
        return re.sub(r"[-_.]+", "-", name).lower()

    found = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        if "libero" in name.lower() and "libero" in (dist.read_text("top_level.txt") or "").split():
            found.add(norm(name))
    return found or {norm(d) for d in importlib.metadata.packages_distributions().get("libero", [])}


def check_versions() -> None:
    """Raise FastPathError unless robosuite, LIBERO and MuJoCo are the versions the fast step was
    validated on (VALIDATED_VERSIONS)."""
    have = installed_versions()
    bad = [f"{k} {have[k]} (validated: {', '.join(VALIDATED_VERSIONS[k])})"
           for k in VALIDATED_VERSIONS if have[k] not in VALIDATED_VERSIONS[k]]
    if bad:
        raise FastPathError(f"the fast env step (sim.fast) was not validated on {'; '.join(bad)}: {FIX}, "
                            "or re-run tests/test_fast_env.py on this install and add the versions to "
                            "ablation/sim/fast_step.py VALIDATED_VERSIONS")


def _as_range(indexes) -> slice | None:
    """A slice for consecutive indexes (the same elements as fancy indexing), else None."""
    ix = [int(i) for i in indexes]
    if not ix or ix != list(range(ix[0], ix[0] + len(ix))):
        return None
    return slice(ix[0], ix[0] + len(ix))


def _refuse(what: str) -> FastPathError:
    return FastPathError(f"the fast env step supports LIBERO's standard Panda + OSC_POSE env only ({what}): {FIX}")


class FastStepper:
    """`step(action)` with `env.step`'s results on one robosuite env, rebinding after each hard reset
    (LIBERO's reset builds a new sim, robot controller and observables)."""

    def __init__(self, env):
        import mujoco
        import numba
        from libero.libero.envs.bddl_base_domain import BDDLBaseDomain
        from robosuite.environments.base import MujocoEnv
        from robosuite.environments.robot_env import RobotEnv
        from robosuite.utils import control_utils

        cls = type(env)
        # The loop below replicates these methods; an env class that overrides them is not ours.
        for name, owner in (("step", BDDLBaseDomain), ("_pre_action", BDDLBaseDomain),
                            ("_update_observables", MujocoEnv), ("_get_observations", MujocoEnv)):
            if getattr(cls, name) is not getattr(owner, name):
                raise _refuse(f"{cls.__name__}.{name} is overridden")
        mro = cls.__mro__
        between = mro[mro.index(BDDLBaseDomain) + 1:mro.index(RobotEnv)] if RobotEnv in mro else None
        if between is None or any("_pre_action" in vars(k) for k in between):
            raise _refuse(f"{cls.__name__} does not reach RobotEnv._pre_action")
        self._mj, self._env, self._sim = mujoco, env, None
        self._opspace_matrices = control_utils.opspace_matrices
        self._nullspace_torques = control_utils.nullspace_torques
        self._orientation_error = control_utils.orientation_error
        self._numba_typeof = numba.typeof
        self._opspace_key, self._opspace_fn = None, None

    # ------------------------------------------------------------------ binding (once per sim)
    def _bind(self) -> None:
        from robosuite.controllers.osc import OperationalSpaceController
        from robosuite.models.grippers.panda_gripper import PandaGripper
        from robosuite.robots.single_arm import SingleArm
        from robosuite.utils.observables import NO_CORRUPTION, NO_DELAY, NO_FILTER

        mj, env = self._mj, self._env
        sim = env.sim
        if len(env.robots) != 1 or type(env.robots[0]) is not SingleArm:
            raise _refuse(f"robots {[type(r).__name__ for r in env.robots]}")
        robot = env.robots[0]
        c = robot.controller
        if type(c) is not OperationalSpaceController:
            raise _refuse(f"controller {type(c).__name__}")
        if not (c.impedance_mode == "fixed" and c.use_delta and c.use_ori and c.uncoupling
                and c.interpolator_pos is None and c.interpolator_ori is None
                and c.position_limits is None and c.orientation_limits is None):
            raise _refuse("OSC with variable impedance, absolute goals, interpolation or limits")
        if type(robot.gripper) is not PandaGripper:
            raise _refuse(f"gripper {type(robot.gripper).__name__}")
        m, d = sim.model._model, sim.data._data
        if m.opt.integrator == mj.mjtIntegrator.mjINT_RK4:
            raise _refuse("RK4 integrator: mj_step1/mj_step2 do not split it")
        if mj.get_mjcb_control() is not None:
            raise _refuse("a MuJoCo control callback is installed")
        if env.viewer is not None:
            raise _refuse("an on-screen viewer is attached")
        obs = [o for o in env._observables.values() if o._enabled]
        clocks = {(o._sampling_timestep, o._time_since_last_sample, o._sampled, o._current_delay) for o in obs}
        if any(o._delayer is not NO_DELAY for o in obs) or len(clocks) != 1:
            raise _refuse("observables with delays or separate sampling clocks")
        (self._obs_period_s, _, _, self._obs_delay_s), = clocks

        joints = _as_range(c.qvel_index)
        if joints is None or _as_range(c.qpos_index) != joints or _as_range(robot._ref_joint_actuator_indexes) is None:
            raise _refuse("arm joints or actuators that are not one block")
        grip = _as_range([sim.model.actuator_name2id(a) for a in robot.gripper.actuators])
        if grip is None:
            raise _refuse("gripper actuators that are not one block")

        self._sim, self._controller, self._robot, self._gripper = sim, c, robot, robot.gripper
        self._m, self._d, self._observables = m, d, obs
        self._identity = (NO_CORRUPTION, NO_FILTER)
        self._n_substeps = int(env.control_timestep / env.model_timestep)  # as MujocoEnv.step counts
        self._dt_s = env.model_timestep
        self._site = sim.model.site_name2id(c.eef_name)
        self._joints = joints
        self._qvel_index = np.asarray(c.qvel_index, dtype=np.intp)
        # Views into MjData's buffers, which stay put for the life of the MjData.
        self._site_xpos, self._site_xmat = d.site_xpos[self._site], d.site_xmat[self._site].reshape([3, 3])
        self._qpos, self._qvel, self._qM, self._qfrc_bias, self._ctrl = d.qpos, d.qvel, d.qM, d.qfrc_bias, d.ctrl
        self._joint_ctrl = _as_range(robot._ref_joint_actuator_indexes)
        self._torque_low, self._torque_high = robot.torque_limits
        ctrl_range = sim.model.actuator_ctrlrange[grip]
        self._grip_ctrl = grip
        self._grip_bias = 0.5 * (ctrl_range[:, 1] + ctrl_range[:, 0])   # as Manipulator.grip_action
        self._grip_weight = 0.5 * (ctrl_range[:, 1] - ctrl_range[:, 0])
        self._grip_rate = np.array([-1.0, 1.0]) * robot.gripper.speed  # as PandaGripper.format_action
        self._kp_pos, self._kp_ori = np.array(c.kp[0:3]), np.array(c.kp[3:6])  # fixed impedance: constant
        self._kd_pos, self._kd_ori = c.kd[0:3], c.kd[3:6]
        self._jacp = np.zeros((3, m.nv))
        self._jacr = np.zeros((3, m.nv))
        self._mass_full = np.ndarray(shape=(m.nv, m.nv), dtype=np.float64, order="C")

    # ------------------------------------------------------------------ one control step
    def step(self, action: np.ndarray):
        """MujocoEnv.step + BDDLBaseDomain.step: (obs, reward, done, info), done = the task's success.

        Per substep, the operations of robosuite's loop in its order and on arrays of its layouts
        (OperationalSpaceController.update/run_controller, SingleArm.control, grip_action); the
        controller's state is written back to it as update() would."""
        env = self._env
        self._check_step(action)
        mj, m, d, c, robot = self._mj, self._m, self._d, self._controller, self._robot
        step1, step2 = mj.mj_step1, mj.mj_step2
        nullspace, ori_err_of, read_state = self._nullspace_torques, self._orientation_error, self._read_state
        j, qfrc_bias = self._joints, self._qfrc_bias
        ctrl, joint_ctrl, grip_slice = self._ctrl, self._joint_ctrl, self._grip_ctrl
        kp_pos, kp_ori, kd_pos, kd_ori = self._kp_pos, self._kp_ori, self._kd_pos, self._kd_ori
        low, high, initial_joint = self._torque_low, self._torque_high, c.initial_joint
        n = self._n_substeps
        grip_ctrl = self._gripper_controls(np.sign(action[c.control_dim:]), n)
        obs, period, delay, dt = self._observables, self._obs_period_s, self._obs_delay_s, self._dt_s
        clock, sampled = obs[0]._time_since_last_sample, obs[0]._sampled
        env.timestep += 1
        fresh = c.new_update
        for i in range(n):
            step1(m, d)  # what MujocoEnv.step's sim.forward() and update()'s compute, and mj_step again
            # update(). new_update is False only on the first substep after a reset: the controller
            # read the sim when it was made (before LIBERO's set_init_state) and robosuite runs on that.
            if fresh:
                (ee_pos, ee_ori_mat, ee_pos_vel, ee_ori_vel, joint_pos, joint_vel, J_pos, J_ori, J_full,
                 mass_matrix) = read_state()
            else:
                ee_pos, ee_ori_mat, ee_pos_vel, ee_ori_vel = c.ee_pos, c.ee_ori_mat, c.ee_pos_vel, c.ee_ori_vel
                joint_pos, joint_vel, J_pos, J_ori = c.joint_pos, c.joint_vel, c.J_pos, c.J_ori
                J_full, mass_matrix = c.J_full, c.mass_matrix
                fresh = True
            if i == 0:
                c.ee_pos, c.ee_ori_mat, c.new_update = ee_pos, ee_ori_mat, False
                c.set_goal(action[:c.control_dim])  # reads only these two; its update() is a no-op now
                goal_pos, goal_ori = c.goal_pos, c.goal_ori
                opspace = self._opspace_entry(mass_matrix, J_full, J_pos, J_ori)
            # run_controller (fixed impedance, uncoupled, no interpolators). a + (-b) * k is computed
            # as a - b * k: IEEE negation is exact, so the two are the same number.
            desired_force = (goal_pos - ee_pos) * kp_pos - ee_pos_vel * kd_pos
            desired_torque = ori_err_of(goal_ori, ee_ori_mat) * kp_ori - ee_ori_vel * kd_ori
            _lambda_full, lambda_pos, lambda_ori, nullspace_matrix = opspace(mass_matrix, J_full, J_pos, J_ori)
            wrench = np.concatenate((lambda_pos.dot(desired_force), lambda_ori.dot(desired_torque)))
            torques = J_full.T.dot(wrench) + qfrc_bias[j]
            torques += nullspace(mass_matrix, nullspace_matrix, initial_joint, joint_pos, joint_vel)
            # SingleArm.control: the torque clip (np.clip's arithmetic), the gripper, the actuators
            ctrl[joint_ctrl] = np.minimum(np.maximum(torques, low), high)
            ctrl[grip_slice] = grip_ctrl[i]
            step2(m, d)
            # Observable.update's clock, one for all of them (checked at bind)
            clock += dt
            if not sampled and period - delay >= clock:
                self._sample(obs)
                sampled = True
            if clock >= period:
                if not sampled:
                    self._sample(obs)
                clock %= period
                sampled = False
        # The state robosuite's controller, robot and observables are left in after its own step.
        c.ee_pos, c.ee_ori_mat, c.ee_pos_vel, c.ee_ori_vel = ee_pos, ee_ori_mat, ee_pos_vel, ee_ori_vel
        c.joint_pos, c.joint_vel, c.J_pos, c.J_ori, c.J_full = joint_pos, joint_vel, J_pos, J_ori, J_full
        c.mass_matrix, c.torques, c.new_update = mass_matrix, torques, True
        robot.torques = ctrl[joint_ctrl].copy()
        for o in obs:
            o._time_since_last_sample, o._sampled = clock, sampled
        env.cur_time += env.control_timestep
        reward, _done, info = env._post_action(action)
        return env._get_observations(), reward, env._check_success(), info

    def _check_step(self, action: np.ndarray) -> None:
        """Rebind after a hard reset (a new sim or controller); robosuite's own errors for a finished
        episode or an action of the wrong size."""
        env = self._env
        if env.sim is not self._sim or env.robots[0].controller is not self._controller:
            self._bind()
        if env.done:
            raise ValueError("executing action in terminated episode")
        if len(action) != env.action_dim:
            raise ValueError(f"environment got invalid action dimension -- expected {env.action_dim}, got {len(action)}")

    def _read_state(self) -> tuple:
        """What OperationalSpaceController.update() reads from the sim, with its operations and layouts:
        (ee_pos, ee_ori_mat, ee_pos_vel, ee_ori_vel, joint_pos, joint_vel, J_pos, J_ori, J_full, mass_matrix)."""
        mj, m, d = self._mj, self._m, self._d
        jacp, jacr, mass_full, j, qv = self._jacp, self._jacr, self._mass_full, self._joints, self._qvel_index
        qpos, qvel = self._qpos, self._qvel
        ee_pos = np.array(self._site_xpos)
        ee_ori_mat = np.array(self._site_xmat)
        mj.mj_jacSite(m, d, jacp, jacr, self._site)  # fills both in full: the same numbers as two calls
        ee_pos_vel = jacp.dot(qvel)  # ndarray.dot: np.dot's own code, without its dispatch
        ee_ori_vel = jacr.dot(qvel)
        joint_pos = np.array(qpos[j])
        joint_vel = np.array(qvel[j])
        # Fancy indexing, as update() does, makes these Fortran-ordered; the layout decides
        # which BLAS call np.dot(J_full.T, .) makes and which numba specialisation runs, so
        # the last bits of the torque depend on it.
        J_pos = jacp[:, qv]
        J_ori = jacr[:, qv]
        J_full = np.concatenate((J_pos, J_ori))  # np.vstack's own call
        mj.mj_fullM(m, mass_full, self._qM)
        mass_matrix = mass_full[qv, :][:, qv]
        return ee_pos, ee_ori_mat, ee_pos_vel, ee_ori_vel, joint_pos, joint_vel, J_pos, J_ori, J_full, mass_matrix

    def _gripper_controls(self, sign: np.ndarray, n: int) -> np.ndarray:
        """(n, 2) gripper actuator controls for the n substeps, and the gripper's state after them:
        PandaGripper.format_action (current += [-1, 1] * speed * sign, clipped to [-1, 1]) then
        Manipulator.grip_action's bias + weight * current, per substep, element by element in
        doubles (the same IEEE operations numpy does on the arrays)."""
        gripper = self._gripper
        rate_arr = self._grip_rate * sign
        rate, bias, weight = rate_arr.tolist(), self._grip_bias.tolist(), self._grip_weight.tolist()
        # The gripper starts a reset with a (1,) state that the first `current + rate` broadcasts to (2,).
        current = np.asarray(gripper.current_action)
        cur = np.broadcast_to(current, np.broadcast_shapes(current.shape, rate_arr.shape)).tolist()
        out = np.empty((n, len(cur)))
        for i in range(n):
            before = list(cur)
            for k in range(len(cur)):
                cur[k] = min(max(cur[k] + rate[k], -1.0), 1.0)
                out[i, k] = bias[k] + weight[k] * cur[k]
            if cur == before:  # saturated at the clip: every later substep repeats this one
                out[i + 1:] = out[i]
                break
        gripper.current_action = np.array(cur)
        return out

    def _opspace_entry(self, *args):
        """robosuite's jitted opspace_matrices, called past numba's dispatcher (its type checks cost
        ~7 us a call): the compiled specialisation the dispatcher picks for these argument types."""
        key = tuple(self._numba_typeof(a) for a in args)
        if key != self._opspace_key:
            self._opspace_matrices(*args)  # compiles, or loads from numba's cache, what stock calls
            found = self._opspace_matrices.overloads.get(key)
            self._opspace_key, self._opspace_fn = key, (found.entry_point if found is not None
                                                         else self._opspace_matrices)
        return self._opspace_fn

    def _sample(self, obs: list) -> None:
        """Every enabled observable's sample, in order, on the env's cache (Observable.update's body)."""
        cache, (no_corruption, no_filter) = self._env._obs_cache, self._identity
        for o in obs:
            v = o._sensor(cache)
            if o._corrupter is not no_corruption:
                v = o._corrupter(v)
            if o._filter is not no_filter:
                v = o._filter(v)
            v = np.array(v)
            o._current_observed_value = v[0] if len(v.shape) == 1 and v.shape[0] == 1 else v
            cache[o.name] = np.array(o._current_observed_value)
            o._current_delay = 0.0  # NO_DELAY's value (checked at bind)
