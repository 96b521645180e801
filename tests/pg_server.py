"""A real, throwaway PostgreSQL server and a real MLflow tracking server, for the distributed-tuning tests.

    with postgres_server() as pg:                       # initdb + pg_ctl in a temp dir, 127.0.0.1:<free port>
        pg.create_database("optuna"); pg.create_database("mlflow")
        with mlflow_server(pg.url("mlflow"), artifacts) as uri:   # `mlflow server`, waits for GET /health
            ...

The cluster lives in its own temp dir with its own socket dir and a free port, so it never touches (or
conflicts with) a system cluster on 5432. As root it runs the server binaries as the `postgres` user
(PostgreSQL refuses to run as root), with the temp dir chowned to it.

Binaries: `initdb`/`pg_ctl` on PATH, else the newest /usr/lib/postgresql/<ver>/bin. When none are found the
fixture fails (CI must run these tests) and says that `bash scripts/ci_services.sh` installs them; set
ABLATION_SKIP_PG=1 to skip instead, for a quick local loop.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
SKIP_ENV = "ABLATION_SKIP_PG"
MISSING_MSG = ("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH nor under /usr/lib/postgresql/*/bin. "
               "`bash scripts/ci_services.sh` installs them (Debian package 'postgresql'; .ci/run calls it). "
               f"Set {SKIP_ENV}=1 to skip these tests locally.")
USER = "ablation"
PASSWORD = "ablation-test-pw"


class PgUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found and Path(found).resolve().with_name("pg_ctl").exists():
        return Path(found).resolve().parent
    def ver(p: str) -> tuple:
        v = Path(p).parents[1].name
        return tuple(int(x) for x in v.split(".") if x.isdigit())
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=ver, reverse=True)
    for c in cands:
        if os.access(c, os.X_OK) and Path(c).with_name("pg_ctl").exists():
            return Path(c).parent
    return None


def _as_db_user() -> list[str]:
    """Prefix that runs a command as a non-root user when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    return ["su", "postgres", "-s", "/bin/sh", "-c"]  # not reached on Debian (util-linux has runuser)


@dataclass
class PgServer:
    bindir: Path
    root: Path          # temp dir holding data/, sock/, log
    port: int
    host: str = "127.0.0.1"
    user: str = USER
    password: str = PASSWORD

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, db: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{db}"

    def connect(self, db: str = "postgres"):
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password, dbname=db,
                                connect_timeout=5)

    def create_database(self, name: str) -> None:
        conn = self.connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def log_tail(self, n: int = 4000) -> str:
        p = self.root / "postgres.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else "(no log)"


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


@contextlib.contextmanager
def postgres_server() -> Iterator[PgServer]:
    bindir = find_pg_bin()
    if bindir is None:
        raise PgUnavailable(MISSING_MSG)
    prefix = _as_db_user()
    # Not under pytest's tmp_path: that is 0700 root-owned, so the postgres user could not traverse it.
    root = Path(tempfile.mkdtemp(prefix="ablation-pg-"))
    (root / "sock").mkdir()
    pwfile = root / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    if prefix:
        shutil.chown(root, "postgres", "postgres")
        for p in (root / "sock", pwfile):
            shutil.chown(p, "postgres", "postgres")
    pg = None
    try:
        out = _run([*prefix, str(bindir / "initdb"), "-D", str(root / "data"), "-U", USER, f"--pwfile={pwfile}",
                    "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"])
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        opts = ("-c listen_addresses=127.0.0.1 -c unix_socket_directories={sock} -c max_connections=60 "
                "-c shared_buffers=32MB -c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        for attempt in range(5):
            port = free_port()
            pg = PgServer(bindir, root, port)
            out = _run([*prefix, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "postgres.log"),
                        "-w", "-t", "60", "-o", f"-p {port} " + opts.format(sock=root / "sock"), "start"])
            if out.returncode == 0:
                break
            if "already in use" not in pg.log_tail() or attempt == 4:  # a port race is the only retry
                raise RuntimeError(f"pg_ctl start failed ({out.returncode}):\n{out.stdout}\n{out.stderr}\n"
                                   f"log:\n{pg.log_tail()}")
        yield pg
    finally:
        if (root / "data" / "postmaster.pid").exists():
            _run([*prefix, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts_dir: Path, log_path: Path, timeout_s: float = 180) -> Iterator[str]:
    """`mlflow server` on PostgreSQL with served artifacts and the low-memory flags; yields http://host:port."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    port = free_port()
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [str(mlflow_bin), "server", "--backend-store-uri", backend_uri, "--artifacts-destination",
           str(artifacts_dir), "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout_s
        while not _healthy(uri + "/health"):
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.time() > deadline:
                raise RuntimeError(f"mlflow server not healthy after {timeout_s:.0f} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        stop_process_group(proc)
        log.close()


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM the process group we started (start_new_session=True), then SIGKILL it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    # children (uvicorn/gunicorn workers) may outlive the leader: the group id is still the leader's pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@contextlib.contextmanager
def tracking_services(d: Path) -> Iterator[tuple["PgServer", str]]:
    """PostgreSQL with databases `optuna` and `mlflow`, and an MLflow server on the latter (artifacts
    and its log under `d`); yields (the server, the MLflow URI). The distributed-tuning and the Ray
    tests share it."""
    with postgres_server() as pg:
        pg.create_database("optuna")
        pg.create_database("mlflow")
        with mlflow_server(pg.url("mlflow"), d / "mlartifacts", d / "mlflow-server.log") as uri:
            yield pg, uri
