"""RDT (Robotics Diffusion Transformer) re-implemented so that official checkpoints load strictly.

Everything that decides numbers follows thu-ml/RoboticsDiffusionTransformer (commit deb71d82) as
described in shared/docs/rdt_checkpoint.md, and is checked against the golden fixture
tests/fixtures/rdt_tiny. The state_dict (keys, shapes, order) equals the official one:

    RDTRunner
      model           RDT: pos-embeds, t/freq embedders, `depth` blocks, final layer
      lang_adaptor    T5 tokens (4096)      -> D
      img_adaptor     SigLIP tokens (1152)  -> D
      state_adaptor   [values | mask] (256) -> D, shared by the state token and all action tokens

Notation: B batch, T horizon (64), A action/state dim (128), D hidden, H heads, hd = D/H,
L language tokens (<= max_lang_cond_len), I image tokens (== img_cond_len).
"""
from __future__ import annotations

import logging
import math
import re
from contextlib import nullcontext
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..noise_schedule import BETA_SCHEDULES, PREDICTION_TYPES, DPMSolverPP, NoiseSchedule

Reduction = Literal["rdt_mean", "masked_mean", "none"]

_DEFAULT_EMA: dict[str, float] = {
    "inv_gamma": 1.0, "max_value": 0.9999, "min_value": 0.0, "power": 0.75, "update_after_step": 0,
}


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

log = logging.getLogger(__name__)

_OFFICIAL_KEYS = {
    "action_dim", "ema", "img_adaptor", "img_cond_len", "img_pos_embed_config", "img_token_dim", "lang_adaptor",
    "lang_pos_embed_config", "lang_token_dim", "max_lang_cond_len", "noise_scheduler", "pred_horizon", "rdt",
    "state_adaptor", "state_token_dim", "dtype",
}

PosEmbedConfig = tuple[tuple[str, Any], ...]  # (("image", (2, 3, -729)),) / (("lang", -1024),)


def _as_pos_config(value: Any) -> PosEmbedConfig:
    """JSON lists -> nested tuples so the frozen config stays immutable and comparable."""
    out = []
    for name, length in value:
        out.append((str(name), tuple(int(v) for v in length) if isinstance(length, (list, tuple)) else int(length)))
    return tuple(out)


def _pos_config_len(cfg: PosEmbedConfig) -> int:
    total = 0
    for _, length in cfg:
        total += int(np.prod([abs(v) for v in length])) if isinstance(length, tuple) else abs(length)
    return total


def _parse_adaptor(kind: str) -> int:
    """Number of Linear layers of an adaptor: 'linear' -> 1, 'mlpNx_gelu' -> N."""
    if kind == "linear":
        return 1
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if not match:
        raise ValueError(f"unknown adaptor type {kind!r}; expected 'linear' or 'mlp<N>x_gelu'")
    return int(match.group(1))


@dataclass(frozen=True)
class RDTConfig:
    """Architecture + diffusion settings of one RDT; mirrors the official flat config.json."""

    hidden_size: int
    depth: int
    num_heads: int
    action_dim: int = 128
    pred_horizon: int = 64
    state_token_dim: int = 128
    lang_token_dim: int = 4096
    img_token_dim: int = 1152
    max_lang_cond_len: int = 1024
    img_cond_len: int = 4374
    lang_adaptor: str = "mlp2x_gelu"
    img_adaptor: str = "mlp2x_gelu"
    state_adaptor: str = "mlp3x_gelu"
    img_pos_embed_config: PosEmbedConfig = (("image", (2, 3, -729)),)
    lang_pos_embed_config: PosEmbedConfig = (("lang", -1024),)
    cond_pos_embed_type: str = "multimodal"
    num_train_timesteps: int = 1000
    num_inference_timesteps: int = 5
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: Literal["sample", "epsilon"] = "sample"
    clip_sample: bool = False
    # Carried only so that save -> load round-trips config.json; RDT fine-tuning does not use EMA.
    ema: dict[str, float] = field(default_factory=lambda: dict(_DEFAULT_EMA), hash=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_pos_embed_config", _as_pos_config(self.img_pos_embed_config))
        object.__setattr__(self, "lang_pos_embed_config", _as_pos_config(self.lang_pos_embed_config))
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.state_token_dim != self.action_dim:
            # Action tokens go through state_adaptor (in_features = 2 * state_token_dim).
            raise ValueError(f"state_token_dim ({self.state_token_dim}) must equal action_dim ({self.action_dim})")
        if self.img_pos_embed_config and _pos_config_len(self.img_pos_embed_config) != self.img_cond_len:
            raise ValueError(f"img_pos_embed_config {self.img_pos_embed_config} covers "
                             f"{_pos_config_len(self.img_pos_embed_config)} tokens, img_cond_len is {self.img_cond_len}")
        if self.lang_pos_embed_config and _pos_config_len(self.lang_pos_embed_config) != self.max_lang_cond_len:
            raise ValueError(f"lang_pos_embed_config {self.lang_pos_embed_config} covers "
                             f"{_pos_config_len(self.lang_pos_embed_config)} tokens, max_lang_cond_len is {self.max_lang_cond_len}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"noise_scheduler.beta_schedule {self.beta_schedule!r} is not supported; "
                             f"use one of {', '.join(BETA_SCHEDULES)}")
        for name in ("lang_adaptor", "img_adaptor", "state_adaptor"):
            _parse_adaptor(getattr(self, name))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "RDTConfig":
        """A named config from RDT_PRESETS ('rdt-tiny-fixture', 'rdt-170m', 'rdt-1b')."""
        if name not in RDT_PRESETS:
            raise ValueError(f"unknown RDT preset {name!r}; choose one of {sorted(RDT_PRESETS)}")
        return replace(RDT_PRESETS[name], **overrides)

    @classmethod
    def from_official_config_json(cls, cfg: Mapping[str, Any]) -> "RDTConfig":
        """Parse the flat config.json written by RDTRunner.save_pretrained (hub checkpoints included)."""
        unknown = set(cfg) - _OFFICIAL_KEYS
        if unknown:
            # Forks add keys; they cannot change this architecture, so say so instead of failing.
            log.warning("ignoring unknown RDT config.json keys %s", sorted(unknown))
        try:
            rdt = cfg["rdt"]
            sched = cfg.get("noise_scheduler", {})
            if sched.get("type", "ddpm") != "ddpm":
                raise ValueError(f"noise_scheduler.type {sched.get('type')!r} is not supported (only 'ddpm')")
            return cls(
                hidden_size=int(rdt["hidden_size"]), depth=int(rdt["depth"]), num_heads=int(rdt["num_heads"]),
                cond_pos_embed_type=str(rdt.get("cond_pos_embed_type", "multimodal")),
                action_dim=int(cfg["action_dim"]), pred_horizon=int(cfg["pred_horizon"]),
                state_token_dim=int(cfg["state_token_dim"]), lang_token_dim=int(cfg["lang_token_dim"]),
                img_token_dim=int(cfg["img_token_dim"]), max_lang_cond_len=int(cfg["max_lang_cond_len"]),
                img_cond_len=int(cfg["img_cond_len"]),
                lang_adaptor=str(cfg["lang_adaptor"]), img_adaptor=str(cfg["img_adaptor"]),
                state_adaptor=str(cfg["state_adaptor"]),
                img_pos_embed_config=cfg.get("img_pos_embed_config") or (),
                lang_pos_embed_config=cfg.get("lang_pos_embed_config") or (),
                num_train_timesteps=int(sched.get("num_train_timesteps", 1000)),
                num_inference_timesteps=int(sched.get("num_inference_timesteps", 5)),
                beta_schedule=str(sched.get("beta_schedule", "squaredcos_cap_v2")),
                prediction_type=sched.get("prediction_type", "sample"),
                clip_sample=bool(sched.get("clip_sample", False)),
                ema=dict(cfg.get("ema", _DEFAULT_EMA)),
            )
        except KeyError as exc:
            raise ValueError(f"RDT config.json lacks the key {exc.args[0]!r}") from None

    def to_official_config_json(self) -> dict[str, Any]:
        """The flat dict that official RDTRunner.from_pretrained accepts (sorted keys when dumped)."""
        return {
            "action_dim": self.action_dim,
            "ema": dict(self.ema),
            "img_adaptor": self.img_adaptor,
            "img_cond_len": self.img_cond_len,
            "img_pos_embed_config": [[n, list(v) if isinstance(v, tuple) else v] for n, v in self.img_pos_embed_config],
            "img_token_dim": self.img_token_dim,
            "lang_adaptor": self.lang_adaptor,
            "lang_pos_embed_config": [[n, list(v) if isinstance(v, tuple) else v] for n, v in self.lang_pos_embed_config],
            "lang_token_dim": self.lang_token_dim,
            "max_lang_cond_len": self.max_lang_cond_len,
            "noise_scheduler": {
                "beta_schedule": self.beta_schedule, "clip_sample": self.clip_sample,
                "num_inference_timesteps": self.num_inference_timesteps,
                "num_train_timesteps": self.num_train_timesteps,
                "prediction_type": self.prediction_type, "type": "ddpm",
            },
            "pred_horizon": self.pred_horizon,
            "rdt": {"cond_pos_embed_type": self.cond_pos_embed_type, "depth": self.depth,
                    "hidden_size": self.hidden_size, "num_heads": self.num_heads},
            "state_adaptor": self.state_adaptor,
            "state_token_dim": self.state_token_dim,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


RDT_PRESETS: dict[str, RDTConfig] = {
    # tests/fixtures/rdt_tiny/checkpoint/config.json
    "rdt-tiny-fixture": RDTConfig(
        hidden_size=64, depth=2, num_heads=4, lang_token_dim=32, img_token_dim=24,
        max_lang_cond_len=8, img_cond_len=24,
        img_pos_embed_config=(("image", (2, 3, -4)),), lang_pos_embed_config=(("lang", -8),)),
    # robotics-diffusion-transformer/rdt-170m and rdt-1b config.json
    "rdt-170m": RDTConfig(hidden_size=1024, depth=14, num_heads=32),
    "rdt-1b": RDTConfig(hidden_size=2048, depth=28, num_heads=32),
}


def from_official_config_json(cfg: Mapping[str, Any]) -> RDTConfig:
    return RDTConfig.from_official_config_json(cfg)


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------

class RDTRMSNorm(nn.Module):
    """timm 1.0.3's RmsNorm fallback: x * rsqrt(var_unbiased(x) + eps) * w.

    Not a true RMS norm: the variance subtracts the mean (x itself is not centred) and divides by
    n-1. torch.nn.RMSNorm would move the fixture output by ~0.15. Computed in fp32 and cast back,
    which is exact for fp32 and only more accurate for bf16.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        var = torch.var(xf, dim=-1, keepdim=True, unbiased=True)
        return (xf * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


class Mlp(nn.Module):
    """fc1 -> tanh-GELU -> fc2 (timm Mlp keys)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: Optional[int] = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """timm Attention with qkv bias and per-head q/k RmsNorm; no mask (all 67 tokens see each other)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm = RDTRMSNorm(self.head_dim)
        self.k_norm = RDTRMSNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, hd), scale hd^-0.5
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class CrossAttention(nn.Module):
    """Queries from the action sequence, keys/values from language or image tokens.

    kv.weight is (2D, D): the first D output rows are k, the next D are v.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.q_norm = RDTRMSNorm(self.head_dim)
        self.k_norm = RDTRMSNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, N, C = x.shape
        L = c.shape[1]
        q = self.q(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, hd)
        kv = self.kv(c).reshape(B, L, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (2, B, H, L, hd)
        k, v = kv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, hd)
        else:
            # A sample with no valid token (empty instruction) would make softmax NaN. Let such rows
            # attend to everything, then zero their output: "no language" contributes only proj.bias.
            # Always applied (no data-dependent branch), and a no-op for rows with a valid token.
            has_token = mask.any(dim=-1)  # (B,)
            attn_mask = (mask | ~has_token[:, None])[:, None, None, :]  # (B, 1, 1, L), True = attend
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, N, hd)
            out = out * has_token[:, None, None, None].to(out.dtype)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class RDTBlock(nn.Module):
    """Pre-norm: x += attn(norm1 x); x += cross_attn(norm2 x, c); x += ffn(norm3 x). No adaLN."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        # Registration order fixes the state_dict key order; keep it as in the official model.
        self.norm1 = RDTRMSNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = RDTRMSNorm(dim)
        self.ffn = Mlp(dim, dim)  # hidden width = D (ratio 1)
        self.norm3 = RDTRMSNorm(dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), c, mask)
        x = x + self.ffn(self.norm3(x))
        return x  # (B, T+3, D)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm_final = RDTRMSNorm(dim)
        self.ffn_final = Mlp(dim, dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_final(self.norm_final(x))


class TimestepEmbedder(nn.Module):
    """Scalar (diffusion step or control frequency in Hz) -> D via a 256-d sinusoid and an MLP."""

    def __init__(self, dim: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, dim), nn.SiLU(), nn.Linear(dim, dim))

    @staticmethod
    def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]  # (B, half)
        # [cos | sin]: the official order here (the pos-embed helper uses the opposite one).
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 256)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = self.sinusoid(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype)
        return self.mlp(emb)  # (B, D)


# --------------------------------------------------------------------------------------------
# Sin-cos initialisation of the learned position embeddings (only matters when training from
# scratch; loaded checkpoints overwrite them).
# --------------------------------------------------------------------------------------------

def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """(len(positions), dim) in the order [sin | cos] (the official pos-embed helper's order)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def _sincos_grid(dim: int, grid: tuple[int, ...]) -> np.ndarray:
    """(*grid, dim): the embedding dim is split evenly over the axes with size > 1."""
    emb = np.zeros(grid + (dim,))
    axes = [i for i, g in enumerate(grid) if g > 1]
    if not axes:
        return emb
    per_axis = dim // len(axes)
    per_axis -= per_axis % 2
    for j, axis in enumerate(axes):
        shape = [1] * len(grid) + [per_axis]
        shape[axis] = -1
        emb[..., j * per_axis:(j + 1) * per_axis] += _sincos_1d(per_axis, np.arange(grid[axis])).reshape(shape)
    return emb


def multimodal_pos_embed(dim: int, modalities: Iterable[tuple[str, Any]], embed_modality: bool = True) -> np.ndarray:
    """(sum of lengths, dim). First half encodes which modality, second half the position inside it.

    A negative length (or grid axis) means "no position embedding along it", e.g. SigLIP patches,
    which already carry their own.
    """
    modalities = list(modalities)
    mod_embed = np.zeros((len(modalities), dim))
    pos_dim = dim
    if embed_modality:
        mod_embed[:, :dim // 2] = _sincos_1d(dim // 2, np.arange(len(modalities)))
        pos_dim = dim // 2
    chunks = []
    for idx, (_, length) in enumerate(modalities):
        grid = tuple(length) if isinstance(length, (tuple, list)) else (length,)
        full = tuple(abs(g) for g in grid)
        pos = _sincos_grid(pos_dim, tuple(g if g > 0 else 1 for g in grid))
        chunk = np.zeros(full + (dim,))
        chunk[..., dim - pos_dim:] += pos
        chunks.append(chunk.reshape(-1, dim) + mod_embed[idx])
    return np.concatenate(chunks, axis=0)


# --------------------------------------------------------------------------------------------
# The diffusion transformer (official `RDTRunner.model`)
# --------------------------------------------------------------------------------------------

class RDT(nn.Module):
    """x0/eps predictor over [timestep, ctrl_freq, state, action x T] tokens."""

    def __init__(self, config: RDTConfig) -> None:
        super().__init__()
        D = config.hidden_size
        self.config = config
        self.horizon = config.pred_horizon
        self.gradient_checkpointing = False
        self.t_embedder = TimestepEmbedder(D)
        self.freq_embedder = TimestepEmbedder(D)
        self.x_pos_embed = nn.Parameter(torch.zeros(1, config.pred_horizon + 3, D))  # (1, T+3, D)
        self.lang_cond_pos_embed = nn.Parameter(torch.zeros(1, config.max_lang_cond_len, D))  # (1, Lmax, D)
        self.img_cond_pos_embed = nn.Parameter(torch.zeros(1, config.img_cond_len, D))  # (1, I, D)
        self.blocks = nn.ModuleList([RDTBlock(D, config.num_heads) for _ in range(config.depth)])
        self.final_layer = FinalLayer(D, config.action_dim)

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """The official init: xavier Linear, sin-cos pos-embeds, N(0, .02) embedders, zero output."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        cfg = self.config
        D = cfg.hidden_size
        x_pe = multimodal_pos_embed(D, [("timestep", 1), ("ctrl_freq", 1), ("state", 1), ("action", cfg.pred_horizon)])
        if cfg.lang_pos_embed_config:
            lang_pe = multimodal_pos_embed(D, cfg.lang_pos_embed_config, embed_modality=False)
        else:
            lang_pe = _sincos_1d(D, np.arange(cfg.max_lang_cond_len))
        if cfg.img_pos_embed_config:
            img_pe = multimodal_pos_embed(D, cfg.img_pos_embed_config, embed_modality=False)
        else:
            img_pe = _sincos_1d(D, np.arange(cfg.img_cond_len))
        for param, value in ((self.x_pos_embed, x_pe), (self.lang_cond_pos_embed, lang_pe), (self.img_cond_pos_embed, img_pe)):
            param.copy_(torch.from_numpy(value).to(param.dtype).unsqueeze(0))
        for emb in (self.t_embedder, self.freq_embedder):
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        nn.init.zeros_(self.final_layer.ffn_final.fc2.weight)
        nn.init.zeros_(self.final_layer.ffn_final.fc2.bias)

    def forward(
        self,
        x: torch.Tensor,  # (B, T+1, D): adapted [state, action x T]
        freq: torch.Tensor,  # (B,) control frequency in Hz
        t: torch.Tensor,  # (B,) or (1,) diffusion timestep
        lang_c: torch.Tensor,  # (B, L, D)
        img_c: torch.Tensor,  # (B, I, D)
        lang_mask: Optional[torch.Tensor] = None,  # (B, L) bool, True = valid
        img_mask: Optional[torch.Tensor] = None,  # (B, I) bool
    ) -> torch.Tensor:
        B = x.shape[0]
        t = t.reshape(-1).expand(B) if t.numel() == 1 else t  # sampling passes one shared step
        t_tok = self.t_embedder(t).unsqueeze(1)  # (B, 1, D)
        f_tok = self.freq_embedder(freq.reshape(-1).expand(B) if freq.numel() == 1 else freq).unsqueeze(1)  # (B, 1, D)
        x = torch.cat([t_tok, f_tok, x], dim=1) + self.x_pos_embed  # (B, T+3, D)
        L = lang_c.shape[1]
        if L > self.lang_cond_pos_embed.shape[1]:
            raise ValueError(f"{L} language tokens exceed max_lang_cond_len {self.lang_cond_pos_embed.shape[1]}")
        if img_c.shape[1] != self.img_cond_pos_embed.shape[1]:
            raise ValueError(f"image condition has {img_c.shape[1]} tokens, the model expects exactly "
                             f"img_cond_len={self.img_cond_pos_embed.shape[1]}")
        lang_c = lang_c + self.lang_cond_pos_embed[:, :L]  # (B, L, D)
        img_c = img_c + self.img_cond_pos_embed  # (B, I, D)
        if lang_mask is not None:
            lang_mask = lang_mask.to(torch.bool)
        if img_mask is not None:
            img_mask = img_mask.to(torch.bool)
        for i, block in enumerate(self.blocks):
            # Even blocks read language, odd blocks read images.
            c, mask = (lang_c, lang_mask) if i % 2 == 0 else (img_c, img_mask)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, c, mask, use_reentrant=False)
            else:
                x = block(x, c, mask)  # (B, T+3, D)
        x = self.final_layer(x)  # (B, T+3, A)
        return x[:, -self.horizon:]  # (B, T, A)


# --------------------------------------------------------------------------------------------
# Runner: adaptors + diffusion (official `RDTRunner`)
# --------------------------------------------------------------------------------------------

def build_adaptor(kind: str, in_features: int, out_features: int) -> nn.Module:
    """Linear (GELU-tanh Linear)*: keys `0`, `2`, `4`, ... as in the official nn.Sequential."""
    depth = _parse_adaptor(kind)
    if kind == "linear":
        return nn.Linear(in_features, out_features)
    layers: list[nn.Module] = [nn.Linear(in_features, out_features)]
    for _ in range(1, depth):
        layers += [nn.GELU(approximate="tanh"), nn.Linear(out_features, out_features)]
    return nn.Sequential(*layers)


@dataclass
class RDTLossOutput:
    """`loss` is what to backpropagate; `sq_error` (B, T, A) is the unreduced squared error in fp32
    for per-group breakdowns; `pred`/`target` are (B, T, A); `timesteps` (B,) the DDPM steps used."""

    loss: torch.Tensor
    sq_error: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor


StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


class RDTRunner(nn.Module):
    """Official-layout RDT policy: children `model`, `lang_adaptor`, `img_adaptor`, `state_adaptor`.

    All parameters live in one dtype (the official runner mixed bf16 `model.*` with fp32 adaptors
    unless told otherwise, which fails with "mat1 and mat2 must have the same dtype"); floating
    inputs are cast to it at the entry points.
    """

    def __init__(self, config: RDTConfig, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, init_weights: bool = True) -> None:
        super().__init__()
        from diffusers import DDPMScheduler  # local import keeps `import ablation.rdt` light

        self.config = config
        D = config.hidden_size
        with torch.device(device) if device is not None else nullcontext():
            self.model = RDT(config)
            self.lang_adaptor = build_adaptor(config.lang_adaptor, config.lang_token_dim, D)
            self.img_adaptor = build_adaptor(config.img_adaptor, config.img_token_dim, D)
            self.state_adaptor = build_adaptor(config.state_adaptor, config.state_token_dim * 2, D)
        if init_weights and not self.model.x_pos_embed.is_meta:
            self.initialize_weights()
        self.to(dtype)
        # A plain attribute, not a submodule: the schedule holds no weights and must not enter state_dict.
        self.noise_scheduler = NoiseSchedule(config.num_train_timesteps, config.beta_schedule)

    # ---- construction helpers --------------------------------------------------------------

    @torch.no_grad()
    def initialize_weights(self) -> None:
        for m in (self.lang_adaptor, self.img_adaptor, self.state_adaptor):
            for sub in m.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.xavier_uniform_(sub.weight)
                    nn.init.zeros_(sub.bias)
        self.model.initialize_weights()

    @property
    def dtype(self) -> torch.dtype:
        return self.model.x_pos_embed.dtype

    @property
    def device(self) -> torch.device:
        return self.model.x_pos_embed.device

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block in backward: activation memory O(depth) -> O(1) blocks, ~30% slower."""
        self.model.gradient_checkpointing = enabled

    def make_sampler(self, num_inference_steps: Optional[int] = None) -> DPMSolverPP:
        """A fresh DPM-Solver++ (2M, midpoint, the diffusers 0.27 defaults the official checkpoints were
        evaluated with: ablation/noise_schedule.py); fresh per call because it keeps per-trajectory state."""
        return DPMSolverPP(self.noise_scheduler, num_inference_steps or self.config.num_inference_timesteps,
                           prediction_type=self.config.prediction_type)

    # ---- parameter groups --------------------------------------------------------------------

    def param_group(self, group: str) -> list[tuple[str, nn.Parameter]]:
        """Named parameters of a group: 'all', 'adaptors', 'lang_adaptor', 'img_adaptor',
        'state_adaptor', 'pos_embed', 'x_pos_embed', 'lang_cond_pos_embed', 'img_cond_pos_embed',
        'embedders', 't_embedder', 'freq_embedder', 'blocks', 'blocks:I', 'blocks:I-J' (inclusive),
        'final_layer'."""
        named = list(self.named_parameters())
        if group == "all":
            return named
        prefixes: tuple[str, ...]
        simple = {
            "adaptors": ("lang_adaptor.", "img_adaptor.", "state_adaptor."),
            "lang_adaptor": ("lang_adaptor.",), "img_adaptor": ("img_adaptor.",),
            "state_adaptor": ("state_adaptor.",),
            "pos_embed": ("model.x_pos_embed", "model.lang_cond_pos_embed", "model.img_cond_pos_embed"),
            "x_pos_embed": ("model.x_pos_embed",), "lang_cond_pos_embed": ("model.lang_cond_pos_embed",),
            "img_cond_pos_embed": ("model.img_cond_pos_embed",),
            "embedders": ("model.t_embedder.", "model.freq_embedder."),
            "t_embedder": ("model.t_embedder.",), "freq_embedder": ("model.freq_embedder.",),
            "blocks": ("model.blocks.",), "final_layer": ("model.final_layer.",),
        }
        if group in simple:
            prefixes = simple[group]
        else:
            match = re.fullmatch(r"blocks:(\d+)(?:-(\d+))?", group)
            if not match:
                raise ValueError(f"unknown RDT parameter group {group!r}; use one of {sorted(simple) + ['all']} "
                                 "or 'blocks:I' / 'blocks:I-J' (inclusive)")
            lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
            depth = self.config.depth
            if not (0 <= lo <= hi < depth):
                raise ValueError(f"block range {group!r} is outside 0-{depth - 1} (depth {depth})")
            prefixes = tuple(f"model.blocks.{i}." for i in range(lo, hi + 1))
        return [(n, p) for n, p in named if n.startswith(prefixes)]

    def freeze(self, groups: str | Iterable[str], frozen: bool = True) -> list[str]:
        """Set requires_grad = not frozen for every parameter in `groups`; returns the names touched."""
        groups = [groups] if isinstance(groups, str) else list(groups)
        touched: list[str] = []
        for group in groups:
            for name, p in self.param_group(group):
                p.requires_grad_(not frozen)
                touched.append(name)
        return touched

    def unfreeze(self, groups: str | Iterable[str]) -> list[str]:
        return self.freeze(groups, frozen=False)

    # ---- forward pieces --------------------------------------------------------------------

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.device, dtype=self.dtype)

    def adapt_conditions(self, lang_tokens: torch.Tensor, img_tokens: torch.Tensor,
                         state_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, 4096), (B, I, 1152), (B, N, 256) -> the same sequences in D."""
        lang_cond = self.lang_adaptor(self._cast(lang_tokens))  # (B, L, D)
        img_cond = self.img_adaptor(self._cast(img_tokens))  # (B, I, D)
        state_cond = self.state_adaptor(self._cast(state_tokens))  # (B, N, D)
        return lang_cond, img_cond, state_cond

    def denoise(self, noisy_action: torch.Tensor, timesteps: torch.Tensor, lang_tokens: torch.Tensor,
                lang_attn_mask: Optional[torch.Tensor], img_tokens: torch.Tensor, state_tokens: torch.Tensor,
                action_mask: torch.Tensor, ctrl_freqs: torch.Tensor,
                state_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One network call as in the official compute_loss: returns the x0 (or eps) prediction (B, T, A).

        noisy_action (B, T, A); state_tokens (B, 1, A); action_mask (B, 1, A) 0/1. `state_mask` (B, 1, A)
        marks the state's slots; None uses the action mask, as the official code does (its actions are
        future states in the same slots). A layout whose state and actions sit in different slots (EEF
        pose in 30-38, velocities in 39-44) needs its own.
        """
        traj = torch.cat([self._cast(state_tokens), self._cast(noisy_action)], dim=1)  # (B, T+1, A)
        am = self._cast(action_mask)
        sm = am if state_mask is None else self._cast(state_mask)
        mask = torch.cat([sm, am.expand(-1, noisy_action.shape[1], -1)], dim=1)  # (B, T+1, A)
        traj = torch.cat([traj, mask], dim=2)  # (B, T+1, 2A)
        lang_cond, img_cond, traj = self.adapt_conditions(lang_tokens, img_tokens, traj)
        return self.model(traj, ctrl_freqs.to(self.device), timesteps.to(self.device), lang_cond, img_cond,
                          lang_mask=None if lang_attn_mask is None else lang_attn_mask.to(self.device))

    def compute_loss(
        self,
        lang_tokens: torch.Tensor,  # (B, L, 4096)
        lang_attn_mask: Optional[torch.Tensor],  # (B, L) bool
        img_tokens: torch.Tensor,  # (B, I, 1152)
        state_tokens: torch.Tensor,  # (B, 1, A)
        action_gt: torch.Tensor,  # (B, T, A)
        action_mask: torch.Tensor,  # (B, 1, A)
        ctrl_freqs: torch.Tensor,  # (B,) Hz
        noise: Optional[torch.Tensor] = None,
        timesteps: Optional[torch.Tensor] = None,
        reduction: Reduction = "rdt_mean",
        ctrl_freq_dropout: float = 0.0,
        generator: Optional[torch.Generator] = None,
    ) -> RDTLossOutput:
        """Diffusion training loss.

        reduction: 'rdt_mean' = official unmasked mean over all B*T*A values (invalid slots, whose
        target is 0, count too); 'masked_mean' = mean over the valid slots only; 'none' = loss is
        the (B, T, A) error. `noise`/`timesteps` default to fresh draws in the official order
        (randn, then randint). ctrl_freq_dropout zeroes each sample's frequency with that
        probability (the official training recipe uses 0.1 in its data pipeline).
        """
        action_gt = self._cast(action_gt)
        B = action_gt.shape[0]
        if noise is None:
            noise = torch.randn(action_gt.shape, dtype=action_gt.dtype, device=action_gt.device, generator=generator)
        if timesteps is None:
            timesteps = torch.randint(0, self.config.num_train_timesteps, (B,), device=action_gt.device,
                                      generator=generator)
        noise, timesteps = self._cast(noise), timesteps.to(self.device).long()
        if ctrl_freq_dropout > 0:
            keep = torch.rand(B, device=ctrl_freqs.device, generator=generator) >= ctrl_freq_dropout
            ctrl_freqs = ctrl_freqs * keep.to(ctrl_freqs.dtype)
        noisy_action = self.noise_scheduler.add_noise(action_gt, noise, timesteps)  # (B, T, A)
        pred = self.denoise(noisy_action, timesteps, lang_tokens, lang_attn_mask, img_tokens, state_tokens,
                            action_mask, ctrl_freqs)  # (B, T, A)
        target = action_gt if self.config.prediction_type == "sample" else noise
        sq_error = (pred.float() - target.float()).square()  # (B, T, A)
        if reduction == "rdt_mean":
            loss = F.mse_loss(pred.float(), target.float())
        elif reduction == "masked_mean":
            valid = self._cast(action_mask).float().expand_as(sq_error)  # (B, T, A)
            loss = (sq_error * valid).sum() / valid.sum().clamp_min(1.0)
        elif reduction == "none":
            loss = sq_error
        else:
            raise ValueError(f"unknown reduction {reduction!r}; use 'rdt_mean', 'masked_mean' or 'none'")
        return RDTLossOutput(loss=loss, sq_error=sq_error, pred=pred, target=target, timesteps=timesteps, noise=noise)

    @torch.no_grad()
    def conditional_sample(
        self,
        lang_cond: torch.Tensor,  # (B, L, D) adapted
        lang_attn_mask: Optional[torch.Tensor],  # (B, L)
        img_cond: torch.Tensor,  # (B, I, D) adapted
        state_traj: torch.Tensor,  # (B, 1, D) adapted state token
        action_mask: torch.Tensor,  # (B, 1, A)
        ctrl_freqs: torch.Tensor,  # (B,)
        init_noise: Optional[torch.Tensor] = None,  # (B, T, A); default torch.randn (global RNG)
        num_inference_steps: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        callback: Optional[StepCallback] = None,
    ) -> torch.Tensor:
        """DPM-Solver++ sampling from x_T; returns actions (B, T, A) multiplied by the mask.

        callback(step, t, x_t, model_output) is called after each network evaluation.
        """
        B, T, A = state_traj.shape[0], self.config.pred_horizon, self.config.action_dim
        if init_noise is None:
            init_noise = torch.randn((B, T, A), dtype=self.dtype, device=self.device, generator=generator)
        x = self._cast(init_noise)  # (B, T, A)
        mask = self._cast(action_mask).expand(-1, T, -1)  # (B, T, A)
        sampler = self.make_sampler(num_inference_steps)
        for step, t in enumerate(sampler.timesteps):
            action_tokens = self.state_adaptor(torch.cat([x, mask], dim=2))  # (B, T, D)
            traj = torch.cat([state_traj, action_tokens], dim=1)  # (B, T+1, D)
            model_output = self.model(traj, ctrl_freqs.to(self.device), t.reshape(1).to(self.device),
                                      lang_cond, img_cond, lang_mask=lang_attn_mask)  # (B, T, A)
            if callback is not None:
                callback(step, t, x, model_output)
            x = sampler.step(model_output, t, x).to(self.dtype)
        return x * mask

    @torch.no_grad()
    def predict_action(
        self,
        lang_tokens: torch.Tensor,  # (B, L, 4096)
        lang_attn_mask: Optional[torch.Tensor],  # (B, L) bool
        img_tokens: torch.Tensor,  # (B, I, 1152)
        state_tokens: torch.Tensor,  # (B, 1, A)
        action_mask: torch.Tensor,  # (B, 1, A)
        ctrl_freqs: torch.Tensor,  # (B,) Hz
        init_noise: Optional[torch.Tensor] = None,
        num_inference_steps: int = 5,
        generator: Optional[torch.Generator] = None,
        callback: Optional[StepCallback] = None,
    ) -> torch.Tensor:
        """Sampled action chunk (B, T, A) in the unified 128-d layout, zero where the mask is 0."""
        state = torch.cat([self._cast(state_tokens), self._cast(action_mask)], dim=2)  # (B, 1, 2A)
        lang_cond, img_cond, state_traj = self.adapt_conditions(lang_tokens, img_tokens, state)
        if lang_attn_mask is not None:
            lang_attn_mask = lang_attn_mask.to(device=self.device, dtype=torch.bool)
        return self.conditional_sample(lang_cond, lang_attn_mask, img_cond, state_traj, action_mask, ctrl_freqs,
                                       init_noise=init_noise, num_inference_steps=num_inference_steps,
                                       generator=generator, callback=callback)


def build_rdt(config: RDTConfig | str, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> RDTRunner:
    """A freshly initialised RDTRunner from a config or preset name."""
    cfg = RDTConfig.preset(config) if isinstance(config, str) else config
    return RDTRunner(cfg, dtype=dtype, device=device)
