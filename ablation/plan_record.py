"""The plan record: its schema and writer, shared by the plan that writes it and the analysis and report that read it.

PLAN_RECORD is the artifact on a plan's parent MLflow run (hypotheses, arms, runs, looks, demos, timing;
written by `write_plan_record` at every look); `task_label` is how the record and the statistics name a task.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import h5py

from .diskfull import disk_full_as_error
from .provenance import versions
from .tracking import Tracker

if TYPE_CHECKING:
    from .arms import ResolvedPlan

PLAN_RECORD = "plan.json"  # artifact on the parent run: hypotheses, arms, runs, looks


def task_label(spec) -> str:
    """How the statistics name a task (the pairing key with the init state): `suite/task`."""
    return f"{spec.data.suite}/{spec.data.task}"


def demo_provenance(path: Path) -> dict:
    """Where a demo file's episodes started and how they were made (its `ablation_attrs`)."""
    try:
        with h5py.File(path, "r") as f:
            raw = f["data"].attrs.get("ablation_attrs", "{}")
        attrs = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except Exception:
        attrs = {}
    keep = ("starts", "seed", "n_demos", "dart_sigma", "suite", "task", "source", "min_distance_to_benchmark_init")
    out = {k: attrs[k] for k in keep if k in attrs}
    out.setdefault("starts", attrs.get("starts", "the benchmark's init states (older demo file)"))
    out["path"] = str(path)
    return out


def write_plan_record(tracker: Tracker, parent: str, rp: ResolvedPlan, runs: dict, looks: list[dict],
                      timing: dict | None = None, demos: dict | None = None) -> dict:
    """What the report needs to find this plan's runs and judge them, as an artifact of the parent."""
    rec = {
        "plan": rp.plan.name, "key": rp.key, "description": rp.plan.description,
        "hypotheses": [{**h.model_dump(mode="json"), "path": h.path} for h in rp.hypotheses],
        "arms": {a.name: {"spec_hash": a.spec.hash(), "seeds": list(a.seeds), "description": a.spec.description,
                          "suite": a.spec.data.suite, "task": a.spec.data.task,
                          "tasks": list(a.tasks) if a.tasks is not None else None,
                          "pretrained": bool(a.spec.model.pretrained or a.spec.train.init_from),
                          "init_from": a.spec.train.init_from, "train_steps": a.spec.train.total_steps}
                 for a in rp.arms.values()},
        "demos": demos or {},
        "versions": versions(),
        "skipped_arms": rp.skipped,
        "runs": runs,                       # arm -> {seed: run_id}, or {"seed/taskK": run_id} with tasks
        "episodes": rp.plan.episodes.model_dump(mode="json") if rp.plan.episodes else None,
        "looks": looks,
        "timing": timing or {},
    }
    text = json.dumps(rec, indent=1, default=str)
    with tempfile.TemporaryDirectory() as d:
        with disk_full_as_error(Path(d) / PLAN_RECORD, len(text)):
            (Path(d) / PLAN_RECORD).write_text(text)
        tracker.log_artifact(parent, Path(d) / PLAN_RECORD)  # a cut-short upload is refused by the report
    return rec
