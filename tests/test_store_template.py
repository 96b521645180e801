"""A new sqlite MLflow store is a copy of a migrated empty one (ablation/store_template.py): real MLflow,
real sqlite files, compared with the store MLflow makes on its own."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ablation import store_template
from ablation.tracking import Tracker


def _schema(db: Path) -> tuple[list, list, list]:
    with sqlite3.connect(db) as con:
        # Each statement as the set of its clauses: MLflow's own migrations write a table's constraints in an
        # order that varies from one creation to the next (two stores made by MLflow differ so, too).
        tables = sorted((name, sorted(part.strip() for part in (sql or "").split(",")))
                        for name, sql in con.execute("SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'index')"))
        head = con.execute("SELECT version_num FROM alembic_version").fetchall()
        default = con.execute("SELECT name, artifact_location, lifecycle_stage FROM experiments "
                              "WHERE experiment_id = 0").fetchall()
    con.close()
    return tables, head, default


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("ABLATION_NO_STORE_TEMPLATE", raising=False)
    return tmp_path / "cache" / "ablation"


def test_a_copied_store_is_the_store_mlflow_makes(cache, tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")   # the template is made in another directory than the store
    store_template._build_template(store_template.template_path())
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "own" / "mlruns.db"
    monkeypatch.setenv("ABLATION_NO_STORE_TEMPLATE", "1")
    Tracker.open(f"sqlite:///{own}", "exp", tmp_path / "own" / "art")
    monkeypatch.delenv("ABLATION_NO_STORE_TEMPLATE")

    copied = tmp_path / "copied" / "mlruns.db"
    tr = Tracker.open(f"sqlite:///{copied}", "exp", tmp_path / "copied" / "art")
    assert store_template.seed_sqlite_store(f"sqlite:///{tmp_path / 'other.db'}") is True
    own_schema, copied_schema = _schema(own), _schema(copied)
    assert copied_schema[0] == own_schema[0]          # every table and index, as MLflow's migrations leave them
    assert copied_schema[1] == own_schema[1] != []    # at MLflow's head revision: nothing left to migrate
    assert copied_schema[2] == own_schema[2]          # the Default experiment, under this directory
    assert copied_schema[2][0][1] == str(tmp_path / "mlruns" / "0")
    # and it works as a store: a run with a metric, read back
    rid = tr.start_run("r", {"k": "v"})
    tr.client.log_metric(rid, "m", 1.5)
    assert tr.client.get_run(rid).data.metrics == {"m": 1.5}


def test_an_existing_store_is_left_alone(cache, tmp_path):
    db = tmp_path / "mlruns.db"
    uri = f"sqlite:///{db}"
    tr = Tracker.open(uri, "exp", tmp_path / "art")
    rid = tr.start_run("keep", {})
    assert store_template.seed_sqlite_store(uri) is False
    assert Tracker.open(uri, "exp", tmp_path / "art").client.get_run(rid).info.run_name == "keep"


def test_an_unwritable_cache_falls_back_to_mlflows_creation(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    db = tmp_path / "wd" / "mlruns.db"
    assert store_template.seed_sqlite_store(f"sqlite:///{db}") is False
    assert not db.exists()
    tr = Tracker.open(f"sqlite:///{db}", "exp", tmp_path / "art")   # MLflow's own creation still works
    assert tr.client.get_experiment(tr.experiment_id).name == "exp"


def test_other_uris_are_not_touched(cache):
    assert store_template.seed_sqlite_store("http://127.0.0.1:5000") is False
    assert store_template.seed_sqlite_store("postgresql://u@localhost/db") is False
    assert not cache.exists()
