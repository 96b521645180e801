"""Distributed tuning for real: PostgreSQL + an MLflow tracking server + concurrent `run_ablation.py tune`
worker processes sharing one study, as docker/compose.yaml runs them (without Docker).

1. Two workers x 1 trial on one study, started together: 2 trials with unique numbers, each one an
   MLflow run nested under the one study run, the links both ways.
2. A worker SIGKILLed mid-trial: the next worker's heartbeat check marks its trial FAIL (not RUNNING
   forever) and the worker's MLflow run FAILED.

The servers come from tests/pg_server.py (initdb/pg_ctl in a temp dir, `mlflow server` on 127.0.0.1).
A one-shot `init` (as the compose `init` service) creates the Optuna schema + study and the MLflow
experiment before any worker starts. Slow (~2-3 min on 2 cores); CI runs it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import EXPERT_DEMOS, seed_workdir_demos
from tests.pg_server import (REPO, SKIP_ENV, PgUnavailable, stop_process_group,
                             tracking_services)

pytestmark = pytest.mark.slow

SPEC = "experiments/tune_loss_weights.yaml"
EXPERIMENT = "libero-action-ablation"  # TrackingSpec.experiment default
# A tiny budget: each trial trains 20 steps and rolls out two short episodes. Gate A is off: the shared
# study, the heartbeat and the MLflow links are under test here; a trial's Gate A is test_tune.py's.
TINY = ["model.size=tiny", "train.steps=20", "train.eval_every=10", "train.log_every=10",
        "train.checkpoint_every=20", "train.warmup_steps=5", "train.device=cpu", "train.num_threads=1",
        f"data.n_demos={EXPERT_DEMOS}", "data.images=false", "rollout.episodes=1", "rollout.max_steps=40",
        "rollout.workers=1", "rollout.gate_episodes=0", "tune.episodes=2"]  # (the default is 20 per trial)
WORKER_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """PostgreSQL (databases optuna + mlflow) and an MLflow server on it; torn down after the module."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: PostgreSQL tests skipped")
    d = tmp_path_factory.mktemp("services")
    try:
        with tracking_services(d) as (pg, uri):
            yield {"pg": pg, "optuna_url": pg.url("optuna"), "tracking_uri": uri, "dir": d}
    except PgUnavailable as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, expert_demo_file):
    """One workdir shared by all workers; the demos are there up front (the session's expert demos, which
    the workers would make under ablation.workdir.ensure_demos' file lock otherwise), so the timings below
    are the trials'."""
    wd = tmp_path_factory.mktemp("workdir")
    seed_workdir_demos(wd, expert_demo_file)
    return wd


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
            "PYTHONUNBUFFERED": "1"}


def init_study(services, study: str) -> None:
    """What the compose `init` service does: Optuna schema + study, and the MLflow experiment (created by the
    server, so its artifact location is the server's `mlflow-artifacts:/`), once, before any worker."""
    optuna_bin = Path(sys.executable).with_name("optuna")
    out = subprocess.run([str(optuna_bin), "create-study", "--storage", services["optuna_url"], "--study-name", study,
                          "--direction", "maximize", "--skip-if-exists"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(services["tracking_uri"])
    if client.get_experiment_by_name(EXPERIMENT) is None:
        client.create_experiment(EXPERIMENT)


def start_worker(services, workdir: Path, study: str, log: Path, trials: int, heartbeat: int = 20,
                 extra: list[str] = ()) -> subprocess.Popen:
    cmd = [sys.executable, "run_ablation.py", "tune", "--spec", SPEC, "--trials", str(trials),
           "--storage", services["optuna_url"], "--tracking-uri", services["tracking_uri"], "--study", study,
           "--workdir", str(workdir), "--heartbeat", str(heartbeat), "--no-reeval"]
    for s in [*TINY, *extra]:
        cmd += ["--set", s]
    fh = open(log, "w")
    # own session: the test can SIGKILL the worker and any child it made, and nothing else
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    proc.log_path = log  # type: ignore[attr-defined]
    fh.close()
    proc.server_log = services["dir"] / "mlflow-server.log"  # type: ignore[attr-defined]
    return proc


def wait_ok(proc: subprocess.Popen, timeout: float = WORKER_TIMEOUT_S) -> None:
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_process_group(proc)
        pytest.fail(f"worker still running after {timeout:.0f} s; log:\n{_tail(proc)}")
    assert rc == 0, f"worker exited {rc}; log:\n{_tail(proc)}"


def _tail(proc, n: int = 4000) -> str:
    """The worker's log, then the tracking server's (a hung request shows there)."""
    server = Path(proc.server_log)
    server_tail = server.read_text(errors="replace")[-n // 2:] if server.exists() else "(no server log)"
    return f"{Path(proc.log_path).read_text(errors='replace')[-n:]}\n--- mlflow server log ---\n{server_tail}"


def _mlflow(services):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(services["tracking_uri"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, f"experiment {EXPERIMENT} missing on {services['tracking_uri']}"
    return client, exp.experiment_id


def test_two_workers_share_one_study(services, workdir, tmp_path):
    import optuna

    study_name = "dist-two-workers"
    init_study(services, study_name)
    t0 = time.time()
    workers = [start_worker(services, workdir, study_name, tmp_path / f"worker{i}.log", trials=1) for i in range(2)]
    try:
        for w in workers:
            wait_ok(w)
    finally:
        for w in workers:
            stop_process_group(w)
    elapsed = time.time() - t0
    assert len(list((workdir / "demos").glob("*.hdf5"))) == 1  # the seeded demos were reused, none made

    study = optuna.load_study(study_name=study_name, storage=services["optuna_url"])
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == [0, 1], f"trial numbers {numbers}"
    states = {t.number: t.state for t in trials}
    assert all(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states.values()), states
    assert any(s == optuna.trial.TrialState.COMPLETE for s in states.values()), states
    study_run = study.user_attrs.get("mlflow_run_id")
    assert study_run, f"study user attrs {study.user_attrs}"

    client, exp_id = _mlflow(services)
    runs = client.search_runs([exp_id], f"tags.`optuna.study` = '{study_name}' and tags.`ablation.kind` = 'trial'",
                              max_results=100)
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in runs}
    assert len(runs) == 2 and sorted(by_trial) == [0, 1], [r.data.tags.get("optuna.trial") for r in runs]
    expected_status = {optuna.trial.TrialState.COMPLETE: "FINISHED", optuna.trial.TrialState.PRUNED: "KILLED"}
    for t in trials:
        r = by_trial[t.number]
        assert r.data.tags.get("mlflow.parentRunId") == study_run, (t.number, r.data.tags)
        assert t.user_attrs.get("mlflow_run_id") == r.info.run_id, (t.number, t.user_attrs)
        assert r.info.status == expected_status[t.state], (t.number, t.state, r.info.status)
    parent = client.get_run(study_run)
    assert parent.data.tags.get("ablation.kind") == "study"
    assert parent.data.tags.get("optuna.study") == study_name
    study_runs = client.search_runs([exp_id], f"tags.`optuna.study` = '{study_name}' and tags.`ablation.kind` = 'study'")
    print(f"\n[dist] 2 workers x 1 trial in {elapsed:.0f} s; states "
          f"{ {n: s.name for n, s in sorted(states.items())} }; study runs in MLflow: {len(study_runs)} "
          f"({', '.join(r.info.status for r in study_runs)})")


def _poll_running_trial(storage, study_id: int, proc: subprocess.Popen, timeout: float = 180):
    """The first RUNNING trial that already has its MLflow run (user attr mlflow_run_id)."""
    import optuna

    deadline = time.time() + timeout
    while time.time() < deadline:
        for t in storage.get_all_trials(study_id, deepcopy=False):
            if t.state == optuna.trial.TrialState.RUNNING and t.user_attrs.get("mlflow_run_id"):
                return t
        if proc.poll() is not None:
            pytest.fail(f"worker exited {proc.returncode} before its trial was seen RUNNING; log:\n{_tail(proc)}")
        time.sleep(0.3)
    pytest.fail(f"no RUNNING trial after {timeout:.0f} s; log:\n{_tail(proc)}")


def test_killed_worker_trial_fails_by_heartbeat(services, workdir, tmp_path):
    import optuna

    study_name = "dist-heartbeat"
    heartbeat = 2  # the killed worker and the survivor use the same short heartbeat (grace = 2x)
    init_study(services, study_name)
    storage = optuna.storages.RDBStorage(services["optuna_url"])
    study_id = storage.get_study_id_from_name(study_name)

    # A long training budget, so the trial is surely mid-run when it is killed.
    victim = start_worker(services, workdir, study_name, tmp_path / "victim.log", trials=1, heartbeat=heartbeat,
                          extra=["train.steps=100000", "train.compile=false"])
    try:
        running = _poll_running_trial(storage, study_id, victim)
        time.sleep(1.0)
        os.killpg(victim.pid, signal.SIGKILL)  # the worker's own process group (start_new_session=True)
        victim.wait(10)
    finally:
        stop_process_group(victim)
    assert storage.get_trial(running._trial_id).state == optuna.trial.TrialState.RUNNING
    time.sleep(2 * heartbeat + 1)  # past the grace period

    survivor = start_worker(services, workdir, study_name, tmp_path / "survivor.log", trials=1, heartbeat=heartbeat)
    try:
        wait_ok(survivor)
    finally:
        stop_process_group(survivor)

    trials = {t.number: t for t in storage.get_all_trials(study_id, deepcopy=False)}
    assert trials[running.number].state == optuna.trial.TrialState.FAIL, \
        f"killed trial {running.number} is {trials[running.number].state.name}; survivor log:\n{_tail(survivor)}"
    others = [t for n, t in trials.items() if n != running.number]
    assert len(others) == 1 and others[0].state in (optuna.trial.TrialState.COMPLETE,
                                                    optuna.trial.TrialState.PRUNED), \
        {n: t.state.name for n, t in trials.items()}

    client, _ = _mlflow(services)
    run = client.get_run(running.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED", f"MLflow run of the killed trial is {run.info.status}"
    assert "heartbeat" in run.data.tags.get("ablation.failure_reason", ""), run.data.tags
