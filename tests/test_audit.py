"""The scale audit flags the seed's magnitudes and stays quiet once the actions are normalised."""
import json

import pytest

from ablation.audit import audit
from ablation.spec import EXPERIMENTS_DIR, resolve_spec
from tests.conftest import cli_here


def spec(name, *sets):
    return resolve_spec(EXPERIMENTS_DIR / f"{name}.yaml", list(sets))


def test_baseline_is_flagged(synthetic_demo_file):
    r = audit(spec("baseline_rdt"), synthetic_demo_file)
    pos = r.groups["pos"]
    assert pos.absmax < 0.02  # metres: the seed's +-0.012 m
    assert r.groups["rot"].absmax == pytest.approx(1.0, abs=0.01)  # unit 6D
    assert r.flagged and r.scale_ratio > 10
    assert r.dilution_factor == pytest.approx(10 / 128)
    assert pos.mean_loss_share < 0.01
    assert any("scale mismatch" in w for w in r.warnings)
    assert any("loss dilution" in w for w in r.warnings)


@pytest.mark.parametrize("name", ["fix_minmax", "fix_pos_cm"])
def test_normalised_is_not_flagged(synthetic_demo_file, name):
    r = audit(spec(name), synthetic_demo_file)
    assert not r.flagged and r.scale_ratio < 10
    assert not any("scale mismatch" in w for w in r.warnings)


def test_masked_loss_removes_dilution(synthetic_demo_file):
    assert audit(spec("fix_masked_loss"), synthetic_demo_file).dilution_factor == 1.0


def test_loss_shares_follow_weights(synthetic_demo_file):
    base = audit(spec("baseline_rdt"), synthetic_demo_file)
    weighted = audit(spec("fix_loss_weight"), synthetic_demo_file)
    assert sum(g.mean_loss_share for g in weighted.groups.values()) == pytest.approx(1.0)
    assert weighted.groups["pos"].mean_loss_share > 50 * base.groups["pos"].mean_loss_share


def test_constant_group_is_reported_not_ranked(tmp_path):
    import numpy as np
    from ablation.data import write_demo_file
    from tests.conftest import synthetic_episode, synthetic_meta
    rng = np.random.default_rng(0)
    eps = [synthetic_episode(rng, T=20, rotate=False) for _ in range(3)]
    p = tmp_path / "norot.hdf5"
    write_demo_file(p, eps, synthetic_meta())
    r = audit(spec("native_delta"), p)
    assert r.groups["rot"].constant
    assert any("constant group: 'rot'" in w for w in r.warnings)


def test_cli_json_and_table(synthetic_demo_file):
    cmd = ["audit", "--spec", str(EXPERIMENTS_DIR / "baseline_rdt.yaml"), "--data", str(synthetic_demo_file)]
    out = cli_here(*cmd, "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    d = json.loads(out.stdout)
    assert d["flagged"] and set(d["groups"]) == {"pos", "rot", "grip"}
    table = cli_here(*cmd).stdout
    assert "WARNING: scale mismatch" in table and "loss dilution factor: 0.078" in table
    bad = cli_here("audit", "--spec", str(EXPERIMENTS_DIR / "baseline_rdt.yaml"), "--data", "missing.hdf5")
    assert bad.returncode == 2 and "missing.hdf5: demo file not found" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_nearly_constant_orientation_is_flagged(tmp_path):
    """An expert that barely turns: absolute 6D orientation varies far under 1% of its magnitude."""
    import numpy as np
    from ablation.data import write_demo_file
    from tests.conftest import synthetic_episode, synthetic_meta
    rng = np.random.default_rng(0)
    p = tmp_path / "barely.hdf5"
    # one episode: the start orientation is not varied across episodes, only the tiny turning inside it
    write_demo_file(p, [synthetic_episode(rng, T=40, rot_scale=1e-4)], synthetic_meta())
    r = audit(spec("baseline_rdt"), p)
    assert r.groups["rot"].near_constant and not r.groups["rot"].constant
    assert any("nearly constant group: 'rot'" in w for w in r.warnings)
    assert not r.groups["pos"].near_constant
    # with real turning (the default synthetic data) it is not flagged
    assert not audit(spec("baseline_rdt"), _turning(tmp_path)).groups["rot"].near_constant


def _turning(tmp_path):
    import numpy as np
    from ablation.data import write_demo_file
    from tests.conftest import synthetic_episode, synthetic_meta
    p = tmp_path / "turning.hdf5"
    write_demo_file(p, [synthetic_episode(np.random.default_rng(1), T=20, rot_scale=0.3) for _ in range(3)],
                    synthetic_meta())
    return p
