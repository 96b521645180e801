"""The plots a run keeps with its artifacts: per-group loss curves, and predicted vs demo actions.

matplotlib, torch and the policy are imported when a plot is drawn, not when a run module is imported.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .spec import GROUPS, Spec

if TYPE_CHECKING:
    from .data import PreparedData


def plot_loss_curves(history: dict, out: Path, title: str = "") -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("train/loss", "loss (model space)"), ("train/nmse", "nMSE"), ("val/nmse", "val nMSE")]
    if not any(k.startswith("train/loss/") for k in history):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, (prefix, label) in zip(axes, keys):
        for g in ("total", *GROUPS):
            pts = history.get(f"{prefix}/{g}")
            if pts:
                ax.plot([s for s, _ in pts], [max(v, 1e-12) for _, v in pts], label=g)
        ax.set_yscale("log")
        ax.set_title(f"{title}: {label}")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_predicted_vs_demo(spec: Spec, bundle: Path, out: Path, data: PreparedData,
                           max_steps: int = 300) -> Path | None:
    """First action of the sampled chunk at every step of one held-out demo, against the demo,
    per group in physical units."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .bundle import load_policy
    from .train_metrics import WindowTensors

    policy = load_policy(bundle)
    w = data.val or data.train
    first = np.nonzero(w.demo_index == w.demo_index[0])[0][:max_steps]
    wt = WindowTensors(w, torch.device("cpu"))
    with torch.no_grad():
        batch = {k: v.to(policy.device) for k, v in wt.batch(torch.as_tensor(first)).items()}
        pred = policy.sample(batch, generator=torch.Generator().manual_seed(0)).float().cpu().numpy()
    pred_phys = policy.codec.decode(pred[:, 0].astype(np.float64))
    true_phys = w.phys_actions[first, 0]
    idx = policy.codec.rep.group_index
    units = policy.codec.rep.units
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    for ax, g in zip(axes, GROUPS):
        for j, d in enumerate(idx[g]):
            line, = ax.plot(true_phys[:, d], lw=1.5, label=f"demo[{j}]")
            ax.plot(pred_phys[:, d], "--", color=line.get_color(), lw=1, label=f"pred[{j}]")
        ax.set_title(f"{spec.name}: {g} ({units[g]})")
        ax.set_xlabel("step")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
