"""The slot-semantics signature as a regression: are predicted position outputs a pose or a step?

R^2 against the absolute EEF position cannot tell a network that emits poses from one that emits
goal-directed steps: a step toward a goal, k (goal - pose), is itself linear in the pose (slope -k).
The fit of the decoded position output (metres, first chunk step) on the absolute EEF position at that
step, per axis, tells them apart:

    a pose         slope ~ 1, intercept ~ 0 m, |pred| / |pose| ~ 1
    a step         slope ~ 0 (or small and negative: -k), |pred| / |pose| ~ |step| / |pose| (~0.1 in LIBERO)
    a constant     slope ~ 0, intercept ~ the constant, R^2 ~ 0

Keys (the trainer logs them under val/openloop/, the report shows them per arm):
    pose_fit/slope            mean over the axes with spread of the least-squares slope
    pose_fit/slope_{x,y,z}    per axis (NaN for an axis whose pose does not vary)
    pose_fit/intercept_m      norm of the per-axis intercepts (metres)
    pose_fit/mag_ratio        mean |pred| / mean |pose| (Euclidean norms over the 3 axes)
    pose_fit/r2               mean over the axes of R^2 (for reference: it alone cannot tell a pose)
"""
from __future__ import annotations

import numpy as np

AXES = ("x", "y", "z")
MIN_STD_M = 1e-9   # an axis whose pose varies less than this has no slope


def pose_regression(pred_m: np.ndarray, pose_m: np.ndarray) -> dict[str, float]:
    """Per-axis least squares pred = a + b pose on (n, 3) arrays in metres -> the keys above."""
    pred, pose = np.asarray(pred_m, dtype=np.float64), np.asarray(pose_m, dtype=np.float64)
    if pred.shape != pose.shape or pred.ndim != 2 or pred.shape[1] != 3:
        raise ValueError(f"pose_regression: expected two (n, 3) arrays, got {pred.shape} and {pose.shape}")
    out: dict[str, float] = {}
    slopes, intercepts, r2 = [], [], []
    for j, ax in enumerate(AXES):
        x, y = pose[:, j], pred[:, j]
        if len(x) < 2 or x.std() < MIN_STD_M:
            out[f"pose_fit/slope_{ax}"] = float("nan")
            intercepts.append(float(y.mean()) if len(y) else float("nan"))  # the constant it emits
            continue
        b = float(np.cov(x, y, bias=True)[0, 1] / x.var())
        a = float(y.mean() - b * x.mean())
        out[f"pose_fit/slope_{ax}"] = b
        slopes.append(b)
        intercepts.append(a)
        r2.append(float(np.corrcoef(x, y)[0, 1] ** 2) if y.std() > MIN_STD_M else 0.0)
    out["pose_fit/slope"] = float(np.mean(slopes)) if slopes else float("nan")
    out["pose_fit/intercept_m"] = float(np.linalg.norm(intercepts))
    pose_norm = float(np.linalg.norm(pose, axis=1).mean()) if len(pose) else 0.0
    out["pose_fit/mag_ratio"] = float(np.linalg.norm(pred, axis=1).mean()) / pose_norm if pose_norm > 0 else float("nan")
    out["pose_fit/r2"] = float(np.mean(r2)) if r2 else float("nan")
    return out


def reads_as(fit: dict[str, float]) -> str:
    """A one-word reading of a fit: "pose" (slope within 0.25 of 1 and |pred|/|pose| within 0.5-2),
    "step" (|slope| < 0.25 and |pred|/|pose| < 0.25), else "mixed"; "?" without a fit."""
    slope, ratio = fit.get("pose_fit/slope"), fit.get("pose_fit/mag_ratio")
    if slope is None or ratio is None or slope != slope or ratio != ratio:
        return "?"
    if abs(slope - 1.0) < 0.25 and 0.5 < ratio < 2.0:
        return "pose"
    if abs(slope) < 0.25 and ratio < 0.25:
        return "step"
    return "mixed"
