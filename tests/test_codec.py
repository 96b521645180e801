"""Codec chain: exact round trips for every representation x layout x normaliser, golden outputs,
env-action conversion, strict storage."""
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ablation import rotation as R
from ablation.codec import CONTROLLER_POS_SCALE_M, ActionCodec, CodecError, SlotLayout
from ablation.representations import REPRESENTATIONS, Representation, representation
from ablation.spec import CodecSpec
from tests.codec_cases import combo_id, combos, fit_fixed, fixed_views

ROUND_TRIP_TOL = 1e-6
GOLDEN = json.loads((Path(__file__).parent / "golden" / "codec_golden.json").read_text())
CASES = combos()

# allow_subnormal=False: the test process flushes denormals (torch.set_flush_denormal, set once by the
# process entry point as the CLI does), and hypothesis refuses subnormal floats in such a process.
finite = st.floats(-5, 5, allow_nan=False, allow_infinity=False, width=64, allow_subnormal=False)


def random_phys(rep: Representation, data: np.ndarray) -> np.ndarray:
    """Physical vectors of the representation built from arbitrary numbers (valid 6D for rot6d)."""
    x = data[:, :rep.dim].copy()
    if rep.rotation == "rot6d":
        x[:, 3:9] = R.matrix_to_rot6d(R.axis_angle_to_matrix(data[:, 3:6]))
    return x


@pytest.mark.parametrize("spec", CASES, ids=combo_id)
@settings(max_examples=25, deadline=None)
@given(data=arrays(np.float64, (6, 10), elements=finite))
def test_round_trip_exact(spec, data):
    codec, _, _ = fit_fixed(spec, FIXED_VIEWS)
    x = random_phys(codec.rep, data)
    y = codec.encode(x)
    assert y.shape == (6, codec.width)
    # unfilled slots stay exactly zero
    assert np.all(y[:, codec.action_mask == 0] == 0)
    np.testing.assert_allclose(codec.decode(y), x, atol=ROUND_TRIP_TOL, rtol=0)
    s = data[:, :10].copy()
    s[:, 3:9] = R.matrix_to_rot6d(R.axis_angle_to_matrix(data[:, 3:6]))
    np.testing.assert_allclose(codec.decode_state(codec.encode_state(s)), s, atol=ROUND_TRIP_TOL, rtol=0)


FIXED_VIEWS = fixed_views()


@pytest.mark.parametrize("spec", CASES, ids=combo_id)
def test_golden_outputs(spec):
    codec, phys, states = fit_fixed(spec, FIXED_VIEWS)
    g = GOLDEN[combo_id(spec)]
    rows = [0, 17, 40]
    assert codec.layout.slots.tolist() == g["slots"]
    np.testing.assert_allclose(codec.layout.take(codec.encode(phys[rows])), g["encoded"], atol=1e-9, rtol=1e-9)
    np.testing.assert_allclose(codec.state_layout.take(codec.encode_state(states[rows])), g["state"],
                               atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("spec", CASES, ids=combo_id)
def test_save_load_round_trip(spec, tmp_path):
    codec, phys, _ = fit_fixed(spec, FIXED_VIEWS)
    codec.save(tmp_path / "codec.json")
    back = ActionCodec.load(tmp_path / "codec.json", expected=spec)
    np.testing.assert_array_equal(back.encode(phys), codec.encode(phys))


@settings(max_examples=50, deadline=None)
@given(a=arrays(np.float64, (4, 7), elements=st.floats(-1, 1, allow_nan=False, width=64, allow_subnormal=False)),
       pose=arrays(np.float64, (6,), elements=st.floats(-3, 3, allow_nan=False, width=64, allow_subnormal=False)))
def test_delta_representations_give_back_the_env_action(a, pose):
    """Train transform then inverse output transform returns the raw actions (domain pitfall 3)."""
    ee_pos, ee_rot = pose[:3], R.axis_angle_to_matrix(pose[3:])
    # commanded targets, as robosuite's OSC sets them: p + 0.05 a, R_delta(0.5 a) R
    tgt_pos = ee_pos + a[:, :3] * CONTROLLER_POS_SCALE_M
    tgt_rot = R.axis_angle_to_matrix(a[:, 3:6] * 0.5) @ ee_rot
    big = np.linalg.norm(a[:, 3:6] * 0.5, axis=1) > np.pi - 1e-3  # axis-angle is ambiguous at pi
    # every registered representation with every rotation it carries: a new class is covered here
    for kind, rot in [(k, r) for k, cls in REPRESENTATIONS.items() for r in cls.rotations]:
        rep = representation(kind, rot)
        phys = rep.from_demo(a, np.tile(ee_pos, (4, 1)), np.tile(ee_rot, (4, 1, 1)), tgt_pos, tgt_rot)
        env = rep.to_env(phys, ee_pos, ee_rot)
        np.testing.assert_allclose(env.raw[~big], a[~big], atol=1e-6, err_msg=f"{kind}/{rot}")
        assert env.clip_fraction == 0.0


def test_representation_registry_errors_hold_and_chunk_poses():
    assert set(REPRESENTATIONS) == {"native", "metric_delta", "seed_mix", "abs_pose", "abs_pose_cmd", "seed_mix_cmd"}
    with pytest.raises(ValueError, match="unknown representation 'velocity'"):
        representation("velocity", "axis_angle")
    with pytest.raises(ValueError, match="set codec.rotation: rot6d"):
        representation("seed_mix", "axis_angle")
    assert isinstance(representation("abs_pose", "rot6d"), Representation)
    # hold: steps go to 0, absolute targets are kept
    last = np.arange(10, dtype=np.float64) + 1
    np.testing.assert_array_equal(representation("seed_mix", "rot6d").hold(last), [0, 0, 0, *last[3:]])
    np.testing.assert_array_equal(representation("abs_pose", "rot6d").hold(last), last)
    np.testing.assert_array_equal(representation("metric_delta", "axis_angle").hold(last[:7]), [0] * 6 + [7])
    # chunk poses: step h>0 of an absolute group is the target of step h-1; deltas keep the start pose
    rot_b = R.axis_angle_to_matrix(np.array([0.0, 0.0, 0.3]))
    phys = np.concatenate([[0.1, 0.2, 0.3], R.matrix_to_rot6d(rot_b), [1.0]])[None, None].repeat(2, axis=1)
    pos0, rot0 = np.zeros((1, 2, 3)), np.tile(np.eye(3), (1, 2, 1, 1))
    p, r = representation("abs_pose", "rot6d").chunk_poses(pos0, rot0, phys)
    np.testing.assert_allclose(p[0, 1], [0.1, 0.2, 0.3]); np.testing.assert_allclose(r[0, 1], rot_b, atol=1e-12)
    p, r = representation("seed_mix", "rot6d").chunk_poses(pos0, rot0, phys)
    np.testing.assert_array_equal(p, pos0); np.testing.assert_allclose(r[0, 1], rot_b, atol=1e-12)
    # the position scale: native 1.0 = 5 cm; metres elsewhere; absolute step = target - pose
    np.testing.assert_allclose(representation("native", "axis_angle").pos_m(np.ones(3)), [0.05] * 3)
    np.testing.assert_allclose(representation("abs_pose", "rot6d").step_m(np.ones(3), np.full(3, 0.25)), [0.75] * 3)


def test_clip_report():
    rep = representation("seed_mix", "rot6d")
    eye = np.eye(3)
    # the seed's symptom: a predicted position of [0.243, 0.287, 0.116] m as a "delta"
    phys = np.concatenate([[0.243, 0.287, 0.116], R.matrix_to_rot6d(eye), [1.0]])[None]
    env = rep.to_env(phys, np.zeros(3), eye)
    np.testing.assert_allclose(env.raw[0, :3], [4.86, 5.74, 2.32])
    np.testing.assert_allclose(env.clipped[0, :3], [1, 1, 1])
    assert env.clip_fraction == pytest.approx(0.5)
    assert env.max_excess == pytest.approx(4.74)


def test_layout_slots_match_rdt():
    assert SlotLayout.for_actions("rdt_eef", representation("seed_mix", "rot6d")).slots.tolist() == \
        [30, 31, 32, 33, 34, 35, 36, 37, 38, 10]
    assert SlotLayout.for_actions("rdt_velocity", representation("metric_delta", "axis_angle")).slots.tolist() == \
        [39, 40, 41, 42, 43, 44, 10]
    with pytest.raises(CodecError, match="no slots for rotation 'rot6d'"):
        SlotLayout.for_actions("rdt_velocity", representation("abs_pose", "rot6d"))


def test_minmax_bounds_training_data_and_guards_constant_dims():
    spec = CodecSpec(representation="native", normalizer="minmax")
    views = FIXED_VIEWS
    codec, phys, _ = fit_fixed(spec, views)
    y = codec.layout.take(codec.encode(phys))
    assert y.min() >= -1 - 1e-12 and y.max() <= 1 + 1e-12
    const = phys.copy()
    const[:, 3:6] = 0.0  # an expert that never rotates
    c2 = ActionCodec.fit(spec, const, np.zeros((len(const), 10)))
    y2 = c2.encode(const)
    assert np.all(np.isfinite(y2)) and np.all(y2[:, 3:6] == 0)
    np.testing.assert_allclose(c2.decode(y2), const, atol=1e-12)
    assert c2.bounded


def test_load_is_strict(tmp_path):
    spec = CodecSpec(representation="native", normalizer="meanstd")
    codec, _, _ = fit_fixed(spec, FIXED_VIEWS)
    path = tmp_path / "codec.json"
    with pytest.raises(CodecError, match="codec statistics file is missing"):
        ActionCodec.load(path)
    codec.save(path)
    with pytest.raises(CodecError, match="codec.normalizer: file has 'meanstd', spec wants 'minmax'"):
        ActionCodec.load(path, expected=CodecSpec(representation="native", normalizer="minmax"))
    d = json.loads(path.read_text())
    d["format_version"] = 0
    path.write_text(json.dumps(d))
    with pytest.raises(CodecError, match="format_version 0"):
        ActionCodec.load(path)
    d["format_version"] = 1
    d["action"]["scale"] = d["action"]["scale"][:-1]
    path.write_text(json.dumps(d))
    with pytest.raises(CodecError, match=r"action\.scale: expected 7 finite numbers"):
        ActionCodec.load(path)
    path.write_text("{not json")
    with pytest.raises(CodecError, match="not valid JSON"):
        ActionCodec.load(path)


@settings(max_examples=100, deadline=None)
@given(aa=arrays(np.float64, (3,), elements=st.floats(-3.0, 3.0, allow_nan=False, width=64, allow_subnormal=False)))
def test_rotation_conversions(aa):
    m = R.axis_angle_to_matrix(aa)
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(R.rot6d_to_matrix(R.matrix_to_rot6d(m)), m, atol=1e-12)
    np.testing.assert_allclose(R.quat_to_matrix(R.matrix_to_quat(m)), m, atol=1e-12)
    np.testing.assert_allclose(R.axis_angle_to_matrix(R.matrix_to_axis_angle(m)), m, atol=1e-9)
