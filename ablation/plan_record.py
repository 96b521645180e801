"""The plan record's vocabulary, shared by the plan that writes it and the analysis and report that read it.

PLAN_RECORD is the artifact on a plan's parent MLflow run (hypotheses, arms, runs, looks; written by
`ablation.plan.write_plan_record`); `task_label` is how the record and the statistics name a task.
"""
from __future__ import annotations

PLAN_RECORD = "plan.json"  # artifact on the parent run: hypotheses, arms, runs, looks


def task_label(spec) -> str:
    """How the statistics name a task (the pairing key with the init state): `suite/task`."""
    return f"{spec.data.suite}/{spec.data.task}"
