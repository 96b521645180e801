"""LIBERO HDF5 round trip, both observation conventions, windows, and every bad-file case."""
from pathlib import Path

import h5py
import numpy as np
import pytest

from ablation.data import (DemoFileError, build_windows, episode_view, gripper_history_features,
                           prepare_data, read_demo_file, split_demos, write_demo_file)
from ablation.spec import EXPERIMENTS_DIR, resolve_spec
from tests.conftest import synthetic_episode, synthetic_meta


def test_hdf5_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(3)
    eps = [synthetic_episode(rng, T=20) for _ in range(3)]
    eps[1].extras["executed_actions"] = eps[1].actions + 0.1
    path = tmp_path / "demo.hdf5"
    write_demo_file(path, eps, synthetic_meta())
    ds = read_demo_file(path)
    assert ds.meta.obs_convention == "before" and ds.meta.problem_info["language_instruction"] == "pick up the thing"
    assert ds.names == ["demo_0", "demo_1", "demo_2"]
    for a, b in zip(eps, ds.episodes):
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.states, b.states)
        np.testing.assert_array_equal(a.init_state, b.init_state)
        for k in a.obs:
            np.testing.assert_array_equal(a.obs[k], b.obs[k])
    np.testing.assert_array_equal(ds.episodes[1].extras["executed_actions"], eps[1].actions + 0.1)
    with h5py.File(path) as f:  # LIBERO's own attribute names are there
        for key in ("env_name", "problem_info", "bddl_file_name", "bddl_file_content", "env_args", "num_demos", "total"):
            assert key in f["data"].attrs
        assert f["data/demo_0"].attrs["num_samples"] == 20
    assert not path.with_name(path.name + ".partial").exists()


def test_images_round_trip_and_optional(tmp_path):
    rng = np.random.default_rng(0)
    ep = synthetic_episode(rng, T=5)
    ep.obs["agentview_rgb"] = rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "img.hdf5"
    write_demo_file(path, [ep], synthetic_meta())
    assert "agentview_rgb" not in read_demo_file(path).episodes[0].obs
    np.testing.assert_array_equal(read_demo_file(path, load_images=True).episodes[0].obs["agentview_rgb"],
                                  ep.obs["agentview_rgb"])


def test_after_convention_shifts_observations(tmp_path):
    rng = np.random.default_rng(5)
    ep = synthetic_episode(rng, T=10)
    before = episode_view(ep, "before")
    after = episode_view(ep, "after")
    # "after": the obs before action k is the stored obs k-1; the next pose is the stored obs k
    np.testing.assert_array_equal(after.ee_pos[1:], ep.obs["ee_pos"][:-1])
    np.testing.assert_array_equal(after.ee_pos[0], ep.obs["ee_pos"][0])
    np.testing.assert_array_equal(after.next_ee_pos, ep.obs["ee_pos"])
    np.testing.assert_array_equal(before.ee_pos, ep.obs["ee_pos"])
    np.testing.assert_array_equal(before.next_ee_pos[:-1], ep.obs["ee_pos"][1:])
    path = tmp_path / "d.hdf5"
    write_demo_file(path, [ep], synthetic_meta())
    assert read_demo_file(path).meta.obs_convention == "before"  # the file's own attribute
    with pytest.raises(DemoFileError, match=r"d.hdf5: the spec says data.obs_convention: after but the file "
                                            r"records obs before each step"):
        read_demo_file(path, obs_convention="after")


def test_windows_pad_and_mask(synthetic_demo_file):
    spec = resolve_spec(EXPERIMENTS_DIR / "fix_minmax.yaml", ["data.action_chunk=8", "data.obs_history=3"])
    prep = prepare_data(spec.data, spec.codec, synthetic_demo_file)
    w = prep.train
    assert set(prep.train_ids).isdisjoint(prep.val_ids) and len(prep.val_ids) == 1
    n_steps = sum(len(prep.demo_set.episodes[i]) for i in prep.train_ids)
    assert len(w) == n_steps
    assert w.obs.shape[1:] == (3, 3 + 6 + 2 + 7 + 2) and w.actions.shape[1:] == (8, 128)  # ee_rot6d: 6
    # the last window of a demo: one valid step, then the last action repeated, masked out
    last = np.nonzero(w.step == w.step[w.demo_index == w.demo_index[0]].max())[0][0]
    np.testing.assert_array_equal(w.action_valid[last], [1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(w.actions[last, 1:], np.repeat(w.actions[last, :1], 7, axis=0))
    # the first window repeats the first observation for the missing history
    first = np.nonzero(w.step == 0)[0][0]
    np.testing.assert_array_equal(w.obs[first, 0], w.obs[first, 2])
    # the model-space targets decode to the physical targets
    np.testing.assert_allclose(prep.codec.decode(w.actions.astype(np.float64)), w.phys_actions, atol=1e-5)


def test_split_is_by_demo_and_seeded():
    tr, va = split_demos(10, 0.2, seed=0)
    assert len(va) == 2 and sorted(tr + va) == list(range(10))
    assert split_demos(10, 0.2, seed=0) == (tr, va)
    assert split_demos(1, 0.5) == ([0], [])


def test_gripper_history_features():
    np.testing.assert_array_equal(gripper_history_features([]), [-1, 1])
    np.testing.assert_array_equal(gripper_history_features([-1, -1, -1]), [-1, 1])
    np.testing.assert_allclose(gripper_history_features([-1, -1, 1, 1]), [1, 2 / 30])
    np.testing.assert_allclose(gripper_history_features([-1] + [1] * 40), [1, 1])


# ---------------------------------------------------------------- bad files

def _good(tmp_path: Path) -> Path:
    path = tmp_path / "bad.hdf5"
    write_demo_file(path, [synthetic_episode(np.random.default_rng(0), T=12)], synthetic_meta())
    return path


def test_missing_file():
    with pytest.raises(DemoFileError, match="nope.hdf5: demo file not found .*run_ablation.py demos"):
        read_demo_file("nope.hdf5")


def test_not_hdf5(tmp_path):
    p = tmp_path / "x.hdf5"
    p.write_text("hello")
    with pytest.raises(DemoFileError, match="x.hdf5: not a readable HDF5 file"):
        read_demo_file(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.hdf5"
    with h5py.File(p, "w") as f:
        f.create_group("data")
    with pytest.raises(DemoFileError, match="empty.hdf5: empty file: 'data' holds no demo_\\* groups"):
        read_demo_file(p)
    with h5py.File(p, "w") as f:
        f.create_group("other")
    with pytest.raises(DemoFileError, match="no 'data' group"):
        read_demo_file(p)
    with pytest.raises(DemoFileError, match="no episodes"):
        write_demo_file(p, [], synthetic_meta())


def test_missing_key(tmp_path):
    p = _good(tmp_path)
    with h5py.File(p, "a") as f:
        del f["data/demo_0/obs/ee_ori"]
    with pytest.raises(DemoFileError, match=r"bad.hdf5: demo_0: missing obs key 'obs/ee_ori'"):
        read_demo_file(p)
    with h5py.File(p, "a") as f:
        del f["data/demo_0/actions"]
    with pytest.raises(DemoFileError, match=r"bad.hdf5: demo_0: missing dataset 'actions'"):
        read_demo_file(p)


def test_mismatched_lengths(tmp_path):
    p = _good(tmp_path)
    with h5py.File(p, "a") as f:
        v = f["data/demo_0/obs/ee_pos"][()]
        del f["data/demo_0/obs/ee_pos"]
        f["data/demo_0/obs/ee_pos"] = v[:-2]
    with pytest.raises(DemoFileError, match=r"demo_0: 'obs/ee_pos' has 10 steps but 'actions' has 12"):
        read_demo_file(p)


def test_nan_and_inf(tmp_path):
    p = _good(tmp_path)
    with h5py.File(p, "a") as f:
        f["data/demo_0/actions"][4, 2] = np.nan
    with pytest.raises(DemoFileError, match=r"demo_0: 'actions' contains NaN or inf \(first at step 4\)"):
        read_demo_file(p)
    p2 = _good(tmp_path / "..")
    with h5py.File(p2, "a") as f:
        f["data/demo_0/obs/gripper_states"][7, 0] = np.inf
    with pytest.raises(DemoFileError, match=r"'obs/gripper_states' contains NaN or inf \(first at step 7\)"):
        read_demo_file(p2)


def test_wrong_action_width(tmp_path):
    p = _good(tmp_path)
    with h5py.File(p, "a") as f:
        a = f["data/demo_0/actions"][()]
        del f["data/demo_0/actions"]
        f["data/demo_0/actions"] = a[:, :6]
    with pytest.raises(DemoFileError, match=r"demo_0: 'actions' has shape \(12, 6\); LIBERO actions are \(T, 7\)"):
        read_demo_file(p)


def test_missing_obs_key_requested_by_spec(synthetic_demo_file):
    spec = resolve_spec(EXPERIMENTS_DIR / "baseline_rdt.yaml")
    from ablation.data import read_demo_file as rd
    ds = rd(synthetic_demo_file)
    views = [episode_view(e, "before") for e in ds.episodes]
    for v in views:
        del v.obs["object_state"]
    prep = prepare_data(spec.data, spec.codec, synthetic_demo_file)
    with pytest.raises(DemoFileError, match="obs key\\(s\\) object_state requested by data.obs_keys"):
        build_windows(views, [0], prep.codec, spec.data)


def test_orientation_feature_is_continuous_through_w_zero():
    """ee_ori (axis-angle with w >= 0) jumps by about 2 pi when the gripper tilts through the top-down
    pose where w = 0; the policy's ee_rot6d feature does not."""
    from ablation import rotation as R
    from ablation.data import obs_features

    top_down = R.axis_angle_to_matrix(np.array([np.pi, 0.0, 0.0]))
    tilts = np.linspace(-0.01, 0.01, 41)                      # rad, about the x axis through the pose
    ori, feat = [], []
    for a in tilts:
        rot = R.axis_angle_to_matrix(np.array([a, 0.0, 0.0])) @ top_down  # w = -sin(a/2) changes sign
        aa = R.quat_to_axis_angle(R.matrix_to_quat(rot))      # as LIBERO stores it (w forced >= 0)
        ori.append(aa)
        feat.append(obs_features({"ee_ori": aa}, ["ee_rot6d"]))
    ori, feat = np.array(ori), np.array(feat)
    assert np.max(np.abs(np.diff(ori, axis=0))) > 3.0         # the stored axis-angle jumps...
    step = np.max(np.abs(np.diff(feat, axis=0)))
    assert step < 2 * (tilts[1] - tilts[0]) + 1e-9            # ...the feature moves by about the tilt step
    np.testing.assert_allclose(feat[20], R.matrix_to_rot6d(top_down), atol=1e-9)
