"""How the local pools (plan jobs, tuning trials, rollout workers, demo workers) start their processes.

A spawned worker imports torch, MLflow and SciPy again before its first job: 6-8 CPU-s on a busy core,
paid by every worker of every pool (in the test suite, ~24 workers). Here the workers fork from a
forkserver (one per parent process, started at its first pool) that has imported that stack once, so a
worker starts in ~0.24 CPU-s (benchmarks/worker_start.py).

A forked worker must not inherit what the server fixed when it started, maybe long before this pool:
- the environment: each worker takes its parent's `os.environ` as it is when the pool starts (`adopt`);
- thread pools: the server imports torch and numpy with no thread variables set, so they start at their
  defaults; `adopt` applies the thread variables of the parent's environment at run time
  (torch.set_num_threads, threadpoolctl), where a spawned process would have read them at import;
- numpy's global RNG: reseeded from the OS, as a new process's is.
The server preloads third-party modules only: ablation's own read the environment at import
(ABLATION_WORKDIR), and the simulator's choose their GL backend at import (MUJOCO_GL, set by
`ensure_libero` before a pool starts), so both are imported by each worker, as before.

`ABLATION_WORKER_START=spawn` (or a platform without forkserver) gives the spawned workers of before.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from typing import Callable

# Imported once by the server; each is a few tenths of a second to 2.7 s of a worker's start-up.
PRELOAD = ("numpy", "torch", "scipy.stats", "mlflow", "mlflow.store.tracking.sqlalchemy_store")
# The variables that size the thread pools of torch (OpenMP, MKL) and numpy (OpenBLAS) at their import.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
START_ENV = "ABLATION_WORKER_START"

_server_lock = threading.Lock()
_server_pid: int | None = None  # the process whose server this module started (a forked child has none)


def start_method() -> str:
    """'forkserver' unless the platform lacks it or ABLATION_WORKER_START=spawn asks for spawned workers."""
    if os.environ.get(START_ENV, "").strip().lower() == "spawn" or "forkserver" not in mp.get_all_start_methods():
        return "spawn"
    return "forkserver"


def worker_context() -> BaseContext:
    """The multiprocessing context for a pool's workers. Each worker must first call `adopt` with the
    `parent_env()` its parent took when it started the pool (`process_pool` does both)."""
    method = start_method()
    ctx = mp.get_context(method)
    if method == "forkserver":
        _start_server(ctx)
    return ctx


def process_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor on `worker_context()` whose workers `adopt` this environment, then run
    `initializer(*initargs)`."""
    return ProcessPoolExecutor(workers, mp_context=worker_context(), initializer=_init_worker,
                               initargs=(parent_env(), initializer, initargs))


def _init_worker(env: dict[str, str], initializer: Callable | None, initargs: tuple) -> None:
    adopt(env)
    if initializer is not None:
        initializer(*initargs)


def parent_env() -> dict[str, str]:
    """The environment a worker of a pool started now takes (pass it to `adopt`)."""
    return dict(os.environ)


def _start_server(ctx: BaseContext) -> None:
    global _server_pid
    with _server_lock:
        if _server_pid == os.getpid():
            return
        from multiprocessing import forkserver

        ctx.set_forkserver_preload(list(PRELOAD))
        # Started without thread variables (a demo pool sets them to 1 while it starts): the preloaded
        # libraries size their pools by default, and `adopt` applies each worker's own settings.
        saved = {k: os.environ.pop(k) for k in THREAD_VARS if k in os.environ}
        try:
            forkserver.ensure_running()
        finally:
            os.environ.update(saved)
        _server_pid = os.getpid()


def _threads_from(env: dict[str, str], *names: str) -> int | None:
    """The last of `names` set in env to a positive integer: later names win, as the libraries read them
    (MKL_NUM_THREADS over OMP_NUM_THREADS for torch, OPENBLAS_NUM_THREADS over it for OpenBLAS)."""
    n = None
    for name in names:
        try:
            v = int(env[name])
        except (KeyError, ValueError):
            continue
        if v > 0:
            n = v
    return n


def adopt(env: dict[str, str]) -> None:
    """First thing a pool worker does: take the parent's environment, thread settings and a fresh RNG."""
    if dict(os.environ) != env:
        os.environ.clear()
        os.environ.update(env)
    torch_threads = _threads_from(env, "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    if torch_threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(torch_threads)
    blas_threads = _threads_from(env, "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    if blas_threads and "numpy" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=blas_threads, user_api="blas")
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()  # the legacy global RNG, from the OS as in a new process
