"""The trainer on real (synthetic-trajectory) LIBERO files: overfit, determinism, NaN stop, resume,
checkpoint bundles and their strict codec, open-loop figures and the CLI."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ablation.cli import main as cli_main
from ablation.codec import CodecError
from ablation.data import prepare_data
from ablation.errors import UserError
from ablation.bundle import load_policy
from ablation.spec import resolve_spec, spec_path
from ablation.train import TrainingDiverged, WindowTensors, open_loop_eval, train

FAST = ["model.size=tiny", "train.batch_size=16", "train.warmup_steps=5", "train.log_every=5",
        "train.eval_every=1000", "train.checkpoint_every=1000", "train.num_threads=1", "data.action_chunk=8"]
METRIC_KEYS = [f"train/loss/{g}" for g in ("total", "pos", "rot", "grip")] + \
    [f"train/nmse/{g}" for g in ("pos", "rot", "grip")] + \
    [f"train/phys/{k}" for k in ("pos_mm", "rot_deg", "grip")] + ["train/lr"]


def tiny_spec(name: str = "baseline_rdt", *sets: str):
    return resolve_spec(spec_path(name), [*FAST, *sets])


def _subset(data, n: int):
    w = data.train
    idx = np.linspace(0, len(w) - 1, n).round().astype(int)
    sub = dataclasses.replace(w, **{f.name: getattr(w, f.name)[idx] for f in dataclasses.fields(w)
                                    if getattr(w, f.name) is not None})
    return dataclasses.replace(data, train=sub, val=sub)


@pytest.fixture(scope="module")
def trained(synthetic_demo_file, tmp_path_factory):
    """One short run shared by the bundle tests."""
    spec = tiny_spec("baseline_rdt", "train.steps=10", "train.eval_every=10")
    out = tmp_path_factory.mktemp("run")
    seen = []
    res = train(spec, synthetic_demo_file, out, progress=False, on_metrics=lambda s, m: seen.append((s, m)))
    return spec, res, seen


def test_overfits_a_batch_of_demo_windows(synthetic_demo_file, tmp_path):
    spec = tiny_spec("fix_minmax", "train.steps=600", "train.lr=3e-3", "train.weight_decay=0",
                     "loss.reduction=masked_mean", "train.log_every=100", "data.action_chunk=16")
    data = _subset(prepare_data(spec.data, spec.codec, synthetic_demo_file), 16)
    res = train(spec, synthetic_demo_file, tmp_path, progress=False, data=data)
    first, last = res.history[0][1], res.final
    assert last["train/loss/total"] < 0.03 < first["train/loss/total"]
    for g in ("pos", "rot", "grip"):
        assert last[f"train/nmse/{g}"] < 0.15, g
        assert res.open_loop[f"nmse/{g}"] < 0.15, g  # sampled chunks reproduce the demo, too


def test_metrics_keys_and_bundle(trained):
    spec, res, seen = trained
    assert [s for s, _ in seen] == [5, 10]
    for k in METRIC_KEYS:
        assert k in seen[0][1], k
        assert np.isfinite(seen[0][1][k]), k
    for k in ("val/loss/total", "val/nmse/pos", "val/phys/pos_mm", "val/openloop/clip_fraction",
              "val/openloop/pos_step_ratio", "val/openloop/std_ratio/pos"):
        assert k in seen[1][1], k
    parts = sum(seen[0][1][f"train/loss/{g}"] for g in ("pos", "rot", "grip", "pad"))
    assert parts == pytest.approx(seen[0][1]["train/loss/total"], rel=1e-6)
    b = res.checkpoint_dir
    assert b.name == "step_0000010"
    for f in ("model.safetensors", "codec.json", "obs_norm.json", "spec.yaml", "meta.json", "train_state.pt"):
        assert (b / f).is_file(), f
    meta = json.loads((b / "meta.json").read_text())
    assert meta["spec_hash"] == spec.hash() and len(meta["demo_sha256"]) == 64
    assert {"torch", "mujoco", "robosuite"} <= set(meta["versions"]) and meta["git_commit"]
    assert not any(p.name.startswith(".tmp") for p in b.parent.iterdir())
    for k in ("pos_mm", "rot_deg", "grip", "clip_fraction", "max_excess", "pos_step_max_m", "pos_step_ratio",
              "std_ratio/pos", "std_ratio/rot", "std_ratio/grip", "nmse/pos", "nmse/rot", "nmse/grip",
              "r2/pos_vs_abs_pose", "r2/pos_vs_delta"):
        assert k in res.open_loop, k
    assert meta["kernels"] == "fast"


def test_save_load_gives_identical_samples(trained, synthetic_demo_file):
    spec, res, _ = trained
    policy = load_policy(res.checkpoint_dir)
    again = load_policy(res.checkpoint_dir)
    data = prepare_data(spec.data, spec.codec, synthetic_demo_file)
    batch = WindowTensors(data.train, torch.device("cpu")).batch(torch.arange(4))
    noise = torch.randn(4, spec.data.action_chunk, policy.codec.width, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(policy.sample(batch, noise=noise), again.sample(batch, noise=noise), rtol=0, atol=0)
    # and the loaded policy reproduces the trainer's own final open-loop figures
    ol = open_loop_eval(policy, data.val, n=256, seed=spec.train.seed)
    assert ol["pos_mm"] == pytest.approx(res.open_loop["pos_mm"], rel=1e-5)


def test_bundle_without_its_codec_is_refused(trained, tmp_path):
    _, res, _ = trained
    b = tmp_path / "bundle"
    shutil.copytree(res.checkpoint_dir, b)
    (b / "codec.json").unlink()
    with pytest.raises(CodecError, match="missing"):
        load_policy(b)


def test_bundle_with_another_specs_codec_is_refused(trained, synthetic_demo_file, tmp_path):
    _, res, _ = trained
    other = train(tiny_spec("fix_minmax", "train.steps=1"), synthetic_demo_file, tmp_path / "other", progress=False)
    b = tmp_path / "bundle"
    shutil.copytree(res.checkpoint_dir, b)
    shutil.copy(other.checkpoint_dir / "codec.json", b / "codec.json")
    with pytest.raises(CodecError, match="normalizer"):
        load_policy(b)


def test_deterministic_for_a_seed(synthetic_demo_file, tmp_path):
    spec = tiny_spec("baseline_rdt", "train.steps=10")
    threads = torch.get_num_threads()
    a = train(spec, synthetic_demo_file, tmp_path / "a", progress=False)
    assert torch.get_num_threads() == threads  # process-wide options belong to the entry points
    b = train(spec, synthetic_demo_file, tmp_path / "b", progress=False)
    assert [m["train/loss/total"] for _, m in a.history] == [m["train/loss/total"] for _, m in b.history]
    c = train(tiny_spec("baseline_rdt", "train.steps=10", "train.seed=1"), synthetic_demo_file, tmp_path / "c",
              progress=False)
    assert a.history[-1][1]["train/loss/total"] != c.history[-1][1]["train/loss/total"]


def test_nan_stops_the_run_naming_step_and_group(synthetic_demo_file, tmp_path):
    spec = tiny_spec("baseline_rdt", "train.steps=50", "train.lr=1e30", "train.warmup_steps=0")
    with pytest.raises(TrainingDiverged, match=r"step \d+: .*non-finite in group\(s\) .*(pos|rot|grip)"):
        train(spec, synthetic_demo_file, tmp_path, progress=False)


def _killed_at_then_resumed(spec, demo_file, run_dir, kill_step, checkpoints_left=None):
    """Train until `kill_step` raises out of the metrics callback (a killed process), check what
    was left on disk, then train again in the same folder: the resumed run's result."""
    class Killed(Exception):
        pass

    def kill(step, _m):
        if step == kill_step:
            raise Killed

    with pytest.raises(Killed):
        train(spec, demo_file, run_dir, progress=False, on_metrics=kill)
    if checkpoints_left is not None:
        assert [p.name for p in (run_dir / "checkpoints").iterdir()] == checkpoints_left
    return train(spec, demo_file, run_dir, progress=False)


def test_resume_matches_a_straight_run(synthetic_demo_file, tmp_path):
    spec = tiny_spec("baseline_rdt", "train.steps=40", "train.checkpoint_every=20", "train.log_every=1",
                     "train.ema=true")
    straight = train(spec, synthetic_demo_file, tmp_path / "straight", progress=False)

    resumed = _killed_at_then_resumed(spec, synthetic_demo_file, tmp_path / "resumed", 23,
                                      checkpoints_left=["step_0000020"])
    w1 = load_file(str(straight.checkpoint_dir / "model.safetensors"))
    w2 = load_file(str(resumed.checkpoint_dir / "model.safetensors"))
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-5, atol=1e-6)
    assert resumed.history[-1][1]["train/loss/total"] == pytest.approx(straight.history[-1][1]["train/loss/total"],
                                                                        rel=1e-5)
    # a different spec must not resume from that directory
    with pytest.raises(UserError, match="another spec"):
        train(tiny_spec("baseline_rdt", "train.steps=41"), synthetic_demo_file, tmp_path / "resumed", progress=False)


def test_cli_train_and_eval(synthetic_demo_file, tmp_path, capsys):
    rc = cli_main(["train", "--spec", "fix_minmax", "--steps", "3", "--demos", str(synthetic_demo_file),
                   "--out", str(tmp_path / "run"), *[a for s in FAST for a in ("--set", s)]])
    assert rc == 0
    out = capsys.readouterr().out
    assert "checkpoint:" in out and "step_0000003" in out
    rc = cli_main(["eval", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "step_0000003"), "--open-loop-only"])
    assert rc == 0
    assert "clip_fraction" in capsys.readouterr().out
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "nowhere"), "--open-loop-only"]) == 2


def test_reference_kernels_train_side_by_side(synthetic_demo_file, tmp_path):
    """The pre-Throughput configuration stays runnable (benchmarks compare it), with the same loss scale."""
    spec = tiny_spec("fix_minmax", "train.steps=10")
    fast = train(spec, synthetic_demo_file, tmp_path / "fast", progress=False)
    ref = train(spec, synthetic_demo_file, tmp_path / "ref", progress=False, kernels="reference")
    assert json.loads((ref.checkpoint_dir / "meta.json").read_text())["kernels"] == "reference"
    lf, lr = fast.history[-1][1]["train/loss/total"], ref.history[-1][1]["train/loss/total"]
    assert lf == pytest.approx(lr, rel=0.1)
    with pytest.raises(UserError, match="kernels"):
        train(spec, synthetic_demo_file, tmp_path / "bad", progress=False, kernels="turbo")


@pytest.mark.sim
def test_overfits_expert_demos(expert_demo_file, tmp_path):
    spec = tiny_spec("fix_minmax", "train.steps=600", "train.lr=3e-3", "train.weight_decay=0",
                     "loss.reduction=masked_mean", "train.log_every=100", "data.action_chunk=16")
    data = _subset(prepare_data(spec.data, spec.codec, expert_demo_file), 16)
    res = train(spec, expert_demo_file, tmp_path, progress=False, data=data)
    print({k: round(v, 4) for k, v in res.final.items() if "nmse" in k or "loss/total" in k})
    assert res.final["train/loss/total"] < 0.2 * res.history[0][1]["train/loss/total"]
    for g in ("pos", "grip"):  # the scripted expert never rotates: rotation is ~constant, its nMSE meaningless
        assert res.final[f"train/nmse/{g}"] < 0.2, g


def test_compiled_training_matches_eager_and_resumes_exactly(synthetic_demo_file, tmp_path, monkeypatch):
    """train.compile: the step's network call through torch.compile (the CPU profile's trainer). Same
    training as eager to bf16 rounding, deterministic, and a killed run resumes to the straight run's
    weights (the compiled code is deterministic; a resumed process compiles again).

    The kernels are compiled without SIMD here (inductor's cpp.vec_isa_ok=False): on a fresh machine
    (an empty compile cache, as in CI) this test took 115 s with the vectorised kernels against 62 s
    without (`pytest tests/test_train.py -k compiled_training`, nothing else running, 2026-12-03).
    What this test checks (the compiled step is the trainer's, matches eager, resumes exactly) does
    not depend on the instruction set; the SIMD kernels' speed and cold compile are
    benchmarks/train_throughput.py's."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "vec_isa_ok", False)
    sets = ["train.steps=30", "train.checkpoint_every=15", "train.log_every=1"]
    eager = train(tiny_spec("fix_minmax", *sets), synthetic_demo_file, tmp_path / "eager", progress=False)
    spec = tiny_spec("fix_minmax", *sets, "train.compile=true", "train.compile_min_steps=0")
    straight = train(spec, synthetic_demo_file, tmp_path / "straight", progress=False)
    assert straight.compiled == "on", straight.compiled
    assert json.loads((straight.checkpoint_dir / "meta.json").read_text())["compiled"] == "on"
    le = [m["train/loss/total"] for _, m in eager.history]
    lc = [m["train/loss/total"] for _, m in straight.history]
    assert lc == pytest.approx(le, rel=0.05)  # bf16 matmuls either way; only the fusion differs
    assert lc[-1] < lc[0]

    resumed = _killed_at_then_resumed(spec, synthetic_demo_file, tmp_path / "resumed", 18)
    assert resumed.compiled == "on" and resumed.steps == 30
    w1 = load_file(str(straight.checkpoint_dir / "model.safetensors"))
    w2 = load_file(str(resumed.checkpoint_dir / "model.safetensors"))
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=0, atol=0)
    assert [m["train/loss/total"] for _, m in resumed.history] == lc


def test_a_run_too_short_to_pay_a_compile_back_trains_eagerly(synthetic_demo_file, tmp_path):
    """train.compile_min_steps: a 6-step run with train.compile trains eagerly, says why, and gives the
    eager run's losses exactly (the same kernels, no compile)."""
    sets = ["train.steps=6"]
    eager = train(tiny_spec("fix_minmax", *sets), synthetic_demo_file, tmp_path / "eager", progress=False)
    res = train(tiny_spec("fix_minmax", *sets, "train.compile=true"), synthetic_demo_file, tmp_path / "c",
                progress=False)
    assert res.compiled == "off: 6 steps < train.compile_min_steps (100), too few to pay a compile back"
    assert json.loads((res.checkpoint_dir / "meta.json").read_text())["compiled"] == res.compiled
    assert [m["train/loss/total"] for _, m in res.history] == [m["train/loss/total"] for _, m in eager.history]


def test_compile_failure_trains_eagerly_with_the_same_results(synthetic_demo_file, tmp_path, monkeypatch, capsys):
    """No working C++ compiler (a real inductor failure, with an empty compile cache so nothing can be
    loaded instead): the run says why once, and trains eagerly from the same RNG state, giving exactly
    the eager run's losses."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    sets = ["train.steps=6"]
    eager = train(tiny_spec("fix_minmax", *sets), synthetic_demo_file, tmp_path / "eager", progress=False)
    torch._dynamo.reset()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/g++",))
    try:
        res = train(tiny_spec("fix_minmax", *sets, "train.compile=true", "train.compile_min_steps=0"),
                    synthetic_demo_file, tmp_path / "c", progress=False)
    finally:
        torch._dynamo.reset()
    assert res.compiled.startswith("failed: ") and "compiler" in res.compiled.lower(), res.compiled
    out = capsys.readouterr().out
    assert out.count("torch.compile failed") == 1 and "training eagerly" in out
    assert json.loads((res.checkpoint_dir / "meta.json").read_text())["compiled"] == res.compiled
    assert [m["train/loss/total"] for _, m in res.history] == [m["train/loss/total"] for _, m in eager.history]
