"""Built-in rollout policies with no network: all zeros, open-loop replay of recorded demos, the
scripted expert. Each acts in LIBERO's native 7-d actions (a native codec: model space == env space)."""
from __future__ import annotations

import numpy as np

from .codec import ActionCodec
from .data import read_demo_file
from .rollout_policy import ActionChunk, RolloutPolicy
from .sim.expert import ScriptedExpert
from .spec import CodecSpec


def native_codec(native_actions: np.ndarray | None = None) -> ActionCodec:
    """Identity codec over LIBERO's native 7-d actions (model space == env space)."""
    a = np.zeros((2, 7)) if native_actions is None or len(native_actions) == 0 else np.asarray(native_actions)
    return ActionCodec.fit(CodecSpec(), a, np.zeros((2, 10)), native_actions=a)


class ZeroPolicy(RolloutPolicy):
    """Always zeros (no motion, gripper 'hold'). Reaches 0% success: a runner sanity check."""

    def __init__(self, chunk: int = 8):
        self.codec = native_codec()
        self.obs_history = 1
        self.chunk = chunk

    def act(self, window, generator=None) -> ActionChunk:
        return ActionChunk(np.zeros((self.chunk, self.codec.width)), self.codec)


class ReplayPolicy(RolloutPolicy):
    """Open-loop replay of recorded demos through a native codec: episode i replays demo i from its
    init state. Uses `executed_actions` (what the env really executed under DART noise) when the file
    has them and `executed=True`; else the recorded `actions`."""

    def __init__(self, demo_file: str, executed: bool = True, chunk: int = 8, wait_steps: int | None = None):
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

    def act(self, window, generator=None) -> ActionChunk:
        t = int(window[-1]["t"][0])
        a = self._cur
        rows = a[t:t + self.chunk]
        if len(rows) < self.chunk:  # past the end: stand still, keep the last gripper command
            pad = np.zeros((self.chunk - len(rows), 7))
            pad[:, 6] = a[-1, 6]
            rows = np.concatenate([rows, pad])
        return ActionChunk(rows, self.codec)


class ExpertPolicy(RolloutPolicy):
    """The scripted expert as a policy (native codec, chunk of 1: it is closed-loop)."""

    def __init__(self, suite: str = "libero_object", task: int = 0, speed: float = 1.0):
        self.suite, self.task, self.speed = suite, task, speed
        self.codec = native_codec()
        self.obs_history = 1
        self.expert = None
        self._env_id: int | None = None

    def attach_env(self, env) -> None:
        if self.expert is None or self._env_id != id(env):
            self.expert = ScriptedExpert.for_env(env, self.speed)
            self._env_id = id(env)

    def reset(self, episode: int) -> None:
        if self.expert is not None:
            self.expert.reset()

    def act(self, window, generator=None) -> ActionChunk:
        if self.expert is None:
            raise RuntimeError("ExpertPolicy needs the env (the runner calls attach_env)")
        return ActionChunk(self.expert.act(window[-1])[None], self.codec)
