"""The report, built from a plan recorded in a real sqlite MLflow store.

The runs are written directly with known per-episode outcomes and metrics (no training), so every
verdict can be checked against a known answer, including the edge outcomes: 0% and 100% success, a
missing arm, a crashed (FAILED) run, crashed episodes, and a plan run with `--set` overrides.
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest

from ablation.hypothesis import load_hypothesis
from ablation.plan_record import PLAN_RECORD
from ablation.report import build_report
from ablation.report.prose import carried
from ablation.stages import log_episodes
from ablation.tracking import TAG_KIND, TAG_SEED, TAG_SPEC, Tracker, default_tracking_uri
from ablation.verdicts import HypothesisVerdict
from tests.conftest import cli_here

STATES = 20


def outcomes(rate: float, n: int = STATES, offset: int = 0) -> list[bool]:
    """Deterministic outcomes with the given success rate, spread over the init states."""
    k = round(rate * n)
    return [((i + offset) * k) % n < k for i in range(n)]


def record_plan(tracker: Tracker, hyps: list[str], arms: dict[str, dict], name: str = "t",
                looks: list[dict] | None = None) -> str:
    """arms: name -> {"rates": [per seed], "loss": float, "nmse_pos": float, "rot_spread": float,
    "failed": bool, "crash_first": int, "steps": int, "steps_scale": float}. Returns the parent run id."""
    parent = tracker.start_run(f"plan:{name}", {TAG_KIND: "plan", "ablation.plan": name})
    runs: dict[str, dict[str, str]] = {}
    for arm, a in arms.items():
        for seed, rate in enumerate(a.get("rates", [])):
            rid = tracker.start_run(f"{arm}/seed{seed}", {TAG_KIND: "spec_run", TAG_SPEC: arm, TAG_SEED: seed}, parent)
            runs.setdefault(arm, {})[str(seed)] = rid
            tracker.log_metrics(rid, [("train/loss/total", a.get("loss", 1e-3), 0),
                                      ("audit/rot_spread_deg", a.get("rot_spread", 30.0), 0)]
                                + [("val/openloop/nmse/pos", a.get("nmse_pos", 0.5) * f, s)
                                   for s, f in ((400, 2.0), (800, 1.3), (1200, 1.0))]
                                + [("val/openloop/nmse/rot", 0.2, 1200), ("val/openloop/nmse/grip", 0.1, 1200)])
            if a.get("failed"):
                tracker.end_run(rid, "FAILED", "train: TrainingDiverged: loss is not finite at step 12")
                continue
            eps = [{"episode": i, "init_state": i, "success": o, "steps": 100, "clip_fraction": 0.0,
                    "error": "worker process died" if i < a.get("crash_first", 0) else None}
                   for i, o in enumerate(outcomes(rate, offset=seed))]
            log_episodes(tracker, rid, eps)
            tracker.end_run(rid)
    rec = {"plan": name, "key": name, "hypotheses": [load_hypothesis(h).model_dump(mode="json") for h in hyps],
           "arms": {arm: {"spec_hash": f"h-{arm}", "seeds": list(range(len(a.get("rates", [])))), "suite":
                          "libero_object", "task": 0, "description": arm, "pretrained": a.get("pretrained", False),
                          # the spec's train.total_steps, as the plan records it
                          "train_steps": round(a["steps"] * a.get("steps_scale", 1.0)) if "steps" in a else None}
                    for arm, a in arms.items()},
           "runs": runs, "episodes": {"looks": [STATES], "alpha": 0.05, "spending": "obrien_fleming", "margin": 0.15},
           "looks": looks or [], "demos": {"x": {"starts": "random_resets (seed 0)"}}, "versions": {"mujoco": "3.x"}}
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / PLAN_RECORD).write_text(json.dumps(rec))
        tracker.log_artifact(parent, Path(d) / PLAN_RECORD)
    tracker.end_run(parent)
    return parent


@pytest.fixture
def tracker(tmp_path):
    return Tracker.open(default_tracking_uri(tmp_path), "libero-action-ablation", tmp_path / "art")


def by_name(rep):
    return {v.name: v for v in rep.verdicts}


def test_clear_win_at_100_percent_and_untestable_rotation(tracker, tmp_path):
    # cm: 100% on every seed (the case that crashed the old report's plot); baseline 0%, lowest loss.
    parent = record_plan(tracker, ["H1_scale_absolute", "H1_scale_relative"], {
        "baseline_rdt": {"rates": [0, 0, 0], "loss": 1e-5, "nmse_pos": 0.9, "rot_spread": 1.0},
        "fix_pos_cm": {"rates": [1, 1, 1], "loss": 2e-3, "nmse_pos": 0.05, "rot_spread": 1.0},
        "fix_rot_small": {"rates": [0, 0.05, 0], "loss": 1e-5, "nmse_pos": 0.9, "rot_spread": 1.0},
        "fix_pos_cm_rot_small": {"rates": [1, 0.95, 1], "loss": 1e-3, "nmse_pos": 0.06, "rot_spread": 1.0}})
    out = tmp_path / "r"
    rep = build_report(tracker, parent_run_id=parent, out_dir=out)
    v = by_name(rep)
    assert v["H1_scale_absolute"].word == "SUPPORTED"
    # the demos barely turn: the relative-scale (seed's) hypothesis cannot be tested here
    assert v["H1_scale_relative"].word == "UNTESTABLE HERE"
    assert "untestable here, because the demos' rotation spread is 1.0 deg" in v["H1_scale_relative"].meaning
    cm = next(c for c in rep.comparisons if c.arm == "fix_pos_cm")
    assert cm.word == "better" and cm.estimate == pytest.approx(1.0) and cm.lo <= 1.0 <= cm.hi + 1e-9
    assert rep.baseline == "baseline_rdt" and rep.baseline_reproduced is True
    assert rep.answer.startswith("The baseline (baseline_rdt) succeeded in 0% of 60 episodes")
    assert "Use fix_pos_cm: 100% against 0%, +100 points" in rep.answer
    assert "One trained network" not in rep.answer  # 3 seeds a side
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # forest, scatter, open-loop nMSE: embedded
    assert not re.search(r'src="(?!data:)', html)       # nothing external
    assert html.index("Answer") < html.index("Effects") < html.index("Caveats")
    assert (out / "forest.png").stat().st_size > 1000 and (out / "loss_vs_success.png").is_file()
    md = (out / "report.md").read_text()
    assert "| fix_pos_cm | 60/60 = 100% | 100%, 100%, 100% |" in md
    assert "random_resets (seed 0)" in md


def test_a_verdict_on_one_seed_is_qualified_in_the_answer(tracker, tmp_path):
    """One network per arm (`--seeds 0`): the binomial test over episodes can decide, but the answer
    itself says the verdict is about these networks, not about training with the fix."""
    parent = record_plan(tracker, ["H1_scale_absolute"], {
        "baseline_rdt": {"rates": [0], "loss": 1e-5, "nmse_pos": 0.9, "rot_spread": 1.0},
        "fix_pos_cm": {"rates": [1], "loss": 2e-3, "nmse_pos": 0.05, "rot_spread": 1.0}})
    rep = build_report(tracker, parent_run_id=parent, out_dir=tmp_path / "r")
    cm = next(c for c in rep.comparisons if c.arm == "fix_pos_cm")
    assert cm.word == "better" and (cm.seeds_arm, cm.seeds_control) == (1, 1)
    assert ("One trained network on a side decided fix_pos_cm vs baseline_rdt (1/1 seeds): a statement about "
            "these networks, not about training with the fix") in rep.answer, rep.answer
    assert "Fewer than 3 finished seeds" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.parametrize("word, seeds, qualified", [
    ("no meaningful difference", (1, 1), True), ("worse", (3, 1), True), ("better", (2, 2), False),
    ("inconclusive", (1, 1), False), ("missing", (0, 0), False)])
def test_the_one_seed_qualifier_covers_every_decided_word_and_only_those(word, seeds, qualified):
    """Every decided word (better, worse, no meaningful difference) on one network a side is qualified;
    undecided comparisons and unknown seed counts (0, an older record) are not."""
    from ablation.analysis import ComparisonResult
    from ablation.report.prose import one_seed_sentences

    c = ComparisonResult("H", "fix_a", "base", "better", "fix_a vs base", word, seeds_arm=seeds[0],
                         seeds_control=seeds[1])
    got = one_seed_sentences([c])
    assert bool(got) == qualified, got
    if qualified:
        assert f"fix_a vs base ({seeds[0]}/{seeds[1]} seeds)" in got[0]


def test_seed_hypothesis_contradicted_is_said(tracker, tmp_path):
    # Rotation varies, and shrinking it makes things worse (the seed's diagnosis fails); cm helps.
    parent = record_plan(tracker, ["H1_scale_relative", "H1_scale_absolute"], {
        "baseline_rdt": {"rates": [0.6, 0.65, 0.6], "loss": 1e-5, "nmse_pos": 0.9},
        "fix_rot_small": {"rates": [0.0, 0.05, 0.0], "loss": 1e-5, "nmse_pos": 0.9},
        "fix_pos_cm": {"rates": [0.95, 1.0, 0.95], "loss": 1e-3, "nmse_pos": 0.1},
        "fix_pos_cm_rot_small": {"rates": [0.9, 0.9, 0.95], "loss": 1e-3, "nmse_pos": 0.1}})
    rep = build_report(tracker, parent_run_id=parent, out_dir=tmp_path / "r")
    v = by_name(rep)
    rot = next(c for c in rep.comparisons if c.arm == "fix_rot_small")
    assert rot.word == "worse", (rot.word, rot.p_holm, rot.why)
    assert v["H1_scale_relative"].word == "CONTRADICTED"
    assert "The data contradict the seed's hypothesis that position deltas" in rep.answer


def test_seed_hypothesis_not_supported_is_not_called_contradicted(tracker, tmp_path):
    # Shrinking rotation changes nothing (10-15% both, within the 15-point margin): the seed's diagnosis is
    # not supported, but nothing went the opposite way, so the answer must not say "contradict".
    parent = record_plan(tracker, ["H1_scale_relative"], {
        "baseline_rdt": {"rates": [0.1, 0.15, 0.1], "loss": 1e-5, "nmse_pos": 0.9},
        "fix_rot_small": {"rates": [0.1, 0.1, 0.15], "loss": 1e-5, "nmse_pos": 0.9}})
    rep = build_report(tracker, parent_run_id=parent, out_dir=tmp_path / "r")
    rot = next(c for c in rep.comparisons if c.arm == "fix_rot_small")
    assert rot.word == "no meaningful difference" and rot.bound == "" and -0.15 < rot.lo < rot.hi < 0.15
    assert by_name(rep)["H1_scale_relative"].word == "NOT SUPPORTED"
    assert "The data do not support the seed's hypothesis" in rep.answer and "contradict" not in rep.answer


def test_missing_and_failed_arms_and_crashed_episodes(tracker, tmp_path):
    parent = record_plan(tracker, ["H1_practical", "H2_loss_proxy"], {
        "baseline_rdt": {"rates": [0, 0, 0.05], "loss": 1e-5, "nmse_pos": 0.9},
        "fix_minmax": {"rates": [0.8, 0.85, 0.8], "loss": 2e-3, "nmse_pos": 0.1, "crash_first": 2},
        "fix_loss_weight": {"rates": [0.5, 0.5, 0.5], "failed": True},
        # fix_masked_loss: never ran (missing)
    })
    rep = build_report(tracker, parent_run_id=parent, out_dir=tmp_path / "r")
    words = {c.arm: c.word for c in rep.comparisons}
    assert words["fix_minmax"] == "better"
    assert words["fix_loss_weight"] == "missing" and words["fix_masked_loss"] == "missing"
    # the answer rests H1_practical on the comparison that carried it, not on the claim's wording
    # ("a standard normaliser or the seed's loss weight"): the x100 weight never finished
    assert "Supported: H1_practical (fix_minmax vs baseline_rdt better, +73 pts): Use the fix" in rep.answer
    assert "loss weight fixes" not in rep.answer
    text = "\n".join(rep.caveats)
    assert "Crashed episodes (counted as failures): fix_minmax (6)" in text
    assert "fix_loss_weight seed 0: train: TrainingDiverged" in text
    # H2 needs >= 4 arm x seed points with a loss: 6 here
    h2 = by_name(rep)["H2_loss_proxy"]
    assert h2.correlation and h2.correlation["n"] == 6


def test_baseline_not_reproduced_warns_every_verdict(tracker, tmp_path):
    parent = record_plan(tracker, ["H1_practical"], {
        "baseline_rdt": {"rates": [0.6, 0.6, 0.65], "loss": 5e-3, "nmse_pos": 0.2},
        "fix_minmax": {"rates": [0.6, 0.65, 0.6], "loss": 1e-3, "nmse_pos": 0.2},
        "fix_loss_weight": {"rates": [0.6, 0.6, 0.6], "loss": 1e-3, "nmse_pos": 0.2}})
    rep = build_report(tracker, parent_run_id=parent, out_dir=tmp_path / "r")
    assert rep.baseline_reproduced is False
    assert "did NOT reproduce the seed's failure signature" in rep.baseline_note
    assert all("did not reproduce the seed's failure" in v.meaning for v in rep.verdicts)
    assert "does NOT reproduce" in rep.answer


def test_longer_trained_arms_do_not_unseat_the_baseline_signature(tracker, tmp_path):
    """H4's arms train the baseline's set-up 2x and 4x as long: the baseline's signature (success near
    0, the worst unit-free open-loop position error) is ranked among arms trained as long, and with
    none of those only the success rate speaks."""
    arms = {"baseline_rdt": {"rates": [0.0, 0.05, 0.0], "loss": 2e-4, "nmse_pos": 0.4, "steps": 600},
            "baseline_2x": {"rates": [0.1, 0.05, 0.1], "loss": 8e-5, "nmse_pos": 0.3, "steps": 600,
                            "steps_scale": 2.0},
            "baseline_4x": {"rates": [0.2, 0.15, 0.2], "loss": 3e-5, "nmse_pos": 0.5, "steps": 600,
                            "steps_scale": 4.0}}
    rep = build_report(tracker, parent_run_id=record_plan(tracker, ["H4_training_length"], arms, name="h4"),
                       out_dir=tmp_path / "r")
    assert rep.baseline_reproduced is True, rep.baseline_note
    assert "no other arm trained for 600 steps to rank against" in rep.baseline_note
    assert "does NOT reproduce" not in rep.answer
    # an arm trained as long with a WORSE open-loop position error unseats it (unit-free figures only)
    same_budget = {**arms, "baseline_2x": {**arms["baseline_2x"], "steps_scale": 1.0, "nmse_pos": 0.6}}
    rep = build_report(tracker, parent_run_id=record_plan(tracker, ["H4_training_length"], same_budget, name="h4b"),
                       out_dir=tmp_path / "r2")
    assert rep.baseline_reproduced is False
    assert "NOT the worst of the arms trained for 600 steps" in rep.baseline_note
    assert "not ranked across arms" in rep.baseline_note  # the loss is reported, never ranked


def test_inconclusive_says_what_it_would_need(tracker, tmp_path):
    parent = record_plan(tracker, ["H1_practical"], {
        "baseline_rdt": {"rates": [0.0, 0.1, 0.05], "loss": 1e-5, "nmse_pos": 0.9},
        "fix_minmax": {"rates": [0.25, 0.0, 0.2], "loss": 1e-3, "nmse_pos": 0.3},
        "fix_loss_weight": {"rates": [0.05, 0.1, 0.0], "loss": 1e-3, "nmse_pos": 0.8}})
    rep = build_report(tracker, parent_run_id=parent, out_dir=tmp_path / "r")
    mm = next(c for c in rep.comparisons if c.arm == "fix_minmax")
    assert mm.word == "inconclusive"
    assert "seeds per arm" in mm.why or "episodes per arm x seed" in mm.why, mm.why
    assert by_name(rep)["H1_practical"].word == "INCONCLUSIVE"


def test_report_command_finds_the_plan_through_its_parent_run(tracker, tmp_path):
    """The report finds runs through the recorded plan (not by recomputing spec hashes), so a plan run
    with --set overrides is found; with no plan, a one-line error."""
    record_plan(tracker, ["H1_practical"], {
        "baseline_rdt": {"rates": [0, 0, 0]}, "fix_minmax": {"rates": [1, 1, 1]},
        "fix_loss_weight": {"rates": [1, 0.9, 1]}}, name="all")
    cli = cli_here("report", "--workdir", str(tmp_path))
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "## Answer" in cli.stdout and "fix_minmax vs baseline_rdt" in cli.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    cli = cli_here("report", "--workdir", str(empty))
    assert cli.returncode == 2 and cli.stderr.strip().startswith("error: no MLflow store at")
    assert "Traceback" not in cli.stderr


def test_answer_rests_a_correlation_verdict_on_its_interval():
    v = HypothesisVerdict("H2_loss_proxy", "Loss dilution", "claim", "SUPPORTED",
                          "Do not read the loss value. (Warning: the baseline did not reproduce the seed's failure.)",
                          [], {"rho": 0.38, "lo": -0.22, "hi": 0.75, "n": 12, "word": "unclear"})
    assert carried(v, []) == ("H2_loss_proxy (rank correlation rho +0.38 [-0.22, +0.75] over 12 runs): Do not read "
                              "the loss value. (Warning: the baseline did not reproduce the seed's failure.)")


def test_answer_rests_a_reversal_verdict_on_the_reversal():
    rev = "reversal across arms: fix succeeded more (90% vs 10%, fix vs base better, decided in the family)"
    v = HypothesisVerdict("H2_loss_proxy", "Loss dilution", "claim", "SUPPORTED", "Do not read the loss value.",
                          [rev, "rank correlation ..."], {"rho": 0.19, "lo": -0.30, "hi": 0.60, "n": 24, "word": "unclear"})
    assert carried(v, []) == (f"H2_loss_proxy ({rev}; rank correlation rho +0.19 [-0.30, +0.60] over 24 runs): "
                              "Do not read the loss value.")


def test_no_difference_at_the_floor_is_untestable_not_not_supported(tracker, tmp_path):
    # Every H3 arm fails (0-5%): "no meaningful difference" is a floor, not evidence against slot meaning.
    parent = record_plan(tracker, ["H3_slot_layouts"], {
        "pre_seed_delta_eef": {"rates": [0, 0, 0], "loss": 1e-4, "nmse_pos": 0.5, "pretrained": True},
        "pre_delta_velocity": {"rates": [0.05, 0, 0.05], "loss": 1e-4, "nmse_pos": 0.4, "pretrained": True},
        "pre_abs_eef": {"rates": [0, 0.05, 0], "loss": 1e-4, "nmse_pos": 0.1, "pretrained": True}})
    rep = build_report(tracker, parent_run_id=parent, out_dir=tmp_path / "r")
    words = {c.arm: c.word for c in rep.comparisons}
    assert words == {"pre_delta_velocity": "no meaningful difference", "pre_abs_eef": "no meaningful difference"}
    v = by_name(rep)["H3_slot_layouts"]
    assert v.word == "UNTESTABLE HERE"
    assert v.meaning.startswith("untestable here, because pre_delta_velocity vs pre_seed_delta_eef shows no "
                                "meaningful difference, but both arms fail (at most 10% success)"), v.meaning
    assert all("says nothing of the claim" in line for line in v.lines)
    # above the floor the same arms keep their verdict: the consistent layouts doing worse contradicts it
    parent = record_plan(tracker, ["H3_slot_layouts"], {
        "pre_seed_delta_eef": {"rates": [0.6, 0.65, 0.6], "loss": 1e-4, "pretrained": True},
        "pre_delta_velocity": {"rates": [0.0, 0.05, 0.0], "loss": 1e-4, "pretrained": True},
        "pre_abs_eef": {"rates": [0.05, 0.0, 0.0], "loss": 1e-4, "pretrained": True}}, name="t2")
    rep = build_report(tracker, parent_run_id=parent, out_dir=tmp_path / "r2")
    assert by_name(rep)["H3_slot_layouts"].word == "CONTRADICTED"
