"""A full disk (ENOSPC, or EDQUOT on a quota) while a bundle, record or demo file is written: one clear
error that names the path, the space the write needed and the space left, instead of a library's
traceback (torch.save says only "unexpected pos 640 vs 534"; safetensors "os error 28").

Writers write to a temporary name and rename it when whole; `disk_full_as_error` removes the temporary
name on the way out, so nothing half-written is left for a resume to trip over.
"""
from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import UserError

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_MESSAGES = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")


class DiskFullError(UserError):
    """The disk (or the user's quota) filled up while a file was written."""


def is_disk_full(e: BaseException) -> bool:
    """`e` or an exception it was raised from is a full disk. torch.save wraps the OSError of its file in a
    RuntimeError (kept as __context__); safetensors only puts the OS error in its message."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _FULL_ERRNOS:
            return True
        if any(m in str(cur) for m in _FULL_MESSAGES):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def free_bytes(path: str | Path) -> int | None:
    """Free space on the filesystem that holds `path` (its nearest existing folder), or None."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@contextmanager
def disk_full_as_error(path: str | Path, needed_bytes: int | None = None,
                       cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """Run the block that writes `path`; a full disk in it becomes a DiskFullError (after `cleanup`, which
    removes the partial temporary file or folder). Other errors pass unchanged, after `cleanup` too."""
    try:
        yield
    except BaseException as e:
        if cleanup is not None:
            cleanup()
        if not isinstance(e, Exception) or not is_disk_full(e):
            raise
        free = free_bytes(path)
        need = f"about {_mb(needed_bytes)}" if needed_bytes is not None else "an unknown amount"
        left = _mb(free) if free is not None else "unknown"
        raise DiskFullError(f"{path}: the disk filled up while writing it (needed {need}, {left} free now on "
                            f"{_mount_of(path)}); nothing half-written was kept. Free space there, or move the workdir "
                            "to a larger disk, and re-run") from e


def _mount_of(path: str | Path) -> str:
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    while not p.is_mount() and p != p.parent:
        p = p.parent
    return str(p)
