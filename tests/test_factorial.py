"""H1's mechanism as a factorial (issue 24, section 2): the 2x2 cells' loss shares, the noise-scaled arm
(model.noise_scale) in training and sampling, and the x0-error-by-diffusion-time diagnostic.
Real demo files (the synthetic HDF5 fixture), real codecs, real networks and the real trainer."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from ablation.data import prepare_data
from ablation.loss import DiffusionLoss
from ablation.policy import ObsNormalizer, build_policy
from ablation.spec import LEGACY_SECTIONS, SpecError, resolve_spec, spec_path, with_overrides
from ablation.train import WindowTensors, train, x0_error_by_t

from .test_train import tiny_spec

# The 2x2: data scale {m, cm} x a loss weight that equalises position's share (m x10^4, cm x10^-4).
CELLS = {("m", 1.0): "baseline_rdt", ("m", 1e4): "fix_loss_weight_1e4",
         ("cm", 1.0): "fix_pos_cm", ("cm", 1e-4): "fix_pos_cm_w1e-4"}
SHARE_RTOL = 1e-4  # float32 rounding of sums over ~10^4 squared errors; the pairs differ by >10x


def _pos_share_of_mean_predictor(name: str, demo_file) -> float:
    """Position's share of the loss when the net predicts the training mean chunk, on the training windows."""
    spec = resolve_spec(spec_path(name))
    data = prepare_data(spec.data, spec.codec, demo_file)
    target = torch.as_tensor(data.train.actions, dtype=torch.float32)      # (N, H, W) model space
    pred = target.mean(dim=(0, 1), keepdim=True).expand_as(target)
    out = DiffusionLoss(data.codec, spec.loss)(pred, target)
    return float(out.contrib["pos"] / out.total)


def test_factorial_cells_pair_up_by_position_loss_share(synthetic_demo_file):
    share = {cell: _pos_share_of_mean_predictor(name, synthetic_demo_file) for cell, name in CELLS.items()}
    print({f"{u} x{w:g}": round(s, 6) for (u, w), s in share.items()})
    # cm squares position's errors x10^4, so the weight x10^-4 undoes it and x10^4 on metres copies it
    assert share[("m", 1e4)] == pytest.approx(share[("cm", 1.0)], rel=SHARE_RTOL)
    assert share[("m", 1.0)] == pytest.approx(share[("cm", 1e-4)], rel=SHARE_RTOL)
    # ...and the two pairs are the factorial's two levels of share, far apart
    assert share[("m", 1e4)] > 10 * share[("m", 1.0)]
    specs = {c: resolve_spec(spec_path(n)) for c, n in CELLS.items()}
    for (unit, w), s in specs.items():
        assert s.loss.weights.pos == w
        assert s.codec.unit_scales.pos == (100.0 if unit == "cm" else 1.0)
        assert s.codec.normalizer == ("scale" if unit == "cm" else "identity")


def test_noise_scale_is_hash_neutral_at_its_default_and_checked():
    base = resolve_spec(spec_path("baseline_rdt"))
    dump = base.model_dump(mode="json", include=set(LEGACY_SECTIONS))
    dump["model"].pop("noise_scale")
    dump["data"].pop("norm_stats_from")  # H3's frozen-statistics field, hash-neutral at its default too
    dump["data"].pop("expert_turn_deg")  # the rotation plan's wrist turn: likewise
    dump["train"].pop("compile_min_steps")  # when a compile can pay back: likewise
    old = hashlib.sha256(json.dumps(dump, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert base.legacy_hash() == old  # the hash every spec had before the field existed
    new = base.hash()
    assert with_overrides(base, ["model.noise_scale.pos=1.0"]).hash() == new
    assert with_overrides(base, ["model.noise_scale.pos=1.0"]).legacy_hash() == old
    arm = resolve_spec(spec_path("fix_pos_noise_1e-2"))
    assert arm.model.noise_scale.pos == 0.01 and arm.hash() != new
    assert with_overrides(arm, ["model.noise_scale.pos=1.0", "name=baseline_rdt"]).hash() == new  # the only difference
    with pytest.raises(SpecError, match=r"model.noise_scale.*must be > 0"):
        with_overrides(base, ["model.noise_scale.pos=0"])


def _policy(spec, data):
    obs_norm = ObsNormalizer.fit(data.train.obs, spec.data.obs_keys)
    return build_policy(spec, data.codec, obs_norm, data.train.obs.shape[-1])


def _group_std(x: torch.Tensor, slots) -> float:
    return float(x[..., torch.as_tensor(slots)].std())


def test_noise_scaled_arm_trains_and_noises_position_at_a_hundredth(synthetic_demo_file, tmp_path):
    spec = tiny_spec("fix_pos_noise_1e-2", "train.steps=10", "train.eval_every=10")
    seen = []
    res = train(spec, synthetic_demo_file, tmp_path, progress=False, on_metrics=lambda s, m: seen.append((s, m)))
    assert np.isfinite(res.final["train/loss/total"]) and res.steps == 10
    # the diagnostic is logged once, at the end
    assert not any(k.startswith("val/x0_by_t/") for k in seen[0][1])
    for g in ("pos", "rot", "grip"):
        for k in range(5):
            assert np.isfinite(seen[-1][1][f"val/x0_by_t/{g}/bin{k}"]), (g, k)

    # Forward noising, measured: (noisy - sqrt(ab) x0) / sqrt(1 - ab) is the noise the net saw.
    data = prepare_data(spec.data, spec.codec, synthetic_demo_file)
    policy = _policy(spec, data)
    batch = WindowTensors(data.train, torch.device("cpu")).batch(torch.arange(len(data.train)))
    o = policy.training_outputs(batch, torch.Generator().manual_seed(0))
    ab = policy.alphas_cumprod[o["t"]].view(-1, 1, 1)
    noise = (o["noisy"] - ab.sqrt() * o["x0"]) / (1 - ab).sqrt()
    slots = data.codec.group_slots
    pad = np.flatnonzero(data.codec.action_mask == 0)
    assert _group_std(noise, slots["pos"]) == pytest.approx(0.01, rel=0.05)
    assert _group_std(noise, slots["rot"]) == pytest.approx(1.0, rel=0.05)
    assert _group_std(noise, pad) == pytest.approx(1.0, rel=0.05)


def test_noise_scale_is_consistent_in_the_epsilon_target_and_the_sampler(synthetic_demo_file):
    spec = tiny_spec("fix_pos_noise_1e-2", "model.prediction_type=epsilon")
    data = prepare_data(spec.data, spec.codec, synthetic_demo_file)
    policy = _policy(spec, data).eval()
    batch = WindowTensors(data.train, torch.device("cpu")).batch(torch.arange(64))
    eps = torch.randn(batch["actions"].shape, generator=torch.Generator().manual_seed(1))
    t = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(2))
    o = policy.outputs_at(batch, eps, t)
    assert torch.equal(o["target"], eps)  # the net predicts the unit noise...
    x0 = policy.x0_from_output(o["target"], o["noisy"], t)  # ...and the true one gives back the demo
    torch.testing.assert_close(x0, o["x0"], rtol=0, atol=2e-3 * float(o["x0"].abs().max()))
    # Sampling starts from scaled noise and keeps each slot's scale: the untrained net outputs 0 (zero head),
    # so every solver step is the same multiple of the start in every slot.
    slots = data.codec.group_slots
    with torch.no_grad():
        x = policy.sample(batch, generator=torch.Generator().manual_seed(3))
    ratio = _group_std(x, slots["pos"]) / _group_std(x, slots["rot"])
    assert ratio == pytest.approx(0.01, rel=0.05)


def test_x0_error_by_t_measures_the_noise_each_bin_leaves(synthetic_demo_file):
    """An untrained epsilon net predicts 0, so its x0 is noisy / sqrt(ab): the error is (1-ab)/ab s^2 eps^2,
    rising with t, and s = 0.01 on position divides position's error by exactly 10^4 at the same draws."""
    spec = tiny_spec("baseline_rdt", "model.prediction_type=epsilon")
    scaled = with_overrides(spec, ["model.noise_scale.pos=0.01"])
    data = prepare_data(spec.data, spec.codec, synthetic_demo_file)
    windows = WindowTensors(data.train, torch.device("cpu"))
    loss_fn = DiffusionLoss(data.codec, spec.loss)
    res = {}
    for name, s in (("m", spec), ("noise", scaled)):
        policy = _policy(s, data).eval()
        with torch.no_grad():
            res[name] = x0_error_by_t(policy, windows, loss_fn, n=128, seed=0)
    print({k: f"{v:.3g}" for k, v in res["m"].items() if "/pos/" in k})
    assert len(res["m"]) == 3 * 5
    bins = [res["m"][f"val/x0_by_t/pos/bin{k}"] for k in range(5)]
    assert all(a < b for a, b in zip(bins, bins[1:]))  # more noise, larger one-step error
    for k in range(5):
        assert res["noise"][f"val/x0_by_t/pos/bin{k}"] == pytest.approx(1e-4 * res["m"][f"val/x0_by_t/pos/bin{k}"],
                                                                        rel=1e-3)
        assert res["noise"][f"val/x0_by_t/rot/bin{k}"] == pytest.approx(res["m"][f"val/x0_by_t/rot/bin{k}"], rel=1e-5)
    # bin 0 against the closed form: E[(1-ab)/ab] over t in [0, 200) x E[eps^2] / the group's variance
    ab = _policy(spec, data).alphas_cumprod[:200].double()
    expect = float(((1 - ab) / ab).mean()) / loss_fn.var["pos"]
    assert bins[0] == pytest.approx(expect, rel=0.15)


def test_report_plots_x0_by_t_per_arm(tmp_path):
    """The report reads val/x0_by_t/* from each run (a real sqlite MLflow store) and plots them per arm."""
    from ablation.report import build_report
    from ablation.tracking import TAG_SPEC, Tracker, default_tracking_uri

    from .test_report import record_plan

    tracker = Tracker.open(default_tracking_uri(tmp_path), "libero-action-ablation", tmp_path / "art")
    parent = record_plan(tracker, ["H1_scale_absolute"], {
        "baseline_rdt": {"rates": [0, 0, 0]}, "fix_pos_cm": {"rates": [1, 1, 1]}})
    for run in tracker.find_runs(f"tags.`{TAG_SPEC}` = 'fix_pos_cm'") + tracker.find_runs(f"tags.`{TAG_SPEC}` = 'baseline_rdt'"):
        cm = run.data.tags[TAG_SPEC] == "fix_pos_cm"
        tracker.log_metrics(run.info.run_id, [(f"val/x0_by_t/{g}/bin{k}", (0.01 if cm else 1.0) * (k + 1), 10)
                                              for g in ("pos", "rot", "grip") for k in range(5)])
    out = tmp_path / "r"
    build_report(tracker, parent_run_id=parent, out_dir=out)
    assert (out / "x0_by_t.png").stat().st_size > 1000
    assert "x0_by_t.png" in (out / "report.md").read_text()
