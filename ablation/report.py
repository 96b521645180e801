"""The comparison report: one row per fix, plots, confounds and a verdict per hypothesis.

Read entirely from MLflow, so it can be rebuilt at any time from recorded runs. Verdicts are computed
from the numbers with fixed rules (below); no wording is decided in advance of the data.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .rollout import wilson_interval as wilson
from .spec import GROUPS
from .tracking import TAG_KIND, TAG_SEED, TAG_SPEC_HASH, Tracker

FEW_EPISODES = 20  # below this many closed-loop episodes per fix, rankings are noise (+-20 points)
BASELINE = "baseline_rdt"
HYPOTHESES = {
    "position/orientation scale": ["fix_pos_cm", "fix_minmax", "fix_meanstd", "fix_quantile", "fix_loss_weight"],
    "loss dilution over 128 slots": ["fix_masked_loss"],
    "slot semantics": ["fix_velocity_slots"],
    # native_delta changes units, layout and loss width at once: reported apart, not as evidence
    # for one hypothesis.
    "LIBERO's native [-1, 1] actions (peers' standard)": ["native_delta"],
}


@dataclass
class Row:
    spec: str
    seeds: list[int]
    episodes: int
    success_mean: float | None
    success_ci: tuple[float, float] | None
    nmse: dict[str, float | None]
    train_loss: float | None
    clip_rate: float | None
    pos_out_of_range: float | None
    open_loop_clip_rate: float | None
    constant_groups: list[str]
    run_ids: list[str]
    missing_seeds: list[int] = field(default_factory=list)


@dataclass
class Report:
    rows: list[Row]
    confounds: list[str]
    verdicts: dict[str, str]
    curves: dict[str, dict[str, list[tuple[int, float]]]]

    def table_markdown(self) -> str:
        head = ("| fix | success (mean, 95% CI) | episodes | nMSE pos | nMSE rot | nMSE grip | final train loss "
                "| clip rate | pos out-of-range (x train range) |")
        lines = [head, "|" + "---|" * 9]
        for r in self.rows:
            if r.success_mean is None:
                lines.append(f"| {r.spec} | no finished run | | | | | | | |")
                continue
            lo, hi = r.success_ci
            lines.append(
                f"| {r.spec} | {100 * r.success_mean:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] | {r.episodes} | "
                + " | ".join(_fmt(r.nmse.get(g)) for g in GROUPS)
                + f" | {_fmt(r.train_loss)} | {_fmt(r.clip_rate)} | {_fmt(r.pos_out_of_range)} |")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"rows": [asdict(r) for r in self.rows], "confounds": self.confounds, "verdicts": self.verdicts}


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}"


def _last(run, key: str) -> float | None:
    v = run.data.metrics.get(key)
    return float(v) if v is not None else None


def collect_rows(tracker: Tracker, entries: list[tuple[str, str, int]]) -> tuple[list[Row], dict]:
    """entries: (spec name, spec hash, seed). Uses the FINISHED run of each exact resolved spec."""
    by_spec: dict[str, list[tuple[str, int]]] = {}
    for name, h, seed in entries:
        by_spec.setdefault(name, []).append((h, seed))
    rows, curves = [], {}
    for name, items in by_spec.items():
        runs, missing = [], []
        for h, seed in items:
            found = tracker.find_runs(f"tags.`{TAG_SPEC_HASH}` = '{h}' and tags.`{TAG_SEED}` = '{seed}' "
                                      f"and tags.`{TAG_KIND}` = 'spec_run' and attributes.status = 'FINISHED'")
            (runs.append(found[0]) if found else missing.append(seed))
        succ = sum(int(_last(r, "eval/successes") or 0) for r in runs)
        eps = sum(int(_last(r, "eval/episodes") or 0) for r in runs)
        rates = [_last(r, "eval/success_rate") for r in runs if _last(r, "eval/success_rate") is not None]

        def mean_of(key: str) -> float | None:
            vals = [_last(r, key) for r in runs if _last(r, key) is not None]
            return sum(vals) / len(vals) if vals else None

        nmse = {g: mean_of(f"val/nmse/{g}") if mean_of(f"val/nmse/{g}") is not None else mean_of(f"train/nmse/{g}")
                for g in GROUPS}
        const = sorted({g for r in runs for g in GROUPS if (_last(r, f"audit/constant/{g}") or 0) > 0})
        rows.append(Row(
            spec=name, seeds=[s for _, s in items if s not in missing], episodes=eps,
            success_mean=sum(rates) / len(rates) if rates else None,
            success_ci=wilson(succ, eps) if eps else None, nmse=nmse, train_loss=mean_of("train/loss/total"),
            clip_rate=mean_of("eval/clip_rate"), pos_out_of_range=mean_of("eval/pos_out_of_range"),
            open_loop_clip_rate=mean_of("val/openloop/clip_rate"), constant_groups=const,
            run_ids=[r.info.run_id for r in runs], missing_seeds=missing))
        if runs:
            client = tracker.client
            curves[name] = {}
            for g in ("total", *GROUPS):
                hist = client.get_metric_history(runs[0].info.run_id, f"train/loss/{g}")
                curves[name][g] = sorted((m.step, m.value) for m in hist)
            for key, label in (("val/nmse/pos", "val_nmse_pos"), ("train/nmse/pos", "train_nmse_pos")):
                hist = client.get_metric_history(runs[0].info.run_id, key)
                curves[name][label] = sorted((m.step, m.value) for m in hist)
    return rows, curves


def confounds_of(rows: list[Row]) -> list[str]:
    out = []
    done = [r for r in rows if r.success_mean is not None]
    for r in done:
        if r.constant_groups:
            out.append(f"{r.spec}: group(s) {', '.join(r.constant_groups)} are constant or nearly constant in "
                       "the demos; their nMSE and differences on them say nothing about the representation.")
        if r.episodes < FEW_EPISODES:
            out.append(f"{r.spec}: only {r.episodes} closed-loop episodes; a 95% interval is about "
                       f"+-{50 * 1.96 / math.sqrt(max(r.episodes, 1)):.0f} points wide.")
        if r.missing_seeds:
            out.append(f"{r.spec}: no finished run for seed(s) {r.missing_seeds}.")
    if len(done) >= 2:
        ranked = sorted(done, key=lambda r: r.success_mean, reverse=True)
        a, b = ranked[0], ranked[1]
        if a.success_ci[0] <= b.success_ci[1]:
            out.append(f"intervals too wide to separate the top two: {a.spec} [{100 * a.success_ci[0]:.0f}, "
                       f"{100 * a.success_ci[1]:.0f}] vs {b.spec} [{100 * b.success_ci[0]:.0f}, "
                       f"{100 * b.success_ci[1]:.0f}].")
    missing = [r.spec for r in rows if r.success_mean is None]
    if missing:
        out.append(f"no finished run for: {', '.join(missing)}.")
    return out


def _compare(base: Row, fix: Row) -> str:
    """One sentence from the numbers: interval separation decides, nMSE gives the direction."""
    b_lo, b_hi = base.success_ci
    f_lo, f_hi = fix.success_ci
    if f_lo > b_hi:
        outcome = "beats the baseline (intervals separate)"
    elif f_hi < b_lo:
        outcome = "is worse than the baseline (intervals separate)"
    else:
        outcome = "is not separable from the baseline (intervals overlap)"
    s = (f"{fix.spec} {100 * fix.success_mean:.0f}% [{100 * f_lo:.0f}, {100 * f_hi:.0f}] {outcome}")
    bp, fp = base.nmse.get("pos"), fix.nmse.get("pos")
    if bp is not None and fp is not None and fp > 0:
        change = f"{bp / fp:.2g}x lower" if bp / fp >= 1.2 else "not lower" if fp >= bp else "about the same"
        s += f"; position nMSE {bp:.3g} -> {fp:.3g} ({change})"
    return s


def verdicts_of(rows: list[Row], curves: dict) -> dict[str, str]:
    by = {r.spec: r for r in rows if r.success_mean is not None}
    out: dict[str, str] = {}
    base = by.get(BASELINE)
    if base is None:
        return {h: f"no finished {BASELINE} run to compare against" for h in (*HYPOTHESES, "training length")}
    head = f"baseline {100 * base.success_mean:.0f}% [{100 * base.success_ci[0]:.0f}, {100 * base.success_ci[1]:.0f}]"
    for hyp, fixes in HYPOTHESES.items():
        parts = [_compare(base, by[f]) for f in fixes if f in by]
        if not parts:
            out[hyp] = "not tested in this plan"
            continue
        wins = sum("beats the baseline" in p for p in parts)
        losses = sum("worse than the baseline" in p for p in parts)
        if wins:
            tag = "SUPPORTED"
        elif losses == len(parts):
            tag = "CONTRADICTED"
        elif all(by[f].success_mean <= base.success_mean for f in fixes if f in by) and base.episodes >= FEW_EPISODES:
            tag = "NOT SUPPORTED"
        else:
            tag = "INCONCLUSIVE"
        out[hyp] = f"{tag}: {head}; " + "; ".join(parts) + "."
    # Training length: is the baseline's validation position error still falling at the end?
    curve = curves.get(BASELINE, {}).get("val_nmse_pos") or []
    if len(curve) < 3:
        curve = curves.get(BASELINE, {}).get("train_nmse_pos") or []
    if len(curve) >= 3:
        mid = curve[len(curve) // 2][1]
        end = curve[-1][1]
        drop = (mid - end) / mid if mid > 0 else 0.0
        state = "still falling" if drop > 0.2 else "flat"
        out["training length"] = (
            f"{'PLAUSIBLE' if drop > 0.2 else 'NOT SUPPORTED'}: the baseline's position error went "
            f"{mid:.3g} -> {end:.3g} over the second half of training ({100 * drop:.0f}% lower, {state}); "
            + ("a longer run may still help." if drop > 0.2 else "more steps alone are unlikely to fix it."))
    else:
        out["training length"] = "INCONCLUSIVE: too few logged points of the baseline's loss curve"
    return out


def write_plots(report: Report, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    rows = [r for r in report.rows if r.success_mean is not None]
    if rows:
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
        xs = range(len(rows))
        means = [100 * r.success_mean for r in rows]
        err = [[m - 100 * r.success_ci[0] for m, r in zip(means, rows)],
               [100 * r.success_ci[1] - m for m, r in zip(means, rows)]]
        ax.bar(xs, means, yerr=err, capsize=4, color="tab:blue")
        ax.set_xticks(list(xs), [r.spec for r in rows], rotation=30, ha="right")
        ax.set_ylabel("closed-loop success (%)")
        ax.set_ylim(0, 100)
        ax.set_title("Success by fix (95% Wilson interval)")
        fig.tight_layout()
        p = out_dir / "success_by_fix.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    if report.curves:
        fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
        for ax, g in zip(axes, ("total", *GROUPS)):
            for name, c in report.curves.items():
                pts = c.get(g) or []
                if pts:
                    ax.plot([s for s, _ in pts], [max(v, 1e-12) for _, v in pts], label=name)
            ax.set_yscale("log")
            ax.set_title(f"train loss: {g}")
            ax.set_xlabel("step")
        axes[0].legend(fontsize=6)
        fig.tight_layout()
        p = out_dir / "loss_curves.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths


def build_report(tracker: Tracker, *, entries: list[tuple[str, str, int]], out_dir: Path,
                 title: str = "Action-representation ablation") -> Report:
    rows, curves = collect_rows(tracker, entries)
    report = Report(rows, confounds_of(rows), verdicts_of(rows, curves), curves)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_plots(report, out_dir)
    md = [f"# {title}", "", report.table_markdown(), "",
          "nMSE = the group's validation MSE divided by that group's variance in the data (1.0 = no better "
          "than predicting the mean). Pos out-of-range = largest predicted position step / largest step in "
          "the training data.", "", "## Confounds", ""]
    md += [f"- {c}" for c in report.confounds] or ["- none detected"]
    md += ["", "## Verdicts", ""]
    md += [f"- **{h}**: {v}" for h, v in report.verdicts.items()]
    md += ["", "![success](success_by_fix.png)", "", "![loss curves](loss_curves.png)", ""]
    (out_dir / "report.md").write_text("\n".join(md))
    (out_dir / "report.json").write_text(json.dumps(report.to_json(), indent=1))
    return report
