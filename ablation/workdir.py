"""Where a run keeps its files, and where a spec's demos come from.

    <workdir>/demos/        generated demo files, named by their inputs (the cache key)
    <workdir>/checkpoints/  one bundle per spec x seed
    <workdir>/mlruns.db     MLflow sqlite store, artifacts under <workdir>/mlartifacts/
    <workdir>/optuna.db     Optuna storage
    <workdir>/report/       the comparison report
    <workdir>/locks/        locks shared by the processes that use the workdir (run creation)
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError
from .locks import file_lock
from .spec import Spec

DEFAULT_WORKDIR = Path(os.environ.get("ABLATION_WORKDIR", "workdir"))


@contextmanager
def workdir_lock(workdir: Path, name: str):
    """An exclusive lock for every process that uses this workdir, on this machine or on any node that
    mounts it (plan drivers, cluster workers): e.g. two drivers of one plan create each run once."""
    with file_lock(Path(workdir) / "locks" / f"{name}.lock"):
        yield


def demo_path_for(spec: Spec, workdir: Path = DEFAULT_WORKDIR, seed: int = 0) -> Path:
    """The demo file a spec trains on: its own `data.demo_file`, or the generated one in the workdir."""
    if spec.data.demo_file:
        p = Path(spec.data.demo_file).expanduser()
        if not p.exists():
            raise UserError(f"spec {spec.name}: data.demo_file: '{p}' does not exist (a LIBERO .hdf5 file or a "
                            "LeRobot v3 dataset folder); fix the path, or set data.demo_file: null to generate "
                            "demos with the scripted expert")
        check_file_task(spec, p)
        return p
    from .sim.demos import default_demo_path  # light: the simulator itself is not imported here

    d = spec.data
    return default_demo_path(Path(workdir) / "demos", d.suite, d.task, d.n_demos, d.images, d.dart_noise, seed,
                             d.expert_speed, d.image_size, turn_deg=d.expert_turn_deg)


def check_file_task(spec: Spec, path: Path) -> None:
    """A user's LIBERO file or LeRobot dataset names its own task (BDDL file, instruction): rollouts must
    run that task. A spec that says another one is an error that names both; demos that cannot tell are
    trusted to be the spec's task."""
    from .demo_io import infer_suite_task
    from .episodes import DemoFileError

    try:
        suite, task = infer_suite_task(path)
    except DemoFileError:
        return
    if (suite, task) != (spec.data.suite, spec.data.task):
        raise UserError(f"{path}: the file holds {suite} task {task} (from its BDDL/problem_info attributes) but "
                        f"spec {spec.name} evaluates {spec.data.suite} task {spec.data.task}; set "
                        f"data.suite={suite} data.task={task} (e.g. --set data.suite={suite} --set data.task={task})")


def ensure_demos(spec: Spec, workdir: Path = DEFAULT_WORKDIR, seed: int = 0) -> Path:
    """Return the spec's demo file, generating it with the scripted expert when it is not there yet."""
    path = demo_path_for(spec, workdir, seed)
    if spec.data.demo_file:
        return path
    from .sim.demos import generate_demos  # the simulator is only imported when demos must be made

    d = spec.data
    path.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent tune workers may ask for the same file: one makes it, the others wait and reuse it.
    with file_lock(path.with_name(path.name + ".lock")):
        return generate_demos(d.suite, d.task, n=d.n_demos, out=path, images=d.images,
                              image_size=d.image_size, dart_sigma=d.dart_noise, seed=seed, speed=d.expert_speed,
                              fast=spec.sim.fast, turn_deg=d.expert_turn_deg)
