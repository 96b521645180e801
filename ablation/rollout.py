"""The episode engine: runs a RolloutPolicy's episodes in LIBERO in this process, several in lockstep.

Protocol (OpenVLA / openpi / LeRobot): episode i starts from init state i; 10 wait steps with
[0,0,0,0,0,0,-1]; then the policy for at most the suite's max steps; success = env done.

What one episode does each step: ablation/rollout_episode.py.

The engine calls only the RolloutPolicy contract (ablation/rollout_policy.py). Batching: one process
steps up to `batch` episodes (each on its own env) in lockstep and asks the policy once per step for
all episodes that need a chunk, `policy.act_batch(windows, generators)`, when `policy.batched`;
other policies run one episode at a time.

Determinism: every episode draws its sampling noise from its own torch.Generator seeded with
(run seed, init-state index), seeds numpy and torch's global RNGs with the same pair and resets the
policy; every env reset rebuilds the sim. So an episode's outcome depends neither on the number of
workers, nor on the episodes run before it, nor on its batch-mates (the last up to float rounding
of batched matmuls; tests/test_rollout.py measures it).

Records and summaries: ablation/rollout_records.py. The env cache: ablation/rollout_envs.py. Worker
processes, the warm pool and `run_rollouts`: ablation/rollout_pool.py.
"""
from __future__ import annotations

import contextlib
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Callable

from .rollout_envs import close_env, keep_env, take_env
from .rollout_episode import Episode, RunConfig
from .rollout_policy import RolloutPolicy, Window
from .rollout_records import EpisodeRecord, RolloutResult, wilson_interval  # noqa: F401  (their old home)
from .sim.env import freeze_long_lived_objects


def _describe(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


# ----------------------------------------------------------------------------- episodes in lockstep

def build_policy_checked(policy_factory: Callable[[], RolloutPolicy]) -> RolloutPolicy:
    """Call the factory; anything but a RolloutPolicy is refused with what to do instead."""
    policy = policy_factory()
    if not isinstance(policy, RolloutPolicy):
        raise TypeError(f"the policy factory returned {type(policy).__name__}, not a RolloutPolicy "
                        "(ablation/rollout_policy.py); wrap a trained bundle with "
                        "ablation.bundle_policy.load_rollout_policy")
    return policy


class EpisodeRunner:
    """Runs one rollout run's episodes in this process, up to `capacity` of them in lockstep.

    Feed it with `start(episode)` while `free()`, and call `step()` while `active`; every episode
    ends in exactly one record (an exception fails only the episode it belongs to)."""

    def __init__(self, policy_factory: Callable[[], RolloutPolicy], cfg: RunConfig):
        self.cfg = cfg
        self.policy: RolloutPolicy | None = None
        self.policy_error = None
        try:
            self.policy = build_policy_checked(policy_factory)
        except Exception as e:  # every episode of the run fails with this reason
            self.policy_error = f"the policy could not be built: {_describe(e)}"
        batching = self.policy is not None and self.policy.batched
        self.capacity = max(1, int(cfg.batch)) if batching else 1
        self.active: list[Episode] = []
        freeze_long_lived_objects()  # every hard reset of the run ends in a gc.collect(): make it cheap

    def free(self) -> bool:
        return len(self.active) < self.capacity

    def start(self, episode: int) -> EpisodeRecord | None:
        """Begin an episode; returns its record at once if it could not start."""
        if self.policy_error:
            return EpisodeRecord(episode=episode, error=self.policy_error)
        t0 = time.perf_counter()
        key, env = self.cfg.env_key(episode), None
        try:
            env = take_env(key)
            env.fast = self.cfg.fast  # a cached env is shared by runs of either setting
            self.policy.attach_env(env)
            ep = Episode(self.policy, env, episode, self.cfg)
        except Exception as e:
            close_env(env)
            return EpisodeRecord(episode=episode, error=_describe(e), wall_s=time.perf_counter() - t0)
        ep.env_key = key
        self.active.append(ep)
        return None

    def step(self) -> list[EpisodeRecord]:
        """One lockstep step: one policy call for the episodes whose chunk is used up, then one env
        step for every active episode. Returns the records of the episodes that ended."""
        ended: list[EpisodeRecord] = []
        due = [(ep, w) for ep in self.active if (w := ep.window()) is not None]
        if due:
            for ep, err in self._act(due):
                ended.append(self._end(ep, err))
        for ep in list(self.active):
            try:
                over = ep.step()
            except Exception as e:
                ended.append(self._end(ep, e))
                continue
            if over:
                ended.append(self._end(ep))
        return ended

    def _act(self, due: list[tuple[Episode, Window]]) -> list[tuple[Episode, Exception]]:
        """Give each episode in `due` its next chunk; returns the episodes that got none, with why."""
        gens = [ep.generator if self.policy.batched else None for ep, _ in due]
        saved = [g.get_state() for g in gens if g is not None]
        t0 = time.perf_counter()
        try:
            chunks = list(self.policy.act_batch([w for _, w in due], gens))
            if len(chunks) != len(due):
                raise ValueError(f"act_batch returned {len(chunks)} chunks for {len(due)} windows")
        except Exception as e:
            if len(due) == 1:
                return [(due[0][0], e)]
            # Which episode broke the batched call is unknown: ask again one at a time, from the same
            # noise, so the episodes that are fine go on as if nothing had happened.
            for g, s in zip([g for g in gens if g is not None], saved):
                g.set_state(s)
            return [f for d in due for f in self._act([d])]
        share_s = (time.perf_counter() - t0) / len(due)
        failed = []
        for (ep, _), chunk in zip(due, chunks):
            try:
                ep.set_chunk(chunk, share_s)
            except Exception as e:
                failed.append((ep, e))
        return failed

    def _end(self, ep: Episode, error: Exception | None = None) -> EpisodeRecord:
        self.active.remove(ep)
        if error is None:
            try:
                rec = ep.record()
            except Exception as e:
                error = e
        if error is not None:
            close_env(ep.env)
            rec = ep.rec
            rec.success, rec.steps, rec.error = False, len(ep.executed), _describe(error)
        else:
            keep_env(ep.env_key, ep.env)
        return rec

    def close(self) -> None:
        """Fail nothing, keep nothing: close the envs of episodes still running (an interrupted run)."""
        for ep in self.active:
            close_env(ep.env)
        self.active.clear()


# ----------------------------------------------------------------------------- runs in this process

@contextlib.contextmanager
def policy_threads(n: int = 1):
    """torch's intra-op threads set to `n` for the duration (restored after). Rollouts compute their
    policies on one thread wherever they run, as the pool's workers do: some CPUs' kernels split
    a matmul differently on 2 threads (seen on Zen 5 with the tiny DiT: episode action means 6e-6
    apart, serial on 2 threads vs a 1-thread worker), which would make an episode's outcome depend
    on the process that ran it."""
    try:
        import torch  # a policy without torch (the scripted expert) has nothing to pin
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def run_here(policy_factory: Callable[[], RolloutPolicy], cfg: RunConfig, eps: list[int],
             progress: Callable[[EpisodeRecord], None] | None = None) -> dict[int, EpisodeRecord]:
    """Run the episodes in this process (up to cfg.batch in lockstep), the policy on one thread
    (`policy_threads`); records by episode index."""
    with policy_threads(1):
        runner = EpisodeRunner(policy_factory, cfg)
        pending, records = deque(eps), {}

        def done(rec: EpisodeRecord) -> None:
            records[rec.episode] = rec
            if progress:
                progress(rec)

        try:
            while pending or runner.active:
                while pending and runner.free():
                    rec = runner.start(pending.popleft())
                    if rec is not None:
                        done(rec)
                for rec in runner.step():
                    done(rec)
        finally:
            runner.close()
        return records
