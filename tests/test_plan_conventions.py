"""What a researcher meets around a plan: the time estimates (--dry-run's range from the profile's
measured costs, the whole-plan ETA after every finished run), Optuna's seeded sampler, and MLflow's
conventions (source tags, the demo file as a dataset input)."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from ablation.host import cpu_class
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
        line = clock.finished({"closed_loop": 40.0, "train": 50.0, "total": 100.0}, 20, active_runs=4)
    # 100 worker-s for the first of 4 runs; 3 left on 2 workers, one of them half done in the other worker:
    # 2.5 x 100 / 2 = 125 s (not the wall pace's 100 s x 3 = 300 s: the first two runs end together);
    # later looks: 4 runs x 30 eps x 2 s / 2 = 120 s
    assert "1/4 runs done, ~2 min left in this look" in line
    assert "the plan ~2 min to ~4 min (if every undecided arm goes to 50 episodes) left" in line
    assert line in caplog.text


def test_clock_does_not_learn_its_pace_from_reused_runs(monkeypatch):
    """Runs a plan reuses finish at once: counting them made the first ETAs of a re-run far too short."""
    t = [1000.0]
    monkeypatch.setattr("ablation.plan_eta.time.time", lambda: t[0])
    clock = PlanClock([20, 35, 50], parallel=2)
    clock.start_look(0, 6)
    t[0] += 1.0
    for _ in range(3):  # three reused runs: no stage did any work, as run.execute reports one (its wall time
        # in "total", a closed loop with no episode left to run)
        line = clock.finished({"closed_loop": 0.03, "total": 2.8}, 20, active_runs=6)
    assert "3/6 runs done (3 reused); time left not known" in line
    t[0] += 120.0
    line = clock.finished({"closed_loop": 40.0, "train": 70.0, "total": 140.0}, 20, active_runs=6)
    # 2 runs left at the one worked run's 140 s (one half done): 1.5 x 140 / 2 = 105 s, not the reused runs'
    # ~3 s; the later looks at that run's 2 s per episode only (6 runs x 30 episodes x 2 s / 2 = 3 min more;
    # the reused runs' 0.0015 s per episode would have made it ~45 s)
    assert "4/6 runs done, ~2 min left in this look; the plan ~2 min to ~5 min" in line


def test_clock_bounds_a_rerun_from_the_profiles_costs_until_a_run_works(monkeypatch):
    """A re-run whose first runs are all reused said "time left not known" until a run that trained finished
    (minutes): with the profile's measured costs it gives an upper bound at once, which the measured pace
    then replaces."""
    t = [1000.0]
    monkeypatch.setattr("ablation.plan_eta.time.time", lambda: t[0])
    prior = StageCosts(demo_s=1, gate_s=30, train_s=100, episode_s=2)
    clock = PlanClock([20, 35, 50], parallel=2, prior=prior, prior_class="avx2")
    clock.start_look(0, 6)
    t[0] += 1.0
    line = clock.finished({"closed_loop": 0.03, "total": 2.8}, 20, active_runs=6)
    # 5 runs left x (100 s training + 20 episodes x 2 s) / 2 workers = 350 s; later looks 6 x 30 x 2 / 2 = 180 s
    assert "1/6 runs done (1 reused); up to ~6 min left in this look if every run left has to train and roll out " \
           "(the profile's avx2 costs); the plan up to ~9 min left" in line, line
    t[0] += 120.0
    line = clock.finished({"closed_loop": 80.0, "train": 40.0}, 20, active_runs=6)
    # measured now: the worked run's 120 worker-s x 3.5 runs left / 2 = 210 s; 4 s per episode -> 6 x 30 x 4 / 2
    # = 6 min more
    assert "2/6 runs done, ~4 min left in this look; the plan ~4 min to ~10 min" in line, line
    # a later look trains nothing: only its new episodes count
    clock.start_look(1, 4)
    line = clock.finished({"closed_loop": 0.0, "total": 1.0}, 15, active_runs=4)
    # from the 4 s per episode this plan measured, not the prior's 2 s: 3 runs x 15 episodes x 4 s / 2 = 90 s,
    # the last look 4 runs x 15 x 4 s / 2 = 120 s more
    assert "up to ~2 min left in this look if every run left has to roll out (4.0 s per episode as measured in " \
           "this plan); the plan up to ~4 min left" in line, line
    for _ in range(3):  # its last run: nothing is left in the look, whatever the pace
        line = clock.finished({"closed_loop": 0.0, "total": 1.0}, 15, active_runs=4)
    assert "4/4 runs done (4 reused); this look is done; " in line, line
    # without costs it says so, as before
    bare = PlanClock([20], parallel=1)
    bare.start_look(0, 2)
    assert "time left not known until a run that trains or rolls out finishes" in \
        bare.finished({"total": 2.0}, 20, active_runs=2)


def test_clock_does_not_price_the_runs_left_at_a_resumed_runs_cost(monkeypatch):
    """A killed plan's re-run first finishes the runs it resumes (mid-training, mid-rollout), which cost
    less than the runs left that start afresh: priced at their cost, the first ETA of such a re-run said
    ~8 min for 17 runs to train. Until a fresh run finishes, the line is the profile's upper bound, or
    without costs the resumed runs' pace marked as a lower bound."""
    t = [1000.0]
    monkeypatch.setattr("ablation.plan_eta.time.time", lambda: t[0])
    prior = StageCosts(train_s=100, episode_s=2)
    clock = PlanClock([20], parallel=2, prior=prior, prior_class="avx512")
    clock.start_look(0, 6)
    t[0] += 30.0
    # resumed after training: it rolled out only (a low cost per episode too, if it resumed mid-rollout)
    line = clock.finished({"closed_loop": 10.0, "total": 12.0}, 20, active_runs=6, took_over=True)
    # 5 runs left x (100 + 20 x 2 s) / 2 = 350 s, from the prior, not 5 x 12 s / 2
    assert "1/6 runs done (1 resumed); up to ~6 min left in this look if every run left has to train and roll out " \
           "(the profile's avx512 costs)" in line, line
    t[0] += 120.0
    line = clock.finished({"train": 100.0, "closed_loop": 60.0, "total": 160.0}, 20, active_runs=6)
    # a fresh run measured: 4 runs left, one half done in the other worker: 3.5 x 160 / 2 = 280 s
    assert "2/6 runs done, ~5 min left in this look" in line, line
    # no costs in the profile: the resumed runs' own pace, said to be a lower bound
    bare = PlanClock([20], parallel=2)
    bare.start_look(0, 6)
    line = bare.finished({"closed_loop": 10.0, "total": 12.0}, 20, active_runs=6, took_over=True)
    assert "1/6 runs done, at least ~27 s left in this look; the plan at least ~27 s left" in line, line


def test_dry_run_prints_the_estimated_wall_time():
    out = subprocess.run([sys.executable, str(REPO / "run_ablation.py"), "--plan", "all", "--dry-run",
                          "--workdir", "/nonexistent-dir-for-dry-run"], capture_output=True, text=True, cwd=REPO,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "estimated wall time on this profile:" in out.stderr
    # from the costs measured on this machine's CPU class, which the line names (ablation.host)
    assert f"({cpu_class()} CPU)" in out.stderr and "measured on a CPU of class" not in out.stderr, out.stderr[-2000:]


def test_tune_sampler_is_seeded_by_the_study_and_lies_for_running_trials():
    import optuna

    from ablation.tune import make_sampler

    def first_points(name):
        study = optuna.create_study(sampler=make_sampler(name), direction="maximize")
        return [study.ask().suggest_float("x", 0, 1) for _ in range(3)]

    assert first_points("study-a") == first_points("study-a")
    assert first_points("study-a") != first_points("study-b")
    assert make_sampler("s")._constant_liar is True


def test_best_spec_is_replaced_whole_under_a_reader_of_the_old_one(tmp_path):
    """Workers of one study write the same best-spec path while another may be uploading it: a reader
    that opened the old file reads all of it, as long as its size says (an in-place rewrite truncated it
    under an upload, and the tracking server waited for bytes that never came: CI, stop 30)."""
    import os

    from ablation.spec import EXPERIMENTS_DIR, resolve_spec
    from ablation.tune import write_best_spec

    spec_file = EXPERIMENTS_DIR / "tune_loss_weights.yaml"
    base, out = resolve_spec(spec_file), tmp_path / "tuned" / "s_best.yaml"
    write_best_spec(spec_file, base, {"loss.weights.pos": 1.0}, out)
    with open(out, "rb") as reader:  # what the uploader holds: size taken first, then the bytes
        size = os.fstat(reader.fileno()).st_size
        write_best_spec(spec_file, base, {"loss.weights.pos": 2.0, "loss.weights.rot": 3.0}, out)
        old = reader.read()
    assert len(old) == size and b"pos: 1.0" in old
    assert b"pos: 2.0" in out.read_bytes() and b"rot: 3.0" in out.read_bytes()
    assert resolve_spec(out).loss.weights.pos == 2.0
    assert not list(out.parent.glob(".*.tmp"))  # no temporary left behind


def test_runs_carry_mlflow_source_tags_and_the_demo_file_as_a_dataset(tmp_path):
    """A real sqlite MLflow store: the standard source tags and the dataset input with its digest."""
    from ablation.provenance import file_sha256, source_tags
    from ablation.tracking import Tracker, default_tracking_uri

    demo = tmp_path / "demos.hdf5"
    demo.write_bytes(b"not really hdf5, only hashed")
    tr = Tracker.open(default_tracking_uri(tmp_path), "t", tmp_path / "art")
    rid = tr.start_run("r", {"ablation.kind": "spec_run", **source_tags("the baseline")})
    tr.log_dataset(rid, demo, file_sha256(demo))
    run = tr.client.get_run(rid)
    tags = run.data.tags
    assert tags["mlflow.note.content"] == "the baseline" and tags["mlflow.user"]
    assert len(tags["mlflow.source.git.commit"]) in (40, 7) or tags["mlflow.source.git.commit"] == "unknown"
    assert tags["ablation.git_dirty"] in ("true", "false", "unknown")
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "demos.hdf5" and inp.dataset.digest == file_sha256(demo)[:16]
    assert [t.value for t in inp.tags if t.key == "mlflow.data.context"] == ["training"]
