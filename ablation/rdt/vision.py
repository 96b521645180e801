"""Image inputs for RDT: SigLIP so400m-patch14-384 features of 2 frames x 3 cameras.

RDT's image condition is 6 x 729 = 4374 tokens of 1152-d SigLIP `last_hidden_state`, ordered

    [ext_{t-1}, right_wrist_{t-1}, left_wrist_{t-1}, ext_t, right_wrist_t, left_wrist_t]

Each image is padded to a square with (127, 127, 127), resized to 384 with PIL bicubic and scaled
to [-1, 1] (SigLIP mean = std = 0.5). A missing camera or frame is a solid (127, 127, 127) image
that still goes through SigLIP. A single-arm robot (LIBERO) uses the right-arm slots, so its wrist
camera is `right_wrist` and `left_wrist` is always background. LIBERO renders images upside down;
flip them upright before calling this module.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional, Protocol

import numpy as np
import torch
from PIL import Image

from ..errors import UserError

SIGLIP_IMAGE_SIZE = 384
SIGLIP_PATCHES = 729  # (384 / 14)^2, rounded down to 27 x 27
SIGLIP_DIM = 1152
BACKGROUND_RGB = (127, 127, 127)  # int(0.5 * 255) per channel: SigLIP's image mean
CAMERAS = ("ext", "right_wrist", "left_wrist")
HISTORY = 2
# RDT slot -> LIBERO observation name (ablation.data.IMAGE_KEYS); left_wrist stays background.
LIBERO_CAMERAS = {"ext": "agentview_rgb", "right_wrist": "eye_in_hand_rgb"}
BACKGROUND_KEY = "__background__"

ImageLike = np.ndarray | Image.Image


class VisionInputError(UserError):
    """No usable image-feature source; the message names the spec field and the fix."""


def expand_to_square(img: Image.Image, color: tuple[int, int, int] = BACKGROUND_RGB) -> Image.Image:
    """Pad the short side symmetrically (extra pixel at the bottom/right) so nothing is cropped."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), color)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def background_image(size: int = SIGLIP_IMAGE_SIZE) -> np.ndarray:
    """(size, size, 3) uint8 filled with BACKGROUND_RGB."""
    return np.broadcast_to(np.array(BACKGROUND_RGB, dtype=np.uint8), (size, size, 3)).copy()


def _to_pil(img: ImageLike) -> Image.Image:
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"images must be (H, W, 3) uint8 RGB, got {arr.dtype} {arr.shape}")
    return Image.fromarray(arr)


def preprocess_image(img: Optional[ImageLike], size: int = SIGLIP_IMAGE_SIZE) -> torch.Tensor:
    """One image (None = missing camera) -> SigLIP pixel values (3, size, size) float32 in [-1, 1]."""
    pil = Image.fromarray(background_image(size)) if img is None else _to_pil(img)
    pil = expand_to_square(pil).resize((size, size), resample=Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) * (1.0 / 255.0))  # (H, W, 3) in [0, 1]
    return ((x - 0.5) / 0.5).permute(2, 0, 1).contiguous()  # (3, H, W)


def arrange_rdt_images(
    frames: Sequence[Mapping[str, Optional[ImageLike]]],
    history: int = HISTORY,
    cameras: Sequence[str] = CAMERAS,
) -> list[Optional[ImageLike]]:
    """Oldest-first frames ({camera: image}) -> the `history * len(cameras)` images in RDT's order.

    Only the last `history` frames are used; fewer frames (episode start) are padded at the front
    with missing images (None), as are cameras absent from a frame.
    """
    unknown = {k for f in frames for k in f} - set(cameras)
    if unknown:
        raise ValueError(f"unknown camera name(s) {sorted(unknown)}; RDT cameras are {list(cameras)}")
    recent = list(frames)[-history:]
    padded: list[Mapping[str, Optional[ImageLike]]] = [{}] * (history - len(recent)) + recent
    return [frame.get(cam) for frame in padded for cam in cameras]


def preprocess_rdt_images(frames: Sequence[Mapping[str, Optional[ImageLike]]],
                          size: int = SIGLIP_IMAGE_SIZE) -> torch.Tensor:
    """Frames -> pixel values (history * 3, 3, size, size) in RDT's camera order."""
    return torch.stack([preprocess_image(img, size) for img in arrange_rdt_images(frames)])


class ImageFeatureSource(Protocol):
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, 384, 384) in [-1, 1] -> (N, 729, 1152)."""
        ...


def _import_siglip():
    """Import transformers' SiglipVisionModel, hiding a torchvision that is installed but broken.

    PyPI's torchvision 0.28.0 (pulled in by robomimic) is built for the CUDA torch and fails to
    import beside the local CPU wheel ("operator torchvision::nms does not exist"). transformers only
    checks that the package exists, then fails on it; SigLIP itself needs no torchvision. So, only
    while transformers decides what is available, a broken torchvision is reported as absent.
    """
    import importlib.util
    import sys

    try:
        import torchvision  # noqa: F401
        broken = False
    except Exception:  # noqa: BLE001 - the failure is a RuntimeError from its C++ ops
        broken = True
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]
    if not broken:
        from transformers import SiglipVisionModel
        return SiglipVisionModel
    orig = importlib.util.find_spec

    def find_spec(name, package=None):
        return None if name == "torchvision" or name.startswith("torchvision.") else orig(name, package)

    importlib.util.find_spec = find_spec
    try:
        from transformers import SiglipVisionModel
    finally:
        importlib.util.find_spec = orig
    return SiglipVisionModel


class SiglipFeatureSource:
    """A local SigLIP so400m-patch14-384 directory (HF format), frozen, loaded offline only."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise VisionInputError(f"model.vision_model {path} is not a local Hugging Face SigLIP directory "
                                   "(no config.json); download google/siglip-so400m-patch14-384 on a machine "
                                   "with internet and give its local path")
        try:
            SiglipVisionModel = _import_siglip()
        except Exception as exc:  # noqa: BLE001 - transformers wraps broken optional deps in odd types
            raise VisionInputError(f"model.vision_model needs transformers' SiglipVisionModel, which cannot be "
                                   f"imported ({type(exc).__name__}: {exc}); fix the environment or use "
                                   "precomputed features via model.image_features") from None
        self.model = SiglipVisionModel.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        self.model.to(device).eval().requires_grad_(False)
        self.device, self.dtype = torch.device(device), dtype

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values.to(self.device, self.dtype))
        return out.last_hidden_state  # (N, 729, 1152)

    def rdt_image_tokens(self, frames: Sequence[Mapping[str, Optional[ImageLike]]]) -> torch.Tensor:
        """Frames -> the model's image condition (history * 3 * 729, 1152)."""
        feats = self.encode(preprocess_rdt_images(frames))  # (6, 729, 1152)
        return feats.reshape(-1, feats.shape[-1])


class PrecomputedFeatureSource:
    """SigLIP features computed elsewhere, in a .safetensors or .npz file of named arrays.

    Each key (e.g. "demo_0/12/ext") holds (729, 1152); the key `__background__` holds the
    features of background_image(), used for missing cameras/frames.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise VisionInputError(f"model.image_features file {path} does not exist; precompute SigLIP "
                                   "so400m-patch14-384 features (key -> (729, 1152)) into a .safetensors or .npz file")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            self._features = dict(load_file(str(path)))
        elif path.suffix == ".npz":
            with np.load(path) as data:
                self._features = {k: torch.from_numpy(data[k]) for k in data.files}
        else:
            raise VisionInputError(f"model.image_features {path}: expected a .safetensors or .npz file")
        self.path = path

    def keys(self) -> list[str]:
        return list(self._features)

    def get(self, key: Optional[str]) -> torch.Tensor:
        key = BACKGROUND_KEY if key is None else key
        if key not in self._features:
            what = "background features (key '__background__')" if key == BACKGROUND_KEY else f"key {key!r}"
            raise VisionInputError(f"{self.path} has no {what}")
        return self._features[key]

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise VisionInputError("precomputed image features cannot encode new pixels (e.g. during a rollout); "
                               "set model.vision_model to a local SigLIP directory for that")

    def rdt_image_tokens(self, keys: Sequence[Optional[str]]) -> torch.Tensor:
        """Keys in RDT's camera order (None = missing) -> (len(keys) * 729, 1152)."""
        return torch.cat([self.get(k).reshape(-1, self.get(k).shape[-1]) for k in keys], dim=0)


def resolve_feature_source(vision_model: Optional[str], image_features: Optional[str],
                           device: str | torch.device = "cpu",
                           dtype: torch.dtype = torch.float32) -> SiglipFeatureSource | PrecomputedFeatureSource:
    """The spec's image source: a local SigLIP (preferred, works for rollouts) or precomputed features."""
    if vision_model:
        return SiglipFeatureSource(vision_model, device=device, dtype=dtype)
    if image_features:
        return PrecomputedFeatureSource(image_features)
    raise VisionInputError(
        "model.kind rdt with images needs SigLIP so400m-patch14-384 features, and neither `model.vision_model` "
        "(a local SigLIP directory, downloaded elsewhere) nor `model.image_features` (a precomputed "
        ".safetensors/.npz) is set; set one of them in the spec")
