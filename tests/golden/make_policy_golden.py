"""Regenerate tests/golden/policy_tiny.safetensors: a tiny policy's weights, a fixed input batch,
fixed noise and the chunk it samples. Run only when the model or sampler is changed on purpose:

    .venv/bin/python tests/golden/make_policy_golden.py

The file also carries the codec, obs normaliser and spec (in its metadata), so the test rebuilds the
exact policy without any random initialisation and compares `sample()` within 1e-5.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from ablation.codec import ActionCodec  # noqa: E402
from ablation.policy import ObsNormalizer, build_policy  # noqa: E402
from ablation.spec import spec_from_dict  # noqa: E402

GOLDEN = HERE / "policy_tiny.safetensors"
SPEC = {"name": "golden_tiny", "model": {"size": "tiny", "prediction_type": "sample"},
        "codec": {"representation": "seed_mix", "rotation": "rot6d", "layout": "rdt_eef", "normalizer": "minmax"},
        "data": {"obs_keys": ["ee_pos", "ee_ori", "gripper_states", "gripper_history"], "obs_history": 2,
                 "action_chunk": 8}}
OBS_DIM = 3 + 3 + 2 + 2


def golden_parts():
    """Codec, obs normaliser, spec and input batch from fixed numpy data (no torch RNG involved)."""
    spec = spec_from_dict(SPEC)
    rng = np.random.default_rng(1234)
    phys = np.concatenate([rng.normal(0, 0.01, (200, 3)), rng.normal(0, 0.5, (200, 6)),
                           np.sign(rng.normal(size=(200, 1)))], axis=1)
    states = rng.normal(0, 0.1, (200, 10))
    codec = ActionCodec.fit(spec.codec, phys, states, native_actions=rng.uniform(-1, 1, (200, 7)))
    obs_norm = ObsNormalizer.fit(rng.normal(0, 1, (100, 2, OBS_DIM)), spec.data.obs_keys)
    B = 3
    batch = {"obs": torch.as_tensor(rng.normal(0, 1, (B, 2, OBS_DIM)), dtype=torch.float32),
             "state": torch.as_tensor(codec.encode_state(rng.normal(0, 0.1, (B, 10))), dtype=torch.float32)}
    noise = torch.as_tensor(rng.normal(0, 1, (B, spec.data.action_chunk, codec.width)), dtype=torch.float32)
    return spec, codec, obs_norm, batch, noise


def main() -> None:
    torch.set_num_threads(1)
    spec, codec, obs_norm, batch, noise = golden_parts()
    policy = build_policy(spec, codec, obs_norm, OBS_DIM)
    # Perturb the zero-initialised output layer, so the golden output is not trivially 0.
    with torch.no_grad():
        for p in policy.net.head.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
    out = policy.sample(batch, noise=noise)
    tensors = {f"net.{k}": v.contiguous() for k, v in policy.net.state_dict().items()}
    tensors.update({"in.obs": batch["obs"], "in.state": batch["state"], "in.noise": noise, "out.sample": out})
    meta = {"codec": json.dumps(codec.to_json()), "model_config": json.dumps(policy.cfg.to_dict()),
            "torch": torch.__version__}
    save_file(tensors, str(GOLDEN), metadata=meta)
    print(f"wrote {GOLDEN}: sample {tuple(out.shape)}, |out| mean {out.abs().mean():.4f}")


if __name__ == "__main__":
    main()
