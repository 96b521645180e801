"""One entry for demo data, whatever its format: a path names a LIBERO HDF5 file or a local LeRobot v3
dataset (a directory holding meta/info.json), and each function hands it to that format's reader
(`libero_file`, `lerobot_file`). Everything past here sees `episodes.DemoSet`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from . import lerobot_file, libero_file
from .episodes import REQUIRED_OBS, DemoFileError, DemoSet
from .obs_features import IMAGE_KEYS


def demo_format(path: str | Path) -> str:
    """"lerobot" for a LeRobot dataset folder, "libero_hdf5" for anything else (the reader judges it)."""
    p = Path(path)
    if lerobot_file.is_lerobot_dataset(p):
        return "lerobot"
    if p.is_dir():
        raise DemoFileError(f"{p}: a directory, but not a LeRobot v3 dataset (no meta/info.json); give a LIBERO "
                            ".hdf5 file or a LeRobot dataset folder")
    return "libero_hdf5"


def read_demo_file(path: str | Path, obs_convention: str | None = None, load_images: bool = False,
                   required_obs: Iterable[str] = REQUIRED_OBS, max_demos: int | None = None) -> DemoSet:
    """Read and validate demos from a LIBERO HDF5 file or a LeRobot v3 dataset. `obs_convention`
    None/"auto" takes what the data say; an explicit value that contradicts them is an error."""
    reader = lerobot_file.read_lerobot_dataset if demo_format(path) == "lerobot" else libero_file.read_libero_file
    return reader(path, obs_convention=obs_convention, load_images=load_images, required_obs=required_obs,
                  max_demos=max_demos)


def file_attrs(path: str | Path) -> dict:
    """The facts a LIBERO file keeps in `data`'s attributes (problem_info, bddl_file_*, ablation_attrs, ...)."""
    if demo_format(path) == "lerobot":
        return lerobot_file.dataset_attrs(path)
    return libero_file.file_attrs(path)


def infer_suite_task(path: str | Path) -> tuple[str, int]:
    """(suite, task index) the demos hold; DemoFileError naming the facts tried and the fix."""
    if demo_format(path) == "lerobot":
        return lerobot_file.infer_suite_task(path)
    return libero_file.infer_suite_task(path)


def declared_obs_convention(path: str | Path) -> str | None:
    """What the data say of their obs timing ("before" | "after"), or None when they do not say."""
    v = file_attrs(path).get("obs_convention")
    if v is None and demo_format(path) == "lerobot":
        v = "before"  # LeRobot's recording loop: observation t, then action t
    return v if v in ("before", "after") else None


def image_frames(path: str | Path, max_demos: int | None = None) -> dict[str, list[np.ndarray]]:
    """Per camera (LIBERO names), each demo's frames, uint8, in LIBERO's upside-down (OpenGL) orientation."""
    if demo_format(path) == "libero_hdf5":
        return libero_file.image_frames(path, max_demos)
    ds = lerobot_file.read_lerobot_dataset(path, load_images=True, max_demos=max_demos)
    out: dict[str, list[np.ndarray]] = {}
    for ep in ds.episodes:
        for k in IMAGE_KEYS:
            if k in ep.obs:
                out.setdefault(k, []).append(ep.obs[k])
    return out
