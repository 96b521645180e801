"""SigLIP features of live camera frames in rollouts: the policy's encoder, one call for every episode
that needs a chunk, padded frames before the episode start as background."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from .siglip import HOW_TO_GET_SIGLIP, SPEC_FIELD, rdt_feature_settings, siglip_encoder
from .vision import VisionInputError

if TYPE_CHECKING:
    from ..policy import DiffusionPolicy


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
