"""Open-loop evaluation: figures from fully sampled chunks, physical nMSE, the seed-symptom signature."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ablation.data import prepare_data
from ablation.openloop import group_nmse, open_loop_eval, pose_signature, r2_linear
from ablation.policy import ObsNormalizer, build_policy
from ablation.representations import REPRESENTATIONS, representation
from ablation.spec import resolve_spec, spec_path


def _codec(kind: str = "metric_delta"):
    """Only the representation is read; it is the real class (pose_signature reads its position group)."""
    rep = representation(kind, REPRESENTATIONS[kind].rotations[0])
    return SimpleNamespace(rep=rep, spec=SimpleNamespace(representation=kind))


def _windows(rng, n: int = 200, H: int = 4):
    ee_pos = np.cumsum(rng.normal(0, 0.01, (n, 3)), axis=0) + [0.1, 0.0, 1.0]   # a wandering arm (m)
    delta = rng.normal(0, 0.01, (n, H, 3))                                         # position deltas (m)
    phys = np.concatenate([delta, rng.normal(0, 0.1, (n, H, 3)), np.sign(rng.normal(size=(n, H, 1)))], -1)
    return SimpleNamespace(phys_actions=phys, ee_pos=ee_pos, action_valid=np.ones((n, H)))


def test_r2_is_one_for_a_linear_relation_and_low_for_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    assert r2_linear(3 * x + 1, x) == pytest.approx(1.0)
    assert r2_linear(rng.normal(size=(500, 3)), x) < 0.02
    assert np.isnan(r2_linear(np.ones((10, 3)), x[:10]))  # no spread: undefined, not 0


def test_pose_signature_tells_absolute_poses_from_deltas():
    rng = np.random.default_rng(1)
    w = _windows(rng)
    idx = np.arange(len(w.ee_pos))
    codec = _codec()
    healthy = w.phys_actions.copy()
    healthy[..., :3] += rng.normal(0, 0.002, healthy[..., :3].shape)   # deltas, a little noisy
    seed_symptom = w.phys_actions.copy()
    seed_symptom[:, :, :3] = w.ee_pos[:, None] + rng.normal(0, 0.002, (len(idx), 1, 3))  # emits the pose
    good, bad = pose_signature(codec, healthy, w, idx), pose_signature(codec, seed_symptom, w, idx)
    assert good["r2/pos_vs_delta"] > 0.8 and good["r2/pos_vs_abs_pose"] < 0.2
    assert bad["r2/pos_vs_abs_pose"] > 0.8 and bad["r2/pos_vs_delta"] < 0.2
    # native units are decoded to metres first (scale does not change R^2, but must not break it)
    assert pose_signature(_codec("native"), healthy, w, idx)["r2/pos_vs_delta"] == pytest.approx(good["r2/pos_vs_delta"])


def test_group_nmse_is_one_for_the_windows_mean_and_zero_for_the_demo():
    rng = np.random.default_rng(2)
    w = _windows(rng)
    codec = _codec()
    true = w.phys_actions
    valid = w.action_valid.copy()
    valid[:, -1] = 0  # padding steps do not count
    flat = true.reshape(-1, true.shape[-1])[valid.reshape(-1) > 0]
    mean_pred = np.broadcast_to(flat.mean(0), true.shape)
    assert group_nmse(codec, mean_pred, true, valid) == pytest.approx({"pos": 1.0, "rot": 1.0, "grip": 1.0})
    assert group_nmse(codec, true, true, valid) == {"pos": 0.0, "rot": 0.0, "grip": 0.0}
    const = true.copy()
    const[..., 3:6] = 0.5
    assert np.isnan(group_nmse(codec, true, const, valid)["rot"])  # a constant group has no nMSE


def test_open_loop_figures_come_from_fully_sampled_chunks(synthetic_demo_file):
    spec = resolve_spec(spec_path("fix_minmax"), ["model.size=tiny", "data.action_chunk=8", "model.num_inference_steps=3"])
    data = prepare_data(spec.data, spec.codec, synthetic_demo_file)
    policy = build_policy(spec, data.codec, ObsNormalizer.fit(data.train.obs, spec.data.obs_keys), data.train.obs.shape[-1])
    calls = []
    denoise = policy.denoise

    def counting(noisy, t, batch):
        calls.append(int(t[0]))
        return denoise(noisy, t, batch)

    policy.denoise = counting
    out = open_loop_eval(policy, data.val, n=16, seed=0)
    assert len(calls) == 3 and len(set(calls)) == 3  # every solver step, from noise; never a one-step x0
    for k in ("pos_mm", "rot_deg", "grip", "nmse/pos", "nmse/rot", "nmse/grip", "r2/pos_vs_abs_pose",
              "r2/pos_vs_delta", "clip_fraction", "pos_step_ratio", "std_ratio/pos", "n_windows"):
        assert k in out, k
    assert out["n_windows"] == 16 and np.isfinite(out["nmse/pos"])
    assert policy.training  # the policy's mode is restored
    torch.testing.assert_close(torch.tensor(out["pos_mm"]), torch.tensor(open_loop_eval(policy, data.val, n=16)["pos_mm"]))
