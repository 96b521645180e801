"""The run registry: the one place that creates, tags, finds and marks the harness's MLflow runs.

    plan      one per plan, profile and --set; re-runs take it over      open_plan_run
      spec_run    one per resolved spec x seed (x task); any plan reuses it  ensure_spec_run
                  (also made by `train --spec` outside a plan)                ensure_arm_run
        eval      `eval` under another seed, or of a bundle no run owns     start_eval_run
      pretrain    the plan's cached pretraining network                     ensure_pretrain_run
    study     one per Optuna study; racing processes settle on the oldest  open_study_run
      trial       one per study trial                                       start_trial_run
    stale     RUNNING runs whose process died: plan and spec runs by their owner's pid (mark_stale_runs:
              KILLED, or SCHEDULED for a spec run that was only queued),
              trials by Optuna's heartbeat (mark_dead_trials)

Every run carries the same identity tags (kind, spec, spec hash, seed, task, commit, device); each kind
adds its own. The RunJob that brings a spec run or a trial to its state is built here too (`job_for`),
and both go through `executors.run_job`, which holds the run's checkpoint lock.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from .host import host_tags
from .plan_record import task_label
from .profiles import detect_device
from .provenance import file_sha256, git_commit, source_tags
from .run import RunJob
from .spec import Spec
from .tracking import TAG_FAILURE, TAG_KIND, TAG_SEED, TAG_SPEC, TAG_SPEC_HASH, TAG_STAGE, Tracker

TAG_ARM = "ablation.arm"
TAG_TASK = "ablation.task"          # suite/task of a spec run
TAG_PLAN = "ablation.plan"
TAG_PLAN_KEY = "ablation.plan_key"
TAG_PROFILE = "ablation.profile"
TAG_LEGACY_HASH = "ablation.spec_hash_legacy"  # a migrated run's hash before resources left the identity
TAG_HOST = "ablation.host"          # the process that owns a RUNNING plan or spec run (for stale marking)
TAG_PID = "ablation.pid"
TAG_STUDY = "optuna.study"
TAG_TRIAL = "optuna.trial"
TAG_PARENT = "mlflow.parentRunId"


def owner_tags() -> dict[str, str]:
    """This process, as the owner of the runs it opens: a later invocation marks them KILLED if it died."""
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}


def identity_tags(kind: str, spec: Spec) -> dict[str, str]:
    """The tags every run of one spec carries, whatever made it."""
    return {TAG_KIND: kind, TAG_SPEC: spec.name, TAG_SPEC_HASH: spec.hash(), TAG_SEED: str(spec.train.seed),
            TAG_TASK: task_label(spec), "ablation.git_commit": git_commit(), "ablation.device": detect_device(),
            **host_tags()}


def reopen(tracker: Tracker, run_id: str, tags: dict) -> None:
    """A run taken over by this invocation: RUNNING again, with `tags` and no failure reason."""
    tracker.client.update_run(run_id, status="RUNNING")
    tracker.set_tags(run_id, {**tags, TAG_FAILURE: ""})


# ----------------------------------------------------------------------------- plans and their runs

def open_plan_run(tracker: Tracker, *, plan: str, key: str, profile: str, description: str,
                  nest_under: str | None = None) -> str:
    """The plan's parent run: the one from an earlier invocation of the same plan (`key`), or a new one.
    `nest_under`: a run to show it under (e.g. the tuning study whose best spec it re-evaluates)."""
    found = tracker.find_runs(f"tags.`{TAG_PLAN_KEY}` = '{key}' and tags.`{TAG_KIND}` = 'plan'")
    tags = {TAG_KIND: "plan", TAG_PLAN: plan, TAG_PLAN_KEY: key, TAG_PROFILE: profile,
            "ablation.git_commit": git_commit(), "ablation.device": detect_device(), **host_tags(), **owner_tags(),
            **source_tags(description)}
    if found:
        rid = found[0].info.run_id
        reopen(tracker, rid, tags)
    else:
        rid = tracker.start_run(f"plan:{plan}", tags)
    if nest_under:
        tracker.set_tags(rid, {TAG_PARENT: nest_under})
    return rid


def find_spec_run(tracker: Tracker, spec: Spec):
    """The MLflow run of this exact resolved spec and seed (any plan): the newest FINISHED one, else the newest
    of any status; None if there is none. Runs of an older workdir are found by Spec.legacy_hash when none
    carries the current hash."""
    hashes = dict.fromkeys((spec.hash(), spec.legacy_hash()))  # (one, when they agree)
    for h in hashes:
        runs = tracker.find_runs(f"tags.`{TAG_SPEC_HASH}` = '{h}' and tags.`{TAG_SEED}` = '{spec.train.seed}' "
                                 f"and tags.`{TAG_KIND}` = 'spec_run'")
        if runs:
            return next((r for r in runs if r.info.status == "FINISHED"), runs[0])
    return None


def ensure_spec_run(tracker: Tracker, spec: Spec, *, name: str, parent: str | None, arm: str, plan: str, profile: str,
                    demo: Path | None) -> tuple[str, str]:
    """(run id, state) for one spec x seed: its existing run (any plan), or a new one nested under `parent`.
    state: the found run's status in lower case, or "new". An unfinished run found is adopted by this plan
    (re-tagged, moved under `parent`); one found by its legacy hash carries the current hash from now on.
    parent None: `train` of one arm outside a plan (a later plan adopts the run under its own parent)."""
    prev = find_spec_run(tracker, spec)
    tags = {**identity_tags("spec_run", spec), TAG_ARM: arm, TAG_PROFILE: profile, TAG_PLAN: plan,
            **owner_tags(), **source_tags(spec.description)}
    digest = None
    if demo is not None:
        digest = file_sha256(demo)
        tags.update({"ablation.demo_sha256": digest[:16], "ablation.demo_file": str(demo)})
    if prev is not None:
        rid, old_hash = prev.info.run_id, prev.data.tags.get(TAG_SPEC_HASH, "")
        if old_hash != spec.hash():
            # A run of an older workdir, found by its legacy hash: later re-runs with other resource
            # settings find it by the current identity (its old one kept beside it).
            tracker.set_tags(rid, {TAG_SPEC_HASH: spec.hash(), TAG_LEGACY_HASH: old_hash})
        if prev.info.status != "FINISHED":
            tracker.set_tags(rid, {**tags, TAG_PARENT: parent})
        elif parent and TAG_PARENT not in prev.data.tags:
            # A run that `train` made on its own (no plan): the first plan that reuses it shows it as its own.
            tracker.set_tags(rid, {TAG_PARENT: parent, TAG_PLAN: plan})
        return rid, prev.info.status.lower()
    rid = tracker.start_run(name, tags, parent)
    tracker.log_params(rid, spec.flat())
    if demo is not None:
        tracker.log_dataset(rid, demo, digest, context="training")
    return rid, "new"


TRAIN_PLAN = "train"  # TAG_PLAN of a spec run that `train --spec` made outside any plan


def ensure_arm_run(tracker: Tracker, spec: Spec, *, name: str, arm: str, profile: str,
                   demo: Path | None) -> tuple[str, str]:
    """(run id, state) of one arm x seed trained by `train --spec`: the same spec run, with the same tags,
    that a plan on `profile` makes for it (found again by any plan), not nested under a plan."""
    return ensure_spec_run(tracker, spec, name=name, parent=None, arm=arm, plan=TRAIN_PLAN, profile=profile,
                           demo=demo)


def find_bundle_run(tracker: Tracker, spec: Spec):
    """The spec run whose pipeline wrote a bundle of `spec` (its exact hash and seed), or None."""
    runs = tracker.find_runs(f"tags.`{TAG_SPEC_HASH}` = '{spec.hash()}' and tags.`{TAG_SEED}` = '{spec.train.seed}' "
                             f"and tags.`{TAG_KIND}` = 'spec_run'")
    return runs[0] if runs else None


def start_eval_run(tracker: Tracker, spec: Spec, bundle: Path, *, seed: int, parent: str | None = None) -> str:
    """A new run for `eval` of a bundle that no spec run owns (train --out, a copied bundle), or of a spec
    run's bundle under another sampling seed than its own (nested under that run)."""
    rid = tracker.start_run(f"eval:{spec.name}/seed{seed}",
                            {**identity_tags("eval", spec), "ablation.checkpoint": str(bundle),
                             "ablation.eval_seed": str(seed), **source_tags(spec.description)}, parent)
    tracker.log_params(rid, spec.flat())
    return rid


def ensure_pretrain_run(tracker: Tracker, spec: Spec, tasks: tuple[int, ...], parent: str,
                        label: str | None = None) -> str:
    """The run of one of the plan's pretraining networks (`spec` on `tasks`): the cached one's, or a new one
    (named `label`, default pretrain:<spec>)."""
    found = tracker.find_runs(f"tags.`{TAG_KIND}` = 'pretrain' and tags.`{TAG_SPEC_HASH}` = '{spec.hash()}'")
    if found:
        return found[0].info.run_id
    return tracker.start_run(label or f"pretrain:{spec.name}", {**identity_tags("pretrain", spec), **owner_tags(),
                                                        "ablation.pretrain_tasks": ",".join(map(str, tasks))}, parent)


def mark_stale_runs(tracker: Tracker) -> tuple[int, int]:
    """Runs left RUNNING by a process of this host that no longer exists (kill -9, power loss, a driver
    stopped by SIGTERM) -> (killed, queued). A run that was in a stage is marked KILLED; a spec run that
    was only queued (no stage begun since its driver took it, so nothing of it was cut short) is marked
    SCHEDULED: a plan stopped early leaves most of its runs queued, and KILLED on all of them hid the few
    that really were killed. Both carry the reason; a re-run takes both over."""
    host, killed, queued = socket.gethostname(), 0, 0
    for r in tracker.find_runs("attributes.status = 'RUNNING'"):
        tags = r.data.tags
        if tags.get(TAG_HOST) != host:
            continue
        try:
            pid = int(tags.get(TAG_PID, "0"))
        except ValueError:
            continue
        if not pid or _pid_alive(pid):
            continue
        rid = r.info.run_id
        if tags.get(TAG_KIND) == "spec_run" and tags.get(TAG_STAGE, "done") == "done":
            tracker.set_tags(rid, {TAG_FAILURE: f"queued, not started: its driver ({host} pid {pid}) ended first; "
                                                "re-run the same command to run it"})
            tracker.client.update_run(rid, status="SCHEDULED")
            queued += 1
        else:
            tracker.end_run(rid, "KILLED", f"its process ({host} pid {pid}) ended without closing it")
            killed += 1
    return killed, queued


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True


# ----------------------------------------------------------------------------- studies and trials

def open_study_run(tracker: Tracker, study: str, spec: Spec) -> str:
    """The study's run: the one any process already made, or a new one. Processes that race to make it
    settle on the oldest, and a loser deletes its own."""
    query = f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_KIND}` = 'study'"
    found = tracker.find_runs(query)
    mine = None
    if not found:
        mine = tracker.start_run(f"study:{study}", {TAG_KIND: "study", TAG_STUDY: study, TAG_SPEC: spec.name,
                                                   "ablation.git_commit": git_commit()})
        found = tracker.find_runs(query)
    rid = min(found, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
    if mine is not None and mine != rid:
        tracker.client.delete_run(mine)
    return rid


def start_trial_run(tracker: Tracker, spec: Spec, study: str, trial: int, study_run: str) -> str:
    """A new run for trial `trial` of `study` with `spec` (its sampled values set), nested under the study's run."""
    rid = tracker.start_run(f"trial {trial}", {**identity_tags("trial", spec), TAG_STUDY: study, TAG_TRIAL: trial},
                            study_run)
    tracker.log_params(rid, {**spec.flat(), TAG_TRIAL: trial})
    return rid


def mark_pruned(tracker: Tracker, run_id: str, reason: str) -> None:
    """A trial the pruner stopped: KILLED, with the pruner's reason."""
    tracker.set_tags(run_id, {"optuna.state": "PRUNED"})
    tracker.end_run(run_id, "KILLED", reason)


def mark_dead_trials(tracker: Tracker, run_ids: list[str]) -> int:
    """Trial runs still RUNNING whose trial Optuna failed (its worker died: heartbeat expired) -> FAILED.
    Returns how many."""
    n = 0
    for rid in run_ids:
        try:
            if tracker.client.get_run(rid).info.status == "RUNNING":
                tracker.end_run(rid, "FAILED", "trial failed in Optuna (worker died: heartbeat expired)")
                n += 1
        except Exception:  # a run deleted by hand: nothing to mark
            continue
    return n


def trial_ckpt_dir(workdir: Path, study: str, trial: int, spec: Spec) -> Path:
    return Path(workdir) / "checkpoints" / f"tune-{study}-t{trial}-{spec.hash()}"


# ----------------------------------------------------------------------------- the job that executes a run

def job_for(tracker: Tracker, run_id: str, spec: Spec, demo: Path, ckpt_dir: Path, n_episodes: int, workdir: Path, *,
            rollout_workers: int, rollout_batch: int = 1, threads: int = 0, progress: bool = True,
            gate_episodes: int | None = None) -> RunJob:
    """What a worker needs to bring run `run_id` of `spec` to `n_episodes` evaluated episodes (init states
    0..n-1). Gate A results are cached per codec in <workdir>/gates; gate_episodes None: the spec's."""
    return RunJob(spec.name, spec.to_yaml(), spec.train.seed, run_id, tracker.tracking_uri, tracker.experiment_id,
                  str(demo), str(ckpt_dir), tuple(range(n_episodes)), rollout_workers=rollout_workers,
                  rollout_batch=rollout_batch, threads=threads, progress=progress,
                  gate_episodes=spec.rollout.gate_episodes if gate_episodes is None else gate_episodes,
                  gate_cache_dir=str(Path(workdir) / "gates"))
