"""Env factory around LIBERO's robosuite env, with obs in LIBERO's HDF5 names.

    env = make_env("libero_object", 0)          # cameras off: the fast low-dim path (fast step, see fast_step.py)
    obs = env.reset_to(env.init_states[i])      # reset, then set_init_state (pitfall 6)
    obs, done = env.step(action)                # done = the task's success predicate

`obs` holds the LIBERO names (ee_pos, ee_ori, ee_states, gripper_states, joint_states, object_state,
and agentview_rgb / eye_in_hand_rgb with images=True) plus privileged object poses `<object>_pos`
(3,) and `<object>_quat` (4, xyzw) for every object in the scene.
"""
from __future__ import annotations

import contextlib
import gc
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..episodes import DemoMeta
from ..noise import silence_third_party
from ..obs_features import env_obs_to_libero
from .fast_reset import ModelReuse, kept_at_construction
from .fast_step import FastStepper, check_versions
from .libero_setup import SUITE_MAX_STEPS, LiberoSetupError, check_task, ensure_libero, list_tasks

__all__ = ["LiberoEnv", "TaskInfo", "make_env", "list_tasks", "task_info", "SUITE_MAX_STEPS", "WAIT_ACTION"]

# Standard protocol: 10 steps of this while objects settle.
WAIT_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)


@dataclass(frozen=True)
class TaskInfo:
    suite: str
    task_id: int
    name: str
    language: str
    bddl_file: str
    max_steps: int


def _quiet_robosuite() -> None:
    logging.getLogger("robosuite").setLevel(logging.ERROR)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("robosuite"):
            logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="robosuite")


def freeze_long_lived_objects() -> None:
    """Collect garbage once, then move every object alive now into the collector's permanent
    generation (gc.freeze), so later collections skip them. Called when a process starts a run of
    episodes (the rollout runner, the demo workers), after its imports and its policy exist.

    Why: LIBERO's envs reset hard (the standard protocol), and robosuite frees the old MjSim with a
    full gc.collect() (MjSim.free). In a process holding torch, MLflow and a compiled network that
    walks ~600k long-lived objects: 0.35-0.5 s of every reset, ~10% of a failing 280-step episode
    (0.85 s -> 0.3-0.35 s per reset, measured). Results do not change (the collector only frees
    unreachable cycles); the old sims, made after the freeze, are still collected at each reset. The
    collect first means no garbage is frozen: at worst, a cycle among frozen objects that dies later
    is never freed."""
    gc.collect()
    gc.freeze()


def task_info(suite: str, task_id: int) -> TaskInfo:
    s = check_task(suite, task_id)
    t = s.get_task(task_id)
    return TaskInfo(suite, task_id, t.name, t.language, s.get_task_bddl_file_path(task_id), SUITE_MAX_STEPS[suite])


def load_init_states(suite: str, task_id: int) -> np.ndarray:
    s = check_task(suite, task_id)
    with contextlib.redirect_stdout(io.StringIO()):
        return np.asarray(s.get_task_init_states(task_id), dtype=np.float64)


class LiberoEnv:
    """A LIBERO task env: reset_to / step / close, obs in LIBERO names plus object poses."""

    def __init__(self, suite: str, task_id: int, *, images: bool = False, image_size: int = 128, seed: int = 0,
                 fast: bool = True):
        if fast and not images:
            check_versions()  # before the ~4 s of building a sim that could not take the fast step
        ensure_libero()
        with contextlib.redirect_stdout(io.StringIO()):
            import robosuite  # noqa: F401  (prints macro warnings on first import)
        _quiet_robosuite()
        from libero.libero.envs.env_wrapper import ControlEnv

        # LIBERO's envs/venv.py calls warnings.simplefilter("once", DeprecationWarning) at import, which
        # puts every deprecation note back in front of our filters (torch.jit's showed in every plan)
        silence_third_party()

        self.info = task_info(suite, task_id)
        self.suite, self.task_id = suite, task_id
        self.images, self.image_size, self.seed = images, int(image_size), seed
        self.env_args = {
            "bddl_file_name": self.info.bddl_file,
            "camera_heights": self.image_size, "camera_widths": self.image_size,
            "has_renderer": False,
            "has_offscreen_renderer": bool(images), "use_camera_obs": bool(images),
        }
        if not Path(self.info.bddl_file).is_file():
            raise LiberoSetupError(f"BDDL file {self.info.bddl_file} is missing; reinstall hf-libero==0.1.4")
        # Cameras-off envs keep their construction-time model for the fast reset's first reuse (fast_reset).
        kept = kept_at_construction() if fast and not images else contextlib.nullcontext([])
        with contextlib.redirect_stdout(io.StringIO()), kept as born:
            # ControlEnv, not OffScreenRenderEnv: the latter forces has_offscreen_renderer=True, which
            # costs a GL context and ~6x the step time even with cameras off.
            self._env = ControlEnv(**self.env_args)
        # Held only until the first reset or the fast reset's install: after a stock reset the sim holds
        # a new model, and this reference would keep the old one (~250 MB on libero_object) alive.
        self._born: ModelReuse | None = born[0] if born else None
        self._env.seed(seed)
        self.init_states = load_init_states(suite, task_id)
        self.max_steps = self.info.max_steps
        self.language = self.info.language
        self._raw: dict | None = None
        self._reset_done = False
        self._stepper: FastStepper | None = None
        self._reuse: ModelReuse | None = None
        self.fast = fast

    @property
    def fast(self) -> bool:
        """True when `step` takes the fast path (ablation.sim.fast_step): cameras off and sim.fast."""
        return self._stepper is not None

    @fast.setter
    def fast(self, on: bool) -> None:
        # With cameras the render dominates a step, so image envs keep robosuite's own step.
        if on and not self.images:
            if self._stepper is None:
                check_versions()
                self._stepper = FastStepper(self._env.env)
                self._reuse = (self._born or ModelReuse(self._env.env)).install()
                self._born = None
        else:
            self._stepper = None
            if self._reuse is not None:
                self._reuse.uninstall()
            self._reuse = None

    # -- scene facts
    @property
    def robosuite_env(self):
        return self._env.env

    @property
    def sim(self):
        return self._env.env.sim

    @property
    def object_names(self) -> list[str]:
        return list(self._env.env.objects_dict.keys())

    @property
    def obj_of_interest(self) -> list[str]:
        return list(self._env.obj_of_interest)

    @property
    def goal_state(self) -> list:
        return list(self._env.env.parsed_problem["goal_state"])

    def sim_state(self) -> np.ndarray:
        return np.asarray(self._env.get_sim_state(), dtype=np.float64).copy()

    def robot_state(self) -> np.ndarray:
        """(9,) gripper qpos | eef pos | eef quat xyzw, as LIBERO stores robot_states."""
        r = self._raw
        return np.concatenate([r["robot0_gripper_qpos"], r["robot0_eef_pos"], r["robot0_eef_quat"]]).astype(np.float64)

    def model_xml(self) -> str:
        """The scene's MJCF with the model's current values (LIBERO's `model_file`)."""
        reuse = self._reuse or self._born
        return reuse.model_xml() if reuse is not None else self.sim.model.get_xml()

    def check_success(self) -> bool:
        return bool(self._env.check_success())

    # -- control
    def _obs(self, raw: dict) -> dict[str, np.ndarray]:
        self._raw = raw
        obs = env_obs_to_libero(raw)
        for name in self.object_names:
            for suffix in ("_pos", "_quat"):
                k = name + suffix
                if k in raw:
                    obs[k] = np.asarray(raw[k], dtype=np.float64).copy()
        if self.images:
            # robosuite renders upside down (OpenGL convention); LIBERO files store it as rendered.
            for k in ("agentview_rgb", "eye_in_hand_rgb"):
                if k in obs:
                    obs[k] = obs[k].copy()
        return obs

    def reset_to(self, init_state: np.ndarray) -> dict[str, np.ndarray]:
        """reset() then set_init_state(): the order matters (pitfall 6)."""
        self._born = None  # (a stock reset compiles its own model; the fast one reuses its installed one)
        with contextlib.redirect_stdout(io.StringIO()):
            self._env.reset()
            raw = self._env.set_init_state(np.asarray(init_state, dtype=np.float64))
        self._reset_done = True
        return self._obs(raw)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        if not self._reset_done:
            raise RuntimeError("call reset_to(init_state) before step()")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (7,) or not np.all(np.isfinite(a)):
            raise ValueError(f"env action must be 7 finite numbers, got {a}")
        raw, _reward, done, _info = self._stepper.step(a) if self._stepper is not None else self._env.step(a)
        return self._obs(raw), bool(done)

    def demo_meta(self, attrs: dict | None = None) -> DemoMeta:
        bddl = Path(self.info.bddl_file)
        return DemoMeta(
            env_name=type(self._env.env).__name__,
            problem_info={"problem_name": self._env.problem_name, "domain_name": self._env.domain_name,
                          "language_instruction": self.language},
            bddl_file_name=str(bddl),
            bddl_file_content=bddl.read_text(),
            env_args={"type": 1, "env_name": type(self._env.env).__name__,
                      "env_kwargs": {k: v for k, v in self.env_args.items()}},
            obs_convention="before",
            attrs=dict(attrs or {}),
        )

    def close(self) -> None:
        env, self._env = getattr(self, "_env", None), None
        self._stepper = self._born = None
        if env is not None:
            with contextlib.suppress(Exception):
                env.close()

    def __enter__(self) -> "LiberoEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_env(suite: str, task_id: int, *, images: bool = False, image_size: int = 128, seed: int = 0,
             fast: bool = True) -> LiberoEnv:
    """Build one LIBERO task env (cameras only with images=True). ~4 s on 2 CPU cores.
    fast: step through ablation.sim.fast_step (cameras-off envs; same physics, raises FastPathError
    on unvalidated robosuite/LIBERO/MuJoCo versions); False: robosuite's own step."""
    return LiberoEnv(suite, task_id, images=images, image_size=image_size, seed=seed, fast=fast)
