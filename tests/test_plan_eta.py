"""The plan's time estimates: --dry-run's range from the profile's measured costs, and the whole-plan
ETA logged after every finished run."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from ablation.plan_eta import PlanClock, StageCosts, estimate_plan_s

REPO = Path(__file__).resolve().parents[1]


def test_estimate_counts_each_stage_once_and_spreads_it_over_the_workers():
    c = StageCosts(demo_s=4, gate_s=40, train_s=60, episode_s=2)
    lo, hi = estimate_plan_s(c, n_runs=12, n_codecs=4, n_demos=50, looks=[20, 35, 50], parallel=2)
    base = (50 * 4 + 4 * 40) / 2
    assert lo == pytest.approx(base + 12 * (60 + 20 * 2) / 2)
    assert hi == pytest.approx(lo + 12 * 30 * 2 / 2)
    # no looks: one range point
    lo, hi = estimate_plan_s(c, n_runs=2, n_codecs=1, n_demos=0, looks=[None], parallel=1)
    assert lo == hi == pytest.approx(40 + 2 * 60)
    with pytest.raises(ValueError, match="episode_sec not known"):
        StageCosts.from_mapping({"episode_sec": 2})


def test_clock_gives_this_look_and_the_whole_plan(caplog, monkeypatch):
    t = [1000.0]
    monkeypatch.setattr("ablation.plan_eta.time.time", lambda: t[0])
    clock = PlanClock([20, 35, 50], parallel=2)
    clock.start_look(0, 4)
    t[0] += 100.0
    with caplog.at_level(logging.INFO, logger="ablation"):
        line = clock.finished({"closed_loop": 40.0, "train": 50.0}, 20, active_runs=4)
    # 100 s for the first of 4 runs -> 300 s left in this look; later looks: 4 runs x 30 eps x 2 s / 2
    assert "1/4 runs done, ~5 min left in this look" in line
    assert "the plan ~5 min to ~7 min (if every undecided arm goes to 50 episodes) left" in line
    assert line in caplog.text


def test_dry_run_prints_the_estimated_wall_time():
    out = subprocess.run([sys.executable, str(REPO / "run_ablation.py"), "--plan", "all", "--dry-run",
                          "--workdir", "/nonexistent-dir-for-dry-run"], capture_output=True, text=True, cwd=REPO,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "estimated wall time on this profile:" in out.stderr
