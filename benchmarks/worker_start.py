"""A pool's worker start-up, spawned against forked from the preloading forkserver, side by side:

    python benchmarks/worker_start.py [--pools 3] [--workers 2]

Each way runs in its own fresh interpreter (the forkserver is per process) and starts `--pools` pools
of `--workers` workers one after another, as a plan or the test suite does (`ablation/worker_procs.py`).
Each worker's job imports what a plan worker imports before its first run (the run pipeline, the
rollout pool, torch, MLflow's SQL store) and reports its own CPU seconds since it started; the pool's
wall time is from its creation to its last worker's answer. The forkserver's one-time imports are
reported on their own line (its CPU seconds, read from /proc), so the per-worker figures hide nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import forkserver
from ablation.worker_procs import adopt, parent_env, worker_context, start_method

def job(_):
    import ablation.executors, ablation.rollout_pool, torch  # noqa: F401  (a plan worker's imports)
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    return time.process_time(), os.getpid()

def server_cpu_s():
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if not pid:
        return 0.0
    rest = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")

if __name__ == "__main__":
    pools, workers = int(sys.argv[1]), int(sys.argv[2])
    out = {"method": start_method(), "pools": []}
    for _ in range(pools):
        t0 = time.perf_counter()
        with ProcessPoolExecutor(workers, mp_context=worker_context(), initializer=adopt,
                                 initargs=(parent_env(),)) as ex:
            got = list(ex.map(job, range(workers)))
        out["pools"].append({"wall_s": time.perf_counter() - t0, "worker_cpu_s": [c for c, _ in got]})
    out["server_cpu_s"] = server_cpu_s()
    print(json.dumps(out))
"""


def run(method: str, pools: int, workers: int) -> dict:
    env = {**os.environ, "ABLATION_WORKER_START": method, "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as d:  # a file, not -c: spawned workers import the job from it
        script = Path(d) / "worker_start_child.py"
        script.write_text(CHILD)
        r = subprocess.run([sys.executable, str(script), str(pools), str(workers)], cwd=REPO, env=env,
                           capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"the {method} child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pools", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    res = {m: run(m, a.pools, a.workers) for m in ("spawn", "forkserver")}
    if res["forkserver"]["method"] != "forkserver":
        sys.exit("forkserver is not available on this platform: only spawned workers here")
    print(f"{a.pools} pools of {a.workers} workers, one after another, in one process:")
    for m, r in res.items():
        for i, p in enumerate(r["pools"]):
            cpu = p["worker_cpu_s"]
            print(f"  {m:10s} pool {i + 1}: {p['wall_s']:6.2f} s wall, worker start-up "
                  f"{sum(cpu) / len(cpu):5.2f} CPU-s each")
    print(f"  forkserver's own imports (once per process): {res['forkserver']['server_cpu_s']:.2f} CPU-s")
    cpu = {m: sum(sum(p["worker_cpu_s"]) for p in r["pools"]) for m, r in res.items()}
    total_fs = cpu["forkserver"] + res["forkserver"]["server_cpu_s"]
    wall = {m: sum(p["wall_s"] for p in r["pools"]) for m, r in res.items()}
    print(f"all {a.pools * a.workers} workers: spawn {cpu['spawn']:.1f} CPU-s, forkserver {total_fs:.1f} CPU-s "
          f"(server included): {cpu['spawn'] / max(total_fs, 1e-9):.2f}x less; wall {wall['spawn']:.1f} s against "
          f"{wall['forkserver']:.1f} s: {wall['spawn'] / max(wall['forkserver'], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
