"""One plan per workdir: real processes hold, wait for, refuse and take over the plan lock.

The holder is a small real process that takes `plan_lock` (a plan run would spend minutes training
first); the second is the real `run_ablation.py --plan` CLI, or a second holder process."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ablation.locks import LockBusy, owner_lock, plan_lock, write_atomic

REPO = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from ablation.locks import plan_lock
with plan_lock(sys.argv[1], "plan holder", say=lambda m: print(m, flush=True)):
    print("held", time.time(), flush=True)
    time.sleep(float(sys.argv[2]))
print("released", time.time(), flush=True)
"""


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _holder(workdir: Path, hold_s: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir), str(hold_s)], stdout=subprocess.PIPE, text=True,
                         env=_env())
    line = p.stdout.readline()
    assert line.startswith("held"), line
    return p


def test_second_plan_refuses_with_no_wait_naming_the_first(tmp_path):
    holder = _holder(tmp_path, 120)
    try:
        t = time.monotonic()
        r = subprocess.run([sys.executable, str(REPO / "run_ablation.py"), "--plan", "smoke", "--profile", "cpu",
                            "--workdir", str(tmp_path), "--no-wait"], capture_output=True, text=True, env=_env(),
                           timeout=300)
        assert r.returncode == 2, r.stderr[-2000:]
        err = r.stderr.strip().splitlines()[-1]
        assert f"pid {holder.pid} on {socket.gethostname()}, since " in err and "plan holder" in err, err
        assert time.monotonic() - t < 120  # refused at once, not after the holder let go
        assert holder.poll() is None  # the first is untouched
        rec = json.loads((tmp_path / "locks" / "plan.owner.json").read_text())
        assert rec["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_second_waits_for_the_first_and_says_who(tmp_path):
    holder = _holder(tmp_path, 3)
    waiter = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path), "0"], capture_output=True, text=True,
                            env=_env(), timeout=120)
    out_h = holder.communicate(timeout=60)[0]
    lines = waiter.stdout.splitlines()
    assert lines[0].startswith("[lock] waiting: ") and f"pid {holder.pid}" in lines[0], waiter.stdout
    released = float(next(ln for ln in out_h.splitlines() if ln.startswith("released")).split()[1])
    held = float(next(ln for ln in lines if ln.startswith("held")).split()[1])
    assert held >= released - 0.5  # the second got it only once the first let go
    assert not (tmp_path / "locks" / "plan.owner.json").exists()  # both released cleanly


def test_stale_lock_of_a_killed_plan_is_taken_over(tmp_path):
    holder = _holder(tmp_path, 120)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    rec = tmp_path / "locks" / "plan.owner.json"
    assert json.loads(rec.read_text())["pid"] == holder.pid  # left behind by the kill
    r = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path), "0"], capture_output=True, text=True, env=_env(),
                       timeout=120)
    first = r.stdout.splitlines()[0]
    assert first.startswith("[lock] taking over a stale lock") and f"pid {holder.pid}" in first, r.stdout
    assert f"process {holder.pid} is gone" in first and "held" in r.stdout


def test_a_child_that_outlives_the_killed_plan_does_not_keep_the_lock(tmp_path):
    """A forked worker inherits the plan's file descriptors; the lock is the record, not an fd, so
    killing the plan frees it even while the worker lives on."""
    code = HOLD.replace('print("held", time.time(), flush=True)',
                        'import os\n    if os.fork() == 0:\n        time.sleep(60); os._exit(0)\n'
                        '    print("held", time.time(), flush=True)')
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), "120"], stdout=subprocess.PIPE, text=True,
                         env=_env(), start_new_session=True)
    assert p.stdout.readline().startswith("held")
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    try:
        msgs = []
        with plan_lock(tmp_path, "second", wait=False, say=msgs.append) as me:
            assert me.pid == os.getpid()
        assert msgs and "stale" in msgs[0]
    finally:
        os.killpg(p.pid, signal.SIGKILL)


def test_a_record_from_another_host_is_stale_only_without_heartbeat(tmp_path):
    rec = tmp_path / "locks" / "plan.owner.json"
    rec.parent.mkdir(parents=True)
    rec.write_text(json.dumps({"pid": 1, "host": "node-elsewhere", "since": "2026-01-01T00:00:00+00:00",
                               "what": "plan all", "start_ticks": None}))
    with pytest.raises(LockBusy, match="pid 1 on node-elsewhere"):
        with owner_lock(rec, "second", wait=False):
            pass
    old = time.time() - 3600
    os.utime(rec, (old, old))
    msgs = []
    with owner_lock(rec, "second", wait=False, say=msgs.append):
        pass
    assert "no heartbeat for" in msgs[0]


def test_write_atomic_leaves_the_old_file_whole_on_a_full_disk(tmp_path, monkeypatch):
    """ENOSPC injected into the write (no small tmpfs can be mounted here): the record keeps its old
    content and no temporary file is left behind."""
    import builtins

    from ablation import locks

    p = tmp_path / "record.json"
    write_atomic(p, '{"old": 1}')

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, _text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(locks, "open", lambda *a, **k: FullDisk(builtins.open(*a, **k)), raising=False)
    with pytest.raises(OSError) as e:
        write_atomic(p, '{"new": 2}')
    assert e.value.errno == errno.ENOSPC
    assert json.loads(p.read_text()) == {"old": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["record.json"]
