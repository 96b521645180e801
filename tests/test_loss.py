"""Loss reductions and the per-group breakdown: shares add up to the total; physical errors in units."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ablation import rotation as R
from ablation.codec import ActionCodec
from ablation.loss import DiffusionLoss, group_weights, physical_errors
from ablation.spec import CodecSpec, LossSpec

CODECS = {
    "seed_rdt128": CodecSpec(representation="seed_mix", rotation="rot6d", layout="rdt_eef", normalizer="identity"),
    "minmax_rdt128": CodecSpec(representation="seed_mix", rotation="rot6d", layout="rdt_eef", normalizer="minmax"),
    "native_compact": CodecSpec(representation="native", rotation="axis_angle", layout="compact"),
}
LOSSES = {
    "plain": LossSpec(),
    "pos_x100": LossSpec(weights={"pos": 100.0}),
    "inv_var": LossSpec(inverse_variance=True),
    "inv_var_weighted": LossSpec(weights={"pos": 3.0, "grip": 0.1}, inverse_variance=True),
}


def _codec(cs: CodecSpec) -> ActionCodec:
    rng = np.random.default_rng(0)
    n = 300
    if cs.representation == "native":
        phys = np.concatenate([rng.uniform(-0.3, 0.3, (n, 6)), np.sign(rng.normal(size=(n, 1)))], 1)
    else:
        rot = R.matrix_to_rot6d(R.axis_angle_to_matrix(np.array([np.pi, 0, 0]) + 0.1 * rng.normal(size=(n, 3))))
        phys = np.concatenate([rng.normal(0, 0.01, (n, 3)), rot, np.sign(rng.normal(size=(n, 1)))], 1)
    return ActionCodec.fit(cs, phys, rng.normal(0, 0.1, (n, 10)), native_actions=rng.uniform(-1, 1, (n, 7)))


@pytest.mark.parametrize("codec_name", list(CODECS))
@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("reduction", ["rdt_mean", "masked_mean"])
def test_breakdown_adds_up_to_total(codec_name, loss_name, reduction):
    codec = _codec(CODECS[codec_name])
    spec = LOSSES[loss_name].model_copy(update={"reduction": reduction})
    fn = DiffusionLoss(codec, spec)
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(5, 6, codec.width, generator=g), torch.randn(5, 6, codec.width, generator=g)
    out = fn(pred, target)
    parts = sum(out.contrib[k] for k in ("pos", "rot", "grip", "pad"))
    assert float(parts) == float(out.total)  # exact: the total is defined as the sum of the shares
    # ...and that total is the reduction it claims to be, computed independently:
    w = torch.ones(codec.width)
    for grp, slots in codec.group_slots.items():
        w[torch.as_tensor(slots)] = group_weights(codec, spec)[grp]
    e = (pred - target) ** 2 * w
    mask = torch.as_tensor(codec.action_mask, dtype=torch.bool)
    expect = e.mean() if reduction == "rdt_mean" else e[..., mask].mean()
    torch.testing.assert_close(out.total, expect, rtol=1e-5, atol=0)
    if reduction == "masked_mean":
        assert float(out.contrib["pad"]) == 0.0


def test_rdt_mean_is_f_mse_loss_and_dilutes():
    codec = _codec(CODECS["seed_rdt128"])
    pred = torch.zeros(2, 4, 128)
    target = torch.zeros(2, 4, 128)
    target[..., codec.group_slots["pos"]] = 0.01  # metres: the seed's position scale
    rdt = DiffusionLoss(codec, LossSpec(reduction="rdt_mean"))(pred, target)
    masked = DiffusionLoss(codec, LossSpec(reduction="masked_mean"))(pred, target)
    torch.testing.assert_close(rdt.total, F.mse_loss(pred, target))
    # 10 of 128 slots filled: the plain mean is 12.8x smaller than the mean over filled slots.
    assert float(masked.total) / float(rdt.total) == pytest.approx(12.8, rel=1e-5)
    assert float(rdt.mse["pos"]) == pytest.approx(1e-4, rel=1e-5)  # the group MSE is not diluted


def test_inverse_variance_weight_is_one_over_group_variance():
    codec = _codec(CODECS["seed_rdt128"])
    w = group_weights(codec, LossSpec(inverse_variance=True, weights={"pos": 2.0}))
    var = codec.group_variance_model()
    assert w["pos"] == pytest.approx(2.0 / var["pos"])
    assert w["grip"] == pytest.approx(1.0 / var["grip"])


def test_nmse_of_predicting_the_mean_is_about_one():
    codec = _codec(CODECS["minmax_rdt128"])
    rng = np.random.default_rng(3)
    phys = np.concatenate([rng.normal(0, 0.01, (2000, 3)),
                           R.matrix_to_rot6d(R.axis_angle_to_matrix(np.array([np.pi, 0, 0]) + 0.1 * rng.normal(size=(2000, 3)))),
                           np.sign(rng.normal(size=(2000, 1)))], 1)
    target = torch.as_tensor(codec.encode(phys), dtype=torch.float32)[None]
    mean = torch.as_tensor(codec.encode(np.asarray(codec.stats["action"]["mean"])), dtype=torch.float32)
    fn = DiffusionLoss(codec, LossSpec())
    out = fn(mean.expand_as(target), target)
    nmse = fn.nmse({g: float(v) for g, v in out.mse.items()})
    for g in ("pos", "rot", "grip"):
        assert nmse[g] == pytest.approx(1.0, abs=0.15)


def test_physical_errors_units():
    seed = _codec(CODECS["seed_rdt128"])
    rot = R.matrix_to_rot6d(R.axis_angle_to_matrix(np.array([[np.pi, 0, 0]])))
    rot10 = R.matrix_to_rot6d(R.axis_angle_to_matrix(np.array([[0, 0, np.radians(10)]])) @
                              R.axis_angle_to_matrix(np.array([[np.pi, 0, 0]])))
    true = np.concatenate([[[0.0, 0, 0]], rot, [[-1.0]]], 1)
    pred = np.concatenate([[[0.003, 0.004, 0]], rot10, [[1.0]]], 1)
    e = physical_errors(seed, pred, true)
    assert e["pos_mm"] == pytest.approx(5.0)
    assert e["rot_deg"] == pytest.approx(10.0, abs=1e-6)
    assert e["grip"] == pytest.approx(2.0)
    native = _codec(CODECS["native_compact"])
    # native 0.1 on x = 5 mm; 0.2 native rad about z = 0.1 rad
    e = physical_errors(native, np.array([[0.1, 0, 0, 0, 0, 0.2, 1.0]]), np.array([[0.0, 0, 0, 0, 0, 0, 1.0]]))
    assert e["pos_mm"] == pytest.approx(5.0)
    assert e["rot_deg"] == pytest.approx(np.degrees(0.1))
    assert e["grip"] == 0.0
    # invalid (padded) steps are left out
    e = physical_errors(native, np.array([[0.1, 0, 0, 0, 0, 0, 1.0], [9, 0, 0, 0, 0, 0, 1]]),
                        np.zeros((2, 7)) + [0, 0, 0, 0, 0, 0, 1], valid=np.array([1.0, 0.0]))
    assert e["pos_mm"] == pytest.approx(5.0)
