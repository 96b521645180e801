"""`run_ablation.py doctor --demos FILE [--spec SPEC] [--checkpoint DIR] [--json]`: find the known LIBERO
fine-tuning pitfalls before a long run.

Checks: gripper convention (sign, [-1, 1] vs [0, 1]); obs/action alignment (the
lag at which an action first moves the EEF, the no-op share); the kind of the actions (delta, double
delta, absolute); the spec's scale audit and transform round trip; with --checkpoint, its codec
statistics against the file (codec.json + spec.yaml suffice) and its open-loop predictions (needs the
weights); Gate A through the spec's own decode path, start states and image orientation in the
simulator (skip with --no-sim); versions; blank frames.

Each finding: id, severity (serious / warning / info), evidence in numbers, the fix and what to run
next; serious first. Exit 0: nothing serious; 1: something serious; 2: inputs unreadable.
"""
from __future__ import annotations

import argparse

from .common import add_demos, add_json, add_sets, add_spec, add_workdir, emit_json


def register(sub) -> None:
    p = sub.add_parser("doctor", help="find known LIBERO fine-tuning pitfalls in a demo file / spec / checkpoint",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demos(p, required=True, old=("--data",))
    add_spec(p, what="whose codec to check (default: native_delta)")
    p.add_argument("--checkpoint", help="checkpoint bundle directory (codec.json + spec.yaml at least)")
    p.add_argument("--suite", help="override the suite the file says (or does not say)")
    p.add_argument("--task", type=int, help="override the task index")
    p.add_argument("--episodes", type=int, default=10, help="demos to replay for Gate A (default 10)")
    p.add_argument("--no-sim", action="store_true", help="skip the simulator checks (Gate A, start states, orientation)")
    add_sets(p)
    add_workdir(p, "Gate A results are cached there")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..doctor import run_doctor

    report = run_doctor(str(args.demos), args.spec, args.checkpoint, sim=not args.no_sim, episodes=args.episodes,
                        suite=args.suite, task=args.task, workdir=args.workdir, sets=args.sets)
    if args.json:
        emit_json(report.to_dict())
    else:
        print(report.text())
    return report.exit_code
