"""Episode records and their conversion to the dense arrays the bootstrap works on.

Units: `success` is a bool per episode; every rate built from it is a fraction in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

FIELDS = ("arm", "task", "seed", "init_state", "success")


@dataclass(frozen=True)
class EpisodeOutcome:
    """One closed-loop episode.

    arm: the arm (spec) name; task: e.g. "libero_object/0"; seed: the training seed of the network
    that ran the episode; init_state: the benchmark init-state index it started from (the pairing
    key across arms, with `task`); success: whether the episode succeeded.
    """

    arm: str
    task: str
    seed: int
    init_state: int
    success: bool


@dataclass(frozen=True)
class EpisodeArrays:
    """Column arrays of a list of episodes (same order as the records): arm/task as object arrays,
    seed/init_state as int64, success as float64 (1.0 = success, 0.0 = failure)."""

    arm: np.ndarray
    task: np.ndarray
    seed: np.ndarray
    init_state: np.ndarray
    success: np.ndarray

    def __len__(self) -> int:
        return int(self.success.shape[0])


def _get(r: Any, name: str) -> Any:
    if isinstance(r, Mapping):
        if name not in r:
            raise ValueError(f"episode record {r!r} has no field {name!r} (needs {', '.join(FIELDS)})")
        return r[name]
    try:
        return getattr(r, name)
    except AttributeError:
        raise ValueError(f"episode record {r!r} has no field {name!r} (needs {', '.join(FIELDS)})") from None


def to_arrays(records: Iterable[EpisodeOutcome | Mapping[str, Any]]) -> EpisodeArrays:
    """Column arrays from `EpisodeOutcome`s, mappings or any objects with the five fields."""
    rows = [tuple(_get(r, f) for f in FIELDS) for r in records]
    if not rows:
        z = np.zeros(0)
        return EpisodeArrays(np.zeros(0, object), np.zeros(0, object), z.astype(np.int64), z.astype(np.int64), z)
    arm, task, seed, state, succ = zip(*rows)
    return EpisodeArrays(
        arm=np.array([str(a) for a in arm], dtype=object),
        task=np.array([str(t) for t in task], dtype=object),
        seed=np.asarray(seed, dtype=np.int64),
        init_state=np.asarray(state, dtype=np.int64),
        success=np.asarray([bool(s) for s in succ], dtype=np.float64),
    )


@dataclass(frozen=True)
class TaskTable:
    """One task's episodes of one arm on the init states shared with the other arm.

    succ/cnt: (n_seeds, n_states) success and episode counts (a cell may hold several episodes, or
    none when that seed did not run that state); seeds: the seed ids of the rows; states: the
    shared init-state ids of the columns (sorted, the same columns for both arms)."""

    seeds: tuple[int, ...]
    states: tuple[int, ...]
    succ: np.ndarray
    cnt: np.ndarray

    @property
    def rate(self) -> np.ndarray:
        """Per (seed, state) success fraction; 0 where the cell is empty (masked by `cnt > 0`)."""
        return np.divide(self.succ, self.cnt, out=np.zeros_like(self.succ), where=self.cnt > 0)

    def state_means(self) -> np.ndarray:
        """Per state: mean over the seeds that ran it of their success fraction."""
        m = self.cnt > 0
        return (self.rate * m).sum(0) / np.maximum(m.sum(0), 1)


def task_table(a: EpisodeArrays, sel: np.ndarray, states: np.ndarray) -> TaskTable:
    """Dense (seed x state) counts of the episodes `sel` restricted to the sorted `states`."""
    keep = sel & np.isin(a.init_state, states)
    seeds = np.unique(a.seed[keep])
    ri = np.searchsorted(seeds, a.seed[keep])
    ci = np.searchsorted(states, a.init_state[keep])
    succ = np.zeros((len(seeds), len(states)))
    cnt = np.zeros((len(seeds), len(states)))
    np.add.at(succ, (ri, ci), a.success[keep])
    np.add.at(cnt, (ri, ci), 1.0)
    return TaskTable(tuple(int(s) for s in seeds), tuple(int(s) for s in states), succ, cnt)
