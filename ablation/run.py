"""The one run pipeline: the life of a spec x seed run, used by the plan, the tuner and `eval`.

    gate A (replay through the spec's own codec; cached per codec) -> audit -> train (or resume)
    -> open-loop evaluation -> artifacts -> closed loop, in increments -> FINISHED

`execute` is a loop over the stage objects of ablation/stages.py. A stage takes its inputs from the
run's context and returns its outputs, metrics and files (ablation/stage.py); only this loop talks
to MLflow (metrics and tags batched, one round trip per stage boundary), keeps the run's state and
records a failure with its stage and reason. The demo file is read at most once per call and the
codec fitted once, on the training split: the audit reports the codec that trains.

Each stage is done once; its completion is kept in `<checkpoint dir>/run_state.json`, so calling
`execute` again on the same run only does what is missing. That is how more episodes are added to a
finished run later without retraining: the caller asks for more init states, and the new episodes
are appended to the same MLflow run and the same per-episode record (`rollouts/episodes.json`),
never repeating an init state.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import yaml

from .bundle import latest_bundle
from .closed_loop import (EpisodeProgress, episode_dict, rollout_kwargs, run_closed_loop,  # noqa: F401 (re-exported)
                          summarise_episodes)
from .diskfull import disk_full_as_error
from .errors import UserError
from .spec import Spec
from .stage import RunContext, Stage
from .stages import run_stages
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
    took_over: bool = False        # it began from earlier work (a stage done, a checkpoint, episodes)


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


# ----------------------------------------------------------------------------- the pipeline

SCRATCH_DIR = "scratch"  # under a run's checkpoint folder: see run_scratch


@contextlib.contextmanager
def run_scratch(ckpt: Path) -> Iterator[Path]:
    """The folder for files a run's stages hand back as artifacts: <checkpoint folder>/scratch, emptied
    when the run starts and removed when it ends. Beside the checkpoints rather than in /tmp, so a run
    whose process was killed leaves its leftovers where its resume clears them (a /tmp folder of ~5 MB
    per killed worker was never removed)."""
    d = Path(ckpt) / SCRATCH_DIR
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def execute(job: RunJob, *, on_train_metrics: Callable[[int, dict], None] | None = None) -> RunResult:
    """Bring one run to the state `job` asks for. Never raises (except KeyboardInterrupt and Optuna's
    TrialPruned): a failure is recorded on the MLflow run as FAILED with its stage and reason, and
    what finished stays done."""
    t0 = time.time()
    spec = job.spec
    from .train import configure_torch

    configure_torch(job.threads or spec.train.num_threads)  # this process is the entry point here
    tracker = Tracker(job.tracking_uri, job.experiment_id)
    ckpt = Path(job.ckpt_dir)
    state = load_state(ckpt)
    # A run that starts from an earlier invocation's work costs less than one that starts afresh: the
    # plan's clock must not price the runs left at its cost.
    took_over = bool(state["done"] or state["episodes"] or latest_bundle(ckpt))
    log = MetricBuffer(tracker, job.run_id)
    stage_s: dict[str, float] = {}
    current = "start"
    try:
        with run_scratch(ckpt) as scratch:
            ctx = _context(job, spec, ckpt, state, scratch, log, on_train_metrics)
            tracker.client.update_run(job.run_id, status="RUNNING")
            log.tag({TAG_FAILURE: ""})
            for stage in run_stages():
                if stage.wanted(ctx):
                    current = stage.name
                    _run_stage(stage, ctx, log, tracker, job.run_id, stage_s)
        stage_s["total"] = time.time() - t0
        n = len(state["episodes"])
        log(n, {f"time/{k}_s": v for k, v in stage_s.items()})
        log.tag({TAG_STAGE: "done"})
        log.flush()
        tracker.end_run(job.run_id, "FINISHED")
        m = dict(ctx.outputs.get("eval_metrics", {}))
        m.update({k: v for k, v in _final_metrics(tracker, job.run_id).items() if k not in m})
        return RunResult(job.spec_name, job.seed, job.run_id, "FINISHED", metrics=m, episodes=state["episodes"],
                         seconds=time.time() - t0, stage_seconds=stage_s, took_over=took_over)
    except BaseException as e:  # noqa: BLE001 - the plan goes on; the reason is recorded
        reason = _record_failure(tracker, job.run_id, log, current, e)
        if isinstance(e, KeyboardInterrupt) or _is_prune(e):
            raise
        return RunResult(job.spec_name, job.seed, job.run_id, "FAILED", reason=reason.splitlines()[0],
                         episodes=state.get("episodes", []), seconds=time.time() - t0, stage_seconds=stage_s,
                         took_over=took_over)


def _context(job: RunJob, spec: Spec, ckpt: Path, state: dict, scratch: Path, log: MetricBuffer,
             on_train_metrics: Callable[[int, dict], None] | None) -> RunContext:
    def on_metrics(step: int, metrics: dict) -> None:
        log(step, metrics)
        if on_train_metrics is not None:
            on_train_metrics(step, metrics)

    # Gate A results are cached per codec beside the checkpoints (<workdir>/gates), RDT image features
    # beside them (<workdir>/features), shared by every arm.
    gates = Path(job.gate_cache_dir) if job.gate_cache_dir else ckpt.parent / "gates"
    return RunContext(spec=spec, seed=job.seed, demo_path=Path(job.demo_path), ckpt_dir=ckpt, scratch=scratch,
                      state=state, init_states=tuple(job.init_states), gate_episodes=job.gate_episodes,
                      gate_dir=gates, features_dir=gates.parent / "features", rollout_workers=job.rollout_workers,
                      rollout_batch=job.rollout_batch, progress=job.progress, on_train_metrics=on_metrics)


def _run_stage(stage: Stage, ctx: RunContext, log: MetricBuffer, tracker: Tracker, run_id: str,
               stage_s: dict[str, float]) -> None:
    """Run one stage and keep what it returned: its record first (rollouts are never repeated), then
    its metrics, tags, params and files on the MLflow run, then its completion."""
    log.tag({TAG_STAGE: stage.name})
    log.flush()  # one round trip: what the last stage measured, and which stage the run is in now
    t = time.time()
    res = stage.run(ctx)
    ctx.outputs.update(res.outputs)
    if res.record:
        ctx.state.update(res.record)
        save_state(ctx.ckpt_dir, ctx.state)
    log(res.step, res.metrics)
    log.tag(res.tags)
    if res.params:
        tracker.log_params(run_id, res.params)
    _send_artifacts(tracker, run_id, res.artifacts, ctx.scratch / "send" / stage.name)
    if res.error is not None:
        raise res.error
    stage_s[stage.name] = stage_s.get(stage.name, 0.0) + time.time() - t
    if not ctx.done(stage.name):
        ctx.state["done"].append(stage.name)
    save_state(ctx.ckpt_dir, ctx.state)


def _send_artifacts(tracker: Tracker, run_id: str, artifacts: list[tuple[str, Path]], tree: Path) -> None:
    """A stage's files go into one tree, sent in one call; a folder (a checkpoint bundle, videos) is
    sent as it is (never copied twice)."""
    files = [(a, Path(p)) for a, p in artifacts if Path(p).is_file()]
    for a, p in artifacts:
        if Path(p).is_dir():
            tracker.log_artifact(run_id, Path(p), a or None)
    for a, p in files:
        (tree / a).mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, tree / a / p.name)
    if files:
        tracker.log_artifact(run_id, tree)


def _record_failure(tracker: Tracker, run_id: str, log: MetricBuffer, stage: str, e: BaseException) -> str:
    """Send what was measured, then mark the run FAILED with the stage and the reason (best effort:
    the store itself may be what failed)."""
    try:
        log.flush()
    except Exception:
        pass
    reason = f"{stage}: {type(e).__name__}: {e}"
    if not isinstance(e, (UserError, KeyboardInterrupt)):
        reason += "\n" + traceback.format_exc(limit=8)
    try:
        tracker.end_run(run_id, "FAILED", reason)
    except Exception:
        pass
    return reason


def _is_prune(e: BaseException) -> bool:
    """Optuna's TrialPruned must reach the tuner (which records the run as pruned)."""
    return type(e).__name__ == "TrialPruned"


def _final_metrics(tracker: Tracker, run_id: str) -> dict[str, float]:
    try:
        return dict(tracker.client.get_run(run_id).data.metrics)
    except Exception:
        return {}
