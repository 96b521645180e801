"""Job functions for tests/test_local_executor.py: module-level, so the executor's spawned workers import them.

Each returns a RunResult without training anything; the one under test is the executor's handling of a
worker process that dies (SIGKILL, as the OOM killer sends), which needs real processes, not a model.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ablation.run import RunJob, RunResult


def _calls(job: RunJob) -> Path:
    return Path(job.ckpt_dir) / "calls"


def _count(job: RunJob) -> int:
    p = _calls(job)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a") as f:
        f.write("x")
    return p.stat().st_size


def dies_on_first_call(job: RunJob) -> RunResult:
    """The `dies*` spec names kill their own worker the first time they run; the others finish."""
    n = _count(job)
    if job.spec_name.startswith("dies") and n == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return RunResult(job.spec_name, job.seed, job.run_id, "FINISHED")


def dies_always(job: RunJob) -> RunResult:
    """The `dies*` spec names kill their worker every time (a run that needs more memory than there is)."""
    _count(job)
    if job.spec_name.startswith("dies"):
        os.kill(os.getpid(), signal.SIGKILL)
    return RunResult(job.spec_name, job.seed, job.run_id, "FINISHED")


def calls_of(job: RunJob) -> int:
    return _calls(job).stat().st_size if _calls(job).exists() else 0


def runs_long(job: RunJob) -> RunResult:
    """Marks that it started, works for two minutes (a run mid-training), then marks that it ended."""
    d = Path(job.ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "started").write_text(str(os.getpid()))
    time.sleep(120)
    (d / "ended").write_text("")
    return RunResult(job.spec_name, job.seed, job.run_id, "FINISHED")
