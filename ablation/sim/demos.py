"""Scripted-expert demos in LIBERO's HDF5 layout, with DART noise, cached by their inputs.

Per episode (standard protocol): reset to a benchmark init state, 10 wait steps, then the expert.
Recording starts after the wait, obs BEFORE each step (`obs_convention="before"`):

    obs[k] --executed[k]--> obs[k+1]       actions[k] = the CLEAN expert action at obs[k]

DART (on by default): the env EXECUTES expert + N(0, sigma) on the position dims while the expert is
moving (not while the gripper closes or opens); the file RECORDS the clean action in `actions`
and the executed one in the extra dataset `executed_actions` (what `replay` uses by default).
Only successful episodes are kept; init states are tried in order, wrapping around with fresh noise.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from ..data import LOWDIM_KEYS, IMAGE_KEYS, DemoFileError, Episode, write_demo_file
from ..errors import UserError
from ..provenance import versions
from .env import WAIT_ACTION, make_env
from .expert import EXPERT_VERSION, SUPPORTED_SUITES, ScriptedExpert

DEMO_GEN_VERSION = 1
WAIT_STEPS = 10
RECORD_KEYS = LOWDIM_KEYS + IMAGE_KEYS


class DemoGenerationError(UserError):
    pass


def cache_key(suite: str, task: int, n: int, images: bool, dart_sigma: float, seed: int, speed: float,
              image_size: int = 128) -> tuple[str, dict]:
    inputs = {"suite": suite, "task": int(task), "n": int(n), "images": bool(images),
              "image_size": int(image_size) if images else None, "dart_sigma": float(dart_sigma),
              "seed": int(seed), "speed": float(speed), "expert_version": EXPERT_VERSION,
              "demo_gen_version": DEMO_GEN_VERSION, "wait_steps": WAIT_STEPS}
    h = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    return h, inputs


def default_demo_path(root: str | Path, suite: str, task: int, n: int, images: bool = False,
                      dart_sigma: float = 0.3, seed: int = 0, speed: float = 1.0, image_size: int = 128) -> Path:
    """A file name that is its cache key: other inputs, or another expert version, get another file."""
    h, _ = cache_key(suite, task, n, images, dart_sigma, seed, speed, image_size)
    return Path(root) / f"{suite}_task{task}_n{n}_{h}.hdf5"


def cached_key_of(path: Path) -> str | None:
    """The cache key stored in an existing demo file, or None if unreadable / not ours."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f["data"].attrs.get("ablation_attrs")
            if raw is None:
                return None
            return json.loads(raw if isinstance(raw, str) else raw.decode()).get("cache_key")
    except Exception:
        return None


def record_episode(env, init_state: np.ndarray, expert: ScriptedExpert, rng: np.random.Generator,
                   dart_sigma: float, max_steps: int) -> Episode | None:
    """One expert episode; an Episode when it succeeds, else None."""
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


def generate_demos(suite: str, task: int, n: int, out: str | Path, images: bool = False,
                   dart_sigma: float = 0.3, seed: int = 0, speed: float = 1.0, *, image_size: int = 128,
                   force: bool = False, progress: bool = True, max_attempts: int | None = None,
                   min_success_rate: float = 0.3) -> Path:
    """Generate (or reuse) `n` successful expert demos; returns the file path.

    An existing `out` whose stored cache key matches these inputs is reused as is. Otherwise demos
    are generated and written atomically (temp file + rename).
    """
    out = Path(out)
    if suite not in SUPPORTED_SUITES:
        raise DemoGenerationError(f"the scripted expert covers {', '.join(SUPPORTED_SUITES)} only, not '{suite}'; "
                                  "pass recorded demos with data.demo_file instead")
    if n < 1:
        raise DemoGenerationError(f"--n must be >= 1, got {n}")
    if dart_sigma < 0:
        raise DemoGenerationError(f"--dart-sigma must be >= 0, got {dart_sigma}")
    key, inputs = cache_key(suite, task, n, images, dart_sigma, seed, speed, image_size)
    if out.is_file() and not force and cached_key_of(out) == key:
        return out
    env = make_env(suite, task, images=images, image_size=image_size, seed=seed)
    try:
        expert = ScriptedExpert.for_env(env, speed)
        max_attempts = max_attempts or max(3 * n, n + 20)
        episodes, init_idx, attempts = [], [], 0
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, desc=f"demos {suite}/{task}", unit="demo", leave=False)
        t0 = time.time()
        n_init = len(env.init_states)
        while len(episodes) < n:
            if attempts >= max_attempts or (attempts >= 20 and len(episodes) < min_success_rate * attempts):
                raise DemoGenerationError(
                    f"the scripted expert succeeded in only {len(episodes)} of {attempts} attempts on "
                    f"{suite} task {task} (need {n}); try --dart-sigma lower than {dart_sigma} or --speed 1")
            i = attempts % n_init
            rng = np.random.default_rng([seed, task, attempts])
            ep = record_episode(env, env.init_states[i], expert, rng, dart_sigma, env.max_steps)
            attempts += 1
            if ep is not None:
                episodes.append(ep)
                init_idx.append(i)
            if bar is not None:
                bar.update(1 if ep is not None else 0)
                bar.set_postfix_str(f"{len(episodes)}/{attempts} ok")
        if bar is not None:
            bar.close()
        attrs = dict(inputs, cache_key=key, task_id=int(task), task_name=env.info.name,
                     language_instruction=env.language, attempts=attempts, successes=len(episodes),
                     init_indices=init_idx, expert_success_rate=len(episodes) / attempts,
                     generation_s=round(time.time() - t0, 1), versions=versions(),
                     executed_actions="data/demo_i/executed_actions = expert + DART noise, as executed")
        meta = env.demo_meta(attrs)
    finally:
        env.close()
    # write_demo_file writes to a temp name and renames; never half a file at `out`.
    write_demo_file(out, episodes, meta)
    return out


def demo_summary(path: str | Path) -> str:
    from ..data import read_demo_file

    ds = read_demo_file(path)
    a = ds.meta.attrs
    lens = [len(e) for e in ds.episodes]
    return (f"{path}: {len(ds.episodes)} demos of {a.get('suite')} task {a.get('task_id')} "
            f"({a.get('task_name')}), mean length {np.mean(lens):.0f} steps, expert success "
            f"{a.get('successes')}/{a.get('attempts')}, dart sigma {a.get('dart_sigma')}")


__all__ = ["generate_demos", "default_demo_path", "cache_key", "DemoGenerationError", "demo_summary",
           "DemoFileError", "WAIT_STEPS"]
