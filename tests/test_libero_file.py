"""ablation/libero_file.py, demo_evidence.py, libero_tasks.py: facts read from LIBERO files, ours and
from elsewhere (no simulator steps).

The alignment / gripper / delta-kind detectors are checked on the synthetic trajectories of
conftest (obs recorded before each step; the controller follows 90% of each commanded step), with
each pitfall planted; the doctor's tests plant the same faults in real simulator demos.
"""
from __future__ import annotations

from dataclasses import replace

import h5py
import numpy as np
import pytest

from ablation import demo_evidence as E
from ablation import demo_io
from ablation import libero_file as L
from ablation.episodes import Episode
from ablation.errors import UserError
from ablation.libero_tasks import match_tasks

from .conftest import synthetic_episode, synthetic_meta


def _eps(n=6, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ep = synthetic_episode(rng, T=int(rng.integers(60, 80)))
        out.append(replace(ep, name=f"demo_{i}", obs={"ee_pos": ep.obs["ee_pos"]}))  # no finger widths
    return out


def _after(eps):
    """Obs recorded after each step: obs'[k] = obs[k+1], one action fewer."""
    return [replace(e, obs={"ee_pos": e.obs["ee_pos"][1:]}, actions=e.actions[:-1]) for e in eps]


def _with_gripper(eps, flip=False, zero_one=False):
    """Finger width that follows the command: closes over 4 steps after +1, opens after -1."""
    out = []
    for e in eps:
        cmd = e.actions[:, 6]
        w = np.empty(len(cmd))
        w[0] = 0.08
        for k in range(1, len(cmd)):
            target = 0.06 if cmd[k - 1] > 0 else 0.08
            w[k] = w[k - 1] + 0.4 * (target - w[k - 1])
        a = e.actions.copy()
        if flip:
            a[:, 6] *= -1
        if zero_one:
            a[:, 6] = (1 - a[:, 6]) / 2
        out.append(replace(e, actions=a, obs=dict(e.obs, gripper_states=np.stack([w / 2, -w / 2], 1))))
    return out


def test_alignment_before_and_after():
    eps = _eps()
    ev = E.alignment_evidence(eps)
    assert ev.convention == "before" and ev.lag == 0, ev
    assert ev.actions_used == "actions"
    ev2 = E.alignment_evidence(_after(eps))
    assert ev2.convention == "after" and ev2.lag == -1, ev2
    assert "lag -1" in ev2.reason


def test_alignment_cannot_tell():
    eps = _eps(1)
    short = [replace(eps[0], actions=eps[0].actions[:8], obs={"ee_pos": eps[0].obs["ee_pos"][:8]})]
    assert E.alignment_evidence(short).convention is None
    still = [replace(e, obs={"ee_pos": np.zeros_like(e.obs["ee_pos"])}) for e in _eps(2)]
    ev = E.alignment_evidence(still)
    assert ev.convention is None and ("cannot tell" in ev.reason or "no motion" in ev.reason)


def test_gripper_sign_and_range():
    ok = E.gripper_evidence(_with_gripper(_eps()))
    assert ok.sign == "ok" and ok.range == "[-1, 1]" and ok.n_events >= 6 and ok.agree == 1.0
    flipped = E.gripper_evidence(_with_gripper(_eps(), flip=True))
    assert flipped.sign == "flipped" and flipped.agree == 0.0
    z = E.gripper_evidence(_with_gripper(_eps(), zero_one=True))
    assert z.range == "[0, 1]" and z.min == 0.0 and z.max == 1.0


def test_noop_share():
    a = np.zeros((10, 7))
    a[:, 0] = 0.5
    a[3:5, :6] = 0.0  # two still steps, gripper unchanged
    a[:, 6] = -1
    assert E.noop_mask(a).tolist() == [False] * 3 + [True, True] + [False] * 5
    ep = Episode(actions=a, obs={}, states=np.zeros((10, 0)), rewards=np.zeros(10), dones=np.zeros(10),
                 robot_states=np.zeros((10, 0)), init_state=np.zeros(0))
    share, k, n = E.noop_share([ep])
    assert (k, n) == (2, 10) and share == pytest.approx(0.2)


def test_delta_kind():
    eps = _eps()
    assert E.delta_kind_evidence(eps).kind == "delta"
    dd = [replace(e, actions=np.c_[np.diff(e.actions[:, :6], axis=0, prepend=np.zeros((1, 6))), e.actions[:, 6]])
          for e in eps]
    ev = E.delta_kind_evidence(dd)
    assert ev.kind == "double_delta", ev
    assert ev.corr["double_delta"] > ev.corr["delta"] + 0.25


def test_infer_suite_task_from_our_attrs_and_from_bddl(tmp_path, synthetic_demo_file):
    from ablation.data import write_demo_file

    from .conftest import synthetic_episode as se

    rng = np.random.default_rng(1)
    meta = synthetic_meta()
    # a file from elsewhere: LIBERO's create_dataset.py stores a path like this, and no suite/task
    meta.bddl_file_name = "chiliocosm/bddl_files/libero_goal/open_the_middle_drawer_of_the_cabinet.bddl"
    meta.attrs = {}
    p = tmp_path / "goal.hdf5"
    write_demo_file(p, [se(rng, T=30)], meta)
    assert L.infer_suite_task(p) == ("libero_goal", match_tasks(meta.bddl_file_name)[0][1])
    # only the BDDL content (name unknown) still identifies it
    from ablation.sim.libero_setup import get_suite

    suite = get_suite("libero_object")
    content = open(suite.get_task_bddl_file_path(3)).read()
    with h5py.File(p, "a") as f:
        f["data"].attrs["bddl_file_name"] = "/somewhere/else/renamed.bddl"
        f["data"].attrs["bddl_file_content"] = content
    assert L.infer_suite_task(p) == ("libero_object", 3)
    # our own attributes win
    with h5py.File(p, "a") as f:
        f["data"].attrs["ablation_attrs"] = '{"suite": "libero_spatial", "task_id": 7}'
    assert L.infer_suite_task(p) == ("libero_spatial", 7)


def test_infer_suite_task_error_names_file_attr_and_fix(synthetic_demo_file):
    with pytest.raises(UserError) as e:
        L.infer_suite_task(synthetic_demo_file)
    msg = str(e.value)
    assert str(synthetic_demo_file) in msg and "bddl_file_name" in msg and "--suite/--task" in msg
    assert "\n" not in msg


def test_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        L.read_libero_file(tmp_path / "missing.hdf5")
    bad = tmp_path / "bad.hdf5"
    bad.write_text("not hdf5")
    with pytest.raises(UserError, match="not a readable HDF5"):
        L.read_libero_file(bad)
    empty = tmp_path / "empty.hdf5"
    with h5py.File(empty, "w") as f:
        f.create_group("other")
    with pytest.raises(UserError, match="no 'data' group"):
        L.read_libero_file(empty)


def test_declared_and_detected_convention_of_a_file(synthetic_demo_file):
    assert demo_io.declared_obs_convention(synthetic_demo_file) == "before"
    assert E.alignment_evidence(L.read_libero_file(synthetic_demo_file).episodes).convention == "before"
