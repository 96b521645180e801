"""The scripted expert: BDDL goal parsing (no simulator) and one task per suite in the simulator.

The parsing tests read the BDDL files shipped in the libero package (found without importing it:
importing `libero.libero` needs its config file). The simulator tests run 2 init states per task
with the suite's own step budget.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ablation.sim.bddl_goal import Articulate, PickPlace, Unsupported, parse_bddl, parse_sexpr, plan_goal


def _bddl_root() -> Path:
    spec = importlib.util.find_spec("libero")
    # A fail, not a skip: scripts/setup.sh installs hf-libero, so a missing package is a broken set-up
    # that would otherwise hide these tests on a fresh clone.
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the libero package (hf-libero) is not installed: run bash scripts/setup.sh", pytrace=False)
    root = Path(list(spec.submodule_search_locations)[0]) / "libero" / "bddl_files"
    if not root.is_dir():
        pytest.fail(f"no BDDL files under {root}: reinstall hf-libero (bash scripts/setup.sh)", pytrace=False)
    return root


def _bddl(suite: str, stem: str) -> Path:
    p = _bddl_root() / suite / f"{stem}.bddl"
    assert p.is_file(), p
    return p


# ----------------------------------------------------------------------------- parsing, no simulator

def test_parse_in_region_object_suite():
    p = parse_bddl(_bddl("libero_object", "pick_up_the_alphabet_soup_and_place_it_in_the_basket"))
    assert [(g.name, g.args) for g in p.goal] == [("in", ("alphabet_soup_1", "basket_1_contain_region"))]
    assert "basket_1" in p.objects and p.is_movable("alphabet_soup_1")
    assert p.regions["basket_1_contain_region"].target == "basket_1"
    assert "alphabet soup" in p.language.lower()
    (step,) = plan_goal(p)
    assert isinstance(step, PickPlace)
    assert (step.obj, step.target, step.relation, step.target_owner, step.target_is_region) == \
        ("alphabet_soup_1", "basket_1_contain_region", "in", "basket_1", True)


def test_parse_on_object_spatial_suite():
    p = parse_bddl(_bddl("libero_spatial",
                         "pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate"))
    (step,) = plan_goal(p)
    assert isinstance(step, PickPlace)
    assert (step.obj, step.target, step.relation, step.target_is_region) == ("akita_black_bowl_1", "plate_1", "on", False)
    # table regions carry their ranges (x_min, y_min, x_max, y_max)
    r = p.regions["main_table_plate_region"]
    assert r.target == "main_table" and len(r.ranges) == 1 and len(r.ranges[0]) == 4


def test_parse_on_region_and_fixture_region():
    p = parse_bddl(_bddl("libero_goal", "put_the_bowl_on_the_stove"))
    (step,) = plan_goal(p)
    assert isinstance(step, PickPlace) and step.target == "flat_stove_1_cook_region"
    assert step.target_owner == "flat_stove_1" and step.target_is_region and "flat_stove_1" in p.fixtures
    # a table region as target (libero_10 scene 6: chocolate pudding to the right of the plate)
    p = parse_bddl(_bddl("libero_10", "LIVING_ROOM_SCENE6_put_the_white_mug_on_the_plate_and_put_the_chocolate_"
                                      "pudding_to_the_right_of_the_plate"))
    steps = plan_goal(p)
    assert [(s.obj, s.target) for s in steps] == [("porcelain_mug_1", "plate_1"),
                                                  ("chocolate_pudding_1", "living_room_table_plate_right_region")]
    assert steps[1].target_owner == "living_room_table"


def test_parse_open_and_turnon():
    (s,) = plan_goal(parse_bddl(_bddl("libero_goal", "open_the_middle_drawer_of_the_cabinet")))
    assert isinstance(s, Articulate) and (s.action, s.target, s.owner, s.category) == \
        ("open", "wooden_cabinet_1_middle_region", "wooden_cabinet_1", "wooden_cabinet")
    (s,) = plan_goal(parse_bddl(_bddl("libero_goal", "turn_on_the_stove")))
    assert isinstance(s, Articulate) and (s.action, s.owner) == ("turnon", "flat_stove_1")


def test_parse_turnoff():
    # no standard-suite goal turns a knob off; libero_90 has one (the predicate kind must still parse)
    p = parse_bddl(_bddl("libero_90", "KITCHEN_SCENE8_turn_off_the_stove"))
    assert [(g.name, g.args) for g in p.goal] == [("turnoff", ("flat_stove_1",))]
    (s,) = plan_goal(p)
    assert isinstance(s, Articulate) and (s.action, s.owner, s.category) == ("turnoff", "flat_stove_1", "flat_stove")
    from ablation.sim.expert import coverage_of

    assert coverage_of([s]) == (True, "turn off flat_stove_1")


def test_parse_close_and_ordering():
    # Close comes first in the BDDL goal; the plan closes last. Placing inside a drawer is reported
    # as not scripted (a roofed region).
    p = parse_bddl(_bddl("libero_10", "KITCHEN_SCENE4_put_the_black_bowl_in_the_bottom_drawer_of_the_cabinet_and_close_it"))
    assert [g.name for g in p.goal] == ["close", "in"]
    steps = plan_goal(p)
    assert [type(s).__name__ for s in steps] == ["Unsupported", "Articulate"]
    assert "inside white_cabinet_1_bottom_region" in steps[0].reason and steps[1].action == "close"
    p = parse_bddl(_bddl("libero_10", "KITCHEN_SCENE6_put_the_yellow_and_white_mug_in_the_microwave_and_close_it"))
    steps = plan_goal(p)
    assert isinstance(steps[-1], Articulate) and (steps[-1].action, steps[-1].category) == ("close", "microwave")
    # turn the knob before placing the pots
    p = parse_bddl(_bddl("libero_10", "KITCHEN_SCENE8_put_both_moka_pots_on_the_stove"))
    assert [getattr(s, "action", None) or s.obj for s in plan_goal(p)] == ["turnon", "moka_pot_1", "moka_pot_2"]
    text = """(define (problem p) (:objects mug_1 - mug plate_1 - plate) (:fixtures m_1 - microwave)
      (:goal (And (Close m_1) (On mug_1 plate_1) (Open m_1))))"""
    assert [getattr(s, "action", "place") for s in plan_goal(parse_bddl(text))] == ["open", "place", "close"]
    # placing into an (open) drawer region that is not roofed would get an implied Open first
    text = """(define (problem p) (:objects b_1 - bowl) (:fixtures c_1 - slide_cabinet_x)
      (:regions (tray (:target c_1))) (:goal (And (On b_1 c_1_tray))))"""
    steps = plan_goal(parse_bddl(text))
    assert [(type(s).__name__, getattr(s, "implied", None)) for s in steps] == [("Articulate", True), ("PickPlace", None)]


def test_parse_two_object_sequence():
    p = parse_bddl(_bddl("libero_10", "LIVING_ROOM_SCENE2_put_both_the_alphabet_soup_and_the_tomato_sauce_in_the_basket"))
    steps = plan_goal(p)
    assert [(s.obj, s.target) for s in steps] == [("alphabet_soup_1", "basket_1_contain_region"),
                                                  ("tomato_sauce_1", "basket_1_contain_region")]


def test_every_standard_task_parses_and_coverage_classes():
    from ablation.sim.expert import coverage_of

    root = _bddl_root()
    covered = {}
    for suite in ("libero_spatial", "libero_object", "libero_goal", "libero_10"):
        files = sorted((root / suite).glob("*.bddl"))
        assert len(files) == 10, suite
        covered[suite] = sum(coverage_of(plan_goal(parse_bddl(f)))[0] for f in files)
    assert covered["libero_spatial"] == 10 and covered["libero_object"] == 10
    # goal: all but "open the middle drawer" and "open the top drawer and put the bowl inside";
    # libero_10: all but the bowl into the drawer and the mug into the microwave (roofed regions)
    assert covered["libero_goal"] == 8 and covered["libero_10"] == 8


def test_parse_errors_and_inline_text():
    with pytest.raises(ValueError, match="unbalanced"):
        parse_sexpr("(a (b)")
    with pytest.raises(ValueError, match="not a BDDL problem"):
        parse_bddl("(foo)")
    text = """(define (problem p) (:domain robosuite) ; comment
      (:objects a_1 b_1 - bowl c_1 - plate) (:fixtures t - table)
      (:goal (And (On a_1 c_1) (Stack a_1 b_1))))"""
    p = parse_bddl(text)
    assert p.objects == {"a_1": "bowl", "b_1": "bowl", "c_1": "plate"} and p.fixtures == {"t": "table"}
    steps = plan_goal(p)
    assert isinstance(steps[0], Unsupported) and "stack" in steps[0].reason
    assert isinstance(steps[1], PickPlace) and steps[1].target_is_region is False
    with pytest.raises(ValueError, match="does not handle"):
        parse_bddl("(define (problem p) (:goal (Or (On a b) (On b a))))")


def test_yaw_spread():
    from ablation.sim.expert import yaw_spread_deg

    assert yaw_spread_deg(np.zeros(10)) == 0.0
    y = np.radians(np.r_[np.full(50, 179.0), np.full(50, -179.0)])   # wraps around +-180
    assert yaw_spread_deg(y) == pytest.approx(2.0, abs=0.1)


# ----------------------------------------------------------------------------- simulator

@pytest.mark.sim
@pytest.mark.parametrize("suite,task", [("libero_object", 1), ("libero_spatial", 0), ("libero_goal", 8),
                                        ("libero_10", 0)])
def test_expert_one_task_per_suite(suite, task):
    from ablation.sim.env import make_env
    from ablation.sim.expert import ScriptedExpert, run_expert_episode

    env = make_env(suite, task)
    try:
        ex = ScriptedExpert.for_env(env)
        assert ex.covered, ex.coverage_reason
        results, yaws = [], []
        for i in range(2):
            y: list[float] = []
            results.append(run_expert_episode(env, env.init_states[i], expert=ex, yaws=y))
            yaws += y
    finally:
        env.close()
    assert all(ok for ok, _ in results), results
    assert all(n < env.max_steps for _, n in results)
    assert len(yaws) == sum(n for _, n in results) and np.all(np.isfinite(yaws))


@pytest.mark.sim
def test_expert_reports_uncovered_articulated_task():
    from ablation.sim.env import task_info
    from ablation.sim.expert import coverage_of, task_plan

    ok, why = coverage_of(task_plan(task_info("libero_goal", 0).bddl_file))
    assert not ok and "open wooden_cabinet_1_middle_region" in why
    ok, why = coverage_of(task_plan(task_info("libero_goal", 7).bddl_file))
    assert ok and why == "turn on flat_stove_1"


@pytest.mark.sim
def test_expert_wrist_turn_gives_libero_object_demos_that_turn_and_still_succeed():
    """data.expert_turn_deg: the stock expert never turns on libero_object 0 (a round can); with 45 deg it
    turns by that much before the grasp, toward the basket's side, and still succeeds."""
    from ablation.sim.env import make_env
    from ablation.sim.expert import ExpertConfig, ScriptedExpert, run_expert_episode, task_plan

    env = make_env("libero_object", 0)
    try:
        turns = {}
        for deg in (0.0, 45.0):
            ex = ScriptedExpert(env, task_plan(env.info.bddl_file), 1.0, ExpertConfig(turn_deg=deg))
            y: list[float] = []
            ok, n = run_expert_episode(env, env.init_states[0], expert=ex, yaws=y)
            assert ok and n < env.max_steps, (deg, n)
            rel = np.degrees(np.unwrap(np.asarray(y)) - np.unwrap(np.asarray(y))[0])
            turns[deg] = float(np.abs(rel).max())
    finally:
        env.close()
    assert turns[0.0] < 5.0 and 40.0 < turns[45.0] < 50.0, turns


def test_the_wrist_turn_is_in_the_demo_key_only_when_set():
    from ablation.sim.demos import cache_key, default_demo_path

    stock = cache_key("libero_object", 0, 50, False, 0.3, 0, 1.0)
    assert cache_key("libero_object", 0, 50, False, 0.3, 0, 1.0, turn_deg=0.0) == stock
    assert "turn_deg" not in stock[1]  # the stock expert's files keep their names
    turned = cache_key("libero_object", 0, 50, False, 0.3, 0, 1.0, turn_deg=45.0)
    assert turned[0] != stock[0] and turned[1]["turn_deg"] == 45.0
    assert default_demo_path("d", "libero_object", 0, 50) != default_demo_path("d", "libero_object", 0, 50, turn_deg=45)


def test_a_wrist_turn_out_of_range_is_a_clear_error(tmp_path):
    from ablation.sim.demos import DemoGenerationError, generate_demos

    with pytest.raises(DemoGenerationError, match=r"--turn-deg must be in \[0, 80\] deg, got 95"):
        generate_demos("libero_object", 0, 2, tmp_path / "x.hdf5", turn_deg=95)
