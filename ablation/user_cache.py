"""The per-user cache directory: `$XDG_CACHE_HOME/ablation`, else `~/.cache/ablation`.

What lives there is rebuilt on demand and keyed by the installed versions it depends on (an empty
MLflow store, compiled MuJoCo scenes): deleting the directory loses nothing but time.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "ablation"
