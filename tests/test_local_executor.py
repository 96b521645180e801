"""The local executor when a worker process dies mid-run (SIGKILL, as from the OOM killer).

One dead process breaks a whole ProcessPoolExecutor: every run in it fails, though only one process
died. The executor must run the others again (they resume from their checkpoints) and record FAILED,
with the reason, only the run that kills its worker. Real spawned processes and a real sqlite MLflow
store; the job functions (tests/worker_jobs.py) stand in for training, which is not under test.
"""
from __future__ import annotations

from ablation.executors import LocalExecutor
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
