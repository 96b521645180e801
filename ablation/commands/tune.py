"""`run_ablation.py tune`: Optuna search over loss weights, objective = closed-loop success."""
from __future__ import annotations

import argparse
from dataclasses import asdict

from .common import add_json, add_profile, add_sets, add_spec, add_workdir, emit_json
from .plan import add_executor_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="Optuna search over the loss weights (objective: closed-loop success)",
                       description="Several processes given the same --storage share one study (PostgreSQL "
                                   "for many machines). Each trial is a nested MLflow run of the study's run.")
    add_spec(p, default="tune_loss_weights", what="with a tune.search_space (default: tune_loss_weights)")
    p.add_argument("--trials", type=int, help="trials for this process (default: tune.trials)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<workdir>/optuna.db)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the workdir)")
    p.add_argument("--study", help="study name (default: <spec name>-<hash>)")
    add_workdir(p)
    add_sets(p, "a field of every trial's spec")
    p.add_argument("--heartbeat", type=int, default=20, help="seconds between trial heartbeats; a trial "
                   "silent for 2x this is marked FAIL")
    add_profile(p, what="applied to every trial, as in plans")
    p.add_argument("--jobs", type=int, help="runs in parallel during the re-evaluation (default: the profile's)")
    p.add_argument("--no-reeval", action="store_true", help="skip re-evaluating the best spec on more seeds")
    add_executor_args(p)  # ray: each trial is a task on the cluster, drawing from the same study storage
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tune import tune

    out = tune(args.spec, trials=args.trials, storage=args.storage, tracking_uri=args.tracking_uri,
               study_name=args.study, workdir=args.workdir, sets=args.sets, heartbeat_s=args.heartbeat,
               reeval=not args.no_reeval, profile_name=args.profile, jobs=args.jobs, executor=args.executor,
               ray_address=args.ray_address)
    if args.json:
        emit_json(asdict(out))
    return 0 if out.best_value is not None else 1
