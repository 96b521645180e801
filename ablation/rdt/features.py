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
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from ..data import prepare_data, read_demo_file
from ..errors import UserError
from ..locks import file_lock
from .vision import BACKGROUND_RGB, CAMERAS, LIBERO_CAMERAS, VisionInputError, background_image, preprocess_image

if TYPE_CHECKING:
    from ..data import PreparedData, Windows
    from ..policy import DiffusionPolicy
    from ..spec import Spec
    from .model import RDTConfig

log = logging.getLogger(__name__)

LIBERO_SLOTS: tuple[tuple[str, str], ...] = tuple(LIBERO_CAMERAS.items())  # slots not listed are background
WEIGHT_SUFFIXES = (".safetensors", ".bin")
SPEC_FIELD = "model.vision_model"
HOW_TO_GET_SIGLIP = ("download google/siglip-so400m-patch14-384 (config.json + model.safetensors) on a machine "
                     f"with internet, copy the directory here and set `{SPEC_FIELD}: DIR` "
                     f"(e.g. --set {SPEC_FIELD}=/data/siglip-so400m-patch14-384)")
ENCODE_BATCH = {"cpu": 16, "cuda": 128}  # images per SigLIP call


class FeatureCacheError(UserError):
    """The demo file cannot give SigLIP features (e.g. it has no camera frames); the message says why."""


@dataclass(frozen=True)
class FeatureSettings:
    """Everything besides the weights and the demo file that decides the cached numbers."""

    image_size: int                      # SigLIP input side (384 for so400m), from its config
    history: int                         # RDT image history (frames), from the checkpoint config
    slots: tuple[str, ...] = CAMERAS     # RDT's camera order
    libero_cameras: tuple[tuple[str, str], ...] = LIBERO_SLOTS
    # robosuite renders upside down and LIBERO files store it so; SigLIP was trained on upright photos.
    flip: str = "vertical"
    resample: str = "bicubic"
    pad_rgb: tuple[int, int, int] = BACKGROUND_RGB
    compute_dtype: str = "float32"
    # float16 halves the cache (so400m: 1.7 MB per image); live features are rounded the same way.
    storage_dtype: str = "float16"

    @property
    def cameras(self) -> tuple[str, ...]:
        """The LIBERO keys that are encoded, in cache order."""
        return tuple(k for _, k in self.libero_cameras)

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


# ----------------------------------------------------------------------------- SigLIP weights

_SHA_MEMO: dict[tuple, str] = {}


def siglip_weight_files(path: str | Path) -> list[Path]:
    """config.json and the weight files of a local SigLIP directory; a clear error when absent."""
    path = Path(path)
    if not path.is_dir():
        raise VisionInputError(f"{SPEC_FIELD}: SigLIP directory {path} does not exist; {HOW_TO_GET_SIGLIP}")
    if not (path / "config.json").is_file():
        raise VisionInputError(f"{SPEC_FIELD}: {path / 'config.json'} is missing, so {path} is not a Hugging Face "
                               f"SigLIP directory; {HOW_TO_GET_SIGLIP}")
    weights = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not weights:
        raise VisionInputError(f"{SPEC_FIELD}: no SigLIP weights in {path} (expected {path / 'model.safetensors'} "
                               f"or pytorch_model.bin); {HOW_TO_GET_SIGLIP}")
    return [path / "config.json", *weights]


def siglip_weights_sha256(path: str | Path) -> str:
    """sha256 over config.json and the weight files (names and bytes). Memoised per process by
    (name, size, mtime): so400m's 3.5 GB take seconds to hash."""
    files = siglip_weight_files(path)
    stamp = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if stamp in _SHA_MEMO:
        return _SHA_MEMO[stamp]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    _SHA_MEMO[stamp] = h.hexdigest()
    return _SHA_MEMO[stamp]


class SiglipEncoder:
    """A frozen local SigLIP that turns camera frames into stored-precision patch features."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        from .vision import SiglipFeatureSource

        self.path = Path(path)
        self.sha256 = siglip_weights_sha256(self.path)
        self.source = SiglipFeatureSource(self.path, device=device, dtype=torch.float32)
        self.device = torch.device(device)
        self.image_size = int(self.source.model.config.image_size)
        self._background: np.ndarray | None = None

    def settings(self, history: int) -> FeatureSettings:
        return FeatureSettings(image_size=self.image_size, history=history)

    def encode(self, images: Sequence[Optional[np.ndarray]], settings: FeatureSettings) -> np.ndarray:
        """Frames as stored/rendered (H, W, 3) uint8, None = background -> (n, P, D) in the storage dtype."""
        out = []
        step = ENCODE_BATCH.get(self.device.type, 16)
        for i in range(0, len(images), step):
            pix = torch.stack([preprocess_image(None if im is None else _upright(im, settings), settings.image_size)
                               for im in images[i:i + step]])
            feats = self.source.encode(pix).float().cpu().numpy().astype(settings.storage_dtype)
            if not np.all(np.isfinite(feats)):
                raise FeatureCacheError(f"SigLIP {self.path} gave features outside {settings.storage_dtype}'s range")
            out.append(feats)
        return np.concatenate(out) if out else np.zeros((0, 0, 0), dtype=settings.storage_dtype)

    def background(self, settings: FeatureSettings) -> np.ndarray:
        """(P, D) features of the solid background image (computed once)."""
        if self._background is None:
            self._background = self.encode([background_image(settings.image_size)], settings)[0]
        return self._background


def _upright(img: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise FeatureCacheError(f"camera frames must be (H, W, 3) uint8, got {img.dtype} {img.shape}")
    return np.ascontiguousarray(img[::-1]) if settings.flip == "vertical" else img


_ENCODERS: dict[tuple[str, str, str], SiglipEncoder] = {}


def siglip_encoder(path: str | Path, device: str | torch.device = "cpu") -> SiglipEncoder:
    """One SigLIP per (directory, weights, device) per process: cache building, validation and the
    policy's rollouts share it. A directory whose weights changed is loaded again."""
    key = (str(Path(path).resolve()), siglip_weights_sha256(path), str(torch.device(device)))
    if key not in _ENCODERS:
        _ENCODERS[key] = SiglipEncoder(path, device)
    return _ENCODERS[key]


def image_geometry(cfg: "RDTConfig") -> tuple[int, int, int]:
    """(history, cameras, patches) of an RDT config's image condition, e.g. (2, 3, 729)."""
    (_, shape), = cfg.img_pos_embed_config
    history, cams, patches = (abs(int(v)) for v in shape)
    return history, cams, patches


def check_encoder_fits(enc: SiglipEncoder, cfg: "RDTConfig", settings: FeatureSettings, size: str) -> None:
    _, cams, patches = image_geometry(cfg)
    P, D = enc.background(settings).shape
    if (P, D) != (patches, cfg.img_token_dim) or cams != len(settings.slots):
        raise VisionInputError(f"{SPEC_FIELD} {enc.path} gives {P} patches x {D} dims per image, but model.size "
                               f"{size} expects {patches} x {cfg.img_token_dim} ({cams} cameras); use the SigLIP the "
                               "checkpoint was trained with (so400m-patch14-384 for rdt-170m/rdt-1b)")


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


def rdt_feature_settings(spec: "Spec", encoder: SiglipEncoder) -> FeatureSettings:
    from .adapter import rdt_config_for

    cfg = rdt_config_for(spec.model.size, None)
    settings = encoder.settings(image_geometry(cfg)[0])
    check_encoder_fits(encoder, cfg, settings, spec.model.size)
    return settings


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


# ----------------------------------------------------------------------------- rollouts

def history_frames(window: Sequence[Mapping[str, np.ndarray]], history: int) -> list[Optional[Mapping]]:
    """The last `history` observation dicts of a rollout window (oldest first), None where the
    frame lies before the episode start. The runner pads a short window by repeating its first
    obs; each obs carries its policy-step index `t`, which tells padding from real frames."""
    window = list(window)
    last = window[-1]
    t_last = int(np.asarray(last["t"]).reshape(-1)[0]) if "t" in last else None
    out: list[Optional[Mapping]] = []
    for k in range(history):
        back = history - 1 - k
        if back >= len(window):
            out.append(None)
            continue
        o = window[len(window) - 1 - back]
        if t_last is not None:
            real = "t" in o and int(np.asarray(o["t"]).reshape(-1)[0]) == t_last - back
        else:  # no step index: a repeat of the next-older obs object is padding
            real = back == 0 or o is not window[len(window) - back]
        out.append(o if real else None)
    return out


class LiveImageFeatures:
    """The policy's SigLIP for rollouts (a plain object: it must not enter the policy's state_dict)."""

    def __init__(self, policy: "DiffusionPolicy"):
        spec, cfg = policy.spec, policy.cfg
        if not spec.model.vision_model:
            raise VisionInputError(f"the policy was trained with images but its spec has no `{SPEC_FIELD}`; "
                                   f"{HOW_TO_GET_SIGLIP}")
        self.encoder = siglip_encoder(spec.model.vision_model, policy.device)
        if cfg.vision_sha256 and cfg.vision_sha256 != self.encoder.sha256:
            raise VisionInputError(
                f"{SPEC_FIELD} {spec.model.vision_model} holds other SigLIP weights (sha256 {self.encoder.sha256[:12]}) "
                f"than the policy was trained with ({cfg.vision_sha256[:12]}); point {SPEC_FIELD} at the training run's "
                "SigLIP directory")
        self.settings = rdt_feature_settings(spec, self.encoder)
        self.device = policy.device

    def tokens(self, windows: Sequence[Sequence[Mapping[str, np.ndarray]]]) -> torch.Tensor:
        """Rollout windows (one per episode) -> (B, history * 3 * P, D) float32, one SigLIP call for all."""
        s = self.settings
        slot_key = dict(s.libero_cameras)
        wanted: list[Optional[np.ndarray]] = []
        for w in windows:
            for frame in history_frames(w, s.history):
                for slot in s.slots:
                    key = slot_key.get(slot)
                    if frame is None or key is None:
                        wanted.append(None)
                        continue
                    if key not in frame:
                        raise VisionInputError(f"the observation has no {key}: an RDT policy trained with images "
                                               "needs camera frames; roll it out with data.images: true")
                    wanted.append(frame[key])
        real = [im for im in wanted if im is not None]
        feats = iter(self.encoder.encode(real, s)) if real else iter(())
        bg = self.encoder.background(s)
        rows = [bg if im is None else next(feats) for im in wanted]
        out = np.stack(rows).reshape(len(windows), -1, bg.shape[-1]).astype(np.float32)
        return torch.as_tensor(out, device=self.device)


def live_image_tokens(policy: "DiffusionPolicy", windows) -> torch.Tensor:
    """The image condition of rollout windows, from the policy's SigLIP (loaded on first use)."""
    live = getattr(policy, "_live_images", None)
    if live is None or live.device != policy.device:
        live = LiveImageFeatures(policy)
        policy._live_images = live
    return live.tokens(windows)
