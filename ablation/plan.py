"""The orchestrator: a plan's specs x seeds -> demos, audit, training, open-loop and closed-loop
evaluation, MLflow logging and the report.

Each plan invocation is a parent MLflow run; each spec x seed is a nested run created by the parent
*before* any worker starts (so there are no duplicates), then filled by a worker process:

    parent: resolve specs -> skip FINISHED (same spec hash) -> make demos -> create/reuse runs
    worker: audit -> train (resumes from its checkpoint) -> open-loop eval -> rollouts -> artifacts
    parent: report -> exit code (non-zero if any run failed)
"""
from __future__ import annotations

import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import yaml

from .errors import UserError
from .spec import (EXPERIMENTS_DIR, Plan, Spec, SpecError, load_plan, resolve_spec, spec_path)
from .provenance import file_sha256, git_commit
from .tracking import (TAG_FAILURE, TAG_KIND, TAG_SEED, TAG_SPEC, TAG_SPEC_HASH, TAG_STAGE, MetricBuffer,
                       Tracker, default_tracking_uri, ui_command)
from .workdir import ensure_demos

PROFILES_DIR = EXPERIMENTS_DIR / "profiles"


# ----------------------------------------------------------------------------- profiles

@dataclass(frozen=True)
class Profile:
    name: str
    sets: tuple[str, ...]
    jobs: int
    rollout_workers: int | None


def detect_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def load_profile(name: str) -> Profile:
    """`auto` picks gpu when CUDA is present, else cpu, and says so."""
    if name == "auto":
        name = "gpu" if detect_device() == "cuda" else "cpu"
        print(f"[plan] profile auto -> {name} (device: {detect_device()})")
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise SpecError(f"profile '{name}' not found; known: auto, {known}")
    raw = yaml.safe_load(path.read_text()) or {}
    workers = raw.get("rollout_workers")
    if workers == "auto":  # the CPUs this process may use (a container's limit, not the host's count)
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Profile(name, tuple(raw.get("set", [])), int(raw.get("jobs", 1)), workers)


# ----------------------------------------------------------------------------- jobs

@dataclass(frozen=True)
class Job:
    spec_name: str
    spec_yaml: str       # the resolved spec, so the worker needs no files besides the demos
    spec_hash: str
    seed: int
    demo_path: str
    ckpt_dir: str
    tracking_uri: str
    experiment_id: str
    run_id: str
    profile: str
    device: str
    threads: int
    progress: bool = True
    rollout_workers: int = 0  # 0: the spec's rollout.workers


@dataclass
class JobResult:
    spec_name: str
    seed: int
    run_id: str
    status: str  # FINISHED | FAILED | SKIPPED
    reason: str = ""
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0


def resolve_entries(plan: Plan, profile: Profile, seeds: list[int] | None, only: list[str] | None,
                    extra_sets: list[str]) -> list[tuple[Spec, int]]:
    out = []
    names = set(only or [])
    plan_dir = Path(plan.path).parent if plan.path else EXPERIMENTS_DIR / "plans"
    for entry in plan.entries:
        path = spec_path(entry.spec, relative_to=plan_dir)
        if names and entry.spec not in names and path.stem not in names:
            continue
        for seed in (seeds or entry.seeds or plan.seeds):
            sets = [*profile.sets, *plan.set, *entry.set, *extra_sets, f"train.seed={seed}"]
            out.append((resolve_spec(path, sets), seed))
    if names and not out:
        known = ", ".join(e.spec for e in plan.entries)
        raise SpecError(f"--only {', '.join(sorted(names))}: no such spec in plan '{plan.name}' ({known})")
    return out


def run_job(job: Job) -> JobResult:
    """One spec x seed, in a worker process. Never raises: failures are recorded on the run."""
    t0 = time.time()
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    tracker = Tracker(job.tracking_uri, job.experiment_id)
    spec = Spec.model_validate(yaml.safe_load(job.spec_yaml))
    stage = "start"
    buf = MetricBuffer(tracker, job.run_id)
    try:
        from .data import prepare_data
        from .stages import closed_loop_stage, log_bundle, open_loop_stage, audit_stage, train_stage

        stage = "audit"
        tracker.set_tags(job.run_id, {TAG_STAGE: stage})
        audit_stage(tracker, job.run_id, spec, Path(job.demo_path))
        stage = "train"
        tracker.set_tags(job.run_id, {TAG_STAGE: stage})
        # Read and window the demos once: the trainer and the predicted-vs-demo plot share them.
        data = prepare_data(spec.data, spec.codec, Path(job.demo_path))
        result = train_stage(spec, Path(job.demo_path), Path(job.ckpt_dir), buf, progress=job.progress, data=data)
        buf.flush()
        stage = "open_loop"
        tracker.set_tags(job.run_id, {TAG_STAGE: stage})
        metrics = open_loop_stage(tracker, job.run_id, spec, Path(job.demo_path), result, data)
        stage = "closed_loop"
        tracker.set_tags(job.run_id, {TAG_STAGE: stage})
        metrics.update(closed_loop_stage(tracker, job.run_id, spec, result, workers=job.rollout_workers))
        stage = "artifacts"
        log_bundle(tracker, job.run_id, spec, result, buf.history)
        metrics["time/total_s"] = time.time() - t0
        tracker.log_metrics(job.run_id, [("time/total_s", metrics["time/total_s"], 0)])
        tracker.set_tags(job.run_id, {TAG_STAGE: "done"})
        tracker.end_run(job.run_id, "FINISHED")
        return JobResult(job.spec_name, job.seed, job.run_id, "FINISHED", metrics=metrics, seconds=time.time() - t0)
    except BaseException as e:  # noqa: BLE001 - the plan goes on; the reason is recorded
        try:
            buf.flush()
        except Exception:
            pass
        reason = f"{stage}: {type(e).__name__}: {e}"
        if not isinstance(e, (UserError, KeyboardInterrupt)):
            tb = traceback.format_exc(limit=8)
            reason += "\n" + tb
        try:
            tracker.end_run(job.run_id, "FAILED", reason)
        except Exception:
            pass
        if isinstance(e, KeyboardInterrupt):
            raise
        return JobResult(job.spec_name, job.seed, job.run_id, "FAILED", reason=reason.splitlines()[0],
                         seconds=time.time() - t0)


# ----------------------------------------------------------------------------- the plan run

@dataclass
class PlanOutcome:
    parent_run_id: str | None
    results: list[JobResult]
    report_dir: Path | None

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results if r.status == "FAILED"]


def run_plan(plan_name: str, *, profile_name: str = "auto", seeds: list[int] | None = None,
             only: list[str] | None = None, dry_run: bool = False, workdir: Path = Path("workdir"),
             tracking_uri: str | None = None, extra_sets: list[str] | None = None,
             jobs: int | None = None) -> PlanOutcome:
    t0 = time.time()
    plan = load_plan(plan_name)
    profile = load_profile(profile_name)
    entries = resolve_entries(plan, profile, seeds, only, list(extra_sets or []))
    workdir = Path(workdir).resolve()
    uri = tracking_uri or entries[0][0].tracking.tracking_uri or default_tracking_uri(workdir)
    experiment = entries[0][0].tracking.experiment
    print(f"[plan] {plan.name}: {len(entries)} run(s) (specs x seeds), profile {profile.name}")
    print(f"[plan] workdir {workdir}")
    print(f"[plan] MLflow store {uri}, experiment '{experiment}'")
    print(f"[plan] open the UI with:  {ui_command(uri)}")
    workdir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker.open(uri, experiment, workdir / "mlartifacts")
    if dry_run:
        return PlanOutcome(None, execute_runs(tracker, entries, workdir=workdir, profile=profile, jobs=jobs,
                                              parent_run_id=None, dry_run=True), None)
    parent = tracker.start_run(f"plan:{plan.name}", {
        TAG_KIND: "plan", "ablation.plan": plan.name, "ablation.profile": profile.name,
        "ablation.git_commit": git_commit(), "ablation.device": detect_device()})
    results: list[JobResult] = []
    report_dir = None
    try:
        results = execute_runs(tracker, entries, workdir=workdir, profile=profile, jobs=jobs,
                               parent_run_id=parent, plan_name=plan.name)
    finally:
        try:
            from .report import build_report

            report_dir = workdir / "report"
            rep = build_report(tracker, entries=[(s.name, s.hash(), sd) for s, sd in entries],
                               out_dir=report_dir, title=f"Plan '{plan.name}', profile {profile.name}")
            tracker.log_artifact(parent, report_dir, "report")
            print(f"[plan] report: {report_dir / 'report.md'}")
            print(rep.table_markdown())
        except Exception as e:  # the runs are safe in MLflow; say why the report is missing
            print(f"[plan] report not written: {type(e).__name__}: {e}")
        failed = [r for r in results if r.status == "FAILED"]
        wall = time.time() - t0
        tracker.log_metrics(parent, [("plan/runs_failed", len(failed), 0), ("plan/wall_s", wall, 0)])
        tracker.end_run(parent, "FAILED" if failed or not results else "FINISHED",
                        f"{len(failed)} run(s) failed" if failed else None)
    print_results(results)
    print(f"[plan] done in {time.time() - t0:.0f} s")
    return PlanOutcome(parent, results, report_dir)


def print_results(results: list[JobResult]) -> None:
    for r in results:
        line = f"  {r.spec_name:<22} seed {r.seed}  {r.status:<8}"
        if r.status == "FINISHED":
            sr = r.metrics.get("eval/success_rate")
            line += f"  success {sr:.2f}" if sr is not None else ""
            line += f"  ({r.seconds:.0f} s)"
        elif r.reason:
            line += f"  {r.reason}"
        print(line)


def execute_runs(tracker: Tracker, entries: list[tuple[Spec, int]], *, workdir: Path, profile: Profile,
                 jobs: int | None, parent_run_id: str | None, plan_name: str = "",
                 dry_run: bool = False) -> list[JobResult]:
    """Run spec x seed entries as nested runs of `parent_run_id`: skip the finished ones, resume the
    interrupted ones, record the failing ones. Returns one result per entry."""
    todo: list[tuple[Spec, int, object | None]] = []
    results: list[JobResult] = []
    for spec, seed in entries:
        prev = tracker.find_spec_run(spec.hash(), seed)
        if prev is not None and prev.info.status == "FINISHED":
            results.append(JobResult(spec.name, seed, prev.info.run_id, "SKIPPED", "already finished"))
            state = f"done (run {prev.info.run_id[:8]})"
        else:
            todo.append((spec, seed, prev))
            state = f"resume ({prev.info.status.lower()} run {prev.info.run_id[:8]})" if prev else "to run"
        print(f"  - {spec.name:<22} seed {seed}  hash {spec.hash()}  {state}")
    if dry_run or not todo:
        return results
    device = detect_device()
    # Demos first, in the parent: several specs share one file, and workers must not race on it.
    # A spec whose demos cannot be made fails alone; the others go on.
    demo_for: dict[tuple[str, int], Path | str] = {}
    for spec, seed, _ in todo:
        try:
            demo_for[(spec.name, seed)] = ensure_demos(spec, workdir, 0)
        except UserError as e:
            demo_for[(spec.name, seed)] = f"demos: {e}"
    n_jobs = max(1, min(jobs or profile.jobs, len(todo)))
    job_list = []
    for spec, seed, prev in todo:
        demo = demo_for[(spec.name, seed)]
        tags = {TAG_KIND: "spec_run", TAG_SPEC: spec.name, TAG_SPEC_HASH: spec.hash(), TAG_SEED: seed,
                "ablation.git_commit": git_commit(), "ablation.device": device, "ablation.profile": profile.name,
                "ablation.plan": plan_name}
        if isinstance(demo, Path):
            tags.update({"ablation.demo_sha256": file_sha256(demo)[:16], "ablation.demo_file": str(demo)})
        if prev is not None:
            run_id = prev.info.run_id
            tracker.client.update_run(run_id, status="RUNNING")
            tracker.set_tags(run_id, {**tags, TAG_FAILURE: "", **({"mlflow.parentRunId": parent_run_id}
                                                                 if parent_run_id else {})})
        else:
            run_id = tracker.start_run(f"{spec.name}/seed{seed}", tags, parent_run_id)
        tracker.log_params(run_id, spec.flat())
        if not isinstance(demo, Path):
            tracker.end_run(run_id, "FAILED", demo)
            results.append(JobResult(spec.name, seed, run_id, "FAILED", demo))
            continue
        ckpt = workdir / "checkpoints" / f"{spec.name}-seed{seed}-{spec.hash()}"
        job_list.append(Job(spec.name, spec.to_yaml(), spec.hash(), seed, str(demo), str(ckpt),
                            tracker.tracking_uri, tracker.experiment_id, run_id, profile.name, device,
                            threads=1 if n_jobs > 1 else 0, progress=n_jobs == 1,
                            rollout_workers=profile.rollout_workers or 0))
    print(f"[plan] running {len(job_list)} job(s), {n_jobs} at a time")
    return results + (_dispatch(job_list, n_jobs) if job_list else [])


def _dispatch(jobs: list[Job], n_jobs: int) -> list[JobResult]:
    from tqdm import tqdm

    out: list[JobResult] = []
    bar = tqdm(total=len(jobs), desc="runs", unit="run", dynamic_ncols=True)
    if n_jobs == 1:
        for j in jobs:
            bar.set_postfix_str(j.spec_name)
            out.append(run_job(j))
            bar.update()
    else:
        with ProcessPoolExecutor(n_jobs, mp_context=get_context("spawn")) as pool:
            futs = {pool.submit(run_job, j): j for j in jobs}
            for fut in as_completed(futs):
                j = futs[fut]
                try:
                    out.append(fut.result())
                except Exception as e:  # a worker process died (e.g. killed): record it
                    reason = f"worker died: {type(e).__name__}: {e}"
                    Tracker(j.tracking_uri, j.experiment_id).end_run(j.run_id, "FAILED", reason)
                    out.append(JobResult(j.spec_name, j.seed, j.run_id, "FAILED", reason))
                bar.set_postfix_str(f"{j.spec_name}: {out[-1].status}")
                bar.update()
    bar.close()
    return out


def outcome_json(o: PlanOutcome) -> dict:
    return {"parent_run_id": o.parent_run_id, "results": [asdict(r) for r in o.results]}
