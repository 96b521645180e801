"""Diffusion loss with a per-group breakdown that adds up exactly to the total.

Per-element error e[b,h,w] = (pred - target)^2 is kept unreduced, (B, H, W). A slot weight
w[w] = group weight (loss.weights) x (1 / group variance, when loss.inverse_variance) is applied
to that group's slots; unfilled (padding) slots keep weight 1.

    rdt_mean     total = sum_{b,h,w} w_w e[b,h,w] / (B*H*W)                 (RDT `F.mse_loss`)
    masked_mean  total = sum_{b,h,w in filled} w_w e[b,h,w] / (B*H*n_filled)

Both count every chunk step, including the padded steps past an episode's end: RDT pads by
repeating the last action and trains on it, and keeping the steps lets this ablation change one
thing only (which slots are averaged). The breakdown `contrib[g]` is group g's share of that sum
(same denominator), so sum(contrib over pos, rot, grip, pad) == total to float rounding. `pad`
(unfilled slots, non-zero under rdt_mean only) is what the RDT loss spends on slots that carry
nothing.

nMSE[g] = unweighted mean over g's slots of the x0 error, / the group's model-space variance in
the training data: about 1 means "no better than predicting the mean", whatever the units.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .codec import ActionCodec
from .spec import GROUPS, LossSpec

# Group variance floor for inverse-variance weights, relative to the largest group variance:
# a constant group (e.g. rotation when the expert never rotates) must not get an infinite weight,
# while the seed's metres-vs-unit gap (variance ratio ~1e-4) must pass unchanged.
INV_VAR_FLOOR = 1e-6


SHARES = ("pos", "rot", "grip", "pad")  # order of LossOutput.contrib_vec


@dataclass
class LossOutput:
    total: torch.Tensor        # scalar, what is back-propagated
    contrib_vec: torch.Tensor  # (4,) shares of the total in SHARES order; they add up to `total`
    mse_vec: torch.Tensor      # (3,) unweighted mean x0 error per group (model space), GROUPS order
    err: torch.Tensor          # (B, H, W) unreduced squared error

    @property
    def contrib(self) -> dict[str, torch.Tensor]:
        return dict(zip(SHARES, self.contrib_vec.unbind()))

    @property
    def mse(self) -> dict[str, torch.Tensor]:
        return dict(zip(GROUPS, self.mse_vec.unbind()))


def group_weights(codec: ActionCodec, spec: LossSpec) -> dict[str, float]:
    """Per-group loss weight: spec weight x (1/variance of the group in model space, if asked)."""
    w = spec.weights.as_dict()
    if spec.inverse_variance:
        var = codec.group_variance_model()
        floor = INV_VAR_FLOOR * max(var.values())
        w = {g: w[g] / max(var[g], floor, 1e-12) for g in GROUPS}
    return w


class DiffusionLoss:
    """Reduces (pred - target)^2 as the spec says. Build once per codec; call per batch.

    Per batch it costs a handful of ops: the shares are one (W,) x (W,4) product, so the
    breakdown stays cheap next to a tiny model's step.
    """

    def __init__(self, codec: ActionCodec, spec: LossSpec, device: torch.device | str = "cpu"):
        self.reduction = spec.reduction
        W = codec.width
        gw = group_weights(codec, spec)
        self.group_weight = gw
        filled = torch.as_tensor(codec.action_mask, dtype=torch.float32)
        masks = torch.zeros(W, len(SHARES))                                   # (W, 4) one-hot group of each slot
        slot_w = torch.ones(W, dtype=torch.float32)
        for j, g in enumerate(GROUPS):
            slots = torch.as_tensor(codec.group_slots[g])
            masks[slots, j] = 1.0
            slot_w[slots] = gw[g]
        masks[:, 3] = 1.0 - filled
        self.n_filled = int(filled.sum().item())
        if self.reduction == "masked_mean":
            masks[:, 3] = 0.0  # padding slots are not part of the masked loss
        # share_mat[w, j] = weight of slot w x (slot w in share j): shares = per_slot_err @ share_mat / denom
        self.share_mat = (masks * slot_w[:, None]).to(device)
        # mse_mat[w, j] = (slot w in group j) / n_slots(j): group means = per_slot_err @ mse_mat / (B*H)
        gm = masks[:, :3].clone()
        self.mse_mat = (gm / gm.sum(0).clamp(min=1)).to(device)
        self.slot_weight = slot_w.to(device)
        self.var = codec.group_variance_model()
        self.width = W

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, x0_pred: torch.Tensor | None = None,
                 x0_true: torch.Tensor | None = None) -> LossOutput:
        """pred/target (B,H,W) in the training target's space; x0_* for the nMSE (defaults to pred/target)."""
        err = (pred.float() - target.float()).pow(2)                          # (B, H, W)
        B, H, W = err.shape
        denom = B * H * (W if self.reduction == "rdt_mean" else self.n_filled)
        shares = err.sum(dim=(0, 1)) @ self.share_mat / denom                 # (4,)
        # Defined as the sum of the shares, so the breakdown adds up to the total by construction.
        total = shares[0] + shares[1] + shares[2] + shares[3]
        x0_err = err if x0_pred is None else (x0_pred.float() - x0_true.float()).pow(2)
        mse = x0_err.sum(dim=(0, 1)) @ self.mse_mat / (B * H)                 # (3,)
        return LossOutput(total, shares, mse, err)

    def nmse(self, mse: dict[str, float]) -> dict[str, float]:
        return {g: float(mse[g]) / max(self.var[g], 1e-12) for g in GROUPS}


# ----------------------------------------------------------------------------- physical errors

def _geodesic_deg(ra: np.ndarray, rb: np.ndarray) -> np.ndarray:
    """Angle of ra rb^T in degrees, (...,)."""
    rel = ra @ np.swapaxes(rb, -1, -2)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def rotation_matrices(codec: ActionCodec, rot: np.ndarray) -> np.ndarray:
    """The rotation group of physical actions (..., 3 or 6) -> (..., 3, 3)."""
    return codec.rep.rot_matrices(rot)


def physical_errors(codec: ActionCodec, pred_phys: np.ndarray, true_phys: np.ndarray,
                    valid: np.ndarray | None = None) -> dict[str, float]:
    """Mean errors of physical action chunks (..., D): position in mm (Euclidean), rotation in
    degrees (geodesic), gripper in native units (|difference|, -1 open / +1 close). Averaged over the
    steps where `valid` (...,) is 1 (all steps when None)."""
    idx = codec.rep.group_index
    pos = np.linalg.norm(codec.rep.pos_m(pred_phys[..., idx["pos"]] - true_phys[..., idx["pos"]]), axis=-1) * 1000.0
    rot = _geodesic_deg(rotation_matrices(codec, pred_phys[..., idx["rot"]]),
                        rotation_matrices(codec, true_phys[..., idx["rot"]]))
    grip = np.abs(pred_phys[..., idx["grip"][0]] - true_phys[..., idx["grip"][0]])
    w = np.ones(pos.shape) if valid is None else np.asarray(valid, dtype=np.float64)
    n = max(w.sum(), 1.0)
    return {"pos_mm": float((pos * w).sum() / n), "rot_deg": float((rot * w).sum() / n),
            "grip": float((grip * w).sum() / n)}
