"""model.kind: rdt through the normal trainer and bundle: the official-layout RDT behind our policy."""

import pytest
import torch

from ablation.bundle import load_policy
from ablation.spec import EXPERIMENTS_DIR, SpecError, resolve_spec
from ablation.train import train
from tests.conftest import RDT_CKPT, RDT_FIXTURE

CKPT = RDT_CKPT

RDT_SETS = ["model.kind=rdt", "model.size=rdt-tiny-fixture", "data.action_chunk=64", "train.steps=6",
            "train.batch_size=4", "train.eval_every=3", "train.log_every=3", "train.checkpoint_every=100"]


def test_rdt_spec_rejections():
    with pytest.raises(SpecError, match="rdt_eef or rdt_velocity"):
        resolve_spec(EXPERIMENTS_DIR / "native_delta.yaml", RDT_SETS)
    with pytest.raises(SpecError, match="data.action_chunk: 64"):
        resolve_spec(EXPERIMENTS_DIR / "baseline_rdt.yaml", ["model.kind=rdt", "model.size=rdt-tiny-fixture"])
    with pytest.raises(SpecError, match="model.size one of rdt-tiny-fixture"):
        resolve_spec(EXPERIMENTS_DIR / "baseline_rdt.yaml", ["model.kind=rdt", "data.action_chunk=64"])
    with pytest.raises(SpecError, match="set model.kind: rdt"):
        resolve_spec(EXPERIMENTS_DIR / "baseline_rdt.yaml", ["model.size=rdt-tiny-fixture"])


@pytest.mark.parametrize("fix", ["baseline_rdt", "fix_minmax", "fix_velocity_slots"])
def test_pretrained_tiny_rdt_fine_tunes_and_reloads(fix, synthetic_demo_file, tmp_path):
    spec = resolve_spec(EXPERIMENTS_DIR / f"{fix}.yaml", RDT_SETS + [f"model.pretrained={CKPT}"])
    res = train(spec, synthetic_demo_file, tmp_path / "run", progress=False)
    assert res.steps == 6 and torch.isfinite(torch.tensor(res.final["train/loss/total"]))
    policy = load_policy(res.checkpoint_dir)
    assert type(policy.net).__name__ == "RDTNet"
    # the official keys are all there, under runner.
    keys = {k.split("runner.", 1)[1] for k in policy.net.state_dict() if k.startswith("runner.")}
    official = {line.split()[0] for line in (RDT_FIXTURE / "keys.txt").read_text().splitlines()}
    assert keys == official
    # identical samples from fixed noise after a save/load round trip
    from ablation.data import prepare_data
    from ablation.train import WindowTensors
    prep = prepare_data(spec.data, spec.codec, synthetic_demo_file)
    batch = WindowTensors(prep.train, torch.device("cpu")).batch(torch.arange(2))
    noise = torch.randn(2, 64, 128, generator=torch.Generator().manual_seed(0))
    again = load_policy(res.checkpoint_dir)
    torch.testing.assert_close(policy.sample(batch, noise=noise), again.sample(batch, noise=noise), rtol=0, atol=0)


def test_pretrained_weights_are_loaded_not_random(synthetic_demo_file, tmp_path):
    from ablation.rdt import load_rdt_checkpoint
    from ablation.data import prepare_data
    from ablation.policy import ObsNormalizer, build_policy

    spec = resolve_spec(EXPERIMENTS_DIR / "baseline_rdt.yaml", RDT_SETS + [f"model.pretrained={CKPT}",
                                                                          "model.freeze=[blocks:0-1]"])
    prep = prepare_data(spec.data, spec.codec, synthetic_demo_file)
    pol = build_policy(spec, prep.codec, ObsNormalizer.fit(prep.train.obs, spec.data.obs_keys), prep.train.obs.shape[-1])
    ref, _ = load_rdt_checkpoint(CKPT)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(pol.net.runner.state_dict()[k], v)
    assert not any(p.requires_grad for n, p in pol.net.runner.named_parameters() if n.startswith("model.blocks."))
    assert all(p.requires_grad for n, p in pol.net.runner.named_parameters() if n.startswith("lang_adaptor."))


def test_state_mask_marks_the_state_slots_not_the_action_slots(synthetic_demo_file, monkeypatch):
    """Velocity layout: actions fill 39-44 (+ gripper 10) but the state (EEF pose) sits in 30-38. The
    network's state row must carry the state's mask, not the action mask (the official code shares one
    mask because its actions are future states in the same slots)."""
    from ablation.data import prepare_data
    from ablation.policy import ObsNormalizer, build_policy

    spec = resolve_spec(EXPERIMENTS_DIR / "fix_velocity_slots.yaml", RDT_SETS + [f"model.pretrained={CKPT}"])
    prep = prepare_data(spec.data, spec.codec, synthetic_demo_file)
    pol = build_policy(spec, prep.codec, ObsNormalizer.fit(prep.train.obs, spec.data.obs_keys), prep.train.obs.shape[-1])
    seen = {}
    orig = pol.net.runner.denoise

    def spy(noisy, t, lang, mask, img, state, am, freq, state_mask=None):
        seen["action"], seen["state"] = am[0, 0].nonzero().flatten().tolist(), state_mask[0, 0].nonzero().flatten().tolist()
        return orig(noisy, t, lang, mask, img, state, am, freq, state_mask=state_mask)

    monkeypatch.setattr(pol.net.runner, "denoise", spy)
    batch = {"obs": torch.as_tensor(prep.train.obs[:2]), "state": torch.as_tensor(prep.train.state[:2])}
    pol.sample(batch, generator=torch.Generator().manual_seed(0))
    assert set(seen["state"]) == set(range(30, 39)) | {10}
    assert set(seen["action"]) == set(range(39, 45)) | {10}
    # with equal masks the result is the official one (the fixture parity tests cover that path)
