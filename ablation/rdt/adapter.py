"""`RDTNet`: the official-layout RDT inside our DiffusionPolicy, so every codec fix applies unchanged.

The policy calls its network as `net(noisy, action_mask, t, ctrl_freq, state, state_mask, obs, images)`
with actions and state in the codec's 128-d unified layout. RDT's own inputs are filled as follows:

    state_tokens  (B, 1, 128)  the codec's proprio state, with its own mask (the state's slots): in
                               the velocity layout the state sits in 30-38 while actions fill 39-44
    lang_tokens   (B, L+To, Dl) the task's precomputed T5 embedding (model.lang_embeddings) if given,
                               then one token per observation-history step: the normalised low-dim
                               observation through `obs_to_lang` (Linear obs_dim -> Dl). RDT has no
                               low-dim observation input; this adds one Linear outside the official
                               key set (prefix `obs_to_lang`), all official keys stay under `runner.`
    img_tokens    (B, I, Di)   with data.images: the SigLIP tokens of the camera frames, passed in as
                               `images` (training: the feature cache, rollouts: the live frames; see
                               ablation/rdt/features.py). Without: precomputed background features
                               (model.image_features, key `__background__`, repeated) or zeros

`load_pretrained` loads an official checkpoint strictly into `runner`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import load_rdt_checkpoint
from .model import RDTConfig, RDTRunner

RDT_SIZES = ("rdt-tiny-fixture", "rdt-170m", "rdt-1b")


@dataclass(frozen=True)
class RDTNetConfig:
    """What fixes RDTNet's shapes; stored in the bundle's meta.json like DiTConfig."""

    size: str
    obs_dim: int
    n_lang_tokens: int = 0
    kind: str = "rdt"
    n_cams: int = 0  # camera images reach RDT only as SigLIP features, not through a CNN
    images: bool = False  # img_tokens come with every call (SigLIP features of the camera frames)
    vision_sha256: str = ""  # the SigLIP weights those features came from (rollouts must use the same)

    def to_dict(self) -> dict:
        return asdict(self)


def build_rdt_net(cfg: RDTNetConfig, lang_embeddings: str | None = None, instruction: str | None = None,
                  image_features: str | None = None) -> "RDTNet":
    """RDTNet for a spec: the task's T5 embedding and background image features when given."""
    lang = None
    if lang_embeddings:
        from .lang import instruction_embedding

        lang = instruction_embedding(lang_embeddings, instruction or "")
    img = None
    if image_features:
        from .vision import PrecomputedFeatureSource

        img = PrecomputedFeatureSource(image_features).get(None)
    return RDTNet(rdt_config_for(cfg.size, None), cfg.obs_dim, lang, img,
                  n_lang_tokens=cfg.n_lang_tokens if lang is None else None, images=cfg.images)


class RDTNet(nn.Module):
    def __init__(self, cfg: RDTConfig, obs_dim: int, lang_tokens: torch.Tensor | None = None,
                 img_background: torch.Tensor | None = None, n_lang_tokens: int | None = None,
                 images: bool = False):
        super().__init__()
        self.cfg, self.images = cfg, images
        self.runner = RDTRunner(cfg, dtype=torch.float32)
        self.obs_to_lang = nn.Linear(obs_dim, cfg.lang_token_dim)
        # Without an embedding file (e.g. when loading a bundle) the buffer is shaped here and filled
        # by load_state_dict.
        lang = lang_tokens if lang_tokens is not None else torch.zeros(n_lang_tokens or 0, cfg.lang_token_dim)
        if lang.ndim == 3:
            lang = lang[0]
        # Persistent: the bundle must act without the embedding files it was trained from.
        self.register_buffer("lang_tokens", lang.float().reshape(-1, cfg.lang_token_dim).clone())
        if img_background is None:
            img = torch.zeros(cfg.img_cond_len, cfg.img_token_dim)
        else:
            reps = -(-cfg.img_cond_len // img_background.shape[0])
            img = img_background.float().repeat(reps, 1)[:cfg.img_cond_len]
        self.register_buffer("img_tokens", img.clone())

    def forward(self, noisy: torch.Tensor, action_mask: torch.Tensor, t: torch.Tensor, freq: torch.Tensor,
                state: torch.Tensor, state_mask: torch.Tensor, obs: torch.Tensor,
                images: torch.Tensor | None = None) -> torch.Tensor:
        B = noisy.shape[0]
        obs_tok = self.obs_to_lang(obs.to(self.obs_to_lang.weight.dtype))         # (B, To, Dl)
        lang = torch.cat([self.lang_tokens.expand(B, -1, -1).to(obs_tok.dtype), obs_tok], dim=1)
        if lang.shape[1] > self.cfg.max_lang_cond_len:
            raise ValueError(f"{lang.shape[1]} language+observation tokens exceed max_lang_cond_len "
                             f"{self.cfg.max_lang_cond_len}; shorten data.obs_history")
        mask = torch.ones(B, lang.shape[1], dtype=torch.bool, device=noisy.device)
        if self.images:
            if images is None or images.dim() != 3 or images.shape[1:] != self.img_tokens.shape:
                got = None if images is None else tuple(images.shape)
                raise ValueError(f"this RDT was trained with camera images: pass their SigLIP tokens (B, "
                                 f"{self.cfg.img_cond_len}, {self.cfg.img_token_dim}) as `images`, got {got}")
            img = images                                                            # (B, I, Di)
        else:
            img = self.img_tokens.expand(B, -1, -1)                                # (B, I, Di)
        am = action_mask.reshape(1, 1, -1).expand(B, 1, -1)                        # (B, 1, 128)
        sm = state_mask.reshape(1, 1, -1).expand(B, 1, -1)                         # (B, 1, 128)
        return self.runner.denoise(noisy, t, lang, mask, img, state[:, None, :], am, freq, state_mask=sm).float()

    def load_pretrained(self, path: str | Path) -> None:
        """Strictly load an official RDT checkpoint into `runner` (obs_to_lang stays freshly initialised)."""
        model, cfg = load_rdt_checkpoint(path, dtype=torch.float32)
        if cfg != self.cfg:
            diff = {k: (v, getattr(cfg, k)) for k, v in self.cfg.as_dict().items()
                    if getattr(cfg, k, None) != v}
            raise ValueError(f"{path}: checkpoint config differs from model.size {diff}")
        self.runner.load_state_dict(model.state_dict(), strict=True)


def rdt_config_for(size: str, horizon: int | None) -> RDTConfig:
    if size not in RDT_SIZES:
        raise ValueError(f"model.size '{size}' is not an RDT size; use one of {', '.join(RDT_SIZES)}")
    cfg = RDTConfig.preset(size)
    if horizon is not None and cfg.pred_horizon != horizon:
        raise ValueError(f"model.kind rdt predicts {cfg.pred_horizon}-step chunks; set data.action_chunk: "
                         f"{cfg.pred_horizon}")
    return cfg
