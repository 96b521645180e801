"""LeRobot v3 datasets as demos (ablation/lerobot_file.py, demo_io.py): written with LeRobot's own dataset
code from the harness's demos, read back through the one entry `read_demo_file`, and taken by every
command that takes a demo file (doctor, audit, train, replay; a plan's data.demo_file).

The simulator tests write the session's scripted-expert demos as a LeRobot dataset, then run it through
the doctor (with Gate A in LIBERO), a short training and a replay.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from ablation.data import prepare_data
from ablation.demo_io import demo_format, infer_suite_task, read_demo_file
from ablation.episodes import DemoFileError, DemoSet
from ablation.lerobot_file import FPS, IMAGES, STATE, _library, write_lerobot_dataset
from ablation.provenance import file_sha256
from ablation.spec import resolve_spec, spec_path, with_overrides
from ablation.workdir import demo_path_for
from tests.conftest import cli_here

TINY_TRAIN = ["--set", "model.size=tiny", "--set", "train.batch_size=8", "--set", "train.warmup_steps=1",
              "--set", "train.eval_every=1000", "--set", "train.checkpoint_every=1000",
              "--set", "data.action_chunk=4", "--steps", "2"]


cli = cli_here  # (in this process: what the commands do is under test, not the interpreter)


def _with_images(ds: DemoSet, h: int = 8) -> DemoSet:
    """The synthetic demos plus an agentview camera with distinct frames (LIBERO's upside-down layout)."""
    rng = np.random.default_rng(3)
    eps = [replace(ep, obs=dict(ep.obs, agentview_rgb=rng.integers(0, 255, (len(ep), h, h, 3), dtype=np.uint8)),
                   extras={"executed_actions": ep.actions + 0.01})
           for ep in ds.episodes]
    return replace(ds, episodes=eps)


@pytest.fixture(scope="module")
def lerobot_synthetic(synthetic_demo_file, tmp_path_factory) -> tuple[DemoSet, Path]:
    src = _with_images(read_demo_file(synthetic_demo_file, load_images=True))
    root = tmp_path_factory.mktemp("lerobot") / "synthetic_lerobot"
    return src, write_lerobot_dataset(root, src)


def test_written_with_lerobot_and_read_back(lerobot_synthetic):
    src, root = lerobot_synthetic
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS
    assert info["features"][STATE]["shape"] == [8] and info["features"]["action"]["shape"] == [7]
    assert demo_format(root) == "lerobot"
    # LeRobot's own reader sees the frames upright: LIBERO's stored frame rotated by 180 degrees
    lr = _library()(repo_id="local/x", root=root)
    frame = lr.hf_dataset.with_format("numpy")[0]
    np.testing.assert_array_equal(frame["observation.images.image"], src.episodes[0].obs["agentview_rgb"][0][::-1, ::-1])
    got = read_demo_file(root, load_images=True)
    assert got.meta.obs_convention == "before" and got.names == [f"demo_{i}" for i in range(len(src.episodes))]
    assert got.meta.problem_info == src.meta.problem_info
    for a, b in zip(src.episodes, got.episodes):
        assert len(a) == len(b)
        np.testing.assert_allclose(b.actions, a.actions, atol=1e-6)  # float32 in the dataset
        for k in ("ee_pos", "ee_ori", "gripper_states", "ee_states", "joint_states", "object_state"):
            np.testing.assert_allclose(b.obs[k], a.obs[k], atol=1e-6)
        np.testing.assert_array_equal(b.obs["agentview_rgb"], a.obs["agentview_rgb"])
        np.testing.assert_array_equal(b.states, a.states)  # float64: a replay resets to the exact state
        np.testing.assert_array_equal(b.init_state, a.states[0])
        np.testing.assert_allclose(b.extras["executed_actions"], a.extras["executed_actions"], atol=1e-6)
    assert "agentview_rgb" not in read_demo_file(root).episodes[0].obs  # images only when asked


def _scene_frames(T: int, phase: float, h: int = 64) -> np.ndarray:
    """Smooth frames that move over time and are not symmetric under a 180-degree turn (video codecs keep
    smooth images close; noise would not survive AV1 at crf 30). LIBERO's upside-down layout."""
    y, x = np.mgrid[0:h, 0:h] / h
    t = np.arange(T)[:, None, None] / 10 + phase
    r = 255 * y[None] * np.ones_like(t)                     # dark at the top row, bright at the bottom
    g = 127 + 120 * np.sin(2 * np.pi * (x[None] + t))       # moves right with time
    b = 255 * (x[None] * y[None]) * np.ones_like(t)         # one bright corner
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def test_a_video_dataset_decodes_to_the_recorded_frames(synthetic_demo_file, tmp_path):
    """LeRobot's default format keeps cameras as AV1 mp4s (several episodes per file): the reader decodes
    each episode's frames at their timestamps, turned to LIBERO's layout, close to what was recorded."""
    src = read_demo_file(synthetic_demo_file)
    eps = [replace(ep, obs=dict(ep.obs, agentview_rgb=_scene_frames(len(ep), 0.37 * i)))
           for i, ep in enumerate(src.episodes[:3])]
    src = replace(src, episodes=eps, names=src.names[:3])
    root = write_lerobot_dataset(tmp_path / "video_lerobot", src, videos=True)
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["features"]["observation.images.image"]["dtype"] == "video"
    assert list(root.glob("videos/observation.images.image/**/*.mp4"))   # not in the parquet tables
    got = read_demo_file(root, load_images=True)
    for a, b in zip(src.episodes, got.episodes):
        want, have = a.obs["agentview_rgb"].astype(float), b.obs["agentview_rgb"].astype(float)
        assert have.shape == want.shape and b.obs["agentview_rgb"].dtype == np.uint8
        err = np.abs(have - want).mean()
        assert err < 6.0, err                                          # lossy, but the same frames
        assert np.abs(have - want[:, ::-1, ::-1]).mean() > 5 * err     # and the right way up
        assert np.abs(have[1:] - want[:-1]).mean() > 2 * err           # and the right time (not off by one)
    assert "agentview_rgb" not in read_demo_file(root).episodes[0].obs  # decoded only when asked


def test_a_video_dataset_with_a_missing_video_names_it(synthetic_demo_file, tmp_path):
    src = read_demo_file(synthetic_demo_file)
    eps = [replace(ep, obs=dict(ep.obs, agentview_rgb=_scene_frames(len(ep), 0.0))) for ep in src.episodes[:2]]
    root = write_lerobot_dataset(tmp_path / "cut", replace(src, episodes=eps, names=src.names[:2]), videos=True)
    for mp4 in root.glob("videos/**/*.mp4"):
        mp4.unlink()
    with pytest.raises(DemoFileError, match=r"video videos/observation\.images\.image/.*\.mp4 of feature "
                                            r"'observation\.images\.image' is missing; copy the whole dataset folder"):
        read_demo_file(root, load_images=True)


def test_training_windows_match_the_hdf5_file(lerobot_synthetic, synthetic_demo_file):
    _, root = lerobot_synthetic
    spec = resolve_spec(spec_path("fix_minmax"))
    a, b = prepare_data(spec.data, spec.codec, synthetic_demo_file), prepare_data(spec.data, spec.codec, root)
    assert a.train_ids == b.train_ids and a.train.actions.shape == b.train.actions.shape
    np.testing.assert_allclose(b.train.actions, a.train.actions, atol=1e-3)
    np.testing.assert_allclose(b.train.obs, a.train.obs, atol=1e-5)


def test_a_folder_digest_is_stable_and_content_bound(lerobot_synthetic, tmp_path):
    import shutil

    _, root = lerobot_synthetic
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert file_sha256(copy) == file_sha256(root)
    (copy / "meta" / "ablation.json").write_text("{}")
    assert file_sha256(copy) != file_sha256(root)


def _tiny_dataset(root: Path, features: dict, frame: dict) -> Path:
    ds = _library().create(repo_id="local/bad", fps=FPS, features=features, root=root, use_videos=False)
    for _ in range(3):
        ds.add_frame({**frame, "task": "pick up the thing"})
    ds.save_episode()
    ds.finalize()
    return root


def test_unmappable_features_one_clear_error(tmp_path):
    f32 = lambda n: {"dtype": "float32", "shape": (n,), "names": None}  # noqa: E731
    short_state = _tiny_dataset(tmp_path / "state7", {"action": f32(7), STATE: f32(7)},
                                {"action": np.zeros(7, np.float32), STATE: np.zeros(7, np.float32)})
    with pytest.raises(DemoFileError, match=r"state7: feature 'observation.state' has shape \(7,\); the harness "
                                            r"maps an \(8,\) state: .*re-export the dataset"):
        read_demo_file(short_state)
    no_action = _tiny_dataset(tmp_path / "noaction", {"act": f32(7), STATE: f32(8)},
                              {"act": np.zeros(7, np.float32), STATE: np.zeros(8, np.float32)})
    with pytest.raises(DemoFileError, match=r"noaction: feature 'action' is missing \(have: .*act.*\)"):
        read_demo_file(no_action)
    wide = _tiny_dataset(tmp_path / "wide", {"action": f32(14), STATE: f32(8)},
                         {"action": np.zeros(14, np.float32), STATE: np.zeros(8, np.float32)})
    with pytest.raises(DemoFileError, match=r"wide: feature 'action' has shape \(14,\); the harness maps \(7,\)"):
        read_demo_file(wide)
    # the CLI: one line, exit 2, for the doctor as for any reader
    out = cli("doctor", "--demos", str(short_state), "--no-sim")
    assert out.returncode == 2 and "feature 'observation.state' has shape (7,)" in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().count("\n") == 0


def test_a_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(DemoFileError, match="not a LeRobot v3 dataset \\(no meta/info.json\\)"):
        read_demo_file(tmp_path)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v2.1"}))
    with pytest.raises(DemoFileError, match="codebase_version 'v2.1'.*convert_dataset_v21_to_v30"):
        read_demo_file(tmp_path)


def test_a_plans_demo_file_may_be_a_dataset(lerobot_synthetic, tmp_path):
    _, root = lerobot_synthetic
    spec = with_overrides(resolve_spec(spec_path("fix_minmax")), [f"data.demo_file={root}"])
    assert demo_path_for(spec, tmp_path) == root


def test_audit_train_and_eval_take_a_dataset(lerobot_synthetic, tmp_path):
    _, root = lerobot_synthetic
    audit = cli("audit", "--spec", "fix_minmax", "--demos", str(root), "--json")
    assert audit.returncode == 0, audit.stderr[-2000:]
    assert json.loads(audit.stdout)["spec"] == "fix_minmax"
    train = cli("train", "--spec", "fix_minmax", "--demos", str(root), "--out", str(tmp_path / "run"), "--json",
                *TINY_TRAIN)
    assert train.returncode == 0, train.stderr[-2000:]
    rec = json.loads(train.stdout)
    assert rec["steps"] == 2
    ev = cli("eval", "--checkpoint", rec["checkpoint"], "--demos", str(root), "--open-loop-only", "--n", "8", "--json")
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads(ev.stdout)["demos"] == str(root)


def test_replay_names_a_bad_action_shape(tmp_path, capsys):
    """A file from elsewhere (no obs_convention attribute) whose actions are (10, 3): the error is about
    the actions' shape, naming the file, the field and the shape wanted, not about the obs timing."""
    from ablation.cli import main

    p = tmp_path / "xyz_only.hdf5"
    with h5py.File(p, "w") as f:
        d = f.create_group("data/demo_0")
        d["actions"] = np.zeros((10, 3))
        for k, n in (("ee_pos", 3), ("ee_ori", 3), ("gripper_states", 2)):
            d[f"obs/{k}"] = np.zeros((10, n))
    rc = main(["replay", "--demos", str(p)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "xyz_only.hdf5: demo_0: 'actions' has shape (10, 3); LIBERO actions are (T, 7)" in err
    assert "obs_convention" not in err


# ----------------------------------------------------------------------------- in the simulator

@pytest.fixture(scope="module")
def lerobot_expert(expert_demo_file, tmp_path_factory) -> Path:
    """The session's scripted-expert demos (libero_object task 0, DART) written as a LeRobot dataset."""
    root = tmp_path_factory.mktemp("lerobot_expert") / "libero_object_task0"
    return write_lerobot_dataset(root, read_demo_file(expert_demo_file))


@pytest.mark.sim
def test_expert_dataset_through_doctor_train_and_replay(lerobot_expert, tmp_path):
    assert infer_suite_task(lerobot_expert) == ("libero_object", 0)
    doctor = cli("doctor", "--demos", str(lerobot_expert), "--episodes", "2", "--workdir", str(tmp_path), "--json")
    rep = json.loads(doctor.stdout)
    assert doctor.returncode == 0 and rep["counts"]["serious"] == 0, json.dumps(rep["findings"][:4], indent=1)
    ids = {f["id"]: f for f in rep["findings"]}
    assert rep["suite"] == "libero_object" and rep["task"] == 0
    assert ids["gate_a"]["numbers"]["passed"], ids["gate_a"]
    assert ids["gripper.sign"]["severity"] == "info" and ids["actions.kind"]["numbers"]["kind"] == "delta"
    assert ids["alignment.convention"]["numbers"]["convention"] == "before"
    train = cli("train", "--spec", "fix_minmax", "--demos", str(lerobot_expert), "--out", str(tmp_path / "run"),
                "--json", *TINY_TRAIN)
    assert train.returncode == 0, train.stderr[-2000:]
    assert json.loads(train.stdout)["steps"] == 2
    replay = cli("replay", "--demos", str(lerobot_expert), "--n", "2", "--json")
    assert replay.returncode == 0, replay.stderr[-2000:]
    got = json.loads(replay.stdout)
    assert got["passed"] and got["actions_source"] == "executed_actions", got
    assert len(got["episodes"]) == 2 and all(e["success"] for e in got["episodes"])


def test_a_dataset_without_sim_states_cannot_be_replayed(tmp_path, capsys):
    """Many LeRobot LIBERO datasets hold no MuJoCo state: replay says so before it starts the simulator."""
    from ablation.cli import main

    f32 = lambda n: {"dtype": "float32", "shape": (n,), "names": None}  # noqa: E731
    root = _tiny_dataset(tmp_path / "nostate", {"action": f32(7), STATE: f32(8)},
                         {"action": np.zeros(7, np.float32), STATE: np.zeros(8, np.float32)})
    rc = main(["replay", "--demos", str(root), "--suite", "libero_object", "--task", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "demo_0 stores no simulator state" in err and "libero.sim_state" in err, err
