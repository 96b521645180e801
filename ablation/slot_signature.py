"""The slot-semantics signature in the report: per arm, are the predicted slot 30-32 values a pose or a step?

Reads each finished run's open-loop regression (`val/openloop/pose_fit/*`, ablation.pose_fit) and
averages it over the arm's runs; the lines go into the verdict section of every hypothesis that needs
pretrained slots (H3), so the signature sits beside the verdict it explains. Arms of the plan that
belong to no hypothesis (e.g. H3's no-pretraining reference) are shown with it too.
"""
from __future__ import annotations

import math

from .pose_fit import reads_as

PREFIX = "val/openloop/"
KEYS = ("pose_fit/slope", "pose_fit/intercept_m", "pose_fit/mag_ratio", "pose_fit/r2", "r2/pos_vs_delta")
NEED = "pretrained_slots"


def arm_signatures(tracker, record: dict) -> dict[str, dict[str, float]]:
    """{arm: {key: mean over its finished runs}} for the keys above (absent keys are left out)."""
    out: dict[str, dict[str, float]] = {}
    for arm, runs in (record.get("runs") or {}).items():
        vals: dict[str, list[float]] = {}
        for rid in runs.values():
            try:
                run = tracker.client.get_run(rid)
            except Exception:
                continue
            if run.info.status != "FINISHED":
                continue
            for k in KEYS:
                v = run.data.metrics.get(PREFIX + k)
                if v is not None and math.isfinite(float(v)):
                    vals.setdefault(k, []).append(float(v))
        if vals:
            out[arm] = {k: sum(v) / len(v) for k, v in vals.items()} | {"n_runs": float(max(map(len, vals.values())))}
    return out


def signature_line(arm: str, sig: dict[str, float]) -> str:
    def f(k: str, fmt: str) -> str:
        return fmt.format(sig[k]) if k in sig else "-"

    return (f"signature of {arm} (predicted slot 30-32 values regressed on the absolute EEF position, mean of "
            f"{sig.get('n_runs', 0):.0f} run(s)): slope {f('pose_fit/slope', '{:+.2f}')}, intercept "
            f"{f('pose_fit/intercept_m', '{:.3f}')} m, |pred|/|pose| {f('pose_fit/mag_ratio', '{:.2f}')}, "
            f"R^2 vs pose {f('pose_fit/r2', '{:.2f}')}, R^2 vs demo step {f('r2/pos_vs_delta', '{:.2f}')} "
            f"-> reads as a {reads_as(sig)} (a pose: slope ~1, intercept ~0, ratio ~1)")


def add_signature_lines(tracker, record: dict, hypotheses, verdicts) -> None:
    """Append the signature of each arm to the verdict lines of every hypothesis that needs pretrained slots."""
    wanted = [h for h in hypotheses if NEED in h.needs]
    if not wanted:
        return
    sigs = arm_signatures(tracker, record)
    claimed = {a for h in hypotheses for a in h.arms()}
    others = [a for a in record.get("arms", {}) if a not in claimed]
    by_name = {v.name: v for v in verdicts}
    for h in wanted:
        v = by_name.get(h.name)
        if v is None:
            continue
        for arm in [*h.arms(), *others]:
            if arm in sigs:
                v.lines.append(signature_line(arm, sigs[arm]))
