"""MLflow glue: one store and experiment, calls retried while a server restarts, metrics sent in batches.

Which runs exist, and their tags, is ablation/registry.py's: it creates, finds and marks them through here.

Everything goes through `MlflowClient` with explicit run ids, so worker processes can log to a run
created by the parent without relying on MLflow's global "active run" state. Metrics are buffered
and sent with `log_batch` (one call costs about what 3.5 ms per single `log_metric` would).

With a tracking server (an http(s) URI), every call is retried with exponential backoff while the server
is unreachable or answers 5xx/429, for up to ABLATION_MLFLOW_RETRY_S seconds (default 120), so a restart
of the server loses no metric and does not stop a plan. A 4xx (bad request, missing run) fails at once.
Retried calls are idempotent on the server (metrics are de-duplicated, tags and params re-set to the same
value), except creating a run: `start_run` tags each new run with a client-side token, looks it up before
creating again, and deletes any second run a lost answer left behind.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import UserError
from .locks import file_lock
from .store_template import seed_sqlite_store

# MLflow limits per log_batch call.
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100
_MAX_PARAM_LEN = 6000

TAG_SPEC = "ablation.spec"
TAG_SPEC_HASH = "ablation.spec_hash"
TAG_SEED = "ablation.seed"
TAG_KIND = "ablation.kind"  # plan | spec_run | study | trial
TAG_FAILURE = "ablation.failure_reason"
TAG_STAGE = "ablation.stage"
TAG_CREATE_TOKEN = "ablation.create_token"  # makes a retried create_run idempotent

RETRY_ENV = "ABLATION_MLFLOW_RETRY_S"
DEFAULT_RETRY_S = 120.0  # longer than a tracking server takes to restart (about 5-15 s here)
_FIRST_DELAY_S, _MAX_DELAY_S = 0.5, 10.0

log = logging.getLogger(__name__)


def default_tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{(Path(workdir) / 'mlruns.db').resolve()}"


def ui_command(tracking_uri: str) -> str:
    """The MLflow UI with the low-memory flags (~565 MB instead of ~3.4 GB)."""
    return (f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false .venv/bin/mlflow ui --backend-store-uri {tracking_uri} "
            "--workers 1 --host 127.0.0.1 --port 5000")


def runs_view_url(tracker: "Tracker", base: str = "http://127.0.0.1:5000") -> str:
    """The experiment's runs table in the UI. MLflow 3's plain experiment link opens the GenAI overview
    (traces), where a plan's runs are not shown."""
    root = tracker.tracking_uri if tracker.tracking_uri.startswith(("http://", "https://")) else base
    return f"{root.rstrip('/')}/#/experiments/{tracker.experiment_id}/runs"


@contextmanager
def sqlite_lock(uri: str):
    """An exclusive file lock beside a sqlite database (no-op for other URIs)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    with file_lock(db.with_name(db.name + ".lock")):
        yield


def _is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


class TrackingUnavailable(UserError):
    """The tracking server stayed unreachable (or kept failing with 5xx) for the whole retry budget."""


def retry_budget_s() -> float:
    raw = os.environ.get(RETRY_ENV, "").strip()
    try:
        budget = float(raw) if raw else DEFAULT_RETRY_S
    except ValueError:
        budget = -1.0
    if budget < 0:
        raise UserError(f"{RETRY_ENV}={raw!r}: not a number of seconds >= 0; e.g. {RETRY_ENV}={DEFAULT_RETRY_S:g}")
    return budget


_LOST_CONNECTION = re.compile(r"Max retries exceeded|Connection refused|Connection reset|RemoteDisconnected"
                              r"|failed with error code (5\d\d|429)")


def is_transient(e: BaseException) -> bool:
    """A failure that a restarting tracking server explains: no connection, a timeout, an HTTP 5xx or 429.
    Anything else (a 4xx: bad request, missing run or artifact, a param changed) is the caller's and is not
    retried."""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(e, requests.HTTPError):  # artifact uploads and downloads
        return e.response is not None and (e.response.status_code >= 500 or e.response.status_code == 429)
    if isinstance(e, RestException) or (isinstance(e, MlflowException) and e.error_code != "INTERNAL_ERROR"):
        code = e.get_http_status_code()  # the server's own answer (or TEMPORARILY_UNAVAILABLE, ...)
        return code >= 500 or code == 429
    if isinstance(e, MlflowException):
        # INTERNAL_ERROR is also MLflow's default code for anything; only a lost connection (wrapped by the
        # REST client, or quoted in an artifact download's summary) or a non-JSON 5xx answer counts
        return bool(_LOST_CONNECTION.search(str(e))) or any(
            isinstance(x, (requests.ConnectionError, requests.Timeout)) for x in (e.__cause__, e.__context__))
    return isinstance(e, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError))


class _Backoff:
    """Exponential backoff with jitter within one deadline, for one call to the tracking server."""

    def __init__(self, tracking_uri: str, what: str):
        self.uri, self.what, self.budget_s = tracking_uri, what, retry_budget_s()
        self.deadline = time.monotonic() + self.budget_s
        self.delay_s, self.tries = _FIRST_DELAY_S, 0

    def wait(self, e: Exception) -> None:
        """Sleep before the next try; raise instead when `e` is not transient or the budget is spent."""
        if not is_transient(e):
            raise e
        left_s = self.deadline - time.monotonic()
        if left_s <= 0:
            raise TrackingUnavailable(
                f"MLflow tracking server {self.uri}: {self.what} still failing after {self.budget_s:g} s of retries "
                f"({type(e).__name__}: {str(e)[:500]}); check that the server is up, or set {RETRY_ENV} to wait "
                "longer") from e
        if self.tries == 0:
            log.warning("MLflow tracking server %s: %s failed (%s); retrying for up to %g s",
                        self.uri, self.what, str(e)[:200], self.budget_s)
        self.tries += 1
        time.sleep(min(left_s, self.delay_s * random.uniform(0.8, 1.2)))
        self.delay_s = min(2 * self.delay_s, _MAX_DELAY_S)

    def done(self) -> None:
        if self.tries:
            log.warning("MLflow tracking server %s: %s went through after %d retries", self.uri, self.what, self.tries)


def with_retries(tracking_uri: str, what: str, fn: Callable, *args, **kwargs):
    """fn(*args, **kwargs), retried on transient failures (`is_transient`) within the retry budget."""
    backoff = _Backoff(tracking_uri, what)
    while True:
        try:
            out = fn(*args, **kwargs)
        except Exception as e:
            backoff.wait(e)
            continue
        backoff.done()
        return out


class _RetryingClient:
    """An MlflowClient whose methods are retried by `with_retries` (all but create_run, which is not
    idempotent: `Tracker.start_run` retries it)."""

    def __init__(self, client, tracking_uri: str):
        self.raw, self._uri = client, tracking_uri

    def __getattr__(self, name: str):
        attr = getattr(self.raw, name)
        if not callable(attr) or name == "create_run":
            return attr

        def call(*args, **kwargs):
            return with_retries(self._uri, name, attr, *args, **kwargs)

        return call


def _client(tracking_uri: str, retry: bool = True):
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    # The backoff here owns the retries: MLflow's own (urllib3) would re-send a create_run whose answer was
    # lost, unseen (a second run), and wait up to ~4 min per call.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    return _RetryingClient(client, tracking_uri) if retry and _is_server(tracking_uri) else client


@dataclass
class Tracker:
    """A handle on one MLflow store and experiment."""

    tracking_uri: str
    experiment_id: str

    @classmethod
    def open(cls, tracking_uri: str, experiment: str, artifact_root: Path | None = None) -> "Tracker":
        """Create the store and the experiment once, before any worker starts (concurrent first use of a
        sqlite store races in alembic, so processes sharing one take a file lock here)."""
        with sqlite_lock(tracking_uri):
            seed_sqlite_store(tracking_uri)  # a new sqlite store: a copy of a migrated empty one
            return cls._open(tracking_uri, experiment, artifact_root)

    @classmethod
    def _open(cls, tracking_uri: str, experiment: str, artifact_root: Path | None) -> "Tracker":
        client = _client(tracking_uri)
        try:
            exp = client.get_experiment_by_name(experiment)
        except Exception as e:  # a bad URI or an unreachable server: say which
            raise UserError(f"MLflow tracking store '{tracking_uri}' cannot be opened: {e}") from None
        if exp is None:
            loc = None
            # A tracking server stores artifacts itself; a local path would land on each worker's disk.
            if artifact_root is not None and not tracking_uri.startswith(("http://", "https://")):
                artifact_root.mkdir(parents=True, exist_ok=True)
                loc = artifact_root.resolve().as_uri()
            try:
                # Without this kind tag MLflow 3's UI opens a new experiment on its (empty) traces view.
                exp_id = client.create_experiment(experiment, artifact_location=loc,
                                                  tags={"mlflow.experimentKind": "custom_model_development"})
            except Exception:
                # another process created it in the meantime
                exp = client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
        return cls(tracking_uri, exp_id)

    @property
    def client(self):
        return _client(self.tracking_uri)

    # -- runs
    def start_run(self, name: str, tags: dict[str, Any], parent_run_id: str | None = None) -> str:
        t = {k: str(v) for k, v in tags.items()}
        if parent_run_id:
            t["mlflow.parentRunId"] = parent_run_id
        if not _is_server(self.tracking_uri):
            return self.client.create_run(self.experiment_id, tags=t, run_name=name).info.run_id
        # A server may create the run and die before it answers: look the token up before creating again.
        token = t[TAG_CREATE_TOKEN] = uuid.uuid4().hex
        raw, backoff = _client(self.tracking_uri, retry=False), _Backoff(self.tracking_uri, "create_run")
        created = None
        while created is None:
            try:
                created = raw.create_run(self.experiment_id, tags=t, run_name=name).info.run_id
            except Exception as e:
                backoff.wait(e)
                found = self._runs_with_token(token)
                created = found[0].info.run_id if found else None
        backoff.done()
        # The oldest run with the token is the one; any other (an answer lost in a way the look-up missed,
        # or MLflow's own retries switched back on) is deleted.
        runs = self._runs_with_token(token)
        keep = runs[0].info.run_id if runs else created
        for r in runs[1:]:
            log.warning("MLflow: deleting run %s, a duplicate of %s left by a retried create_run",
                        r.info.run_id, keep)
            self.client.delete_run(r.info.run_id)
        return keep

    def _runs_with_token(self, token: str) -> list:
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{TAG_CREATE_TOKEN}` = '{token}'")
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    def end_run(self, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
        if reason:
            self.client.set_tag(run_id, TAG_FAILURE, reason[:4000])
        self.client.set_terminated(run_id, status=status)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in params.items()]
        existing = self.client.get_run(run_id).data.params
        items = [p for p in items if p.key not in existing]  # params are immutable; resume must not clash
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[i:i + _MAX_PARAMS_PER_BATCH])

    def log_metrics(self, run_id: str, rows: Iterable[tuple[str, float, int]],
                    tags: dict[str, Any] | None = None) -> None:
        """rows: (key, value, step). Sent in batches; `tags` ride with the first (one round trip for both)."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(s)) for k, v, s in rows]
        tag_items = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        if not items and not tag_items:
            return
        first = _MAX_METRICS_PER_BATCH - len(tag_items)  # MLflow caps the entries of one batch, tags included
        self.client.log_batch(run_id, metrics=items[:first], tags=tag_items)
        for i in range(first, len(items), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=items[i:i + _MAX_METRICS_PER_BATCH])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_dataset(self, run_id: str, path: Path, digest: str, context: str = "training") -> None:
        """The demo file as an MLflow dataset input of the run (its name, sha256 digest and path), so the
        UI's dataset column says which demos trained it."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(name=Path(path).name, digest=digest[:16], source_type="local",
                     source=json.dumps({"uri": str(Path(path).resolve())}), schema=None, profile=None)
        self.client.log_inputs(run_id, datasets=[DatasetInput(ds, [InputTag("mlflow.data.context", context)])])

    # -- queries
    def find_runs(self, filter_string: str, max_results: int = 1000) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                       max_results=max_results, order_by=["attributes.start_time DESC"])


class MetricBuffer:
    """Collects (key, value, step) rows (the trainer callback's, the run stages') and tags; flushes them
    together in batches."""

    def __init__(self, tracker: Tracker, run_id: str, flush_every: int = 2000, flush_after_s: float = 15.0):
        self.tracker, self.run_id, self.flush_every = tracker, run_id, flush_every
        # Also flush on time, so a killed run keeps what it measured up to a few seconds before.
        self.flush_after_s, self.last_flush = flush_after_s, time.time()
        self.rows: list[tuple[str, float, int]] = []
        self.tags: dict[str, str] = {}
        self.history: dict[str, list[tuple[int, float]]] = {}

    def tag(self, tags: dict[str, Any]) -> None:
        """Tags to send with the next flush."""
        self.tags.update({k: str(v) for k, v in tags.items()})

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.rows.append((k, v, step))
            self.history.setdefault(k, []).append((step, float(v)))
        if len(self.rows) >= self.flush_every or time.time() - self.last_flush > self.flush_after_s:
            self.flush()

    def flush(self) -> None:
        if self.rows or self.tags:
            self.tracker.log_metrics(self.run_id, self.rows, self.tags)
            self.rows, self.tags = [], {}
        self.last_flush = time.time()
