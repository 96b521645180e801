"""A faster `env.step` for LIBERO's robosuite env with cameras off: the same physics, bit for bit.

robosuite 1.4's `MujocoEnv.step` runs, per 2 ms physics substep (25 per 20 Hz control step):
`mj_forward` (the step's), `mj_forward` again (the OSC controller's `update`), then `mj_step`, which
computes the same forward pass a third time before integrating; then all ~40 observables tick.
Measured on libero_object 0 (cProfile, 100 steps): the two extra forwards, the controller's Python
(name lookups, fresh arrays, properties) and the observables cost ~6x the physics itself.

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

    # packages_distributions spells names as installed (hf_libero); PEP 503 normalises them.
    libero_dists = {re.sub(r"[-_.]+", "-", d).lower() for d in importlib.metadata.packages_distributions().get("libero", [])}
    libero = " ".join(f"{d} {version(d)}" for d in sorted(libero_dists)) or "missing"
    return {"robosuite": version("robosuite"), "libero": libero, "mujoco": version("mujoco")}


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

    # ------------------------------------------------------------------ binding (once per sim)
    def _bind(self) -> None:
        from robosuite.controllers.osc import OperationalSpaceController
        from robosuite.models.grippers.panda_gripper import PandaGripper
        from robosuite.robots.single_arm import SingleArm
        from robosuite.utils.observables import NO_DELAY

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
        if env.sim is not self._sim or env.robots[0].controller is not self._controller:
            self._bind()
        if env.done:
            raise ValueError("executing action in terminated episode")
        if len(action) != env.action_dim:
            raise ValueError(f"environment got invalid action dimension -- expected {env.action_dim}, got {len(action)}")
        mj, m, d, c, robot, gripper = self._mj, self._m, self._d, self._controller, self._robot, self._gripper
        step1, step2, jac_site, full_m = mj.mj_step1, mj.mj_step2, mj.mj_jacSite, mj.mj_fullM
        opspace, nullspace, ori_err_of = self._opspace_matrices, self._nullspace_torques, self._orientation_error
        site, jacp, jacr, mass_full, j, qv = (self._site, self._jacp, self._jacr, self._mass_full, self._joints,
                                              self._qvel_index)
        site_xpos, site_xmat, qpos, qvel, qM, qfrc_bias = (self._site_xpos, self._site_xmat, self._qpos, self._qvel,
                                                          self._qM, self._qfrc_bias)
        ctrl, joint_ctrl, grip_ctrl = self._ctrl, self._joint_ctrl, self._grip_ctrl
        kp_pos, kp_ori, kd_pos, kd_ori = self._kp_pos, self._kp_ori, self._kd_pos, self._kd_ori
        low, high, grip_bias, grip_weight = self._torque_low, self._torque_high, self._grip_bias, self._grip_weight
        grip_step = self._grip_rate * np.sign(action[c.control_dim:])
        obs, period, delay, dt = self._observables, self._obs_period_s, self._obs_delay_s, self._dt_s
        clock, sampled = obs[0]._time_since_last_sample, obs[0]._sampled
        env.timestep += 1
        for i in range(self._n_substeps):
            step1(m, d)  # what MujocoEnv.step's sim.forward() and update()'s compute, and mj_step again
            # update(). new_update is False only on the first substep after a reset: the controller
            # read the sim when it was made (before LIBERO's set_init_state) and robosuite runs on that.
            if c.new_update:
                c.ee_pos = np.array(site_xpos)
                c.ee_ori_mat = np.array(site_xmat)
                jac_site(m, d, jacp, jacr, site)  # fills both in full: the same numbers as two calls
                c.ee_pos_vel = np.dot(jacp, qvel)
                c.ee_ori_vel = np.dot(jacr, qvel)
                c.joint_pos = np.array(qpos[j])
                c.joint_vel = np.array(qvel[j])
                # Fancy indexing, as update() does, makes these Fortran-ordered; the layout decides
                # which BLAS call np.dot(J_full.T, .) makes and which numba specialisation runs, so
                # the last bits of the torque depend on it.
                c.J_pos = jacp[:, qv]
                c.J_ori = jacr[:, qv]
                c.J_full = np.concatenate((c.J_pos, c.J_ori))  # np.vstack's own call
                full_m(m, mass_full, qM)
                c.mass_matrix = mass_full[qv, :][:, qv]
                c.new_update = False
            if i == 0:
                c.set_goal(action[:c.control_dim])  # its update() is a no-op now
            # run_controller (fixed impedance, uncoupled, no interpolators)
            desired_force = (c.goal_pos - c.ee_pos) * kp_pos + (-c.ee_pos_vel) * kd_pos
            desired_torque = ori_err_of(c.goal_ori, c.ee_ori_mat) * kp_ori + (-c.ee_ori_vel) * kd_ori
            _lambda_full, lambda_pos, lambda_ori, nullspace_matrix = opspace(c.mass_matrix, c.J_full, c.J_pos, c.J_ori)
            wrench = np.concatenate((np.dot(lambda_pos, desired_force), np.dot(lambda_ori, desired_torque)))
            torques = np.dot(c.J_full.T, wrench) + qfrc_bias[j]
            torques += nullspace(c.mass_matrix, nullspace_matrix, c.initial_joint, c.joint_pos, c.joint_vel)
            c.torques = torques
            c.new_update = True
            # SingleArm.control: the torque clip (np.clip's arithmetic), the gripper, the actuators
            robot.torques = np.minimum(np.maximum(torques, low), high)
            gripper.current_action = np.minimum(np.maximum(gripper.current_action + grip_step, -1.0), 1.0)
            ctrl[grip_ctrl] = grip_bias + grip_weight * gripper.current_action
            ctrl[joint_ctrl] = robot.torques
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
        for o in obs:
            o._time_since_last_sample, o._sampled = clock, sampled
        env.cur_time += env.control_timestep
        reward, _done, info = env._post_action(action)
        return env._get_observations(), reward, env._check_success(), info

    def _sample(self, obs: list) -> None:
        """Every enabled observable's sample, in order, on the env's cache (Observable.update's body)."""
        cache = self._env._obs_cache
        for o in obs:
            v = np.array(o._filter(o._corrupter(o._sensor(cache))))
            o._current_observed_value = v[0] if len(v.shape) == 1 and v.shape[0] == 1 else v
            cache[o.name] = np.array(o._current_observed_value)
            o._current_delay = o._delayer()
