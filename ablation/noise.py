"""Third-party noise silenced at the entry points (the CLI, and every process that makes a LIBERO env).

What it hides says nothing about this harness's runs: robosuite's "No private macro file found!" (three
lines per process that imports it), torch's `torch.jit` deprecation notes (raised inside libraries we
call) and MLflow's and alembic's schema-migration lines when a fresh sqlite store is opened.
"""
from __future__ import annotations

import logging
import os
import warnings

# Inherited by spawned worker processes (executors, rollout pools) before they import anything.
# PYTHONWARNINGS matches a message by its start.
_CHILD_WARNINGS = ("ignore:`torch.jit:DeprecationWarning", "ignore:The 'warn' method is deprecated:DeprecationWarning")


def silence_third_party() -> None:
    """Idempotent; call before robosuite, torch or MLflow are imported where possible."""
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)  # robosuite's own handler prints WARNING
    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`torch\.jit", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r"The 'warn' method is deprecated", category=DeprecationWarning)
    have = [w for w in os.environ.get("PYTHONWARNINGS", "").split(",") if w]
    os.environ["PYTHONWARNINGS"] = ",".join(have + [w for w in _CHILD_WARNINGS if w not in have])
