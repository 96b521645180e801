"""The report's figures as PNG files: effects with their intervals (forest plots), training loss against
success, and the per-group error curves (open-loop nMSE by step, one-step x0 nMSE by diffusion time).

Each function draws from the judged comparisons or the curves `recorded_plan` read, writes one PNG into
the report's folder and returns its path; `plots` returns {name: path} for those that have data.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

# Figure objects without pyplot: no window, no global backend switched for whoever imports the package.
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ..analysis import ComparisonResult
from ..locks import write_atomic
from ..spec import GROUPS

WORD_COLOURS = {"better": "tab:green", "worse": "tab:red", "no meaningful difference": "tab:gray"}
DPI = 90


@dataclass(frozen=True)
class ForestRow:
    """One line of a forest plot: an effect (fraction) with its interval."""

    label: str
    estimate: float
    lo: float
    hi: float
    color: str = "tab:blue"
    pooled: bool = False


def forest(rows: list[ForestRow], path: Path, row_height_in: float, xlabel: str, title: str) -> Path:
    """Effects in points with their intervals, top to bottom in `rows` order; saved to `path`."""
    fig = Figure(figsize=(8, row_height_in * len(rows) + 1.2))
    ax = fig.subplots()
    for i, r in enumerate(rows):
        # Bounds can cross the estimate by float round-off at 0% or 100%: never a negative error bar.
        lo, hi = min(r.lo, r.estimate), max(r.hi, r.estimate)
        ax.errorbar([100 * r.estimate], [len(rows) - 1 - i], xerr=[[100 * (r.estimate - lo)], [100 * (hi - r.estimate)]],
                    fmt="D" if r.pooled else "o", color=r.color, capsize=3, ms=7 if r.pooled else 5)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), [r.label for r in reversed(rows)], fontsize=8 if row_height_in > 0.4 else 7)
    ax.set_xlabel(xlabel)
    ax.set_xlim(-105, 105)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def group_panels(lines: dict[str, dict[str, tuple[list, list]]], title: str, xlabel: str, path: Path) -> Path:
    """One log-scale panel per action group, one line per arm ({arm: {group: (xs, ys)}}), and a dashed
    line at 1: the error of always predicting the mean."""
    fig = Figure(figsize=(15, 3.8))
    axes = fig.subplots(1, 3)
    for ax, g in zip(axes, GROUPS):
        for arm, by_group in lines.items():
            xs, ys = by_group.get(g, ([], []))
            if xs:
                ax.plot(xs, ys, marker=".", label=arm)
        ax.set_yscale("log")
        ax.axhline(1.0, color="k", lw=0.6, ls="--")
        ax.set_title(f"{title}, {g}")
        ax.set_xlabel(xlabel)
    axes[0].legend(fontsize=6)
    return _save(fig, path)


def loss_vs_success(points: list[tuple[str, float, float]], path: Path) -> Path:
    """(arm, final training loss, success fraction) per trained network, coloured by arm."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for arm in dict.fromkeys(p[0] for p in points):
        ax.scatter([p[1] for p in points if p[0] == arm], [100 * p[2] for p in points if p[0] == arm], label=arm, s=30)
    ax.set_xscale("log")
    # Minor-tick labels of a log axis spanning one or two decades collide ("3x10^-4" over "4x10^-4").
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("final training loss (as the user reads it; units differ between arms)")
    ax.set_ylabel("closed-loop success (%)")
    ax.set_ylim(-5, 105)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Training loss against success, one point per arm x seed")
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format=path.suffix.lstrip(".") or "png")
    write_atomic(path, buf.getvalue())  # renamed into place, as the report's text files
    return path


def effect_plots(comparisons: list[ComparisonResult], out_dir: Path) -> dict[str, Path]:
    """"forest": every comparison's effect at its decision interval; "per_task_forest": each task's
    effect and the pooled one (a diamond), for comparisons run on several tasks."""
    paths: dict[str, Path] = {}
    comps = [c for c in comparisons if c.estimate is not None]
    if comps:
        rows = [ForestRow(f"{c.arm} vs {c.control}", c.estimate, c.lo, c.hi, WORD_COLOURS.get(c.word, "tab:blue"))
                for c in comps]
        paths["forest"] = forest(rows, out_dir / "forest.png", 0.45,
                                 "effect on success (points), decision interval (each at the level its verdict used)",
                                 "Effect against the control (green better, red worse, grey no difference)")
    multi = [c for c in comps if c.n_tasks > 1 and c.per_task]
    if multi:
        rows = []
        for c in multi:
            rows += [ForestRow(f"  {t['task']}", t["estimate"], t["lo"], t["hi"]) for t in c.per_task]
            rows.append(ForestRow(f"{c.arm} vs {c.control} (pooled)", c.estimate, c.lo95, c.hi95, "k", pooled=True))
        paths["per_task_forest"] = forest(rows, out_dir / "per_task_forest.png", 0.3,
                                          "effect on success (points), 95% interval",
                                          "Per-task effects (dots) and the pooled effect, tasks a random factor (diamonds)")
    return paths


def curve_plots(curves: dict, out_dir: Path) -> dict[str, Path]:
    """"scatter": final loss against success per trained network; "openloop": open-loop nMSE by
    training step; "x0_by_t": one-step x0 nMSE by diffusion-time bin. Each only when it has data."""
    paths: dict[str, Path] = {}
    pts = [(arm, loss, rate) for arm, c in curves.items() for _s, loss, rate in c.get("_scatter", [])
           if loss is not None and rate is not None and rate == rate]
    if pts:
        paths["scatter"] = loss_vs_success(pts, out_dir / "loss_vs_success.png")
    if any(c.get(g) for c in curves.values() for g in GROUPS):
        lines = {arm: {g: ([st for st, _ in c[g]], [max(v, 1e-6) for _, v in c[g]]) for g in GROUPS if c.get(g)}
                 for arm, c in curves.items()}
        paths["openloop"] = group_panels(lines, "open-loop nMSE (sampled actions)", "training step",
                                         out_dir / "openloop_nmse.png")
    if any(c.get("_x0_by_t") for c in curves.values()):
        lines = {}
        for arm, c in curves.items():
            for g, ys in (c.get("_x0_by_t") or {}).items():
                if any(y is not None for y in ys):
                    lines.setdefault(arm, {})[g] = (list(range(len(ys))), [max(y, 1e-6) if y is not None
                                                                           else float("nan") for y in ys])
        paths["x0_by_t"] = group_panels(lines, "one-step x0 nMSE by diffusion time",
                                        "diffusion-time bin (0: least noise)", out_dir / "x0_by_t.png")
    return paths
