"""One scripted-expert demo episode from one start: seeded randomised resets, the wait steps, and DART
noise on the executed actions (the clean ones are recorded)."""
from __future__ import annotations

import numpy as np

from ..episodes import Episode
from ..errors import UserError
from ..obs_features import IMAGE_KEYS, LOWDIM_KEYS
from .env import WAIT_ACTION
from .expert import ScriptedExpert

WAIT_STEPS = 10
RECORD_KEYS = LOWDIM_KEYS + IMAGE_KEYS


class DemoGenerationError(UserError):
    pass


def record_episode(env, init_state: np.ndarray, expert: ScriptedExpert, rng: np.random.Generator,
                   dart_sigma: float, max_steps: int, obs: dict | None = None) -> Episode | None:
    """One expert episode; an Episode when it succeeds, else None. `obs`: the env was already put in
    `init_state` (reset + set_init_state) and this is its observation."""
    if obs is None:
        obs = env.reset_to(init_state)
    for _ in range(WAIT_STEPS):
        obs, _ = env.step(WAIT_ACTION)
    expert.reset()
    rec: dict[str, list] = {k: [] for k in RECORD_KEYS}
    clean, executed, states, robot = [], [], [], []
    done = False
    for _t in range(max_steps):
        for k in RECORD_KEYS:
            if k in obs:
                rec[k].append(obs[k])
        states.append(env.sim_state())
        robot.append(env.robot_state())
        a = expert.act(obs)
        ex = a.copy()
        if dart_sigma > 0 and expert.moving:
            ex[:3] += rng.normal(0.0, dart_sigma, 3)
        ex = np.clip(ex, -1.0, 1.0)
        clean.append(np.clip(a, -1.0, 1.0))
        executed.append(ex)
        obs, done = env.step(ex)
        if done:
            break
    if not done:
        return None
    T = len(clean)
    rewards = np.zeros(T)
    dones = np.zeros(T)
    rewards[-1] = dones[-1] = 1
    return Episode(actions=np.asarray(clean), obs={k: np.asarray(v) for k, v in rec.items() if v},
                   states=np.asarray(states), rewards=rewards, dones=dones, robot_states=np.asarray(robot),
                   init_state=np.asarray(init_state, dtype=np.float64), model_file=env.model_xml(),
                   extras={"executed_actions": np.asarray(executed)})


def _start_seed(seed: int, task: int, attempt: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(task), int(attempt), 7]).generate_state(1)[0])


def _seeded(seed: int, task: int, attempt: int):
    """Context: numpy's global generator (which LIBERO's placement samplers and robosuite's joint
    noise draw from) seeded from (seed, task, attempt); the caller's state is restored after."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        state = np.random.get_state()
        try:
            np.random.seed(_start_seed(seed, task, attempt))
            yield
        finally:
            np.random.set_state(state)

    return cm()


def random_start(env, seed: int, task: int, attempt: int) -> tuple[np.ndarray, dict]:
    """A fresh randomised reset of the task (LIBERO re-samples placements from the BDDL regions),
    determined by (seed, task, attempt). Returns (flattened sim state, obs): the env is left in that
    state, exactly as `env.reset_to(state)` would leave it (a reset, then set_init_state)."""
    import contextlib
    import io

    with _seeded(seed, task, attempt), contextlib.redirect_stdout(io.StringIO()):
        env._env.reset()
        state = env.sim_state()
        raw = env._env.set_init_state(state)
    env._reset_done = True
    return state, env._obs(raw)


def start_distances(starts: np.ndarray, bench: np.ndarray) -> np.ndarray:
    """Per start: L2 distance of its qpos/qvel (time excluded) to the nearest benchmark init state."""
    a = np.asarray(starts, dtype=np.float64)[:, 1:]
    b = np.asarray(bench, dtype=np.float64)[:, 1:]
    k = min(a.shape[1], b.shape[1])
    d = np.linalg.norm(a[:, None, :k] - b[None, :, :k], axis=-1)
    return d.min(axis=1)
