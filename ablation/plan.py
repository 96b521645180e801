"""The orchestrator: a plan's hypotheses -> arms x seeds (x tasks) -> runs in looks -> the report.

    parent run (one per plan, profile and --set; re-runs nest under it again)
      -> demos (once per task, in the parent: workers must not race on a file)
      -> look 1: every arm x seed gets looks[0] episodes (the same init states for every arm)
      -> analysis: paired effects, Holm across the plan's comparisons, alpha spent per look
      -> look k+1: only the arms of undecided comparisons get more episodes ... up to the cap
      -> report (a plan whose report cannot be written exits non-zero)

Every spec x seed run goes through the one run pipeline (ablation/run.py) in a worker process:
one of a local pool, or a Ray task on a cluster (ablation/executors.py, `--executor ray`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml

from .analysis import analyse_look
from .diskfull import disk_full_as_error
from .errors import UserError
from .hypothesis import Hypothesis, load_hypothesis
from .needs import plan_time_facts, untestable_arms
from .plan_eta import PlanClock, StageCosts, estimate_plan_s, minutes
from .plan_record import PLAN_RECORD, task_label
from .provenance import file_sha256, git_commit, source_tags, versions
from .run import RunJob, RunResult
from .spec import EXPERIMENTS_DIR, Plan, Spec, SpecError, load_plan, resolve_spec, spec_path
from .tracking import (TAG_FAILURE, TAG_KIND, TAG_SEED, TAG_SPEC, TAG_SPEC_HASH, Tracker, default_tracking_uri,
                       runs_view_url, ui_command)
from .workdir import ensure_demos, workdir_lock

log = logging.getLogger(__name__)
PROFILES_DIR = EXPERIMENTS_DIR / "profiles"
TAG_ARM = "ablation.arm"
TAG_TASK = "ablation.task"          # suite/task of a spec run
TAG_PLAN_KEY = "ablation.plan_key"
TAG_LEGACY_HASH = "ablation.spec_hash_legacy"  # a migrated run's hash before resources left the identity
# The full study each profile runs when no plan is named: one task on 2 CPU cores; a whole suite on a GPU.
DEFAULT_PLAN = {"cpu": "all", "gpu": "suite_sweep"}


# ----------------------------------------------------------------------------- profiles

@dataclass(frozen=True)
class Profile:
    name: str
    sets: tuple[str, ...]
    jobs: int
    rollout_workers: int | None
    # Episodes each rollout process steps in lockstep, one policy call for all of them: an execution
    # detail like the worker count (each episode keeps its own noise; the actions agree with one at a
    # time to float rounding), so the profile's, not the spec's.
    rollout_batch: int = 1
    # Measured worker-seconds per demo, Gate A codec, training run and episode: --dry-run's estimate.
    costs: StageCosts | None = None


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
        log.info(f"[plan] profile auto -> {name} (device: {detect_device()})")
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise SpecError(f"profile '{name}' not found; known: auto, {known}")
    raw = yaml.safe_load(path.read_text()) or {}
    workers = raw.get("rollout_workers")
    if workers == "auto":  # the CPUs this process may use (a container's limit, not the host's count)
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    batch = raw.get("rollout_batch", 1)
    if not isinstance(batch, int) or batch < 1:
        raise SpecError(f"{path}: rollout_batch: {batch!r} is not a whole number >= 1; "
                        "write e.g. `rollout_batch: 4` (1: one episode at a time)")
    try:
        costs = StageCosts.from_mapping(raw.get("costs"))
    except (TypeError, ValueError) as e:
        raise SpecError(f"{path}: {e} (worker-seconds, e.g. `costs: {{train_s: 60, episode_s: 2.5}}`)") from None
    return Profile(name, tuple(raw.get("set", [])), int(raw.get("jobs", 1)), workers, batch, costs)


# ----------------------------------------------------------------------------- arms

@dataclass(frozen=True)
class Arm:
    name: str
    spec: Spec                      # resolved, without the seed
    seeds: tuple[int, ...]
    # The plan's tasks of the spec's suite; None: the spec's own data.task (a single-task plan, whose
    # run names, checkpoint dirs and spec hashes carry no task, as before multi-task plans existed).
    tasks: tuple[int, ...] | None = None
    # Overrides for one seed's runs only, (seed, sets): e.g. the pretraining run (train.init_from) that
    # fine-tuning seed s starts from when a plan pretrains several times (pretrain.seeds).
    seed_sets: tuple[tuple[int, tuple[str, ...]], ...] = ()

    def spec_at(self, task: int | None) -> Spec:
        """The arm's spec on `task` (its own task when None), without the seed."""
        from .spec import with_overrides

        return self.spec if task is None else with_overrides(self.spec, [f"data.task={task}"])

    def spec_for(self, seed: int, task: int | None = None) -> Spec:
        from .spec import with_overrides

        extra = [x for s, sets in self.seed_sets if s == seed for x in sets]
        return with_overrides(self.spec, [f"train.seed={seed}"] + ([] if task is None else [f"data.task={task}"]) + extra)


@dataclass(frozen=True)
class RunUnit:
    """One trained network of a plan: arm x seed (x task, in a multi-task plan)."""

    arm: Arm
    seed: int
    task: int | None = None

    @property
    def key(self) -> tuple[str, int, int | None]:
        return (self.arm.name, self.seed, self.task)

    @property
    def spec(self) -> Spec:
        return self.arm.spec_for(self.seed, self.task)

    @property
    def name(self) -> str:
        """The MLflow run name: `arm/seedN`, or `arm/seedN/taskK` in a multi-task plan."""
        return f"{self.arm.name}/seed{self.seed}" + ("" if self.task is None else f"/task{self.task}")

    @property
    def record_key(self) -> str:
        """Key of this run under its arm in plan.json's `runs`: the seed, or `seed/taskK`."""
        return str(self.seed) + ("" if self.task is None else f"/task{self.task}")

    def ckpt_dir(self, workdir: Path) -> Path:
        return self._ckpt_dir(workdir, self.spec.hash())

    def _ckpt_dir(self, workdir: Path, spec_hash: str) -> Path:
        task = "" if self.task is None else f"-task{self.task}"
        return workdir / "checkpoints" / f"{self.arm.name}-seed{self.seed}{task}-{spec_hash}"

    def adopt_legacy_ckpt_dir(self, workdir: Path) -> bool:
        """An older workdir names this run's checkpoint directory by Spec.legacy_hash: link the current
        name to it (the run's state records absolute paths under the old name), so the run resumes there.
        Returns whether it linked."""
        new, old = self.ckpt_dir(workdir), self._ckpt_dir(workdir, self.spec.legacy_hash())
        if new.exists() or new.is_symlink() or not old.is_dir():
            return False
        new.parent.mkdir(parents=True, exist_ok=True)
        new.symlink_to(old.name, target_is_directory=True)
        return True


@dataclass
class ResolvedPlan:
    plan: Plan
    hypotheses: list[Hypothesis]
    arms: dict[str, Arm]
    key: str                        # identifies "the same plan" across invocations
    skipped: dict[str, str]         # arm -> why this plan leaves it out

    @property
    def comparisons(self) -> list[tuple[str, object]]:
        """(hypothesis name, Comparison) for every comparison whose arms this plan trains."""
        return [(h.name, c) for h in self.hypotheses for c in h.comparisons
                if c.arm in self.arms and c.control in self.arms]

    @property
    def multitask(self) -> bool:
        return any(a.tasks is not None for a in self.arms.values())

    def entries(self) -> list[tuple[Arm, int]]:
        return [(a, s) for a in self.arms.values() for s in a.seeds]

    def units(self) -> list[RunUnit]:
        """Every run of the plan: arm x seed, times the arm's tasks in a multi-task plan."""
        return [RunUnit(a, s, t) for a in self.arms.values() for t in (a.tasks or (None,)) for s in a.seeds]


def plan_tasks(plan: Plan, sets: list[str]) -> tuple[str | tuple[int, ...] | None, list[str]]:
    """The plan's tasks and the sets left for the specs. A `data.task=` set whose value is a list or
    `all` names the plan's tasks (the last one wins, after the plan's own `tasks`); a single id stays a
    spec override (one task, as before) and replaces any earlier list."""
    from .spec import parse_set

    tasks, keep = plan.tasks, []
    for item in sets:
        path, value = parse_set(item)
        if path == ["data", "task"] and (value == "all" or isinstance(value, list)):
            if value != "all" and (not value or not all(isinstance(t, int) and t >= 0 for t in value)
                                   or len(set(value)) != len(value)):
                raise SpecError(f"--set {item}: data.task takes one task id, a list of distinct ids "
                                "(e.g. data.task=[0,3]) or 'all'")
            tasks = value if value == "all" else tuple(value)
            continue
        if path == ["data", "task"]:
            tasks = None
        keep.append(item)
    return tasks, keep


def resolve_plan(plan: Plan, profile: Profile, seeds: list[int] | None = None, only: list[str] | None = None,
                 extra_sets: list[str] | None = None) -> ResolvedPlan:
    plan_dir = Path(plan.path).parent if plan.path else EXPERIMENTS_DIR / "plans"
    hyps = [load_hypothesis(h, plan_dir) for h in plan.hypotheses]
    names: list[str] = []
    for h in hyps:
        names += [a for a in h.arms() if a not in names]
    entry_sets = {e.spec: e for e in plan.entries}
    names += [e.spec for e in plan.entries if e.spec not in names]
    skipped = {a: why for a, why in plan.skip_arms.items() if a in names}
    names = [n for n in names if n not in skipped]
    if only:
        short = {n: Path(n).stem if n.endswith((".yaml", ".yml")) else n for n in names}
        unknown = [o for o in only if o not in names and o not in short.values()]
        if unknown:
            raise SpecError(f"--only {', '.join(unknown)}: no such arm in plan '{plan.name}' "
                            f"({', '.join(short.values())})")
        names = [n for n in names if n in only or short[n] in only]
    arms: dict[str, Arm] = {}
    for ref in names:
        e = entry_sets.get(ref)
        hyp_dirs = [Path(h.path).parent for h in hyps if h.path and ref in h.arms()]
        path = spec_path(ref, relative_to=hyp_dirs[0] if hyp_dirs else plan_dir)
        tasks, sets = plan_tasks(plan, [*profile.sets, *plan.set, *(e.set if e else ()), *(extra_sets or [])])
        arm_seeds = tuple(seeds or (e.seeds if e and e.seeds else None) or plan.seeds)
        # An entry given as a file path is named by its file (as its spec is), not by the whole path.
        name = Path(ref).stem if ref.endswith((".yaml", ".yml")) else ref
        spec = resolve_spec(path, sets)
        if tasks == "all":
            tasks = _covered_tasks(spec.data.suite)
        arms[name] = Arm(name, spec, arm_seeds, tasks)
        if plan.pretrain is not None and set(tasks or ()) & set(plan.pretrain.tasks):
            raise SpecError(f"{plan.path or plan.name}: tasks {list(tasks)} overlap pretrain.tasks "
                            f"{list(plan.pretrain.tasks)}; fine-tune on tasks the pretraining did not see")
    # Sets of resource or presentation fields (rollout.workers=2) leave the plan, as its runs, the same.
    from .spec import affects_identity, parse_set

    key_sets = [s for s in extra_sets or [] if affects_identity(".".join(parse_set(s)[0]))]
    blob = json.dumps({"plan": plan.name, "profile": profile.name, "sets": sorted(key_sets)}, sort_keys=True)
    key = f"{plan.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"
    return ResolvedPlan(plan, hyps, arms, key, skipped)


_COVERED: dict[str, tuple[int, ...]] = {}


def _covered_tasks(suite: str) -> tuple[int, ...]:
    """`tasks: all`: every task of the suite whose goal the scripted expert covers (read once)."""
    if suite not in _COVERED:
        from .sim.expert import SUPPORTED_SUITES, covered_tasks

        if suite not in SUPPORTED_SUITES:
            raise SpecError(f"tasks: all: the scripted expert covers {', '.join(SUPPORTED_SUITES)}, not {suite}; "
                            "name the tasks (e.g. tasks: [0, 1]) with your own demo files")
        _COVERED[suite] = tuple(covered_tasks(suite))
    return _COVERED[suite]


# ----------------------------------------------------------------------------- the parent run

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True


def mark_stale_runs(tracker: Tracker) -> int:
    """Runs left RUNNING by a plan process of this host that no longer exists (kill -9, power loss)
    are marked KILLED, with the reason. Returns how many."""
    host, n = socket.gethostname(), 0
    for r in tracker.find_runs("attributes.status = 'RUNNING'"):
        tags = r.data.tags
        if tags.get("ablation.host") != host:
            continue
        try:
            pid = int(tags.get("ablation.pid", "0"))
        except ValueError:
            continue
        if pid and not _pid_alive(pid):
            tracker.end_run(r.info.run_id, "KILLED", f"its process ({host} pid {pid}) ended without closing it")
            n += 1
    return n


def _owner_tags() -> dict[str, str]:
    return {"ablation.host": socket.gethostname(), "ablation.pid": str(os.getpid())}


def open_parent(tracker: Tracker, rp: ResolvedPlan, profile: Profile) -> str:
    """The plan's parent run: the one from an earlier invocation of the same plan, or a new one."""
    found = tracker.find_runs(f"tags.`{TAG_PLAN_KEY}` = '{rp.key}' and tags.`{TAG_KIND}` = 'plan'")
    tags = {TAG_KIND: "plan", "ablation.plan": rp.plan.name, TAG_PLAN_KEY: rp.key, "ablation.profile": profile.name,
            "ablation.git_commit": git_commit(), "ablation.device": detect_device(), **_owner_tags(),
            **source_tags(rp.plan.description or f"plan {rp.plan.name}")}
    if found:
        rid = found[0].info.run_id
        tracker.client.update_run(rid, status="RUNNING")
        tracker.set_tags(rid, {**tags, TAG_FAILURE: ""})
        return rid
    return tracker.start_run(f"plan:{rp.plan.name}", tags)


def demo_provenance(path: Path) -> dict:
    """Where a demo file's episodes started and how they were made (its `ablation_attrs`)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f["data"].attrs.get("ablation_attrs", "{}")
        attrs = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except Exception:
        attrs = {}
    keep = ("starts", "seed", "n_demos", "dart_sigma", "suite", "task", "source", "min_distance_to_benchmark_init")
    out = {k: attrs[k] for k in keep if k in attrs}
    out.setdefault("starts", attrs.get("starts", "the benchmark's init states (older demo file)"))
    out["path"] = str(path)
    return out


def write_plan_record(tracker: Tracker, parent: str, rp: ResolvedPlan, runs: dict, looks: list[dict],
                      timing: dict | None = None, demos: dict | None = None) -> dict:
    """What the report needs to find this plan's runs and judge them, as an artifact of the parent."""
    rec = {
        "plan": rp.plan.name, "key": rp.key, "description": rp.plan.description,
        "hypotheses": [{**h.model_dump(mode="json"), "path": h.path} for h in rp.hypotheses],
        "arms": {a.name: {"spec_hash": a.spec.hash(), "seeds": list(a.seeds), "description": a.spec.description,
                          "suite": a.spec.data.suite, "task": a.spec.data.task,
                          "tasks": list(a.tasks) if a.tasks is not None else None,
                          "pretrained": bool(a.spec.model.pretrained or a.spec.train.init_from),
                          "init_from": a.spec.train.init_from, "train_steps": a.spec.train.total_steps}
                 for a in rp.arms.values()},
        "demos": demos or {},
        "versions": versions(),
        "skipped_arms": rp.skipped,
        "runs": runs,                       # arm -> {seed: run_id}, or {"seed/taskK": run_id} with tasks
        "episodes": rp.plan.episodes.model_dump(mode="json") if rp.plan.episodes else None,
        "looks": looks,
        "timing": timing or {},
    }
    text = json.dumps(rec, indent=1, default=str)
    with tempfile.TemporaryDirectory() as d:
        with disk_full_as_error(Path(d) / PLAN_RECORD, len(text)):
            (Path(d) / PLAN_RECORD).write_text(text)
        tracker.log_artifact(parent, Path(d) / PLAN_RECORD)  # a cut-short upload is refused by the report
    return rec


# ----------------------------------------------------------------------------- execution

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


def _ensure_run(tracker: Tracker, unit: RunUnit, parent: str | None, rp: ResolvedPlan, profile: Profile,
                demo: Path | None) -> tuple[str, str]:
    """(run id, state) for one arm x seed (x task): the existing run of this exact spec and seed (any
    plan), or a new one nested under the parent."""
    arm, seed, spec = unit.arm, unit.seed, unit.spec
    prev = tracker.find_spec_run(spec.hash(), seed, spec.legacy_hash())
    tags = {TAG_KIND: "spec_run", TAG_SPEC: spec.name, TAG_SPEC_HASH: spec.hash(), TAG_SEED: seed, TAG_ARM: arm.name,
            TAG_TASK: task_label(spec), "ablation.git_commit": git_commit(), "ablation.device": detect_device(),
            "ablation.profile": profile.name, "ablation.plan": rp.plan.name, **_owner_tags(),
            **source_tags(spec.description)}
    digest = None
    if demo is not None:
        digest = file_sha256(demo)
        tags.update({"ablation.demo_sha256": digest[:16], "ablation.demo_file": str(demo)})
    if prev is not None:
        state = prev.info.status.lower()
        if parent is not None and prev.data.tags.get(TAG_SPEC_HASH) != spec.hash():
            # A run of an older workdir, found by its legacy hash: it carries the current identity from now
            # on (and its old one beside it), so later re-runs with other resource settings find it too.
            tracker.set_tags(prev.info.run_id, {TAG_SPEC_HASH: spec.hash(),
                                                TAG_LEGACY_HASH: prev.data.tags.get(TAG_SPEC_HASH, "")})
        if prev.info.status != "FINISHED":
            tracker.set_tags(prev.info.run_id, {**tags, **({"mlflow.parentRunId": parent} if parent else {})})
        return prev.info.run_id, state
    if parent is None:
        return "", "to run"
    rid = tracker.start_run(unit.name, tags, parent)
    tracker.log_params(rid, spec.flat())
    if demo is not None:
        tracker.log_dataset(rid, demo, digest, context="training")
    return rid, "new"


def run_plan(plan_name: str | None, *, profile_name: str = "auto", seeds: list[int] | None = None,
             only: list[str] | None = None, dry_run: bool = False, workdir: Path = Path("workdir"),
             tracking_uri: str | None = None, extra_sets: list[str] | None = None,
             jobs: int | None = None, gate_episodes: int | None = None,
             nest_under: str | None = None, executor: str = "local",
             ray_address: str | None = None) -> PlanOutcome:
    t0 = time.time()
    profile = load_profile(profile_name)
    plan = load_plan(plan_name or DEFAULT_PLAN[profile.name])
    rp = resolve_plan(plan, profile, seeds, only, list(extra_sets or []))
    workdir = Path(workdir).resolve()
    first = next(iter(rp.arms.values())).spec
    uri = tracking_uri or first.tracking.tracking_uri or default_tracking_uri(workdir)
    n_runs = len(rp.units())
    log.info(f"[plan] {plan.name}: {len(rp.arms)} arm(s) x seeds{' x tasks' if rp.multitask else ''} = {n_runs} run(s), "
             f"profile {profile.name}")
    log.info(f"[plan] workdir {workdir}")
    log.info(f"[plan] MLflow store {uri}, experiment '{first.tracking.experiment}'")
    log.info(f"[plan] open the UI with:  {ui_command(uri)}")
    describe_plan(rp)
    if dry_run:
        return dry_run_outcome(rp, profile, uri, first.tracking.experiment, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker.open(uri, first.tracking.experiment, workdir / "mlartifacts")
    log.info(f"[plan] runs view: {runs_view_url(tracker)}")
    from .executors import make_executor

    n_jobs = max(1, min(jobs or profile.jobs, n_runs))
    # Before any run is opened: a missing Ray or an unreachable cluster is a one-line error.
    dispatcher = make_executor(executor, n_jobs, ray_address, tracker.tracking_uri)
    stale = mark_stale_runs(tracker)
    if stale:
        log.info(f"[plan] marked {stale} run(s) left RUNNING by dead processes as KILLED")
    with workdir_lock(workdir, "runs"):  # two drivers of one plan share one parent run
        parent = open_parent(tracker, rp, profile)
    if nest_under:  # e.g. a tuning study's re-evaluation, shown under the study's run
        tracker.set_tags(parent, {"mlflow.parentRunId": nest_under})
    timing = {"setup_s": float(os.environ.get("ABLATION_SETUP_S", "0") or 0)}
    results: list[RunResult] = []
    demos: dict = {}
    looks_log: list[dict] = []
    runs: dict[str, dict[str, str]] = {}
    unit_of: dict[str, RunUnit] = {}  # run id -> its unit (results come back in any order)
    report_ok = False
    report_dir = workdir / "report"
    try:
        # Demos first, in the parent: arms share one file per task. A task whose demos cannot be made
        # fails its runs alone; the others go on.
        td = time.time()
        demo_for: dict[tuple[str, int | None], Path | str] = {}  # (arm, task) -> file, or why not
        for arm in rp.arms.values():
            for task in arm.tasks or (None,):
                try:
                    demo_for[(arm.name, task)] = ensure_demos(arm.spec_at(task), workdir, 0)
                except UserError as e:
                    demo_for[(arm.name, task)] = f"demos: {e}"
        timing["demos_s"] = time.time() - td
        if plan.pretrain is not None:
            tp = time.time()
            try:
                rp = run_pretrain_stage(tracker, parent, rp, profile, workdir, list(extra_sets or []))
            except Exception as e:  # the arms that need it fail with the reason; the others go on
                from .pretrain import PRETRAIN_MARKER

                log.warning(f"[plan] pretraining failed: {type(e).__name__}: {e}")
                for a in rp.arms.values():
                    if any(str(v or "").startswith(PRETRAIN_MARKER)
                           for v in (a.spec.train.init_from, a.spec.data.norm_stats_from)):
                        for task in a.tasks or (None,):
                            demo_for[(a.name, task)] = f"pretrain: {type(e).__name__}: {e}"
            timing["pretrain_s"] = time.time() - tp
        demos = {a if t is None else f"{a}/task{t}": demo_provenance(p)
                 for (a, t), p in demo_for.items() if isinstance(p, Path)}
        # Arms that only serve comparisons untestable on these demos (e.g. rotation scaling when the
        # expert never turns) are not trained; their comparisons are reported as untestable.
        files = {a: [p for (n, _t), p in demo_for.items() if n == a and isinstance(p, Path)] for a in rp.arms}
        for a, why in untestable_arms(rp.hypotheses, list(rp.arms), plan_time_facts(rp.arms, files)).items():
            log.info(f"[plan] {a}: not run, {why}")
            rp.skipped[a] = why
            del rp.arms[a]
        run_ids: dict[tuple, str] = {}       # RunUnit.key -> run id
        not_run: list[RunResult] = []  # runs whose demos (or pretraining) could not be made
        for u in rp.units():
            demo = demo_for[(u.arm.name, u.task)]
            with workdir_lock(workdir, "runs"):  # ... and create each of its runs once
                rid, state = _ensure_run(tracker, u, parent, rp, profile, demo if isinstance(demo, Path) else None)
                u.adopt_legacy_ckpt_dir(workdir)
            run_ids[u.key], unit_of[rid] = rid, u
            runs.setdefault(u.arm.name, {})[u.record_key] = rid
            log.info(f"  - {u.arm.name:<26} seed {u.seed}{_task_text(u)}  run {rid[:8]}  {state}")
            if not isinstance(demo, Path):
                tracker.end_run(rid, "FAILED", demo)
                not_run.append(RunResult(u.arm.name, u.seed, rid, "FAILED", demo))
        write_plan_record(tracker, parent, rp, runs, looks_log, demos=demos)
        looks = list(plan.episodes.looks) if plan.episodes else [None]
        clock = PlanClock(looks, n_jobs)
        active = {u.key for u in rp.units()}
        latest: dict[tuple, RunResult] = {}  # RunUnit.key -> the run's latest result
        previous: dict = {}
        worker_s: dict[str, float] = {}
        for k, look in enumerate(looks):
            job_list = []
            for u in rp.units():
                demo = demo_for[(u.arm.name, u.task)]
                if u.key not in active or not isinstance(demo, Path):
                    continue
                spec = u.spec
                n_eps = look if look is not None else spec.rollout.episodes
                job_list.append(RunJob(
                    u.arm.name, spec.to_yaml(), u.seed, run_ids[u.key], tracker.tracking_uri,
                    tracker.experiment_id, str(demo), str(u.ckpt_dir(workdir)), tuple(range(n_eps)),
                    rollout_workers=profile.rollout_workers or spec.rollout.workers,
                    rollout_batch=profile.rollout_batch,
                    threads=1 if n_jobs > 1 else 0, progress=n_jobs == 1,
                    gate_episodes=spec.rollout.gate_episodes if gate_episodes is None else gate_episodes,
                    gate_cache_dir=str(workdir / "gates")))
            label = f"look {k + 1}/{len(looks)}" + (f" ({look} episodes)" if look else "")
            log.info(f"[plan] {label}: {len(job_list)} run(s), {dispatcher.parallelism}")
            clock.start_look(k, len(job_list))
            new_eps = (look or 0) - ((looks[k - 1] or 0) if k > 0 else 0)
            for r in dispatcher.run(job_list, label):
                latest[unit_of[r.run_id].key] = r
                clock.finished(r.stage_seconds, new_eps, len(job_list))
                for st, v in r.stage_seconds.items():  # summed over every look, for the time breakdown
                    worker_s[st] = worker_s.get(st, 0.0) + v
            decision = analyse_look(rp, latest, k, looks, previous)
            previous = decision.by_key()
            looks_log.append(decision.to_record(look))
            log.info(decision.summary_line())
            tracker.log_metrics(parent, [("plan/undecided_comparisons", len(decision.undecided), k),
                                         ("plan/look_episodes", look or 0, k)])
            write_plan_record(tracker, parent, rp, runs, looks_log, demos=demos)
            active = decision.arms_to_extend
            if not active or look is None:
                break
        results = list(latest.values()) + not_run
        agg = worker_s
        timing["training_worker_s"] = agg.get("train", 0.0) + agg.get("open_loop", 0.0)
        timing["rollouts_worker_s"] = agg.get("closed_loop", 0.0)
        timing["gate_worker_s"] = agg.get("gate", 0.0)
        timing["runs_wall_s"] = time.time() - t0 - timing["demos_s"]
    except KeyboardInterrupt:
        tracker.end_run(parent, "KILLED", "interrupted (Ctrl-C); re-run the same command to resume")
        raise
    except Exception as e:  # a bug or an unreadable store: the parent says why, then the error surfaces
        tracker.end_run(parent, "FAILED", f"{type(e).__name__}: {e}")
        raise
    finally:
        dispatcher.close()
        from .rollout_pool import close_shared_pools

        close_shared_pools()  # the driver's warm rollout pool (runs executed here with several workers)
    tr = time.time()
    try:
        from .report import build_report

        rep = build_report(tracker, parent_run_id=parent, out_dir=report_dir)
        timing["report_s"] = time.time() - tr
        tracker.log_artifact(parent, report_dir, "report")
        print(rep.answer)
        log.info(f"[plan] report: {report_dir / 'report.html'} (and report.md)")
        report_ok = True
    except Exception as e:  # the runs are safe in MLflow; say why the report is missing
        import traceback

        log.warning(f"[plan] report not written: {type(e).__name__}: {e}")
        traceback.print_exc()
    timing["wall_s"] = time.time() - t0
    write_plan_record(tracker, parent, rp, runs, looks_log, timing, demos)
    print_timing(timing)
    failed = [r for r in results if r.status == "FAILED"]
    tracker.log_metrics(parent, [("plan/runs_failed", len(failed), 0)] +
                        [(f"time/{k}", v, 0) for k, v in timing.items()])
    ok = not failed and results and report_ok
    tracker.end_run(parent, "FINISHED" if ok else "FAILED",
                    None if ok else (f"{len(failed)} run(s) failed" if failed else "report not written"))
    print_results(results, {rid: u.name for rid, u in unit_of.items()} if rp.multitask else None)
    return PlanOutcome(parent, results, report_dir, report_ok, timing)


def dry_run_outcome(rp: ResolvedPlan, profile: Profile, uri: str, experiment: str, workdir: Path) -> PlanOutcome:
    """What --dry-run prints and returns: every run of the plan and its state in the store. It creates
    nothing: without an MLflow store yet, every run is "to run" (and MLflow is not even imported)."""
    store = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    tracker = None if store is not None and not store.is_file() else \
        Tracker.open(uri, experiment, workdir / "mlartifacts")
    planned = []
    for u in rp.units():
        rid, state = _ensure_run(tracker, u, None, rp, profile, None) if tracker else ("", "to run")
        print(f"  - {u.arm.name:<26} seed {u.seed}{_task_text(u)}  hash {u.spec.hash()}  "
              f"{state}{f' (run {rid[:8]})' if rid else ''}")
        planned.append({"arm": u.arm.name, "seed": u.seed, "task": u.spec.data.task, "suite": u.spec.data.suite,
                        "spec_hash": u.spec.hash(), "state": state, "run_id": rid or None,
                        "train_steps": u.spec.train.total_steps})
    est = _estimate(rp, profile, sum(p["state"] != "finished" for p in planned))
    if est is not None:
        lo, hi = est
        log.info(f"[plan] estimated wall time on this profile: {minutes(lo)} to {minutes(hi)} (every comparison "
                 f"decided at the first look .. every arm to the last), from the profile's measured costs "
                 f"{profile.costs}; finished runs are not counted, and arms the demos make untestable still are")
    out = PlanOutcome(None, [], None, planned=planned)
    out.timing = {"estimated_wall_s": list(est)} if est is not None else {}
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


def run_pretrain_stage(tracker: Tracker, parent: str, rp: ResolvedPlan, profile: Profile, workdir: Path,
                       extra_sets: list[str]) -> ResolvedPlan:
    """Train (or reuse) the plan's cached pretraining networks (each spec x pretraining seed), log each as
    a run under the parent, and point the arms at them: `train.init_from: "@pretrain"` (or
    "@pretrain:NAME") at the bundle of the run their seed maps to, `data.norm_stats_from: "@pretrain"` at
    the pretraining demos."""
    from .pretrain import marker_spec, pretrain

    st = rp.plan.pretrain
    plan_dir = Path(rp.plan.path).parent if rp.plan.path else EXPERIMENTS_DIR / "plans"
    target = next(iter(rp.arms.values())).spec
    wanted = {marker_spec(a.spec.train.init_from, st.spec) for a in rp.arms.values()} - {None}
    unknown = sorted(wanted - set(st.spec_names))
    if unknown:
        raise SpecError(f"{rp.plan.path or rp.plan.name}: arms fine-tune from pretraining spec(s) {', '.join(unknown)} "
                        f"that pretrain.specs does not list ({', '.join(st.spec_names)})")
    names = [n for n in st.spec_names if n in wanted] or list(st.spec_names)[:1]  # one run gives the demos
    bundles: dict[tuple[str, int | None], str] = {}
    demo_file = None
    for name in names:
        for pseed in st.seeds or (None,):
            seed_set = [] if pseed is None else [f"train.seed={pseed}"]
            spec = resolve_spec(spec_path(name, relative_to=plan_dir),
                                [*profile.sets, *rp.plan.set, *extra_sets, f"data.suite={target.data.suite}", *seed_set])
            res = _pretrain_one(tracker, parent, spec, st, workdir, pretrain)
            bundles[(name, pseed)] = str(res.bundle)
            demo_file = demo_file or res.demo_file
    return replace(rp, arms={n: point_at_pretraining(a, st, bundles, demo_file) for n, a in rp.arms.items()})


def point_at_pretraining(arm: Arm, st, bundles: dict[tuple[str, int | None], str], demo_file: Path | None) -> Arm:
    """The arm with its pretraining markers resolved: `data.norm_stats_from: "@pretrain"` -> the pretraining
    demos; `train.init_from: "@pretrain[:NAME]"` -> the bundle of (NAME, None) when the plan pretrains once,
    else, per fine-tuning seed s, of (NAME, pretrain.seeds[s % n]) (Arm.seed_sets)."""
    from .pretrain import PRETRAIN_MARKER, marker_spec, pretrain_run_seed
    from .spec import with_overrides

    sets: list[str] = []
    if arm.spec.data.norm_stats_from == PRETRAIN_MARKER:
        sets.append(f"data.norm_stats_from={demo_file}")
    which = marker_spec(arm.spec.train.init_from, st.spec)
    if which is not None and not st.seeds:
        sets.append(f"train.init_from={bundles[(which, None)]}")
    if sets:
        arm = replace(arm, spec=with_overrides(arm.spec, sets))
    if which is not None and st.seeds:
        arm = replace(arm, seed_sets=tuple(
            (s, (f"train.init_from={bundles[(which, pretrain_run_seed(s, st.seeds))]}",)) for s in arm.seeds))
    return arm


def _pretrain_one(tracker: Tracker, parent: str, spec: Spec, st, workdir: Path, pretrain):
    """One pretraining network (cached), logged as its own run under the plan's parent."""
    from .tracking import MetricBuffer
    from .train import configure_torch

    found = tracker.find_runs(f"tags.`{TAG_KIND}` = 'pretrain' and tags.`{TAG_SPEC_HASH}` = '{spec.hash()}'")
    label = f"pretrain:{spec.name}" + (f"/seed{spec.train.seed}" if st.seeds else "")
    rid = found[0].info.run_id if found else tracker.start_run(
        label, {TAG_KIND: "pretrain", TAG_SPEC: spec.name, TAG_SPEC_HASH: spec.hash(), TAG_SEED: spec.train.seed,
                "ablation.pretrain_tasks": ",".join(map(str, st.tasks)), **_owner_tags()}, parent)
    log.info(f"[plan] pretraining {label} on {spec.data.suite} tasks {list(st.tasks)} ({st.n_demos} demos each), "
             "cached and shared by the arms that start from it")
    configure_torch(spec.train.num_threads)
    buf = MetricBuffer(tracker, rid)
    res = pretrain(spec, tuple(st.tasks), st.n_demos, workdir, on_metrics=buf)
    buf.flush()
    tracker.set_tags(rid, {"ablation.pretrain_bundle": str(res.bundle), "ablation.demo_file": str(res.demo_file)})
    tracker.end_run(rid, "FINISHED")
    log.info(f"[plan] pretrained network: {res.bundle} ({'reused' if res.reused else f'{res.seconds:.0f} s'})")
    return res


def describe_plan(rp: ResolvedPlan) -> None:
    """Hypotheses, their arms and controls, and the seeds (what --dry-run shows first)."""
    for h in rp.hypotheses:
        log.info(f"[plan] hypothesis {h.name}: {h.title}")
        for c in h.comparisons:
            state = "" if c.arm in rp.arms and c.control in rp.arms else \
                f"  (left out: {rp.skipped.get(c.arm) or rp.skipped.get(c.control) or 'not selected'})"
            log.info(f"         {c.arm} vs {c.control} (expect {c.expect}){state}")
        if h.correlation is not None:
            log.info(f"         rank correlation of {h.correlation.x} with {h.correlation.y} over every arm x seed")
    seeds = sorted({s for a in rp.arms.values() for s in a.seeds})
    log.info(f"[plan] arms: {', '.join(rp.arms)}; seeds {seeds}")
    tasks = sorted({f"{a.spec.data.suite} {list(a.tasks)}" for a in rp.arms.values() if a.tasks is not None})
    if tasks:
        log.info(f"[plan] tasks: {'; '.join(tasks)} (each arm x seed x task is its own run; every comparison is "
                 "pooled over the tasks, tasks a random factor)")
    if rp.plan.episodes:
        e = rp.plan.episodes
        log.info(f"[plan] episodes per arm x seed: looks at {list(e.looks)}, alpha {e.alpha} (Holm across "
                 f"comparisons, {e.spending} spending across looks)")


def print_timing(t: dict) -> None:
    parts = [f"set-up {t.get('setup_s', 0):.0f} s", f"demos {t.get('demos_s', 0):.0f} s",
             f"gate A {t.get('gate_worker_s', 0):.0f} worker-s",
             f"training {t.get('training_worker_s', 0):.0f} worker-s",
             f"rollouts {t.get('rollouts_worker_s', 0):.0f} worker-s",
             f"report {t.get('report_s', 0):.0f} s"]
    log.info(f"[plan] time: {', '.join(parts)}; runs {t.get('runs_wall_s', 0):.0f} s wall; "
             f"plan {t.get('wall_s', 0):.0f} s wall")


def _task_text(u: RunUnit) -> str:
    return "" if u.task is None else f"  task {u.task}"


def print_results(results: list[RunResult], names: dict[str, str] | None = None) -> None:
    """One line per run; `names` (run id -> run name) for multi-task plans, whose runs share arm and seed."""
    for r in sorted(results, key=lambda r: ((names or {}).get(r.run_id, r.spec_name), r.seed)):
        line = f"  {(names or {}).get(r.run_id, r.spec_name):<26} seed {r.seed}  {r.status:<8}"
        if r.status == "FINISHED":
            sr = r.metrics.get("eval/success_rate")
            n = r.metrics.get("eval/episodes")
            line += f"  success {sr:.2f} over {n:.0f}" if sr is not None and n else ""
            line += f"  ({r.seconds:.0f} s)"
        elif r.reason:
            line += f"  {r.reason}"
        print(line)


def outcome_json(o: PlanOutcome) -> dict:
    return {"parent_run_id": o.parent_run_id, "report_ok": o.report_ok, "timing": o.timing,
            "results": [{k: v for k, v in asdict(r).items() if k != "episodes"} for r in o.results],
            "planned": o.planned}
