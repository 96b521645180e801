"""One definition of an exclusive file lock, shared by every process that touches a file or folder, and
the owner lock a plan holds on its workdir.

`flock` is released by the kernel when the holder exits or dies, so a killed plan, tune worker or
Ray task never leaves a stale lock behind. On network filesystems it depends on the mount (NFS with
lockd, Lustre with `flock`).

`owner_lock` is held for a whole plan: a second plan on the same workdir waits, with a message that
names the first (pid, host, since when), or refuses (`--no-wait`). Its record is a small JSON file
written atomically; `flock` only guards reading and writing it, for an instant. So a child the plan
forked (a worker that inherited its file descriptors) cannot keep the lock alive after the plan is
killed: a record whose process is gone (same host: pid dead, or reused by another process; another
host: no heartbeat for STALE_AFTER_S) is stale, and the next plan takes it over and says so."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from .diskfull import disk_full_as_error
from .errors import UserError

HEARTBEAT_S = 10.0     # the holder touches its record this often
STALE_AFTER_S = 120.0  # a record from another host without a heartbeat for this long is stale


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created with its folder if missing) for the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class LockBusy(UserError):
    """The workdir is held by another live plan and the caller would not wait."""


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    since: str               # ISO time, UTC
    what: str                # e.g. "plan smoke"
    start_ticks: int | None  # the process's start time (/proc), so a reused pid is not taken for the owner

    def describe(self) -> str:
        return f"{self.what} (pid {self.pid} on {self.host}, since {self.since})"


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None


def _alive(owner: LockOwner) -> bool:
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    now = _start_ticks(owner.pid)
    return owner.start_ticks is None or now is None or now == owner.start_ticks


def _read(record: Path) -> LockOwner | None:
    try:
        return LockOwner(**json.loads(record.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):  # torn or foreign content: nobody can hold it
        return None


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write `content` (text, or bytes such as a PNG) to a temporary file, fsync it, rename it over
    `path`: readers see the old or the new file, never half of one (a full disk fails before the rename
    and leaves `path` as it was)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = content.encode() if isinstance(content, str) else content
    with disk_full_as_error(path, len(data), cleanup=lambda: tmp.unlink(missing_ok=True)):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def stale_reason(owner: LockOwner, record: Path) -> str | None:
    """Why the owner no longer holds the lock, or None while it does."""
    if owner.host == socket.gethostname():
        return None if _alive(owner) else f"process {owner.pid} is gone"
    try:
        age = time.time() - record.stat().st_mtime
    except FileNotFoundError:
        return "the record is gone"
    return f"no heartbeat for {age:.0f} s (> {STALE_AFTER_S:g} s)" if age > STALE_AFTER_S else None


@contextmanager
def owner_lock(record: str | Path, what: str, *, wait: bool = True, poll_s: float = 1.0,
               say: Callable[[str], None] = print) -> Iterator[LockOwner]:
    """Hold `record` for the block as `what`. Held by a live process elsewhere: wait (saying who holds it,
    once) or, with wait=False, raise LockBusy naming the holder. A stale record is taken over."""
    record = Path(record)
    record.parent.mkdir(parents=True, exist_ok=True)
    guard = record.with_name(record.name + ".guard")
    me = LockOwner(os.getpid(), socket.gethostname(), datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   what, _start_ticks(os.getpid()))
    announced = False
    while True:
        with file_lock(guard):
            cur = _read(record)
            why = stale_reason(cur, record) if cur is not None else None
            if cur is None or why is not None:
                if cur is not None:
                    say(f"[lock] taking over a stale lock on {record.parent}: {cur.describe()}; {why}")
                write_atomic(record, json.dumps(asdict(me)))
                break
        if cur.pid == me.pid and cur.host == me.host:
            raise RuntimeError(f"{record}: this process already holds it")
        if not wait:
            raise LockBusy(f"{record.parent} is in use by {cur.describe()}; wait for it (run without --no-wait) "
                           f"or stop it; a killed holder's lock is taken over by the next run")
        if not announced:
            say(f"[lock] waiting: {record.parent} is in use by {cur.describe()}")
            announced = True
        time.sleep(poll_s)

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                os.utime(record)
            except OSError:
                pass

    t = threading.Thread(target=beat, name="lock-heartbeat", daemon=True)
    t.start()
    try:
        yield me
    finally:
        stop.set()
        with file_lock(guard):
            if _read(record) == me:
                record.unlink(missing_ok=True)


def plan_lock(workdir: str | Path, what: str, *, wait: bool = True,
              say: Callable[[str], None] = print):
    """The lock one plan holds on its workdir for its whole run."""
    return owner_lock(Path(workdir) / "locks" / "plan.owner.json", what, wait=wait, say=say)
