"""Runs left RUNNING by a killed plan process are marked KILLED, or SCHEDULED when only queued, by the next
invocation (real sqlite store)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

from ablation.registry import mark_stale_runs
from ablation.tracking import TAG_FAILURE, TAG_KIND, TAG_STAGE, Tracker, default_tracking_uri, runs_view_url


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_runs_of_dead_processes_are_marked_killed(tmp_path):
    tr = Tracker.open(default_tracking_uri(tmp_path), "stale", tmp_path / "art")
    host = socket.gethostname()
    stale = tr.start_run("plan:x", {TAG_KIND: "plan", "ablation.host": host, "ablation.pid": dead_pid()})
    alive = tr.start_run("plan:y", {TAG_KIND: "plan", "ablation.host": host, "ablation.pid": os.getpid()})
    elsewhere = tr.start_run("plan:z", {TAG_KIND: "plan", "ablation.host": "another-host", "ablation.pid": 1})
    finished = tr.start_run("plan:w", {TAG_KIND: "plan", "ablation.host": host, "ablation.pid": dead_pid()})
    tr.end_run(finished)
    owner = {"ablation.host": host, "ablation.pid": dead_pid()}
    queued = tr.start_run("arm seed 1", {TAG_KIND: "spec_run", **owner})                 # never began a stage
    between = tr.start_run("arm seed 2", {TAG_KIND: "spec_run", TAG_STAGE: "done", **owner})  # queued for a later look
    cut = tr.start_run("arm seed 3", {TAG_KIND: "spec_run", TAG_STAGE: "train", **owner})   # killed while training
    assert mark_stale_runs(tr) == (2, 2)
    c = tr.client
    for rid in (queued, between):
        assert c.get_run(rid).info.status == "SCHEDULED"
        assert c.get_run(rid).data.tags[TAG_FAILURE].startswith("queued, not started: its driver")
    assert c.get_run(cut).info.status == "KILLED"
    assert "ended without closing it" in c.get_run(cut).data.tags[TAG_FAILURE]
    assert c.get_run(stale).info.status == "KILLED"
    assert "ended without closing it" in c.get_run(stale).data.tags[TAG_FAILURE]
    assert c.get_run(alive).info.status == "RUNNING"          # its process lives
    assert c.get_run(elsewhere).info.status == "RUNNING"      # another machine's: cannot be told from here
    assert c.get_run(finished).info.status == "FINISHED"
    assert mark_stale_runs(tr) == (0, 0)


def test_runs_view_link_opens_the_runs_table(tmp_path):
    tr = Tracker.open(default_tracking_uri(tmp_path), "links", tmp_path / "art")
    assert runs_view_url(tr) == f"http://127.0.0.1:5000/#/experiments/{tr.experiment_id}/runs"
    assert runs_view_url(Tracker("http://mlflow:5000", "7")) == "http://mlflow:5000/#/experiments/7/runs"
