"""Gate A through a spec's own codec (ablation/gates.py), in the real simulator.

Good paths (native, the seed's seed_mix in RDT slots, a min-max normalised seed_mix) must replay the
scripted expert's demos with >= 90% success; broken paths (a codec that applies the delta transform
twice, a file whose gripper sign is flipped) must fail; a cached result must not run the simulator.
Episodes are kept few: on 2 shared CPU cores an episode costs several seconds.
"""
from __future__ import annotations

import numpy as np
import pytest

from ablation.spec import resolve_spec
from ablation.spec import EXPERIMENTS_DIR

pytestmark = pytest.mark.sim


def _spec(name):
    return resolve_spec(EXPERIMENTS_DIR / f"{name}.yaml")


class DoubleDeltaCodec:
    """A broken codec: encode takes step-to-step differences of the (already delta) arm actions, and
    decode does not undo it, so the env receives deltas of deltas."""

    def __init__(self, inner):
        self.inner = inner
        self.spec, self.stats, self.width = inner.spec, inner.stats, inner.width

    @property
    def rep(self):
        return self.inner.rep

    def encode(self, phys):
        x = np.array(phys, dtype=np.float64)
        if x.ndim == 2 and len(x) > 1:
            x[:, :6] = np.diff(x[:, :6], axis=0, prepend=np.zeros((1, 6)))
        return self.inner.encode(x)

    def decode(self, model):
        return self.inner.decode(model)

    def to_env(self, model, ee_pos, ee_rot):
        return self.inner.rep.to_env(self.decode(model), ee_pos, ee_rot)


def _flipped_gripper_file(src, dst):
    from ablation.data import read_demo_file, write_demo_file

    ds = read_demo_file(src)
    for ep in ds.episodes:
        ep.actions[:, 6] *= -1
        if "executed_actions" in ep.extras:
            ep.extras["executed_actions"][:, 6] *= -1
    write_demo_file(dst, ds.episodes, ds.meta)
    return dst


@pytest.mark.parametrize("name,episodes", [("native_delta", 2), ("baseline_rdt", 4), ("fix_minmax", 2)])
def test_gate_a_passes_through_good_codecs(expert_demo_file, tmp_path, name, episodes):
    from ablation.gates import replay_gate

    r = replay_gate(_spec(name), expert_demo_file, episodes=episodes, cache_dir=tmp_path)
    assert r.passed and r.success_rate >= 0.9, r.reason
    assert r.n == episodes and len(r.successes) == episodes and not r.cached
    assert r.actions_source == "executed_actions"  # DART demos: what moved the robot
    assert r.suite == "libero_object" and r.task == 0  # from the file itself
    assert r.codec["representation"] == _spec(name).codec.representation
    assert "PASS" in r.reason and "executed_actions" in r.reason


def test_gate_a_fails_a_double_delta_codec(expert_demo_file, tmp_path):
    from ablation.gates import replay_gate

    r = replay_gate(_spec("native_delta"), expert_demo_file, episodes=2, cache_dir=tmp_path,
                    codec_override=DoubleDeltaCodec)
    assert not r.passed and r.success_rate == 0.0, r.reason
    assert r.codec_class == "DoubleDeltaCodec" and "FAIL" in r.reason


def test_gate_a_fails_a_flipped_gripper_file(expert_demo_file, tmp_path):
    from ablation.gates import replay_gate

    bad = _flipped_gripper_file(expert_demo_file, tmp_path / "flipped.hdf5")
    r = replay_gate(_spec("native_delta"), bad, episodes=2)
    assert not r.passed and r.success_rate == 0.0, r.reason


def test_gate_a_cache_hit_does_not_run_the_simulator(expert_demo_file, tmp_path, monkeypatch):
    import ablation.rollout_pool as rollout_pool
    from ablation.gates import replay_gate

    first = replay_gate(_spec("fix_minmax"), expert_demo_file, episodes=1, cache_dir=tmp_path)
    assert not first.cached and list(tmp_path.glob("gate_a_*.json"))

    def boom(*a, **k):
        raise AssertionError("the simulator ran on a cache hit")

    monkeypatch.setattr(rollout_pool, "run_rollouts", boom)
    again = replay_gate(_spec("fix_minmax"), expert_demo_file, episodes=1, cache_dir=tmp_path)
    assert again.cached and again.successes == first.successes and again.success_rate == first.success_rate
    # another codec is another key: it must replay (and here hits the patched runner)
    with pytest.raises(AssertionError, match="simulator ran"):
        replay_gate(_spec("native_delta"), expert_demo_file, episodes=1, cache_dir=tmp_path)


def test_replay_cli_file_from_elsewhere_json_flag(expert_demo_file, tmp_path, capsys):
    """`replay` on a file that does not carry our suite/task attributes: they come from its BDDL file
    name; `--json` is a flag that prints JSON (as on every command); `--spec` replays through that
    spec's codec."""
    import json

    import h5py

    from ablation.cli import main
    from ablation.data import read_demo_file, write_demo_file

    ds = read_demo_file(expert_demo_file)
    ds.meta.attrs = {k: v for k, v in ds.meta.attrs.items() if k not in ("suite", "task", "task_id", "cache_key")}
    ds.meta.bddl_file_name = "libero/libero/bddl_files/libero_object/" + ds.meta.bddl_file_name.split("/")[-1]
    p = tmp_path / "elsewhere.hdf5"
    write_demo_file(p, ds.episodes, ds.meta)
    with h5py.File(p, "r") as f:
        assert "suite" not in json.loads(f["data"].attrs["ablation_attrs"])
    rc = main(["replay", str(p), "--n", "1", "--spec", str(EXPERIMENTS_DIR / "baseline_rdt.yaml"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    assert (out["suite"], out["task"], out["n"], out["passed"]) == ("libero_object", 0, 1, True)
    assert out["codec"]["representation"] == "seed_mix"
