"""The one run pipeline: the life of a spec x seed run, used by the plan, the tuner and `eval`.

    gate A (replay through the spec's own codec; cached per codec) -> audit -> train (or resume)
    -> open-loop evaluation -> closed loop, in increments -> artifacts -> FINISHED

Each stage is done once; its completion is kept in `<checkpoint dir>/run_state.json`, so calling
`execute` again on the same run only does what is missing. That is how more episodes are added to a
finished run later without retraining: the caller asks for more init states, and the new episodes
are appended to the same MLflow run and the same per-episode record (`rollouts/episodes.json`),
never repeating an init state.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from .diskfull import disk_full_as_error
from .errors import UserError
from .gates import GATE_MIN_SUCCESS
from .spec import Spec
from .stages import audit_stage, gate_stage, log_bundle, log_episodes, open_loop_stage, train_stage
from .tracking import TAG_FAILURE, TAG_STAGE, MetricBuffer, Tracker


@dataclass(frozen=True)
class RunJob:
    """Everything a worker process needs for one spec x seed run (picklable)."""

    spec_name: str
    spec_yaml: str
    seed: int
    run_id: str
    tracking_uri: str
    experiment_id: str
    demo_path: str
    ckpt_dir: str
    init_states: tuple[int, ...]   # the init states this run must have evaluated when the call returns
    rollout_workers: int = 1
    rollout_batch: int = 1         # episodes per rollout process in lockstep (the profile's rollout_batch)
    threads: int = 0
    progress: bool = True
    gate_episodes: int = 10        # 0: skip Gate A (tests on tiny budgets)
    gate_cache_dir: str = ""

    @property
    def spec(self) -> Spec:
        return Spec.model_validate(yaml.safe_load(self.spec_yaml))


@dataclass
class RunResult:
    spec_name: str
    seed: int
    run_id: str
    status: str                    # FINISHED | FAILED | SKIPPED
    reason: str = ""
    metrics: dict = field(default_factory=dict)
    episodes: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- local state

def _state_path(ckpt_dir: Path) -> Path:
    return Path(ckpt_dir) / "run_state.json"


def load_state(ckpt_dir: Path) -> dict:
    p = _state_path(ckpt_dir)
    return json.loads(p.read_text()) if p.is_file() else {"done": [], "episodes": []}


def save_state(ckpt_dir: Path, state: dict) -> None:
    p = _state_path(ckpt_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    text = json.dumps(state, indent=1, default=float)
    with disk_full_as_error(p, len(text), cleanup=lambda: tmp.unlink(missing_ok=True)):
        tmp.write_text(text)
    os.replace(tmp, p)  # a killed process never leaves half a record


# ----------------------------------------------------------------------------- closed loop

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


# ----------------------------------------------------------------------------- the pipeline

def execute(job: RunJob, *, on_train_metrics: Callable[[int, dict], None] | None = None) -> RunResult:
    """Bring one run to the state `job` asks for. Never raises (except KeyboardInterrupt): a failure is
    recorded on the MLflow run as FAILED with its reason, and what finished stays done."""
    t0 = time.time()
    spec = job.spec
    from .train import configure_torch

    configure_torch(job.threads or spec.train.num_threads)  # this process is the entry point here
    tracker = Tracker(job.tracking_uri, job.experiment_id)
    ckpt = Path(job.ckpt_dir)
    state = load_state(ckpt)
    stage = "start"
    stage_s: dict[str, float] = {}
    buf = MetricBuffer(tracker, job.run_id)

    def enter(name: str) -> float:
        nonlocal stage
        stage = name
        tracker.set_tags(job.run_id, {TAG_STAGE: name})
        return time.time()

    def done(name: str, since: float) -> None:
        stage_s[name] = stage_s.get(name, 0.0) + time.time() - since
        if name not in state["done"]:
            state["done"].append(name)
        save_state(ckpt, state)

    try:
        tracker.client.update_run(job.run_id, status="RUNNING")
        tracker.set_tags(job.run_id, {TAG_FAILURE: ""})
        demo = Path(job.demo_path)
        if "gate" not in state["done"] and job.gate_episodes > 0:
            ts = enter("gate")
            gate_stage(tracker, job.run_id, spec, demo, episodes=job.gate_episodes,
                       cache_dir=Path(job.gate_cache_dir) if job.gate_cache_dir else ckpt.parent / "gates",
                       min_success=GATE_MIN_SUCCESS)
            done("gate", ts)
        if "audit" not in state["done"]:
            ts = enter("audit")
            audit_stage(tracker, job.run_id, spec, demo)
            done("audit", ts)
        bundle = Path(state["bundle"]) if state.get("bundle") else None
        if not {"train", "open_loop", "artifacts"} <= set(state["done"]) or bundle is None or not bundle.is_dir():
            ts = enter("train")
            from .spec_data import prepare_spec_data

            # Read and window the demos once: the trainer and the predicted-vs-demo plot share them.
            # RDT image features are cached beside the gates (<workdir>/features), shared by every arm.
            features = Path(job.gate_cache_dir).parent / "features" if job.gate_cache_dir else ckpt.parent / "features"
            data = prepare_spec_data(spec, demo, features_dir=features)

            def on_metrics(step: int, metrics: dict) -> None:
                buf(step, metrics)
                if on_train_metrics is not None:
                    on_train_metrics(step, metrics)

            result = train_stage(spec, demo, ckpt, on_metrics, progress=job.progress, data=data)
            buf.flush()
            bundle = Path(result.checkpoint_dir)
            state["bundle"] = str(bundle)
            if "train" not in state["done"]:
                state["train_history"] = {k: v for k, v in buf.history.items()
                                          if k.startswith(("train/loss/", "train/nmse/", "val/"))}
            done("train", ts)
            if "open_loop" not in state["done"]:
                ts = enter("open_loop")
                open_loop_stage(tracker, job.run_id, spec, demo, result, data)
                done("open_loop", ts)
            if "artifacts" not in state["done"]:
                ts = enter("artifacts")
                log_bundle(tracker, job.run_id, spec, result, state.get("train_history", {}))
                done("artifacts", ts)
        ts = enter("closed_loop")
        have = {int(r["init_state"]) for r in state["episodes"]}
        todo = [s for s in job.init_states if s not in have]
        if todo:
            # rollout.videos: an mp4 of each of the first N init states (cameras on for those episodes only).
            videos = tuple(s for s in todo if s < spec.rollout.videos)
            video_dir = ckpt / "videos"
            res = run_closed_loop(bundle, spec, job.seed, todo, workers=job.rollout_workers, batch=job.rollout_batch,
                                  videos=videos, video_dir=video_dir if videos else None,
                                  progress=EpisodeProgress(f"{spec.name} seed {job.seed}", len(todo)))
            if videos:
                tracker.log_artifact(job.run_id, video_dir, "videos")
            state["episodes"].extend(episode_dict(r) for r in res.episodes)
            save_state(ckpt, state)
            print(f"[{spec.name} seed {job.seed}] +{len(todo)} episodes: {res.line()}", flush=True)
        m = summarise_episodes(state["episodes"])
        # Step = episodes so far: every look leaves its own point in the metric history.
        tracker.log_metrics(job.run_id, [(k, v, len(state["episodes"])) for k, v in m.items()])
        log_episodes(tracker, job.run_id, state["episodes"])
        done("closed_loop", ts)
        stage_s["total"] = time.time() - t0
        tracker.log_metrics(job.run_id, [(f"time/{k}_s", v, len(state["episodes"])) for k, v in stage_s.items()])
        tracker.set_tags(job.run_id, {TAG_STAGE: "done"})
        tracker.end_run(job.run_id, "FINISHED")
        m.update({k: v for k, v in _final_metrics(tracker, job.run_id).items() if k not in m})
        return RunResult(job.spec_name, job.seed, job.run_id, "FINISHED", metrics=m, episodes=state["episodes"],
                         seconds=time.time() - t0, stage_seconds=stage_s)
    except BaseException as e:  # noqa: BLE001 - the plan goes on; the reason is recorded
        try:
            buf.flush()
        except Exception:
            pass
        reason = f"{stage}: {type(e).__name__}: {e}"
        if not isinstance(e, (UserError, KeyboardInterrupt)):
            reason += "\n" + traceback.format_exc(limit=8)
        try:
            tracker.end_run(job.run_id, "FAILED", reason)
        except Exception:
            pass
        if isinstance(e, KeyboardInterrupt):
            raise
        if _is_prune(e):
            raise
        return RunResult(job.spec_name, job.seed, job.run_id, "FAILED", reason=reason.splitlines()[0],
                         episodes=state.get("episodes", []), seconds=time.time() - t0, stage_seconds=stage_s)


def _is_prune(e: BaseException) -> bool:
    """Optuna's TrialPruned must reach the tuner (which records the run as pruned)."""
    return type(e).__name__ == "TrialPruned"


def _final_metrics(tracker: Tracker, run_id: str) -> dict[str, float]:
    try:
        return dict(tracker.client.get_run(run_id).data.metrics)
    except Exception:
        return {}
