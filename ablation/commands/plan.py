"""`run_ablation.py --plan NAME` (= `run_ablation.py plan --plan NAME`): run a plan end to end."""
from __future__ import annotations

import argparse

from ..errors import UserError
from .common import add_json, add_profile, add_sets, add_workdir, emit_json, seed_list


def add_executor_args(p: argparse.ArgumentParser) -> None:
    """--executor / --ray-address, the same for `plan` and `tune`."""
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where runs execute: local = a process pool on this machine (default); ray = one task "
                        "per run on a Ray cluster (pip install -e \".[cluster]\")")
    p.add_argument("--ray-address", metavar="HOST:PORT",
                   help="with --executor ray: the cluster's head (HOST:6379, or auto = the cluster this node "
                        "joined); default: start a Ray instance on this machine")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="run a plan: demos, audit, training, evaluation, MLflow, report "
                                    "(also: run_ablation.py --plan NAME)",
                       description="Run every spec x seed of a plan; finished runs are skipped, interrupted "
                                   "ones resume, failing ones are recorded as FAILED and the plan goes on.")
    p.add_argument("name", nargs="?", metavar="PLAN", help="the plan, as with --plan (`plan smoke`)")
    p.add_argument("--plan", help="plan name in experiments/plans/ or a YAML file (default: the profile's full "
                                  "study: all on cpu, suite_sweep on gpu)")
    add_profile(p)
    p.add_argument("--seeds", type=seed_list, help="comma-separated seeds, e.g. 0,1,2 (default: the plan's)")
    p.add_argument("--only", action="append", metavar="ARM", help="run only this arm (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="list what would run and what is already done "
                   "(creates nothing: no workdir, no MLflow store)")
    add_workdir(p)
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the workdir)")
    add_sets(p, "a field of every spec")
    p.add_argument("--jobs", type=int, help="runs in parallel (default: the profile's)")
    p.add_argument("--gate-episodes", type=int, help="Gate A replay episodes per codec (default: the spec's "
                                                      "rollout.gate_episodes; 0 skips the gate)")
    add_executor_args(p)
    p.add_argument("--no-wait", action="store_true", help="when another plan holds this workdir, refuse (exit 2) "
                   "instead of waiting for it")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from ..locks import plan_lock
    from ..plan import outcome_json, run_plan

    if args.name and args.plan and args.name != args.plan:
        raise UserError(f"plan: named twice ({args.name} and --plan {args.plan}); give one")
    name = args.name or args.plan
    # one plan at a time per workdir: a second waits (naming the first) or, with --no-wait, refuses
    lock = nullcontext() if args.dry_run else plan_lock(args.workdir, f"plan {name or '(default)'}",
                                                        wait=not args.no_wait)
    with lock:
        out = run_plan(name, profile_name=args.profile, seeds=args.seeds, only=args.only, dry_run=args.dry_run,
                       workdir=args.workdir, tracking_uri=args.tracking_uri, extra_sets=args.sets, jobs=args.jobs,
                       gate_episodes=args.gate_episodes, executor=args.executor, ray_address=args.ray_address)
    if args.json:
        emit_json(outcome_json(out))
    if args.dry_run:
        return 0
    # The report is the plan's main output: a plan whose report could not be written has failed.
    return 1 if out.failed or not out.report_ok else 0
