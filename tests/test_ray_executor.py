"""Plans and tuning trials on a real Ray cluster (`--executor ray`), tracked by a real MLflow server on
PostgreSQL, with the real simulator on tiny budgets.

The cluster is one Ray node with 2 CPUs on 127.0.0.1 (tests/ray_cluster.py); every run executes in a Ray
worker process, never in its driver; the drivers are `run_ablation.py` processes, as a user would start
them. The servers are tests/pg_server.py's (as the distributed tuning test). Slow (a few minutes on 2
cores); CI runs them with the `[cluster]` extra installed.

1. Two plan drivers started at once on one tiny plan: each run lands once, nested under one plan run,
   and ran in a Ray worker.
2. A Ray worker SIGKILLed mid-training: its run ends FAILED with the reason, the plan goes on and exits
   non-zero; re-running the plan resumes the run from its checkpoint and finishes it.
3. `tune --executor ray`: the trials are Ray tasks that draw from one PostgreSQL study.
Without Ray installed, `--executor ray` is a one-line error (quick, no cluster).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ablation.errors import UserError
from ablation.executors import TAG_WORKER_PID, make_executor
from ablation.spec import EXPERIMENTS_DIR
from tests.conftest import EXPERT_DEMOS, seed_workdir_demos
from tests.pg_server import REPO, SKIP_ENV, PgUnavailable, stop_process_group, tracking_services

EXPERIMENT = "libero-action-ablation"
TINY = [f"data.n_demos={EXPERT_DEMOS}", "model.size=tiny", "train.steps=40", "train.eval_every=20",
        "train.log_every=10", "train.batch_size=16", "rollout.episodes=1", "rollout.max_steps=40",
        "data.action_chunk=8"]
DRIVER_TIMEOUT_S = 600
# The killed run's length: killed at its first checkpoint (step 25, polled every 0.5 s), it must still be
# training then (~50 ms a tiny step, so 225 steps are ~10 s of margin on a quiet core), and the re-run
# trains the rest: the resume, not the training, is under test.
KILL_STEPS = 250


def test_without_ray_executor_ray_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does where the extra is not installed
    with pytest.raises(UserError, match=r'pip install -e "\.\[cluster\]"'):
        make_executor("ray", 1)
    from ablation.cli import main

    plan = tmp_path / "plan_noray.yaml"
    plan.write_text(yaml.safe_dump({"seeds": [0], "set": TINY, "entries": [str(EXPERIMENTS_DIR / "fix_minmax.yaml")]}))
    rc = main(["--plan", str(plan), "--profile", "cpu", "--workdir", str(tmp_path / "wd"), "--executor", "ray"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # (MLflow logs its own lines)
    assert rc == 2 and "Traceback" not in err, err
    assert len(errors) == 1 and errors[0].startswith("error: --executor ray needs Ray"), err


def _race_to_create(plan: str, workdir: str, uri: str, barrier, results, use_lock: bool) -> None:
    """One plan driver's run creation, as run_plan does it, started at the same instant as the others."""
    import contextlib

    from ablation.arms import resolve_plan
    from ablation.profiles import load_profile
    from ablation.registry import ensure_spec_run, open_plan_run
    from ablation.spec import load_plan
    from ablation.tracking import Tracker
    from ablation.workdir import workdir_lock

    profile = load_profile("cpu")
    rp = resolve_plan(load_plan(plan), profile)
    tracker = Tracker.open(uri, EXPERIMENT)
    lock = (lambda: workdir_lock(Path(workdir), "runs")) if use_lock else contextlib.nullcontext
    barrier.wait()
    with lock():
        parent = open_plan_run(tracker, plan=rp.plan.name, key=rp.key, profile=profile.name, description="")
    ids = []
    for u in rp.units():
        with lock():
            ids.append(ensure_spec_run(tracker, u.spec, name=u.name, parent=parent, arm=u.arm.name, plan=rp.plan.name,
                                       profile=profile.name, demo=None)[0])
    results.put((parent, ids))


@pytest.mark.slow
def test_racing_drivers_create_one_parent_and_each_run_once(tmp_path):
    """Four drivers of one plan released at once (spawned processes, a real sqlite MLflow store): the
    workdir lock makes every find-or-create atomic, so they agree on one parent and one run per seed.
    (Without the lock, `use_lock=False`, this race made duplicate parents and runs when it was written.)"""
    import multiprocessing as mp

    from ablation.tracking import Tracker, default_tracking_uri

    plan = write_plan(tmp_path, "plan_race", [str(EXPERIMENTS_DIR / "fix_minmax.yaml")], TINY, seeds=(0, 1))
    uri = default_tracking_uri(tmp_path)
    Tracker.open(uri, EXPERIMENT)  # the store exists before the race, as the first driver leaves it
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_race_to_create, args=(str(plan), str(tmp_path), uri, barrier, results,
                                                       os.environ.get("ABLATION_RACE_NO_LOCK") != "1"))
             for _ in range(4)]
    for p in procs:
        p.start()
    got = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    assert {parent for parent, _ in got} == {got[0][0]}, got
    assert {tuple(ids) for _, ids in got} == {tuple(got[0][1])} and len(got[0][1]) == 2, got
    tr = Tracker.open(uri, EXPERIMENT)
    assert len(tr.find_runs("tags.`ablation.plan` = 'plan_race' and tags.`ablation.kind` = 'plan'")) == 1
    assert len(tr.find_runs("tags.`ablation.plan` = 'plan_race' and tags.`ablation.kind` = 'spec_run'")) == 2


@pytest.fixture(scope="module")
def services(tmp_path_factory, expert_demo_file):
    if os.environ.get("ABLATION_SKIP_RAY") == "1":
        pytest.skip("ABLATION_SKIP_RAY=1: Ray cluster tests skipped")
    try:
        import ray  # noqa: F401
    except ImportError:  # CI installs the extra (scripts/setup.sh): these tests must run there
        pytest.fail('Ray is not installed: pip install -e ".[cluster]" (or set ABLATION_SKIP_RAY=1 to skip)',
                    pytrace=False)
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: PostgreSQL tests skipped")
    d = tmp_path_factory.mktemp("ray_services")
    seed_workdir_demos(d / "workdir", expert_demo_file)  # the session's demos: no scripted-expert run here
    from tests.ray_cluster import ray_cluster

    try:
        with tracking_services(d) as (pg, uri), ray_cluster(d, cpus=2) as cluster:
            yield {"optuna_url": pg.url("optuna"), "tracking_uri": uri, "cluster": cluster, "dir": d,
                   "workdir": d / "workdir"}
    except PgUnavailable as e:
        pytest.fail(str(e), pytrace=False)


def write_plan(tmp: Path, name: str, specs: list[str], sets: list[str], seeds=(0,)) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"seeds": list(seeds), "set": sets, "entries": specs}))
    return p


def start_driver(services, plan: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "run_ablation.py", "--plan", str(plan), "--profile", "cpu", "--gate-episodes", "0",
           "--workdir", str(services["workdir"]), "--tracking-uri", services["tracking_uri"], "--executor", "ray",
           "--ray-address", services["cluster"].address, "--json"]
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=services["cluster"].env,
                            start_new_session=True)
    fh.close()
    proc.log_path = log  # type: ignore[attr-defined]
    return proc


def wait(proc, timeout: float = DRIVER_TIMEOUT_S) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_process_group(proc)
        pytest.fail(f"driver still running after {timeout:.0f} s; log:\n{tail(proc)}")


def tail(proc, n: int = 5000) -> str:
    return Path(proc.log_path).read_text(errors="replace")[-n:]


def outcome(proc) -> dict:
    text = Path(proc.log_path).read_text(errors="replace")
    return json.loads(text[text.rindex('\n{\n "parent_run_id"') + 1:])


def tracker(services):
    from ablation.tracking import Tracker

    return Tracker.open(services["tracking_uri"], EXPERIMENT)


@pytest.mark.sim
@pytest.mark.slow
def test_two_drivers_each_run_lands_once_under_one_plan_run(services, tmp_path):
    plan = write_plan(tmp_path, "plan_ray_two", [str(EXPERIMENTS_DIR / "fix_minmax.yaml")], TINY, seeds=(0, 1))
    drivers = [start_driver(services, plan, tmp_path / f"driver{i}.log") for i in range(2)]
    try:
        rcs = [wait(d) for d in drivers]
    finally:
        for d in drivers:
            stop_process_group(d)
    assert rcs == [0, 0], "\n\n".join(tail(d) for d in drivers)
    assert len(list((services["workdir"] / "demos").glob("*.hdf5"))) == 1  # the seeded demos, reused
    tr = tracker(services)
    parents = tr.find_runs("tags.`ablation.plan` = 'plan_ray_two' and tags.`ablation.kind` = 'plan'")
    assert len(parents) == 1, [p.info.run_id for p in parents]
    runs = tr.find_runs("tags.`ablation.plan` = 'plan_ray_two' and tags.`ablation.kind` = 'spec_run'")
    assert sorted(r.data.tags["ablation.seed"] for r in runs) == ["0", "1"], [r.data.tags for r in runs]
    driver_pids = {str(d.pid) for d in drivers}
    for r in runs:
        assert r.info.status == "FINISHED", (r.info.status, r.data.tags.get("ablation.failure_reason"))
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert r.data.tags[TAG_WORKER_PID] not in driver_pids, "the run executed in the driver, not in a Ray worker"
        assert "eval/success_rate" in r.data.metrics and "train/loss/total" in r.data.metrics
    for d in drivers:
        out = outcome(d)
        assert out["parent_run_id"] == parents[0].info.run_id and out["report_ok"]
        assert sorted(r["run_id"] for r in out["results"]) == sorted(r.info.run_id for r in runs)
    print(f"\n[ray] two drivers: one plan run, {len(runs)} runs, each once, executed by Ray worker pids "
          f"{sorted(r.data.tags[TAG_WORKER_PID] for r in runs)}")


@pytest.mark.sim
@pytest.mark.slow
def test_killed_ray_worker_fails_its_run_and_a_rerun_finishes_it(services, tmp_path):
    spec = tmp_path / "long_ray.yaml"
    spec.write_text(f"extends: {EXPERIMENTS_DIR / 'base.yaml'}\n")
    plan = write_plan(tmp_path, "plan_ray_kill", [str(spec)],
                      TINY + [f"train.steps={KILL_STEPS}", "train.checkpoint_every=25", "train.eval_every=125",
                              "train.compile=false"])
    first = start_driver(services, plan, tmp_path / "first.log")
    tr = tracker(services)
    ckpts = services["workdir"] / "checkpoints"
    killed, bundle, deadline = None, None, time.time() + DRIVER_TIMEOUT_S
    try:
        while time.time() < deadline and killed is None:
            time.sleep(0.5)
            if first.poll() is not None:
                pytest.fail(f"driver exited {first.returncode} before a checkpoint was seen:\n{tail(first)}")
            runs = tr.find_runs("tags.`ablation.spec` = 'long_ray'")
            bundle = next((p for p in ckpts.glob("long_ray*/checkpoints/step_*") if (p / "meta.json").is_file()), None)
            if runs and runs[0].data.tags.get(TAG_WORKER_PID) and bundle is not None:
                killed = int(runs[0].data.tags[TAG_WORKER_PID])
                os.kill(killed, signal.SIGKILL)  # the Ray worker process that runs the task, mid-training
        assert killed is not None, f"no checkpoint before the deadline:\n{tail(first)}"
        rc = wait(first)
    finally:
        stop_process_group(first)
    assert rc == 1, f"a plan with a failed run exits 1, got {rc}:\n{tail(first)}"
    runs = tr.find_runs("tags.`ablation.spec` = 'long_ray'")
    assert len(runs) == 1 and runs[0].info.status == "FAILED", [(r.info.run_id, r.info.status) for r in runs]
    reason = runs[0].data.tags.get("ablation.failure_reason", "")
    assert reason.startswith("worker died:"), reason
    print(f"\n[ray] killed Ray worker pid {killed} at checkpoint {bundle.name}; run {runs[0].info.run_id[:8]} "
          f"FAILED: {reason}")

    again = start_driver(services, plan, tmp_path / "again.log")
    try:
        rc = wait(again)
    finally:
        stop_process_group(again)
    assert rc == 0, tail(again)
    runs = tr.find_runs("tags.`ablation.spec` = 'long_ray'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", [(r.info.run_id, r.info.status) for r in runs]
    assert int(runs[0].data.tags[TAG_WORKER_PID]) != killed
    meta = json.loads(max(ckpts.glob("long_ray*/checkpoints/step_*/meta.json"),
                          key=lambda p: int(p.parent.name.split("_")[1])).read_text())
    done_step = int(bundle.name.split("_")[1])
    assert meta["step"] == KILL_STEPS and meta.get("resumed_from", 0) >= done_step > 0, meta
    print(f"[ray] re-run: the same run FINISHED, resumed from step {meta.get('resumed_from')}")


@pytest.mark.sim
@pytest.mark.slow
def test_tune_trials_are_ray_tasks_on_one_study(services, tmp_path):
    import optuna

    study = "ray-study"
    sets = TINY + ["train.steps=20", "train.eval_every=10", "train.checkpoint_every=20", "train.warmup_steps=5",
                   "train.num_threads=1", "data.images=false", "rollout.workers=1", "rollout.gate_episodes=0",
                   "tune.episodes=2"]
    cmd = [sys.executable, "run_ablation.py", "tune", "--spec", "experiments/tune_loss_weights.yaml", "--trials", "2",
           "--storage", services["optuna_url"], "--tracking-uri", services["tracking_uri"], "--study", study,
           "--workdir", str(services["workdir"]), "--no-reeval", "--executor", "ray",
           "--ray-address", services["cluster"].address]
    for s in sets:
        cmd += ["--set", s]
    log = tmp_path / "tune.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=services["cluster"].env,
                                start_new_session=True)
    proc.log_path = log  # type: ignore[attr-defined]
    try:
        rc = wait(proc)
    finally:
        stop_process_group(proc)
    assert rc == 0, tail(proc)
    trials = optuna.load_study(study_name=study, storage=services["optuna_url"]).get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == [0, 1], [t.number for t in trials]
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    tr = tracker(services)
    runs = tr.find_runs(f"tags.`optuna.study` = '{study}' and tags.`ablation.kind` = 'trial'")
    study_runs = tr.find_runs(f"tags.`optuna.study` = '{study}' and tags.`ablation.kind` = 'study'")
    assert len(runs) == 2 and len(study_runs) == 1
    for r in runs:
        assert r.data.tags["mlflow.parentRunId"] == study_runs[0].info.run_id
        assert r.data.tags[TAG_WORKER_PID] != str(proc.pid), "the trial ran in the driver, not in a Ray worker"
    print(f"\n[ray] tune: trials {sorted(t.number for t in trials)} "
          f"({', '.join(t.state.name for t in trials)}) in Ray workers {sorted(r.data.tags[TAG_WORKER_PID] for r in runs)}")
