"""The stages of one spec x seed run, each logging what it measured to its MLflow run.

Called in order by the one run pipeline (ablation/run.py). Metric keys:
    gate/*                   Gate A: demo replay through the spec's own codec path
    audit/*                  scale audit figures (audit/constant/{g} = 1 flags a constant group)
    train/*, val/*           from the trainer's callback (loss, nmse, phys errors per group)
    val/openloop/*           sampled chunks on held-out demos: phys errors, clip rate, pos step ratio
    eval/*                   closed-loop rollouts in the simulator
    time/*                   seconds per stage
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .gates import GateFailed, replay_gate
from .spec import GROUPS, Spec
from .tracking import Tracker


def audit_stage(tracker: Tracker, run_id: str, spec: Spec, demo: Path) -> dict[str, float]:
    from .audit import audit, format_table

    t0 = time.time()
    res = audit(spec, demo)
    m = {"audit/scale_ratio": res.scale_ratio, "audit/dilution_factor": res.dilution_factor,
         "audit/flagged": float(res.flagged), "audit/rot_spread_deg": res.rot_spread_deg}
    for g, a in res.groups.items():
        m[f"audit/loss_share/{g}"] = a.mean_loss_share
        m[f"audit/rms/{g}"] = a.rms
        m[f"audit/constant/{g}"] = float(a.constant or a.near_constant)
    m["time/audit_s"] = time.time() - t0
    tracker.log_metrics(run_id, [(k, v, 0) for k, v in m.items()])
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "audit.json").write_text(json.dumps(res.to_json(), indent=1))
        (Path(d) / "audit.txt").write_text(format_table(res))
        tracker.log_artifact(run_id, Path(d), "audit")
    return m


def train_stage(spec: Spec, demo: Path, out_dir: Path, on_metrics: Callable | None, progress: bool = True,
                data=None):
    from .train import train

    return train(spec, demo, out_dir, on_metrics=on_metrics, resume=True, progress=progress, data=data)


def open_loop_stage(tracker: Tracker, run_id: str, spec: Spec, demo: Path, result, data=None) -> dict[str, float]:
    """Log the trainer's final open-loop figures and a plot of predicted vs demo actions."""
    m = {f"val/openloop/{k}": float(v) for k, v in (result.open_loop or {}).items()
         if isinstance(v, (int, float)) and np.isfinite(v)}
    m["time/train_s"] = float(result.wall_time_s)
    m["train/samples_per_s"] = float(result.samples_per_s)
    # train.compile: whether the compiled step ran (the tag says why not), and what compiling cost here
    m["time/train_first_step_s"] = float(result.first_step_s)
    tracker.log_metrics(run_id, [(k, v, result.steps) for k, v in m.items()])
    tracker.set_tags(run_id, {"ablation.train_compiled": str(result.compiled)[:500]})
    try:
        with tempfile.TemporaryDirectory() as d:
            p = plot_predicted_vs_demo(spec, demo, Path(result.checkpoint_dir), Path(d) / "pred_vs_demo.png", data)
            if p is not None:
                tracker.log_artifact(run_id, p, "plots")
    except Exception as e:  # a plot must never fail a run; say why it is missing
        tracker.set_tags(run_id, {"ablation.plot_error": f"{type(e).__name__}: {e}"[:500]})
    return m


def gate_stage(tracker: Tracker, run_id: str, spec: Spec, demo: Path, *, episodes: int, cache_dir: Path,
               min_success: float) -> dict[str, float]:
    """Gate A: replay the demos through this spec's own encode -> decode -> env path in the simulator.
    Below `min_success` the run cannot measure anything about learning: it fails with that reason."""
    t0 = time.time()
    g = replay_gate(spec, demo, episodes=episodes, cache_dir=cache_dir)
    m = {"gate/replay_success_rate": float(g.success_rate), "gate/replay_episodes": float(g.n),
         "time/gate_s": time.time() - t0}
    tracker.log_metrics(run_id, [(k, v, 0) for k, v in m.items()])
    if g.success_rate < min_success:
        raise GateFailed(f"Gate A failed: replaying the demos through codec {spec.codec.representation}/"
                         f"{spec.codec.layout}/{spec.codec.normalizer} succeeded in {g.success_rate:.0%} of {g.n} "
                         f"episodes (< {min_success:.0%}); the action interface is broken, not the learning. "
                         f"Run `run_ablation.py doctor --data {demo}` for the details")
    return m


def log_episodes(tracker: Tracker, run_id: str, episodes: list[dict]) -> None:
    """The run's per-episode record (every look so far), replacing the previous copy."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "episodes.json").write_text(json.dumps(episodes, indent=1, default=float))
        tracker.log_artifact(run_id, Path(d) / "episodes.json", "rollouts")


def log_bundle(tracker: Tracker, run_id: str, spec: Spec, result, history: dict) -> None:
    """Spec YAML, codec statistics, the final checkpoint bundle (what a policy loads) and the loss curves."""
    bundle = Path(result.checkpoint_dir)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "spec.yaml").write_text(spec.to_yaml())
        tracker.log_artifact(run_id, Path(d) / "spec.yaml")
        p = plot_loss_curves(history, Path(d) / "loss_curves.png", title=spec.name)
        if p is not None:
            tracker.log_artifact(run_id, p, "plots")
    tracker.log_artifact(run_id, bundle / "codec.json")
    from .bundle import POLICY_FILES  # (imports torch: only in a worker that trained)

    for name in POLICY_FILES:  # the final bundle once, without the training state (train_state.pt)
        tracker.log_artifact(run_id, bundle / name, "checkpoint")


# ----------------------------------------------------------------------------- plots

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


def plot_predicted_vs_demo(spec: Spec, demo: Path, bundle: Path, out: Path, data=None,
                           max_steps: int = 300) -> Path | None:
    """First action of the sampled chunk at every step of one held-out demo, against the demo,
    per group in physical units."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .bundle import load_policy
    from .spec_data import prepare_spec_data
    from .train import WindowTensors

    policy = load_policy(bundle)
    prep = data or prepare_spec_data(spec, demo)
    w = prep.val or prep.train
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
