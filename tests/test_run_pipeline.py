"""The run pipeline without the simulator (no Gate A, no episodes): one read of the demo file, one codec
fit, and the audit of the codec that trains; a second call does nothing again; a failing stage is
recorded on the run with its name and reason."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from ablation.bundle import POLICY_FILES, TRAIN_STATE
from ablation.audit import audit
from ablation.codec import ActionCodec
from ablation.data import episode_view, physical_actions, read_demo_file
from ablation.run import SCRATCH_DIR, RunJob, execute, load_state, run_scratch
from ablation.spec import resolve_spec, spec_path
from ablation.tracking import TAG_FAILURE, TAG_STAGE, Tracker

TINY = ["model.size=tiny", "train.batch_size=16", "train.steps=10", "train.log_every=5", "train.eval_every=10",
        "train.num_threads=1", "data.action_chunk=8"]


def _job(spec, tracker: Tracker, demo: Path, ckpt: Path) -> RunJob:
    run_id = tracker.start_run(spec.name, {})
    return RunJob(spec.name, spec.to_yaml(), 0, run_id, tracker.tracking_uri, tracker.experiment_id, str(demo),
                  str(ckpt), (), progress=False, gate_episodes=0)


def _count_opens(monkeypatch, path: Path, opens: list) -> None:
    """Every HDF5 open of `path` (each reader of the demo file opens it), counted, then done for real."""
    real = h5py.File

    def counted(name, *args, **kwargs):
        if Path(name).resolve() == Path(path).resolve():
            opens.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", counted)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> Tracker:
    d = tmp_path_factory.mktemp("mlflow")
    return Tracker.open(f"sqlite:///{d}/mlflow.db", "pipeline", d / "artifacts")


@pytest.fixture(scope="module")
def finished(synthetic_demo_file, tracker, tmp_path_factory):
    """One run of fix_minmax brought to FINISHED, with the demo reads and codec fits it made."""
    mp = pytest.MonkeyPatch()
    reads: list = []
    fits: list = []
    _count_opens(mp, synthetic_demo_file, reads)
    real_fit = ActionCodec.fit.__func__
    mp.setattr(ActionCodec, "fit", classmethod(lambda cls, *a, **k: fits.append(1) or real_fit(cls, *a, **k)))
    try:
        spec = resolve_spec(spec_path("fix_minmax"), TINY)
        job = _job(spec, tracker, synthetic_demo_file, tmp_path_factory.mktemp("ckpt") / "run")
        res = execute(job)
    finally:
        mp.undo()
    return spec, job, res, len(reads), len(fits)


def test_one_read_of_the_demo_file_and_one_codec_fit(finished):
    spec, job, res, reads, fits = finished
    assert res.status == "FINISHED", res.reason
    assert (reads, fits) == (1, 1)
    # no init states asked and none run yet (a train-only call): no closed loop, no empty eval/* figures
    assert set(res.stage_seconds) == {"audit", "train", "open_loop", "artifacts", "total"}
    assert load_state(Path(job.ckpt_dir))["done"] == ["audit", "train", "open_loop", "artifacts"]
    assert not any(k.startswith("eval/") for k in res.metrics)


def test_the_audit_reports_the_codec_that_trains(finished, tracker, synthetic_demo_file):
    spec, job, res, _, _ = finished
    run = tracker.client.get_run(job.run_id)
    arts = {a.path for a in tracker.client.list_artifacts(job.run_id)}
    assert {"audit", "checkpoint", "codec.json", "plots", "spec.yaml"} <= arts and "rollouts" not in arts
    # the checkpoint artifact is the policy's files, once: no training state
    ckpt = {a.path.split("/")[-1] for a in tracker.client.list_artifacts(job.run_id, "checkpoint")}
    assert ckpt == set(POLICY_FILES) and TRAIN_STATE not in ckpt
    assert run.data.tags[TAG_STAGE] == "done"
    with tempfile.TemporaryDirectory() as d:
        logged = json.loads(Path(tracker.client.download_artifacts(job.run_id, "audit/audit.json", d)).read_text())
        codec = ActionCodec.load(tracker.client.download_artifacts(job.run_id, "codec.json", d))
    # The training codec, encoding the training split, gives the audit's per-group RMS.
    meta = json.loads((Path(load_state(Path(job.ckpt_dir))["bundle"]) / "meta.json").read_text())
    ds = read_demo_file(synthetic_demo_file)
    views = [episode_view(ep, ds.meta.obs_convention) for ep in ds.episodes]
    model = codec.encode(np.concatenate([physical_actions(views[i], codec.rep) for i in meta["train_demos"]]))
    for g, slots in codec.group_slots.items():
        assert logged["groups"][g]["rms"] == pytest.approx(float(np.sqrt(np.mean(model[:, slots] ** 2))), rel=1e-9)
    assert logged["codec_fit"] == f"training split: {len(meta['train_demos'])} of {len(views)} demos"
    assert run.data.metrics["audit/rms/pos"] == pytest.approx(logged["groups"]["pos"]["rms"])
    # the standalone audit (CLI, doctor) fits the same codec on the same split
    assert audit(spec, synthetic_demo_file).to_json()["groups"] == logged["groups"]


def test_a_second_call_reads_nothing_and_trains_nothing(finished, tracker, monkeypatch, synthetic_demo_file):
    spec, job, first, _, _ = finished
    reads: list = []
    _count_opens(monkeypatch, synthetic_demo_file, reads)
    res = execute(job)
    assert res.status == "FINISHED" and set(res.stage_seconds) == {"total"}
    assert reads == []
    assert res.metrics["audit/scale_ratio"] == first.metrics["audit/scale_ratio"]


def test_a_failing_stage_is_recorded_with_its_name_and_reason(tracker, tmp_path):
    spec = resolve_spec(spec_path("fix_minmax"), TINY)
    job = _job(spec, tracker, tmp_path / "missing.hdf5", tmp_path / "ckpt")
    res = execute(job)
    assert res.status == "FAILED"
    assert res.reason.startswith("audit: DemoFileError: ") and "missing.hdf5: demo file not found" in res.reason
    run = tracker.client.get_run(job.run_id)
    assert run.info.status == "FAILED" and run.data.tags[TAG_FAILURE].startswith("audit: DemoFileError")
    assert run.data.tags[TAG_STAGE] == "audit"
    assert load_state(tmp_path / "ckpt")["done"] == []


def test_run_scratch_is_emptied_at_start_and_removed_at_the_end(tmp_path):
    """A killed run's leftovers (here a stale file) are cleared when the run starts again, and the folder
    is gone when the run ends, whether it ended by an exception or not."""
    stale = tmp_path / SCRATCH_DIR / "send" / "audit.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    with run_scratch(tmp_path) as d:
        assert d == tmp_path / SCRATCH_DIR and d.is_dir() and not any(d.iterdir())
        (d / "spec.yaml").write_text("x")
    assert not d.exists()
    with pytest.raises(RuntimeError):
        with run_scratch(tmp_path / "new_run") as d2:  # a run folder that does not exist yet is made
            raise RuntimeError("a stage failed")
    assert not d2.exists() and d2.parent.is_dir()
