"""One rollout episode on its own env: seeding, reset and wait steps, the policy's observation
window, and one env step at a time with clip and out-of-range statistics (the engine's inner part;
ablation/rollout.py drives many of them in lockstep).

Each policy step an episode
  1. appends the current obs (LIBERO names, plus `gripper_history` = gripper_history_features(the
     gripper commands executed so far) and `t` = the policy step index) to its history;
  2. when its current chunk is used up (every `replan_every` steps), asks for an ActionChunk for its
     last `obs_history` obs dicts (padded at the start by repeating the first);
  3. executes the chunk's next row as the env action at the CURRENT eef pose (`chunk.env_action`),
     clipped, and records clip and out-of-range statistics of the raw action.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import gripper_history_features
from .rollout_policy import ActionChunk, RolloutPolicy, Window
from .rollout_records import EpisodeRecord

WAIT_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
DEFAULT_WAIT_STEPS = 10


# ----------------------------------------------------------------------------- seeds

def episode_seed(seed: int, episode: int) -> int:
    """One 31-bit seed from (run seed, init-state index)."""
    return (int(seed) * 1_000_003 + int(episode)) % (2**31 - 1)


def episode_generator(seed: int, episode: int):
    """The torch.Generator (CPU) an episode draws its sampling noise from."""
    import torch  # only batched (sampling) policies need one; the built-in policies run without torch

    return torch.Generator().manual_seed(episode_seed(seed, episode))


def _seed_everything(seed: int, episode: int) -> None:
    s = episode_seed(seed, episode)
    np.random.seed(s)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(s)


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
    batch: int = 1  # episodes one process steps in lockstep (batched policies only)
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


class Episode:
    """One episode in progress on its own env: reset and wait steps on creation, then `window()` (the
    obs a policy call needs, when one is due), `set_chunk()`, and one env step per `step()`."""

    def __init__(self, policy: RolloutPolicy, env, episode: int, cfg: RunConfig):
        t0 = time.perf_counter()
        self.env, self.cfg = env, cfg
        self.rec = EpisodeRecord(episode=episode, worker_pid=os.getpid())
        self._gen = None
        _seed_everything(cfg.seed, episode)
        policy.reset(episode)
        init = policy.init_state_for(episode)
        if init is None:
            if not 0 <= episode < len(env.init_states):
                raise IndexError(f"episode {episode}: the task has {len(env.init_states)} init states")
            init = env.init_states[episode]
            self.rec.init_state = episode
        self.obs_history = max(1, int(policy.obs_history))
        self.max_steps = int(cfg.max_steps or env.max_steps)
        self.ref_pos_step_m = policy.pos_step_ref_m
        self.frames: list[np.ndarray] | None = [] if cfg.wants_video(episode) else None

        obs = env.reset_to(init)
        wait_steps = int(policy.wait_steps if policy.wait_steps is not None else cfg.wait_steps)
        for _ in range(wait_steps):
            obs, _ = env.step(WAIT_ACTION)
        self.rec.env_steps = wait_steps
        self.obs = obs
        self._add_frame()
        self.grip_cmds: list[float] = []
        self.history = [_with_history(obs, self.grip_cmds, 0)]
        self.executed, self.clip_fr, self.excess, self.pos_steps = [], [], [], []
        self.chunk: ActionChunk | None = None
        self.ci = 0
        dt = time.perf_counter() - t0
        self.rec.env_s += dt
        self.rec.wall_s += dt

    @property
    def generator(self):
        if self._gen is None:
            self._gen = episode_generator(self.cfg.seed, self.rec.episode)
        return self._gen

    def window(self) -> Window | None:
        """The last `obs_history` obs (the first repeated in front while short) when the current chunk
        is used up, i.e. when this episode needs a policy call before its next step; else None."""
        if self.chunk is not None and self.ci < min(self.cfg.replan_every, len(self.chunk)):
            return None
        w = self.history[-self.obs_history:]
        return [w[0]] * (self.obs_history - len(w)) + w

    def set_chunk(self, chunk: ActionChunk, policy_s: float) -> None:
        self.rec.policy_calls += 1
        self.rec.policy_s += policy_s
        self.rec.wall_s += policy_s
        if not isinstance(chunk, ActionChunk):
            raise TypeError(f"the policy returned {type(chunk).__name__}; a RolloutPolicy returns ActionChunks")
        self.chunk, self.ci = chunk, 0

    def step(self) -> bool:
        """Execute the next row of the chunk; True when the episode is over (success or step budget)."""
        t0 = time.perf_counter()
        t = len(self.executed)
        ea = self.chunk.env_action(self.ci, self.obs)
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
            import imageio.v2 as imageio  # only for episodes recorded on video

            path = Path(self.cfg.video_dir) / f"episode_{rec.episode:03d}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            imageio.mimwrite(path, self.frames, fps=20, macro_block_size=1)
            rec.video = str(path)
        return rec
