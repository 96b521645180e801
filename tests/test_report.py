"""The report, built from runs recorded in a real sqlite MLflow store.

The runs here are written directly with known metrics (no training), so every number in the table
and every verdict can be checked exactly.
"""
import json

import pytest

from ablation.report import build_report, wilson
from ablation.tracking import TAG_KIND, TAG_SEED, TAG_SPEC, TAG_SPEC_HASH, Tracker, default_tracking_uri


def record(tracker, name, seed, successes, episodes, nmse_pos, *, constant_rot=False, curve=None):
    rid = tracker.start_run(f"{name}/seed{seed}", {TAG_KIND: "spec_run", TAG_SPEC: name,
                                                   TAG_SPEC_HASH: f"h-{name}", TAG_SEED: seed})
    rows = [("eval/success_rate", successes / episodes, 0), ("eval/successes", successes, 0),
            ("eval/episodes", episodes, 0), ("val/nmse/rot", 0.5, 0),
            ("val/nmse/grip", 0.1, 0), ("train/loss/total", 1e-5, 0), ("eval/clip_rate", 0.3, 0),
            ("eval/pos_out_of_range", 20.0, 0), ("audit/constant/rot", float(constant_rot), 0)]
    # the last point of the curve is the run's final value (MLflow's "latest" = highest step)
    for step, v in (curve or [(0, nmse_pos)]):
        rows.append(("val/nmse/pos", v, step))
        rows.append(("train/loss/pos", v, step))
    tracker.log_metrics(rid, rows)
    tracker.end_run(rid)
    return rid


@pytest.fixture
def tracker(tmp_path):
    return Tracker.open(default_tracking_uri(tmp_path), "report-test", tmp_path / "art")


def test_wilson_interval():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(10, 10)[1] == pytest.approx(1.0)


def test_report_table_confounds_and_verdicts(tracker, tmp_path):
    falling = [(s, 0.9 + 2.1 * (1 - s / 900)) for s in range(0, 1000, 100)]  # ends at 0.9
    record(tracker, "baseline_rdt", 0, 0, 50, 0.9, constant_rot=True, curve=falling)
    record(tracker, "fix_minmax", 0, 45, 50, 0.05)
    record(tracker, "fix_pos_cm", 0, 44, 50, 0.06)
    record(tracker, "fix_masked_loss", 0, 1, 50, 0.8)
    record(tracker, "fix_velocity_slots", 0, 2, 5, 0.7)
    entries = [(n, f"h-{n}", 0) for n in ("baseline_rdt", "fix_minmax", "fix_pos_cm", "fix_masked_loss",
                                          "fix_velocity_slots", "native_delta")]
    rep = build_report(tracker, entries=entries, out_dir=tmp_path / "report")
    rows = {r.spec: r for r in rep.rows}
    assert rows["fix_minmax"].success_mean == pytest.approx(0.9)
    assert rows["fix_minmax"].success_ci == pytest.approx(wilson(45, 50))
    assert rows["baseline_rdt"].nmse["pos"] == pytest.approx(0.9)
    assert rows["native_delta"].success_mean is None
    table = rep.table_markdown()
    assert "| fix_minmax | 90% [79, 96] | 50 |" in table
    assert "| native_delta | no finished run |" in table
    # confounds: the constant group, the few-episode arm, overlap of the top two, the missing spec
    text = "\n".join(rep.confounds)
    assert "baseline_rdt: group(s) rot are constant" in text
    assert "fix_velocity_slots: only 5 closed-loop episodes" in text
    assert "intervals too wide to separate the top two: fix_minmax" in text
    assert "no finished run for: native_delta" in text
    v = rep.verdicts
    assert v["position/orientation scale"].startswith("SUPPORTED")
    assert "fix_minmax 90% [79, 96] beats the baseline" in v["position/orientation scale"]
    assert v["loss dilution over 128 slots"].startswith(("INCONCLUSIVE", "NOT SUPPORTED"))
    assert v["training length"].startswith("PLAUSIBLE")
    out = tmp_path / "report"
    assert (out / "report.md").read_text().count("| fix_") >= 4
    assert (out / "success_by_fix.png").stat().st_size > 1000
    assert json.loads((out / "report.json").read_text())["verdicts"] == v


def test_report_says_when_the_hypothesis_fails(tracker, tmp_path):
    record(tracker, "baseline_rdt", 0, 40, 50, 0.1, curve=[(s, 0.1) for s in range(0, 1000, 100)])  # flat
    record(tracker, "fix_minmax", 0, 5, 50, 0.1)
    record(tracker, "fix_pos_cm", 0, 6, 50, 0.1)
    rep = build_report(tracker, entries=[(n, f"h-{n}", 0) for n in ("baseline_rdt", "fix_minmax", "fix_pos_cm")],
                       out_dir=tmp_path / "r")
    assert rep.verdicts["position/orientation scale"].startswith("CONTRADICTED")
    assert rep.verdicts["training length"].startswith("NOT SUPPORTED")


def test_report_without_baseline(tracker, tmp_path):
    record(tracker, "fix_minmax", 0, 5, 50, 0.1)
    rep = build_report(tracker, entries=[("fix_minmax", "h-fix_minmax", 0)], out_dir=tmp_path / "r")
    assert all("no finished baseline_rdt run" in v for v in rep.verdicts.values())
