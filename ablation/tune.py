"""Optuna tuning of the loss weights, objective = closed-loop success rate.

- Storage: sqlite in the workdir by default, or any URL (`postgresql+psycopg2://...`); the study
  resumes (`load_if_exists`), and concurrent processes on one storage share it without duplicates.
- Heartbeat: a worker that dies leaves its trial RUNNING only until another worker's next trial
  notices the stale heartbeat and marks it FAIL (Optuna's `fail_stale_trials`); its MLflow run is
  then marked FAILED too.
- Pruning: the open-loop validation error is the intermediate value. Optuna's pruners compare
  intermediate values in the study's direction (maximise), so the *negated* error is reported.
- MLflow: one parent run per study, one nested run per trial; the links go both ways (study user
  attr `mlflow_run_id`, trial user attr `mlflow_run_id`, run tags `optuna.study` / `optuna.trial`).
  Written here by hand: `optuna_integration.MLflowCallback` is deprecated.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import UserError
from .spec import Spec, resolve_spec, with_overrides
from .provenance import git_commit
from .tracking import (TAG_KIND, TAG_SEED, TAG_SPEC, TAG_SPEC_HASH, MetricBuffer, Tracker,
                       default_tracking_uri, ui_command)
from .workdir import ensure_demos

INTERMEDIATE_KEY = "val/phys/pos_mm"  # open-loop position error of the x0 prediction, lower is better
STUDY_RUN_ATTR = "mlflow_run_id"


def default_storage(workdir: Path) -> str:
    return f"sqlite:///{(Path(workdir) / 'optuna.db').resolve()}"


def dashboard_command(storage: str) -> str:
    return f".venv/bin/optuna-dashboard {storage} --host 127.0.0.1 --port 8080"


def make_storage(url: str, heartbeat_s: int):
    import optuna

    from .tracking import sqlite_lock

    try:
        with sqlite_lock(url):  # first use creates the tables; concurrent creation races
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s)
    except Exception as e:
        raise UserError(f"Optuna storage '{url}' cannot be opened: {type(e).__name__}: {e}. For PostgreSQL use "
                        "postgresql+psycopg2://user:pass@host/db") from None


def make_pruner(kind: str):
    import optuna

    if kind == "none":
        return optuna.pruners.NopPruner()
    # Short studies: judge from the first trial, after one report.
    return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)


def _study_run(tracker: Tracker, study, spec: Spec) -> str:
    """The study's MLflow parent run: reuse it if any process already made one."""
    rid = study.user_attrs.get(STUDY_RUN_ATTR)
    if rid:
        return rid
    query = f"tags.`optuna.study` = '{study.study_name}' and tags.`{TAG_KIND}` = 'study'"
    found = tracker.find_runs(query)
    mine = None
    if not found:
        mine = tracker.start_run(f"study:{study.study_name}", {TAG_KIND: "study", "optuna.study": study.study_name,
                                                                TAG_SPEC: spec.name, "ablation.git_commit": git_commit()})
        found = tracker.find_runs(query)
    # Two processes may have raced; everyone settles on the oldest run, and a loser deletes its own.
    rid = min(found, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
    if mine is not None and mine != rid:
        tracker.client.delete_run(mine)
    study.set_user_attr(STUDY_RUN_ATTR, rid)
    return rid


def sync_failed_trials(study, tracker: Tracker) -> int:
    """Trials Optuna marked FAIL (e.g. by the heartbeat) whose MLflow run still says RUNNING."""
    import optuna

    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        rid = t.user_attrs.get(STUDY_RUN_ATTR)
        if not rid:
            continue
        try:
            if tracker.client.get_run(rid).info.status == "RUNNING":
                tracker.end_run(rid, "FAILED", "trial failed in Optuna (worker died: heartbeat expired)")
                n += 1
        except Exception:
            continue
    return n


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
              progress: bool) -> float:
    import optuna

    from .stages import closed_loop_stage, train_stage

    sets = suggest_overrides(trial, base)
    spec = with_overrides(base, sets)
    run_id = tracker.start_run(f"trial {trial.number}", {
        TAG_KIND: "trial", TAG_SPEC: spec.name, TAG_SPEC_HASH: spec.hash(), TAG_SEED: spec.train.seed,
        "optuna.study": trial.study.study_name, "optuna.trial": trial.number, "ablation.git_commit": git_commit()},
        study_run)
    trial.set_user_attr(STUDY_RUN_ATTR, run_id)
    tracker.log_params(run_id, {**spec.flat(), "optuna.trial": trial.number})
    buf = MetricBuffer(tracker, run_id)

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        buf(step, metrics)
        if INTERMEDIATE_KEY in metrics:
            trial.report(-float(metrics[INTERMEDIATE_KEY]), step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}: {INTERMEDIATE_KEY}={metrics[INTERMEDIATE_KEY]:.3g}")

    try:
        ckpt = workdir / "checkpoints" / f"tune-{trial.study.study_name}-t{trial.number}-{spec.hash()}"
        result = train_stage(spec, demo, ckpt, on_metrics, progress=progress)
        buf.flush()
        metrics = closed_loop_stage(tracker, run_id, spec, result)
        success = float(metrics["eval/success_rate"])
        tracker.end_run(run_id, "FINISHED")
        return success
    except optuna.TrialPruned as e:
        buf.flush()
        tracker.set_tags(run_id, {"optuna.state": "PRUNED"})
        tracker.end_run(run_id, "KILLED", str(e))
        raise
    except BaseException as e:
        buf.flush()
        tracker.end_run(run_id, "FAILED", f"{type(e).__name__}: {e}")
        raise


def tune(spec_file: str, *, trials: int | None = None, storage: str | None = None, tracking_uri: str | None = None,
         study_name: str | None = None, workdir: Path = Path("workdir"), sets: list[str] | None = None,
         heartbeat_s: int = 20, reeval: bool = True, progress: bool = True, jobs: int | None = None) -> TuneOutcome:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    base = resolve_spec(spec_file, sets)
    if not base.tune.search_space:
        raise UserError(f"{spec_file}: tune.search_space is empty; list the dotted fields to search, "
                        "e.g. loss.weights.pos: {low: 0.01, high: 1000, log: true}")
    storage = storage or default_storage(workdir)
    uri = tracking_uri or base.tracking.tracking_uri or default_tracking_uri(workdir)
    name = study_name or base.tune.study or f"{base.name}-{base.hash()[:8]}"
    n_trials = trials or base.tune.trials
    print(f"[tune] study '{name}' on {storage}")
    print(f"[tune] dashboard:  {dashboard_command(storage)}")
    print(f"[tune] MLflow {uri}; UI:  {ui_command(uri)}")
    tracker = Tracker.open(uri, base.tracking.experiment, workdir / "mlartifacts")
    study = optuna.create_study(study_name=name, storage=make_storage(storage, heartbeat_s), direction="maximize",
                                pruner=make_pruner(base.tune.pruner), load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=None))
    study_run = _study_run(tracker, study, base)
    tracker.client.update_run(study_run, status="RUNNING")
    tracker.set_tags(study_run, {"optuna.storage": storage.split("@")[-1]})
    if sync_failed_trials(study, tracker):
        print("[tune] marked MLflow runs of dead trials as FAILED")
    demo = ensure_demos(base, workdir, 0)
    t0 = time.time()
    study.optimize(lambda t: run_trial(t, base, demo, workdir, tracker, study_run, progress),
                   n_trials=n_trials, catch=(UserError,), gc_after_trial=True)
    sync_failed_trials(study, tracker)
    done = [t for t in study.trials if t.value is not None]
    print(f"[tune] {n_trials} trial(s) in {time.time() - t0:.0f} s; study holds {len(study.trials)} trial(s)")
    tracker.client.set_terminated(study_run, "FINISHED")  # the last process to finish leaves it FINISHED
    if not done:
        return TuneOutcome(name, storage, None, {}, None, len(study.trials))
    best = study.best_trial
    print(f"[tune] best trial {best.number}: success {best.value:.2f} with {best.params}")
    best_path = write_best_spec(Path(spec_file), base, best.params, workdir / "tuned" / f"{name}_best.yaml",
                                sets=sets or [])
    tracker.log_metrics(study_run, [("tune/best_success_rate", best.value, best.number)])
    tracker.log_artifact(study_run, best_path, "best_spec")
    print(f"[tune] best weights written as a spec: {best_path}")
    if reeval and base.tune.reeval_seeds:
        from .plan import Profile, execute_runs

        best_spec = resolve_spec(best_path)
        entries = [(with_overrides(best_spec, [f"train.seed={s}"]), s) for s in base.tune.reeval_seeds]
        print(f"[tune] re-evaluating the best spec on seeds {list(base.tune.reeval_seeds)}")
        # The best spec already holds every setting the trials ran with; no profile on top.
        execute_runs(tracker, entries, workdir=workdir, profile=Profile("tune", (), jobs or 1, None), jobs=jobs,
                     parent_run_id=study_run, plan_name=f"tune:{name}")
    return TuneOutcome(name, storage, best.value, best.params, best_path, len(study.trials))


def write_best_spec(base_file: Path, base: Spec, params: dict, out: Path, sets: list[str] = ()) -> Path:
    """A spec that extends the tuned spec file and fixes the `--set` overrides the study ran with,
    then the best values."""
    from .spec import parse_set

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
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    resolve_spec(out)  # it must load
    return out
