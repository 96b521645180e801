"""The local executor when a worker process dies mid-run (SIGKILL, as from the OOM killer).

One dead process breaks a whole ProcessPoolExecutor: every run in it fails, though only one process
died. The executor must run the others again (they resume from their checkpoints) and record FAILED,
with the reason, only the run that kills its worker. Real spawned processes and a real sqlite MLflow
store; the job functions (tests/worker_jobs.py) stand in for training, which is not under test.
"""
from __future__ import annotations

import io
import time
from concurrent.futures import wait

from ablation.executors import LocalExecutor, _progress
from ablation.registry import _pid_alive
from ablation.run import RunJob
from ablation.tracking import TAG_FAILURE, Tracker
from tests import worker_jobs


def _jobs(tmp_path, names: list[str]) -> tuple[Tracker, list[RunJob]]:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    tr = Tracker.open(uri, "executor-test")
    jobs = []
    for name in names:
        run_id = tr.client.create_run(tr.experiment_id, run_name=name).info.run_id
        jobs.append(RunJob(spec_name=name, spec_yaml="{}", seed=0, run_id=run_id, tracking_uri=uri,
                           experiment_id=tr.experiment_id, demo_path="", ckpt_dir=str(tmp_path / name),
                           init_states=(0,)))
    return tr, jobs


def test_a_worker_killed_once_costs_no_run(tmp_path):
    tr, jobs = _jobs(tmp_path, ["a", "dies", "b", "c"])
    ex = LocalExecutor(2, job_fn=worker_jobs.dies_on_first_call)
    try:
        results = list(ex.run(jobs, "test"))
    finally:
        ex.close()
    assert sorted((r.spec_name, r.status) for r in results) == [
        ("a", "FINISHED"), ("b", "FINISHED"), ("c", "FINISHED"), ("dies", "FINISHED")]
    assert worker_jobs.calls_of(jobs[1]) == 2          # the killed run ran once more
    assert all(tr.client.get_run(j.run_id).info.status == "RUNNING" for j in jobs)  # none marked FAILED


def test_a_run_that_always_kills_its_worker_is_failed_alone(tmp_path):
    tr, jobs = _jobs(tmp_path, ["a", "dies", "b"])
    ex = LocalExecutor(2, job_fn=worker_jobs.dies_always)
    try:
        results = {r.spec_name: r for r in ex.run(jobs, "test")}
    finally:
        ex.close()
    assert {k: r.status for k, r in results.items()} == {"a": "FINISHED", "b": "FINISHED", "dies": "FAILED"}
    assert results["dies"].reason.startswith("worker died: BrokenProcessPool")
    run = tr.client.get_run(jobs[1].run_id)
    assert run.info.status == "FAILED" and run.data.tags[TAG_FAILURE].startswith("worker died")
    assert worker_jobs.calls_of(jobs[1]) == 3          # together, together again, then alone
    # the runs beside it were not recorded as failed
    assert {tr.client.get_run(j.run_id).info.status for j in (jobs[0], jobs[2])} == {"RUNNING"}


def test_an_interrupted_close_stops_the_runs_in_flight_instead_of_waiting_for_them(tmp_path):
    """A SIGINT sent to the plan driver alone (its workers never see it) left close() waiting, silently, for
    every run in flight to end. Interrupted, it stops them: neither run gets to its end."""
    _, jobs = _jobs(tmp_path, ["a", "b"])
    ex = LocalExecutor(2, job_fn=worker_jobs.runs_long)
    futs = [ex.pool.submit(worker_jobs.runs_long, j) for j in jobs]
    started = [tmp_path / j.spec_name / "started" for j in jobs]
    deadline = time.time() + 120
    while not all(p.exists() for p in started) and time.time() < deadline:
        time.sleep(0.2)
    assert all(p.exists() for p in started), "the workers never started their runs"
    pids = [int(p.read_text()) for p in started]
    ex.close(interrupted=True)
    done, _ = wait(futs, timeout=30)
    assert len(done) == 2 and all(f.exception() is not None for f in futs)  # stopped, not finished
    assert not any((tmp_path / j.spec_name / "ended").exists() for j in jobs)
    assert not [pid for pid in pids if _pid_alive(pid)], "a worker still runs"


def test_a_looks_bar_shows_runs_and_time_so_far_not_tqdms_time_left():
    """tqdm's time left divides by every finished run, reused ones too (a re-run's first reused runs made
    it say minutes for hours of training); the plan's ETA line gives the time left instead."""
    out = io.StringIO()
    bar = _progress(24, "look 1/3 (20 episodes)", file=out)
    bar.set_postfix_str("fix_pos_cm seed 0: FINISHED")
    bar.update()
    bar.close()
    last = out.getvalue().split("\r")[-1]
    assert "look 1/3 (20 episodes):" in last and "1/24 [00:00, fix_pos_cm seed 0: FINISHED]" in last, last
    assert "<" not in last and "/run" not in last and "run/s" not in last, last
