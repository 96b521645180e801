"""H3 made testable (issue 24 part 4): clean commanded labels, normalisers frozen from the pretraining
demos, pretraining specs x seeds in a plan, the positive-control rule and the pose-regression signature."""
from __future__ import annotations

import numpy as np
import pytest

from ablation import rotation as R
from ablation.analysis import ComparisonResult, bound_of
from ablation.codec import ActionCodec
from ablation.data import DemoFileError, episode_view, physical_actions, prepare_data, read_demo_file, write_demo_file
from ablation.errors import UserError
from ablation.frozen_norm import prepare_frozen_data
from ablation.hypothesis import Hypothesis, load_hypothesis
from ablation.arms import Arm
from ablation.pose_fit import pose_regression, reads_as
from ablation.pretrain import marker_spec, pretrain_run_seed
from ablation.representations import CONTROLLER_POS_SCALE_M, representation
from ablation.rules import DEFAULT_RULES
from ablation.spec import PretrainStage, load_plan, resolve_spec, spec_path
from ablation.verdicts import hypothesis_verdict, positive_control_check

from .conftest import synthetic_episode, synthetic_meta


# ----------------------------------------------------------------------------- clean labels

def _noisy_view(seed: int = 0):
    """A synthetic episode whose reached poses carry execution noise (as DART's), obs before each step."""
    rng = np.random.default_rng(seed)
    ep = synthetic_episode(rng, T=40)
    ep.obs["ee_pos"] = ep.obs["ee_pos"] + 0.01 * rng.standard_normal(ep.obs["ee_pos"].shape)
    return episode_view(ep, "before")


def test_commanded_pose_labels_are_the_current_pose_plus_the_clean_step():
    v = _noisy_view()
    x = physical_actions(v, representation("abs_pose_cmd", "rot6d"))
    np.testing.assert_allclose(x[:, :3], v.ee_pos + v.actions[:, :3] * CONTROLLER_POS_SCALE_M, atol=1e-12)
    want_rot = R.axis_angle_to_matrix(v.actions[:, 3:6] * 0.5) @ v.ee_rot
    np.testing.assert_allclose(R.rot6d_to_matrix(x[:, 3:9]), want_rot, atol=1e-9)
    # the reached-pose labels (AbsPose) carry the noise; the commanded ones do not
    old = physical_actions(v, representation("abs_pose", "rot6d"))
    assert np.abs(old[:, :3] - x[:, :3]).max() > 5e-3


@pytest.mark.parametrize("kind", ["abs_pose_cmd", "seed_mix_cmd"])
def test_commanded_labels_decode_to_the_clean_action(kind):
    v = _noisy_view(1)
    rep = representation(kind, "rot6d")
    env = rep.to_env(physical_actions(v, rep), v.ee_pos, v.ee_rot)
    np.testing.assert_allclose(env.raw, v.actions, atol=1e-9)


def test_the_two_pretraining_representations_differ_only_in_the_position_slots():
    v = _noisy_view(2)
    pose = physical_actions(v, representation("abs_pose_cmd", "rot6d"))
    step = physical_actions(v, representation("seed_mix_cmd", "rot6d"))
    np.testing.assert_array_equal(pose[:, 3:], step[:, 3:])          # rotation 6D and gripper: identical
    np.testing.assert_allclose(step[:, :3], v.actions[:, :3] * CONTROLLER_POS_SCALE_M)
    assert not np.allclose(pose[:, :3], step[:, :3])


# ----------------------------------------------------------------------------- frozen normalisers

@pytest.fixture(scope="module")
def two_files(tmp_path_factory):
    """A 'pretraining' file and a 'target task' file whose positions sit elsewhere (other statistics)."""
    d = tmp_path_factory.mktemp("frozen")
    rng = np.random.default_rng(3)
    a = [synthetic_episode(rng, T=int(rng.integers(30, 40))) for _ in range(8)]
    b = [synthetic_episode(rng, T=int(rng.integers(30, 40))) for _ in range(5)]
    for ep in b:
        ep.actions[:, :3] *= 0.5                                    # smaller steps than pretraining's
        ep.obs["ee_pos"] = ep.obs["ee_pos"] + np.array([0.2, -0.1, 0.0])
    write_demo_file(d / "pre.hdf5", a, synthetic_meta())
    write_demo_file(d / "target.hdf5", b, synthetic_meta())
    return d / "pre.hdf5", d / "target.hdf5"


def test_frozen_codec_is_the_pretraining_codec_and_windows_are_the_targets(two_files):
    pre, target = two_files
    spec = resolve_spec(spec_path("h3_finetune"))
    on_pre = prepare_data(spec.data, spec.codec, pre)                 # what pretraining on `pre` fits
    frozen = prepare_frozen_data(spec.data, spec.codec, target, pre)
    own = prepare_data(spec.data, spec.codec, target)                 # what an unfrozen run would fit
    assert frozen.codec.to_json() == on_pre.codec.to_json()
    assert frozen.codec.to_json() != own.codec.to_json()
    np.testing.assert_array_equal(frozen.obs_fit, on_pre.train.obs)   # the observation normaliser's input
    assert frozen.train_ids == own.train_ids and len(frozen.train) == len(own.train)
    np.testing.assert_array_equal(frozen.train.phys_actions, own.train.phys_actions)  # the target's demos
    # the target's smaller steps fill less of [-1, 1] under the frozen min-max than under its own
    pos = frozen.codec.group_slots["pos"]
    assert np.abs(frozen.train.actions[..., pos]).max() < np.abs(own.train.actions[..., pos]).max()


def test_unresolved_marker_is_a_clear_error(two_files):
    spec = resolve_spec(spec_path("h3_finetune"))
    with pytest.raises(DemoFileError, match="plan marker"):
        prepare_frozen_data(spec.data, spec.codec, two_files[1], "@pretrain")


def test_frozen_normaliser_reaches_the_trained_policy(two_files, tmp_path):
    from ablation.spec import with_overrides
    from ablation.train import train

    pre, target = two_files
    spec = with_overrides(resolve_spec(spec_path("h3_finetune")),
                          [f"data.norm_stats_from={pre}", "train.steps=2", "train.eval_every=2", "model.size=tiny",
                           "train.batch_size=8", "train.device=cpu", "train.compile=false"])
    res = train(spec, target, tmp_path / "run", progress=False)
    stats = ActionCodec.load(res.checkpoint_dir / "codec.json")
    assert stats.to_json() == prepare_data(spec.data, spec.codec, pre).codec.to_json()


# ----------------------------------------------------------------------------- plan: pretraining specs x seeds

def test_markers_and_pretraining_runs():
    assert marker_spec("@pretrain", "pretrain_abs_eef") == "pretrain_abs_eef"
    assert marker_spec("@pretrain:pretrain_abs_cmd", None) == "pretrain_abs_cmd"
    assert marker_spec("/some/bundle", "x") is None and marker_spec(None, "x") is None
    assert [pretrain_run_seed(s, (0, 1)) for s in range(4)] == [0, 1, 0, 1]
    assert pretrain_run_seed(3, ()) is None
    with pytest.raises(ValueError, match="not both"):
        PretrainStage(spec="a", specs=("b",), tasks=(1,))
    with pytest.raises(ValueError, match="distinct"):
        PretrainStage(specs=("a",), seeds=(0, 0), tasks=(1,))


def test_seed_sets_reach_only_their_seed():
    spec = resolve_spec(spec_path("h3_after_abs"))
    arm = Arm("h3_after_abs", spec, (0, 1), seed_sets=((0, ("train.init_from=/p/run0",)),
                                                        (1, ("train.init_from=/p/run1",))))
    assert arm.spec_for(0).train.init_from == "/p/run0" and arm.spec_for(1).train.init_from == "/p/run1"
    assert arm.spec_for(0).hash() != arm.spec_for(1).hash()


def test_slot_semantics_plan_varies_only_what_pretraining_put_in_the_slots():
    plan = load_plan("slot_semantics")
    assert len(plan.pretrain.seeds) >= 2 and len(plan.pretrain.specs) == 2
    pre = [resolve_spec(spec_path(n)) for n in plan.pretrain.specs]
    assert pre[0].data == pre[1].data and pre[0].train == pre[1].train      # same demos, keys, budget
    assert {p.codec.representation for p in pre} == {"abs_pose_cmd", "seed_mix_cmd"}
    arms = [a for h in plan.hypotheses for a in load_hypothesis(h).arms()] + [e.spec for e in plan.entries]
    specs = {a: resolve_spec(spec_path(a)) for a in arms}
    for s in specs.values():   # one fine-tuning representation, normaliser and observation set for every arm
        assert s.codec == specs["h3_scratch"].codec and s.codec.normalizer == "minmax"
        assert s.data == specs["h3_scratch"].data and s.data.norm_stats_from == "@pretrain"
        assert s.data.obs_keys == pre[0].data.obs_keys
    assert {s.train.steps_scale for s in specs.values()} == {0.25, 1.0, 4.0}
    assert {marker_spec(s.train.init_from, None) for s in specs.values()} == {*plan.pretrain.specs, None}


# ----------------------------------------------------------------------------- positive control

H = Hypothesis.model_validate({
    "name": "Hpc", "title": "t", "claim": "c", "rule": "r", "decide": "any", "positive_control": "good",
    "comparisons": [{"arm": "clash", "control": "good", "expect": "worse"}],
    "outcomes": {"supported": "S", "not_supported": "NS", "untestable": "U"}})


def _comp(word: str, rate_arm: float, rate_control: float) -> ComparisonResult:
    r = ComparisonResult("Hpc", "clash", "good", "worse", "", word, estimate=rate_arm - rate_control,
                         rate_arm=rate_arm, rate_control=rate_control, p_holm=0.01, lo=-0.5, hi=-0.1)
    r.bound = bound_of(rate_arm, rate_control, "worse", DEFAULT_RULES)
    return r


@pytest.mark.parametrize("rate_control, want", [(0.62, "SUPPORTED"), (0.45, "UNTESTABLE HERE")])
def test_positive_control_below_half_makes_the_hypothesis_untestable(rate_control, want):
    v = hypothesis_verdict(H, [_comp("worse", 0.1, rate_control)], None, "")
    assert v.word == want
    if want == "UNTESTABLE HERE":
        assert "positive control good reached only 45%" in v.meaning and "50%" in v.meaning
    else:
        assert any("positive control good: 62%" in line for line in v.lines)


def test_positive_control_without_data_is_untestable_and_unknown_arm_is_rejected(tmp_path):
    met, line = positive_control_check(H, [], DEFAULT_RULES)
    assert met is False and "in no comparison with data" in line
    assert positive_control_check(H.model_copy(update={"positive_control": None}), [], DEFAULT_RULES) == (None, "")
    bad = tmp_path / "Hbad.yaml"
    bad.write_text("title: t\nclaim: c\nrule: r\npositive_control: nope\n"
                   "comparisons:\n  - {arm: fix_minmax, control: baseline_rdt, expect: better}\n")
    with pytest.raises(UserError, match="positive_control: spec 'nope' not found"):
        load_hypothesis(str(bad))


# A positive control trained beside the comparisons (the rotation plan's min-max): the seed's claim
# "shrinking rotation fixes it" against the baseline, both at the floor.
HB = Hypothesis.model_validate({
    "name": "Hrel", "title": "t", "claim": "c", "rule": "r", "decide": "any", "positive_control": "fix_minmax",
    "needs": ["rotation_varies"],
    "comparisons": [{"arm": "fix_rot_small", "control": "baseline_rdt", "expect": "better"}],
    "outcomes": {"supported": "S", "not_supported": "NS", "untestable": "U"}})


def _floor_comp(rate_arm: float = 0.0, rate_control: float = 0.02) -> ComparisonResult:
    r = ComparisonResult("Hrel", "fix_rot_small", "baseline_rdt", "better", "", "no meaningful difference",
                         estimate=rate_arm - rate_control, rate_arm=rate_arm, rate_control=rate_control,
                         p_holm=0.001, lo=-0.07, hi=0.05)
    r.bound = bound_of(rate_arm, rate_control, "better", DEFAULT_RULES)
    return r


@pytest.mark.parametrize("pc_rate, want", [(0.9, "NOT SUPPORTED"), (0.3, "UNTESTABLE HERE"), (None, "UNTESTABLE HERE")])
def test_a_met_positive_control_lets_a_non_difference_at_the_floor_count(pc_rate, want):
    comps = [_floor_comp()]
    assert comps[0].bound == "floor"
    rates = {} if pc_rate is None else {"fix_minmax": pc_rate, "baseline_rdt": 0.02}
    from ablation.verdicts import excuse_floors, comparison_line

    excuse_floors([HB], comps, rates, DEFAULT_RULES)
    v = hypothesis_verdict(HB, comps, None, "", DEFAULT_RULES, rates)
    assert v.word == want
    if want == "NOT SUPPORTED":
        assert comps[0].bound == "" and "fix_minmax: 90%" in comps[0].bound_excused
        assert "tests the claim" in comparison_line(comps[0]) and v.meaning == "NS"
    else:
        assert comps[0].bound == "floor" and not comps[0].bound_excused
        why = "reached only 30%" if pc_rate else "has no finished runs"
        assert why in v.meaning


def test_a_met_positive_control_does_not_excuse_the_ceiling():
    from ablation.verdicts import excuse_floors

    comps = [_floor_comp(0.97, 0.98)]
    assert comps[0].bound == "ceiling"
    excuse_floors([HB], comps, {"fix_minmax": 0.95}, DEFAULT_RULES)
    assert comps[0].bound == "ceiling"
    assert hypothesis_verdict(HB, comps, None, "", DEFAULT_RULES, {"fix_minmax": 0.95}).word == "UNTESTABLE HERE"


def test_a_positive_control_beside_the_comparisons_is_trained_and_falls_with_their_needs():
    from ablation.needs import ArmFacts, untestable_arms

    assert HB.arms() == ["baseline_rdt", "fix_rot_small", "fix_minmax"]
    flat = {a: ArmFacts(rot_spread_deg=1.9) for a in HB.arms()}
    assert set(untestable_arms([HB], HB.arms(), flat)) == set(HB.arms())
    turning = {a: ArmFacts(rot_spread_deg=91.0) for a in HB.arms()}
    assert untestable_arms([HB], HB.arms(), turning) == {}


# ----------------------------------------------------------------------------- the regression signature

def test_regression_tells_a_pose_from_a_goal_directed_step():
    rng = np.random.default_rng(0)
    pose = np.array([-0.07, -0.08, 0.2]) + np.array([0.05, 0.15, 0.08]) * rng.standard_normal((500, 3))
    as_pose = pose + 0.002 * rng.standard_normal(pose.shape)
    goal = np.array([0.0, 0.25, 0.1])
    step = 0.1 * (goal - pose)                      # a step toward a goal: linear in the pose, R^2 = 1
    fp, fs = pose_regression(as_pose, pose), pose_regression(step, pose)
    assert fp["pose_fit/slope"] == pytest.approx(1.0, abs=0.02) and fp["pose_fit/intercept_m"] < 0.005
    assert fp["pose_fit/mag_ratio"] == pytest.approx(1.0, abs=0.05) and reads_as(fp) == "pose"
    assert fs["pose_fit/r2"] == pytest.approx(1.0)  # R^2 alone would call the step a pose
    assert fs["pose_fit/slope"] == pytest.approx(-0.1) and fs["pose_fit/mag_ratio"] < 0.25
    assert reads_as(fs) == "step"
    const = pose_regression(np.tile([0.243, 0.287, 0.116], (500, 1)), pose)
    assert const["pose_fit/slope"] == pytest.approx(0.0, abs=1e-9)
    assert const["pose_fit/intercept_m"] == pytest.approx(np.linalg.norm([0.243, 0.287, 0.116]))


def test_regression_skips_an_axis_without_spread_and_checks_shapes():
    pose = np.zeros((10, 3))
    pose[:, 0] = np.linspace(0, 1, 10)
    fit = pose_regression(pose * 2.0, pose)
    assert fit["pose_fit/slope_x"] == pytest.approx(2.0) and np.isnan(fit["pose_fit/slope_y"])
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        pose_regression(np.zeros((4, 2)), np.zeros((4, 2)))


def test_arms_are_pointed_at_the_pretraining_run_of_their_seed():
    from ablation.plan_pretrain import point_at_pretraining

    st = load_plan("slot_semantics").pretrain
    bundles = {(n, s): f"/pre/{n}/seed{s}" for n in st.specs for s in st.seeds}
    abs_arm = point_at_pretraining(Arm("h3_after_abs", resolve_spec(spec_path("h3_after_abs")), (0, 1, 2, 3)),
                                   st, bundles, "/pre/demos.hdf5")
    assert [abs_arm.spec_for(s).train.init_from for s in range(4)] == \
        [f"/pre/pretrain_abs_cmd/seed{s % 2}" for s in range(4)]
    assert abs_arm.spec_for(3).data.norm_stats_from == "/pre/demos.hdf5"
    scratch = point_at_pretraining(Arm("h3_scratch", resolve_spec(spec_path("h3_scratch")), (0, 1)),
                                   st, bundles, "/pre/demos.hdf5")
    assert scratch.spec_for(1).train.init_from is None and scratch.spec_for(1).data.norm_stats_from == "/pre/demos.hdf5"
    # the single-spec form, as plans wrote it before: one bundle for every seed
    one = PretrainStage(spec="pretrain_abs_eef", tasks=(1,))
    old = point_at_pretraining(Arm("pre_abs_eef", resolve_spec(spec_path("pre_abs_eef")), (0, 1)), one,
                               {("pretrain_abs_eef", None): "/pre/b"}, "/pre/demos.hdf5")
    assert old.seed_sets == () and old.spec.train.init_from == "/pre/b" and old.spec.data.norm_stats_from is None
