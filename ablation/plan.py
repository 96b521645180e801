"""The plan orchestrator: a resolved plan's runs, driven look by look to the report.

    parent run (one per plan, profile and --set; re-runs nest under it again)
      -> demos (once per task, in the parent: workers must not race on a file)
      -> pretraining, when the plan has it (one cached network, shared by every arm and seed)
      -> the arms the demos leave untestable are left out (a value: the resolved plan is not edited)
      -> look 1: every arm x seed gets looks[0] episodes (the same init states for every arm)
      -> analysis: paired effects, Holm across the plan's comparisons, alpha spent per look
      -> look k+1: only the arms of undecided comparisons get more episodes ... up to the cap
      -> report (a plan whose report cannot be written exits non-zero)

Every spec x seed run goes through the one run pipeline (ablation/run.py) in a worker process:
one of a local pool, or a Ray task on a cluster (ablation/executors.py, `--executor ray`). Arms and runs
come from ablation/arms.py, MLflow runs from ablation/registry.py, profiles from ablation/profiles.py.
"""
from __future__ import annotations

import logging
import traceback
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .analysis import analyse_look
from .arms import ResolvedPlan, RunUnit, resolve_plan
from .errors import UserError
from .executors import make_executor
from .needs import plan_time_facts, untestable_arms
from .plan_eta import PlanClock, estimate_plan_s, minutes
from .plan_pretrain import run_pretrain_stage
from .plan_print import announce, print_results, print_timing, task_text
from .plan_record import demo_provenance, write_plan_record
from .profiles import Profile, load_profile
from .registry import (ensure_spec_run, find_spec_run, job_for, mark_stale_runs,
                       open_plan_run)
from .run import RunJob, RunResult
from .spec import EXPERIMENTS_DIR, load_plan, resolve_spec, spec_path
from .tracking import Tracker, default_tracking_uri, runs_view_url
from .workdir import ensure_demos, workdir_lock

log = logging.getLogger(__name__)
# The full study each profile runs when no plan is named: one task on 2 CPU cores; a whole suite on a GPU.
DEFAULT_PLAN = {"cpu": "all", "gpu": "suite_sweep"}
DemoFor = dict[tuple[str, int | None], Path | str]  # (arm, task) -> its demo file, or why there is none


@dataclass
class PlanOutcome:
    parent_run_id: str | None
    results: list[RunResult]
    report_dir: Path | None
    report_ok: bool = True
    timing: dict = field(default_factory=dict)
    planned: list[dict] = field(default_factory=list)  # --dry-run: every run of the plan and its state

    @property
    def failed(self) -> list[RunResult]:
        return [r for r in self.results if r.status == "FAILED"]


@dataclass(frozen=True)
class PlanContext:
    """Where and how this invocation runs its plan."""

    tracker: Tracker
    parent: str
    profile: Profile
    workdir: Path
    n_jobs: int
    gate_episodes: int | None      # None: each spec's rollout.gate_episodes
    extra_sets: tuple[str, ...]


@dataclass
class PlanBook:
    """What this invocation has learned so far; `write` puts it on the parent run as the plan record."""

    rp: ResolvedPlan
    runs: dict[str, dict[str, str]] = field(default_factory=dict)  # arm -> {record key: run id}
    looks: list[dict] = field(default_factory=list)
    demos: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    unit_of: dict[str, RunUnit] = field(default_factory=dict)      # run id -> its unit (results come in any order)

    def write(self, ctx: PlanContext, final: bool = False) -> None:
        """The record so far; its timing only when `final` (mid-run it would be partial)."""
        write_plan_record(ctx.tracker, ctx.parent, self.rp, self.runs, self.looks, self.timing if final else None,
                          self.demos)


def run_plan(plan_name: str | None, *, profile_name: str = "auto", seeds: list[int] | None = None,
             only: list[str] | None = None, dry_run: bool = False, workdir: Path = Path("workdir"),
             tracking_uri: str | None = None, extra_sets: list[str] | None = None,
             jobs: int | None = None, gate_episodes: int | None = None,
             nest_under: str | None = None, executor: str = "local",
             ray_address: str | None = None) -> PlanOutcome:
    """Run plan `plan_name` (the profile's default plan when None) to its report, resuming what an earlier
    invocation left; dry_run: say what it would run and create nothing. Returns every run's result."""
    t0 = time.time()
    profile = load_profile(profile_name)
    plan = load_plan(plan_name or DEFAULT_PLAN[profile.name])
    rp = resolve_plan(plan, profile, seeds, only, list(extra_sets or []))
    workdir = Path(workdir).resolve()
    first = next(iter(rp.arms.values())).spec
    uri = tracking_uri or first.tracking.tracking_uri or default_tracking_uri(workdir)
    announce(rp, profile, workdir, uri, first.tracking.experiment)
    if dry_run:
        return dry_run_outcome(rp, profile, uri, first.tracking.experiment, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker.open(uri, first.tracking.experiment, workdir / "mlartifacts")
    log.info(f"[plan] runs view: {runs_view_url(tracker)}")
    n_jobs = max(1, min(jobs or profile.jobs, len(rp.units())))
    # Before any run is opened: a missing Ray or an unreachable cluster is a one-line error.
    dispatcher = make_executor(executor, n_jobs, ray_address, tracker.tracking_uri)
    killed, queued = mark_stale_runs(tracker)
    if killed or queued:
        log.info(f"[plan] runs left RUNNING by processes that ended: {killed} marked KILLED (cut short in a stage), "
                 f"{queued} SCHEDULED (queued, not started); this run takes them over")
    with workdir_lock(workdir, "runs"):  # two drivers of one plan share one parent run
        parent = open_plan_run(tracker, plan=plan.name, key=rp.key, profile=profile.name,
                               description=plan.description or f"plan {plan.name}", nest_under=nest_under)
    ctx = PlanContext(tracker, parent, profile, workdir, n_jobs, gate_episodes, tuple(extra_sets or ()))
    book = PlanBook(rp, timing={"setup_s": float(os.environ.get("ABLATION_SETUP_S", "0") or 0)})
    interrupted = False
    try:
        results = drive(ctx, book, dispatcher, t0)
    except KeyboardInterrupt:
        interrupted = True
        tracker.end_run(parent, "KILLED", "interrupted (Ctrl-C); re-run the same command to resume")
        raise
    except Exception as e:  # a bug or an unreadable store: the parent says why, then the error surfaces
        tracker.end_run(parent, "FAILED", f"{type(e).__name__}: {e}")
        raise
    finally:
        dispatcher.close(interrupted=interrupted)
        from .rollout_pool import close_shared_pools  # (imports the simulator's stack: only when runs ran)

        close_shared_pools()  # the driver's warm rollout pool (runs executed here with several workers)
    return finish(ctx, book, results, t0)


def drive(ctx: PlanContext, book: PlanBook, dispatcher, t0: float) -> list[RunResult]:
    """Demos, pretraining, the runs and their looks. Returns every run's latest result (runs whose demos
    or pretraining could not be made: FAILED with the reason)."""
    td = time.time()
    demo_for = make_demos(book.rp, ctx.workdir)
    book.timing["demos_s"] = time.time() - td
    rp = book.rp
    if rp.plan.pretrain is not None:
        tp = time.time()
        rp, demo_for = with_pretraining(ctx, rp, demo_for)
        book.timing["pretrain_s"] = time.time() - tp
    book.demos = {a if t is None else f"{a}/task{t}": demo_provenance(p)
                  for (a, t), p in demo_for.items() if isinstance(p, Path)}
    book.rp = rp.without(untestable(rp, demo_for))
    run_ids, not_run = open_runs(ctx, book, demo_for)
    book.write(ctx)
    latest, worker_s = run_looks(ctx, book, dispatcher, demo_for, run_ids)
    book.timing["training_worker_s"] = worker_s.get("train", 0.0) + worker_s.get("open_loop", 0.0)
    book.timing["rollouts_worker_s"] = worker_s.get("closed_loop", 0.0)
    book.timing["gate_worker_s"] = worker_s.get("gate", 0.0)
    book.timing["runs_wall_s"] = time.time() - t0 - book.timing["demos_s"]
    return list(latest.values()) + not_run


def make_demos(rp: ResolvedPlan, workdir: Path) -> DemoFor:
    """Demos first, in the parent: arms share one file per task. A task whose demos cannot be made fails
    its runs alone (its entry says why); the others go on."""
    demo_for: DemoFor = {}
    for arm in rp.arms.values():
        for task in arm.tasks or (None,):
            try:
                demo_for[(arm.name, task)] = ensure_demos(arm.spec_at(task), workdir, 0)
            except UserError as e:
                demo_for[(arm.name, task)] = f"demos: {e}"
    return demo_for


def with_pretraining(ctx: PlanContext, rp: ResolvedPlan, demo_for: DemoFor) -> tuple[ResolvedPlan, DemoFor]:
    """The plan with its arms pointed at the pretrained network; if pretraining fails, the plan as it was
    and the arms that need it without demos (their runs fail with the reason; the others go on)."""
    from .pretrain import PRETRAIN_MARKER  # (imports torch: only for plans that pretrain)

    try:
        return run_pretrain_stage(ctx.tracker, ctx.parent, rp, ctx.profile, ctx.workdir, ctx.extra_sets), demo_for
    except Exception as e:
        log.warning(f"[plan] pretraining failed: {type(e).__name__}: {e}")
        why = f"pretrain: {type(e).__name__}: {e}"
        failed = {(a.name, t): why for a in rp.arms.values()
                  if any(str(v or "").startswith(PRETRAIN_MARKER) for v in (a.spec.train.init_from, a.spec.data.norm_stats_from))
                  for t in a.tasks or (None,)}
        return rp, {**demo_for, **failed}


def untestable(rp: ResolvedPlan, demo_for: DemoFor) -> dict[str, str]:
    """Arms that only serve comparisons untestable on these demos (e.g. rotation scaling when the expert
    never turns): they are not trained; their comparisons are reported as untestable. arm -> why."""
    files = {a: [p for (n, _t), p in demo_for.items() if n == a and isinstance(p, Path)] for a in rp.arms}
    out = untestable_arms(rp.hypotheses, list(rp.arms), plan_time_facts(rp.arms, files))
    for a, why in out.items():
        log.info(f"[plan] {a}: not run, {why}")
    return out


def open_runs(ctx: PlanContext, book: PlanBook, demo_for: DemoFor) -> tuple[dict[tuple, str], list[RunResult]]:
    """Every run of the plan, found or created once (under the workdir lock: drivers may race). Returns
    RunUnit.key -> run id, and the results of the runs whose demos could not be made (FAILED)."""
    run_ids: dict[tuple, str] = {}
    not_run: list[RunResult] = []
    for u in book.rp.units():
        demo = demo_for[(u.arm.name, u.task)]
        with workdir_lock(ctx.workdir, "runs"):
            rid, state = ensure_spec_run(ctx.tracker, u.spec, name=u.name, parent=ctx.parent, arm=u.arm.name,
                                         plan=book.rp.plan.name, profile=ctx.profile.name,
                                         demo=demo if isinstance(demo, Path) else None)
            u.adopt_legacy_ckpt_dir(ctx.workdir)
        run_ids[u.key], book.unit_of[rid] = rid, u
        book.runs.setdefault(u.arm.name, {})[u.record_key] = rid
        log.info(f"  - {u.arm.name:<26} seed {u.seed}{task_text(u)}  run {rid[:8]}  {state}")
        if not isinstance(demo, Path):
            ctx.tracker.end_run(rid, "FAILED", demo)
            not_run.append(RunResult(u.arm.name, u.seed, rid, "FAILED", demo))
    return run_ids, not_run


def run_looks(ctx: PlanContext, book: PlanBook, dispatcher, demo_for: DemoFor,
              run_ids: dict[tuple, str]) -> tuple[dict[tuple, RunResult], dict[str, float]]:
    """The looks: each one brings the runs still needed to its episode count, then the analysis says
    which comparisons are decided. Returns RunUnit.key -> latest result, and worker-seconds per stage."""
    rp = book.rp
    looks = list(rp.plan.episodes.looks) if rp.plan.episodes else [None]
    clock = PlanClock(looks, ctx.n_jobs, prior=ctx.profile.costs, prior_class=ctx.profile.costs_cpu_class)
    active = {u.key for u in rp.units()}
    latest: dict[tuple, RunResult] = {}
    previous: dict = {}
    worker_s: dict[str, float] = {}  # summed over every look, for the time breakdown
    for k, look in enumerate(looks):
        jobs = [look_job(ctx, u, run_ids[u.key], demo_for[(u.arm.name, u.task)], look) for u in rp.dispatch_order()
                if u.key in active and isinstance(demo_for[(u.arm.name, u.task)], Path)]
        label = f"look {k + 1}/{len(looks)}" + (f" ({look} episodes)" if look else "")
        log.info(f"[plan] {label}: {len(jobs)} run(s), {dispatcher.parallelism}")
        clock.start_look(k, len(jobs))
        new_eps = (look or 0) - ((looks[k - 1] or 0) if k > 0 else 0)
        for r in dispatcher.run(jobs, label):
            latest[book.unit_of[r.run_id].key] = r
            clock.finished(r.stage_seconds, new_eps, len(jobs), took_over=r.took_over)
            for st, v in r.stage_seconds.items():
                worker_s[st] = worker_s.get(st, 0.0) + v
        decision = analyse_look(rp, latest, k, looks, previous)
        previous = decision.by_key()
        book.looks.append(decision.to_record(look))
        log.info(decision.summary_line())
        ctx.tracker.log_metrics(ctx.parent, [("plan/undecided_comparisons", len(decision.undecided), k),
                                             ("plan/look_episodes", look or 0, k)])
        book.write(ctx)
        active = decision.arms_to_extend
        if not active or look is None:
            break
    return latest, worker_s


def look_job(ctx: PlanContext, u: RunUnit, run_id: str, demo: Path, look: int | None) -> RunJob:
    """The job that brings run `run_id` to this look's episodes (the spec's rollout.episodes without looks)."""
    spec = u.spec
    return job_for(ctx.tracker, run_id, spec, demo, u.ckpt_dir(ctx.workdir),
                   look if look is not None else spec.rollout.episodes, ctx.workdir,
                   rollout_workers=ctx.profile.rollout_workers or spec.rollout.workers,
                   rollout_batch=ctx.profile.rollout_batch, threads=1 if ctx.n_jobs > 1 else 0,
                   progress=ctx.n_jobs == 1, gate_episodes=ctx.gate_episodes)


def finish(ctx: PlanContext, book: PlanBook, results: list[RunResult], t0: float) -> PlanOutcome:
    """The report, the final plan record and time breakdown, and the parent's end: FAILED when a run
    failed or the report could not be written."""
    report_dir = ctx.workdir / "report"
    tr = time.time()
    report_ok = False
    try:
        from .report import build_report  # (imports matplotlib: only once the runs are done)

        rep = build_report(ctx.tracker, parent_run_id=ctx.parent, out_dir=report_dir)
        book.timing["report_s"] = time.time() - tr
        ctx.tracker.log_artifact(ctx.parent, report_dir, "report")
        print(rep.answer)
        log.info(f"[plan] report: {report_dir / 'report.html'} (and report.md)")
        report_ok = True
    except Exception as e:  # the runs are safe in MLflow; say why the report is missing
        log.warning(f"[plan] report not written: {type(e).__name__}: {e}")
        traceback.print_exc()
    book.timing["wall_s"] = time.time() - t0
    book.write(ctx, final=True)
    print_timing(book.timing)
    failed = [r for r in results if r.status == "FAILED"]
    ctx.tracker.log_metrics(ctx.parent, [("plan/runs_failed", len(failed), 0)] +
                            [(f"time/{k}", v, 0) for k, v in book.timing.items()])
    ok = not failed and results and report_ok
    ctx.tracker.end_run(ctx.parent, "FINISHED" if ok else "FAILED",
                        None if ok else (f"{len(failed)} run(s) failed" if failed else "report not written"))
    print_results(results, {rid: u.name for rid, u in book.unit_of.items()} if book.rp.multitask else None)
    return PlanOutcome(ctx.parent, results, report_dir, report_ok, book.timing)


def dry_run_outcome(rp: ResolvedPlan, profile: Profile, uri: str, experiment: str, workdir: Path) -> PlanOutcome:
    """What --dry-run prints and returns: every run of the plan and its state in the store. It creates
    and changes nothing: without an MLflow store yet, every run is "to run" (and MLflow is not even imported)."""
    store = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    tracker = None if store is not None and not store.is_file() else \
        Tracker.open(uri, experiment, workdir / "mlartifacts")
    planned = []
    for u in rp.units():
        found = find_spec_run(tracker, u.spec) if tracker else None
        rid, state = (found.info.run_id, found.info.status.lower()) if found else ("", "to run")
        print(f"  - {u.arm.name:<26} seed {u.seed}{task_text(u)}  hash {u.spec.hash()}  "
              f"{state}{f' (run {rid[:8]})' if rid else ''}")
        planned.append({"arm": u.arm.name, "seed": u.seed, "task": u.spec.data.task, "suite": u.spec.data.suite,
                        "spec_hash": u.spec.hash(), "state": state, "run_id": rid or None,
                        "train_steps": u.spec.train.total_steps})
    est = _estimate(rp, profile, sum(p["state"] != "finished" for p in planned))
    if est is not None:
        lo, hi = est
        log.info(f"[plan] estimated wall time on this profile: {minutes(lo)} to {minutes(hi)} (every comparison "
                 f"decided at the first look .. every arm to the last), from the profile's measured costs "
                 f"{profile.costs}{f' ({profile.costs_cpu_class} CPU)' if profile.costs_cpu_class else ''}; "
                 "finished runs are not counted, and arms the demos make untestable still are"
                 f"{f'; {profile.costs_note}' if profile.costs_note else ''}")
    out = PlanOutcome(None, [], None, planned=planned)
    out.timing = {"estimated_wall_s": list(est), "costs_cpu_class": profile.costs_cpu_class} if est is not None else {}
    return out


def _estimate(rp: ResolvedPlan, profile: Profile, todo: int) -> tuple[float, float] | None:
    """--dry-run's wall-time range for the `todo` runs still to do, from the profile's measured costs (an
    upper range: arms that the demos make untestable are dropped only once the demos exist)."""
    if profile.costs is None:
        return None
    units = list(rp.units())
    codecs = {(u.spec.codec.model_dump_json(), u.spec.data.task) for u in units}
    demos = {(u.spec.data.suite, u.spec.data.task): u.spec.data.n_demos for u in units}
    n_demos = sum(demos.values())
    looks = list(rp.plan.episodes.looks) if rp.plan.episodes else [units[0].spec.rollout.episodes if units else 0]
    # training in run-equivalents: a 4x arm costs 4 runs; pretraining (each spec x seed) and its demos count too
    train_runs = todo * (sum(u.spec.train.steps_scale for u in units) / len(units)) if units else 0.0
    st = rp.plan.pretrain
    if st is not None and todo:
        plan_dir = Path(rp.plan.path).parent if rp.plan.path else EXPERIMENTS_DIR / "plans"
        train_runs += sum(resolve_spec(spec_path(n, relative_to=plan_dir)).train.steps_scale
                          for n in st.spec_names) * max(1, len(st.seeds))  # a step costs the same on any demos
        n_demos += st.n_demos * len(st.tasks)
    return estimate_plan_s(profile.costs, n_runs=todo, n_codecs=len(codecs), n_demos=n_demos, looks=looks,
                           parallel=profile.jobs, train_runs=train_runs)


def outcome_json(o: PlanOutcome) -> dict:
    return {"parent_run_id": o.parent_run_id, "report_ok": o.report_ok, "timing": o.timing,
            "results": [{k: v for k, v in asdict(r).items() if k != "episodes"} for r in o.results],
            "planned": o.planned}
