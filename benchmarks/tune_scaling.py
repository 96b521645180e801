"""Trials per hour of `run_ablation.py tune` with 1 and with 2 concurrent worker processes on one study.

    .venv/bin/python benchmarks/tune_scaling.py                      # sqlite storage + sqlite MLflow store
    .venv/bin/python benchmarks/tune_scaling.py --backend pg         # real PostgreSQL + `mlflow server`
    .venv/bin/python benchmarks/tune_scaling.py --trials-per-worker 4 --set train.steps=200

Each phase gets a fresh study; the demos are generated once beforehand (not timed). The figures:
  wall        spawn of the workers -> the last one exits (process start-up and imports included)
  trials/h    trials finished (COMPLETE or PRUNED) / wall
  busy/h      trials / (last trial end - first trial start), i.e. without worker start-up
The budget is tiny (that of tests/test_distributed_tune.py, without pruning, unless --set changes it), so start-up and
the simulator's env creation weigh more than in a real study; on 2 cores, 2 workers can at best double.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEC = "experiments/tune_loss_weights.yaml"
EXPERIMENT = "libero-action-ablation"
TINY = ["model.size=tiny", "train.steps=20", "train.eval_every=10", "train.log_every=10",
        "train.checkpoint_every=20", "train.warmup_steps=5", "train.device=cpu", "train.num_threads=1",
        "data.n_demos=2", "data.images=false", "rollout.episodes=1", "rollout.max_steps=40", "rollout.workers=1",
        "tune.pruner=none"]  # every trial does the full train + rollout: pruned trials would flatter the rate


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
            "PYTHONUNBUFFERED": "1"}


@contextlib.contextmanager
def backends(kind: str, root: Path):
    """Yields (optuna storage URL, MLflow tracking URI), created once before any worker."""
    if kind == "sqlite":
        yield f"sqlite:///{root / 'optuna.db'}", f"sqlite:///{root / 'mlruns.db'}"
        return
    from tests.pg_server import mlflow_server, postgres_server

    with postgres_server() as pg:
        pg.create_database("optuna")
        pg.create_database("mlflow")
        with mlflow_server(pg.url("mlflow"), root / "mlartifacts", root / "mlflow-server.log") as uri:
            yield pg.url("optuna"), uri


def prepare(storage: str, uri: str, studies: list[str], workdir: Path, sets: list[str]) -> None:
    import optuna

    from ablation.spec import resolve_spec
    from ablation.tracking import Tracker
    from ablation.workdir import ensure_demos

    for s in studies:
        optuna.create_study(study_name=s, storage=storage, direction="maximize", load_if_exists=True)
    Tracker.open(uri, EXPERIMENT, workdir / "mlartifacts")  # the store and experiment, once
    t0 = time.time()
    ensure_demos(resolve_spec(REPO / SPEC, sets), workdir, 0)
    print(f"[bench] demos ready in {time.time() - t0:.0f} s (not timed)")


def phase(n_workers: int, trials: int, storage: str, uri: str, study: str, workdir: Path, sets: list[str],
          logs: Path) -> dict:
    import optuna

    cmd = [sys.executable, "run_ablation.py", "tune", "--spec", SPEC, "--trials", str(trials), "--storage", storage,
           "--tracking-uri", uri, "--study", study, "--workdir", str(workdir), "--no-reeval"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    procs = []
    for i in range(n_workers):
        fh = open(logs / f"{study}-w{i}.log", "w")
        procs.append((subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=_env()), fh))
    rcs = []
    for p, fh in procs:
        rcs.append(p.wait())
        fh.close()
    wall = time.time() - t0
    if any(rcs):
        raise SystemExit(f"worker(s) failed {rcs}; logs in {logs}")
    done = [t for t in optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
            if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    busy = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    per_trial = sorted((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
    return {"workers": n_workers, "trials": len(done), "wall_s": wall, "trials_per_h": 3600 * len(done) / wall,
            "busy_per_h": 3600 * len(done) / busy, "median_trial_s": per_trial[len(per_trial) // 2]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["sqlite", "pg"], default="sqlite")
    ap.add_argument("--trials-per-worker", type=int, default=3)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra spec overrides")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores)")
    a = ap.parse_args()
    sets = [*TINY, *a.sets]
    root = Path(tempfile.mkdtemp(prefix="tune-scaling-"))
    workdir, logs = root / "workdir", root / "logs"
    workdir.mkdir()
    logs.mkdir()
    print(f"[bench] {os.cpu_count()} CPU(s), backend {a.backend}, {a.trials_per_worker} trial(s) per worker, "
          f"dir {root}")
    rows = []
    with backends(a.backend, root) as (storage, uri):
        prepare(storage, uri, ["scale-1", "scale-2"], workdir, sets)
        for n in (1, 2):
            r = phase(n, a.trials_per_worker, storage, uri, f"scale-{n}", workdir, sets, logs)
            rows.append(r)
            print(f"[bench] {n} worker(s): {r['trials']} trials in {r['wall_s']:.0f} s -> {r['trials_per_h']:.0f} "
                  f"trials/h (busy {r['busy_per_h']:.0f}/h, median trial {r['median_trial_s']:.1f} s)")
    one, two = rows
    print(f"[bench] speed-up 2 vs 1 worker: {two['trials_per_h'] / one['trials_per_h']:.2f}x trials/h "
          f"(busy {two['busy_per_h'] / one['busy_per_h']:.2f}x)")
    if not a.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
