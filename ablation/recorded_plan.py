"""A finished plan read back from MLflow: its record, one row of figures per arm, the per-episode records
the statistics judge, and the curves the plots draw.

The plan's parent run holds `plan.json` (its hypotheses, arms, the run of each arm x seed, and the
record of every look); each run holds its metrics and its per-episode record
(`rollouts/episodes.json`). Nothing here judges or presents: `findings` judges, `report` presents.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .hypothesis import Hypothesis
from .plan_record import PLAN_RECORD
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


@dataclass(frozen=True)
class RecordedPlan:
    """What the report reads: the plan record, its hypotheses, one row per arm, per-episode stats
    records ({arm, task, seed, init_state, success}) and per-arm curves (see `_arm_curves`)."""

    record: dict
    hypotheses: list[Hypothesis]
    rows: list[ArmRow]
    episodes: list[dict]
    curves: dict


def find_plan_run(tracker: Tracker, plan: str | None = None, parent_run_id: str | None = None):
    if parent_run_id:
        return tracker.client.get_run(parent_run_id)
    q = f"tags.`{TAG_KIND}` = 'plan'" + (f" and tags.`ablation.plan` = '{plan}'" if plan else "")
    runs = tracker.find_runs(q)
    if not runs:
        raise ReportError(f"no plan run{f' of plan {plan!r}' if plan else ''} in {tracker.tracking_uri}; "
                          "run `run_ablation.py --plan NAME` first")
    return runs[0]


def download_json(tracker: Tracker, run_id: str, path: str):
    """The JSON artifact `path` of a run, None when the run has none; a cut-short file is an error."""
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


def read_plan(tracker: Tracker, *, parent_run_id: str | None = None, plan: str | None = None) -> RecordedPlan:
    """The plan (its parent run by id, else the newest of that name, else the newest) with all its runs."""
    parent = find_plan_run(tracker, plan, parent_run_id)
    record = download_json(tracker, parent.info.run_id, PLAN_RECORD)
    if record is None:
        raise ReportError(f"plan run {parent.info.run_id} has no {PLAN_RECORD}: it was made by an older version "
                          "or killed before its runs were created; re-run the plan")
    hyps = [Hypothesis.model_validate({k: v for k, v in h.items() if k != "path"}) for h in record["hypotheses"]]
    rows, episodes, curves = collect(tracker, record)
    return RecordedPlan(record, hyps, rows, episodes, curves)


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


def episode_outcomes(eps: list[dict]) -> list[tuple[int, bool, bool]]:
    """(init state, success, crashed) per recorded episode. A crashed episode counts as a failure (it
    is one, for the user); the report shows crashes apart."""
    return [(int(e.get("init_state", e.get("episode"))), bool(e.get("success")) and not e.get("error"),
             bool(e.get("error"))) for e in eps]


@dataclass
class _Tally:
    """Successes and episodes of one arm, in all and per seed and per task."""

    episodes: int = 0
    successes: int = 0
    crashed: int = 0
    by_seed: dict = field(default_factory=dict)   # seed -> [successes, episodes] over its tasks
    by_task: dict = field(default_factory=dict)   # task label -> [successes, episodes] over its seeds
    rate_of: dict = field(default_factory=dict)   # (seed, task) -> success fraction of that run

    def add(self, seed: int, task: str, outcomes: list[tuple[int, bool, bool]]) -> None:
        k = sum(ok for _s, ok, _c in outcomes)
        self.episodes, self.successes = self.episodes + len(outcomes), self.successes + k
        self.crashed += sum(c for _s, _ok, c in outcomes)
        for d, x in ((self.by_seed, seed), (self.by_task, task)):
            d.setdefault(x, [0, 0])
            d[x][0] += k
            d[x][1] += len(outcomes)
        self.rate_of[(seed, task)] = k / len(outcomes) if outcomes else float("nan")


def _rates(counts: dict) -> dict:
    return {x: (k / n if n else float("nan")) for x, (k, n) in sorted(counts.items())}


def _arm_runs(tracker: Tracker, arm: str, info: dict, record: dict) -> dict[tuple[int, str], object]:
    """(seed, task) -> the MLflow run, for every run the record names under this arm that still exists."""
    runs = {}
    for key, rid in (record.get("runs", {}).get(arm) or {}).items():
        try:
            runs[_run_key(key, info)] = tracker.client.get_run(rid)
        except Exception:
            continue
    return runs


def collect(tracker: Tracker, record: dict) -> tuple[list[ArmRow], list[dict], dict]:
    """Arm rows, per-episode stats records and per-run curves from the plan record's runs (one run per
    arm x seed, or per arm x seed x task)."""
    rows, records, curves = [], [], {}
    for arm, info in record["arms"].items():
        runs = _arm_runs(tracker, arm, info, record)
        multitask = len({t for _s, t in runs}) > 1 or info.get("tasks") is not None
        finished = {k: r for k, r in runs.items() if r.info.status == "FINISHED"}
        failed = {(f"{s} {t}" if multitask else s): (r.data.tags.get("ablation.failure_reason") or r.info.status
                                                     ).splitlines()[0]
                  for (s, t), r in runs.items() if r.info.status != "FINISHED"}
        tally = _Tally()
        for (s, task), r in finished.items():
            outcomes = episode_outcomes(download_json(tracker, r.info.run_id, "rollouts/episodes.json") or [])
            tally.add(s, task, outcomes)
            records += [{"arm": arm, "task": task, "seed": s, "init_state": i, "success": ok}
                        for i, ok, _c in outcomes]
        fr = list(finished.values())
        rows.append(ArmRow(
            arm=arm, description=info.get("description", ""), seeds=list(info.get("seeds", [])),
            finished_seeds=sorted(tally.by_seed), failed=failed, episodes=tally.episodes,
            successes=tally.successes, crashed=tally.crashed, per_seed_rate=_rates(tally.by_seed),
            final_train_loss=_mean(_last(r, "train/loss/total") for r in fr),
            openloop_nmse={g: _mean(_last(r, k) for r in fr) for g, k in OPEN_LOOP_KEYS.items()},
            clip_rate=_mean(_last(r, "eval/clip_rate") for r in fr),
            pos_out_of_range=_mean(_last(r, "eval/pos_out_of_range") for r in fr),
            r2_abs=_mean(_last(r, "val/openloop/r2/pos_vs_abs_pose") for r in fr),
            r2_delta=_mean(_last(r, "val/openloop/r2/pos_vs_delta") for r in fr),
            rot_spread_deg=_mean(_last(r, "audit/rot_spread_deg") for r in fr),
            per_task_rate=_rates(tally.by_task) if multitask else {}, train_steps=info.get("train_steps")))
        if fr:
            curves[arm] = _arm_curves(tracker, finished, tally.rate_of)
    return rows, records, curves


def _arm_curves(tracker: Tracker, finished: dict, rate_of: dict) -> dict:
    """One arm's curves: per action group, the open-loop nMSE by training step (mean over runs);
    "_scatter", one (seed, final loss, success) per trained network; "_x0_by_t", the one-step x0 nMSE
    per diffusion-time bin at the end of training (ablation.train.x0_error_by_t), per group."""
    fr = list(finished.values())
    out: dict = {}
    for g, key in OPEN_LOOP_KEYS.items():
        pts: dict[int, list[float]] = {}
        for r in fr:
            for m in tracker.client.get_metric_history(r.info.run_id, key):
                pts.setdefault(m.step, []).append(m.value)
        out[g] = sorted((s, sum(v) / len(v)) for s, v in pts.items())
    out["_scatter"] = [(s, _last(r, "train/loss/total"), rate_of.get((s, t))) for (s, t), r in finished.items()]
    bins = sorted({int(k.rsplit("bin", 1)[1]) for r in fr for k in r.data.metrics if k.startswith(X0_BY_T_PREFIX)})
    out["_x0_by_t"] = {g: [_mean(_last(r, f"{X0_BY_T_PREFIX}{g}/bin{k}") for r in fr) for k in bins]
                       for g in GROUPS} if bins else {}
    return out
