"""Needs read before training: arms that only serve untestable comparisons are not run."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ablation.analysis import ArmFacts
from ablation.data import write_demo_file
from ablation.hypothesis import HYPOTHESES_DIR, load_hypothesis
from ablation.needs import (NEEDS, Need, demo_rotation_spread_deg, plan_time_facts, register_need, unmet_needs,
                            untestable_arms)
from ablation.rules import DEFAULT_RULES
from ablation.spec import SpecError
from tests.conftest import synthetic_episode, synthetic_meta

H1 = ["H1_scale_absolute", "H1_scale_relative", "H1_mechanism"]
ARMS = ["baseline_rdt", "fix_pos_cm", "fix_rot_small", "fix_pos_cm_rot_small", "fix_loss_weight_1e4"]


def _facts(spread: float | None) -> dict[str, ArmFacts]:
    return {a: ArmFacts(rot_spread_deg=spread, pretrained=False) for a in ARMS}


def test_constant_rotation_drops_only_the_rotation_scaled_arms():
    hyps = [load_hypothesis(h) for h in H1]
    dropped = untestable_arms(hyps, ARMS, _facts(1.9))
    assert set(dropped) == {"fix_rot_small", "fix_pos_cm_rot_small"}
    assert "1.9 deg" in dropped["fix_rot_small"] and "untestable here" in dropped["fix_rot_small"]
    # the control and the arms of testable comparisons stay, whatever else they appear in
    assert untestable_arms(hyps, ARMS, _facts(30.0)) == {}


def test_unmeasured_spread_keeps_the_arms():
    """No demo file (its run will fail and say why): nothing is dropped on a guess."""
    assert untestable_arms([load_hypothesis(h) for h in H1], ARMS, _facts(None)) == {}


def test_pretrained_slots_need_is_read_from_the_specs(tmp_path):
    hyp = load_hypothesis("H3_slot_semantics")
    arms = sorted({a for c in hyp.comparisons for a in (c.arm, c.control)})
    cold = {a: ArmFacts(rot_spread_deg=10.0, pretrained=False) for a in arms}
    assert set(untestable_arms([hyp], arms, cold)) == set(arms)
    warm = {a: ArmFacts(rot_spread_deg=10.0, pretrained=True) for a in arms}
    assert untestable_arms([hyp], arms, warm) == {}


@pytest.mark.parametrize("rotate, low, high", [(False, 0.0, 1e-6), (True, 5.0, 180.0)])
def test_spread_is_measured_from_the_demo_file(tmp_path, rotate, low, high):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.hdf5"
    write_demo_file(path, [synthetic_episode(rng, T=60, rotate=rotate, rot_scale=0.3) for _ in range(3)],
                    synthetic_meta())
    spread = demo_rotation_spread_deg(path)
    assert low <= spread <= high, spread
    spec = SimpleNamespace(model=SimpleNamespace(pretrained=None), train=SimpleNamespace(init_from=None))
    facts = plan_time_facts({"a": SimpleNamespace(spec=spec)}, {"a": [path, path]})
    assert facts["a"].rot_spread_deg == pytest.approx(spread) and facts["a"].pretrained is False


def test_arms_dropped_before_training_are_judged_on_the_demos_spread():
    """They never ran, so have no audit: the spread measured by the arms that ran stands for them, and
    the comparison reads 'untestable' with the measured reason, not 'not measured'."""
    from ablation.analysis import judge, with_demo_spread

    ran = {"baseline_rdt": ArmFacts(rot_spread_deg=1.9, pretrained=False),
           "fix_pos_cm": ArmFacts(rot_spread_deg=1.7, pretrained=False)}
    facts = with_demo_spread(ran, {"fix_rot_small": "untestable here", "fix_pos_cm_rot_small": "untestable here"})
    assert facts["fix_rot_small"].rot_spread_deg == 1.9 and facts["baseline_rdt"] is ran["baseline_rdt"]
    assert with_demo_spread({}, {"fix_rot_small": "x"}) == {}  # nothing measured: nothing invented
    res = judge([load_hypothesis("H1_scale_absolute")], [], facts, look_index=0, looks=[20])
    second = next(r for r in res if r.arm == "fix_pos_cm_rot_small")
    assert second.word == "untestable" and "1.9 deg" in second.why, second.why


def test_needs_are_registered_classes_with_a_check_and_a_message():
    """Each need is one registered class; a hypothesis file may name only registered ones, and the
    measured reason names the arms or the figure that fall short."""
    assert set(NEEDS) == {"rotation_varies", "pretrained_slots"}
    assert all(isinstance(n, Need) and n.name == key and n.description for key, n in NEEDS.items())
    flat = {"a": ArmFacts(rot_spread_deg=1.2), "b": ArmFacts(rot_spread_deg=3.0, pretrained=True)}
    assert unmet_needs(("rotation_varies",), ["a", "b"], flat) == [
        "the demos' rotation spread is 3.0 deg (< 5 deg): the expert barely turns on this task, so scaling "
        "rotation cannot matter here"]
    assert unmet_needs(("rotation_varies",), ["a"], {"a": ArmFacts()}) == [
        "the demos' rotation spread was not measured (no audit)"]
    assert unmet_needs(("rotation_varies",), ["a"], {"a": ArmFacts(rot_spread_deg=30.0)}) == []
    # a looser rule moves the threshold
    assert unmet_needs(("rotation_varies",), ["a", "b"], flat, DEFAULT_RULES.with_overrides(
        {"rot_spread_min_deg": 2.0})) == []
    cold = unmet_needs(("pretrained_slots",), ["a", "b"], flat)
    assert cold == ["a start(s) from random weights: slot positions have no meaning before pretraining (the arms "
                    "fine-tune a network pretrained with meanings in its action slots (model.pretrained or "
                    "train.init_from))"]
    with pytest.raises(ValueError, match="needs no_such_need not known; known: rotation_varies, pretrained_slots"):
        unmet_needs(("no_such_need",), ["a"], flat)


def test_a_need_name_is_registered_once_and_a_file_naming_an_unknown_need_is_refused(tmp_path):
    with pytest.raises(ValueError, match="registered twice"):
        register_need(type("Again", (Need,), {"name": "rotation_varies", "description": "x"}))
    text = (HYPOTHESES_DIR / "H1_scale_relative.yaml").read_text()
    assert "rotation_varies" in text
    bad = tmp_path / "H_bad.yaml"
    bad.write_text(text.replace("rotation_varies", "rotation_variez"))
    with pytest.raises(SpecError, match="needs: rotation_variez not known; known: rotation_varies, pretrained_slots"):
        load_hypothesis(str(bad))
