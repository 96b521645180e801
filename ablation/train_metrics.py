"""Batches and the figures a training run measures: window tensors, per-group loss meters,
physical errors and the one-step x0 error by diffusion time."""
from __future__ import annotations

import numpy as np
import torch

from .data import Windows
from .loss import SHARES, DiffusionLoss, physical_errors
from .policy import DiffusionPolicy
from .spec import GROUPS

X0_BY_T_BINS = 5       # diffusion-time bins of the final x0-error diagnostic (val/x0_by_t/*)
X0_BY_T_WINDOWS = 256  # held-out windows per bin (the same windows and unit noise in every bin)


class WindowTensors:
    """Training windows as tensors on the training device; gathers batches by index."""

    def __init__(self, w: Windows, device: torch.device):
        self.windows = w
        self.obs = torch.as_tensor(w.obs, device=device)
        self.state = torch.as_tensor(w.state, device=device)
        self.actions = torch.as_tensor(w.actions, device=device)
        self.valid = torch.as_tensor(w.action_valid, device=device)
        # model.kind rdt: `images` gathers SigLIP tokens from the feature cache per batch (ablation/rdt/features.py)
        self.images = torch.as_tensor(w.images, device=device) if isinstance(w.images, np.ndarray) else w.images

    def __len__(self) -> int:
        return self.obs.shape[0]

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = idx.to(self.obs.device)
        b = {"obs": self.obs[idx], "state": self.state[idx], "actions": self.actions[idx], "valid": self.valid[idx]}
        if isinstance(self.images, torch.Tensor):
            b["images"] = self.images[idx]
        elif self.images is not None:
            b["images"] = torch.as_tensor(self.images[idx.cpu().numpy()], device=self.obs.device)
        return b


class LossMeter:
    """Per-group loss shares and x0 MSEs summed on the device (no sync per step) between logs."""

    def __init__(self, device: torch.device):
        self.total = torch.zeros((), device=device)
        self.shares = torch.zeros(len(SHARES), device=device)
        self.mse = torch.zeros(len(GROUPS), device=device)
        self.n = 0

    @torch.no_grad()
    def add(self, lo) -> None:
        self.total += lo.total.detach()
        self.shares += lo.contrib_vec.detach()
        self.mse += lo.mse_vec.detach()
        self.n += 1

    def metrics(self, loss_fn: DiffusionLoss, prefix: str) -> dict[str, float]:
        """{prefix}/loss/{total,pos,rot,grip,pad} and {prefix}/nmse/{g}, averaged over the steps added."""
        n = max(self.n, 1)
        m = {f"{prefix}/loss/total": float(self.total) / n}
        m.update({f"{prefix}/loss/{g}": v / n for g, v in zip(SHARES, self.shares.tolist())})
        nmse = loss_fn.nmse({g: v / n for g, v in zip(GROUPS, self.mse.tolist())})
        m.update({f"{prefix}/nmse/{g}": nmse[g] for g in GROUPS})
        return m


def phys_metrics(policy: DiffusionPolicy, x0_pred: torch.Tensor, w: Windows, idx: torch.Tensor,
                 prefix: str) -> dict[str, float]:
    """Physical errors of one batch's x0 estimate, {prefix}/phys/{pos_mm,rot_deg,grip}."""
    ni = idx.cpu().numpy()
    pred_phys = policy.codec.decode(x0_pred.detach().float().cpu().numpy())
    errs = physical_errors(policy.codec, pred_phys, w.phys_actions[ni], w.action_valid[ni])
    return {f"{prefix}/phys/{k}": v for k, v in errs.items()}


@torch.no_grad()
def x0_error_by_t(policy: DiffusionPolicy, windows: WindowTensors, loss_fn: DiffusionLoss, *,
                  n_bins: int = X0_BY_T_BINS, n: int = X0_BY_T_WINDOWS, batch_size: int = 64,
                  seed: int = 0) -> dict[str, float]:
    """One-step x0 nMSE per group, binned by diffusion time: bin k draws t uniformly from
    [k T/n_bins, (k+1) T/n_bins) (T = model.num_train_timesteps), on the same n windows with the same
    unit noise in every bin, so bins differ only in t. Signal-to-noise arguments predict where arms
    differ: at small t the chunk is barely noised, at large t the net predicts from the observation.
    -> {val/x0_by_t/{g}/bin{k}: nMSE} (1: no better than the group's mean)."""
    T = policy.spec.model.num_train_timesteps
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(windows), generator=gen)[:n]
    batches = [windows.batch(idx[i:i + batch_size]) for i in range(0, len(idx), batch_size)]
    noises = [torch.randn(b["actions"].shape, generator=gen).to(b["actions"].device) for b in batches]
    out: dict[str, float] = {}
    for k in range(n_bins):
        lo, hi = k * T // n_bins, max((k + 1) * T // n_bins, k * T // n_bins + 1)
        mse = torch.zeros(len(GROUPS))
        for b, noise in zip(batches, noises):
            B = b["actions"].shape[0]
            t = torch.randint(lo, hi, (B,), generator=gen).to(noise.device)
            o = policy.outputs_at(b, noise, t)
            mse += loss_fn(o["pred"], o["target"], o["x0_pred"], o["x0"]).mse_vec.float().cpu() * B
        nmse = loss_fn.nmse({g: v / len(idx) for g, v in zip(GROUPS, mse.tolist())})
        out.update({f"val/x0_by_t/{g}/bin{k}": nmse[g] for g in GROUPS})
    return out
