"""The orchestrator end to end on a tiny plan: real simulator, real training, real sqlite MLflow store.

Budgets are tiny (the session's 4 expert demos, a few dozen training steps, 1 short episode), so success
rates mean nothing here; the tests check the plumbing: runs, nesting, metrics, artifacts, skipping, resuming,
failure recording, the report and the MLflow UI. `first_run` runs on the profile's pool of 2 spawned workers,
as a user's plan does; the later plans that re-run its arms pass jobs=1 and run here (a spawned worker costs
~10 s of imports on a busy core, and the pool is not what they test).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ablation.host import cpu_class, usable_cpus
from ablation.plan import run_plan
from ablation.run import SCRATCH_DIR
from ablation.spec import EXPERIMENTS_DIR
from ablation.tracking import TAG_KIND, TAG_SPEC, TAG_SPEC_HASH, Tracker, default_tracking_uri
from tests.conftest import EXPERT_DEMOS, RDT_CKPT, cli_here, seed_workdir_demos

pytestmark = pytest.mark.sim
REPO = Path(__file__).resolve().parents[1]
TINY = [f"data.n_demos={EXPERT_DEMOS}", "model.size=tiny", "train.steps=40", "train.eval_every=20",
        "train.log_every=10", "train.batch_size=16", "rollout.episodes=1", "rollout.max_steps=40",
        "data.action_chunk=8", "rollout.gate_episodes=1"]


def write_plan(tmp: Path, name: str, entries: list, sets: list[str] = TINY, **extra) -> Path:
    p = tmp / f"plan_{name}.yaml"
    p.write_text(yaml.safe_dump({"seeds": [0], "set": sets, "entries": entries, **extra}))
    return p


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, expert_demo_file) -> Path:
    wd = tmp_path_factory.mktemp("plan_wd")
    seed_workdir_demos(wd, expert_demo_file)  # the plans reuse the session's demos
    return wd


@pytest.fixture(scope="module")
def first_run(workdir, tmp_path_factory):
    """A hypothesis-driven plan: H1_practical with one of its fixes left out, 2 seeds, two looks."""
    plans = tmp_path_factory.mktemp("plans")
    plan = write_plan(plans, "tiny", [], hypotheses=["H1_practical"], seeds=[0, 1],
                      skip_arms={"fix_loss_weight": "tiny test"}, episodes={"looks": [1, 2]})
    out = run_plan(str(plan), profile_name="cpu", workdir=workdir)
    return plan, out


def client_for(workdir: Path):
    return Tracker.open(default_tracking_uri(workdir), "libero-action-ablation")


def episodes_of(tr, run_id: str) -> list[dict]:
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return json.loads(Path(tr.client.download_artifacts(run_id, "rollouts/episodes.json", d)).read_text())


def test_tiny_plan_end_to_end(first_run, workdir):
    _, out = first_run
    assert sorted(r.status for r in out.results) == ["FINISHED"] * 4, [r.reason for r in out.results]
    assert out.report_ok
    assert len(list((workdir / "demos").glob("*.hdf5"))) == 1  # the session's demos, reused, none made
    tr = client_for(workdir)
    c = tr.client
    parent = c.get_run(out.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags[TAG_KIND] == "plan"
    children = tr.find_runs(f"tags.`mlflow.parentRunId` = '{out.parent_run_id}'")
    assert sorted((r.data.tags[TAG_SPEC], r.data.tags["ablation.seed"]) for r in children) == [
        ("baseline_rdt", "0"), ("baseline_rdt", "1"), ("fix_minmax", "0"), ("fix_minmax", "1")]
    for run in children:
        assert run.info.status == "FINISHED"
        m, t, p = run.data.metrics, run.data.tags, run.data.params
        # every stage of the one run pipeline left its figures: gate A, audit, training, open loop, closed loop
        for key in ("gate/replay_success_rate", "train/loss/total", "train/loss/pos", "train/loss/rot",
                    "train/loss/grip", "train/nmse/pos", "val/loss/total", "val/nmse/pos", "eval/success_rate",
                    "eval/clip_rate", "eval/episode_len", "audit/scale_ratio", "audit/rot_spread_deg",
                    "time/train_s", "val/openloop/clip_fraction", "val/openloop/nmse/pos", "eval/crashed_episodes"):
            assert key in m, f"{run.data.tags[TAG_SPEC]} lacks metric {key}"
        for tag in (TAG_SPEC_HASH, "ablation.git_commit", "ablation.demo_sha256", "ablation.device",
                    "ablation.profile", "ablation.cpu"):
            assert t.get(tag), tag
        # the CPU the run's worker ran on: its time figures hold for that class (ablation.host)
        assert (t["ablation.cpu_class"], t["ablation.cpus"]) == (cpu_class(), str(usable_cpus())), t
        assert p["codec.normalizer"] in ("identity", "minmax") and p["model.size"] == "tiny"
        hist = c.get_metric_history(run.info.run_id, "train/loss/total")
        assert len(hist) >= 4  # batched, but every logged step is there
        arts = {a.path for a in c.list_artifacts(run.info.run_id)}
        assert {"spec.yaml", "codec.json", "plots", "checkpoint", "audit", "rollouts"} <= arts, arts
        plots = {a.path for a in c.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/loss_curves.png", "plots/pred_vs_demo.png"} <= plots, plots
        # every look's episodes are in one per-episode record, on the paired init states 0..n-1
        eps = episodes_of(tr, run.info.run_id)
        assert sorted(e["init_state"] for e in eps) == list(range(len(eps))) and len(eps) in (1, 2)
    # two runs per arm on 2 workers, dispatched round-robin over the arms: each arm's Gate A is replayed
    # once and read from the cache by its other run (arm-major order started both seeds together)
    replayed = sorted(r.data.tags[TAG_SPEC] for r in children if r.data.metrics["gate/cached"] == 0.0)
    assert replayed == ["baseline_rdt", "fix_minmax"], replayed
    assert (workdir / "report" / "report.html").is_file() and (workdir / "report" / "report.md").is_file()
    assert {a.path for a in c.list_artifacts(out.parent_run_id, "report")} >= {"report/report.md", "report/report.html"}
    assert "plan.json" in {a.path for a in c.list_artifacts(out.parent_run_id)}


def test_an_arm_left_out_by_the_plan_is_left_out_not_missing(first_run, workdir):
    """skip_arms is a choice, not a failure: every look's record and the report say "left out", and
    the family is the comparisons that have data, as the report's method line says."""
    import json
    import re
    import tempfile

    _, out = first_run
    tr = client_for(workdir)
    with tempfile.TemporaryDirectory() as d:
        record = json.loads(Path(tr.client.download_artifacts(out.parent_run_id, "plan.json", d)).read_text())
    assert record["looks"], record.keys()
    for look in record["looks"]:
        words = {c["arm"]: c["word"] for c in look["comparisons"]}
        assert words["fix_loss_weight"] == "left out", words
        assert words["fix_minmax"] != "left out", words
    md = (workdir / "report" / "report.md").read_text()
    assert "fix_loss_weight left out of this plan: tiny test" in md
    m = re.search(r"Family: the (\d+) comparisons of plan '[^']+' with data \(of its (\d+)\)", md)
    assert m, md[-2000:]
    with_data = sum(c["word"] not in ("left out", "missing", "untestable") for c in record["looks"][-1]["comparisons"])
    assert int(m.group(1)) == with_data and int(m.group(2)) == len(record["looks"][-1]["comparisons"]) > with_data


def test_rerun_retrains_nothing_and_nests_under_the_same_parent(first_run, workdir):
    plan, first = first_run
    out = run_plan(str(plan), profile_name="cpu", workdir=workdir, jobs=1)
    assert out.parent_run_id == first.parent_run_id
    assert {r.run_id for r in out.results} == {r.run_id for r in first.results}
    assert all(r.status == "FINISHED" and "train" not in r.stage_seconds for r in out.results)
    tr = client_for(workdir)
    assert len(tr.find_runs(f"tags.`{TAG_KIND}` = 'spec_run'")) == 4  # nothing duplicated
    assert len(tr.find_runs(f"tags.`{TAG_KIND}` = 'plan'")) == 1


def test_rerun_with_other_resource_settings_reuses_every_run(first_run, workdir):
    """Workers, threads, compile and logging are how a run executes, not what it computes (spec.NOT_IDENTITY):
    a re-run with them changed retrains nothing, opens no run and keeps the plan's parent."""
    plan, first = first_run
    out = run_plan(str(plan), profile_name="cpu", workdir=workdir, jobs=1,
                   extra_sets=["rollout.workers=2", "train.num_threads=2", "train.compile=false", "train.log_every=5"])
    assert out.parent_run_id == first.parent_run_id
    assert {r.run_id for r in out.results} == {r.run_id for r in first.results}
    assert all(r.status == "FINISHED" and "train" not in r.stage_seconds for r in out.results)
    tr = client_for(workdir)
    assert len(tr.find_runs(f"tags.`{TAG_KIND}` = 'spec_run'")) == 4
    assert len(tr.find_runs(f"tags.`{TAG_KIND}` = 'plan'")) == 1


def test_runs_of_an_older_workdir_are_found_by_their_legacy_hash(first_run, workdir, tmp_path):
    """A workdir from before resources left the identity: its runs carry Spec.legacy_hash in MLflow and in
    their checkpoint directories' names. The plan (re-run with the same settings: the legacy hash covers
    them all) finds them, re-tags them with the current hash, links the current directory name to the old
    one and goes on there (one more look, nothing retrained). A later look with rollout.videos (not part of
    the identity) records an mp4 of the chosen init states, logged to the run."""
    import json

    from ablation.arms import resolve_plan
    from ablation.profiles import load_profile
    from ablation.registry import TAG_LEGACY_HASH, find_spec_run
    from ablation.spec import load_plan

    plan, first = first_run
    rp = resolve_plan(load_plan(str(plan)), load_profile("cpu"))
    unit = next(u for u in rp.units() if u.arm.name == "fix_minmax" and u.seed == 0)
    tr = client_for(workdir)
    run = find_spec_run(tr, unit.spec)
    new_dir, legacy = unit.ckpt_dir(workdir), unit.spec.legacy_hash()
    old_dir = new_dir.with_name(new_dir.name.replace(unit.spec.hash(), legacy))
    new_dir.rename(old_dir)  # as an older harness named it, its state pointing there
    state = old_dir / "run_state.json"
    state.write_text(state.read_text().replace(str(new_dir), str(old_dir)))
    tr.set_tags(run.info.run_id, {TAG_SPEC_HASH: legacy})

    more = yaml.safe_load(Path(plan).read_text())
    more["episodes"] = {"looks": [3]}
    bigger = tmp_path / "plan_tiny.yaml"
    bigger.write_text(yaml.safe_dump(more))
    out = run_plan(str(bigger), profile_name="cpu", workdir=workdir, jobs=1, only=["fix_minmax"])
    mine = next(r for r in out.results if r.run_id == run.info.run_id)
    assert mine.status == "FINISHED" and "train" not in mine.stage_seconds, mine.reason
    assert len(tr.find_runs(f"tags.`{TAG_KIND}` = 'spec_run'")) == 4  # nothing new
    tags = tr.client.get_run(run.info.run_id).data.tags
    assert tags[TAG_SPEC_HASH] == unit.spec.hash() and tags[TAG_LEGACY_HASH] == legacy
    assert new_dir.is_symlink() and new_dir.resolve() == old_dir.resolve()
    assert sorted(e["init_state"] for e in episodes_of(tr, run.info.run_id)) == [0, 1, 2]
    assert json.loads((old_dir / "run_state.json").read_text())["bundle"].startswith(str(old_dir))
    # rollout.videos=4 on a look that runs init state 3 only: its episode, on video; the same run goes on
    more["episodes"] = {"looks": [4]}
    bigger.write_text(yaml.safe_dump(more))
    out = run_plan(str(bigger), profile_name="cpu", workdir=workdir, jobs=1, only=["fix_minmax"],
                   extra_sets=["rollout.videos=4"], seeds=[0])
    assert [r.run_id for r in out.results] == [run.info.run_id] and "train" not in out.results[0].stage_seconds
    videos = {a.path for a in tr.client.list_artifacts(run.info.run_id, "videos")}
    assert videos == {"videos/episode_003.mp4"}, videos


def test_more_episodes_append_to_the_same_run_without_retraining(first_run, workdir, tmp_path):
    """A later look (here: a plan asking for 3 episodes) adds init states to the finished runs; no init
    state is repeated and nothing is retrained."""
    plan, first = first_run
    more = yaml.safe_load(Path(plan).read_text())
    more["episodes"] = {"looks": [3]}
    bigger = tmp_path / "plan_tiny.yaml"  # same plan name, so the same runs (same spec hashes)
    bigger.write_text(yaml.safe_dump(more))
    out = run_plan(str(bigger), profile_name="cpu", workdir=workdir, jobs=1, only=["baseline_rdt"])
    tr = client_for(workdir)
    for r in out.results:
        assert r.status == "FINISHED" and "train" not in r.stage_seconds
        eps = episodes_of(tr, r.run_id)
        assert sorted(e["init_state"] for e in eps) == [0, 1, 2]
        hist = tr.client.get_metric_history(r.run_id, "eval/episodes")
        assert sorted(m.value for m in hist)[-1] == 3.0


def test_failing_spec_is_recorded_and_the_plan_goes_on(first_run, workdir, tmp_path):
    bad = tmp_path / "diverges.yaml"
    bad.write_text(f"extends: {EXPERIMENTS_DIR / 'base.yaml'}\ntrain: {{lr: 1.0e+30, warmup_steps: 0}}\n")
    missing = tmp_path / "no_demos.yaml"
    missing.write_text(f"extends: {EXPERIMENTS_DIR / 'base.yaml'}\ndata: {{demo_file: {tmp_path / 'nope.hdf5'}}}\n")
    plan = write_plan(tmp_path, "mixed", [str(bad), str(missing), str(EXPERIMENTS_DIR / "fix_minmax.yaml")])
    out = run_plan(str(plan), profile_name="cpu", workdir=workdir, jobs=1)  # (a failure is recorded by the run itself)
    st = {r.spec_name: r for r in out.results}
    assert st["fix_minmax"].status == "FINISHED" and "train" not in st["fix_minmax"].stage_seconds
    assert st["diverges"].status == "FAILED" and "train" in st["diverges"].reason
    assert st["no_demos"].status == "FAILED" and "nope.hdf5" in st["no_demos"].reason
    tr = client_for(workdir)
    run = tr.client.get_run(st["diverges"].run_id)
    assert run.info.status == "FAILED"
    assert "non-finite" in run.data.tags["ablation.failure_reason"].lower() or \
        "nan" in run.data.tags["ablation.failure_reason"].lower()
    assert tr.client.get_run(out.parent_run_id).info.status == "FAILED"
    # the CLI exit code says so too (dry run: nothing is re-run, nothing failed -> 0)
    cli = cli_here("--plan", str(plan), "--dry-run", "--profile", "cpu", "--workdir", str(workdir))
    assert cli.returncode == 0 and "failed" in cli.stdout, (cli.stdout, cli.stderr)


def test_interrupted_run_resumes_from_its_checkpoint(workdir, tmp_path):
    spec = tmp_path / "long.yaml"
    spec.write_text(f"extends: {EXPERIMENTS_DIR / 'base.yaml'}\n")
    # Killed at its first checkpoint (polled every 0.2 s, a checkpoint every 25 steps), so the resumed
    # run only has to finish a few hundred steps: the resume, not the training, is under test.
    plan = write_plan(tmp_path, "long", [str(spec)], TINY + ["train.steps=400", "train.checkpoint_every=25",
                                                          "train.compile=false"])  # (a cold compile is not under test)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = open(tmp_path / "first_attempt.log", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "run_ablation.py"), "--plan", str(plan), "--profile", "cpu",
                             "--workdir", str(workdir)], cwd=REPO, env=env, start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)
    ckpts = workdir / "checkpoints"
    deadline = time.time() + 240
    bundle = None
    while time.time() < deadline and bundle is None:
        time.sleep(0.2)
        bundle = next((p for p in ckpts.glob("long-seed0-*/checkpoints/step_*") if (p / "meta.json").is_file()), None)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert bundle is not None, "no checkpoint before the deadline:\n" + (tmp_path / "first_attempt.log").read_text()[-3000:]
    done_step = int(bundle.name.split("_")[1])
    assert 0 < done_step < 400
    # the killed run's scratch folder is left beside its checkpoints (not in /tmp), where the resume clears it
    run_dir = bundle.parents[1]
    assert (run_dir / SCRATCH_DIR).is_dir()
    tr = client_for(workdir)
    runs = tr.find_runs(f"tags.`{TAG_SPEC}` = 'long'")
    assert len(runs) == 1 and runs[0].info.status == "RUNNING"
    killed_parent = tr.find_runs("tags.`ablation.plan` = 'plan_long' and tags.`ablation.kind` = 'plan'")
    assert len(killed_parent) == 1 and killed_parent[0].info.status == "RUNNING"
    out = run_plan(str(plan), profile_name="cpu", workdir=workdir,
                   extra_sets=[])  # same spec, same hash: resume
    assert [r.status for r in out.results] == ["FINISHED"]
    assert out.results[0].took_over  # (the plan's clock prices the runs left at fresh runs' cost, not at this one's)
    # the killed invocation's parent was taken over (one parent per plan), and its end recorded
    parents = tr.find_runs("tags.`ablation.plan` = 'plan_long' and tags.`ablation.kind` = 'plan'")
    assert [p.info.run_id for p in parents] == [killed_parent[0].info.run_id] == [out.parent_run_id]
    runs = tr.find_runs(f"tags.`{TAG_SPEC}` = 'long'")
    assert len(runs) == 1 and runs[0].info.run_id == out.results[0].run_id and runs[0].info.status == "FINISHED"
    import json
    meta = json.loads(next((ckpts).glob("long-seed0-*/checkpoints/step_*/meta.json")).read_text())
    assert meta["step"] == 400 and meta.get("resumed_from") == done_step
    assert not (run_dir / SCRATCH_DIR).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_ui_shows_the_runs(first_run, workdir):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (scripts/ci_services.sh installs it)"
    port = _free_port()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    ui = subprocess.Popen([mlflow, "ui", "--backend-store-uri", default_tracking_uri(workdir), "--workers", "1",
                           "--host", "127.0.0.1", "--port", str(port)], env=env, start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import urllib.request

        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        tr = client_for(workdir)
        prof = Path(os.environ.get("TMPDIR", "/tmp")) / f"chromium-{port}"

        def dom(fragment: str) -> str:
            return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                                   "--no-first-run", "--disable-background-networking", "--disable-component-update",
                                   "--disable-sync", f"--user-data-dir={prof}", "--virtual-time-budget=30000",
                                   "--dump-dom", f"http://127.0.0.1:{port}/#/experiments/{tr.experiment_id}{fragment}"],
                                  capture_output=True, text=True, timeout=180).stdout

        _, out = first_run
        page = dom("/runs")  # the runs view the plan prints: the parent run, its nested runs folded under it
        assert "plan:plan_tiny" in page, page[-2000:]
        # one nested run's page (each headless Chromium load costs ~10 s on 2 busy cores; the four
        # children's pages are rendered by the same view)
        child = tr.find_runs(f"tags.`mlflow.parentRunId` = '{out.parent_run_id}'")[0]
        page = dom(f"/runs/{child.info.run_id}")
        assert child.info.run_name in page and "eval/success_rate" in page, page[-2000:]
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


def test_tiny_pretrained_rdt_fine_tunes_through_the_plan(workdir, tmp_path):
    plan = write_plan(tmp_path, "rdt", [str(EXPERIMENTS_DIR / "fix_velocity_slots.yaml")],
                      TINY + ["model.kind=rdt", "model.size=rdt-tiny-fixture", "data.action_chunk=64",
                              f"model.pretrained={RDT_CKPT}", "train.steps=10", "train.eval_every=5"])
    out = run_plan(str(plan), profile_name="cpu", workdir=workdir)
    assert [r.status for r in out.results] == ["FINISHED"], [r.reason for r in out.results]
    assert not out.results[0].took_over  # a new run, one look: it started from nothing
    run = client_for(workdir).client.get_run(out.results[0].run_id)
    assert run.data.params["model.kind"] == "rdt" and "eval/success_rate" in run.data.metrics
