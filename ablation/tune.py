"""Optuna tuning of the loss weights, objective = closed-loop success rate.

- Storage: sqlite in the workdir by default, or any URL (`postgresql+psycopg2://...`); the study
  resumes (`load_if_exists`), and concurrent processes on one storage share it without duplicates.
- Heartbeat: a worker that dies leaves its trial RUNNING only until another worker's next trial
  notices the stale heartbeat and marks it FAIL (Optuna's `fail_stale_trials`); its MLflow run is
  then marked FAILED too.
- Pruning: the open-loop validation error is the intermediate value. Optuna's pruners compare
  intermediate values in the study's direction (maximise), so the *negated* error is reported.
- Cluster: `--executor ray` runs each trial as a Ray task that loads the study from the same storage
  (PostgreSQL for a cluster), so Optuna hands out trial numbers and samples as for separate processes.
- MLflow: one parent run per study, one nested run per trial; the links go both ways (study user
  attr `mlflow_run_id`, trial user attr `mlflow_run_id`, run tags `optuna.study` / `optuna.trial`).
  Written here by hand: `optuna_integration.MLflowCallback` is deprecated.
"""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from .errors import UserError
from .executors import make_executor, resources_for, run_job
from .locks import write_atomic
from .plan import run_plan
from .profiles import load_profile
from .registry import (job_for, mark_dead_trials, mark_pruned, open_study_run, reopen, start_trial_run,
                       trial_ckpt_dir)
from .spec import Spec, parse_set, resolve_spec, with_overrides
from .tracking import Tracker, default_tracking_uri, sqlite_lock, ui_command
from .workdir import ensure_demos

# Position nMSE of fully sampled chunks on held-out demos (the early signal for pruning); lower is better.
INTERMEDIATE_KEY = "val/openloop/nmse/pos"
STUDY_RUN_ATTR = "mlflow_run_id"


def default_storage(workdir: Path) -> str:
    return f"sqlite:///{(Path(workdir) / 'optuna.db').resolve()}"


def dashboard_command(storage: str) -> str:
    return f".venv/bin/optuna-dashboard {storage} --host 127.0.0.1 --port 8080"


def make_storage(url: str, heartbeat_s: int):
    import optuna

    try:
        with sqlite_lock(url):  # first use creates the tables; concurrent creation races
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s)
    except Exception as e:
        raise UserError(f"Optuna storage '{url}' cannot be opened: {type(e).__name__}: {e}. For PostgreSQL use "
                        "postgresql+psycopg2://user:pass@host/db") from None


def make_sampler(study_name: str):
    """TPE seeded from the study's name (the same study proposes the same first trials on every machine),
    with the constant liar: trials running at the same time on several workers are assumed to score
    their running mean, so concurrent workers do not all propose the same point."""
    import optuna

    seed = int(hashlib.sha256(study_name.encode()).hexdigest()[:8], 16)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


class TrialProgress:
    """One line per finished trial on the local executor: its state and value, the best so far, the ETA."""

    def __init__(self, n_trials: int, t0: float):
        self.n, self.t0, self.done = n_trials, t0, 0

    def __call__(self, study, trial) -> None:
        self.done += 1
        per = (time.time() - self.t0) / self.done
        value = "-" if trial.value is None else f"{trial.value:.2f}"
        try:
            best = f"{study.best_value:.2f} (trial {study.best_trial.number})"
        except ValueError:
            best = "-"
        print(f"[tune] trial {trial.number} {trial.state.name.lower()}: success {value}; best {best}; "
              f"{self.done}/{self.n} done, ~{per * (self.n - self.done):.0f} s to go", file=sys.stderr, flush=True)


def make_pruner(kind: str, spec: Spec | None = None):
    import optuna

    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "hyperband" and spec is not None:
        # Multi-fidelity on training steps: the open-loop error reported every train.eval_every steps is
        # the early signal; brackets stop weak weights after a fraction of the budget.
        return optuna.pruners.HyperbandPruner(min_resource=spec.train.eval_every,
                                              max_resource=spec.train.total_steps, reduction_factor=3)
    # Short studies: judge from the first trial, after one report.
    return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)


def _study_run(tracker: Tracker, study, spec: Spec) -> str:
    """The study's MLflow parent run (ablation.registry.open_study_run), remembered in the study."""
    rid = study.user_attrs.get(STUDY_RUN_ATTR)
    if not rid:
        rid = open_study_run(tracker, study.study_name, spec)
        study.set_user_attr(STUDY_RUN_ATTR, rid)
    return rid


def sync_failed_trials(study, tracker: Tracker) -> int:
    """Trials Optuna marked FAIL (e.g. by the heartbeat) whose MLflow run still says RUNNING -> FAILED."""
    import optuna

    failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    return mark_dead_trials(tracker, [t.user_attrs[STUDY_RUN_ATTR] for t in failed if t.user_attrs.get(STUDY_RUN_ATTR)])


@dataclass
class TuneOutcome:
    study_name: str
    storage: str
    best_value: float | None
    best_params: dict
    best_spec_path: Path | None
    n_trials: int


def suggest_overrides(trial, spec: Spec) -> list[str]:
    sets = []
    for path, p in sorted(spec.tune.search_space.items()):
        sets.append(f"{path}={trial.suggest_float(path, p.low, p.high, log=p.log)!r}")
    return sets


def run_trial(trial, base: Spec, demo: Path, workdir: Path, tracker: Tracker, study_run: str,
              progress: bool, rollout_workers: int = 1, rollout_batch: int = 1) -> float:
    """One trial = one run of the one run pipeline (gate, audit, train, open loop, closed loop,
    artifacts) through `executors.run_job` (which holds its checkpoint lock), nested under the study's
    run, with the open-loop error reported for pruning. Returns the closed-loop success rate."""
    import optuna

    spec = with_overrides(base, suggest_overrides(trial, base))
    run_id = start_trial_run(tracker, spec, trial.study.study_name, trial.number, study_run)
    trial.set_user_attr(STUDY_RUN_ATTR, run_id)

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        if INTERMEDIATE_KEY in metrics:
            trial.report(-float(metrics[INTERMEDIATE_KEY]), step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}: {INTERMEDIATE_KEY}={metrics[INTERMEDIATE_KEY]:.3g}")

    job = job_for(tracker, run_id, spec, demo, trial_ckpt_dir(workdir, trial.study.study_name, trial.number, spec),
                  spec.tune.episodes, workdir, rollout_workers=rollout_workers, rollout_batch=rollout_batch,
                  progress=progress)
    try:
        res = run_job(job, on_train_metrics=on_metrics)
    except optuna.TrialPruned as e:
        mark_pruned(tracker, run_id, str(e))
        raise
    if res.status != "FINISHED":
        raise UserError(f"trial {trial.number} failed: {res.reason}")
    return float(res.metrics["eval/success_rate"])


def tune(spec_file: str, *, trials: int | None = None, storage: str | None = None, tracking_uri: str | None = None,
         study_name: str | None = None, workdir: Path = Path("workdir"), sets: list[str] | None = None,
         heartbeat_s: int = 20, reeval: bool = True, progress: bool = True, jobs: int | None = None,
         profile_name: str | None = None, executor: str = "local", ray_address: str | None = None) -> TuneOutcome:
    """Run `trials` trials of the spec's study (resumed if it exists), write the best weights as a spec and
    re-evaluate it beside the hand-made fix as a plan (unless reeval is off). Returns the study's best."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    profile = load_profile(profile_name) if profile_name else None
    base = resolve_spec(spec_file, [*(profile.sets if profile else ()), *(sets or [])])
    if not base.tune.search_space:
        raise UserError(f"{spec_file}: tune.search_space is empty; list the dotted fields to search, "
                        "e.g. loss.weights.pos: {low: 0.01, high: 1000, log: true}")
    storage = storage or default_storage(workdir)
    uri = tracking_uri or base.tracking.tracking_uri or default_tracking_uri(workdir)
    name = resolve_study_name(base, study_name, storage, heartbeat_s)
    n_trials = trials or base.tune.trials
    print(f"[tune] study '{name}' on {storage}" + (f", profile {profile.name}" if profile else ""))
    print(f"[tune] {n_trials} trial(s) x {base.train.total_steps} steps, {base.tune.episodes} episodes each "
          f"(init states 0-{base.tune.episodes - 1}, the same for every trial), pruner {base.tune.pruner}")
    print(f"[tune] dashboard:  {dashboard_command(storage)}")
    print(f"[tune] MLflow {uri}; UI:  {ui_command(uri)}")
    tracker = Tracker.open(uri, base.tracking.experiment, workdir / "mlartifacts")
    if ray_address and executor == "local":
        raise UserError("--ray-address is used only with --executor ray")
    # Before the study and the demos: a missing Ray is a one-line error.
    cluster = make_executor(executor, 1, ray_address, uri) if executor != "local" else None
    study = optuna.create_study(study_name=name, storage=make_storage(storage, heartbeat_s), direction="maximize",
                                pruner=make_pruner(base.tune.pruner, base), load_if_exists=True,
                                sampler=make_sampler(name))
    study_run = _study_run(tracker, study, base)
    reopen(tracker, study_run, {"optuna.storage": storage.split("@")[-1]})
    if sync_failed_trials(study, tracker):
        print("[tune] marked MLflow runs of dead trials as FAILED")
    demo = ensure_demos(base, workdir, 0)
    t0 = time.time()
    task = TrialTask(name, storage, heartbeat_s, base.to_yaml(), str(demo), str(workdir), tracker.tracking_uri,
                     tracker.experiment_id, study_run,
                     profile.rollout_workers if profile and profile.rollout_workers else base.rollout.workers,
                     profile.rollout_batch if profile else 1)
    run_trials(study, task, n_trials, cluster, tracker, progress)
    sync_failed_trials(study, tracker)
    print(f"[tune] {n_trials} trial(s) in {time.time() - t0:.0f} s; study holds {len(study.trials)} trial(s)")
    tracker.end_run(study_run, "FINISHED")  # the last process to finish leaves it FINISHED
    if not [t for t in study.trials if t.value is not None]:
        return TuneOutcome(name, storage, None, {}, None, len(study.trials))
    best = study.best_trial
    best_path = record_best(tracker, study_run, spec_file, base, best, workdir / "tuned" / f"{_safe(name)}_best.yaml",
                            sets or [])
    if reeval and base.tune.reeval_seeds:
        plan_path = write_reeval_plan(workdir / "tuned", name, best_path, base)
        print(f"[tune] re-evaluating the best spec on seeds {list(base.tune.reeval_seeds)} beside "
              f"{base.tune.compare_with}, with the plan's statistics ({plan_path})")
        run_plan(str(plan_path), profile_name=profile.name if profile else "auto", workdir=workdir,
                 tracking_uri=uri, extra_sets=list(sets or []), jobs=jobs, nest_under=study_run,
                 executor=executor, ray_address=ray_address)
    return TuneOutcome(name, storage, best.value, best.params, best_path, len(study.trials))


def resolve_study_name(base: Spec, given: str | None, storage: str, heartbeat_s: int) -> str:
    """The study's name: the one given (--study, or the spec's tune.study), else `<spec>-<hash8>`; a study
    of an older workdir under the name before resources left the spec hash is gone on with."""
    import optuna

    name = given or base.tune.study or f"{base.name}-{base.hash()[:8]}"
    legacy = f"{base.name}-{base.legacy_hash()[:8]}"
    if not (given or base.tune.study) and legacy != name and \
            legacy in optuna.get_all_study_names(make_storage(storage, heartbeat_s)):
        return legacy
    return name


def run_trials(study, task: "TrialTask", n_trials: int, cluster, tracker: Tracker, progress: bool) -> None:
    """n_trials trials here, one after another (cluster None), or as Ray tasks on the cluster."""
    if cluster is not None:
        try:
            run_trials_on_cluster(cluster, task, n_trials, study)
        finally:
            cluster.close()
        return
    from .rollout_pool import close_shared_pools  # (imports the simulator's stack)

    base, t0 = Spec.model_validate(yaml.safe_load(task.spec_yaml)), time.time()
    try:  # trials with several rollout workers share one warm pool (ablation.rollout_pool.shared_pool)
        study.optimize(lambda t: run_trial(t, base, Path(task.demo_path), Path(task.workdir), tracker, task.study_run,
                                           progress, task.rollout_workers, task.rollout_batch),
                       n_trials=n_trials, catch=(UserError,), gc_after_trial=True,
                       callbacks=[TrialProgress(n_trials, t0)])
    finally:
        close_shared_pools()


def record_best(tracker: Tracker, study_run: str, spec_file: str, base: Spec, best, out: Path,
                sets: list[str]) -> Path:
    """The best trial's weights as a spec file (`out`), logged on the study's run with its success rate."""
    print(f"[tune] best trial {best.number}: success {best.value:.2f} with {best.params}")
    best_path = write_best_spec(Path(spec_file), base, best.params, out, sets=sets)
    tracker.log_metrics(study_run, [("tune/best_success_rate", best.value, best.number)])
    tracker.log_artifact(study_run, best_path, "best_spec")
    print(f"[tune] best weights written as a spec: {best_path}")
    return best_path


@dataclass(frozen=True)
class TrialTask:
    """What a cluster worker needs to run one trial of the study (picklable)."""

    study_name: str
    storage: str
    heartbeat_s: int
    spec_yaml: str
    demo_path: str
    workdir: str
    tracking_uri: str
    experiment_id: str
    study_run: str
    rollout_workers: int
    rollout_batch: int = 1


def run_trial_task(task: TrialTask) -> tuple[int, str]:
    """One trial in a cluster worker: the study comes from its storage, so its sampler sees every trial
    so far, whichever node ran it. -> (trial number, Optuna state)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = Spec.model_validate(yaml.safe_load(task.spec_yaml))
    study = optuna.load_study(study_name=task.study_name, storage=make_storage(task.storage, task.heartbeat_s),
                              pruner=make_pruner(base.tune.pruner, base), sampler=make_sampler(task.study_name))
    tracker = Tracker(task.tracking_uri, task.experiment_id)
    ran: list = []
    study.optimize(lambda t: run_trial(t, base, Path(task.demo_path), Path(task.workdir), tracker, task.study_run,
                                       False, task.rollout_workers, task.rollout_batch),
                   n_trials=1, catch=(UserError,), gc_after_trial=True, callbacks=[lambda s, t: ran.append(t)])
    return ran[0].number, ran[0].state.name


def run_trials_on_cluster(cluster, task: TrialTask, n_trials: int, study) -> None:
    """n_trials Ray tasks, as many at once as the cluster's resources allow. A trial whose worker died
    stays RUNNING in the storage until its heartbeat is stale: then it is marked FAIL here."""
    import optuna

    base = Spec.model_validate(yaml.safe_load(task.spec_yaml))
    cpus, gpus = cluster.fit(*resources_for(base, task.rollout_workers), base.name)
    task = replace(task, rollout_workers=min(task.rollout_workers, cpus))
    died = 0
    for _, res in cluster.map(run_trial_task, [task] * n_trials, cpus, gpus):
        if isinstance(res, BaseException):
            died += 1
            print(f"[tune] a trial's worker died: {type(res).__name__}: {(str(res).strip().splitlines() or [''])[0]}")
        else:
            print(f"[tune] trial {res[0]}: {res[1]}")
    if died:
        time.sleep(2 * task.heartbeat_s + 1)  # past the grace period, so its heartbeat counts as stale
        optuna.storages.fail_stale_trials(study)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _reeval_looks(first: int) -> list[int]:
    """The plan's looks for the re-evaluation: start where the trials did, end at 50 (or 2x)."""
    if first >= 50:
        return [50]
    if first >= 20:
        return sorted({first, (first + 50) // 2, 50})
    return [first, 2 * first]


def write_reeval_plan(tuned_dir: Path, study: str, best_path: Path, base: Spec) -> Path:
    """A hypothesis and a plan beside the best spec: the tuned weights against the best hand-made fix,
    over the study's re-evaluation seeds, judged like any plan (paired, Holm, adaptive looks)."""
    best = best_path.stem
    hyp = {"title": f"Tuning ({study}): did the study's best weights beat {base.tune.compare_with}?",
           "claim": f"The Optuna study's best loss weights beat the best hand-made fix ({base.tune.compare_with}).",
           "mechanism": "The study searched the loss weights on one seed and 20 paired episodes per trial; the "
                        "re-evaluation uses fresh seeds, so selection luck does not count as an effect.",
           "comparisons": [{"arm": best, "control": base.tune.compare_with, "expect": "better",
                            "label": "tuned weights vs the hand-made fix"}],
           "rule": "Supported when the tuned spec beats the hand-made fix (paired, over the re-evaluation seeds).",
           "outcomes": {"supported": "Tuning found better weights than the hand-made fix: use the tuned spec.",
                        "not_supported": "Tuning did not beat the hand-made fix: keep the simpler fix.",
                        "contradicted": "The tuned weights are worse than the hand-made fix on fresh seeds: the "
                                        "study chased luck.",
                        "inconclusive": "More seeds or episodes are needed to tell them apart."}}
    hyp_path = tuned_dir / f"{best}_vs_{base.tune.compare_with}.yaml"
    write_atomic(hyp_path, yaml.safe_dump(hyp, sort_keys=False))
    plan = {"description": f"Re-evaluation of study {study}'s best spec beside {base.tune.compare_with}",
            "seeds": list(base.tune.reeval_seeds), "hypotheses": [hyp_path.stem],
            "episodes": {"looks": _reeval_looks(base.tune.episodes)}}
    plan_path = tuned_dir / f"{_safe(study)}_reeval.yaml"
    write_atomic(plan_path, yaml.safe_dump(plan, sort_keys=False))
    return plan_path


def write_best_spec(base_file: Path, base: Spec, params: dict, out: Path, sets: list[str] = ()) -> Path:
    """A spec that extends the tuned spec file and fixes the `--set` overrides the study ran with,
    then the best values."""
    tree: dict = {}
    items = [parse_set(s) for s in sets] + [(k.split("."), float(v)) for k, v in params.items()]
    for parts, value in items:
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    doc = {"extends": str(base_file.resolve()), "name": f"{base.name}_best",
           "description": f"Best trial of the Optuna study over {', '.join(sorted(params))}", **tree}
    out.parent.mkdir(parents=True, exist_ok=True)
    # renamed into place, never rewritten in place: workers of one study share this path, and a worker
    # uploading it while another truncated it sent fewer bytes than its Content-Length said, so the
    # tracking server waited for the rest until the upload timed out (a CI failure, stop 30)
    write_atomic(out, yaml.safe_dump(doc, sort_keys=False))
    resolve_spec(out)  # it must load
    return out
