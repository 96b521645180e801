"""The plan's report: the answer first, then the evidence, then the caveats.

Everything is read from MLflow: the plan's parent run holds `plan.json` (its hypotheses, arms, the
run of each arm x seed, and the record of every look); each run holds its metrics and its per-episode
record (`rollouts/episodes.json`). No spec or hypothesis name appears in this code: a user adds a
hypothesis by writing a YAML file. Statistics come from ablation/stats via ablation/analysis.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .analysis import ArmFacts, ComparisonResult, judge, mark_left_out, with_demo_spread
from .hypothesis import Hypothesis
from .calibration import calibration_for
from .plan_record import PLAN_RECORD
from .rules import DEFAULT_RULES, DecisionRules
from .slot_signature import add_signature_lines
from .verdicts import (HypothesisVerdict, baseline_check, correlation_of, hypothesis_verdict,
                       pts as _pts, recommendation, rho_text as _rho)
from .spec import GROUPS
from .tracking import TAG_KIND, Tracker

OPEN_LOOP_KEYS = {g: f"val/openloop/nmse/{g}" for g in GROUPS}
X0_BY_T_PREFIX = "val/x0_by_t/"


class ReportError(Exception):
    """The report cannot be built (no plan record, no runs): a one-line reason."""


@dataclass
class ArmRow:
    arm: str
    description: str
    seeds: list[int]
    finished_seeds: list[int]
    failed: dict                            # seed (or "seed S task T" with several tasks) -> reason
    episodes: int
    successes: int
    crashed: int
    per_seed_rate: dict[int, float]
    final_train_loss: float | None          # mean over seeds, as the user reads it (train/loss/total)
    openloop_nmse: dict[str, float | None]  # sampled actions, held-out demos
    clip_rate: float | None
    pos_out_of_range: float | None
    r2_abs: float | None
    r2_delta: float | None
    rot_spread_deg: float | None
    per_task_rate: dict[str, float] = field(default_factory=dict)  # task label -> success over its runs
    train_steps: int | None = None          # the spec's optimiser steps (plan record; None in older records)

    @property
    def rate(self) -> float | None:
        return self.successes / self.episodes if self.episodes else None


@dataclass
class Report:
    plan: str
    answer: str
    baseline: str | None
    baseline_reproduced: bool | None
    baseline_note: str
    arms: list[ArmRow]
    comparisons: list[ComparisonResult]
    verdicts: list[HypothesisVerdict]
    caveats: list[str]
    method: str
    versions: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"plan": self.plan, "answer": self.answer, "baseline": self.baseline,
                "baseline_reproduced": self.baseline_reproduced, "baseline_note": self.baseline_note,
                "arms": [asdict(a) for a in self.arms], "comparisons": [asdict(c) for c in self.comparisons],
                "verdicts": [asdict(v) for v in self.verdicts], "caveats": self.caveats, "method": self.method,
                "versions": self.versions, "timing": self.timing}


# ----------------------------------------------------------------------------- reading MLflow

def find_plan_run(tracker: Tracker, plan: str | None = None, parent_run_id: str | None = None):
    if parent_run_id:
        return tracker.client.get_run(parent_run_id)
    q = f"tags.`{TAG_KIND}` = 'plan'" + (f" and tags.`ablation.plan` = '{plan}'" if plan else "")
    runs = tracker.find_runs(q)
    if not runs:
        raise ReportError(f"no plan run{f' of plan {plan!r}' if plan else ''} in {tracker.tracking_uri}; "
                          "run `run_ablation.py --plan NAME` first")
    return runs[0]


def _download_json(tracker: Tracker, run_id: str, path: str):
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file floods the log
    with tempfile.TemporaryDirectory() as d:
        try:
            local = tracker.client.download_artifacts(run_id, path, d)
        except Exception:
            return None
        try:
            return json.loads(Path(local).read_text())
        except ValueError as e:  # never take a cut-short record for a whole one
            raise ReportError(f"artifact {path} of run {run_id} is not whole JSON ({e}): it was cut short, e.g. "
                              "by a full disk; free space and re-run the plan to write it again") from None


def _last(run, key: str) -> float | None:
    v = run.data.metrics.get(key) if run is not None else None
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _mean(vals) -> float | None:
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _run_key(key: str, info: dict) -> tuple[int, str]:
    """plan.json's key of a run under its arm ("0", or "0/task3" in a multi-task plan) -> (seed, task
    label); the label is the statistics' pairing key with the init state."""
    seed, _, task = key.partition("/task")
    return int(seed), f"{info.get('suite')}/{task or info.get('task')}"


def collect(tracker: Tracker, record: dict) -> tuple[list[ArmRow], list[dict], dict]:
    """Arm rows, per-episode stats records and per-run curves from the plan record's runs (one run per
    arm x seed, or per arm x seed x task)."""
    rows, records, curves = [], [], {}
    for arm, info in record["arms"].items():
        runs = {}
        for key, rid in (record.get("runs", {}).get(arm) or {}).items():
            try:
                runs[_run_key(key, info)] = tracker.client.get_run(rid)
            except Exception:
                continue
        multitask = len({t for _s, t in runs}) > 1 or info.get("tasks") is not None
        finished = {k: r for k, r in runs.items() if r.info.status == "FINISHED"}
        failed = {(f"{s} {t}" if multitask else s): (r.data.tags.get("ablation.failure_reason") or r.info.status
                                                     ).splitlines()[0]
                  for (s, t), r in runs.items() if r.info.status != "FINISHED"}
        eps_n = succ = crashed = 0
        by_seed: dict[int, list[int]] = {}   # seed -> [successes, episodes] over its tasks
        by_task: dict[str, list[int]] = {}
        rate_of: dict[tuple[int, str], float] = {}
        for (s, task), r in finished.items():
            eps = _download_json(tracker, r.info.run_id, "rollouts/episodes.json") or []
            k = sum(bool(e.get("success")) and not e.get("error") for e in eps)
            eps_n, succ = eps_n + len(eps), succ + k
            crashed += sum(bool(e.get("error")) for e in eps)
            for d, x in ((by_seed, s), (by_task, task)):
                d.setdefault(x, [0, 0])
                d[x][0] += k
                d[x][1] += len(eps)
            rate_of[(s, task)] = k / len(eps) if eps else float("nan")
            records += [{"arm": arm, "task": task, "seed": s, "init_state": int(e.get("init_state", e.get("episode"))),
                         "success": bool(e.get("success")) and not e.get("error")} for e in eps]
        per_seed = {s: (k / n if n else float("nan")) for s, (k, n) in sorted(by_seed.items())}
        fr = list(finished.values())
        rows.append(ArmRow(
            arm=arm, description=info.get("description", ""), seeds=list(info.get("seeds", [])),
            finished_seeds=sorted(by_seed), failed=failed, episodes=eps_n, successes=succ, crashed=crashed,
            per_seed_rate=per_seed, final_train_loss=_mean(_last(r, "train/loss/total") for r in fr),
            openloop_nmse={g: _mean(_last(r, k) for r in fr) for g, k in OPEN_LOOP_KEYS.items()},
            clip_rate=_mean(_last(r, "eval/clip_rate") for r in fr),
            pos_out_of_range=_mean(_last(r, "eval/pos_out_of_range") for r in fr),
            r2_abs=_mean(_last(r, "val/openloop/r2/pos_vs_abs_pose") for r in fr),
            r2_delta=_mean(_last(r, "val/openloop/r2/pos_vs_delta") for r in fr),
            rot_spread_deg=_mean(_last(r, "audit/rot_spread_deg") for r in fr),
            per_task_rate={t: (k / n if n else float("nan")) for t, (k, n) in sorted(by_task.items())}
            if multitask else {}, train_steps=info.get("train_steps")))
        if fr:
            curves[arm] = {}
            for g, key in OPEN_LOOP_KEYS.items():
                pts: dict[int, list[float]] = {}
                for r in fr:
                    for m in tracker.client.get_metric_history(r.info.run_id, key):
                        pts.setdefault(m.step, []).append(m.value)
                curves[arm][g] = sorted((s, sum(v) / len(v)) for s, v in pts.items())
            # one point per trained network (arm x seed, or arm x seed x task)
            curves[arm]["_scatter"] = [(s, _last(r, "train/loss/total"), rate_of.get((s, t)))
                                       for (s, t), r in finished.items()]
            # one-step x0 nMSE per diffusion-time bin at the end of training (ablation.train.x0_error_by_t)
            bins = sorted({int(k.rsplit("bin", 1)[1]) for r in fr for k in r.data.metrics
                           if k.startswith(X0_BY_T_PREFIX)})
            curves[arm]["_x0_by_t"] = {g: [_mean(_last(r, f"{X0_BY_T_PREFIX}{g}/bin{k}") for r in fr) for k in bins]
                                       for g in GROUPS} if bins else {}
    return rows, records, curves


# ----------------------------------------------------------------------------- judging

def _baseline(record: dict, hyps: list[Hypothesis]) -> str | None:
    """The plan's common control: the arm most comparisons are made against."""
    counts: dict[str, int] = {}
    for h in hyps:
        for c in h.comparisons:
            counts[c.control] = counts.get(c.control, 0) + 1
    return max(counts, key=counts.get) if counts else None


def _carried(v: HypothesisVerdict, comps: list[ComparisonResult]) -> str:
    """A supported hypothesis in the answer, by the comparisons that carried it. Not its claim: a claim
    ('a normaliser or the x100 weight fixes it') can name arms this plan left out or that did not decide."""
    held = [f"{c.arm} vs {c.control} {c.word}, {_pts(c.estimate)} pts"
            for c in comps if c.hypothesis == v.name and c.matches_expectation]
    corr = v.correlation
    if corr and corr.get("rho") is not None:
        held.insert(0, f"rank correlation {_rho(corr)} over {corr['n']} runs")
    meaning = v.meaning if v.meaning.endswith((".", ")")) else v.meaning + "."
    return f"{v.name} ({'; '.join(held) or 'see below'}): {meaning}"


def write_answer(rows: list[ArmRow], comps: list[ComparisonResult], verdicts: list[HypothesisVerdict],
                 baseline: str | None, reproduced: bool | None, hyps: list[Hypothesis]) -> str:
    """One paragraph: why the baseline fails and which fix to use, with the numbers."""
    by = {r.arm: r for r in rows}
    out = []
    b = by.get(baseline) if baseline else None
    if b is not None and b.rate is not None:
        out.append(f"The baseline ({baseline}) succeeded in {100 * b.rate:.0f}% of {b.episodes} episodes"
                   + (f" with a final training loss of {b.final_train_loss:.2g}" if b.final_train_loss else "")
                   + ("; it reproduces the seed's failure (no success, the worst open-loop position error)." if reproduced else
                      "; it does NOT reproduce the seed's failure signature, so read every verdict with care."))
    supported = [v for v in verdicts if v.word == "SUPPORTED"]
    if supported:
        out.append("Supported: " + " ".join(_carried(v, comps) for v in supported))
    seed = [v for v, h in zip(verdicts, hyps) if getattr(h, "seed_claim", False) and
            v.word in ("NOT SUPPORTED", "CONTRADICTED")]
    for v in seed:
        verb = "contradict" if v.word == "CONTRADICTED" else "do not support"
        out.append(f"The data {verb} the seed's hypothesis that {v.claim[0].lower() + v.claim[1:].rstrip('.')} "
                   f"({v.name}: {v.word.lower()}).")
    rec = recommendation(comps, baseline)
    best = rec["use"]
    if best is not None:
        tasks = f", pooled over {best.n_tasks} tasks as a random factor" if best.n_tasks > 1 else ""
        others = [c.arm for c in rec["wins"] if c is not best]
        out.append(f"Use {best.arm}: {100 * (best.rate_arm or 0):.0f}% against {100 * (best.rate_control or 0):.0f}%, "
                   f"{_pts(best.estimate)} points [{_pts(best.lo)}, {_pts(best.hi)}] ({_level(best)} decision interval "
                   f"over seeds{tasks}, adjusted p {best.p_holm:.2g})"
                   + (f"; it beat {', '.join(others)} in direct comparisons." if others else "."))
        if best.tasks_disagree:
            out.append(f"But the tasks disagree about {best.arm} ({best.heterogeneity}): see the per-task effects.")
    elif rec["wins"]:
        names = [c.arm for c in rec["wins"]]
        figs = "; ".join(f"{c.arm} {_pts(c.estimate)} pts [{_pts(c.lo)}, {_pts(c.hi)}]" for c in rec["wins"])
        between = "; ".join(f"{c.arm} vs {c.control}: {c.word}" for c in rec["between"])
        out.append(f"{' and '.join([', '.join(names[:-1]), names[-1]])} all beat the baseline ({figs}); "
                   + (f"compared directly: {between}, so none is shown better than the others." if between else
                      "they were not compared with each other, so the data do not say which is better."))
    else:
        pending = [c for c in comps if c.control == baseline and c.word == "inconclusive"]
        out.append("No fix is shown better than the baseline yet" +
                   (f" (inconclusive: {pending[0].why})." if pending else "."))
    open_ = [v.name for v in verdicts if v.word in ("INCONCLUSIVE", "UNTESTABLE HERE")]
    if open_:
        out.append(f"Still open: {', '.join(open_)} (see below for what each would need).")
    return " ".join(out) if out else "No finished runs: nothing can be concluded yet."


def caveats_of(rows: list[ArmRow], comps: list[ComparisonResult], record: dict, reproduced: bool | None,
               baseline_note: str, demos: dict, rules: DecisionRules = DEFAULT_RULES) -> list[str]:
    """Confounds collapsed: one line per confound, naming the arms it touches."""
    out = []
    if reproduced is False:
        out.append(f"Baseline: {baseline_note}.")
    crashed = [f"{r.arm} ({r.crashed})" for r in rows if r.crashed]
    if crashed:
        out.append(f"Crashed episodes (counted as failures): {', '.join(crashed)}.")
    failed = [f"{r.arm} seed {s}: {why}" for r in rows for s, why in r.failed.items()]
    if failed:
        out.append(f"Runs that did not finish (left out): {'; '.join(failed)}.")
    few = [r.arm for r in rows if r.finished_seeds and len(r.finished_seeds) < 3]
    if few:
        out.append(f"Fewer than 3 finished seeds, so seed-to-seed variation is barely estimated: {', '.join(few)}.")
    const = [r.arm for r in rows if r.rot_spread_deg is not None and r.rot_spread_deg < rules.rot_spread_min_deg]
    if const:
        out.append(f"The demos barely turn (rotation spread < {rules.rot_spread_min_deg:g} deg): rotation errors cannot rank "
                   f"{', '.join(const)}; rotation-scale comparisons are untestable on this task.")
    starts = sorted({str(v.get('starts', 'unknown')) for v in demos.values()})
    if starts:
        out.append(f"Training demos started from: {', '.join(starts)}; closed-loop episodes start from the "
                   "benchmark's fixed init states (episode i from init state i, the same for every arm).")
    for arm, why in (record.get("skipped_arms") or {}).items():
        out.append(f"{arm} left out of this plan: {why}.")
    for c in comps:
        if c.tasks_disagree:
            out.append(f"{c.arm} vs {c.control}: {c.heterogeneity}; the pooled effect averages tasks that differ "
                       "(see the per-task effects).")
    und = [f"{c.arm} vs {c.control}" for c in comps if c.word == "inconclusive"]
    if und:
        out.append(f"Inconclusive after the last look: {', '.join(und)}.")
    return out


# ----------------------------------------------------------------------------- plots

@dataclass(frozen=True)
class ForestRow:
    """One line of a forest plot: an effect (fraction) with its interval."""

    label: str
    estimate: float
    lo: float
    hi: float
    color: str = "tab:blue"
    pooled: bool = False


def _forest(plt, rows: list[ForestRow], path: Path, row_height_in: float, xlabel: str, title: str) -> Path:
    """Effects in points with their intervals, top to bottom in `rows` order; saved to `path`."""
    fig, ax = plt.subplots(figsize=(8, row_height_in * len(rows) + 1.2))
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
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _group_panels(plt, lines: dict[str, dict[str, tuple[list, list]]], title: str, xlabel: str, path: Path) -> Path:
    """One log-scale panel per action group, one line per arm ({arm: {group: (xs, ys)}}), and a dashed
    line at 1: the error of always predicting the mean."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
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
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plots(rep: Report, curves: dict, out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, Path] = {}
    comps = [c for c in rep.comparisons if c.estimate is not None]
    colors = {"better": "tab:green", "worse": "tab:red", "no meaningful difference": "tab:gray"}
    if comps:
        rows = [ForestRow(f"{c.arm} vs {c.control}", c.estimate, c.lo, c.hi, colors.get(c.word, "tab:blue"))
                for c in comps]
        paths["forest"] = _forest(plt, rows, out_dir / "forest.png", 0.45,
                                  "effect on success (points), decision interval (each at the level its verdict used)",
                                  "Effect against the control (green better, red worse, grey no difference)")
    multi = [c for c in comps if c.n_tasks > 1 and c.per_task]
    if multi:  # per-task forest: each task's effect, then the pooled one (a diamond), per comparison
        rows = []
        for c in multi:
            rows += [ForestRow(f"  {t['task']}", t["estimate"], t["lo"], t["hi"]) for t in c.per_task]
            rows.append(ForestRow(f"{c.arm} vs {c.control} (pooled)", c.estimate, c.lo95, c.hi95, "k", pooled=True))
        paths["per_task_forest"] = _forest(plt, rows, out_dir / "per_task_forest.png", 0.3,
                                           "effect on success (points), 95% interval",
                                           "Per-task effects (dots) and the pooled effect, tasks a random factor (diamonds)")
    pts = [(arm, loss, rate) for arm, c in curves.items() for _s, loss, rate in c.get("_scatter", [])
           if loss is not None and rate is not None and rate == rate]
    if pts:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for arm in dict.fromkeys(p[0] for p in pts):
            xs = [p[1] for p in pts if p[0] == arm]
            ys = [100 * p[2] for p in pts if p[0] == arm]
            ax.scatter(xs, ys, label=arm, s=30)
        ax.set_xscale("log")
        # Minor-tick labels of a log axis spanning one or two decades collide ("3x10^-4" over "4x10^-4").
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("final training loss (as the user reads it; units differ between arms)")
        ax.set_ylabel("closed-loop success (%)")
        ax.set_ylim(-5, 105)
        ax.legend(fontsize=7, ncol=2)
        ax.set_title("Training loss against success, one point per arm x seed")
        fig.tight_layout()
        paths["scatter"] = out_dir / "loss_vs_success.png"
        fig.savefig(paths["scatter"], dpi=90)
        plt.close(fig)
    if any(c.get(g) for c in curves.values() for g in GROUPS):
        lines = {arm: {g: ([st for st, _ in c[g]], [max(v, 1e-6) for _, v in c[g]]) for g in GROUPS if c.get(g)}
                 for arm, c in curves.items()}
        paths["openloop"] = _group_panels(plt, lines, "open-loop nMSE (sampled actions)", "training step",
                                          out_dir / "openloop_nmse.png")
    if any(c.get("_x0_by_t") for c in curves.values()):
        lines = {}
        for arm, c in curves.items():
            for g, ys in (c.get("_x0_by_t") or {}).items():
                if any(y is not None for y in ys):
                    lines.setdefault(arm, {})[g] = (list(range(len(ys))), [max(y, 1e-6) if y is not None
                                                                           else float("nan") for y in ys])
        paths["x0_by_t"] = _group_panels(plt, lines, "one-step x0 nMSE by diffusion time",
                                         "diffusion-time bin (0: least noise)", out_dir / "x0_by_t.png")
    return paths


# ----------------------------------------------------------------------------- writing

def _arm_table(rows: list[ArmRow]) -> list[list[str]]:
    def f(x, fmt="{:.3g}"):
        return "-" if x is None else fmt.format(x)

    head = ["arm", "success (all seeds)", "per seed", "crashed", "final train loss", "open-loop nMSE pos / rot / grip",
            "clip rate", "pos step vs train range", "R2 pos vs abs pose / delta"]
    tasks = any(r.per_task_rate for r in rows)
    if tasks:  # a multi-task plan: success per task too (the table's other figures are means over tasks)
        head.insert(3, "per task")
    body = []
    for r in rows:
        per = ", ".join(f"{100 * v:.0f}%" for _s, v in sorted(r.per_seed_rate.items()) if v == v) or "-"
        row = [r.arm, f"{r.successes}/{r.episodes}" + (f" = {100 * r.rate:.0f}%" if r.rate is not None else ""),
               per, str(r.crashed), f(r.final_train_loss),
               " / ".join(f(r.openloop_nmse.get(g)) for g in GROUPS), f(r.clip_rate),
               f(r.pos_out_of_range, "{:.2f}x"), f"{f(r.r2_abs, '{:.2f}')} / {f(r.r2_delta, '{:.2f}')}"]
        if tasks:
            row.insert(3, ", ".join(f"{t.split('/')[-1]}: {100 * v:.0f}%" for t, v in r.per_task_rate.items()
                                    if v == v) or "-")
        body.append(row)
    return [head] + body


def _level(c: ComparisonResult) -> str:
    return f"{100 * c.level:.2f}%" if c.level else "-"


def _effects_table(comps: list[ComparisonResult]) -> list[list[str]]:
    """The decision interval (at the level the word was decided at) first; the plain 95% interval
    beside it, labelled, for reference only."""
    head = ["hypothesis", "arm vs control", "expect", "success arm / control (per seed)", "effect (pts)",
            "decision interval", "its level", "95% interval (reference)", "adjusted p", "verdict", "look"]
    body = []
    for c in comps:
        seeds = ""
        if c.per_seed_arm:
            seeds = (" (" + "/".join(f"{100 * x:.0f}" for x in c.per_seed_arm) + " vs "
                     + "/".join(f"{100 * x:.0f}" for x in c.per_seed_control) + ")")
        rates = "-" if c.rate_arm is None else f"{100 * c.rate_arm:.0f}% / {100 * (c.rate_control or 0):.0f}%{seeds}"
        word = c.word + (f" ({c.bound}: says nothing of the claim)" if c.word == "no meaningful difference" and c.bound
                         else "")
        body.append([c.hypothesis, f"{c.arm} vs {c.control}", c.expect, rates, _pts(c.estimate),
                     "-" if c.lo is None else f"[{_pts(c.lo)}, {_pts(c.hi)}]", _level(c),
                     "-" if c.lo95 is None else f"[{_pts(c.lo95)}, {_pts(c.hi95)}]",
                     "-" if c.p_holm is None else f"{c.p_holm:.3g}", word,
                     "-" if c.decided_at_look is None else str(c.decided_at_look + 1)])
    return [head] + body


def _per_task_table(comps: list[ComparisonResult]) -> list[list[str]]:
    """Every comparison run on several tasks: its effect on each task, then the pooled effect (tasks a
    random factor, what the verdict uses) and whether the tasks disagree."""
    head = ["arm vs control", "task", "effect (pts)", "95% interval", "success arm / control", "init states",
            "tasks agree?"]
    body = []
    for c in comps:
        if c.n_tasks < 2 or c.estimate is None:
            continue
        name = f"{c.arm} vs {c.control}"
        for t in c.per_task:
            body.append([name, t["task"], _pts(t["estimate"]), f"[{_pts(t['lo'])}, {_pts(t['hi'])}]",
                         f"{100 * t['rate_arm']:.0f}% / {100 * t['rate_control']:.0f}%", str(t["n_states"]), ""])
        body.append([name, f"pooled over {c.n_tasks} tasks", _pts(c.estimate), f"[{_pts(c.lo)}, {_pts(c.hi)}]",
                     f"{100 * (c.rate_arm or 0):.0f}% / {100 * (c.rate_control or 0):.0f}%", str(c.n_states),
                     ("NO: " if c.tasks_disagree else "yes: ") + c.heterogeneity])
    return [head] + body


def _md_table(t: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(t[0]) + " |", "|" + "---|" * len(t[0])] + ["| " + " | ".join(r) + " |" for r in t[1:]]


def _html_table(t: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in t[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


NMSE_NOTE = ("Open-loop nMSE: the group's mean squared error of fully sampled actions (DPM-Solver from noise, as "
             "in closed loop) in physical units on held-out demos, divided by that group's variance in those "
             "windows; 1.0 is the error of always predicting their mean (a nearly constant group divides by a "
             "tiny variance: do not rank on it). The trainer's one-step x0 figures (val/nmse/*) "
             "are training diagnostics only: at a random diffusion step they favour data that are large "
             "relative to the unit noise.")


PER_TASK_NOTE = ("Each task is its own set of trained networks (arm x seed x task). The pooled effect, which the "
                 "verdicts use, treats tasks as a random factor: its interval resamples the tasks as well as the "
                 "init states and seeds, so it speaks for tasks like these, and widens when they disagree. Tasks "
                 "disagree when one task's interval lies wholly above 0 and another's wholly below, or Cochran's Q "
                 "rejects equal effects at alpha; Q has little power with few tasks.")


def render(rep: Report, plots: dict[str, Path], out_dir: Path) -> None:
    arms, effects, per_task = _arm_table(rep.arms), _effects_table(rep.comparisons), _per_task_table(rep.comparisons)
    md = [f"# Plan '{rep.plan}'", "", "## Answer", "", rep.answer, "", "## Baseline", "", f"{rep.baseline_note}.", "",
          "## Verdicts", ""]
    for v in rep.verdicts:
        md += [f"### {v.name}: {v.title} — **{v.word}**", "", f"Claim: {v.claim}", "", v.meaning, ""]
        md += [f"- {line}" for line in v.lines] + [""]
    md += ["## Effects", ""] + _md_table(effects) + ["", f"Method: {rep.method}", ""]
    if len(per_task) > 1:
        md += ["## Per-task effects", "", PER_TASK_NOTE, ""] + _md_table(per_task) + [""]
        md += [f"![per_task_forest]({plots['per_task_forest'].name})", ""] if "per_task_forest" in plots else []
    md += ["## Arms", ""]
    md += _md_table(arms) + ["", NMSE_NOTE, ""]
    md += [f"![{k}]({p.name})" for k, p in plots.items() if k != "per_task_forest"] + ["", "## Caveats", ""]
    md += [f"- {c}" for c in rep.caveats] or ["- none"]
    if rep.versions:
        md += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in rep.versions.items())]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")

    def img(p: Path) -> str:
        b64 = base64.b64encode(p.read_bytes()).decode()
        return f'<img alt="{p.stem}" src="data:image/png;base64,{b64}">'

    e = html.escape
    parts = [f"<h1>Plan '{e(rep.plan)}'</h1>", "<h2>Answer</h2>", f"<p class='answer'>{e(rep.answer)}</p>",
             "<h2>Baseline</h2>", f"<p>{e(rep.baseline_note)}.</p>", "<h2>Verdicts</h2>"]
    for v in rep.verdicts:
        parts += [f"<h3>{e(v.name)}: {e(v.title)} — <span class='w'>{e(v.word)}</span></h3>",
                  f"<p>Claim: {e(v.claim)}</p><p>{e(v.meaning)}</p>",
                  "<ul>" + "".join(f"<li>{e(x)}</li>" for x in v.lines) + "</ul>"]
    parts += ["<h2>Effects</h2>", _html_table(effects), f"<p>Method: {e(rep.method)}</p>"]
    parts += [img(p) for k, p in plots.items() if k == "forest"]
    if len(per_task) > 1:
        parts += ["<h2>Per-task effects</h2>", f"<p>{e(PER_TASK_NOTE)}</p>", _html_table(per_task)]
        parts += [img(p) for k, p in plots.items() if k == "per_task_forest"]
    parts += ["<h2>Arms</h2>", _html_table(arms), f"<p>{e(NMSE_NOTE)}</p>"]
    parts += [img(p) for k, p in plots.items() if k not in ("forest", "per_task_forest")]
    parts += ["<h2>Caveats</h2>", "<ul>" + "".join(f"<li>{e(c)}</li>" for c in rep.caveats) + "</ul>"]
    if rep.versions:
        parts.append(f"<p>Versions: {e(', '.join(f'{k} {v}' for k, v in rep.versions.items()))}</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
             ".answer{font-size:16px;background:#f4f8ff;padding:10px}.w{color:#124}img{max-width:100%}")
    (out_dir / "report.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>Plan "
                                         f"{e(rep.plan)}</title><style>{style}</style></head><body>"
                                         + "\n".join(parts) + "</body></html>\n")


def _points(h: Hypothesis, rows: list[ArmRow], curves: dict) -> list[tuple[str, float | None, float | None]]:
    """(arm, x, success) per finished run, for a correlation hypothesis."""
    out = []
    for r in rows:
        for _s, loss, rate in curves.get(r.arm, {}).get("_scatter", []):
            x = loss if h.correlation.x == "final_train_loss" else r.openloop_nmse.get("pos")
            out.append((r.arm, x, rate))
    return out


def _seeds_per_arm(rows: list[ArmRow]) -> int:
    counts = [len(r.finished_seeds) for r in rows if r.finished_seeds]
    return min(counts) if counts else 0


def method_text(plan: str, comps: list[ComparisonResult], looks: list, rules: DecisionRules, planned: bool,
                seeds: int) -> str:
    """The method paragraph: the test, the family and what it spends, and the calibration figures
    measured for this design (benchmarks/calibration.py)."""
    method = next((c.method for c in comps if c.method), "")
    method = method.rstrip(".") + "." if method else ""
    if not planned:
        return method
    n_fam = sum(c.p_holm is not None for c in comps)  # untestable and left-out ones have no p
    method += (f" Family: the {n_fam} comparisons of plan '{plan}' with data (of its {len(comps)}), each tested "
               f"for a difference and for equivalence within +-{100 * rules.margin:.0f} points in one Shaffer-Holm "
               f"step-down; alpha {rules.alpha:g} spent over them and over the looks at {looks} episodes per arm x "
               f"seed ({rules.spending}). Other plans run in the same workdir reuse this plan's shared runs (e.g. "
               f"its baseline) and spend their own alpha: a conclusion that combines plans spends the sum. Each "
               f"interval shown is at the level its decision used; the 95% interval beside it is for reference. "
               f"Both arms at or below {100 * rules.floor:.0f}% or at or above {100 * rules.ceiling:.0f}% success "
               f"(or a control within the margin of the limit) make 'no meaningful difference' say nothing.")
    cal = calibration_for(seeds, [x for x in looks if x is not None])
    if cal:
        method += " " + cal
    return method


def build_report(tracker: Tracker, *, parent_run_id: str | None = None, plan: str | None = None,
                 out_dir: Path) -> Report:
    """Build report.md, report.html (plots embedded), report.json and the PNGs from MLflow."""
    parent = find_plan_run(tracker, plan, parent_run_id)
    record = _download_json(tracker, parent.info.run_id, PLAN_RECORD)
    if record is None:
        raise ReportError(f"plan run {parent.info.run_id} has no {PLAN_RECORD}: it was made by an older version "
                          "or killed before its runs were created; re-run the plan")
    hyps = [Hypothesis.model_validate({k: v for k, v in h.items() if k != "path"}) for h in record["hypotheses"]]
    rows, records, curves = collect(tracker, record)
    baseline = _baseline(record, hyps)
    reproduced, note = baseline_check(rows, baseline, DEFAULT_RULES.with_overrides(record.get("episodes") or {}))
    facts = {r.arm: ArmFacts(rot_spread_deg=r.rot_spread_deg,
                             pretrained=bool(record["arms"][r.arm].get("pretrained", False))) for r in rows}
    facts = with_demo_spread(facts, record.get("skipped_arms", {}))
    sched = record.get("episodes") or {}
    looks = list(sched.get("looks") or [None])
    previous = {}
    for look in record.get("looks", []):
        for c in look.get("comparisons", []):
            res = ComparisonResult(**c)
            if res.decided and (c["hypothesis"], c["arm"], c["control"]) not in previous:
                previous[(c["hypothesis"], c["arm"], c["control"])] = res
    k = max(0, len(record.get("looks", [])) - 1)
    rules = DEFAULT_RULES.with_overrides(sched)
    comps = judge(hyps, records, facts, look_index=k, looks=looks, previous=previous, rules=rules)
    mark_left_out(comps, record.get("skipped_arms") or {})
    warn = "" if reproduced is not False else "baseline"
    verdicts = [hypothesis_verdict(h, comps, correlation_of(h, _points(h, rows, curves), rules)
                                   if h.kind == "correlation" else None, warn, rules) for h in hyps]
    add_signature_lines(tracker, record, hyps, verdicts)  # H3: predicted slots 30-32 regressed on the pose
    method = method_text(record["plan"], comps, looks, rules, bool(sched), _seeds_per_arm(rows))
    rep = Report(record["plan"], write_answer(rows, comps, verdicts, baseline, reproduced, hyps), baseline, reproduced,
                 note, rows, comps, verdicts, [], method.strip(), record.get("versions", {}), record.get("timing", {}))
    rep.caveats = caveats_of(rows, comps, record, reproduced, note, record.get("demos", {}), rules)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(rep, curves, out_dir)
    render(rep, plots, out_dir)
    (out_dir / "report.json").write_text(json.dumps(rep.to_json(), indent=1, default=str))
    return rep
