"""RDT image inputs on synthetic images.

No SigLIP so400m weights exist on this machine (and nothing may download them), so these tests
check the preprocessing, camera ordering and feature-file plumbing only; SiglipFeatureSource is
tested for its error paths.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ablation.errors import UserError
from ablation.rdt.vision import (
    BACKGROUND_KEY, PrecomputedFeatureSource, SiglipFeatureSource, VisionInputError, arrange_rdt_images,
    background_image, preprocess_image, preprocess_rdt_images, resolve_feature_source,
)

BG = (127 / 255 - 0.5) / 0.5  # the background colour after scaling to [-1, 1]


def _solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (h, w, 3)).copy()


def test_wide_image_is_padded_top_and_bottom_then_resized() -> None:
    x = preprocess_image(_solid(100, 200, (255, 0, 0)))  # red, twice as wide as tall
    assert x.shape == (3, 384, 384) and x.dtype == torch.float32
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6
    # 200x200 canvas with the image in rows 50-149 -> rows 96-287 after resizing; stay clear of edges.
    torch.testing.assert_close(x[:, :90], torch.full((3, 90, 384), BG), atol=1e-6, rtol=0)
    torch.testing.assert_close(x[:, 300:], torch.full((3, 84, 384), BG), atol=1e-6, rtol=0)
    centre = x[:, 110:270]
    assert torch.allclose(centre[0], torch.ones_like(centre[0]), atol=1e-6)  # red channel = 255
    assert torch.allclose(centre[1], -torch.ones_like(centre[1]), atol=1e-6)


def test_tall_image_is_padded_left_and_right() -> None:
    x = preprocess_image(_solid(300, 100, (0, 0, 255)))
    torch.testing.assert_close(x[:, :, :120], torch.full((3, 384, 120), BG), atol=1e-6, rtol=0)
    assert torch.allclose(x[2, :, 140:240], torch.ones(384, 100), atol=1e-6)


def test_square_image_keeps_content_and_missing_is_background() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (384, 384, 3), dtype=np.uint8)
    x = preprocess_image(img)  # already 384: resize is the identity
    torch.testing.assert_close(x, torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1.0, atol=1e-5, rtol=0)
    torch.testing.assert_close(preprocess_image(None), torch.full((3, 384, 384), BG), atol=1e-6, rtol=0)
    assert background_image().shape == (384, 384, 3) and (background_image() == 127).all()
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(img.astype(np.float32))


def test_camera_order_and_history_padding() -> None:
    a, b, c = (_solid(8, 8, (v, v, v)) for v in (1, 2, 3))
    seq = arrange_rdt_images([{"ext": a, "right_wrist": b}, {"ext": c}])
    assert [None if s is None else int(s[0, 0, 0]) for s in seq] == [1, 2, None, 3, None, None]
    # Episode start: only the current frame exists; t-1 becomes background.
    seq = arrange_rdt_images([{"ext": c, "right_wrist": b}])
    assert [None if s is None else int(s[0, 0, 0]) for s in seq] == [None, None, None, 3, 2, None]
    # Older frames beyond the 2-frame history are dropped.
    seq = arrange_rdt_images([{"ext": a}, {"ext": b}, {"ext": c}])
    assert [None if s is None else int(s[0, 0, 0]) for s in seq] == [2, None, None, 3, None, None]
    with pytest.raises(ValueError, match="unknown camera"):
        arrange_rdt_images([{"agentview": a}])
    pix = preprocess_rdt_images([{"ext": a}, {"ext": c, "right_wrist": b}], size=32)
    assert pix.shape == (6, 3, 32, 32)
    torch.testing.assert_close(pix[1], torch.full((3, 32, 32), BG), atol=1e-6, rtol=0)


def test_no_feature_source_names_spec_fields() -> None:
    with pytest.raises(VisionInputError) as err:
        resolve_feature_source(None, None)
    assert "model.vision_model" in str(err.value) and "model.image_features" in str(err.value)
    assert isinstance(err.value, UserError)


def test_siglip_source_requires_local_directory(tmp_path) -> None:
    with pytest.raises(VisionInputError, match="model.vision_model"):
        resolve_feature_source(str(tmp_path / "siglip"), None)
    with pytest.raises(VisionInputError, match="model.vision_model"):
        SiglipFeatureSource(tmp_path)


@pytest.mark.parametrize("suffix", ["safetensors", "npz"])
def test_precomputed_features(tmp_path, suffix) -> None:
    feats = {"demo_0/0/ext": torch.randn(729, 1152), BACKGROUND_KEY: torch.randn(729, 1152)}
    path = tmp_path / f"feats.{suffix}"
    if suffix == "npz":
        np.savez(path, **{k: v.numpy() for k, v in feats.items()})
    else:
        save_file(feats, str(path))
    src = resolve_feature_source(None, str(path))
    assert isinstance(src, PrecomputedFeatureSource)
    tokens = src.rdt_image_tokens([None, None, None, "demo_0/0/ext", None, None])
    assert tokens.shape == (6 * 729, 1152)
    torch.testing.assert_close(tokens[3 * 729:4 * 729], feats["demo_0/0/ext"])
    torch.testing.assert_close(tokens[:729], feats[BACKGROUND_KEY])
    with pytest.raises(VisionInputError, match="demo_9"):
        src.get("demo_9/0/ext")


def test_precomputed_features_missing_file_and_background(tmp_path) -> None:
    with pytest.raises(VisionInputError, match="model.image_features"):
        PrecomputedFeatureSource(tmp_path / "missing.safetensors")
    save_file({"k": torch.zeros(729, 1152)}, str(tmp_path / "f.safetensors"))
    with pytest.raises(VisionInputError, match="__background__"):
        PrecomputedFeatureSource(tmp_path / "f.safetensors").get(None)


def test_siglip_source_with_a_tiny_random_local_siglip(tmp_path) -> None:
    """A 1-layer random SigLIP saved locally stands in for so400m: checks loading and shapes only."""
    from ablation.rdt.vision import _import_siglip

    SiglipVisionModel = _import_siglip()  # works even beside the broken PyPI torchvision
    from transformers import SiglipVisionConfig
    cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             image_size=384, patch_size=14)
    SiglipVisionModel(cfg).save_pretrained(tmp_path)
    src = resolve_feature_source(str(tmp_path), None)
    tokens = src.rdt_image_tokens([{"ext": _solid(120, 160, (10, 200, 30))}, {"right_wrist": _solid(64, 64, (0, 0, 0))}])
    assert tokens.shape == (6 * 729, 32) and torch.isfinite(tokens).all()
