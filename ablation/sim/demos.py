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
import time
from pathlib import Path

import numpy as np

from ..episodes import DemoFileError  # noqa: F401 (in __all__)
from ..libero_file import read_libero_file, write_demo_file
from ..provenance import versions
# One episode and the attempts' workers live in demo_episode.py and demo_workers.py; re-exported here.
from .demo_episode import (  # noqa: F401
    RECORD_KEYS, WAIT_STEPS, DemoGenerationError, random_start, record_episode, start_distances,
)
from .demo_workers import DemoJob, default_demo_workers, run_attempts, usable_cpus
from .expert import EXPERT_VERSION, SUPPORTED_SUITES

DEMO_GEN_VERSION = 2   # 2: randomised-reset starts, parallel workers
STARTS = ("random", "benchmark")
STARTS_ATTR = {"random": "random_resets", "benchmark": "benchmark_init_states"}


def cache_key(suite: str, task: int, n: int, images: bool, dart_sigma: float, seed: int, speed: float,
              image_size: int = 128, starts: str = "random", turn_deg: float = 0.0) -> tuple[str, dict]:
    inputs = {"suite": suite, "task": int(task), "n": int(n), "images": bool(images),
              "image_size": int(image_size) if images else None, "dart_sigma": float(dart_sigma),
              "seed": int(seed), "speed": float(speed), "expert_version": EXPERT_VERSION,
              "demo_gen_version": DEMO_GEN_VERSION, "wait_steps": WAIT_STEPS, "starts": STARTS_ATTR[starts]}
    if turn_deg:  # only when set: the stock expert's files keep their keys (and names)
        inputs["turn_deg"] = float(turn_deg)
    h = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    return h, inputs


def default_demo_path(root: str | Path, suite: str, task: int, n: int, images: bool = False,
                      dart_sigma: float = 0.3, seed: int = 0, speed: float = 1.0, image_size: int = 128,
                      starts: str = "random", turn_deg: float = 0.0) -> Path:
    """A file name that is its cache key: other inputs, or another expert version, get another file."""
    h, _ = cache_key(suite, task, n, images, dart_sigma, seed, speed, image_size, starts, turn_deg)
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


def generate_demos(suite: str, task: int, n: int, out: str | Path, images: bool = False,
                   dart_sigma: float = 0.3, seed: int = 0, speed: float = 1.0, *, image_size: int = 128,
                   force: bool = False, progress: bool = True, max_attempts: int | None = None,
                   min_success_rate: float = 0.3, starts: str = "random", workers: int | None = None,
                   fast: bool = True, turn_deg: float = 0.0) -> Path:
    """Generate (or reuse) `n` successful expert demos; returns the file path.

    `starts`: "random" (fresh randomised resets, seeded by `seed`; the default) or "benchmark" (the
    benchmark's init states in order). `workers`: parallel worker processes (default: one per 8 demos,
    up to the usable CPUs, and always workers for images; 1 = in this process); the result does not depend on it. `fast`: the env's fast step (spec
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
    if not 0.0 <= turn_deg <= 80.0:
        raise DemoGenerationError(f"--turn-deg must be in [0, 80] deg, got {turn_deg}")
    key, inputs = cache_key(suite, task, n, images, dart_sigma, seed, speed, image_size, starts, turn_deg)
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
    workers = default_demo_workers(n, images) if workers is None else int(workers)
    workers = max(1, min(workers, max_attempts))
    job = DemoJob(suite, int(task), bool(images), int(image_size), float(speed), float(dart_sigma), int(seed), starts,
                  bool(fast), float(turn_deg))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"demos {suite}/{task}", unit="demo", leave=False)
    t0 = time.time()
    try:
        results, meta_t, k = run_attempts(job, n, max_attempts, workers, min_success_rate, bar,
                                          (suite, task, dart_sigma))
    finally:
        if bar is not None:
            bar.close()
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
