"""Closed-loop rollouts of a policy in LIBERO: the episode engine, the in-process runner, built-in policies.

Protocol (OpenVLA / openpi / LeRobot): episode i starts from init state i; 10 wait steps with
[0,0,0,0,0,0,-1]; then the policy for at most the suite's max steps; success = env done.

Each policy step an episode
  1. appends the current obs (LIBERO names, plus `gripper_history` = gripper_history_features(the
     gripper commands executed so far) and `t` = the policy step index) to its history;
  2. when its current chunk is used up (every `replan_every` steps), gets a chunk (H, W) in MODEL
     space for its last To obs dicts (padded at the start by repeating the first);
  3. decodes the next chunk row with `policy.codec.to_env(row, ee_pos, ee_rotmat)` using the CURRENT
     eef pose (absolute-pose codecs need it), executes the clipped action, and records clip and
     out-of-range statistics of the raw decoded action.

Batching: one process steps up to `batch` episodes (each on its own env) in lockstep and asks the
policy once per step for all episodes that need a chunk, `policy.act_batch(windows, generators)`
-> list of chunks. Only policies that define `act_batch` are batched; they must keep no per-episode
state and draw all randomness from the generators they are given. Other policies run one episode at
a time through `policy.act(window)`.

Determinism: every episode draws its sampling noise from its own torch.Generator seeded with
(run seed, init-state index), seeds numpy and torch's global RNGs with the same pair and resets the
policy; every env reset rebuilds the sim. So an episode's outcome depends neither on the number of
workers, nor on the episodes run before it, nor on its batch-mates (the last up to float rounding
of batched matmuls; tests/test_rollout.py measures it).
Optional policy hooks: `reset(episode_index)`, `attach_env(env)` (privileged policies),
`init_state_for(episode_index)` (replay of recorded demos), `wait_steps` (int), `act_batch`.

Worker processes, the warm pool that outlives one evaluation, and `run_rollouts` (here or in a pool):
`ablation/rollout_pool.py`.
"""
from __future__ import annotations

import atexit
import contextlib
import math
import os
import sys
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from . import rotation as R
from .codec import ActionCodec
from .data import gripper_history_features
from .spec import CodecSpec

WAIT_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
DEFAULT_WAIT_STEPS = 10


@runtime_checkable
class Policy(Protocol):
    codec: ActionCodec
    obs_history: int

    def act(self, obs_history: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Observation history (oldest first, length obs_history) -> action chunk (H, W), model space."""
        ...


# ----------------------------------------------------------------------------- records

@dataclass
class EpisodeRecord:
    episode: int
    init_state: int | None = None  # index into the task's init states (None: the policy brought its own)
    success: bool = False
    steps: int = 0                 # policy steps (after the wait)
    clip_fraction: float = 0.0     # fraction of executed arm dims that lay outside [-1, 1]
    max_excess: float = 0.0        # worst |raw| - 1 over executed arm dims (0: nothing clipped)
    max_pos_step_m: float = 0.0    # largest commanded position step, metres (before clipping)
    pos_step_ratio: float | None = None  # max_pos_step_m / training absmax (codec.stats["pos_step_m"])
    action_mean: list[float] = field(default_factory=list)  # executed env actions, per dim
    action_std: list[float] = field(default_factory=list)
    action_min: list[float] = field(default_factory=list)
    action_max: list[float] = field(default_factory=list)
    # Seconds of this episode's own work (its reset and env steps, its share of batched policy calls):
    # they add up over episodes that ran in lockstep in one process.
    policy_calls: int = 0          # chunks this episode got from the policy
    policy_s: float = 0.0
    env_s: float = 0.0
    wall_s: float = 0.0
    env_steps: int = 0             # including wait steps
    video: str | None = None
    error: str | None = None
    worker_pid: int = 0            # the process that simulated it (how a pool spread a run's episodes)


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class RolloutResult:
    suite: str
    task: int
    episodes: list[EpisodeRecord]
    replan_every: int
    workers: int
    wall_s: float

    @property
    def n(self) -> int:
        return len(self.episodes)

    @property
    def successes(self) -> int:
        return sum(e.success for e in self.episodes)

    @property
    def success_rate(self) -> float:
        return self.successes / self.n if self.n else 0.0

    @property
    def success_ci95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.n)

    @property
    def mean_clip_rate(self) -> float:
        ok = [e.clip_fraction for e in self.episodes if e.error is None]
        return float(np.mean(ok)) if ok else 0.0

    @property
    def max_out_of_range_ratio(self) -> float | None:
        r = [e.pos_step_ratio for e in self.episodes if e.pos_step_ratio is not None]
        return float(max(r)) if r else None

    @property
    def mean_length(self) -> float:
        ok = [e.steps for e in self.episodes if e.error is None]
        return float(np.mean(ok)) if ok else 0.0

    @property
    def env_steps(self) -> int:
        return int(sum(e.env_steps for e in self.episodes))

    @property
    def env_steps_per_s(self) -> float:
        return self.env_steps / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def policy_time_share(self) -> float:
        busy = sum(e.wall_s for e in self.episodes)
        return float(sum(e.policy_s for e in self.episodes) / busy) if busy > 0 else 0.0

    @property
    def errors(self) -> list[tuple[int, str]]:
        return [(e.episode, e.error) for e in self.episodes if e.error]

    def summary(self) -> dict:
        lo, hi = self.success_ci95
        return {
            "suite": self.suite, "task": self.task, "episodes": self.n, "successes": self.successes,
            "success_rate": self.success_rate, "success_ci95_low": lo, "success_ci95_high": hi,
            "mean_clip_rate": self.mean_clip_rate, "max_out_of_range_ratio": self.max_out_of_range_ratio,
            "mean_length": self.mean_length, "wall_s": self.wall_s, "env_steps": self.env_steps,
            "env_steps_per_s": self.env_steps_per_s, "policy_time_share": self.policy_time_share,
            "n_errors": len(self.errors), "replan_every": self.replan_every, "workers": self.workers,
        }

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "episodes": [asdict(e) for e in self.episodes]}

    def line(self) -> str:
        s = self.summary()
        ratio = "n/a" if s["max_out_of_range_ratio"] is None else f"{s['max_out_of_range_ratio']:.1f}x"
        return (f"{self.suite} task {self.task}: success {self.successes}/{self.n} = {self.success_rate:.0%} "
                f"(95% CI {s['success_ci95_low']:.0%}-{s['success_ci95_high']:.0%}), mean length "
                f"{self.mean_length:.0f}, clip rate {self.mean_clip_rate:.1%}, max pos step {ratio} of training "
                f"range, {self.env_steps_per_s:.0f} env steps/s, policy {self.policy_time_share:.0%} of time"
                + (f", {len(self.errors)} episode(s) crashed" if self.errors else ""))


# ----------------------------------------------------------------------------- seeds and envs

def episode_seed(seed: int, episode: int) -> int:
    """One 31-bit seed from (run seed, init-state index)."""
    return (int(seed) * 1_000_003 + int(episode)) % (2**31 - 1)


def episode_generator(seed: int, episode: int):
    """The torch.Generator (CPU) an episode draws its sampling noise from."""
    import torch

    return torch.Generator().manual_seed(episode_seed(seed, episode))


def _seed_everything(seed: int, episode: int) -> None:
    s = episode_seed(seed, episode)
    np.random.seed(s)
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(s)


def _describe(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


# Idle envs of this process per (suite, task, images, image_size). Creating one costs ~4 s on 2 cores,
# so a process that runs many evaluations (a pool worker, a plan's job process) builds each once.
# An env whose episode raised is closed, not kept (its sim may be in any state).
_IDLE_ENVS: dict[tuple, list] = {}


def _take_env(key: tuple):
    idle = _IDLE_ENVS.get(key)
    if idle:
        return idle.pop()
    from .sim.env import make_env

    suite, task, images, image_size = key
    # Made with robosuite's step; each run then sets env.fast from its RunConfig (one env serves both).
    return make_env(suite, task, images=images, image_size=image_size, fast=False)


def _keep_env(key: tuple, env) -> None:
    if not _IDLE_ENVS:  # close them before interpreter teardown, while their GL contexts can still go cleanly
        atexit.register(close_cached_envs)
    _IDLE_ENVS.setdefault(key, []).append(env)


def _close_env(env) -> None:
    if env is not None:
        try:
            env.close()
        except Exception:
            pass


def warm_envs(suite: str, task: int, images: bool = False, image_size: int = 128, n: int = 1) -> None:
    """Make sure this process holds n idle envs for (suite, task, images, image_size)."""
    key = (suite, int(task), bool(images), int(image_size))
    made = [_take_env(key) for _ in range(n)]
    for env in made:
        _keep_env(key, env)


def close_cached_envs() -> None:
    """Close every idle env this process keeps."""
    for envs in _IDLE_ENVS.values():
        for env in envs:
            _close_env(env)
    _IDLE_ENVS.clear()


# ----------------------------------------------------------------------------- one episode

@dataclass(frozen=True)
class RunConfig:
    """Everything about a rollout run except the policy (picklable: pool workers receive it)."""

    suite: str
    task: int
    replan_every: int
    max_steps: int | None = None
    images: bool = False
    image_size: int = 128
    videos: tuple[int, ...] = ()
    video_dir: str | None = None
    wait_steps: int = DEFAULT_WAIT_STEPS
    seed: int = 0
    batch: int = 1  # episodes one process steps in lockstep (policies with act_batch only)
    fast: bool = True  # the env's fast step (spec sim.fast; same physics, see ablation.sim.fast_step)

    def wants_video(self, episode: int) -> bool:
        return episode in self.videos and self.video_dir is not None

    def env_key(self, episode: int) -> tuple:
        # episodes recorded on video need cameras; the others keep the fast low-dim env
        return (self.suite, int(self.task), bool(self.images or self.wants_video(episode)), int(self.image_size))


def _with_history(obs: dict, grip_cmds: list[float], t: int) -> dict:
    o = dict(obs)
    o["gripper_history"] = gripper_history_features(grip_cmds)
    o["t"] = np.array([t], dtype=np.float64)
    return o


class _Episode:
    """One episode in progress on its own env: reset and wait steps on creation, then `window()` (the
    obs a policy call needs, when one is due), `set_chunk()`, and one env step per `step()`."""

    def __init__(self, policy, env, episode: int, cfg: RunConfig):
        t0 = time.perf_counter()
        self.policy, self.env, self.cfg = policy, env, cfg
        self.rec = EpisodeRecord(episode=episode, worker_pid=os.getpid())
        self._gen = None
        _seed_everything(cfg.seed, episode)
        if hasattr(policy, "reset"):
            policy.reset(episode)
        init = policy.init_state_for(episode) if hasattr(policy, "init_state_for") else None
        if init is None:
            if not 0 <= episode < len(env.init_states):
                raise IndexError(f"episode {episode}: the task has {len(env.init_states)} init states")
            init = env.init_states[episode]
            self.rec.init_state = episode
        self.codec: ActionCodec = policy.codec
        self.obs_history = max(1, int(getattr(policy, "obs_history", 1)))
        self.max_steps = int(cfg.max_steps or env.max_steps)
        stats = self.codec.stats if isinstance(self.codec.stats, dict) else {}
        self.ref_pos_step_m = stats.get("pos_step_m", {}).get("absmax")
        self.frames: list[np.ndarray] | None = [] if cfg.wants_video(episode) else None

        obs = env.reset_to(init)
        wait_steps = int(getattr(policy, "wait_steps", cfg.wait_steps))
        for _ in range(wait_steps):
            obs, _ = env.step(WAIT_ACTION)
        self.rec.env_steps = wait_steps
        self.obs = obs
        self._add_frame()
        self.grip_cmds: list[float] = []
        self.history = [_with_history(obs, self.grip_cmds, 0)]
        self.executed, self.clip_fr, self.excess, self.pos_steps = [], [], [], []
        self.chunk, self.ci = None, 0
        dt = time.perf_counter() - t0
        self.rec.env_s += dt
        self.rec.wall_s += dt

    @property
    def generator(self):
        if self._gen is None:
            self._gen = episode_generator(self.cfg.seed, self.rec.episode)
        return self._gen

    def window(self) -> list[dict] | None:
        """The last `obs_history` obs (the first repeated in front while short) when the current chunk
        is used up, i.e. when this episode needs a policy call before its next step; else None."""
        if self.chunk is not None and self.ci < min(self.cfg.replan_every, len(self.chunk)):
            return None
        w = self.history[-self.obs_history:]
        return [w[0]] * (self.obs_history - len(w)) + w

    def set_chunk(self, chunk, policy_s: float) -> None:
        self.rec.policy_calls += 1
        self.rec.policy_s += policy_s
        self.rec.wall_s += policy_s
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim == 1:
            chunk = chunk[None]
        if chunk.ndim != 2 or chunk.shape[0] == 0 or chunk.shape[1] != self.codec.width:
            raise ValueError(f"the policy returned a chunk of shape {chunk.shape}; expected (H>=1, {self.codec.width})")
        self.chunk, self.ci = chunk, 0

    def step(self) -> bool:
        """Execute the next row of the chunk; True when the episode is over (success or step budget)."""
        t0 = time.perf_counter()
        obs, t = self.obs, len(self.executed)
        ea = self.codec.to_env(self.chunk[self.ci:self.ci + 1], obs["ee_pos"], R.axis_angle_to_matrix(obs["ee_ori"]))
        self.ci += 1
        raw = ea.raw[0]
        if not np.all(np.isfinite(raw)):
            raise ValueError(f"step {t}: decoded action is not finite: {raw}")
        action = ea.clipped[0]
        self.clip_fr.append(ea.clip_fraction)
        self.excess.append(ea.max_excess)
        self.pos_steps.append(float(np.max(np.abs(ea.pos_step_m))))
        te = time.perf_counter()
        self.obs, done = self.env.step(action)
        self.rec.env_s += time.perf_counter() - te
        self.rec.env_steps += 1
        self.rec.success = bool(done)
        self.executed.append(action)
        self.grip_cmds.append(float(action[6]))
        self._add_frame()
        self.history.append(_with_history(self.obs, self.grip_cmds, t + 1))
        del self.history[:-self.obs_history]  # only the policy's window is ever read
        self.rec.wall_s += time.perf_counter() - t0
        return bool(done) or len(self.executed) >= self.max_steps

    def _add_frame(self) -> None:
        if self.frames is not None and "agentview_rgb" in self.obs:
            self.frames.append(self.obs["agentview_rgb"][::-1].copy())  # upright

    def record(self) -> EpisodeRecord:
        """The finished episode's record (writes its video, if one was asked for)."""
        rec = self.rec
        rec.steps = len(self.executed)
        if self.executed:
            ex = np.asarray(self.executed)
            rec.action_mean, rec.action_std = ex.mean(0).tolist(), ex.std(0).tolist()
            rec.action_min, rec.action_max = ex.min(0).tolist(), ex.max(0).tolist()
            rec.clip_fraction = float(np.mean(self.clip_fr))
            rec.max_excess = float(np.max(self.excess))
            rec.max_pos_step_m = float(np.max(self.pos_steps))
            if self.ref_pos_step_m:
                rec.pos_step_ratio = rec.max_pos_step_m / max(float(self.ref_pos_step_m), 1e-9)
        if self.frames:
            import imageio.v2 as imageio

            path = Path(self.cfg.video_dir) / f"episode_{rec.episode:03d}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            imageio.mimwrite(path, self.frames, fps=20, macro_block_size=1)
            rec.video = str(path)
        return rec


class EpisodeRunner:
    """Runs one rollout run's episodes in this process, up to `capacity` of them in lockstep.

    Feed it with `start(episode)` while `free()`, and call `step()` while `active`; every episode
    ends in exactly one record (an exception fails only the episode it belongs to)."""

    def __init__(self, policy_factory: Callable[[], Policy], cfg: RunConfig):
        self.cfg = cfg
        self.policy, self.policy_error = None, None
        try:
            self.policy = policy_factory()
        except Exception as e:  # every episode of the run fails with this reason
            self.policy_error = f"the policy could not be built: {_describe(e)}"
        batching = hasattr(self.policy, "act_batch")
        self.capacity = max(1, int(cfg.batch)) if batching else 1
        self.active: list[_Episode] = []
        from .sim.env import freeze_long_lived_objects

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
            env = _take_env(key)
            env.fast = self.cfg.fast  # a cached env is shared by runs of either setting
            if hasattr(self.policy, "attach_env"):
                self.policy.attach_env(env)
            ep = _Episode(self.policy, env, episode, self.cfg)
        except Exception as e:
            _close_env(env)
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

    def _act(self, due: list[tuple[_Episode, list[dict]]]) -> list[tuple[_Episode, Exception]]:
        """Give each episode in `due` its next chunk; returns the episodes that got none, with why."""
        batched = hasattr(self.policy, "act_batch")
        gens = [ep.generator for ep, _ in due] if batched else []
        saved = [g.get_state() for g in gens]
        t0 = time.perf_counter()
        try:
            if batched:
                chunks = list(self.policy.act_batch([w for _, w in due], gens))
            else:
                chunks = [self.policy.act(w) for _, w in due]
            if len(chunks) != len(due):
                raise ValueError(f"act_batch returned {len(chunks)} chunks for {len(due)} windows")
        except Exception as e:
            if len(due) == 1:
                return [(due[0][0], e)]
            # Which episode broke the batched call is unknown: ask again one at a time, from the same
            # noise, so the episodes that are fine go on as if nothing had happened.
            for g, s in zip(gens, saved):
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

    def _end(self, ep: _Episode, error: Exception | None = None) -> EpisodeRecord:
        self.active.remove(ep)
        if error is None:
            try:
                rec = ep.record()
            except Exception as e:
                error = e
        if error is not None:
            _close_env(ep.env)
            rec = ep.rec
            rec.success, rec.steps, rec.error = False, len(ep.executed), _describe(error)
        else:
            _keep_env(ep.env_key, ep.env)
        return rec

    def close(self) -> None:
        """Fail nothing, keep nothing: close the envs of episodes still running (an interrupted run)."""
        for ep in self.active:
            _close_env(ep.env)
        self.active.clear()


def run_episode(policy, env, episode: int, replan_every: int, max_steps: int | None = None,
                wait_steps: int = DEFAULT_WAIT_STEPS, seed: int = 0, video_path: str | None = None) -> EpisodeRecord:
    """Run one episode of `policy` on `env`; exceptions propagate (the caller records them)."""
    cfg = RunConfig(env.suite, env.task_id, replan_every, max_steps, wait_steps=wait_steps, seed=seed,
                    videos=(episode,) if video_path else (), video_dir=str(Path(video_path).parent) if video_path else None)
    ep = _Episode(policy, env, episode, cfg)
    while True:
        w = ep.window()
        if w is not None:
            tp = time.perf_counter()
            chunk = policy.act_batch([w], [ep.generator])[0] if hasattr(policy, "act_batch") else policy.act(w)
            ep.set_chunk(chunk, time.perf_counter() - tp)
        if ep.step():
            break
    rec = ep.record()
    if video_path and rec.video and rec.video != str(video_path):
        Path(rec.video).replace(video_path)
        rec.video = str(video_path)
    return rec


# ----------------------------------------------------------------------------- runs

@contextlib.contextmanager
def policy_threads(n: int = 1):
    """torch's intra-op threads set to `n` for the duration (restored after). Rollouts compute their
    policies on one thread wherever they run, as the pool's workers do: some CPUs' kernels split
    a matmul differently on 2 threads (seen on Zen 5 with the tiny DiT: episode action means 6e-6
    apart, serial on 2 threads vs a 1-thread worker), which would make an episode's outcome depend
    on the process that ran it."""
    try:
        import torch
    except ImportError:  # a policy without torch (the scripted expert): nothing to pin
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


def run_here(policy_factory: Callable[[], Policy], cfg: RunConfig, eps: list[int],
             progress: Callable[[EpisodeRecord], None] | None = None) -> dict[int, EpisodeRecord]:
    """Run the episodes in this process (up to cfg.batch in lockstep), the policy on one thread
    (`policy_threads`); records by episode index."""
    with policy_threads(1):
        return _run_here(policy_factory, cfg, eps, progress)


def _run_here(policy_factory: Callable[[], Policy], cfg: RunConfig, eps: list[int],
              progress: Callable[[EpisodeRecord], None] | None) -> dict[int, EpisodeRecord]:
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


# ----------------------------------------------------------------------------- built-in policies

def native_codec(native_actions: np.ndarray | None = None) -> ActionCodec:
    """Identity codec over LIBERO's native 7-d actions (model space == env space)."""
    a = np.zeros((2, 7)) if native_actions is None or len(native_actions) == 0 else np.asarray(native_actions)
    return ActionCodec.fit(CodecSpec(), a, np.zeros((2, 10)), native_actions=a)


class ZeroPolicy:
    """Always zeros (no motion, gripper 'hold'). Reaches 0% success: a runner sanity check."""

    def __init__(self, chunk: int = 8):
        self.codec = native_codec()
        self.obs_history = 1
        self.chunk = chunk

    def act(self, obs_history):
        return np.zeros((self.chunk, self.codec.width))


class ReplayPolicy:
    """Open-loop replay of recorded demos through a native codec: episode i replays demo i from its
    init state. Uses `executed_actions` (what the env really executed under DART noise) when the file
    has them and `executed=True`; else the recorded `actions`."""

    def __init__(self, demo_file: str, executed: bool = True, chunk: int = 8, wait_steps: int | None = None):
        from .data import read_demo_file

        ds = read_demo_file(demo_file)
        self.demo_file = str(demo_file)
        self.episodes = ds.episodes
        self.use_executed = executed
        self.actions = [(ep.extras["executed_actions"] if executed and "executed_actions" in ep.extras
                         else ep.actions).astype(np.float64) for ep in ds.episodes]
        self.codec = native_codec(np.concatenate(self.actions))
        self.obs_history = 1
        self.chunk = chunk
        w = ds.meta.attrs.get("wait_steps")
        self.wait_steps = int(wait_steps if wait_steps is not None else (w if w is not None else 0))
        self._cur = None

    def init_state_for(self, episode: int) -> np.ndarray:
        if not 0 <= episode < len(self.episodes):
            raise IndexError(f"{self.demo_file} has {len(self.episodes)} demos; no demo {episode}")
        return self.episodes[episode].init_state

    def reset(self, episode: int) -> None:
        self._cur = self.actions[episode]

    def act(self, obs_history):
        t = int(obs_history[-1]["t"][0])
        a = self._cur
        rows = a[t:t + self.chunk]
        if len(rows) < self.chunk:  # past the end: stand still, keep the last gripper command
            pad = np.zeros((self.chunk - len(rows), 7))
            pad[:, 6] = a[-1, 6]
            rows = np.concatenate([rows, pad])
        return rows


class ExpertPolicy:
    """The scripted expert as a policy (native codec, chunk of 1: it is closed-loop)."""

    def __init__(self, suite: str = "libero_object", task: int = 0, speed: float = 1.0):
        self.suite, self.task, self.speed = suite, task, speed
        self.codec = native_codec()
        self.obs_history = 1
        self.expert = None

    def attach_env(self, env) -> None:
        from .sim.expert import ScriptedExpert

        if self.expert is None or getattr(self, "_env_id", None) != id(env):
            self.expert = ScriptedExpert.for_env(env, self.speed)
            self._env_id = id(env)

    def reset(self, episode: int) -> None:
        if self.expert is not None:
            self.expert.reset()

    def act(self, obs_history):
        if self.expert is None:
            raise RuntimeError("ExpertPolicy needs the env (the runner calls attach_env)")
        return self.expert.act(obs_history[-1])[None]
