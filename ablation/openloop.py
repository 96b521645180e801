"""Open-loop evaluation: fully sampled action chunks against held-out demo windows.

    open_loop_eval(policy, windows, n=256, seed=0) -> flat dict of figures

Every figure here comes from chunks sampled the way a rollout samples them (DPM-Solver++ from
noise, `DiffusionPolicy.sample`), never from a one-step x0 estimate; the trainer's `val/nmse/*`
(one denoising step at a random t) is a training diagnostic, not an open-loop figure.

Keys (the trainer logs them as `val/openloop/<key>`):
    pos_mm, rot_deg, grip        mean physical errors over valid chunk steps (ablation.loss.physical_errors)
    nmse/{pos,rot,grip}          MSE of the sampled PHYSICAL actions of the group over valid steps, divided
                                 by the group's variance in the evaluated windows (mean over its dims):
                                 1.0 == no better than predicting the windows' mean. NaN for a constant
                                 group (const/{g} = 1)
    r2/pos_vs_abs_pose           the seed-symptom signature: R^2 of the linear fit of the predicted
    r2/pos_vs_delta              first-step position output (decoded, metres) on (a) the absolute EEF
                                 position at that step, (b) the demo's position delta of that step
                                 (metres). Per axis, averaged over axes; in [0, 1]. A model that emits
                                 absolute poses where deltas are expected has abs_pose near 1 and
                                 delta low; a healthy delta model the reverse. For abs_pose
                                 representations (the output is a target pose) both are reported as is.
    pose_fit/{slope,slope_x,slope_y,slope_z,intercept_m,mag_ratio,r2}   the same first-step output
                                 regressed on the absolute EEF position (ablation.pose_fit): a pose has
                                 slope ~1, intercept ~0, |pred|/|pose| ~1; a step does not (R^2 alone cannot tell)
    clip_fraction, max_excess    decoded env actions outside [-1, 1] before clipping (arm dims, all steps)
    demo_clip_fraction           the same for the demo's own actions, for reference
    pos_step_max_m, pos_step_ratio   largest commanded position step / largest in the training data
    std_ratio/{g}, const/{g}     std of predicted / demo physical actions (mean over the group's dims);
                                 NaN and const = 1 when the demo group is constant
    n_windows, horizon
"""
from __future__ import annotations

import numpy as np
import torch

from .codec import ActionCodec
from .data import Windows
from .loss import physical_errors
from .pose_fit import pose_regression

CONST_VAR = 1e-12


def window_batch(windows: Windows, idx: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """The network inputs of windows[idx] as tensors on `device`."""
    b = {"obs": windows.obs[idx], "state": windows.state[idx], "actions": windows.actions[idx]}
    if windows.images is not None:
        b["images"] = windows.images[idx]
    return {k: torch.as_tensor(np.ascontiguousarray(v), device=device) for k, v in b.items()}


def chunk_poses(codec: ActionCodec, w: Windows, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """EEF pose before each chunk step, (n,H,3), (n,H,3,3), as if the arm followed the demo.

    Step 0 uses the window's pose; step h>0 the demo's target of step h-1, which for absolute
    representations is the pose reached after it. Delta representations do not read the pose.
    """
    H = w.phys_actions.shape[1]
    pos = np.repeat(w.ee_pos[idx][:, None], H, axis=1)
    rot = np.repeat(w.ee_rot[idx][:, None], H, axis=1)
    return codec.rep.chunk_poses(pos, rot, w.phys_actions[idx])


def group_nmse(codec: ActionCodec, pred_phys: np.ndarray, true_phys: np.ndarray,
               valid: np.ndarray) -> dict[str, float]:
    """Per group: MSE of physical actions over valid steps / the group's variance over those steps."""
    m = np.asarray(valid, dtype=bool).reshape(-1)
    p = pred_phys.reshape(-1, pred_phys.shape[-1])[m]
    t = true_phys.reshape(-1, true_phys.shape[-1])[m]
    out = {}
    for g, gi in codec.rep.group_index.items():
        var = float(t[:, gi].var(0).mean()) if len(t) else 0.0
        mse = float(((p[:, gi] - t[:, gi]) ** 2).mean()) if len(t) else float("nan")
        out[g] = mse / var if var > CONST_VAR else float("nan")
    return out


def r2_linear(pred: np.ndarray, ref: np.ndarray) -> float:
    """R^2 of the least-squares line pred ~ a + b ref, per column, averaged over columns with spread."""
    vals = []
    for j in range(pred.shape[1]):
        x, y = ref[:, j], pred[:, j]
        if x.std() < 1e-12 or y.std() < 1e-12:
            continue
        vals.append(float(np.corrcoef(x, y)[0, 1] ** 2))
    return float(np.mean(vals)) if vals else float("nan")


def pose_signature(codec: ActionCodec, pred_phys: np.ndarray, windows: Windows, idx: np.ndarray) -> dict[str, float]:
    """r2/pos_vs_abs_pose and r2/pos_vs_delta of the first chunk step (see the module docstring)."""
    gi = codec.rep.group_index["pos"]
    pred0 = codec.rep.pos_m(pred_phys[:, 0, gi])                 # (n, 3) metres
    abs_pose = windows.ee_pos[idx]                                # (n, 3) metres
    delta = codec.rep.step_m(windows.phys_actions[idx][:, 0, gi], abs_pose)
    return {"r2/pos_vs_abs_pose": r2_linear(pred0, abs_pose), "r2/pos_vs_delta": r2_linear(pred0, delta),
            **pose_regression(pred0, abs_pose)}


@torch.no_grad()
def sample_windows(policy, windows: Windows, idx: np.ndarray, seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """Fully sampled chunks for windows[idx] -> (n, H, W) model space, float64."""
    dev = policy.device
    gen = torch.Generator().manual_seed(seed)
    preds = []
    for s in range(0, len(idx), batch_size):
        b = window_batch(windows, idx[s:s + batch_size], dev)
        preds.append(policy.sample(b, generator=gen).float().cpu().numpy())
    return np.concatenate(preds).astype(np.float64)


@torch.no_grad()
def open_loop_eval(policy, windows: Windows, n: int = 256, seed: int = 0, batch_size: int = 256) -> dict[str, float]:
    """Sample chunks for up to n evenly spaced windows and compare them with the demo (keys above)."""
    was_training = policy.training
    policy.eval()
    try:
        codec = policy.codec
        N = len(windows)
        idx = np.unique(np.linspace(0, N - 1, min(n, N)).round().astype(int))
        pred = sample_windows(policy, windows, idx, seed, batch_size)         # (n, H, W)
    finally:
        policy.train(was_training)
    pred_phys, true_phys = codec.decode(pred), windows.phys_actions[idx]      # (n, H, D)
    valid = windows.action_valid[idx]
    out: dict[str, float] = dict(physical_errors(codec, pred_phys, true_phys, valid))
    for g, v in group_nmse(codec, pred_phys, true_phys, valid).items():
        out[f"nmse/{g}"] = v
    out.update(pose_signature(codec, pred_phys, windows, idx))
    pos, rot = chunk_poses(codec, windows, idx)
    H = pred.shape[1]
    env = codec.to_env(pred.reshape(-1, pred.shape[-1]), pos.reshape(-1, 3), rot.reshape(-1, 3, 3))
    demo_env = codec.rep.to_env(true_phys.reshape(-1, true_phys.shape[-1]), pos.reshape(-1, 3), rot.reshape(-1, 3, 3))
    out["clip_fraction"] = env.clip_fraction
    out["max_excess"] = env.max_excess
    out["demo_clip_fraction"] = demo_env.clip_fraction
    step_max = float(np.abs(env.pos_step_m).max())
    out["pos_step_max_m"] = step_max
    out["pos_step_ratio"] = step_max / max(float(codec.stats.get("pos_step_m", {}).get("absmax", 0.0)), 1e-9)
    for g, gi in codec.rep.group_index.items():
        sp = pred_phys.reshape(-1, pred_phys.shape[-1])[:, gi].std(0)
        sd = true_phys.reshape(-1, true_phys.shape[-1])[:, gi].std(0)
        ok = sd > 1e-9
        out[f"std_ratio/{g}"] = float(np.mean(sp[ok] / sd[ok])) if ok.any() else float("nan")
        out[f"const/{g}"] = 0.0 if ok.any() else 1.0
    out["n_windows"] = float(len(idx))
    out["horizon"] = float(H)
    return out
