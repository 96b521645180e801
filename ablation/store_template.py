"""A new sqlite MLflow store starts as a copy of an empty, migrated one, not from MLflow's migrations.

MLflow creates a sqlite store by running its whole alembic history (~70 migration scripts): 1.4-2.5
CPU-s per new store, paid by every new workdir and by each test that makes one. The result is the same
every time for one MLflow/SQLAlchemy/alembic install, so it is built once per install into a cache
(`$XDG_CACHE_HOME/ablation`, else `~/.cache/ablation`) and copied (~0.05 s). The one row that depends on
the process, the "Default" experiment's artifact location (MLflow puts it under the current directory)
and its creation time, is rewritten after the copy to what MLflow would have written there.

Anything unusual (a read-only cache, a file that is not a fresh store) leaves the store to MLflow's own
creation: this is a shortcut, never a requirement.
"""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .user_cache import cache_dir

log = logging.getLogger(__name__)

SQLITE = "sqlite:///"


def _stack_key() -> str:
    parts = []
    for pkg in ("mlflow", "sqlalchemy", "alembic"):
        try:
            parts.append(f"{pkg}{version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg}-none")
    return "-".join(parts)


def template_path() -> Path:
    return cache_dir() / f"mlflow-store-{_stack_key()}.db"


def _build_template(path: Path) -> None:
    """MLflow's own creation of an empty store, into a temporary file renamed into place (two processes
    building it at once each write a whole, identical file)."""
    from mlflow.tracking import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    MlflowClient(tracking_uri=SQLITE + str(tmp)).search_experiments()
    os.replace(tmp, path)


def _default_artifact_location() -> str:
    """Where MLflow puts the Default experiment's artifacts for a client-side store made here."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.utils.uri import append_to_uri_path, resolve_uri_if_local

    return append_to_uri_path(resolve_uri_if_local(DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH), "0")


def seed_sqlite_store(tracking_uri: str) -> bool:
    """Before MLflow first opens a sqlite store that does not exist yet: make it a copy of the template.
    Returns whether it did. Call it under the store's lock (tracking.sqlite_lock)."""
    if not tracking_uri.startswith(SQLITE) or os.environ.get("ABLATION_NO_STORE_TEMPLATE"):
        return False
    db = Path(tracking_uri[len(SQLITE):])
    if db.exists():
        return False
    try:
        tpl = template_path()
        if not tpl.is_file():
            _build_template(tpl)
        db.parent.mkdir(parents=True, exist_ok=True)
        tmp = db.with_name(f"{db.name}.{os.getpid()}.tmp")
        shutil.copyfile(tpl, tmp)
        now_ms = int(time.time() * 1000)
        with sqlite3.connect(tmp) as con:
            con.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                        "WHERE experiment_id = 0", (_default_artifact_location(), now_ms, now_ms))
        con.close()
        os.replace(tmp, db)
        return True
    except Exception as e:  # the cache or the copy failed: MLflow creates the store itself, as without this
        log.debug("MLflow store template not used for %s: %s: %s", db, type(e).__name__, e)
        return False
