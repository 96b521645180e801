"""Records of rollout episodes and runs, and the one episode summary (success rule, key names) that
the rollout runner, the run pipeline and the report share.

One success rule: an episode succeeded when the env said done and the episode did not crash
(`episode_succeeded`; a crashed episode counts as a failure). One key set: `EpisodeSummary`'s
fields, namespaced `eval/` as run metrics (`EpisodeSummary.metrics()`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np


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
    """95% Wilson score interval of k successes in n trials ((0, 1) when n is 0)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def _get(rec, key: str, default=None):
    """A field of an EpisodeRecord or of its dict form (as kept with a run, or read back from MLflow)."""
    return rec.get(key, default) if isinstance(rec, dict) else getattr(rec, key, default)


def episode_succeeded(rec) -> bool:
    """The success rule: the env said done and the episode did not crash."""
    return bool(_get(rec, "success")) and not _get(rec, "error")


@dataclass(frozen=True)
class EpisodeSummary:
    """What a set of episodes amounts to. Means are over the episodes that did not crash."""

    episodes: int
    successes: int
    success_rate: float
    success_ci95_low: float
    success_ci95_high: float
    crashed_episodes: int
    clip_rate: float                       # mean fraction of executed arm dims clipped to [-1, 1]
    episode_len: float                     # mean policy steps
    pos_out_of_range: float | None = None  # worst commanded position step / the training data's (None: no reference)

    @classmethod
    def of(cls, records) -> "EpisodeSummary":
        """Summary of EpisodeRecords or their dicts."""
        records = list(records)
        n = len(records)
        ok = [r for r in records if not _get(r, "error")]
        k = sum(episode_succeeded(r) for r in records)
        lo, hi = wilson_interval(k, n)
        ratios = [_get(r, "pos_step_ratio") for r in ok if _get(r, "pos_step_ratio") is not None]
        return cls(episodes=n, successes=k, success_rate=k / n if n else 0.0, success_ci95_low=lo,
                   success_ci95_high=hi, crashed_episodes=n - len(ok),
                   clip_rate=float(np.mean([_get(r, "clip_fraction", 0.0) for r in ok])) if ok else 0.0,
                   episode_len=float(np.mean([_get(r, "steps", 0) for r in ok])) if ok else 0.0,
                   pos_out_of_range=float(max(ratios)) if ratios else None)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def metrics(self, prefix: str = "eval/") -> dict[str, float]:
        """As run metrics: every key under `prefix`; pos_out_of_range only when there is a reference."""
        return {prefix + k: v for k, v in self.to_dict().items() if v is not None}


@dataclass
class RolloutResult:
    """One call's episodes (in the order asked for) and how the run went."""

    suite: str
    task: int
    episodes: list[EpisodeRecord]
    replan_every: int
    workers: int
    wall_s: float

    @property
    def stats(self) -> EpisodeSummary:
        return EpisodeSummary.of(self.episodes)

    @property
    def n(self) -> int:
        return len(self.episodes)

    @property
    def successes(self) -> int:
        return self.stats.successes

    @property
    def success_rate(self) -> float:
        return self.stats.success_rate

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
        """EpisodeSummary's keys, then where and how fast the run went."""
        return {**self.stats.to_dict(), "suite": self.suite, "task": self.task, "wall_s": self.wall_s,
                "env_steps": self.env_steps, "env_steps_per_s": self.env_steps_per_s,
                "policy_time_share": self.policy_time_share, "replan_every": self.replan_every,
                "workers": self.workers}

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "episodes": [asdict(e) for e in self.episodes]}

    def line(self) -> str:
        s = self.stats
        ratio = "n/a" if s.pos_out_of_range is None else f"{s.pos_out_of_range:.1f}x"
        return (f"{self.suite} task {self.task}: success {s.successes}/{s.episodes} = {s.success_rate:.0%} "
                f"(95% CI {s.success_ci95_low:.0%}-{s.success_ci95_high:.0%}), mean length "
                f"{s.episode_len:.0f}, clip rate {s.clip_rate:.1%}, max pos step {ratio} of training "
                f"range, {self.env_steps_per_s:.0f} env steps/s, policy {self.policy_time_share:.0%} of time"
                + (f", {s.crashed_episodes} episode(s) crashed" if s.crashed_episodes else ""))
