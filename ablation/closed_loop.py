"""The closed loop of a run: roll a bundle's policy out from benchmark init states, and the eval/* summary.

Used by the run pipeline's closed-loop stage (ablation/stages.py) and by `eval` and `replay`.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from .spec import Spec


def rollout_kwargs(spec: Spec, seed: int) -> dict:
    """The one mapping from a spec to the rollout runner's arguments (plan, tune and eval)."""
    return dict(replan_every=spec.rollout.replan_every, max_steps=spec.rollout.max_steps,
                images=spec.data.images, image_size=spec.data.image_size, wait_steps=spec.rollout.wait_steps,
                seed=seed, fast=spec.sim.fast)


def episode_dict(rec) -> dict:
    """A rollout EpisodeRecord as the per-episode record kept with the run (init_state = its index)."""
    d = asdict(rec) if not isinstance(rec, dict) else dict(rec)
    d.setdefault("init_state", d.get("episode"))
    return d


def run_closed_loop(bundle: Path, spec: Spec, seed: int, init_states: list[int], *, workers: int = 1,
                    batch: int = 1, video_dir: Path | None = None, videos: tuple[int, ...] = (), progress=None):
    """Roll the bundle's policy out from the given benchmark init states -> RolloutResult.

    workers > 1: in this process's warm pool (ablation.rollout_pool.shared_pool), kept for the next
    run; 1: here, with this process's cached envs. batch: episodes per process in lockstep, one
    policy call for all of them (each episode keeps its own noise: the actions agree with batch 1 to
    float rounding in the batched matmuls, ~1e-6)."""
    from functools import partial

    from .bundle_policy import load_rollout_policy
    from .rollout_pool import run_rollouts, shared_pool

    # On a GPU profile every rollout worker runs its policy on the GPU, the simulator on its CPU core.
    device = "cuda" if spec.train.device == "cuda" else "cpu"
    n = min(int(workers), len(init_states))
    return run_rollouts(partial(load_rollout_policy, str(bundle), device=device), spec.data.suite, spec.data.task,
                        episodes=list(init_states), videos=videos, video_dir=video_dir, progress=progress,
                        batch=batch, pool=shared_pool(workers) if n > 1 else None, **rollout_kwargs(spec, seed))


class EpisodeProgress:
    """run_rollouts' progress callback: one line per finished episode on stderr (this may be a worker
    process, where the CLI's logging is not set up), with this run's rollout ETA from the pace so far."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.done, self.t0 = label, total, 0, time.time()

    def __call__(self, rec) -> None:
        self.done += 1
        if os.environ.get("ABLATION_QUIET"):  # run_ablation.py -q (inherited by worker processes)
            return
        per_s = (time.time() - self.t0) / self.done
        outcome = "success" if rec.success else ("error" if getattr(rec, "error", None) else "failure")
        print(f"[{self.label}] episode {self.done}/{self.total} (init state {rec.episode}): {outcome} in "
              f"{rec.steps} steps; rollouts ~{per_s * (self.total - self.done):.0f} s to go",
              file=sys.stderr, flush=True)


def summarise_episodes(records: list[dict]) -> dict[str, float]:
    """eval/* metrics over every episode of a run so far (ablation.rollout_records.EpisodeSummary)."""
    from .rollout_records import EpisodeSummary

    return EpisodeSummary.of(records).metrics()
