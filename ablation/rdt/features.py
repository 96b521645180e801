"""SigLIP image features for `model.kind: rdt` with `data.images: true`, in training and in rollouts.

RDT's image condition is `history x 3 cameras x P patches` SigLIP tokens (vision.py). The frozen
SigLIP never enters the training graph: every demo frame is encoded once, before training, and
kept on disk; training windows gather their tokens from there. Rollouts encode the live camera
frames with the same SigLIP, the same preprocessing and the same storage rounding, batched over
all episodes that need a chunk, on the policy's device.

Cache: `<features_dir>/<key>.npy` + `<key>.json` (the sidecar, written last). The key hashes the
demo file's sha256, the SigLIP weights' sha256 and `FeatureSettings`, so a changed demo file,
other weights or other preprocessing get another key and are encoded afresh; a file whose sidecar
does not match its key's inputs, or whose array has another shape, is rebuilt, never reused.

    npy  (n_frames * n_cams + 1, P, D) float16: row f * n_cams + c is camera c of stored frame f
         (demos in file order, `cameras` order), the last row is the background image's features.

LIBERO has one arm: `agentview_rgb` fills RDT's `ext` slot, `eye_in_hand_rgb` its `right_wrist`
slot, and `left_wrist` is always background (as is a frame before the episode start).

This module is the cache and the training windows' tokens; the encoder is siglip.py, the rollouts'
features live_features.py.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data import prepare_data, read_demo_file
from ..locks import file_lock
# The encoder and the rollout features live in siglip.py and live_features.py; re-exported (their old home).
from .live_features import LiveImageFeatures, history_frames, live_image_tokens  # noqa: F401
from .siglip import (  # noqa: F401
    ENCODE_BATCH, HOW_TO_GET_SIGLIP, LIBERO_SLOTS, SPEC_FIELD, WEIGHT_SUFFIXES, FeatureCacheError, FeatureSettings,
    SiglipEncoder, check_encoder_fits, image_geometry, rdt_feature_settings, siglip_encoder, siglip_weight_files,
    siglip_weights_sha256,
)
from .vision import VisionInputError

if TYPE_CHECKING:
    from ..data import PreparedData, Windows
    from ..spec import Spec

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the cache

@dataclass(frozen=True)
class CachedFeatures:
    """A demo file's features: rows of `array` by (frame, camera), the background last."""

    array: np.ndarray                  # (n_frames * n_cams + 1, P, D), memory-mapped
    demo_start: dict[str, int]         # demo name -> its first frame's index
    demo_length: dict[str, int]
    settings: FeatureSettings
    key: str
    built: bool                        # False: read from an earlier run's cache

    @property
    def background_row(self) -> int:
        return self.array.shape[0] - 1


def cache_key(demo_sha256: str, siglip_sha256: str, settings: FeatureSettings) -> tuple[str, dict]:
    inputs = {"demo_sha256": demo_sha256, "siglip_sha256": siglip_sha256, "settings": settings.to_json()}
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24], inputs


def default_features_dir() -> Path:
    """ABLATION_FEATURES_DIR, else <workdir>/features (workdir: ABLATION_WORKDIR or ./workdir)."""
    if os.environ.get("ABLATION_FEATURES_DIR"):
        return Path(os.environ["ABLATION_FEATURES_DIR"])
    return Path(os.environ.get("ABLATION_WORKDIR", "workdir")) / "features"


def _demo_frames(demo_path: Path, cameras: Sequence[str]) -> list[tuple[str, int]]:
    """(demo name, frames) in file order, after checking that every demo has every camera."""
    import h5py

    names = read_demo_file(demo_path).names
    out = []
    with h5py.File(demo_path, "r") as f:
        for name in names:
            obs = f["data"][name]["obs"]
            n = int(f["data"][name]["actions"].shape[0])
            for cam in cameras:
                if cam not in obs:
                    raise FeatureCacheError(
                        f"{demo_path}: {name} has no obs/{cam}; model.kind rdt with data.images: true needs camera "
                        "frames in the demos (generate them with data.images: true, or set data.images: false)")
                if obs[cam].shape[0] != n:
                    raise FeatureCacheError(f"{demo_path}: {name}/obs/{cam} has {obs[cam].shape[0]} frames but "
                                            f"{n} actions")
            out.append((name, n))
    return out


def _read_valid(npy: Path, side: Path, inputs: dict, shape: tuple[int, ...] | None) -> dict | None:
    """The sidecar when it describes exactly these inputs and the array is whole; else None."""
    if not (npy.is_file() and side.is_file()):
        return None
    try:
        meta = json.loads(side.read_text())
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if meta.get("inputs") != inputs or list(arr.shape) != meta.get("shape") or str(arr.dtype) != meta.get("dtype"):
        return None
    if shape is not None and tuple(arr.shape) != shape:
        return None
    return meta


def build_or_load(demo_path: str | Path, encoder: SiglipEncoder, settings: FeatureSettings,
                  features_dir: str | Path, demo_sha256: str | None = None) -> CachedFeatures:
    """The demo file's features from the cache, encoding every frame first when the cache has no
    valid entry for (demo bytes, SigLIP weights, settings). Concurrent callers build it once."""
    from ..provenance import file_sha256

    demo_path, features_dir = Path(demo_path), Path(features_dir)
    key, inputs = cache_key(demo_sha256 or file_sha256(demo_path), encoder.sha256, settings)
    npy, side = features_dir / f"{key}.npy", features_dir / f"{key}.json"
    features_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(features_dir / f"{key}.lock"):
        meta = _read_valid(npy, side, inputs, None)
        built = meta is None
        if built:
            if npy.exists() or side.exists():
                log.warning("feature cache %s does not match its inputs or is incomplete; rebuilding", npy)
            meta = _build(demo_path, encoder, settings, npy, side, inputs)
    arr = np.load(npy, mmap_mode="r")
    return CachedFeatures(arr, {d["name"]: d["start"] for d in meta["demos"]},
                          {d["name"]: d["frames"] for d in meta["demos"]}, settings, key, built)


def _build(demo_path: Path, encoder: SiglipEncoder, settings: FeatureSettings, npy: Path, side: Path,
           inputs: dict) -> dict:
    import h5py

    cams = settings.cameras
    demos = _demo_frames(demo_path, cams)
    n_frames = sum(n for _, n in demos)
    bg = encoder.background(settings)
    shape = (n_frames * len(cams) + 1, *bg.shape)
    tmp = npy.with_name(npy.name + ".partial")
    side.unlink(missing_ok=True)  # an old sidecar must never vouch for a half-written array
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=settings.storage_dtype, shape=shape)
    row, index = 0, []
    with h5py.File(demo_path, "r") as f:
        for name, n in demos:
            index.append({"name": name, "start": row // len(cams), "frames": n})
            obs = f["data"][name]["obs"]
            frames = {c: obs[c] for c in cams}
            for t0 in range(0, n, 64):  # a few frames at a time: a demo's images need not fit in memory
                block = {c: np.asarray(frames[c][t0:t0 + 64]) for c in cams}
                imgs = [block[c][k] for k in range(len(block[cams[0]])) for c in cams]
                feats = encoder.encode(imgs, settings)
                arr[row:row + len(feats)] = feats
                row += len(feats)
    arr[row] = bg
    arr.flush()
    del arr
    os.replace(tmp, npy)
    meta = {"inputs": inputs, "shape": list(shape), "dtype": settings.storage_dtype, "demos": index,
            "demo_file": str(demo_path.resolve()), "siglip_dir": str(encoder.path.resolve())}
    tmp_side = side.with_name(side.name + ".partial")
    tmp_side.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_side, side)
    log.info("encoded %d frames x %d cameras of %s into %s", n_frames, len(cams), demo_path, npy)
    return meta


# ----------------------------------------------------------------------------- training windows

def frame_rows(cache: CachedFeatures, demo: str, steps: np.ndarray, convention: str) -> np.ndarray:
    """Rows of the RDT image slots for windows at `steps` of one demo -> (n, history * 3) int64.

    The image before action t is stored frame t ("before" files) or t-1 ("after"; frame 0 at t=0),
    as data.episode_view aligns the low-dim obs. History frames before the episode start, and
    slots without a LIBERO camera, are the background row (RDT's own padding)."""
    s = cache.settings
    cam_index = {slot: s.cameras.index(key) for slot, key in s.libero_cameras}
    start, n = cache.demo_start[demo], cache.demo_length[demo]
    out = np.full((len(steps), s.history * len(s.slots)), cache.background_row, dtype=np.int64)
    for k in range(s.history):
        step = np.asarray(steps) - (s.history - 1 - k)
        frame = step if convention == "before" else np.maximum(step - 1, 0)
        ok = (step >= 0) & (frame < n)
        for j, slot in enumerate(s.slots):
            if slot in cam_index:
                col = k * len(s.slots) + j
                out[ok, col] = (start + frame[ok]) * len(s.cameras) + cam_index[slot]
    return out


class ImageTokenWindows:
    """Stands in for `Windows.images` under model.kind rdt: indexing gives the windows' image
    condition (n, history * 3 * P, D) float32, gathered from the memory-mapped cache."""

    def __init__(self, cache: CachedFeatures, rows: np.ndarray):
        self.cache, self.rows = cache, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> np.ndarray:
        rows = self.rows[np.asarray(idx)]
        feats = self.cache.array[rows.reshape(-1)]  # (n * slots, P, D)
        return feats.reshape(len(rows), -1, feats.shape[-1]).astype(np.float32)


def window_rows(cache: CachedFeatures, windows: "Windows", names: list[str], convention: str) -> np.ndarray:
    rows = np.zeros((len(windows), cache.settings.history * len(cache.settings.slots)), dtype=np.int64)
    for d in np.unique(windows.demo_index):
        sel = np.nonzero(windows.demo_index == d)[0]
        rows[sel] = frame_rows(cache, names[int(d)], windows.step[sel], convention)
    return rows


def feature_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def prepare_rdt_image_data(spec: "Spec", demo_path: str | Path, features_dir: str | Path | None = None,
                           demos=None) -> "PreparedData":
    """Demos as training windows whose `images` are SigLIP tokens from the cache (no raw frames in memory)."""
    if not spec.model.vision_model:
        raise VisionInputError(f"spec {spec.name}: model.kind rdt with data.images: true needs `{SPEC_FIELD}`; "
                               f"{HOW_TO_GET_SIGLIP}")
    data = prepare_data(spec.data.model_copy(update={"images": False}), spec.codec, demo_path, demos=demos)
    enc = siglip_encoder(spec.model.vision_model, feature_device())
    settings = rdt_feature_settings(spec, enc)
    cache = build_or_load(demo_path, enc, settings, features_dir or default_features_dir())
    conv, names = data.demo_set.meta.obs_convention, data.demo_set.names
    data.train.images = ImageTokenWindows(cache, window_rows(cache, data.train, names, conv))
    if data.val is not None:
        data.val.images = ImageTokenWindows(cache, window_rows(cache, data.val, names, conv))
    return data
