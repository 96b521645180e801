"""A warm pool of rollout worker processes that can live for a whole plan or tuning study, and
`run_rollouts`, which runs a call's episodes here, in a pool of its own or in a warm pool.

Each worker pays its start-up (imports, ~4 s per LIBERO env) once: it keeps its envs per (suite,
task, images, image_size) between runs, and is fed runs (a policy factory + RunConfig) and then
episodes, one message each, so a fast worker takes more episodes than a slow one.

    with RolloutPool(workers=2) as pool:
        pool.warm("libero_object", 0)        # optional: pay imports and env creation now
        r = pool.run(factory, "libero_object", 0, range(10), replan_every=8, seed=0)   # RolloutResult

A worker steps up to `batch` episodes in lockstep when the policy is `batched`. Its episodes are
simulated one after another, so a worker that holds more episodes than another costs wall time the
batched policy call does not win back: a busy worker takes new episodes only up to its quota
(ceil(episodes / workers)); one with nothing in flight always gets the next (episodes that end early
rebalance the rest). A worker that dies fails only its episode: when it had several in flight, they
are run again one at a time (an episode's outcome does not depend on its batch-mates), and the one
that kills its worker alone is recorded as failed.

`shared_pool(n)` is this process's pool of n workers, started on first use and kept for every later
run (a plan's runs and looks, a tuning study's trials) until `close_shared_pools()` or exit: the
plan and the tuner use it whenever a run asks for more than one rollout worker.

Messages, parent -> worker: ("run", run_id, factory, cfg), ("warm", key, n), ("episode", e), None (quit);
worker -> parent: ("ready", run_id, capacity), ("warmed",), ("record", EpisodeRecord).
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Callable, Iterable

from .rollout import EpisodeRunner, run_here
from .rollout_envs import close_cached_envs, warm_envs
from .rollout_episode import DEFAULT_WAIT_STEPS, RunConfig
from .rollout_policy import RolloutPolicy
from .rollout_records import EpisodeRecord, RolloutResult
from .worker_procs import adopt, parent_env, worker_context

# A pool that loses this many workers in a row without any episode ending gives up on the run
# (e.g. a policy factory that kills its process): the remaining episodes fail instead of looping.
MAX_DEATHS_WITHOUT_PROGRESS = 3


def _worker_main(conn, env: dict[str, str]) -> None:
    adopt(env)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)  # one core per worker: the workers are the parallelism
    except Exception:
        pass
    runner: EpisodeRunner | None = None
    queue: deque[int] = deque()
    try:
        while True:
            busy = runner is not None and (queue or runner.active)
            if not busy or conn.poll():
                msg = conn.recv()
                if msg is None:
                    break
                if msg[0] == "run":
                    runner, queue = EpisodeRunner(msg[2], msg[3]), deque()
                    conn.send(("ready", msg[1], runner.capacity))
                elif msg[0] == "warm":
                    warm_envs(*msg[1], n=msg[2])
                    if msg[3]:  # the policy stack's imports (torch, diffusers: seconds), paid now, not by a run
                        import ablation.bundle_policy  # noqa: F401
                    conn.send(("warmed",))
                elif msg[0] == "episode":
                    queue.append(msg[1])
                continue
            while queue and runner.free():
                rec = runner.start(queue.popleft())
                if rec is not None:
                    conn.send(("record", rec))
            for rec in runner.step():
                conn.send(("record", rec))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        close_cached_envs()


@dataclass(eq=False)
class _Worker:
    proc: mp.Process
    conn: object
    capacity: int | None = None          # None until the worker has built the run's policy
    inflight: set[int] = field(default_factory=set)
    assigned: int = 0                    # episodes of the current run sent to it
    alone: bool = False                  # running a suspect episode that must have the worker to itself


class RolloutPool:
    """`workers` rollout processes, started once and reused by every `run` until `close()`."""

    def __init__(self, workers: int = 2):
        from .sim.libero_setup import ensure_libero

        ensure_libero()  # env vars (config path, render backend): the workers take this environment
        self.workers = max(1, int(workers))
        self._ctx = worker_context()
        self._procs: list[_Worker] = []
        self._runs = 0  # run ids: a worker left idle by a run may still owe its "ready"
        self._fill()

    # ------------------------------------------------------------------ lifecycle
    def _fill(self) -> None:
        while len(self._procs) < self.workers:
            parent, child = self._ctx.Pipe()
            p = self._ctx.Process(target=_worker_main, args=(child, parent_env()), daemon=True)
            p.start()
            child.close()
            self._procs.append(_Worker(p, parent))

    def _drop(self, w: _Worker) -> None:
        self._procs.remove(w)
        if w.proc.is_alive():
            w.proc.terminate()
        w.proc.join(timeout=5)
        w.conn.close()

    def close(self) -> None:
        for w in self._procs:
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in list(self._procs):
            w.proc.join(timeout=10)
            self._drop(w)

    def __enter__(self) -> "RolloutPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def warm(self, suite: str, task: int, images: bool = False, image_size: int = 128, envs: int = 1,
             policy_imports: bool = True) -> float:
        """Have every worker finish its imports (the diffusion policy's too, unless told not to) and
        hold `envs` envs for this task; returns seconds."""
        t0 = time.perf_counter()
        self._fill()
        waiting = []
        for w in self._procs:
            try:
                w.conn.send(("warm", (suite, int(task), bool(images), int(image_size)), int(envs),
                             bool(policy_imports)))
                waiting.append(w)
            except OSError:
                pass
        for w in waiting:
            try:
                while w.conn.recv()[0] != "warmed":
                    pass
            except (EOFError, OSError):
                pass  # a dead worker is replaced by the next run
        return time.perf_counter() - t0

    # ------------------------------------------------------------------ runs
    def run(self, policy_factory: Callable, suite: str, task: int, episodes, replan_every: int, *,
            max_steps: int | None = None, images: bool = False, image_size: int = 128, videos=(),
            video_dir=None, wait_steps: int = DEFAULT_WAIT_STEPS, seed: int = 0, batch: int = 1, fast: bool = True,
            progress: Callable[[EpisodeRecord], None] | None = None) -> RolloutResult:
        """`run_rollouts` in this pool (same arguments and meaning)."""
        return run_rollouts(policy_factory, suite, task, episodes, replan_every, videos=videos,
                            video_dir=video_dir, max_steps=max_steps, images=images, image_size=image_size,
                            wait_steps=wait_steps, seed=seed, batch=batch, fast=fast, pool=self, progress=progress)

    def run_config(self, policy_factory: Callable, cfg: RunConfig, eps: list[int],
                   progress: Callable[[EpisodeRecord], None] | None = None) -> dict[int, EpisodeRecord]:
        """Run the episodes across the workers; records by episode index."""
        self._runs += 1
        run = _PoolRun(self, self._runs, policy_factory, cfg, eps, progress)
        self._fill()
        try:
            for w in self._procs:
                run.begin(w)
            while len(run.records) < len(eps):
                ready = set(mp_wait([w.conn for w in self._procs] + [w.proc.sentinel for w in self._procs]))
                for w in list(self._procs):
                    if w.conn in ready or w.proc.sentinel in ready:
                        run.serve(w, w.proc.sentinel in ready)
        except BaseException:
            # An interrupted run leaves workers busy with its episodes: replace them.
            for w in list(self._procs):
                if w.inflight:
                    self._drop(w)
            raise
        return run.records


class _PoolRun:
    """One run_config call's bookkeeping: which episodes wait, which worker holds which, the records."""

    def __init__(self, pool: RolloutPool, run_id: int, policy_factory: Callable, cfg: RunConfig, eps: list[int],
                 progress: Callable[[EpisodeRecord], None] | None):
        self.pool, self.run_id, self.policy_factory, self.cfg, self.progress = pool, run_id, policy_factory, cfg, progress
        self.pending: deque[int] = deque(eps)
        self.suspects: set[int] = set()  # episodes that were in flight on a worker that died
        self.records: dict[int, EpisodeRecord] = {}
        self.quota = -(-len(eps) // max(1, pool.workers))  # episodes per worker while it is busy
        self.deaths_in_a_row = 0

    def finish(self, rec: EpisodeRecord) -> None:
        self.records[rec.episode] = rec
        self.deaths_in_a_row = 0
        if self.progress:
            self.progress(rec)

    def begin(self, w: _Worker) -> None:
        w.capacity, w.inflight, w.alone, w.assigned = None, set(), False, 0
        try:
            w.conn.send(("run", self.run_id, self.policy_factory, self.cfg))
        except OSError:
            pass  # it died while idle: the loop sees its sentinel and replaces it

    def feed(self, w: _Worker) -> None:
        while (self.pending and w.capacity and len(w.inflight) < w.capacity and not w.alone
               and (w.assigned < self.quota or not w.inflight)):
            e = self.pending[0]
            if e in self.suspects and w.inflight:
                return
            w.conn.send(("episode", e))
            self.pending.popleft()
            w.inflight.add(e)
            w.assigned += 1
            w.alone = e in self.suspects

    def serve(self, w: _Worker, sentinel_ready: bool) -> None:
        """Read what worker `w` sent, give it more episodes; replace it if it died."""
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                if msg[0] == "ready" and msg[1] == self.run_id:
                    w.capacity = msg[2]
                elif msg[0] == "record":
                    w.inflight.discard(msg[1].episode)
                    w.alone = w.alone and bool(w.inflight)
                    self.finish(msg[1])
            self.feed(w)
        except (EOFError, OSError):
            self.died(w)
            return
        if sentinel_ready and not w.proc.is_alive():
            self.died(w)

    def died(self, w: _Worker) -> None:
        code = w.proc.exitcode
        self.pool._drop(w)
        self.deaths_in_a_row += 1
        lost = sorted(w.inflight)
        if len(lost) == 1:
            self.finish(EpisodeRecord(episode=lost[0], init_state=None,
                                      error=f"worker process died (exit code {code}) during this episode"))
        else:  # one of them killed it: run each alone to find which
            self.suspects.update(lost)
            self.pending.extendleft(reversed(lost))
        if self.deaths_in_a_row > MAX_DEATHS_WITHOUT_PROGRESS:
            while self.pending:
                self.finish(EpisodeRecord(episode=self.pending.popleft(), error=f"worker processes keep dying (last "
                                          f"exit code {code}) before finishing an episode"))
            return
        if self.pending:
            self.pool._fill()
            self.begin(self.pool._procs[-1])


# ----------------------------------------------------------------------------- this process's pool

_SHARED: dict[int, RolloutPool] = {}


def run_rollouts(policy_factory: Callable[[], RolloutPolicy], suite: str, task: int,
                 episodes: int | Iterable[int], replan_every: int, workers: int = 1,
                 videos: Iterable[int] = (), video_dir: str | Path | None = None,
                 max_steps: int | None = None, images: bool = False, *, image_size: int = 128,
                 wait_steps: int = DEFAULT_WAIT_STEPS, seed: int = 0, batch: int = 1, fast: bool = True,
                 pool: RolloutPool | None = None,
                 progress: Callable[[EpisodeRecord], None] | None = None) -> RolloutResult:
    """Run episodes and collect per-episode records, in the order of `episodes`.

    episodes: an int n means init states 0..n-1; else the init-state indices to run (episode index ==
    init-state index), each at most once.
    policy_factory: picklable zero-arg callable returning a RolloutPolicy (ablation/rollout_policy.py),
    called once per run in each process that runs episodes.
    workers: 1 runs here (envs are cached in this process, so the next call pays no env creation);
    N > 1 starts a RolloutPool of N processes for this call only. `pool`: run in that warm pool instead
    (`workers` is then ignored).
    batch: episodes one process steps in lockstep, with one policy call per step for all of them
    (`batched` policies only; 1 = one episode at a time).
    fast: cameras-off envs take the fast env step (spec `sim.fast`; the same physics bit for bit);
    False: robosuite's own step.
    videos: episode indices to record as mp4 (agentview, upright) into video_dir; those episodes
    run in an env with cameras on (others keep the fast low-dim env unless images=True).
    """
    from .sim.libero_setup import check_task, ensure_libero

    if replan_every < 1:
        raise ValueError("replan_every must be >= 1")
    if batch < 1:
        raise ValueError("batch must be >= 1")
    ensure_libero()  # env vars (config path, render backend) are inherited by spawned workers
    check_task(suite, task)
    eps = list(range(episodes)) if isinstance(episodes, int) else [int(e) for e in episodes]
    if len(set(eps)) != len(eps):
        raise ValueError(f"episodes repeat an init state: {eps}")
    videos = tuple(int(v) for v in videos)
    if videos and video_dir is None:
        raise ValueError("videos requested but video_dir is None")
    cfg = RunConfig(suite, int(task), int(replan_every), max_steps, bool(images), int(image_size), videos,
                    str(video_dir) if video_dir is not None else None, int(wait_steps), int(seed), int(batch),
                    bool(fast))
    t0 = time.perf_counter()
    if pool is not None:
        records, n_workers = pool.run_config(policy_factory, cfg, eps, progress), pool.workers
    elif min(int(workers), len(eps)) > 1:
        n_workers = min(int(workers), len(eps))
        with RolloutPool(n_workers) as tmp:
            records = tmp.run_config(policy_factory, cfg, eps, progress)
    else:
        records, n_workers = run_here(policy_factory, cfg, eps, progress), 1
    return RolloutResult(suite, task, [records[e] for e in eps], replan_every, n_workers,
                         time.perf_counter() - t0)


def shared_pool(workers: int) -> RolloutPool:
    """This process's warm pool of `workers` rollout processes: started on the first call, reused by
    every later one (another run of the plan, a later look, the next trial), so each worker pays its
    imports and env creation once. A pool of another size is started beside it."""
    n = max(1, int(workers))
    if n not in _SHARED:
        _SHARED[n] = RolloutPool(n)
    return _SHARED[n]


def close_shared_pools() -> None:
    """Stop the pools `shared_pool` started (the plan and the tuner call it when they end)."""
    while _SHARED:
        _SHARED.popitem()[1].close()


atexit.register(close_shared_pools)
