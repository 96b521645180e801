"""Checkpoint bundles (ablation.bundle): atomic write, newest-only, strict reading, resume checks."""
from __future__ import annotations

import json

import pytest
import torch

from ablation import bundle as B
from ablation.errors import UserError
from ablation.bundle import load_policy
from ablation.policy import PolicyError
from ablation.spec import resolve_spec, spec_path
from ablation.train import train

FAST = ["model.size=tiny", "train.batch_size=8", "train.warmup_steps=1", "train.log_every=1", "train.eval_every=1000",
        "train.checkpoint_every=1000", "data.action_chunk=4", "train.steps=2"]


@pytest.fixture(scope="module")
def run(synthetic_demo_file, tmp_path_factory):
    spec = resolve_spec(spec_path("fix_minmax"), FAST)
    out = tmp_path_factory.mktemp("bundle_run")
    return spec, train(spec, synthetic_demo_file, out, progress=False), out


def test_bundle_files_and_reload(run):
    spec, res, out = run
    b = res.checkpoint_dir
    assert B.latest_bundle(out) == b
    for f in (B.WEIGHTS, B.CODEC, B.OBS_NORM, B.SPEC, B.META, B.TRAIN_STATE):
        assert (b / f).is_file(), f
    p1, p2 = load_policy(b), load_policy(b)  # two loads of one bundle: the same weights, bit for bit
    for k, v in p1.net.state_dict().items():
        torch.testing.assert_close(v, p2.net.state_dict()[k], rtol=0, atol=0)
    assert B.read_meta(b)["spec_hash"] == spec.hash()
    assert B.read_train_state(b)["step"] == 2


def test_write_is_atomic_and_keeps_only_the_newest(run, tmp_path):
    _, res, _ = run
    policy = load_policy(res.checkpoint_dir)
    meta = B.read_meta(res.checkpoint_dir)
    for step in (3, 4):
        B.write_bundle(tmp_path, policy, {**meta, "step": step}, {"step": step})
    (tmp_path / "checkpoints" / ".tmp_step_0000005").mkdir()  # a crash mid-write
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == [".tmp_step_0000005", "step_0000004"]
    assert B.latest_bundle(tmp_path).name == "step_0000004"
    assert B.latest_bundle(tmp_path / "nowhere") is None


def test_resume_check_refuses_another_spec(run, synthetic_demo_file):
    spec, res, _ = run
    from ablation.data import prepare_data
    from ablation.provenance import file_sha256

    codec = prepare_data(spec.data, spec.codec, synthetic_demo_file).codec
    sha = file_sha256(synthetic_demo_file)
    assert B.check_resumable(res.checkpoint_dir, spec, sha, codec)["step"] == 2
    other = resolve_spec(spec_path("fix_minmax"), [*FAST, "train.lr=1e-3"])
    with pytest.raises(UserError, match="another spec"):
        B.check_resumable(res.checkpoint_dir, other, sha, codec)
    with pytest.raises(UserError, match="another demo file"):
        B.check_resumable(res.checkpoint_dir, spec, "0" * 64, codec)


def test_edited_or_incomplete_bundles_are_refused(run, tmp_path):
    import shutil

    _, res, _ = run
    b = tmp_path / "b"
    shutil.copytree(res.checkpoint_dir, b)
    meta = json.loads((b / B.META).read_text())
    (b / B.META).write_text(json.dumps({**meta, "spec_hash": "x"}))
    with pytest.raises(PolicyError, match="edited or mixed"):
        load_policy(b)
    (b / B.WEIGHTS).unlink()
    with pytest.raises(PolicyError, match="missing"):
        load_policy(b)


def test_init_from_starts_from_a_bundles_weights(run, synthetic_demo_file, tmp_path):
    _, res, _ = run
    ft = resolve_spec(spec_path("fix_minmax"), [*FAST, "train.steps=1", f"train.init_from={res.checkpoint_dir}"])
    meta = B.read_meta(train(ft, synthetic_demo_file, tmp_path, progress=False).checkpoint_dir)
    assert meta["init_from"] == str(res.checkpoint_dir)
    assert meta["init_loaded"] == len(load_policy(res.checkpoint_dir).net.state_dict()) and meta["init_fresh"] == []
