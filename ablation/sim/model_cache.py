"""Compiled MuJoCo scenes kept on disk, so a process's first env of a task loads its model, not compiles it.

A process's first compile of a LIBERO scene costs ~3.5 CPU-s on libero_object 0: MuJoCo decodes every
texture (147 MB of pixels there) and mesh, then keeps them in a per-process asset cache, so the same XML
compiles again in ~0.5 s. Every rollout worker, plan job, demo worker and CLI process is a new process and
paid the 3.5 s. The compiled model saved in MuJoCo's own binary format (`mj_saveModel`, ~250 MB for that
scene) loads back in ~0.5 s, every array equal to the fresh compile (tests/test_model_cache.py, and
tests/test_fast_env.py against the stock env's compile over whole episodes).

The key is the SHA-256 of MuJoCo's version, the XML, and the path, size and mtime of every file the XML
names, so a changed mesh or texture, or another MuJoCo, compiles afresh. An XML that names a file by a
relative path, or a file that is missing, is compiled as before and not kept (MuJoCo resolves those
against directories this key does not see). Files go to `<user cache>/mujoco_models/`
(`$XDG_CACHE_HOME/ablation`), written to a temporary name and renamed, so two processes that compile the
same scene at once each write a whole file; the least recently used are deleted past
`ABLATION_MODEL_CACHE_GB` (default 4; 0 turns the cache off). Anything unusual (a read-only or full disk,
a damaged file) falls back to MuJoCo's compile: the cache is a shortcut, never a requirement.

Used by the fast reset (`fast_reset.ModelReuse`, with `sim.fast`); the stock path (`sim.fast=false`)
compiles as robosuite does.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from ..user_cache import cache_dir

__all__ = ["compile_xml", "limit_bytes", "model_arrays", "model_dir", "model_key", "saved_xml", "STATS"]

log = logging.getLogger(__name__)

LIMIT_ENV = "ABLATION_MODEL_CACHE_GB"
DEFAULT_LIMIT_GB = 4.0
# Every MJCF attribute that names a file: file=, and a cube texture's fileright=, fileup=, ...
_FILE_ATTR = re.compile(r'\bfile[a-z]*="([^"]*)"')
STATS = {"hits": 0, "misses": 0, "writes": 0, "evicted": 0}  # this process's, for tests and benchmarks
# The last XML this module had MuJoCo parse, and the model of that parse when it was made only to save an XML.
_last: dict = {"xml": None, "twin": None}


def model_dir() -> Path:
    return cache_dir() / "mujoco_models"


def limit_bytes() -> int:
    raw = os.environ.get(LIMIT_ENV, "").strip()
    try:
        gb = float(raw) if raw else DEFAULT_LIMIT_GB
    except ValueError:
        log.warning("%s=%r is not a number of GB; using %s", LIMIT_ENV, raw, DEFAULT_LIMIT_GB)
        gb = DEFAULT_LIMIT_GB
    return int(max(gb, 0.0) * (1 << 30))


def model_key(xml: str) -> str | None:
    """The cache key of this XML on this install, or None when it cannot be cached (a relative or
    missing file)."""
    import mujoco

    h = hashlib.sha256(f"mujoco {mujoco.__version__} {mujoco.mj_versionString()}\n".encode())
    h.update(xml.encode())
    for name in sorted(set(_FILE_ATTR.findall(xml))):
        if not os.path.isabs(name):
            return None
        try:
            st = os.stat(name)
        except OSError:
            return None
        h.update(f"\n{name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def model_arrays(model) -> dict[str, np.ndarray]:
    """Every numpy array field of a raw MjModel, by name."""
    out = {}
    for name in dir(model):
        if name.startswith("_"):
            continue
        try:
            value = getattr(model, name)
        except Exception:  # (properties that need arguments or a context)
            continue
        if isinstance(value, np.ndarray):
            out[name] = value
    return out


def _parse(xml: str):
    import mujoco

    model = mujoco.MjModel.from_xml_string(xml)
    _last["xml"], _last["twin"] = xml, None
    return model


def compile_xml(xml: str):
    """`mujoco.MjModel.from_xml_string(xml)`, loaded from the cache when this scene was compiled before."""
    import mujoco

    limit = limit_bytes()
    key = model_key(xml) if limit > 0 else None
    if key is None:
        return _parse(xml)
    path = model_dir() / f"{key}.mjb"
    if path.is_file():
        try:
            model = mujoco.MjModel.from_binary_path(str(path))
            with contextlib.suppress(OSError):  # (a read-only cache is still read)
                os.utime(path)  # recently used: the last to be evicted
            STATS["hits"] += 1
            return model
        except Exception as e:  # damaged or unreadable: compile, and write it again below
            log.warning("compiled-scene cache file %s is unreadable (%s: %s); compiling the scene again",
                        path, type(e).__name__, e)
    STATS["misses"] += 1
    model = _parse(xml)
    _store(model, path, limit)
    return model


def saved_xml(model, xml: str) -> str:
    """robosuite's `MjModel.get_xml()` (LIBERO's `model_file`) for a model compiled from `xml`, whether
    compiled here or loaded from the cache. MuJoCo's `mj_saveLastXML` writes the process's last parsed
    XML with the values of the model it is given copied back, and copies back only from a model whose
    signature is that parse's; a loaded model has signature 0. So the XML is parsed here when it is not
    the last one (the compile the cache saved, paid once per process and scene where a demo is written),
    and a loaded model's arrays and options are copied into that parse's model first."""
    import mujoco

    if model.signature == 0:
        if _last["xml"] != xml or _last["twin"] is None:
            twin = _parse(xml)
            _last["twin"] = twin
        twin = _last["twin"]
        for name, value in model_arrays(model).items():
            target = getattr(twin, name)
            if target.flags.writeable:
                np.copyto(target, value)
        for name in dir(model.opt):
            if not name.startswith("_"):
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(twin.opt, name, getattr(model.opt, name))
        model = twin
    elif _last["xml"] != xml:
        _parse(xml)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.xml")
        mujoco.mj_saveLastXML(path, model)
        with open(path) as f:
            return f.read()


def _store(model, path: Path, limit: int) -> None:
    import mujoco

    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mujoco.mj_saveModel(model, str(tmp), None)
        os.replace(tmp, path)
        STATS["writes"] += 1
    except Exception as e:  # a read-only or full disk: the compile stands, nothing is kept
        log.debug("compiled scene not kept at %s: %s: %s", path, type(e).__name__, e)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return
    _evict(path.parent, limit, keep=path)


def _evict(folder: Path, limit: int, keep: Path) -> None:
    """Delete the least recently used files until the folder holds at most `limit` bytes (never `keep`)."""
    files = []
    for p in folder.glob("*.mjb"):
        try:
            st = p.stat()
        except OSError:
            continue
        files.append((st.st_mtime_ns, st.st_size, p))
    total = sum(size for _, size, _ in files)
    for _, size, p in sorted(files):
        if total <= limit:
            break
        if p == keep:
            continue
        try:
            p.unlink()
            STATS["evicted"] += 1
        except OSError:
            pass
        total -= size
