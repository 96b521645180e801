"""Running expert attempts until n succeed, in this process or in a pool of spawned workers: attempt k
depends only on (job, k), so the kept demos (the first n successes in attempt order) do not depend
on the number of workers."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..episodes import Episode
from ..host import usable_cpus
from ..worker_procs import THREAD_VARS, process_pool
from .demo_episode import DemoGenerationError, _seeded, random_start, record_episode
from .env import freeze_long_lived_objects, make_env
from .expert import ExpertConfig, ScriptedExpert


# A worker process pays ~6-8 CPU-s to start (torch, robosuite and LIBERO imports, its env) against ~2 per
# demo: 4 demos took 17.2 s wall and 11.3 CPU-s in this process, 17.9 s and 17.3 CPU-s on 2 workers.
DEMOS_PER_WORKER = 8


def default_demo_workers(n: int, images: bool = False) -> int:
    """Worker processes for n demos when none are asked for: one per DEMOS_PER_WORKER demos, up to the
    usable CPUs; 1 (this process) below that, where starting workers costs more than it saves. Demos
    with images always go to worker processes (run_attempts starts one even for 1): a closed env does
    not free its offscreen renderer (measured: +300-500 MB of this process's memory per image-demo run
    here, ~30-50 MB without images). At most one per demo: a worker beyond that only renders an attempt
    whose success is not needed (~0.33 s of llvmpipe rendering per step for two cameras: a 200-step
    attempt is over a minute)."""
    if images:
        return max(1, min(usable_cpus(), int(n)))
    return max(1, min(usable_cpus(), int(n) // DEMOS_PER_WORKER))


@dataclass(frozen=True)
class DemoJob:
    suite: str
    task: int
    images: bool
    image_size: int
    speed: float
    dart_sigma: float
    seed: int
    starts: str
    fast: bool = True  # the env's fast step: the same physics, so not part of the cache key
    turn_deg: float = 0.0  # ExpertConfig.turn_deg (part of the cache key when set)


_WORKER: dict = {}


def _job_env(job: DemoJob):
    key = (job.suite, job.task, job.images, job.image_size, job.speed, job.turn_deg)
    if _WORKER.get("key") != key:
        old = _WORKER.pop("env", None)
        if old is not None:
            old.close()
        env = make_env(job.suite, job.task, images=job.images, image_size=job.image_size, seed=job.seed,
                       fast=job.fast)
        _WORKER.update(key=key, env=env, expert=ScriptedExpert.for_env(env, job.speed, ExpertConfig(turn_deg=job.turn_deg)))
        freeze_long_lived_objects()  # each attempt's hard reset ends in a gc.collect(): make it cheap
    _WORKER["env"].fast = job.fast
    return _WORKER["env"], _WORKER["expert"]


def _run_attempt(job: DemoJob, attempt: int) -> tuple[int, Episode | None, int | None]:
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


def _job_meta(job: DemoJob) -> tuple:
    env, expert = _job_env(job)
    return env.info.name, env.language, np.asarray(env.init_states), env.demo_meta({}), expert.coverage_reason


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



class _Tally:
    """The attempts finished so far (attempt -> (episode or None, benchmark init index or None)),
    when to stop, and the progress bar."""

    def __init__(self, n: int, max_attempts: int, min_success_rate: float, bar, what: tuple) -> None:
        self.n, self.max_attempts, self.min_success_rate, self.bar = n, max_attempts, min_success_rate, bar
        self.suite, self.task, self.dart_sigma = what  # as the caller passed them, for the error message
        self.results: dict[int, tuple[Episode | None, int | None]] = {}
        self.shown = 0

    def prefix_state(self) -> tuple[int, int, bool]:
        """(attempts in the contiguous finished prefix, successes in it, done)."""
        results, n = self.results, self.n
        k = ok = 0
        while k in results:
            ok += results[k][0] is not None
            k += 1
            if ok >= n:
                return k, ok, True
        return k, ok, False

    def rounds(self):
        """One round per pass of an attempt loop, while the finished prefix lacks `n` successes: checks
        the success rate first (raising when it is too low), then yields the prefix's successes."""
        while True:
            k, ok, done = self.prefix_state()
            if done:
                return
            self.check_rate(k, ok)
            yield ok

    def check_rate(self, k: int, ok: int) -> None:
        if k >= self.max_attempts or (k >= 20 and ok < self.min_success_rate * k):
            raise DemoGenerationError(
                f"the scripted expert succeeded in only {ok} of {k} attempts on "
                f"{self.suite} task {self.task} (need {self.n}); try --dart-sigma lower than {self.dart_sigma} "
                "or --speed 1")

    def show(self) -> None:
        if self.bar is None:
            return
        okall = sum(r[0] is not None for r in self.results.values())
        okall = min(okall, self.n)
        if okall > self.shown:
            self.bar.update(okall - self.shown)
            self.shown = okall
        self.bar.set_postfix_str(f"{okall}/{len(self.results)} ok")


def _run_here(job: DemoJob, tally: _Tally) -> tuple:
    """Attempts one after another in this process; returns the job's meta."""
    nxt = 0
    for _ok in tally.rounds():
        a, ep, idx = _run_attempt(job, nxt)
        tally.results[a] = (ep, idx)
        nxt += 1
        tally.show()
    return _job_meta(job)


def _run_pool(job: DemoJob, tally: _Tally, workers: int) -> tuple:
    """Attempts in `workers` worker processes, every worker kept busy; returns the job's meta."""
    import concurrent.futures as cf

    max_attempts = tally.max_attempts
    # One thread per worker: the workers are the parallelism (each worker takes this environment).
    saved = {k: os.environ.get(k) for k in THREAD_VARS}
    os.environ.update({k: "1" for k in THREAD_VARS})
    ex = process_pool(workers, initializer=_worker_init)
    try:
        meta_f = ex.submit(_job_meta, job)
        pending: set = set()
        nxt = 0
        for ok in tally.rounds():
            # Keep every worker busy (at most workers - 1 attempts run past the target).
            while len(pending) < workers and nxt < max_attempts:
                pending.add(ex.submit(_run_attempt, job, nxt))
                nxt += 1
            if not pending:
                tally.check_rate(max_attempts, ok)
                break
            finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for f in finished:
                a, ep, idx = f.result()
                tally.results[a] = (ep, idx)
            tally.show()
        return meta_f.result()
    finally:
        _stop_pool(ex)
        for var, v in saved.items():
            if v is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = v


def run_attempts(job: DemoJob, n: int, max_attempts: int, workers: int, min_success_rate: float, bar,
                 what: tuple) -> tuple[dict[int, tuple[Episode | None, int | None]], tuple, int]:
    """Attempts 0, 1, ... until the first `n` in attempt order include `n` successes (raising
    DemoGenerationError when the success rate is too low or `max_attempts` run out). `what`:
    (suite, task, dart_sigma) for that error. Returns (attempt -> (episode or None, benchmark init
    index or None), the job's meta (task name, language, benchmark init states, demo meta, coverage
    reason), the number of attempts in the finished prefix)."""
    tally = _Tally(n, max_attempts, min_success_rate, bar, what)
    here = workers == 1 and not job.images  # image envs render in worker processes, even one (see default_demo_workers)
    try:
        meta_t = _run_here(job, tally) if here else _run_pool(job, tally, workers)
    finally:
        if here:
            env = _WORKER.pop("env", None)
            _WORKER.clear()
            if env is not None:
                env.close()
    k, _, _ = tally.prefix_state()
    return tally.results, meta_t, k
