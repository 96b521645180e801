"""Closed-loop rollouts of a policy in LIBERO, serial or in parallel worker processes.

Protocol (OpenVLA / openpi / LeRobot): episode i starts from init state i; 10 wait steps with
[0,0,0,0,0,0,-1]; then the policy for at most the suite's max steps; success = env done.

Each policy step the runner
  1. appends the current obs (LIBERO names, plus `gripper_history` = gripper_history_features(the
     gripper commands executed so far) and `t` = the policy step index) to the history;
  2. when the current chunk is used up (every `replan_every` steps), calls
     `policy.act(last To obs dicts, padded at the start by repeating the first)` -> chunk (H, W) in
     MODEL space;
  3. decodes the next chunk row with `policy.codec.to_env(row, ee_pos, ee_rotmat)` using the CURRENT
     eef pose (absolute-pose codecs need it), executes the clipped action, and records clip and
     out-of-range statistics of the raw decoded action.

Determinism: every episode seeds numpy and torch with (seed, episode index) and resets the policy,
and every env reset rebuilds the sim, so results do not depend on the number of workers.
A policy may define optional hooks: `reset(episode_index)`, `attach_env(env)` (privileged policies),
`init_state_for(episode_index)` (replay of recorded demos) and `wait_steps` (int).
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Callable, Iterable, Protocol, runtime_checkable

import numpy as np

from . import rotation as R
from .codec import CONTROLLER_POS_SCALE_M, ActionCodec
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
    policy_s: float = 0.0
    env_s: float = 0.0
    wall_s: float = 0.0
    env_steps: int = 0             # including wait steps
    video: str | None = None
    error: str | None = None


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


# ----------------------------------------------------------------------------- one episode

def _seed_everything(seed: int, episode: int) -> None:
    s = (int(seed) * 1_000_003 + int(episode)) % (2**31 - 1)
    np.random.seed(s)
    import sys

    if "torch" in sys.modules:
        import torch

        torch.manual_seed(s)


def _with_history(obs: dict, grip_cmds: list[float], t: int) -> dict:
    o = dict(obs)
    o["gripper_history"] = gripper_history_features(grip_cmds)
    o["t"] = np.array([t], dtype=np.float64)
    return o


def run_episode(policy, env, episode: int, replan_every: int, max_steps: int | None = None,
                wait_steps: int = DEFAULT_WAIT_STEPS, seed: int = 0, video_path: str | None = None) -> EpisodeRecord:
    """Run one episode; exceptions propagate (the caller records them)."""
    t_start = time.perf_counter()
    rec = EpisodeRecord(episode=episode)
    _seed_everything(seed, episode)
    if hasattr(policy, "reset"):
        policy.reset(episode)
    init = policy.init_state_for(episode) if hasattr(policy, "init_state_for") else None
    if init is None:
        if not 0 <= episode < len(env.init_states):
            raise IndexError(f"episode {episode}: the task has {len(env.init_states)} init states")
        init = env.init_states[episode]
    wait_steps = int(getattr(policy, "wait_steps", wait_steps))
    max_steps = int(max_steps or env.max_steps)
    codec: ActionCodec = policy.codec
    to = max(1, int(getattr(policy, "obs_history", 1)))
    ref = codec.stats.get("pos_step_m", {}).get("absmax") if isinstance(codec.stats, dict) else None
    frames = []
    env_s = 0.0

    t0 = time.perf_counter()
    obs = env.reset_to(init)
    for _ in range(wait_steps):
        obs, _ = env.step(WAIT_ACTION)
    env_s += time.perf_counter() - t0
    rec.env_steps = wait_steps
    if video_path is not None and "agentview_rgb" in obs:
        frames.append(obs["agentview_rgb"][::-1].copy())

    history: list[dict] = []
    grip_cmds: list[float] = []
    executed, clip_fr, excess, pos_steps = [], [], [], []
    chunk, ci = None, 0
    done = False
    for t in range(max_steps):
        history.append(_with_history(obs, grip_cmds, t))
        if chunk is None or ci >= min(replan_every, len(chunk)):
            window = history[-to:]
            window = [window[0]] * (to - len(window)) + window
            tp = time.perf_counter()
            chunk = np.asarray(policy.act(window), dtype=np.float64)
            rec.policy_s += time.perf_counter() - tp
            if chunk.ndim == 1:
                chunk = chunk[None]
            if chunk.ndim != 2 or chunk.shape[0] == 0 or chunk.shape[1] != codec.width:
                raise ValueError(f"policy.act returned shape {chunk.shape}; expected (H>=1, {codec.width})")
            ci = 0
        ea = codec.to_env(chunk[ci:ci + 1], obs["ee_pos"], R.axis_angle_to_matrix(obs["ee_ori"]))
        ci += 1
        raw = ea.raw[0]
        if not np.all(np.isfinite(raw)):
            raise ValueError(f"step {t}: decoded action is not finite: {raw}")
        action = ea.clipped[0]
        clip_fr.append(ea.clip_fraction)
        excess.append(ea.max_excess)
        pos_steps.append(float(np.max(np.abs(raw[:3]))) * CONTROLLER_POS_SCALE_M if codec.rep.kind == "native"
                         else float(np.max(np.abs(ea.pos_step_m))))
        t0 = time.perf_counter()
        obs, done = env.step(action)
        env_s += time.perf_counter() - t0
        rec.env_steps += 1
        executed.append(action)
        grip_cmds.append(float(action[6]))
        if video_path is not None and "agentview_rgb" in obs:
            frames.append(obs["agentview_rgb"][::-1].copy())
        if done:
            break
    rec.success = bool(done)
    rec.steps = len(executed)
    if executed:
        ex = np.asarray(executed)
        rec.action_mean, rec.action_std = ex.mean(0).tolist(), ex.std(0).tolist()
        rec.action_min, rec.action_max = ex.min(0).tolist(), ex.max(0).tolist()
        rec.clip_fraction = float(np.mean(clip_fr))
        rec.max_excess = float(np.max(excess))
        rec.max_pos_step_m = float(np.max(pos_steps))
        if ref:
            rec.pos_step_ratio = rec.max_pos_step_m / max(float(ref), 1e-9)
    if video_path is not None and frames:
        import imageio.v2 as imageio

        Path(video_path).parent.mkdir(parents=True, exist_ok=True)
        imageio.mimwrite(video_path, frames, fps=20, macro_block_size=1)
        rec.video = str(video_path)
    rec.env_s = env_s
    rec.wall_s = time.perf_counter() - t_start
    return rec


# ----------------------------------------------------------------------------- workers

class _EpisodeRunner:
    """Owns a policy and (lazily) the envs of one process."""

    def __init__(self, policy_factory, suite, task, replan_every, max_steps, images, image_size,
                 videos, video_dir, wait_steps, seed):
        self.policy_factory, self.suite, self.task = policy_factory, suite, task
        self.replan_every, self.max_steps, self.images = replan_every, max_steps, images
        self.image_size, self.videos, self.video_dir = image_size, set(videos), video_dir
        self.wait_steps, self.seed = wait_steps, seed
        self.policy = None
        self.envs: dict[bool, object] = {}

    def _env(self, images: bool):
        if images not in self.envs:
            from .sim.env import make_env

            env = make_env(self.suite, self.task, images=images, image_size=self.image_size)
            if self.policy is not None and hasattr(self.policy, "attach_env"):
                self.policy.attach_env(env)
            self.envs[images] = env
        return self.envs[images]

    def run(self, episode: int) -> EpisodeRecord:
        t0 = time.perf_counter()
        try:
            if self.policy is None:
                self.policy = self.policy_factory()
            want_video = episode in self.videos and self.video_dir is not None
            env = self._env(self.images or want_video)
            if hasattr(self.policy, "attach_env"):
                self.policy.attach_env(env)
            vp = str(Path(self.video_dir) / f"episode_{episode:03d}.mp4") if want_video else None
            return run_episode(self.policy, env, episode, self.replan_every, self.max_steps,
                               self.wait_steps, self.seed, vp)
        except Exception as e:  # the episode fails with its reason; the env is rebuilt
            tb = traceback.extract_tb(e.__traceback__)
            where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
            for k, env in list(self.envs.items()):
                try:
                    env.close()
                except Exception:
                    pass
                del self.envs[k]
            return EpisodeRecord(episode=episode, error=f"{type(e).__name__}: {e}{where}",
                                 wall_s=time.perf_counter() - t0)

    def close(self) -> None:
        for env in self.envs.values():
            try:
                env.close()
            except Exception:
                pass
        self.envs.clear()


def _worker_main(conn, runner_args: dict) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:
        pass
    runner = _EpisodeRunner(**runner_args)
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                break
            conn.send(runner.run(int(msg)))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        runner.close()


def run_rollouts(policy_factory: Callable[[], Policy], suite: str, task: int,
                 episodes: int | Iterable[int], replan_every: int, workers: int = 1,
                 videos: Iterable[int] = (), video_dir: str | Path | None = None,
                 max_steps: int | None = None, images: bool = False, *, image_size: int = 128,
                 wait_steps: int = DEFAULT_WAIT_STEPS, seed: int = 0,
                 progress: Callable[[EpisodeRecord], None] | None = None) -> RolloutResult:
    """Run episodes (an int n means episodes 0..n-1) and collect per-episode records.

    policy_factory: picklable zero-arg callable, called once inside each worker process.
    videos: episode indices to record as mp4 (agentview, upright) into video_dir; those episodes
    run in an env with cameras on (others keep the fast low-dim env unless images=True).
    """
    from .sim.libero_setup import check_task, ensure_libero

    if replan_every < 1:
        raise ValueError("replan_every must be >= 1")
    ensure_libero()  # env vars (config path, render backend) are inherited by spawned workers
    check_task(suite, task)
    eps = list(range(episodes)) if isinstance(episodes, int) else [int(e) for e in episodes]
    videos = [int(v) for v in videos]
    if videos and video_dir is None:
        raise ValueError("videos requested but video_dir is None")
    args = dict(policy_factory=policy_factory, suite=suite, task=task, replan_every=replan_every,
                max_steps=max_steps, images=images, image_size=image_size, videos=videos,
                video_dir=str(video_dir) if video_dir is not None else None, wait_steps=wait_steps, seed=seed)
    workers = max(1, min(int(workers), len(eps) or 1))
    t0 = time.perf_counter()
    records: dict[int, EpisodeRecord] = {}
    if workers == 1:
        runner = _EpisodeRunner(**args)
        try:
            for e in eps:
                records[e] = runner.run(e)
                if progress:
                    progress(records[e])
        finally:
            runner.close()
    else:
        records = _run_parallel(args, eps, workers, progress)
    wall = time.perf_counter() - t0
    ordered = [records[e] for e in eps]
    return RolloutResult(suite, task, ordered, replan_every, workers, wall)


def _run_parallel(args: dict, eps: list[int], workers: int, progress) -> dict[int, EpisodeRecord]:
    ctx = mp.get_context("spawn")
    pending = list(eps)
    records: dict[int, EpisodeRecord] = {}
    procs: dict = {}  # conn -> [process, episode or None]

    def start():
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker_main, args=(child, args), daemon=True)
        p.start()
        child.close()
        procs[parent] = [p, None]

    def feed(conn):
        if pending:
            e = pending.pop(0)
            procs[conn][1] = e
            conn.send(e)
        else:
            procs[conn][1] = None

    for _ in range(workers):
        start()
    try:
        for conn in list(procs):
            feed(conn)
        while len(records) < len(eps):
            busy = {c: v for c, v in procs.items() if v[1] is not None}
            if not busy:
                break
            ready = mp_wait(list(busy) + [v[0].sentinel for v in busy.values()])
            for conn, (p, e) in list(busy.items()):
                got = False
                if conn in ready:
                    try:
                        rec = conn.recv()
                        got = True
                    except (EOFError, OSError):
                        got = False
                    if got:
                        records[e] = rec
                        if progress:
                            progress(rec)
                        feed(conn)
                        continue
                if (conn in ready and not got) or p.sentinel in ready:
                    if not p.is_alive() or not got:
                        p.join(timeout=5)
                        records[e] = EpisodeRecord(episode=e, error=f"worker process died (exit code {p.exitcode}) "
                                                                   "during this episode")
                        if progress:
                            progress(records[e])
                        del procs[conn]
                        conn.close()
                        if pending:
                            start()
                            feed(list(procs)[-1])
    finally:
        for conn, (p, _e) in procs.items():
            try:
                conn.send(None)
            except Exception:
                pass
        for conn, (p, _e) in procs.items():
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
            conn.close()
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
