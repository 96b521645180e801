"""The run registry on a real sqlite MLflow store: plan, spec, study and trial runs are found before they are
created, carry one set of identity tags, and are marked when their process or trial died."""
from __future__ import annotations

from ablation.registry import (TAG_ARM, TAG_PLAN_KEY, TAG_STUDY, TAG_TRIAL, ensure_spec_run, find_spec_run,
                               identity_tags, mark_dead_trials, mark_pruned, open_plan_run, open_study_run,
                               start_trial_run)
from ablation.spec import EXPERIMENTS_DIR, resolve_spec, with_overrides
from ablation.tracking import TAG_FAILURE, TAG_KIND, Tracker, default_tracking_uri


def _tracker(tmp_path) -> Tracker:
    return Tracker.open(default_tracking_uri(tmp_path), "registry", tmp_path / "art")


def test_a_plan_finds_its_parent_and_runs_again_instead_of_making_new_ones(tmp_path):
    tr = _tracker(tmp_path)
    spec = with_overrides(resolve_spec(EXPERIMENTS_DIR / "fix_minmax.yaml"), ["train.seed=3"])
    parent = open_plan_run(tr, plan="p", key="p-1", profile="cpu", description="")
    rid, state = ensure_spec_run(tr, spec, name="fix_minmax/seed3", parent=parent, arm="fix_minmax", plan="p",
                                 profile="cpu", demo=None)
    assert state == "new" and find_spec_run(tr, spec).info.run_id == rid
    tr.end_run(parent, "KILLED", "interrupted")
    # the next invocation of the same plan takes the parent over and finds the run (any status)
    again = open_plan_run(tr, plan="p", key="p-1", profile="cpu", description="", nest_under="study-run-id")
    assert again == parent
    run = tr.client.get_run(parent)
    assert run.info.status == "RUNNING" and run.data.tags[TAG_FAILURE] == ""
    assert run.data.tags["mlflow.parentRunId"] == "study-run-id" and run.data.tags[TAG_PLAN_KEY] == "p-1"
    assert ensure_spec_run(tr, spec, name="x", parent=again, arm="fix_minmax", plan="p", profile="cpu",
                           demo=None) == (rid, "running")
    assert len(tr.find_runs(f"tags.`{TAG_KIND}` = 'spec_run'")) == 1
    assert tr.client.get_run(rid).data.tags[TAG_ARM] == "fix_minmax"


def test_spec_runs_and_trials_carry_the_same_identity_tags(tmp_path):
    tr = _tracker(tmp_path)
    spec = resolve_spec(EXPERIMENTS_DIR / "fix_minmax.yaml")
    parent = open_plan_run(tr, plan="p", key="p-2", profile="cpu", description="")
    rid, _ = ensure_spec_run(tr, spec, name="a", parent=parent, arm="fix_minmax", plan="p", profile="cpu", demo=None)
    study_run = open_study_run(tr, "s", spec)
    assert open_study_run(tr, "s", spec) == study_run  # a second process settles on the same run
    trial = start_trial_run(tr, spec, "s", 0, study_run)
    ident = identity_tags("x", spec)
    del ident[TAG_KIND]
    for run_id, kind in ((rid, "spec_run"), (trial, "trial")):
        tags = tr.client.get_run(run_id).data.tags
        assert tags[TAG_KIND] == kind and {k: tags[k] for k in ident} == ident
    tags = tr.client.get_run(trial).data.tags
    assert (tags[TAG_STUDY], tags[TAG_TRIAL], tags["mlflow.parentRunId"]) == ("s", "0", study_run)
    assert "loss.weights.pos" in tr.client.get_run(trial).data.params


def test_dead_and_pruned_trials_are_marked(tmp_path):
    tr = _tracker(tmp_path)
    spec = resolve_spec(EXPERIMENTS_DIR / "fix_minmax.yaml")
    study_run = open_study_run(tr, "s", spec)
    dead, done, pruned = (start_trial_run(tr, spec, "s", n, study_run) for n in range(3))
    tr.end_run(done, "FINISHED")
    mark_pruned(tr, pruned, "pruned at step 10")
    assert mark_dead_trials(tr, [dead, done, pruned, "no-such-run"]) == 1
    c = tr.client
    assert c.get_run(dead).info.status == "FAILED" and "heartbeat" in c.get_run(dead).data.tags[TAG_FAILURE]
    assert c.get_run(done).info.status == "FINISHED"
    assert c.get_run(pruned).info.status == "KILLED" and c.get_run(pruned).data.tags["optuna.state"] == "PRUNED"
