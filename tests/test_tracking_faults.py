"""Faults of the MLflow tracking server, injected for real (issue 26, "Faults beyond kill -9").

A real `mlflow server` process (sqlite store in a temp dir, 127.0.0.1, a free port) is SIGKILLed while
a thread logs through `Tracker`/`MetricBuffer`, and restarted on the same port and store a few seconds
later: no metric is lost or doubled, no run is doubled, and the runs end FINISHED. A lost answer to a
`create_run` is injected by a small HTTP proxy in front of the real server that forwards the request
(the server creates the run) and then drops the connection instead of answering.
"""
from __future__ import annotations

import http.client
import logging
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from mlflow.entities import Param
from mlflow.exceptions import MlflowException

from ablation.tracking import RETRY_ENV, MetricBuffer, Tracker, TrackingUnavailable
from tests.pg_server import _healthy, free_port, stop_process_group

SERVER_START_S = 120


class MlflowServer:
    """`mlflow server` on a sqlite store under `root`, on one port for its whole life (restarts included)."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.root / f"server-{self.starts}.log", "w")
        cmd = [str(Path(sys.executable).with_name("mlflow")), "server",
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root,
                                     start_new_session=True)
        log.close()
        deadline = time.time() + SERVER_START_S
        while not _healthy(self.uri + "/health"):
            assert self.proc.poll() is None, self.log_tail()
            assert time.time() < deadline, f"not healthy after {SERVER_START_S} s: {self.log_tail()}"
            time.sleep(0.3)

    def kill(self) -> None:
        stop_process_group(self.proc, grace_s=0)  # SIGKILL of the server and its workers, at once

    def log_tail(self) -> str:
        return (self.root / f"server-{self.starts}.log").read_text()[-3000:]


@pytest.fixture
def server(tmp_path) -> Iterator[MlflowServer]:
    """A server of the test's own, which it may kill (a start takes ~10-20 s on a loaded machine)."""
    s = MlflowServer(tmp_path)
    s.start()
    yield s
    s.kill()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory) -> Iterator[MlflowServer]:
    """One server for the tests that leave it running."""
    s = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    s.start()
    yield s
    s.kill()


def _history(tracker: Tracker, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in tracker.client.get_metric_history(run_id, key))


def test_a_server_restart_mid_plan_loses_and_doubles_nothing(server, monkeypatch, caplog):
    monkeypatch.setenv(RETRY_ENV, "90")
    caplog.set_level(logging.WARNING, logger="ablation.tracking")
    tracker = Tracker.open(server.uri, "faults")
    steps = 60
    first_half, killed = threading.Event(), threading.Event()
    out: dict = {}

    def worker() -> None:
        try:
            run_a = tracker.start_run("run-a", {"ablation.kind": "spec_run"})
            tracker.log_params(run_a, {"lr": 1e-3})
            buf = MetricBuffer(tracker, run_a, flush_every=4)
            for step in range(steps):
                if step == steps // 2:
                    buf.flush()
                    first_half.set()
                    killed.wait(30)  # the rest is logged while the server is down, then restarting
                buf(step, {"loss": 1.0 / (step + 1), "grad_norm": float(step)})
            buf.flush()
            run_b = tracker.start_run("run-b", {"ablation.kind": "spec_run"})  # may be created mid-restart
            tracker.log_metrics(run_b, [("loss", 0.5, s) for s in range(10)])
            tracker.end_run(run_a)
            tracker.end_run(run_b)
            out["runs"] = (run_a, run_b)
        except BaseException as e:  # noqa: BLE001 - the assertion below shows it
            out["error"] = e

    t = threading.Thread(target=worker)
    t.start()
    assert first_half.wait(60), "the worker never logged its first half"
    server.kill()
    killed.set()
    time.sleep(3)  # down for a while: every flush in between must wait and retry
    server.start()  # same port, same sqlite store
    t.join(120)
    assert not t.is_alive() and "error" not in out, out.get("error")
    assert any("retrying" in r.getMessage() for r in caplog.records), "the fault was never seen: no retry"

    run_a, run_b = out["runs"]
    runs = tracker.find_runs("tags.`ablation.kind` = 'spec_run'")
    assert sorted(r.info.run_name for r in runs) == ["run-a", "run-b"]  # 0 duplicated runs
    assert {r.info.run_id: r.info.status for r in runs} == {run_a: "FINISHED", run_b: "FINISHED"}
    # 0 lost and 0 doubled metrics: every step once, with its value
    assert _history(tracker, run_a, "loss") == [(s, 1.0 / (s + 1)) for s in range(steps)]
    assert _history(tracker, run_a, "grad_norm") == [(s, float(s)) for s in range(steps)]
    assert _history(tracker, run_b, "loss") == [(s, 0.5) for s in range(10)]
    assert tracker.client.get_run(run_a).data.params == {"lr": "0.001"}


class _LoseFirstCreateAnswer(BaseHTTPRequestHandler):
    """Forwards every request to the real server; the first `runs/create` reaches it (the run is created),
    and its answer is dropped: the connection closes as if the server had died before answering."""

    upstream_port = 0
    dropped: list[str] = []

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if self.path.endswith("/runs/create") and not self.dropped:
            self.dropped.append(self.path)
            self.close_connection = True
            return
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = _forward

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("mlflow_retries", ["0", "2"], ids=["our-retry", "mlflow-retry-too"])
def test_a_lost_create_run_answer_leaves_one_run(shared_server, monkeypatch, mlflow_retries):
    # "2": MLflow's own retries re-send the create unseen; the token look-up after it removes the second run
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", mlflow_retries)
    monkeypatch.setenv(RETRY_ENV, "30")
    handler = type("Lose", (_LoseFirstCreateAnswer,), {"upstream_port": shared_server.port, "dropped": []})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        tracker = Tracker.open(f"http://127.0.0.1:{proxy.server_address[1]}", f"lost-answer-{mlflow_retries}")
        rid = tracker.start_run("only-once", {"ablation.kind": "spec_run"})
        assert handler.dropped, "the proxy never dropped an answer"
        runs = tracker.find_runs("attributes.run_name = 'only-once'")
        assert [r.info.run_id for r in runs] == [rid]
    finally:
        proxy.shutdown()


def test_a_bad_request_fails_at_once_and_a_dead_server_after_the_budget(shared_server, monkeypatch, caplog,
                                                                       tmp_path):
    caplog.set_level(logging.WARNING, logger="ablation.tracking")
    tracker = Tracker.open(shared_server.uri, "bad-requests")
    rid = tracker.start_run("r", {})
    tracker.log_params(rid, {"lr": 1})
    with pytest.raises(MlflowException, match="lr"):  # a param changed: 400, not retried
        tracker.client.log_batch(rid, params=[Param("lr", "2")])
    with pytest.raises(MlflowException, match="0123456789abcdef"):  # a missing run: 404, not retried
        tracker.client.get_run("0123456789abcdef0123456789abcdef")
    with pytest.raises(MlflowException, match="nope.json"):  # a missing artifact: 404, not retried
        tracker.client.download_artifacts(rid, "nope.json", str(tmp_path))
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]

    monkeypatch.setenv(RETRY_ENV, "1")
    dead = Tracker(f"http://127.0.0.1:{free_port()}", tracker.experiment_id)  # nothing listens there
    with pytest.raises(TrackingUnavailable, match=f"{dead.tracking_uri}.*log_batch.*{RETRY_ENV}"):
        dead.log_metrics(rid, [("loss", 1.0, 0)])
    assert [r for r in caplog.records if "retrying" in r.getMessage()]
