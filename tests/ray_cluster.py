"""A real, throwaway Ray cluster on 127.0.0.1, as `ray start --head` makes one, for the Ray executor
tests.

    with ray_cluster(tmp, cpus=2) as c:     # c.address = "127.0.0.1:<port>", c.env for drivers
        subprocess.run([..., "--executor", "ray", "--ray-address", c.address], env=c.env)

One node: every task runs in a Ray worker process, never in the driver (the tests assert it by pid), so
what a run needs must reach it through the shared workdir and the tracking server, not through the
driver's process. (A second, worker-only node added nothing a test checks, and cost a node start and
its raylet's background CPU beside the tests: ~10 s of a busy core.) The node uses token authentication
with a token made here (RAY_AUTH_TOKEN), as the README's cluster recipes do. `ray start --block` runs in
its own session and is stopped by signalling that group (never `ray stop`, which would stop every Ray on
the machine): SIGTERM, then SIGKILL after STOP_GRACE_S, since a head told to stop sat out a 20 s grace
in full, and nothing of this throwaway cluster needs a clean shutdown.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tests.pg_server import free_port, stop_process_group

RAY_BIN = Path(sys.executable).with_name("ray")
STOP_GRACE_S = 2


@dataclass
class RayCluster:
    address: str
    env: dict
    procs: list = field(default_factory=list)
    logs: list = field(default_factory=list)

    def log_tail(self, n: int = 3000) -> str:
        return "\n".join(f"--- {p}\n{Path(p).read_text(errors='replace')[-n:]}" for p in self.logs)


def _nodes_alive(address: str, env: dict) -> int:
    code = ("import ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))" % address)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    try:
        return int(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return 0


@contextlib.contextmanager
def ray_cluster(log_dir: Path, cpus: int = 2, timeout_s: float = 180) -> Iterator[RayCluster]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    # A short temp dir of its own (Ray's socket paths must stay under ~107 characters).
    temp = tempfile.mkdtemp(prefix="ray-t-", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "MLFLOW_ENABLE_ASYNC_LOGGING": "false"}
    cluster = RayCluster(address, env)
    args = ["start", "--head", "--port", str(port), "--num-cpus", str(cpus), "--num-gpus", "0",
            "--include-dashboard", "false", "--temp-dir", temp, "--node-ip-address", "127.0.0.1", "--block",
            "--disable-usage-stats"]
    try:
        log = log_dir / "ray-head.log"
        cluster.logs.append(log)
        with open(log, "w") as fh:
            cluster.procs.append(subprocess.Popen([str(RAY_BIN), *args], env=env, stdout=fh,
                                                  stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.time() + timeout_s
        while _nodes_alive(address, env) < 1:
            if cluster.procs[-1].poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the Ray node did not come up:\n{cluster.log_tail()}")
            time.sleep(1)
        yield cluster
    finally:
        for p in reversed(cluster.procs):
            stop_process_group(p, grace_s=STOP_GRACE_S)
        shutil.rmtree(temp, ignore_errors=True)
