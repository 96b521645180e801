"""The diffusion transformer and the policy around it: shapes, sizes, golden outputs, act()."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from ablation.codec import ActionCodec
from ablation.data import episode_view, read_demo_file
from ablation.model import (FAST_EVAL_KERNELS, FAST_TRAIN_KERNELS, REFERENCE_KERNELS, DiffusionTransformer,
                            DiTConfig, Kernels, count_params)
from ablation.policy import DiffusionPolicy, PolicyError, check_clip_sample
from ablation.spec import SpecError, resolve_spec, spec_path

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def _inputs(cfg: DiTConfig, B: int = 2, images: bool = False):
    g = torch.Generator().manual_seed(0)
    out = dict(noisy_actions=torch.randn(B, cfg.horizon, cfg.action_width, generator=g),
               action_mask=torch.ones(cfg.action_width), timesteps=torch.tensor([3, 900])[:B],
               ctrl_freq=torch.full((B,), 20.0), state=torch.randn(B, cfg.state_width, generator=g),
               state_mask=torch.ones(cfg.state_width), obs=torch.randn(B, cfg.obs_history, cfg.obs_dim, generator=g))
    if images:
        out["images"] = torch.randint(0, 255, (B, cfg.obs_history, cfg.n_cams, 32, 32, 3), dtype=torch.uint8, generator=g)
    return out


def test_forward_shapes_and_sizes():
    cfg = DiTConfig.for_size("tiny", horizon=16, action_width=128, state_width=128, obs_dim=20, obs_history=2)
    net = DiffusionTransformer(cfg)
    assert net(**_inputs(cfg)).shape == (2, 16, 128)
    assert 30_000 < count_params(net) < 200_000
    for W, Ws in ((128, 128), (7, 10)):
        small = DiTConfig.for_size("small", horizon=16, action_width=W, state_width=Ws, obs_dim=60, obs_history=2)
        assert 1_000_000 <= count_params(DiffusionTransformer(small)) <= 3_000_000


def test_image_tokens():
    cfg = DiTConfig.for_size("tiny", horizon=4, action_width=7, state_width=10, obs_dim=5, obs_history=2, n_cams=2,
                             image_size=32)
    net = DiffusionTransformer(cfg)
    out = net(**_inputs(cfg, images=True))
    assert out.shape == (2, 4, 7)
    out.pow(2).mean().backward()  # the CNN is in the graph
    assert net.image_encoder.net[0].weight.grad is not None
    with pytest.raises(ValueError, match="images"):
        net(**_inputs(cfg))


def test_rdt_shaped_sizes_have_rdt_widths():
    assert DiTConfig.for_size("rdt-170m", horizon=64, action_width=128, state_width=128, obs_dim=10,
                              obs_history=2).hidden == 1024
    cfg = DiTConfig.for_size("rdt-1b", horizon=64, action_width=128, state_width=128, obs_dim=10, obs_history=2)
    assert (cfg.hidden, cfg.depth, cfg.heads) == (2048, 28, 32)


def _load_golden_script():
    spec = importlib.util.spec_from_file_location("make_policy_golden", GOLDEN_DIR / "make_policy_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("kernels", [REFERENCE_KERNELS, Kernels("math", "fp32")], ids=["reference", "math"])
def test_policy_golden_output(kernels):
    """Fixed weights + fixed input + fixed noise -> the stored chunk, within 1e-5, with today's
    kernels and with the matmul-based attention (same weights and keys)."""
    gold = _load_golden_script()
    spec, _, obs_norm, _, _ = gold.golden_parts()
    with safe_open(str(GOLDEN_DIR / "policy_tiny.safetensors"), "pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    codec = ActionCodec.from_json(json.loads(meta["codec"]))
    policy = DiffusionPolicy(spec, codec, obs_norm, DiTConfig(**json.loads(meta["model_config"])))
    policy.net.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("net.")}, strict=True)
    policy.net.set_kernels(kernels)
    out = policy.sample({"obs": t["in.obs"], "state": t["in.state"]}, noise=t["in.noise"])
    assert out.abs().max() > 1e-3  # not the trivial all-zero output
    torch.testing.assert_close(out, t["out.sample"], atol=1e-5, rtol=0)


def test_kernels_agree_and_keep_the_weights():
    """math vs sdpa attention: equal to float rounding, forward and backward; bf16 matmuls: close
    (training only); the state dict (keys, values) does not depend on the kernels."""
    cfg = DiTConfig.for_size("tiny", horizon=8, action_width=10, state_width=10, obs_dim=6, obs_history=2)
    torch.manual_seed(0)
    net = DiffusionTransformer(cfg)
    with torch.no_grad():
        for p in net.head.parameters():
            p.normal_(0, 0.1)
    keys = list(net.state_dict())
    outs, grads = {}, {}
    math = Kernels("math", "fp32")
    for k in (REFERENCE_KERNELS, math, FAST_TRAIN_KERNELS, Kernels("math", "bf16")):
        net.zero_grad()
        out = net.set_kernels(k)(**_inputs(cfg))
        out.pow(2).mean().backward()
        outs[k], grads[k] = out.detach(), net.blocks[0].mlp[0].weight.grad.clone()
        assert list(net.state_dict()) == keys
    torch.testing.assert_close(outs[math], outs[REFERENCE_KERNELS], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[math], grads[REFERENCE_KERNELS], atol=1e-5, rtol=1e-4)
    scale = outs[REFERENCE_KERNELS].abs().max()
    for bf16 in (FAST_TRAIN_KERNELS, Kernels("math", "bf16")):
        assert (outs[bf16] - outs[REFERENCE_KERNELS]).abs().max() < 0.02 * scale
        assert torch.isfinite(grads[bf16]).all()
    assert FAST_EVAL_KERNELS == REFERENCE_KERNELS  # sampling stays full precision
    with pytest.raises(ValueError, match="attention"):
        Kernels("flash", "fp32")


def test_clip_sample_needs_bounded_codec(synthetic_demo_file):
    with pytest.raises(SpecError, match="clip_sample"):
        resolve_spec(spec_path("baseline_rdt"), ["model.clip_sample=true"])
    ok = resolve_spec(spec_path("fix_minmax"), ["model.clip_sample=true"])
    # A spec that slipped past validation (model_copy does not re-validate) is still refused at build.
    bad = ok.model_copy(update={"codec": ok.codec.model_copy(update={"normalizer": "identity"})})
    codec = ActionCodec.fit(bad.codec, np.zeros((4, 10)) + np.arange(4)[:, None], np.ones((4, 10)))
    with pytest.raises(PolicyError, match="clip_sample"):
        check_clip_sample(bad, codec)


@pytest.fixture(scope="module")
def tiny_policy(synthetic_demo_file):
    from ablation.data import prepare_data
    from ablation.policy import ObsNormalizer, build_policy

    spec = resolve_spec(spec_path("baseline_rdt"), ["model.size=tiny"])
    data = prepare_data(spec.data, spec.codec, synthetic_demo_file)
    return build_policy(spec, data.codec, ObsNormalizer.fit(data.train.obs, spec.data.obs_keys), data.train.obs.shape[-1])


def test_act_returns_model_space_chunk(synthetic_demo_file, tiny_policy):
    policy = tiny_policy
    ds = read_demo_file(synthetic_demo_file)
    v = episode_view(ds.episodes[0], "before")
    hist = [{k: v.obs[k][t] for k in v.obs} for t in range(3)]
    chunk = policy.act(hist)
    assert chunk.shape == (policy.horizon, policy.codec.width)
    assert np.all(np.isfinite(chunk))
    assert np.all(chunk[:, policy.codec.action_mask == 0] == 0)
    assert policy.act(hist[:1]).shape == chunk.shape  # a short history is padded like training
    env = policy.codec.to_env(chunk, v.ee_pos[2], v.ee_rot[2])
    assert env.clipped.shape == (policy.horizon, 7)
