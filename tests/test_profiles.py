"""Profiles: what cpu and gpu set, `auto`, and the GPU profile's configuration built on CPU.

No GPU exists here: the GPU profile's network is built on the meta device (shapes only) and its
image path is run with a tiny network on CPU.
"""
import numpy as np
import pytest
import torch

from ablation.codec import ActionCodec
from ablation.arms import resolve_plan
from ablation.profiles import load_profile
from ablation.policy import ObsNormalizer, build_policy
from ablation.spec import SpecError, load_plan, with_overrides
from tests.codec_cases import fixed_views


def entries(profile: str):
    rp = resolve_plan(load_plan("all"), load_profile(profile))
    return [(arm.spec_for(seed), seed) for arm, seed in rp.entries()]


def test_auto_picks_cpu_without_cuda(caplog):
    assert not torch.cuda.is_available()
    with caplog.at_level("INFO", logger="ablation"):
        assert load_profile("auto").name == "cpu"
    assert "profile auto -> cpu" in caplog.text



@pytest.mark.parametrize("nodes, imports_torch", [(("/nonexistent/nvidia0",), False), (("/dev/null",), True)])
def test_device_detection_imports_torch_only_where_a_gpu_node_exists(nodes, imports_torch):
    """The plan driver tags runs with detect_device() before anything else needs torch: with no GPU
    device node the answer is cpu without the import; with one, torch.cuda decides (cpu here)."""
    import subprocess
    import sys

    code = ("import sys, ablation.profiles as p; p.GPU_DEVICE_NODES = %r; d = p.detect_device(); "
            "print(d, 'torch' in sys.modules)" % (nodes,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    want = ("cuda" if torch.cuda.is_available() else "cpu") if imports_torch else "cpu"
    assert out.stdout.split() == [want, str(imports_torch)], out.stdout

def test_cpu_profile():
    p = load_profile("cpu")
    assert p.jobs == 2
    for spec, seed in entries("cpu"):
        assert (spec.data.images, spec.model.size, spec.train.device, spec.rollout.episodes) == \
            (False, "small", "cpu", 10)


def test_cpu_profile_trains_compiled_and_batches_rollouts():
    p = load_profile("cpu")
    assert p.rollout_batch == 4
    assert all(spec.train.compile and spec.train.kernels == "fast" for spec, _ in entries("cpu"))
    assert load_profile("gpu").rollout_batch == 4


def test_a_bad_rollout_batch_names_the_file_and_the_fix(tmp_path, monkeypatch):
    import ablation.profiles as profiles_mod

    (tmp_path / "odd.yaml").write_text("jobs: 1\nrollout_batch: four\n")
    monkeypatch.setattr(profiles_mod, "PROFILES_DIR", tmp_path)
    with pytest.raises(SpecError, match=r"odd\.yaml: rollout_batch: 'four' .*rollout_batch: 4"):
        load_profile("odd")


def test_gpu_profile_configuration():
    p = load_profile("gpu")
    assert p.rollout_workers >= 1
    es = entries("gpu")
    assert len(es) == 5 * 8  # 5 arms (2 of them dropped at run time where rotation never varies) x 8 seeds
    for spec, _ in es:
        assert spec.data.images and spec.data.image_size == 128
        assert "object_state" not in spec.data.obs_keys  # cameras replace privileged object poses
        assert (spec.model.size, spec.train.device, spec.train.bf16, spec.rollout.episodes) == \
            ("rdt-170m", "cuda", True, 50)
        # compiled: eager, the network is launch-bound on a GPU (half the samples/s on an H200)
        assert spec.train.compile and spec.train.total_steps >= spec.train.compile_min_steps


def test_unknown_profile():
    with pytest.raises(SpecError, match="profile 'tpu' not found; known: auto, cpu, gpu"):
        load_profile("tpu")


def _codec(spec):
    from ablation.data import physical_actions
    from ablation.representations import representation
    views = fixed_views()
    rep = representation(spec.codec.representation, spec.codec.rotation)
    return ActionCodec.fit(spec.codec, np.concatenate([physical_actions(v, rep) for v in views]),
                           np.concatenate([v.state for v in views]))


def test_gpu_profile_network_shapes_on_meta_device():
    spec = entries("gpu")[0][0]
    codec = _codec(spec)
    obs_dim = 3 + 3 + 2 + 2
    norm = ObsNormalizer(tuple(spec.data.obs_keys), np.zeros(obs_dim), np.ones(obs_dim))
    with torch.device("meta"):
        pol = build_policy(spec, codec, norm, obs_dim, n_cams=2)
    n = sum(p.numel() for p in pol.net.parameters())
    assert 1.5e8 < n < 3.5e8  # RDT-170M-shaped transformer plus the image CNN
    assert pol.cfg.n_cams == 2 and pol.cfg.image_size == 128


def test_gpu_profile_image_path_runs_on_cpu_with_a_tiny_network():
    spec = with_overrides(entries("gpu")[0][0], ["model.size=tiny", "train.device=cpu", "data.action_chunk=4"])
    codec = _codec(spec)
    obs_dim = 3 + 6 + 2 + 2  # ee_pos, ee_rot6d, gripper_states, gripper_history
    norm = ObsNormalizer(tuple(spec.data.obs_keys), np.zeros(obs_dim), np.ones(obs_dim))
    pol = build_policy(spec, codec, norm, obs_dim, n_cams=2)
    rng = np.random.default_rng(0)
    obs = {"ee_pos": np.zeros(3), "ee_ori": np.array([np.pi, 0, 0]), "gripper_states": np.array([0.04, -0.04]),
           "gripper_history": np.array([-1.0, 1.0]),
           "agentview_rgb": rng.integers(0, 255, (128, 128, 3), dtype=np.uint8),
           "eye_in_hand_rgb": rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)}
    chunk = pol.act([obs, obs])
    assert chunk.shape == (4, 128) and np.isfinite(chunk).all()
