"""The disk fills while a checkpoint bundle, a record or a demo file is written (issue 26, "Faults beyond
kill -9"): the error names the path and the space needed, nothing half-written is left, and the last
whole bundle still loads.

A plan record is an MLflow artifact, uploaded whole or cut short by the store's disk: the report refuses
a cut-short one by name.

The full disk is real: a small tmpfs mounted for the test (this needs root, or CAP_SYS_ADMIN). Where no
tmpfs can be mounted those tests skip, saying so, and `test_an_injected_enospc_mid_bundle_...` covers the
same path with an ENOSPC injected into the bundle writer.
"""
from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ablation import bundle as B
from ablation.data import read_demo_file, write_demo_file
from ablation.diskfull import DiskFullError
from ablation.locks import write_atomic
from ablation.plan_record import PLAN_RECORD
from ablation.report import ReportError, build_report
from ablation.run import save_state
from ablation.spec import resolve_spec, spec_path
from ablation.tracking import Tracker, default_tracking_uri
from ablation.train import train
from tests.conftest import synthetic_episode, synthetic_meta
from tests.test_bundle import FAST

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(synthetic_demo_file, tmp_path_factory) -> Path:
    """A real bundle of a 2-step tiny run (weights, codec, optimizer state)."""
    spec = resolve_spec(spec_path("fix_minmax"), FAST)
    return train(spec, synthetic_demo_file, tmp_path_factory.mktemp("run"), progress=False).checkpoint_dir


@pytest.fixture
def small_disk(tmp_path):
    """mount(size_bytes) -> a folder on a tmpfs of that size, unmounted after the test."""
    mounted: list[Path] = []

    def mount(size_bytes: int) -> Path:
        d = tmp_path / f"disk{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"no tmpfs can be mounted here ({r.stderr.strip()}); the injected-ENOSPC test covers it")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:  # lazy: a handle a failed writer still holds must not leave the mount behind
        subprocess.run(["umount", "-l", str(d)], check=True)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _needed_bytes(msg: str) -> float:
    n, unit = re.search(r"needed about ([0-9.]+) (MiB|bytes)", msg).groups()
    return float(n) * (2**20 if unit == "MiB" else 1)


def test_a_full_disk_mid_bundle_keeps_the_last_whole_bundle(bundle, small_disk):
    policy, meta, state = B.load_policy(bundle), B.read_meta(bundle), B.read_train_state(bundle)
    size = _size(bundle)
    out = small_disk(int(1.5 * size) // 4096 * 4096) / "run"  # room for one bundle, not for the next beside it
    B.write_bundle(out, policy, {**meta, "step": 3}, state)
    with pytest.raises(DiskFullError) as e:
        B.write_bundle(out, policy, {**meta, "step": 4}, state)
    msg = str(e.value)
    assert str(out / "checkpoints" / "step_0000004") in msg and "free now" in msg, msg
    assert 0.7 * size < _needed_bytes(msg) < 1.3 * size, (msg, size)
    assert e.value.errno == errno.ENOSPC  # still an OSError for code that handles one
    # nothing half-written: no temp folder, and the newest whole bundle is the one a resume finds
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_0000003"]
    last = B.latest_bundle(out)
    assert last.name == "step_0000003" and B.read_train_state(last)["step"] == state["step"]
    B.load_policy(last)


def test_an_injected_enospc_mid_bundle_keeps_the_last_whole_bundle(bundle, tmp_path, monkeypatch):
    """The same path where no tmpfs can be mounted: the weights file is half written, then ENOSPC."""
    policy, meta, state = B.load_policy(bundle), B.read_meta(bundle), B.read_train_state(bundle)
    B.write_bundle(tmp_path, policy, {**meta, "step": 3}, state)

    def full(policy, where, weights=None):
        (where / B.WEIGHTS).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", str(where / B.WEIGHTS))

    monkeypatch.setattr(B, "save_weights", full)
    with pytest.raises(DiskFullError, match="step_0000004.*needed about"):
        B.write_bundle(tmp_path, policy, {**meta, "step": 4}, state)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_0000003"]
    B.load_policy(B.latest_bundle(tmp_path))


# In a child process: HDF5 does not recover from a write that hits a full disk (seen here: a segfault in
# the writer, and a later h5py close aborting the whole pytest process), so write_demo_file checks the
# space before its first byte; the child keeps this process's HDF5 clean whatever happens.
DEMO_CHILD = """
import re, sys
import numpy as np
from ablation.data import read_demo_file, write_demo_file
from ablation.diskfull import DiskFullError
from tests.conftest import synthetic_episode, synthetic_meta
path = sys.argv[1]
rng = np.random.default_rng(0)
eps = [synthetic_episode(rng, T=40) for _ in range(40)]
try:
    write_demo_file(path, eps, synthetic_meta())
except DiskFullError as e:
    print("DISKFULL", str(e))
print("LEFT", sorted(__import__("os").listdir(__import__("os").path.dirname(path))))
"""


def test_a_full_disk_mid_demo_file_leaves_no_demo_file(small_disk):
    disk = small_disk(64 * 1024)
    path = disk / "demos.hdf5"
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", DEMO_CHILD, str(path)], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"DISKFULL {path}" in r.stdout or (str(path) in r.stdout and "DISKFULL" in r.stdout), r.stdout
    assert "LEFT []" in r.stdout  # neither the file nor its .partial
    rng = np.random.default_rng(0)
    write_demo_file(path, [synthetic_episode(rng, T=40)], synthetic_meta())  # a file that fits: whole
    assert len(read_demo_file(path).episodes) == 1


def test_a_full_disk_mid_record_keeps_the_old_record(small_disk):
    disk = small_disk(64 * 1024)
    save_state(disk, {"done": ["audit"], "episodes": []})
    record = disk / "run_state.json"
    with pytest.raises(DiskFullError, match=re.escape(str(record))):
        save_state(disk, {"done": ["audit", "train"], "episodes": [0.5] * 100_000})
    assert record.read_text().count("train") == 0  # the old record, whole
    with pytest.raises(DiskFullError, match="owner.json"):
        write_atomic(disk / "owner.json", "x" * 200_000)
    assert sorted(p.name for p in disk.iterdir()) == ["run_state.json"]


def test_a_cut_short_plan_record_is_refused_by_the_report(tmp_path):
    """A plan record whose upload a full disk cut short is an error naming it, never read as a whole one."""
    tracker = Tracker.open(default_tracking_uri(tmp_path), "plans", artifact_root=tmp_path / "artifacts")
    parent = tracker.start_run("plan:x", {"ablation.kind": "plan"})
    whole = json.dumps({"plan": "x", "hypotheses": [], "arms": {}, "runs": {}})
    cut = tmp_path / "upload" / PLAN_RECORD
    cut.parent.mkdir()
    cut.write_text(whole[: len(whole) // 2])
    tracker.log_artifact(parent, cut)
    with pytest.raises(ReportError, match=f"{PLAN_RECORD} of run {parent} is not whole JSON"):
        build_report(tracker, parent_run_id=parent, out_dir=tmp_path / "report")
