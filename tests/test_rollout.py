"""The closed-loop runner: per-episode reproducibility, the env cache and the warm pool, batched
policy calls, and init-state bookkeeping. Real simulator on small budgets (marked `sim`).

The reproducibility tests use a tiny diffusion policy trained for a few seconds on the scripted
expert's demos: its sampling noise is what used to make outcomes depend on the worker count.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from ablation.builtin_policies import ZeroPolicy, native_codec
from ablation.rollout_episode import _with_history, episode_generator, episode_seed
from ablation.rollout_policy import ActionChunk, RolloutPolicy
from ablation.rollout_pool import run_rollouts

pytestmark = pytest.mark.sim

SUITE, TASK = "libero_object", 0
TINY = ["model.size=tiny", "train.batch_size=16", "train.warmup_steps=5", "train.log_every=50",
        "train.eval_every=1000", "train.checkpoint_every=1000", "train.num_threads=1", "data.action_chunk=8",
        "train.steps=150", "train.lr=3e-3"]
SHORT = dict(replan_every=4, max_steps=40, seed=0)  # 10 policy calls per episode


# ----------------------------------------------------------------------------- helpers (picklable)

class BatchPolicy(RolloutPolicy):
    """Zero actions through `act_batch`; kills its process (os._exit) or raises when the batch holds
    episode `crash_on` / `raise_on` (recognised by its generator's seed, the only per-episode input)."""

    def __init__(self, crash_on: int = -1, raise_on: int = -1, seed: int = 0):
        self.codec = native_codec()
        self.obs_history = 1
        self.crash_seed = episode_seed(seed, crash_on) if crash_on >= 0 else None
        self.raise_seed = episode_seed(seed, raise_on) if raise_on >= 0 else None
        self.batch_sizes: list[int] = []

    batched = True

    def act(self, window, generator=None):
        return self.act_batch([window], [generator])[0]

    def act_batch(self, windows, generators):
        seeds = {g.initial_seed() for g in generators}
        if self.crash_seed in seeds:
            os._exit(3)
        if self.raise_seed in seeds:
            raise RuntimeError("policy exploded")
        self.batch_sizes.append(len(windows))
        return [ActionChunk(np.zeros((4, 7)), self.codec) for _ in windows]


def _same_episode(a, b) -> None:
    assert (a.episode, a.init_state, a.success, a.steps, a.error) == (b.episode, b.init_state, b.success, b.steps, b.error)
    assert a.action_mean == b.action_mean and a.action_std == b.action_std  # bit for bit
    assert a.max_pos_step_m == b.max_pos_step_m


@pytest.fixture(scope="module")
def checkpoint(expert_demo_file, tmp_path_factory) -> str:
    from ablation.spec import resolve_spec, spec_path
    from ablation.train import train

    spec = resolve_spec(spec_path("fix_minmax"), TINY)
    return str(train(spec, expert_demo_file, tmp_path_factory.mktemp("tiny"), progress=False).checkpoint_dir)


@pytest.fixture(scope="module")
def pool2():
    """This process's shared pool of 2 rollout workers (rollout_pool.shared_pool, the one the plan's and
    the tuner's runs use), for every pool test of this module that does not kill a worker: each pool
    start costs its workers' imports and env builds (~10 CPU-s a worker on a busy core). Called, it gives
    the live pool (started again if a test closed it)."""
    from ablation.rollout_pool import close_shared_pools, shared_pool

    close_shared_pools()
    yield lambda: shared_pool(2)
    close_shared_pools()


def _factory(checkpoint: str):
    import functools

    from ablation.bundle_policy import load_rollout_policy

    return functools.partial(load_rollout_policy, checkpoint)


# ----------------------------------------------------------------------------- reproducibility

def test_outcomes_do_not_depend_on_workers_or_earlier_episodes(checkpoint, pool2):
    fac = _factory(checkpoint)
    serial = run_rollouts(fac, SUITE, TASK, [0, 1, 2], **SHORT)
    parallel = run_rollouts(fac, SUITE, TASK, [0, 1, 2], pool=pool2(), **SHORT)  # (a pool for one call: test_sim)
    alone = run_rollouts(fac, SUITE, TASK, [2, 1], **SHORT)  # other order, no episode 0 before them
    assert serial.workers == 1 and parallel.workers == 2
    assert all(e.error is None and e.steps == 40 for e in serial.episodes)
    for a, b in zip(serial.episodes, parallel.episodes):
        _same_episode(a, b)
    by_ep = {e.episode: e for e in alone.episodes}
    for e in serial.episodes[1:]:
        _same_episode(e, by_ep[e.episode])
    # the run seed does reach the sampler: another seed, other noise, other actions
    other = run_rollouts(fac, SUITE, TASK, [1], **{**SHORT, "seed": 1})
    assert other.episodes[0].action_mean != serial.episodes[1].action_mean


# ----------------------------------------------------------------------------- batched policy calls

def test_act_batch_rows_match_act_within_float_rounding(checkpoint):
    from ablation.bundle import load_policy
    from ablation.sim.env import make_env

    policy = load_policy(checkpoint)
    with make_env(SUITE, TASK) as env:
        windows = []
        for i, push in enumerate([[0.3, 0, 0], [0, -0.4, 0], [0, 0, 0.5], [-0.2, 0.2, 0]]):
            obs = env.reset_to(env.init_states[i])
            for _ in range(3):
                obs, _ = env.step(np.array([*push, 0, 0, 0, -1.0]))
            windows.append([_with_history(obs, [-1.0] * 3, 3)] * policy.obs_history)
    gens = lambda ids: [episode_generator(0, i) for i in ids]  # noqa: E731
    alone = [policy.act(w, g) for w, g in zip(windows, gens(range(4)))]
    batch = policy.act_batch(windows, gens(range(4)))
    mates = policy.act_batch([windows[0], windows[3]], gens([0, 3]))  # other batch-mates, other size
    diffs = [np.abs(a - b).max() for a, b in zip(alone, batch)] + [np.abs(alone[0] - mates[0]).max(),
                                                                   np.abs(alone[3] - mates[1]).max()]
    print(f"max |act_batch - act| = {max(diffs):.2e}")
    assert max(diffs) < 1e-5
    # each row's noise is its own: same window, another episode's generator -> another chunk
    other = policy.act_batch([windows[0]], gens([7]))[0]
    assert np.abs(other - alone[0]).max() > 1e-3


def test_batched_lockstep_runs_each_episode_once_and_reproducibly(checkpoint):
    fac = _factory(checkpoint)
    a = run_rollouts(fac, SUITE, TASK, [0, 1, 2], batch=3, **SHORT)
    b = run_rollouts(fac, SUITE, TASK, [0, 1, 2], batch=3, **SHORT)
    assert [e.episode for e in a.episodes] == [0, 1, 2]
    for x, y in zip(a.episodes, b.episodes):
        assert x.error is None and x.steps == 40
        assert x.policy_calls == math.ceil(x.steps / SHORT["replan_every"])
        _same_episode(x, y)  # in one process the batches are formed the same way every time
    serial = run_rollouts(fac, SUITE, TASK, [0, 1, 2], **SHORT)
    drift = max(np.abs(np.subtract(x.action_mean, y.action_mean)).max() for x, y in zip(a.episodes, serial.episodes))
    print(f"batched vs serial closed loop: max |action mean difference| over 40 steps = {drift:.2e}")


def test_one_policy_call_per_step_for_the_whole_batch():
    from ablation.rollout import EpisodeRunner, RunConfig

    runner = EpisodeRunner(BatchPolicy, RunConfig(SUITE, TASK, replan_every=4, max_steps=8, wait_steps=0, batch=3))
    for e in (0, 1, 2):
        assert runner.start(e) is None
    ended = []
    while runner.active:
        ended += runner.step()
    assert sorted(r.episode for r in ended) == [0, 1, 2]
    assert runner.policy.batch_sizes == [3, 3]  # 8 steps, a chunk every 4: two calls, each for all three


# ----------------------------------------------------------------------------- failures in a batch

def test_a_raising_episode_fails_alone_in_a_batch():
    import functools

    r = run_rollouts(functools.partial(BatchPolicy, -1, 1), SUITE, TASK, [0, 1, 2], replan_every=4,
                     max_steps=6, wait_steps=0, batch=3)
    assert [e.error is None for e in r.episodes] == [True, False, True]
    assert "policy exploded" in r.episodes[1].error
    assert r.episodes[0].steps == r.episodes[2].steps == 6


def test_a_worker_killed_by_one_episode_of_its_batch_fails_only_that_episode():
    import functools

    from ablation.rollout_pool import RolloutPool

    with RolloutPool(1) as pool:
        r = pool.run(functools.partial(BatchPolicy, 1, -1), SUITE, TASK, [0, 1, 2], replan_every=4,
                     max_steps=6, wait_steps=0, batch=3)
        assert [e.episode for e in r.episodes] == [0, 1, 2]
        assert r.episodes[0].error is None and r.episodes[2].error is None
        assert r.episodes[0].steps == r.episodes[2].steps == 6
        assert "worker process died" in r.episodes[1].error
        # the pool replaced its worker and goes on
        again = pool.run(ZeroPolicy, SUITE, TASK, [3], replan_every=4, max_steps=3, wait_steps=0)
        assert again.episodes[0].error is None


# ----------------------------------------------------------------------------- warm envs and pool

def test_a_second_run_in_a_process_creates_no_env(monkeypatch):
    import ablation.sim.env as sim_env

    made = []
    real = sim_env.make_env
    monkeypatch.setattr(sim_env, "make_env", lambda *a, **k: made.append(a) or real(*a, **k))
    from ablation.rollout_envs import close_cached_envs

    close_cached_envs()
    run_rollouts(ZeroPolicy, SUITE, TASK, [0], replan_every=4, max_steps=2, wait_steps=0)
    run_rollouts(ZeroPolicy, SUITE, TASK, [1, 2], replan_every=4, max_steps=2, wait_steps=0)
    assert len(made) == 1


def test_pool_keeps_its_workers_and_busy_ones_take_episodes_up_to_their_quota_in_lockstep(pool2):
    """One pool through several runs: the same worker processes serve every run (warmed once), and with
    10 equal episodes, 2 workers, 4 in lockstep, each takes 5 (not 4 + 2 for one and 4 for the other,
    which would simulate 6 episodes' steps in one process while the other idles)."""
    from collections import Counter

    pool = pool2()  # the module's pool: its workers may have run episodes before; none was replaced
    assert pool.warm(SUITE, TASK, envs=4, policy_imports=False) > 0
    pids = sorted(w.proc.pid for w in pool._procs)
    r1 = pool.run(ZeroPolicy, SUITE, TASK, 3, replan_every=4, max_steps=3, wait_steps=0)
    r2 = pool.run(ZeroPolicy, SUITE, TASK, [5, 4], replan_every=4, max_steps=3, wait_steps=0)
    assert sorted(w.proc.pid for w in pool._procs) == pids
    assert [e.episode for e in r1.episodes] == [0, 1, 2] and [e.episode for e in r2.episodes] == [5, 4]
    assert all(e.error is None and e.steps == 3 for e in r1.episodes + r2.episodes)
    assert r1.workers == 2
    pool.run(BatchPolicy, SUITE, TASK, 2, replan_every=4, max_steps=2, wait_steps=0)  # both workers through a run
    # long enough that both workers are usually ready (policy built) before either runs out of work: an
    # idle worker rightly takes more, and that is not what this test is about. On a loaded machine (the
    # suite runs on two pytest workers) one worker can still be late to report ready, so the split is
    # measured up to three times; the quota must show in at least one, and every episode must finish.
    splits = []
    for _ in range(3):
        r = pool.run(BatchPolicy, SUITE, TASK, 10, replan_every=4, max_steps=30, wait_steps=0, batch=4)
        assert all(e.error is None and e.steps == 30 for e in r.episodes)
        splits.append(sorted(Counter(e.worker_pid for e in r.episodes).values()))
        if splits[-1] == [5, 5]:
            break
    assert sorted(w.proc.pid for w in pool._procs) == pids
    assert [5, 5] in splits, splits


def test_runs_with_several_workers_share_this_processs_warm_pool(checkpoint, pool2):
    """The plan's and the tuner's path (run.run_closed_loop): the pool is started once, kept by every
    later run in the process (same worker processes), outcomes as in the serial runner, and stopped by
    close_shared_pools (the plan and the tuner call it when they end)."""
    from pathlib import Path

    from ablation.bundle import load_policy
    from ablation.rollout_pool import _SHARED, close_shared_pools, shared_pool
    from ablation.run import run_closed_loop
    from ablation.spec import with_overrides

    spec = with_overrides(load_policy(checkpoint).spec, ["rollout.max_steps=40", "rollout.replan_every=4"])
    pool = pool2()  # the module's pool is this process's shared pool, which the plan's runs find
    try:
        a = run_closed_loop(Path(checkpoint), spec, 0, [0, 1], workers=2)
        pids = sorted(w.proc.pid for w in pool._procs)
        assert shared_pool(2) is pool and len(pids) == 2
        b = run_closed_loop(Path(checkpoint), spec, 0, [2, 3], workers=2, batch=2)
        assert shared_pool(2) is pool and sorted(w.proc.pid for w in pool._procs) == pids
        assert {e.worker_pid for e in a.episodes + b.episodes} <= set(pids)
        serial = run_closed_loop(Path(checkpoint), spec, 0, [0, 1, 2, 3], workers=1)
        for x, y in zip(a.episodes + b.episodes, serial.episodes):
            assert x.error is None and (x.episode, x.success, x.steps) == (y.episode, y.success, y.steps)
        for x, y in zip(a.episodes, serial.episodes[:2]):
            _same_episode(x, y)  # unbatched: bit for bit, in a pool worker or here
    finally:
        close_shared_pools()
    assert not _SHARED and all(not w.proc.is_alive() for w in pool._procs)


# ----------------------------------------------------------------------------- init states

def test_explicit_init_states_are_recorded_and_never_repeated():
    r = run_rollouts(ZeroPolicy, SUITE, TASK, [4, 2], replan_every=4, max_steps=2, wait_steps=0)
    assert [(e.episode, e.init_state) for e in r.episodes] == [(4, 4), (2, 2)]
    with pytest.raises(ValueError, match="repeat an init state"):
        run_rollouts(ZeroPolicy, SUITE, TASK, [1, 1], replan_every=4)
    bad = run_rollouts(ZeroPolicy, SUITE, TASK, [50], replan_every=4, max_steps=2)
    assert "has 50 init states" in bad.episodes[0].error
