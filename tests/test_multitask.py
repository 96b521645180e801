"""Plans over several tasks: runs per arm x seed x task, comparisons pooled over tasks (a random
factor), per-task effects and the "tasks disagree" statement.

The pooling tests use synthetic per-episode outcomes with a known answer (the same effect on both
tasks; opposite effects); the report test writes them into a real sqlite MLflow store; the last test
runs a tiny two-task plan on the real simulator.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import yaml

from ablation.analysis import judge
from ablation.hypothesis import Hypothesis, load_hypothesis
from ablation.arms import resolve_plan
from ablation.plan import run_plan
from ablation.plan_record import PLAN_RECORD
from ablation.profiles import load_profile
from ablation.report import build_report
from ablation.spec import SpecError, load_plan
from ablation.stages import log_episodes
from ablation.tracking import TAG_KIND, TAG_SEED, TAG_SPEC, Tracker, default_tracking_uri
from tests.conftest import EXPERT_DEMOS, seed_workdir_demos

STATES = 20
T0, T3 = "libero_object/0", "libero_object/3"


def outcomes(rate: float, n: int = STATES, offset: int = 0) -> list[bool]:
    """Deterministic outcomes with exactly round(rate * n) successes, spread over the init states."""
    k = round(rate * n)
    return [((i + offset) * k) % n < k for i in range(n)]


def records(rates: dict[tuple[str, str], float], seeds: int = 3) -> list[dict]:
    """(arm, task) -> success rate, the same for every seed (shifted states per seed)."""
    return [{"arm": arm, "task": task, "seed": s, "init_state": i, "success": o}
            for (arm, task), rate in rates.items() for s in range(seeds)
            for i, o in enumerate(outcomes(rate, offset=s))]


HYP = Hypothesis.model_validate({"name": "H", "title": "t", "claim": "c", "rule": "r",
                                 "comparisons": [{"arm": "fix", "control": "base", "expect": "better"}]})


def test_two_tasks_with_the_same_effect_pool_to_it_and_agree():
    recs = records({("base", T0): 0.3, ("fix", T0): 0.7, ("base", T3): 0.3, ("fix", T3): 0.7})
    (c,) = judge([HYP], recs, {}, look_index=0, looks=[STATES])
    assert c.n_tasks == 2 and c.estimate == pytest.approx(0.4)
    assert [(t["task"], round(t["estimate"], 6)) for t in c.per_task] == [(T0, 0.4), (T3, 0.4)]
    assert c.tasks_disagree is False and c.heterogeneity.startswith("no evidence that tasks disagree")
    assert c.lo < 0.4 < c.hi and c.lo > 0 and c.word == "better"
    assert "tasks a random factor (between-task variance" in c.method


def test_opposite_effects_pool_to_zero_and_tasks_disagree():
    recs = records({("base", T0): 0.2, ("fix", T0): 0.8, ("base", T3): 0.8, ("fix", T3): 0.2})
    (c,) = judge([HYP], recs, {}, look_index=0, looks=[STATES])
    assert c.estimate == pytest.approx(0.0, abs=1e-9)
    assert {t["task"]: round(t["estimate"], 6) for t in c.per_task} == {T0: 0.6, T3: -0.6}
    assert c.tasks_disagree is True
    assert c.heterogeneity == f"tasks disagree: better on {T0}, worse on {T3}"
    # tasks are a random factor: two tasks that disagree this much leave the pooled effect open (it is
    # not "no meaningful difference", which a stratified pool of the two would wrongly suggest)
    assert c.word == "inconclusive" and c.hi - c.lo > 0.6


def test_single_task_comparison_has_no_per_task_part():
    recs = records({("base", T0): 0.3, ("fix", T0): 0.7})
    (c,) = judge([HYP], recs, {}, look_index=0, looks=[STATES])
    assert c.n_tasks == 1 and c.per_task == [] and c.tasks_disagree is None and c.heterogeneity == ""


# ----------------------------------------------------------------------------- the report

def record_multitask_plan(tracker: Tracker, rates: dict[str, dict[int, float]], seeds: int = 3) -> str:
    """A plan run over tasks 0 and 3 as run_plan records it: runs keyed "seed/taskK", tasks listed."""
    parent = tracker.start_run("plan:mt", {TAG_KIND: "plan", "ablation.plan": "mt"})
    runs: dict[str, dict[str, str]] = {}
    for arm, by_task in rates.items():
        for task, rate in by_task.items():
            for seed in range(seeds):
                rid = tracker.start_run(f"{arm}/seed{seed}/task{task}",
                                        {TAG_KIND: "spec_run", TAG_SPEC: arm, TAG_SEED: seed}, parent)
                runs.setdefault(arm, {})[f"{seed}/task{task}"] = rid
                tracker.log_metrics(rid, [("train/loss/total", 1e-3, 0), ("audit/rot_spread_deg", 30.0, 0),
                                          ("val/openloop/nmse/pos", 0.5, 100)])
                log_episodes(tracker, rid, [{"episode": i, "init_state": i, "success": o, "steps": 100,
                                             "clip_fraction": 0.0, "error": None}
                                            for i, o in enumerate(outcomes(rate, offset=seed))])
                tracker.end_run(rid)
    rec = {"plan": "mt", "key": "mt", "hypotheses": [load_hypothesis("H1_practical").model_dump(mode="json")],
           "arms": {arm: {"spec_hash": f"h-{arm}", "seeds": list(range(seeds)), "suite": "libero_object", "task": 0,
                          "tasks": sorted(by_task), "description": arm} for arm, by_task in rates.items()},
           "runs": runs, "episodes": {"looks": [STATES], "alpha": 0.05, "spending": "obrien_fleming", "margin": 0.15},
           "looks": [], "demos": {}, "versions": {}}
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / PLAN_RECORD).write_text(json.dumps(rec))
        tracker.log_artifact(parent, Path(d) / PLAN_RECORD)
    tracker.end_run(parent)
    return parent


def test_report_shows_per_task_and_pooled_effects_and_where_tasks_disagree(tmp_path):
    tracker = Tracker.open(default_tracking_uri(tmp_path), "libero-action-ablation", tmp_path / "art")
    parent = record_multitask_plan(tracker, {
        "baseline_rdt": {0: 0.5, 3: 0.5},
        "fix_minmax": {0: 0.9, 3: 0.9},        # +40 on both tasks
        "fix_loss_weight": {0: 1.0, 3: 0.0}})  # +50 on one task, -50 on the other
    out = tmp_path / "r"
    rep = build_report(tracker, parent_run_id=parent, out_dir=out)
    c = {x.arm: x for x in rep.comparisons}
    assert c["fix_minmax"].estimate == pytest.approx(0.4) and c["fix_minmax"].word == "better"
    assert c["fix_minmax"].tasks_disagree is False
    assert c["fix_loss_weight"].tasks_disagree is True and c["fix_loss_weight"].word == "inconclusive"
    md = (out / "report.md").read_text()
    assert "## Per-task effects" in md
    assert "| fix_minmax vs baseline_rdt | libero_object/0 | +40 |" in md
    assert "| fix_minmax vs baseline_rdt | libero_object/3 | +40 |" in md
    assert "| fix_minmax vs baseline_rdt | pooled over 2 tasks | +40 |" in md
    assert "| fix_loss_weight vs baseline_rdt | libero_object/3 | -50 |" in md
    pooled_lw = next(line for line in md.splitlines() if line.startswith("| fix_loss_weight vs baseline_rdt | pooled"))
    assert "NO: tasks disagree: better on libero_object/0, worse on libero_object/3" in pooled_lw
    # the caveats and the verdict lines say it too; the answer names the pooled fix
    assert any(x.startswith("fix_loss_weight vs baseline_rdt: tasks disagree") for x in rep.caveats)
    assert "pooled over 2 tasks as a random factor" in rep.answer and "Use fix_minmax" in rep.answer
    # arms: success per task; one point per arm x seed x task for the loss-vs-success plot
    assert "| baseline_rdt | 60/120 = 50% | 50%, 50%, 50% | 0: 50%, 3: 50% |" in md
    assert (out / "per_task_forest.png").stat().st_size > 1000
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 4


# ----------------------------------------------------------------------------- resolving plans

def write_plan(tmp: Path, **fields) -> Path:
    p = tmp / "plan_mt.yaml"
    p.write_text(yaml.safe_dump({"seeds": [0, 1], "hypotheses": ["H1_practical"],
                                 "skip_arms": {"fix_loss_weight": "test"}, **fields}))
    return p


def test_resolve_plan_over_two_tasks_gives_arm_x_seed_x_task_runs(tmp_path):
    cpu = load_profile("cpu")
    multi = resolve_plan(load_plan(str(write_plan(tmp_path, tasks=[0, 3]))), cpu)
    units = multi.units()
    assert sorted(u.name for u in units) == sorted(f"{a}/seed{s}/task{t}" for a in ("baseline_rdt", "fix_minmax")
                                                   for s in (0, 1) for t in (0, 3))
    assert len({u.spec.hash() for u in units}) == 8
    assert all(u.spec.data.task == u.task and u.spec.train.seed == u.seed for u in units)
    assert len({u.ckpt_dir(tmp_path) for u in units}) == 8 and all(f"-task{u.task}-" in u.ckpt_dir(tmp_path).name
                                                                   for u in units)
    # a single-task plan is as before: no task in names or checkpoint dirs, the same spec hashes
    single = resolve_plan(load_plan(str(write_plan(tmp_path))), cpu)
    assert not single.multitask and sorted(u.name for u in single.units()) == [
        "baseline_rdt/seed0", "baseline_rdt/seed1", "fix_minmax/seed0", "fix_minmax/seed1"]
    for u in single.units():
        assert u.task is None and u.spec.hash() == u.arm.spec_for(u.seed).hash()
        assert u.ckpt_dir(tmp_path).name == f"{u.arm.name}-seed{u.seed}-{u.spec.hash()}"
    # the base spec's task is 0: the multi-task plan's task-0 runs are those very runs (reused, not redone)
    same = {u.key[:2]: u.spec.hash() for u in single.units()}
    assert all(u.spec.hash() == same[u.key[:2]] for u in units if u.task == 0)
    assert all(u.spec.hash() != same[u.key[:2]] for u in units if u.task == 3)


def test_tasks_from_set_and_bad_tasks(tmp_path):
    cpu = load_profile("cpu")
    plan = load_plan(str(write_plan(tmp_path)))
    rp = resolve_plan(plan, cpu, extra_sets=["data.task=[1,2]"])
    assert {u.task for u in rp.units()} == {1, 2} and rp.multitask
    # a single id given last wins: one task again, and the spec says it
    rp = resolve_plan(load_plan(str(write_plan(tmp_path, tasks=[0, 3]))), cpu, extra_sets=["data.task=2"])
    assert not rp.multitask and {u.spec.data.task for u in rp.units()} == {2}
    with pytest.raises(SpecError, match=r"data.task=\[1,1\]: data.task takes one task id, a list of distinct ids"):
        resolve_plan(plan, cpu, extra_sets=["data.task=[1,1]"])
    with pytest.raises(SpecError, match="plan_mt.yaml: plan tasks"):
        load_plan(str(write_plan(tmp_path, tasks=[3, 3])))


def test_dry_run_lists_every_task(tmp_path, capsys, caplog):
    with caplog.at_level("INFO", logger="ablation"):
        out = run_plan(str(write_plan(tmp_path, tasks=[0, 3])), profile_name="cpu", dry_run=True,
                       workdir=tmp_path / "wd")
    assert out.parent_run_id is None
    assert "2 arm(s) x seeds x tasks = 8 run(s)" in caplog.text  # log lines (stderr under the CLI)
    assert "[plan] tasks: libero_object [0, 3]" in caplog.text
    text = capsys.readouterr().out  # the listing is the dry run's result: stdout
    listed = [line for line in text.splitlines() if line.startswith("  - ")]
    assert len(listed) == 8 and sum("task 3  hash" in line for line in listed) == 4


@pytest.mark.sim  # reads the suite's task list and BDDL files through LIBERO (no simulator step)
def test_tasks_all_means_the_tasks_the_expert_covers(tmp_path):
    rp = resolve_plan(load_plan(str(write_plan(tmp_path, tasks="all"))), load_profile("cpu"),
                      extra_sets=["data.suite=libero_goal"])
    # libero_goal 0 (open a drawer) and 3 (put the bowl inside a drawer) are not scripted
    assert {u.task for u in rp.units()} == {1, 2, 4, 5, 6, 7, 8, 9}
    sweep = resolve_plan(load_plan("suite_sweep"), load_profile("gpu"))
    assert sorted(sweep.arms) == ["baseline_rdt", "fix_minmax", "fix_pos_cm", "native_delta"]
    assert len(sweep.units()) == 4 * 3 * 10 and {u.spec.data.suite for u in sweep.units()} == {"libero_object"}


# ----------------------------------------------------------------------------- end to end

@pytest.mark.sim
@pytest.mark.slow
def test_tiny_two_task_plan_end_to_end(tmp_path, capsys, expert_demo_file):
    """Two arms x one seed x tasks 0 and 1 through the whole pipeline on tiny budgets (success rates
    mean nothing): runs named per task, demos made once per task, the report pooled over tasks."""
    plan = tmp_path / "plan_two_tasks.yaml"
    plan.write_text(yaml.safe_dump({
        "seeds": [0], "hypotheses": ["H1_practical"], "skip_arms": {"fix_loss_weight": "tiny test"},
        "tasks": [0, 1], "episodes": {"looks": [2, 3]},
        "set": [f"data.n_demos={EXPERT_DEMOS}", "model.size=tiny", "train.steps=40", "train.eval_every=20", "train.log_every=10",
                "train.batch_size=16", "data.action_chunk=8", "rollout.max_steps=40", "rollout.gate_episodes=1",
                # eager training: the compiled step is under test in test_train and test_plan's first_run;
                # compiling here tests nothing the tasks add
                "train.compile=false"]}))
    wd = tmp_path / "wd"
    seed_workdir_demos(wd, expert_demo_file)  # task 0's demos are the session's; task 1's are made here
    out = run_plan(str(plan), profile_name="cpu", workdir=wd, jobs=1)  # (the process pool: test_plan's first_run)
    assert sorted(r.status for r in out.results) == ["FINISHED"] * 4, [r.reason for r in out.results]
    assert out.report_ok
    tr = Tracker.open(default_tracking_uri(wd), "libero-action-ablation")
    children = tr.find_runs(f"tags.`mlflow.parentRunId` = '{out.parent_run_id}'")
    assert sorted(r.info.run_name for r in children) == [
        "baseline_rdt/seed0/task0", "baseline_rdt/seed0/task1", "fix_minmax/seed0/task0", "fix_minmax/seed0/task1"]
    for r in children:
        task = r.info.run_name[-1]
        assert r.data.params["data.task"] == task and r.data.tags["ablation.task"] == f"libero_object/{task}"
    assert len(list((wd / "demos").glob("*.hdf5"))) == 2  # one demo file per task, shared by the arms
    ckpts = sorted(p.name for p in (wd / "checkpoints").iterdir() if p.is_dir())
    assert len(ckpts) == 4 and sum("-seed0-task1-" in c for c in ckpts) == 2, ckpts
    md = (wd / "report" / "report.md").read_text()
    assert "## Per-task effects" in md
    for row in ("| fix_minmax vs baseline_rdt | libero_object/0 |", "| fix_minmax vs baseline_rdt | libero_object/1 |",
                "| fix_minmax vs baseline_rdt | pooled over 2 tasks |"):
        assert row in md, md
    # a second invocation finds every run done
    capsys.readouterr()
    run_plan(str(plan), profile_name="cpu", workdir=wd, dry_run=True)
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  - ")]
    assert len(listed) == 4 and all("finished" in line for line in listed), listed
