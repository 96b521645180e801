"""The rollout-policy contract: the base class every policy the episode engine runs derives from, and
the chunk of env actions its `act` returns.

A policy turns an episode's observation history into env actions (robomimic's RolloutPolicy:
normalise -> act -> un-normalise -> convert):

    window (the last `obs_history` obs dicts)  --act-->  ActionChunk  --env_action(i, obs)-->  EnvActions

The chunk keeps the policy's model-space rows with the codec that decodes them, and decodes row i at
the pose the env is in when row i is executed: an absolute-pose codec's target becomes an env delta
only against the current pose, so decoding the whole chunk at the window's pose would execute other
actions. The engine (ablation/rollout.py) calls nothing but the methods below.

    class MyPolicy(RolloutPolicy):
        def __init__(self):
            self.codec, self.obs_history = native_codec(), 1
        def act(self, window, generator=None):
            return ActionChunk(np.zeros((8, 7)), self.codec)
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from . import rotation as R
from .codec import ActionCodec
from .representations import EnvActions

Window = list[dict[str, np.ndarray]]  # obs dicts, oldest first (LIBERO names + gripper_history + t)


@dataclass(frozen=True, eq=False)
class ActionChunk:
    """A policy's next actions: `rows` (H, W) in the codec's model space, decoded one at a time."""

    rows: np.ndarray
    codec: ActionCodec

    def __post_init__(self) -> None:
        rows = np.asarray(self.rows, dtype=np.float64)
        if rows.ndim == 1:
            rows = rows[None]
        if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] != self.codec.width:
            raise ValueError(f"the policy returned a chunk of shape {rows.shape}; expected (H>=1, {self.codec.width})")
        object.__setattr__(self, "rows", rows)

    def __len__(self) -> int:
        return len(self.rows)

    def env_action(self, i: int, obs: dict[str, np.ndarray]) -> EnvActions:
        """Row i as the env action (1, 7) at the eef pose in `obs` (raw and clipped to [-1, 1])."""
        return self.codec.to_env(self.rows[i:i + 1], obs["ee_pos"], R.axis_angle_to_matrix(obs["ee_ori"]))


class RolloutPolicy(ABC):
    """What the episode engine runs. Subclasses set `codec` and `obs_history` and define `act`."""

    codec: ActionCodec            # decodes the chunks; its stats["pos_step_m"] is the out-of-range reference
    obs_history: int = 1          # obs dicts in each window (the first repeated in front while short)
    wait_steps: int | None = None  # wait steps before the policy acts; None: the run's
    # True when `act_batch` serves several episodes in one call, keeps no per-episode state and draws all
    # randomness from the generators it is given: the engine then steps up to RunConfig.batch episodes
    # in lockstep. False: one episode at a time, generators None.
    batched: bool = False

    def reset(self, episode: int) -> None:
        """Start episode `episode` (after the engine seeded numpy's and torch's global RNGs for it)."""

    def attach_env(self, env) -> None:
        """The env the next episode runs on (privileged policies, e.g. the scripted expert, read it)."""

    def init_state_for(self, episode: int) -> np.ndarray | None:
        """The sim state episode `episode` starts from; None: the task's init state `episode`."""
        return None

    @abstractmethod
    def act(self, window: Window, generator=None) -> ActionChunk:
        """The next actions for one episode; noise (if any) from `generator` (a torch.Generator)."""

    def act_batch(self, windows: list[Window], generators: list) -> list[ActionChunk]:
        """One chunk per window; generators[i] is window i's noise (None when not `batched`)."""
        return [self.act(w, g) for w, g in zip(windows, generators)]

    @property
    def pos_step_ref_m(self) -> float | None:
        """The largest position step of the training data, metres (None: the codec has no such stat)."""
        stats = self.codec.stats if isinstance(self.codec.stats, dict) else {}
        return stats.get("pos_step_m", {}).get("absmax")
