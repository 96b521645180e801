"""Optuna tuning on a real sqlite storage and a real sqlite MLflow store, real training and rollouts
on tiny budgets (marked sim)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import ablation.tune as tune_mod
from ablation.spec import EXPERIMENTS_DIR
from ablation.tracking import TAG_KIND, Tracker, default_tracking_uri
from tests.conftest import EXPERT_DEMOS, seed_workdir_demos

pytestmark = pytest.mark.sim
REPO = Path(__file__).resolve().parents[1]
SPEC = EXPERIMENTS_DIR / "tune_loss_weights.yaml"
TINY = [f"data.n_demos={EXPERT_DEMOS}", "model.size=tiny", "train.steps=20", "train.eval_every=10",
        "train.log_every=10", "train.batch_size=16", "rollout.episodes=1", "rollout.max_steps=30",
        "data.action_chunk=8", "tune.reeval_seeds=[0]", "tune.episodes=1", "rollout.gate_episodes=1"]


class PruneFromSecondTrial(optuna.pruners.BasePruner):
    """Forces the pruning decision (trial >= 1 at its first report) so the plumbing is tested
    deterministically; whether a real pruner prunes depends on noisy tiny-budget losses."""

    def prune(self, study, trial) -> bool:
        return trial.number >= 1 and bool(trial.intermediate_values)


def test_three_trial_study_with_pruning(tmp_path, monkeypatch, expert_demo_file):
    seed_workdir_demos(tmp_path, expert_demo_file)  # the session's demos, not another scripted-expert run
    monkeypatch.setattr(tune_mod, "make_pruner", lambda kind, spec=None: PruneFromSecondTrial())
    # jobs=1: the re-evaluation plan runs here, not on a pool of 2 spawned workers (test_plan's first_run)
    out = tune_mod.tune(str(SPEC), trials=3, workdir=tmp_path, sets=TINY, study_name="s3", progress=False, jobs=1)
    study = optuna.load_study(study_name="s3", storage=tune_mod.default_storage(tmp_path))
    states = [t.state for t in study.trials]
    assert len(states) == 3
    assert states[0] == optuna.trial.TrialState.COMPLETE
    assert states[1:] == [optuna.trial.TrialState.PRUNED] * 2
    # intermediate values are the negated sampled open-loop position nMSE, reported during training
    assert all(v <= 0 for v in study.trials[0].intermediate_values.values())
    assert study.trials[0].intermediate_values
    # every trial is a nested MLflow run of the study run, linked both ways
    tr = Tracker.open(default_tracking_uri(tmp_path), "libero-action-ablation")
    study_run = study.user_attrs["mlflow_run_id"]
    trials = tr.find_runs(f"tags.`{TAG_KIND}` = 'trial'")
    assert sorted(int(r.data.tags["optuna.trial"]) for r in trials) == [0, 1, 2]
    for r in trials:
        assert r.data.tags["mlflow.parentRunId"] == study_run
        t = study.trials[int(r.data.tags["optuna.trial"])]
        assert t.user_attrs["mlflow_run_id"] == r.info.run_id
        assert r.info.status == ("FINISHED" if t.state == optuna.trial.TrialState.COMPLETE else "KILLED")
        assert "loss.weights.pos" in r.data.params
    # the best weights became a spec that extends the tuned one, and it was re-evaluated
    assert out.best_spec_path is not None and out.best_spec_path.is_file()
    text = out.best_spec_path.read_text()
    assert f"extends: {SPEC.resolve()}" in text and "weights" in text
    # ... beside the best hand-made fix, as a plan nested under the study run, judged by the report
    plan_runs = tr.find_runs(f"tags.`mlflow.parentRunId` = '{study_run}' and tags.`{TAG_KIND}` = 'plan'")
    assert len(plan_runs) == 1
    reeval = tr.find_runs(f"tags.`mlflow.parentRunId` = '{plan_runs[0].info.run_id}' and tags.`{TAG_KIND}` = 'spec_run'")
    assert sorted(r.data.tags["ablation.arm"] for r in reeval) == sorted([out.best_spec_path.stem, "fix_minmax"])
    assert all(r.info.status == "FINISHED" for r in reeval)
    assert (tmp_path / "report" / "report.html").is_file()
    # trials went through the one run pipeline: gate A and audit figures are there too
    first = next(r for r in trials if r.data.tags["optuna.trial"] == "0")
    assert "gate/replay_success_rate" in first.data.metrics and "audit/scale_ratio" in first.data.metrics
    # a second call resumes the same study (load_if_exists)
    tune_mod.tune(str(SPEC), trials=1, workdir=tmp_path, sets=TINY, study_name="s3", progress=False, reeval=False)
    assert len(optuna.load_study(study_name="s3", storage=tune_mod.default_storage(tmp_path)).trials) == 4
    assert len(list((tmp_path / "demos").glob("*.hdf5"))) == 1  # the seeded demos were reused


def test_two_concurrent_tune_processes_share_one_study(tmp_path, expert_demo_file):
    seed_workdir_demos(tmp_path, expert_demo_file)
    cmd = [sys.executable, str(REPO / "run_ablation.py"), "tune", "--spec", str(SPEC), "--trials", "1",
           "--study", "shared", "--workdir", str(tmp_path), "--no-reeval"]
    # Gate A off: the shared study is under test here; a trial's Gate A is test_three_trial_study's
    for s in [*TINY, "rollout.gate_episodes=0"]:
        cmd += ["--set", s]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    study = optuna.load_study(study_name="shared", storage=tune_mod.default_storage(tmp_path))
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == [0, 1]  # one trial each, numbered from one shared sequence
    tr = Tracker.open(default_tracking_uri(tmp_path), "libero-action-ablation")
    runs = tr.find_runs(f"tags.`{TAG_KIND}` = 'trial'")
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs) == [0, 1]
    assert len(tr.find_runs(f"tags.`{TAG_KIND}` = 'study'")) == 1
