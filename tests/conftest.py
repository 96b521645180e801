"""Shared fixtures.

`synthetic_demo_file`: a real LIBERO-layout HDF5 file written by our writer, with trajectories made
up in numpy at the seed's magnitudes (no simulator): for data, codec and audit tests.
`expert_demo_file`: demos from the scripted expert in the real LIBERO simulator (marked `sim`).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ablation import rotation as R
from ablation.data import DemoMeta, Episode, write_demo_file

REPO = Path(__file__).resolve().parents[1]

# The files that take longest in a full run (scripts/test.sh's --durations), longest first. Under
# `--dist loadfile` xdist hands the files to its 2 workers in collection order, a few at a time, so a
# long file collected last runs alone at the end while the other worker idles (the tune, train and
# train_arm files, last in name order, did). Collected first, the long files spread over both workers
# and the many short ones fill the gaps. Only the order changes; a file not listed keeps its place.
LONG_FILES_FIRST = ("test_plan.py", "test_ray_executor.py", "test_multitask.py", "test_distributed_tune.py",
                    "test_tune.py", "test_train_arm.py", "test_doctor.py", "test_train.py", "test_report.py",
                    "test_lerobot.py", "test_sim.py", "test_rollout.py", "test_rdt_images.py", "test_gates.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda it: rank.get(it.path.name, len(rank)))  # stable: each file keeps its own order


def cli_here(*args: str) -> subprocess.CompletedProcess:
    """`run_ablation.py ARGS` run by this process (ablation.cli.main, the script's own entry), with
    stdout and stderr captured as a subprocess's would be. For tests of what a command does, not of
    the process around it: a fresh interpreter costs 10-20 s of imports and a new simulator on 2
    busy cores. Tests of exit codes from a real process, of kills, or of stdout at the file
    descriptor level keep subprocess.run."""
    from ablation.cli import main

    out, err = io.StringIO(), io.StringIO()
    log = logging.getLogger("ablation")
    before = list(log.handlers), log.level
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as e:  # argparse's usage errors, as the script would exit
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        finally:  # the command's stderr handler and level end with it, as they would with its process
            log.handlers[:] = before[0]
            log.setLevel(before[1])
    return subprocess.CompletedProcess(["run_ablation.py", *args], rc, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session", autouse=True)
def _torch_process_options():
    """The test process is an entry point: process-wide torch options (flushed denormals) as the CLI sets.
    Under pytest-xdist (scripts/test.sh runs 2 workers on 2 cores) each worker gets one torch thread, as
    a plan worker does: with torch's default of one per core, a worker's OpenMP threads spun against the
    other worker's tests, and test_train's overfit test took 260 s in a full run against 9-13 s alone."""
    from ablation.train import configure_torch

    configure_torch(1 if os.environ.get("PYTEST_XDIST_WORKER") else 0)


# The RDT golden fixture (a tiny official-layout checkpoint, fixed inputs and the original code's outputs;
# see its README.md) ships with the repository, so a fresh clone tests RDT with nothing beside it.
RDT_FIXTURE = REPO / "tests" / "fixtures" / "rdt_tiny"
RDT_CKPT = RDT_FIXTURE / "checkpoint"


def synthetic_episode(rng: np.random.Generator, T: int = 40, rotate: bool = True, rot_scale: float = 0.02) -> Episode:
    """A smooth reach-grasp-lift trajectory in LIBERO's format, obs recorded before each step."""
    actions = np.zeros((T, 7))
    # position steps of about +-0.012 m (native +-0.24), as in LIBERO's human demos
    phase = np.linspace(0, np.pi, T)
    actions[:, 0] = 0.24 * np.sin(phase) + 0.02 * rng.standard_normal(T)
    actions[:, 1] = 0.15 * np.cos(phase) + 0.02 * rng.standard_normal(T)
    actions[:, 2] = -0.2 * np.sin(2 * phase) + 0.02 * rng.standard_normal(T)
    if rotate:
        actions[:, 3:6] = rot_scale * rng.standard_normal((T, 3))
    actions[:, 6] = np.where(np.arange(T) > T // 2, 1.0, -1.0)
    pos = np.zeros((T, 3))
    rot = np.zeros((T, 3, 3))
    pos[0] = [-0.1, 0.0, 1.0] + 0.01 * rng.standard_normal(3)
    rot[0] = R.axis_angle_to_matrix(np.array([np.pi, 0.0, 0.0]) + 0.05 * rng.standard_normal(3))
    for t in range(1, T):
        pos[t] = pos[t - 1] + actions[t - 1, :3] * 0.05 * 0.9  # the controller lags its target a little
        rot[t] = R.axis_angle_to_matrix(actions[t - 1, 3:6] * 0.5 * 0.9) @ rot[t - 1]
    ori = R.matrix_to_axis_angle(rot)
    grip = np.where(actions[:, 6:7] > 0, 0.01, 0.04) * np.array([1.0, -1.0])
    obj = np.concatenate([pos + 0.05, np.tile([0, 0, 0, 1.0], (T, 1))], axis=1)
    quat = R.matrix_to_quat(rot)
    states = rng.standard_normal((T, 20))
    return Episode(
        actions=actions,
        obs={"ee_pos": pos, "ee_ori": ori, "ee_states": np.concatenate([pos, ori], 1),
             "gripper_states": grip, "joint_states": rng.standard_normal((T, 7)) * 0.1,
             "object_state": obj},
        states=states, rewards=np.r_[np.zeros(T - 1), 1.0], dones=np.r_[np.zeros(T - 1), 1.0],
        robot_states=np.concatenate([grip, pos, quat], 1), init_state=states[0], model_file="<mujoco/>")


def synthetic_meta() -> DemoMeta:
    return DemoMeta(env_name="synthetic", problem_info={"language_instruction": "pick up the thing"},
                    bddl_file_name="none.bddl", bddl_file_content="", env_args={},
                    obs_convention="before", attrs={"source": "synthetic (tests/conftest.py)"})


@pytest.fixture(scope="session")
def synthetic_demo_file(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    eps = [synthetic_episode(rng, T=int(rng.integers(30, 45))) for _ in range(6)]
    path = tmp_path_factory.mktemp("demos") / "synthetic.hdf5"
    write_demo_file(path, eps, synthetic_meta())
    return path


EXPERT_DEMOS = 4  # demos in `expert_demo_file`: plan and tune tests set data.n_demos to it to reuse the file


@pytest.fixture(scope="session")
def expert_demo_file(tmp_path_factory, worker_id) -> Path:
    """Four DART demos of libero_object task 0 from the scripted expert in the real simulator. Made once
    per test run: under pytest-xdist the first worker to ask makes it in the run's shared temp folder
    (the parent of every worker's basetemp, new for each run) while the others wait on a file lock,
    instead of each worker spending ~30 s of a core on the same file. Tests copy it, never write it."""
    from ablation.locks import file_lock
    from ablation.sim.demos import generate_demos

    # Not under xdist, this process is the whole run and its own basetemp the run's folder; under xdist,
    # the basetemp's parent is (the workers' basetemps are popen-gwN inside it).
    run_dir = tmp_path_factory.getbasetemp()
    shared = (run_dir if worker_id == "master" else run_dir.parent) / "expert_demos"
    out = shared / "libero_object_task0.hdf5"
    with file_lock(shared / "make.lock"):
        if not out.is_file():  # (generate_demos writes to a temporary name, then renames)
            generate_demos("libero_object", 0, n=EXPERT_DEMOS, out=out, seed=0)
    return out


def seed_workdir_demos(workdir: Path, expert_demo_file: Path) -> Path:
    """Put the session's expert demos where a plan or tuner in `workdir` looks for libero_object task 0's
    demos with data.n_demos=EXPERT_DEMOS (seed 0, no images, the default DART noise): a file named by its
    cache key under <workdir>/demos. Its stored key matches, so the run reuses it instead of running the
    scripted expert again (tens of seconds per workdir on 2 busy cores). The tests then assert that no
    other demo file was made, so a drift in the key fails instead of silently regenerating."""
    from ablation.sim.demos import cache_key, cached_key_of, default_demo_path

    dst = default_demo_path(Path(workdir) / "demos", "libero_object", 0, EXPERT_DEMOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(expert_demo_file, dst)
    assert cached_key_of(dst) == cache_key("libero_object", 0, EXPERT_DEMOS, False, 0.3, 0, 1.0)[0]
    return dst


def assert_same_model(m0, m1, where: str = "") -> None:
    """Every array (meshes and textures included) and the options of two raw MjModels are equal."""
    from ablation.sim.model_cache import model_arrays

    a0, a1 = model_arrays(m0), model_arrays(m1)
    assert sorted(a0) == sorted(a1) and len(a0) > 100, where
    for name in a0:
        assert np.array_equal(a0[name], a1[name]), f"{where}: MjModel.{name} differs"
    for name in ("timestep", "gravity", "integrator", "cone", "jacobian", "solver", "iterations", "tolerance"):
        assert np.array_equal(getattr(m0.opt, name), getattr(m1.opt, name)), f"{where}: MjModel.opt.{name} differs"
