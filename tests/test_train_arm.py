"""`train --spec NAME --seed S --profile P` is one arm of a plan: the plan's spec hash, checkpoint folder and
MLflow spec run, reused by a later plan; `eval` logs its closed-loop results to the bundle's run.

Real sqlite MLflow store, real tiny training (a few steps of the tiny model, compile off to keep it cheap).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import yaml

from ablation.arms import resolve_plan
from ablation.bundle import POLICY_FILES
from ablation.profiles import load_profile
from ablation.registry import TAG_ARM, TAG_PROFILE
from ablation.spec import load_plan
from ablation.tracking import TAG_KIND, TAG_SEED, TAG_SPEC_HASH, Tracker, default_tracking_uri
from tests.conftest import EXPERT_DEMOS, cli_here, seed_workdir_demos

TINY = ["model.size=tiny", "train.steps=6", "train.eval_every=3", "train.log_every=2", "train.batch_size=8",
        "train.warmup_steps=1", "data.action_chunk=8", "rollout.episodes=1", "rollout.max_steps=40",
        "rollout.gate_episodes=0", "train.compile=false"]


cli = cli_here  # (in this process: what the commands do is under test, not the interpreter)


def as_sets(sets: list[str]) -> list[str]:
    return [x for s in sets for x in ("--set", s)]


def write_plan(tmp: Path, sets: list[str], seeds=(0,)) -> Path:
    p = tmp / "plan_arm.yaml"
    p.write_text(yaml.safe_dump({"seeds": list(seeds), "set": sets, "entries": ["fix_minmax", "baseline_rdt"]}))
    return p


def tracker_of(workdir: Path) -> Tracker:
    return Tracker.open(default_tracking_uri(workdir), "libero-action-ablation", workdir / "mlartifacts")


def spec_runs(tr: Tracker) -> list:
    return tr.find_runs(f"tags.`{TAG_KIND}` = 'spec_run'")


def test_train_arm_is_the_plans_run(synthetic_demo_file, tmp_path):
    """Same hash and folder as the plan's arm; one MLflow spec run with the plan's tags, the final bundle
    logged once without the training state; a plan's dry run finds it finished."""
    wd = (tmp_path / "wd").resolve()
    sets = TINY + [f"data.demo_file={synthetic_demo_file}"]
    r = cli("train", "--spec", "fix_minmax", "--seed", "1", "--profile", "cpu", "--workdir", str(wd), "--json",
            *as_sets(sets))
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads(r.stdout)
    plan = write_plan(tmp_path, sets, seeds=(1,))
    unit = resolve_plan(load_plan(str(plan)), load_profile("cpu"), [1], ["fix_minmax"]).units()[0]
    assert rec["spec_hash"] == unit.spec.hash() and rec["arm"] == "fix_minmax" and rec["seed"] == 1
    assert Path(rec["checkpoint"]).parent.parent == unit.ckpt_dir(wd)
    assert rec["steps"] == 6 and "train" in rec["stage_seconds"]
    assert not (wd / "runs").exists()

    tr = tracker_of(wd)
    [run] = spec_runs(tr)
    assert run.info.run_id == rec["run_id"] and run.info.status == "FINISHED"
    t, m = run.data.tags, run.data.metrics
    assert (t[TAG_SPEC_HASH], t[TAG_SEED], t[TAG_ARM], t[TAG_PROFILE]) == (unit.spec.hash(), "1", "fix_minmax", "cpu")
    assert run.info.run_name == unit.name
    for key in ("train/loss/total", "val/openloop/clip_fraction", "audit/scale_ratio", "time/train_s"):
        assert key in m, key
    ckpt = {Path(a.path).name for a in tr.client.list_artifacts(run.info.run_id, "checkpoint")}
    assert ckpt == set(POLICY_FILES), ckpt  # the final bundle once: no train_state.pt, no step_N folders

    # --demos FILE is the run's data.demo_file: the same run again (resumed: nothing left to do)
    again = cli("train", "--spec", "fix_minmax", "--seed", "1", "--profile", "cpu", "--workdir", str(wd), "--json",
                "--demos", str(synthetic_demo_file), *as_sets(TINY))
    assert again.returncode == 0, again.stderr[-3000:]
    rec2 = json.loads(again.stdout)
    assert (rec2["run_id"], rec2["run_state"], rec2["checkpoint"]) == (rec["run_id"], "finished", rec["checkpoint"])
    assert "train" not in rec2["stage_seconds"]

    dry = cli("plan", str(plan), "--profile", "cpu", "--workdir", str(wd), "--only", "fix_minmax", "--dry-run",
              "--json")
    assert dry.returncode == 0, dry.stderr[-3000:]
    [planned] = json.loads(dry.stdout)["planned"]
    assert (planned["state"], planned["run_id"], planned["spec_hash"]) == ("finished", rec["run_id"], rec["spec_hash"])


def test_train_flag_errors(tmp_path):
    r = cli("train", "--spec", "fix_minmax", "--fresh", "--workdir", str(tmp_path))
    assert r.returncode != 0 and "--fresh: only with --out" in r.stderr
    r = cli("eval", "--workdir", str(tmp_path))
    assert r.returncode != 0 and "give --checkpoint DIR, or --spec NAME" in r.stderr
    r = cli("eval", "--spec", "fix_minmax", "--seed", "3", "--profile", "cpu", "--workdir", str(tmp_path))
    assert r.returncode != 0 and "no trained bundle" in r.stderr and "train --spec fix_minmax --seed 3" in r.stderr


@pytest.mark.sim
def test_plan_reuses_train_and_eval_logs_to_the_run(expert_demo_file, tmp_path):
    """train, then `plan --only ARM --seeds S` in the same workdir: the same run, no training stage; then
    eval of that bundle merges its episodes into the run's record, and under another seed makes an eval run."""
    wd = (tmp_path / "wd").resolve()
    seed_workdir_demos(wd, expert_demo_file)
    sets = TINY + [f"data.n_demos={EXPERT_DEMOS}"]
    r = cli("train", "--spec", "fix_minmax", "--seed", "0", "--profile", "cpu", "--workdir", str(wd), "--json",
            *as_sets(sets))
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads(r.stdout)
    plan = write_plan(tmp_path, sets)
    p = cli("plan", str(plan), "--profile", "cpu", "--workdir", str(wd), "--only", "fix_minmax", "--seeds", "0",
            "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    [res] = json.loads(p.stdout)["results"]
    assert res["status"] == "FINISHED" and res["run_id"] == rec["run_id"], res
    assert "train" not in res["stage_seconds"] and "closed_loop" in res["stage_seconds"], res["stage_seconds"]
    assert len(list((wd / "demos").glob("*.hdf5"))) == 1
    tr = tracker_of(wd)
    [run] = spec_runs(tr)
    assert run.data.tags.get("mlflow.parentRunId") == json.loads(p.stdout)["parent_run_id"]  # adopted by the plan
    assert run.data.metrics["eval/episodes"] == 1

    e = cli("eval", "--spec", "fix_minmax", "--seed", "0", "--profile", "cpu", "--workdir", str(wd),
            "--episodes", "2", "--json", *as_sets(sets))
    assert e.returncode == 0, e.stderr[-3000:]
    out = json.loads(e.stdout)
    assert (out["run_id"], out["logged_to"]) == (rec["run_id"], "spec run")
    run = tr.client.get_run(rec["run_id"])
    assert run.data.metrics["eval/episodes"] == 2  # init state 0 from the plan, 1 from eval: one record
    with tempfile.TemporaryDirectory() as d:
        eps = json.loads(Path(tr.client.download_artifacts(rec["run_id"], "rollouts/episodes.json", d)).read_text())
    assert sorted(x["init_state"] for x in eps) == [0, 1]

    e = cli("eval", "--checkpoint", rec["checkpoint"], "--seed", "5", "--episodes", "1", "--json")
    assert e.returncode == 0, e.stderr[-3000:]
    out = json.loads(e.stdout)
    assert out["logged_to"] == "eval run"
    ev = tr.client.get_run(out["run_id"])
    assert ev.data.tags[TAG_KIND] == "eval" and ev.data.tags["mlflow.parentRunId"] == rec["run_id"]
    assert ev.data.metrics["eval/episodes"] == 1 and ev.info.status == "FINISHED"
