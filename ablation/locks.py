"""One definition of an exclusive file lock, shared by every process that touches a file or folder.

`flock` is released by the kernel when the holder exits or dies, so a killed plan, tune worker or
Ray task never leaves a stale lock behind. On network filesystems it depends on the mount (NFS with
lockd, Lustre with `flock`)."""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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
