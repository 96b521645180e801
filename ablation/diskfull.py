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


class DiskFullError(UserError, OSError):
    """The disk (or the user's quota) filled up while a file was written. Also an OSError with the original
    errno, so callers that handle a full disk as an OSError still do."""

    def __init__(self, message: str, err: int = errno.ENOSPC):
        super().__init__(message)
        self.errno = err


def _chain(e: BaseException) -> Iterator[BaseException]:
    """`e` and the exceptions it was raised from or during."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def is_disk_full(e: BaseException) -> bool:
    """`e` or an exception it was raised from is a full disk. torch.save wraps the OSError of its file in a
    RuntimeError (kept as __context__); safetensors only puts the OS error in its message."""
    return any((isinstance(x, OSError) and x.errno in _FULL_ERRNOS) or any(m in str(x) for m in _FULL_MESSAGES)
               for x in _chain(e))


def free_bytes(path: str | Path) -> int | None:
    """Free space on the filesystem that holds `path` (its nearest existing folder), or None."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def _errno(e: BaseException) -> int:
    return next((x.errno for x in _chain(e) if isinstance(x, OSError) and x.errno in _FULL_ERRNOS), errno.ENOSPC)


def ensure_space(path: str | Path, needed_bytes: int) -> None:
    """Refuse to start a write that cannot fit: some writers (HDF5) do not recover from a full disk
    mid-write and can crash the process, so they are checked before the first byte."""
    free = free_bytes(path)
    if free is not None and needed_bytes > free:
        raise DiskFullError(f"{path}: needs at least {_size(needed_bytes)} and only {_size(free)} is free on "
                            f"{_mount_of(path)}; nothing was written. Free space there, or move the workdir to a "
                            "larger disk, and re-run")


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
        need = f"about {_size(needed_bytes)}" if needed_bytes is not None else "an unknown amount"
        left = _size(free) if free is not None else "unknown"
        raise DiskFullError(f"{path}: the disk filled up while writing it (needed {need}, {left} free now on "
                            f"{_mount_of(path)}); nothing half-written was kept. Free space there, or move the workdir "
                            "to a larger disk, and re-run", _errno(e)) from e


def _mount_of(path: str | Path) -> str:
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    while not p.is_mount() and p != p.parent:
        p = p.parent
    return str(p)
