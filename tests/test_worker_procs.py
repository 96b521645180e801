"""Pool workers forked from the preloading forkserver (ablation/worker_procs.py) behave as spawned ones:
they take the parent's environment as it is when their pool starts, its thread settings and a fresh
numpy RNG, although the server was started earlier under another environment. Real processes, real
torch and OpenBLAS thread pools (read back through threadpoolctl)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ablation.worker_procs import THREAD_VARS, process_pool, worker_context


RENDEZVOUS_TIMEOUT_S = 120


def probe(meeting: tuple[str, int]) -> dict:
    """What a job sees in its worker (this module imports only ablation.worker_procs of the package).
    The job first waits at its meeting (a folder, a count) until that many jobs have arrived, so a pool of
    n runs its n jobs in n different workers: an idle pool may otherwise hand them all to its first."""
    preloaded = set(sys.modules)
    folder, count = Path(meeting[0]), meeting[1]
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + RENDEZVOUS_TIMEOUT_S
    while len(list(folder.iterdir())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(folder.iterdir()))} of {count} workers met in {folder}")
        time.sleep(0.02)
    import numpy as np
    import torch
    from threadpoolctl import threadpool_info

    blas = sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
    watched = {"mujoco", "robosuite", "libero", "torch", "mlflow"}
    return {"pid": os.getpid(), "env": os.environ.get("ABLATION_TEST_MARK"), "torch_threads": torch.get_num_threads(),
            "blas_threads": blas, "draw": float(np.random.random()),
            "modules": sorted({m.split(".")[0] for m in preloaded} & watched),
            "own_modules": sorted(m for m in preloaded if m.startswith("ablation."))}


def run_pool(n: int = 2) -> list[dict]:
    """n jobs on a pool of n workers, one job in each worker."""
    with tempfile.TemporaryDirectory() as folder, process_pool(n) as ex:
        return list(ex.map(probe, [(folder, n)] * n))


def test_workers_take_the_environment_their_pool_starts_under(monkeypatch):
    worker_context()  # the server runs (maybe started by an earlier test, under another environment)
    for var in THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ABLATION_TEST_MARK", "first")
    first = run_pool()
    assert [r["env"] for r in first] == ["first", "first"]
    monkeypatch.setenv("ABLATION_TEST_MARK", "second")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    second = run_pool()
    assert [r["env"] for r in second] == ["second", "second"]
    # one thread each, as the variable asks, though the server imported torch and numpy without it
    assert all(r["torch_threads"] == 1 and r["blas_threads"] == [1] for r in second), second
    # without the variable the libraries keep their own default, as in a spawned process
    assert {r["torch_threads"] for r in first} == {default_torch_threads()}, first


def default_torch_threads() -> int:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def test_each_worker_draws_its_own_numpy_randomness():
    a, b = run_pool()
    assert a["pid"] != b["pid"] and a["draw"] != b["draw"]
    c, d = run_pool()
    assert len({a["draw"], b["draw"], c["draw"], d["draw"]}) == 4


def test_the_server_preloads_the_stack_but_no_simulator_and_none_of_ours():
    """MUJOCO_GL picks the GL backend at import and ablation's modules read the environment at import, so
    the preload (imported once, under the server's environment) must not pull them in."""
    preloads = worker_context().get_start_method() == "forkserver"  # (ABLATION_WORKER_START=spawn: nothing)
    (r,) = run_pool(1)
    assert r["modules"] == (["mlflow", "torch"] if preloads else []), r  # before the job imported anything
    assert r["own_modules"] == ["ablation.worker_procs"], r


def test_spawn_is_still_selectable(monkeypatch):
    monkeypatch.setenv("ABLATION_WORKER_START", "spawn")
    assert worker_context().get_start_method() == "spawn"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("ABLATION_TEST_MARK", "spawned")
    (r,) = run_pool(1)
    assert r["env"] == "spawned" and r["torch_threads"] == 1 and r["blas_threads"] == [1]
