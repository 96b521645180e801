"""Where a plan's runs execute: a local process pool (the default), or tasks on a Ray cluster.

    executor = make_executor("ray", n_jobs, ray_address="HEAD:6379")
    for result in executor.run(jobs, "look 1/2"):    # RunResults, as each run ends
    executor.close()

Both run the one run pipeline (`run.execute`) through `run_job`, which tags the run with the process
that ran it (`ablation.worker_host` / `ablation.worker_pid`) and holds the run's checkpoint lock, so
two plan drivers that reach the same run never train one checkpoint directory at once: the second
waits, then finds every stage done. A run whose worker dies (killed, out of memory, its node lost) is
recorded FAILED with the reason by the driver and the plan goes on; re-running the plan resumes it
from its checkpoints.

Ray: each RunJob is one task that declares what the run uses: CPUs = max(rollout workers, training
threads), and one GPU when the spec trains on CUDA. A task is never retried by Ray (`max_retries=0`):
a crash that came from the run (out of memory, a simulator segfault) would come again, and the
re-run of the plan resumes from the checkpoint anyway. Demos, checkpoints and the gate cache stay
paths in the workdir, which every node must see at the same path (a shared filesystem), not objects
in Ray's object store: the demo files are already content-addressed there and made once by the
driver, while the object store would copy each HDF5 file to every node that runs one of its tasks.
"""
from __future__ import annotations

import logging
import os
import socket
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import UserError
from .host import host_tags
from .locks import file_lock
from .run import RunJob, RunResult, execute
from .tracking import Tracker
from .worker_procs import process_pool

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
TAG_WORKER_HOST = "ablation.worker_host"
TAG_WORKER_PID = "ablation.worker_pid"
RAY_MISSING = ("--executor ray needs Ray, which is not installed: pip install -e \".[cluster]\" "
               "(or: bash scripts/setup.sh, which installs it from requirements.lock)")


def worker_tags() -> dict[str, str]:
    """The host and process that run a run (the Ray worker, the pool worker or the driver itself), and
    that host's CPU (its time figures hold for that CPU: ablation.host), over the creating driver's."""
    return {TAG_WORKER_HOST: socket.gethostname(), TAG_WORKER_PID: str(os.getpid()), **host_tags()}


@contextmanager
def checkpoint_lock(ckpt_dir: str | Path):
    """Held while one process works on a run's checkpoint directory; released when it ends or dies."""
    ckpt = Path(ckpt_dir)
    with file_lock(ckpt.with_name(ckpt.name + ".lock")):
        yield


def run_job(job: RunJob, on_train_metrics: Callable[[int, dict], None] | None = None) -> RunResult:
    """The one run pipeline for one RunJob, in whatever process the executor (or the tuner) chose.
    on_train_metrics: also called with the trainer's metrics (the tuner reports and prunes there)."""
    try:
        Tracker(job.tracking_uri, job.experiment_id).set_tags(job.run_id, worker_tags())
    except Exception:  # an unreachable store: execute() records that failure on its own
        pass
    with checkpoint_lock(job.ckpt_dir):
        return execute(job, on_train_metrics=on_train_metrics)


def worker_died(job: RunJob, error: BaseException, what: str = "worker died") -> RunResult:
    """Record on the run (from the driver) that its worker process died, and why."""
    first = (str(error).strip().splitlines() or [""])[0]
    reason = f"{what}: {type(error).__name__}: {first}"
    Tracker(job.tracking_uri, job.experiment_id).end_run(job.run_id, "FAILED", reason)
    return RunResult(job.spec_name, job.seed, job.run_id, "FAILED", reason)


def _progress(total: int, label: str, file=None):
    """A look's bar: runs done and time so far, without tqdm's own time left. That one divides by every
    run finished, reused ones too: a re-run of `--plan all` whose first 2 runs were reused in 6 s said
    2 min left for 22 runs to train. The plan's ETA line after each run (plan_eta.PlanClock) knows
    which runs did work, and the later looks."""
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="run", dynamic_ncols=True, file=file,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")


class LocalExecutor:
    """Runs RunJobs: in this process (jobs=1) or in a pool of worker processes kept for the whole
    plan, so each worker's imports and simulator are paid once, not once per run or per look."""

    # A worker killed mid-run (the OOM killer, a kill -9) breaks the whole process pool: every run still
    # in it fails with BrokenProcessPool, though only one process died, and the pool cannot say which.
    # So the runs of a broken pool go once more, together, to a fresh pool (each resumes from its
    # checkpoint). If that pool breaks too, the runs left go one at a time: a run whose pool breaks while
    # it runs alone is the one that kills its worker, and only it is recorded FAILED, with the reason.
    def __init__(self, n_jobs: int, job_fn: Callable[[RunJob], RunResult] = run_job):
        self.n_jobs = n_jobs
        self.job_fn = job_fn  # module-level and picklable: the pool's workers import it
        self.pool = process_pool(n_jobs) if n_jobs > 1 else None

    @property
    def parallelism(self) -> str:
        return f"{self.n_jobs} at a time"

    def run(self, jobs: list[RunJob], label: str) -> Iterator[RunResult]:
        """Each run's result as soon as it ends (the plan logs its ETA after each)."""
        bar = _progress(len(jobs), label)
        try:
            if self.pool is None:
                for j in jobs:
                    bar.set_postfix_str(f"{j.spec_name} seed {j.seed}")
                    res = self.job_fn(j)
                    bar.update()
                    yield res
            else:
                for res in self._run_pooled(jobs):
                    bar.set_postfix_str(f"{res.spec_name} seed {res.seed}: {res.status}")
                    bar.update()
                    yield res
        finally:
            bar.close()

    def _run_pooled(self, jobs: list[RunJob]) -> Iterator[RunResult]:
        todo, breaks = list(jobs), 0
        while todo:
            alone = breaks >= 2
            again: list[RunJob] = []
            for batch in ([[j] for j in todo] if alone else [todo]):
                futs = {self.pool.submit(self.job_fn, j): j for j in batch}
                restarted = False
                for fut in as_completed(futs):
                    j = futs[fut]
                    try:
                        yield fut.result()
                        continue
                    except BrokenProcessPool as e:  # a worker process died (killed, out of memory)
                        if not restarted:   # a broken pool refuses new work: one fresh pool per break
                            self._restart()
                            restarted = True
                        if alone:
                            yield worker_died(j, e)
                        else:
                            log.warning("%s seed %s: a worker process died (%s); the run goes again in a "
                                        "fresh pool", j.spec_name, j.seed, type(e).__name__)
                            again.append(j)
                    except Exception as e:  # the call itself failed in the worker (execute records its own errors)
                        yield worker_died(j, e, "the run raised in its worker")
            breaks += bool(again)
            todo = again

    def _restart(self) -> None:
        try:
            self.pool.shutdown(wait=False, cancel_futures=True)
        except Exception:
            pass
        self.pool = process_pool(self.n_jobs)

    def close(self, interrupted: bool = False) -> None:
        """Shut the pool down. `interrupted` (Ctrl-C, or a SIGINT sent to the driver alone, which its
        workers never see): stop the runs in flight now instead of waiting, silently, for each to end; the
        next invocation marks them KILLED and resumes each from its checkpoint."""
        if self.pool is None:
            return
        procs = list((getattr(self.pool, "_processes", None) or {}).values())
        if interrupted and procs:
            log.warning("[plan] interrupted: stopping %d worker process(es); re-run the same command to resume",
                        len(procs))
            self.pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                if p.is_alive():
                    p.terminate()  # SIGTERM: a run's files are written whole or not at all (kill_tally checks)
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
            self.pool = None
            return
        self.pool.shutdown(wait=True, cancel_futures=True)


def resources_for(spec, rollout_workers: int) -> tuple[int, int]:
    """(CPUs, GPUs) one run of this spec occupies: its rollout workers or training threads, whichever
    is more, and one GPU when it trains on CUDA (its rollout policies share that GPU)."""
    cpus = max(1, int(rollout_workers or 1), int(spec.train.num_threads or 0))
    return cpus, (1 if spec.train.device == "cuda" else 0)


def ablation_task(fn: Callable, item: Any) -> Any:
    return fn(item)


class RayExecutor:
    """Runs RunJobs (or any picklable call, for tuning trials) as tasks on a Ray cluster.

    `address` None starts a Ray instance on this machine for the plan; "auto" joins the cluster this
    node belongs to; HOST:PORT joins the cluster whose head listens there (e.g. inside Slurm)."""

    def __init__(self, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise UserError(RAY_MISSING) from None
        self.ray = ray
        self.address = address or "local"
        self.owns_connection = not ray.is_initialized()
        if self.owns_connection:
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=True,
                         logging_level="WARNING")
            except Exception as e:  # a wrong address, no cluster there, a missing auth token: say which
                raise UserError(f"--ray-address {self.address}: cannot join the Ray cluster: "
                                f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                                ) from None
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.max_node_cpus = max((int(n["Resources"].get("CPU", 0)) for n in nodes), default=0)
        self.max_node_gpus = max((int(n["Resources"].get("GPU", 0)) for n in nodes), default=0)
        total = ray.cluster_resources()
        self.summary = (f"Ray cluster {self.address}: {len(nodes)} node(s), {int(total.get('CPU', 0))} CPU(s), "
                        f"{int(total.get('GPU', 0))} GPU(s)")
        print(f"[ray] {self.summary}")

    @property
    def parallelism(self) -> str:
        return "as many at a time as the Ray cluster's CPUs and GPUs allow"

    def fit(self, cpus: int, gpus: int, what: str) -> tuple[int, int]:
        """Requested resources that some node can grant (a task no node can hold would wait forever)."""
        if gpus > self.max_node_gpus:
            raise UserError(f"{what} trains on CUDA (train.device=cuda) but no node of the Ray cluster "
                            f"{self.address} has a GPU; start the workers with GPUs (ray start --num-gpus 1) "
                            "or use --profile cpu")
        if self.max_node_cpus and cpus > self.max_node_cpus:
            # Fewer rollout workers change only the wall time: each episode is seeded by its init state.
            print(f"[ray] {what}: {cpus} CPUs per run asked, the largest node has {self.max_node_cpus}; using that")
            cpus = self.max_node_cpus
        return cpus, gpus

    def submit(self, fn: Callable, items: Iterable, cpus: int, gpus: int) -> dict:
        """Start one task per item, now; -> {task ref: item}."""
        remote = self.ray.remote(ablation_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        return {remote.remote(fn, it): it for it in items}

    def gather(self, pending: dict) -> Iterator[tuple[Any, Any]]:
        """(item, its call's result or the exception that ended its task), as tasks end."""
        ray = self.ray
        pending = dict(pending)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            item = pending.pop(done[0])
            try:
                yield item, ray.get(done[0])
            except ray.exceptions.RayError as e:  # the worker died, its node was lost, or the call raised
                yield item, e

    def map(self, fn: Callable, items: Iterable, cpus: int, gpus: int) -> Iterator[tuple[Any, Any]]:
        return self.gather(self.submit(fn, items, cpus, gpus))

    def run(self, jobs: list[RunJob], label: str) -> Iterator[RunResult]:
        """Each run's result as soon as it ends."""
        pending: dict = {}
        for j in jobs:
            cpus, gpus = self.fit(*resources_for(j.spec, j.rollout_workers), j.spec_name)
            # The task's CPUs are its threads and rollout workers; no terminal progress bars inside tasks.
            job = replace(j, threads=cpus, rollout_workers=min(j.rollout_workers, cpus), progress=False)
            pending.update(self.submit(run_job, [job], cpus, gpus))
        bar = _progress(len(jobs), label)
        try:
            for job, res in self.gather(pending):
                if isinstance(res, BaseException):
                    res = worker_died(job, res)
                bar.set_postfix_str(f"{job.spec_name} seed {job.seed}: {res.status}")
                bar.update()
                yield res
        finally:
            bar.close()

    def close(self, interrupted: bool = False) -> None:
        """Disconnect (and stop the Ray instance this executor started, which stops its tasks)."""
        if self.owns_connection and self.ray.is_initialized():
            self.ray.shutdown()


def make_executor(kind: str, n_jobs: int, ray_address: str | None = None, tracking_uri: str | None = None):
    """The executor a plan (or a tuning study) asked for; `local` is today's process pool."""
    if kind == "local":
        if ray_address:
            raise UserError("--ray-address is used only with --executor ray")
        return LocalExecutor(n_jobs)
    if kind != "ray":
        raise UserError(f"--executor {kind}: unknown; use one of {', '.join(EXECUTORS)}")
    ex = RayExecutor(ray_address)
    if tracking_uri and not tracking_uri.startswith(("http://", "https://")) and ex.address != "local":
        print(f"[ray] tracking store {tracking_uri}: every node must see it at this path; on a cluster use an "
              "MLflow server (--tracking-uri http://HOST:5000)")
    return ex
