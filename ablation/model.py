"""A diffusion transformer in RDT's style, small enough to read in one sitting.

Token layout (B batch, H action chunk, W action width, Ws state width, D hidden):

    x tokens (self-attention, H + 3 of them)          c tokens (cross-attention, conditioning)
    -----------------------------------------          -------------------------------------------
    [ t ]        diffusion timestep  -> D              [ task ]           learned task token (no LM)
    [ freq ]     control frequency   -> D              [ obs_0 .. obs_To-1 ]  MLP(obs features) per step
    [ state ]    [state | state_mask]  (2*Ws) -> D     [ img_(k,cam) ]    CNN per camera per step (opt.)
    [ a_0 ]      [noisy a_0 | action_mask] (2*W) -> D
    ...
    [ a_H-1 ]

Each block (RDT `RDTBlock`): x += SelfAttn(RMSNorm x); x += CrossAttn(RMSNorm x, c); x += MLP(RMSNorm x).
The final layer reads the H action tokens back to (B, H, W). Like RDT, the action mask is an input
feature only; whether it masks the loss is decided in `ablation.loss`. Unlike RDT (one shared
adaptor for 128-d state and actions), the state and action adaptors are separate, because the
compact layout gives them different widths.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

# name -> (hidden, depth, heads). The RDT-shaped sizes match RDT-170M / RDT-1B's transformer.
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (32, 2, 4),
    "small": (128, 4, 4),
    "rdt-170m": (1024, 14, 32),
    "rdt-1b": (2048, 28, 32),
}


@dataclass(frozen=True)
class DiTConfig:
    """Everything that fixes the network's shapes. Stored in the checkpoint via the spec."""

    hidden: int
    depth: int
    heads: int
    horizon: int          # H, action chunk length
    action_width: int     # W, codec width (7/10 compact, 128 RDT)
    state_width: int      # Ws
    obs_dim: int          # F, low-dim feature size per history step
    obs_history: int      # To
    n_cams: int = 0       # 0: no image tokens
    image_size: int = 128
    mlp_ratio: float = 4.0

    @classmethod
    def for_size(cls, size: str, **shapes) -> "DiTConfig":
        if size not in SIZES:
            raise ValueError(f"model size '{size}' is not one of {', '.join(SIZES)}")
        hidden, depth, heads = SIZES[size]
        return cls(hidden=hidden, depth=depth, heads=heads, **shapes)

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


@dataclass(frozen=True)
class Kernels:
    """How the blocks compute, not what: the weights and state-dict keys are the same either way.

    attention  "sdpa": `F.scaled_dot_product_attention` (the reference). "math": scores by two batched
               matmuls + softmax, the q/k RMSNorm applied before the head transpose; equal to float
               rounding (~1e-7, golden within 1e-5). Profiled at this model's sizes (19 queries, 19 or
               3 keys) on 1 CPU thread: no faster than sdpa eagerly (fwd+bwd, or inference), but under
               torch.compile inductor fuses its scale, softmax and casts into the neighbouring kernels,
               while SDPA stays an opaque call: the compiled training step is ~8% faster with "math"
               (1110-1130 vs 980-1040 samples/s, small DiT, batch 64, 1 thread, Zen 5). SDPA's CPU
               backward is also several times slower when q/k/v are bf16 (5.7x on Zen 5, ~20x on Xeon).
    matmul     "bf16": the blocks' Linear layers multiply in bfloat16 (fp32 accumulation, fp32 bias,
               fp32 activations, norms, softmax and master weights), for CPUs with AMX/AVX512-BF16
               (2-5x faster matmuls there). The adaptors, embedders and output head stay fp32.
               "fp32": everything fp32.
    The reference (the pre-Throughput network, and the golden) is Kernels("sdpa", "fp32").
    """

    attention: Literal["sdpa", "math"] = "sdpa"
    matmul: Literal["fp32", "bf16"] = "fp32"

    def __post_init__(self):
        if self.attention not in ("math", "sdpa"):
            raise ValueError(f"attention kernel '{self.attention}' is not one of math, sdpa")
        if self.matmul not in ("fp32", "bf16"):
            raise ValueError(f"matmul kernel '{self.matmul}' is not one of fp32, bf16")


REFERENCE_KERNELS = Kernels("sdpa", "fp32")
FAST_TRAIN_KERNELS = Kernels("sdpa", "bf16")      # CPU training, eager
COMPILED_TRAIN_KERNELS = Kernels("math", "bf16")  # CPU training under torch.compile (train.compile)
FAST_EVAL_KERNELS = REFERENCE_KERNELS             # validation and sampling: full precision


def linear(x: torch.Tensor, layer: nn.Linear, matmul: str) -> torch.Tensor:
    """layer(x), with the product in bf16 when matmul == "bf16" (output and bias in fp32)."""
    if matmul == "fp32" or x.dtype != torch.float32:
        return layer(x)
    return F.linear(x.to(torch.bfloat16), layer.weight.to(torch.bfloat16)).float() + layer.bias


class Attention(nn.Module):
    """Multi-head attention with RMS-normalised queries and keys (as RDT); self or cross."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        assert dim % heads == 0, f"hidden {dim} must be divisible by heads {heads}"
        self.heads, self.hd = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q_norm, self.k_norm = RMSNorm(self.hd), RMSNorm(self.hd)
        self.proj = nn.Linear(dim, dim)
        self.kernels = REFERENCE_KERNELS

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        c = x if c is None else c
        M = c.shape[1]
        mm = self.kernels.matmul
        if self.kernels.attention == "sdpa":
            q = linear(x, self.q, mm).view(B, N, self.heads, self.hd).transpose(1, 2)          # (B, h, N, hd)
            k, v = linear(c, self.kv, mm).view(B, M, 2, self.heads, self.hd).permute(2, 0, 3, 1, 4)  # (B, h, M, hd)
            out = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)             # (B, h, N, hd)
        else:
            q = self.q_norm(linear(x, self.q, mm).view(B, N, self.heads, self.hd)).transpose(1, 2)  # (B, h, N, hd)
            kv = linear(c, self.kv, mm).view(B, M, 2, self.heads, self.hd)
            k = self.k_norm(kv[:, :, 0]).transpose(1, 2)                                       # (B, h, M, hd)
            v = kv[:, :, 1].transpose(1, 2)
            scores = torch.matmul(q * (self.hd ** -0.5), k.transpose(-1, -2))                  # (B, h, N, M)
            out = torch.matmul(scores.softmax(dim=-1), v)                                       # (B, h, N, hd)
        return linear(out.transpose(1, 2).reshape(B, N, D), self.proj, mm)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.attn = RMSNorm(dim), Attention(dim, heads)
        self.norm2, self.cross = RMSNorm(dim), Attention(dim, heads)
        self.norm3 = RMSNorm(dim)
        hid = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hid), nn.GELU(approximate="tanh"), nn.Linear(hid, dim))
        self.kernels = REFERENCE_KERNELS

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.cross(self.norm2(x), c)
        mm = self.kernels.matmul
        h = F.gelu(linear(self.norm3(x), self.mlp[0], mm), approximate="tanh")
        return x + linear(h, self.mlp[2], mm)


class ScalarEmbedder(nn.Module):
    """Sinusoidal features of a scalar (timestep, frequency) -> MLP -> one D token (RDT `TimestepEmbedder`)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=s.device, dtype=torch.float32) / half)
        args = s.float()[:, None] * freqs[None]                                  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)              # (B, freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))                        # (B, D)


class ImageEncoder(nn.Module):
    """A small CNN: uint8 (N, h, w, 3) -> (N, D). Stands in for SigLIP, which cannot be downloaded here."""

    def __init__(self, dim: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 5, stride=2, padding=2), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * width), nn.SiLU(),
            nn.Conv2d(4 * width, 4 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * width), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, dim))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = img.permute(0, 3, 1, 2).to(self.net[0].weight.dtype) / 127.5 - 1.0   # (N, 3, h, w) in [-1, 1]
        return self.net(x)


class DiffusionTransformer(nn.Module):
    """Predicts x0 or epsilon for a noisy action chunk, conditioned on observations."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        D, H, To = cfg.hidden, cfg.horizon, cfg.obs_history
        self.t_embed = ScalarEmbedder(D)
        self.freq_embed = ScalarEmbedder(D)
        self.state_adaptor = nn.Sequential(nn.Linear(2 * cfg.state_width, D), nn.GELU(approximate="tanh"), nn.Linear(D, D))
        self.action_adaptor = nn.Sequential(nn.Linear(2 * cfg.action_width, D), nn.GELU(approximate="tanh"), nn.Linear(D, D))
        self.obs_mlp = nn.Sequential(nn.Linear(cfg.obs_dim, D), nn.GELU(approximate="tanh"), nn.Linear(D, D))
        self.task_token = nn.Parameter(torch.zeros(1, 1, D))
        self.image_encoder = ImageEncoder(D) if cfg.n_cams > 0 else None
        n_cond = 1 + To + To * cfg.n_cams
        self.x_pos = nn.Parameter(torch.zeros(1, 3 + H, D))
        self.c_pos = nn.Parameter(torch.zeros(1, n_cond, D))
        self.blocks = nn.ModuleList(Block(D, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final_norm = RMSNorm(D)
        self.head = nn.Sequential(nn.Linear(D, D), nn.GELU(approximate="tanh"), nn.Linear(D, cfg.action_width))
        self._init_weights()
        self.kernels = REFERENCE_KERNELS

    def set_kernels(self, kernels: Kernels) -> "DiffusionTransformer":
        """Choose how the blocks compute (see `Kernels`); weights are untouched. Returns self."""
        self.kernels = kernels
        for m in self.modules():
            if isinstance(m, (Attention, Block)):
                m.kernels = kernels
        return self

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.x_pos, std=0.02)
        nn.init.normal_(self.c_pos, std=0.02)
        nn.init.normal_(self.task_token, std=0.02)
        # Zero output layer (RDT `FinalLayer` init): the untrained net predicts 0 everywhere.
        nn.init.zeros_(self.head[-1].weight)

    def forward(self, noisy_actions: torch.Tensor, action_mask: torch.Tensor, timesteps: torch.Tensor,
                ctrl_freq: torch.Tensor, state: torch.Tensor, state_mask: torch.Tensor,
                obs: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """noisy_actions (B,H,W), action_mask (W,), timesteps (B,), ctrl_freq (B,), state (B,Ws),
        state_mask (Ws,), obs (B,To,F) normalised, images (B,To,n_cams,h,w,3) uint8 -> (B,H,W)."""
        B, H, W = noisy_actions.shape
        dt = self.x_pos.dtype
        a_in = torch.cat([noisy_actions, action_mask.expand(B, H, W)], dim=-1).to(dt)     # (B, H, 2W)
        s_in = torch.cat([state, state_mask.expand_as(state)], dim=-1).to(dt)[:, None]    # (B, 1, 2Ws)
        x = torch.cat([self.t_embed(timesteps)[:, None], self.freq_embed(ctrl_freq)[:, None],
                       self.state_adaptor(s_in), self.action_adaptor(a_in)], dim=1)      # (B, 3+H, D)
        x = x + self.x_pos
        cond = [self.task_token.expand(B, -1, -1), self.obs_mlp(obs.to(dt))]              # (B,1,D), (B,To,D)
        if self.image_encoder is not None:
            if images is None:
                raise ValueError("this model was built with image tokens; pass images (B,To,n_cams,h,w,3)")
            To, nc = images.shape[1], images.shape[2]
            feats = self.image_encoder(images.reshape(B * To * nc, *images.shape[3:]))  # (B*To*nc, D)
            cond.append(feats.view(B, To * nc, -1))                                    # (B, To*nc, D)
        c = torch.cat(cond, dim=1) + self.c_pos                                        # (B, n_cond, D)
        for block in self.blocks:
            x = block(x, c)
        return self.head(self.final_norm(x[:, 3:]))                                    # (B, H, W)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
