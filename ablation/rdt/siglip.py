"""The frozen SigLIP for RDT's image condition: its local weights and their sha256, the encoder, the
settings that decide the numbers it gives, and the checks that it fits the RDT config."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from ..errors import UserError
from .vision import BACKGROUND_RGB, CAMERAS, LIBERO_CAMERAS, VisionInputError, background_image, preprocess_image

if TYPE_CHECKING:
    from ..spec import Spec
    from .model import RDTConfig

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


def rdt_feature_settings(spec: "Spec", encoder: SiglipEncoder) -> FeatureSettings:
    from .adapter import rdt_config_for

    cfg = rdt_config_for(spec.model.size, None)
    settings = encoder.settings(image_geometry(cfg)[0])
    check_encoder_fits(encoder, cfg, settings, spec.model.size)
    return settings
