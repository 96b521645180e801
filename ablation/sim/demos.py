"""Scripted-expert demos in LIBERO's HDF5 layout, with DART noise, cached by their inputs.

Starts (`starts=`):
- "random" (default): fresh randomised resets of the task. LIBERO's env.reset() re-samples the object
  placements from the BDDL regions (and the robot's joint noise); numpy's global generator is seeded
  from (seed, task, attempt) before each reset, so the same seed gives the same starts. The
  benchmark's 50 fixed init states stay for evaluation; the file records the distance of every
  training start to the nearest of them.
- "benchmark": the benchmark's init states 0, 1, 2, ... in order (wrapping), as before.

Per episode (standard protocol): reset to the start state (reset + set_init_state), 10 wait steps,
then the expert. Each demo's start state is stored as its `init_state`.
Recording starts after the wait, obs BEFORE each step (`obs_convention="before"`):

    obs[k] --executed[k]--> obs[k+1]       actions[k] = the CLEAN expert action at obs[k]

DART (on by default): the env EXECUTES expert + N(0, sigma) on the position dims while the expert is
moving (not while the gripper closes or opens); the file RECORDS the clean action in `actions`
and the executed one in the extra dataset `executed_actions` (what `replay` uses by default).
Only successful episodes are kept, in attempt order.

Attempt k's start and DART noise depend only on (seed, task, k), and the kept demos are the first n
successful attempts, so the file does not depend on `workers` (parallel worker processes, default:
the usable CPUs).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..episodes import DemoFileError, Episode
from ..libero_file import read_libero_file, write_demo_file
from ..obs_features import IMAGE_KEYS, LOWDIM_KEYS
from ..errors import UserError
from ..provenance import versions
from .env import WAIT_ACTION, freeze_long_lived_objects, make_env
from .expert import EXPERT_VERSION, SUPPORTED_SUITES, ScriptedExpert

DEMO_GEN_VERSION = 2   # 2: randomised-reset starts, parallel workers
STARTS = ("random", "benchmark")
STARTS_ATTR = {"random": "random_resets", "benchmark": "benchmark_init_states"}
WAIT_STEPS = 10
RECORD_KEYS = LOWDIM_KEYS + IMAGE_KEYS


class DemoGenerationError(UserError):
    pass


def cache_key(suite: str, task: int, n: int, images: bool, dart_sigma: float, seed: int, speed: float,
              image_size: int = 128, starts: str = "random") -> tuple[str, dict]:
    inputs = {"suite": suite, "task": int(task), "n": int(n), "images": bool(images),
              "image_size": int(image_size) if images else None, "dart_sigma": float(dart_sigma),
              "seed": int(seed), "speed": float(speed), "expert_version": EXPERT_VERSION,
              "demo_gen_version": DEMO_GEN_VERSION, "wait_steps": WAIT_STEPS, "starts": STARTS_ATTR[starts]}
    h = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    return h, inputs


def default_demo_path(root: str | Path, suite: str, task: int, n: int, images: bool = False,
                      dart_sigma: float = 0.3, seed: int = 0, speed: float = 1.0, image_size: int = 128,
                      starts: str = "random") -> Path:
    """A file name that is its cache key: other inputs, or another expert version, get another file."""
    h, _ = cache_key(suite, task, n, images, dart_sigma, seed, speed, image_size, starts)
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


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


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


# ----------------------------------------------------------------------------- one attempt

@dataclass(frozen=True)
class _Job:
    suite: str
    task: int
    images: bool
    image_size: int
    speed: float
    dart_sigma: float
    seed: int
    starts: str
    fast: bool = True  # the env's fast step: the same physics, so not part of the cache key


_WORKER: dict = {}


def _job_env(job: _Job):
    key = (job.suite, job.task, job.images, job.image_size, job.speed)
    if _WORKER.get("key") != key:
        old = _WORKER.pop("env", None)
        if old is not None:
            old.close()
        env = make_env(job.suite, job.task, images=job.images, image_size=job.image_size, seed=job.seed,
                       fast=job.fast)
        _WORKER.update(key=key, env=env, expert=ScriptedExpert.for_env(env, job.speed))
        freeze_long_lived_objects()  # each attempt's hard reset ends in a gc.collect(): make it cheap
    _WORKER["env"].fast = job.fast
    return _WORKER["env"], _WORKER["expert"]


def _run_attempt(job: _Job, attempt: int) -> tuple[int, Episode | None, int | None]:
    """(attempt, episode or None, benchmark init index or None). Depends only on (job, attempt): the
    reset's randomness is seeded from it too, whatever ran before in this process."""
    env, expert = _job_env(job)
    if job.starts == "benchmark":
        idx = attempt % len(env.init_states)
        start = env.init_states[idx]
        with _seeded(job.seed, job.task, attempt):
            obs = env.reset_to(start)
    else:
        idx = None
        start, obs = random_start(env, job.seed, job.task, attempt)
    rng = np.random.default_rng([job.seed, job.task, attempt])
    return attempt, record_episode(env, start, expert, rng, job.dart_sigma, env.max_steps, obs=obs), idx


def _job_meta(job: _Job) -> tuple:
    env, expert = _job_env(job)
    return env.info.name, env.language, np.asarray(env.init_states), env.demo_meta({}), expert.coverage_reason


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _stop_pool(ex) -> None:
    """Shut the pool down without waiting for attempts past the target: their workers are ended."""
    procs = list((getattr(ex, "_processes", None) or {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=10)


def _worker_init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:
        pass


def generate_demos(suite: str, task: int, n: int, out: str | Path, images: bool = False,
                   dart_sigma: float = 0.3, seed: int = 0, speed: float = 1.0, *, image_size: int = 128,
                   force: bool = False, progress: bool = True, max_attempts: int | None = None,
                   min_success_rate: float = 0.3, starts: str = "random", workers: int | None = None,
                   fast: bool = True) -> Path:
    """Generate (or reuse) `n` successful expert demos; returns the file path.

    `starts`: "random" (fresh randomised resets, seeded by `seed`; the default) or "benchmark" (the
    benchmark's init states in order). `workers`: parallel worker processes (default: usable CPUs;
    1 = in this process); the result does not depend on it. `fast`: the env's fast step (spec
    sim.fast; the same physics bit for bit, so the same file); False: robosuite's own step.
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
    if starts not in STARTS:
        raise DemoGenerationError(f"starts must be one of {', '.join(STARTS)}, got '{starts}'")
    key, inputs = cache_key(suite, task, n, images, dart_sigma, seed, speed, image_size, starts)
    if out.is_file() and not force and cached_key_of(out) == key:
        return out
    from .libero_setup import check_task, ensure_libero
    from .expert import coverage_of, task_plan

    ensure_libero()  # config + render backend env vars, inherited by worker processes
    info = check_task(suite, task)
    covered, why = coverage_of(task_plan(info.get_task_bddl_file_path(task)))
    if not covered:
        raise DemoGenerationError(f"the scripted expert does not cover {suite} task {task}: {why}")
    max_attempts = max_attempts or max(3 * n, n + 20)
    workers = usable_cpus() if workers is None else int(workers)
    workers = max(1, min(workers, max_attempts))
    job = _Job(suite, int(task), bool(images), int(image_size), float(speed), float(dart_sigma), int(seed), starts,
               bool(fast))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"demos {suite}/{task}", unit="demo", leave=False)
    t0 = time.time()
    results: dict[int, tuple[Episode | None, int | None]] = {}

    def prefix_state() -> tuple[int, int, bool]:
        """(attempts in the contiguous finished prefix, successes in it, done)."""
        k = ok = 0
        while k in results:
            ok += results[k][0] is not None
            k += 1
            if ok >= n:
                return k, ok, True
        return k, ok, False

    def check_rate(k: int, ok: int) -> None:
        if k >= max_attempts or (k >= 20 and ok < min_success_rate * k):
            raise DemoGenerationError(
                f"the scripted expert succeeded in only {ok} of {k} attempts on "
                f"{suite} task {task} (need {n}); try --dart-sigma lower than {dart_sigma} or --speed 1")

    shown = 0

    def show() -> None:
        nonlocal shown
        if bar is None:
            return
        okall = sum(r[0] is not None for r in results.values())
        okall = min(okall, n)
        if okall > shown:
            bar.update(okall - shown)
            shown = okall
        bar.set_postfix_str(f"{okall}/{len(results)} ok")

    try:
        if workers == 1:
            nxt = 0
            while True:
                k, ok, done = prefix_state()
                if done:
                    break
                check_rate(k, ok)
                a, ep, idx = _run_attempt(job, nxt)
                results[a] = (ep, idx)
                nxt += 1
                show()
            meta_t = _job_meta(job)
        else:
            import concurrent.futures as cf
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            # One thread per worker: the workers are the parallelism (set before they import numpy).
            saved = {k: os.environ.get(k) for k in _THREAD_VARS}
            os.environ.update({k: "1" for k in _THREAD_VARS})   # workers start at their first job
            ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)
            try:
                meta_f = ex.submit(_job_meta, job)
                pending: set = set()
                nxt = 0
                while True:
                    k, ok, done = prefix_state()
                    if done:
                        break
                    check_rate(k, ok)
                    # Keep every worker busy (at most workers - 1 attempts run past the target).
                    while len(pending) < workers and nxt < max_attempts:
                        pending.add(ex.submit(_run_attempt, job, nxt))
                        nxt += 1
                    if not pending:
                        check_rate(max_attempts, ok)
                        break
                    finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for f in finished:
                        a, ep, idx = f.result()
                        results[a] = (ep, idx)
                    show()
                meta_t = meta_f.result()
            finally:
                _stop_pool(ex)
                for var, v in saved.items():
                    if v is None:
                        os.environ.pop(var, None)
                    else:
                        os.environ[var] = v
    finally:
        if bar is not None:
            bar.close()
        if workers == 1:
            env = _WORKER.pop("env", None)
            _WORKER.clear()
            if env is not None:
                env.close()
    k, ok, _ = prefix_state()
    kept = [(a, results[a]) for a in range(k) if results[a][0] is not None][:n]
    episodes = [r[0] for _, r in kept]
    task_name, language, bench, meta, _why = meta_t
    dists = start_distances(np.stack([e.init_state for e in episodes]), bench)
    attrs = dict(inputs, cache_key=key, task_id=int(task), task_name=task_name,
                 language_instruction=language, attempts=k, successes=len(episodes),
                 start_attempts=[int(a) for a, _ in kept],
                 init_indices=[r[1] for _, r in kept] if starts == "benchmark" else None,
                 start_seed=int(seed),
                 starts_min_dist_to_benchmark=[round(float(x), 6) for x in dists],
                 min_distance_to_benchmark_init=round(float(dists.min()), 6), n_demos=len(episodes),
                 starts_equal_to_benchmark=int(np.sum(dists < 1e-6)),
                 expert_success_rate=len(episodes) / max(k, 1), workers=workers,
                 generation_s=round(time.time() - t0, 1), versions=versions(),
                 executed_actions="data/demo_i/executed_actions = expert + DART noise, as executed")
    meta.attrs = attrs
    # write_demo_file writes to a temp name and renames; never half a file at `out`.
    write_demo_file(out, episodes, meta)
    return out


def demo_summary(path: str | Path) -> str:
    ds = read_libero_file(path)
    a = ds.meta.attrs
    lens = [len(e) for e in ds.episodes]
    starts = a.get("starts", "benchmark_init_states")
    where = (f"starts: random resets (seed {a.get('start_seed')}), min distance to a benchmark init state "
             f"{min(a.get('starts_min_dist_to_benchmark') or [float('nan')]):.3g}"
             if starts == "random_resets" else f"starts: benchmark init states {a.get('init_indices')}")
    return (f"{path}: {len(ds.episodes)} demos of {a.get('suite')} task {a.get('task_id')} "
            f"({a.get('task_name')}), mean length {np.mean(lens):.0f} steps, expert success "
            f"{a.get('successes')}/{a.get('attempts')}, dart sigma {a.get('dart_sigma')}, {where}")


__all__ = ["generate_demos", "default_demo_path", "cache_key", "DemoGenerationError", "demo_summary",
           "DemoFileError", "WAIT_STEPS", "STARTS", "random_start", "start_distances", "usable_cpus"]
