"""`run_ablation.py doctor --demos FILE [--spec SPEC] [--checkpoint DIR] [--checks LIST] [--json] [--fix OUT]`:
find the known LIBERO fine-tuning pitfalls before a long run.

Without --spec (or --checkpoint) only the file is judged: its conventions, its integrity, its replay.
With one, also whether that spec would train well on it.

Checks: gripper convention (sign, [-1, 1] vs [0, 1]); obs/action alignment (the
lag at which an action first moves the EEF, the no-op share); the kind of the actions (delta, double
delta, absolute); the spec's scale audit and transform round trip; with --checkpoint, its codec
statistics against the file (codec.json + spec.yaml suffice) and its open-loop predictions (needs the
weights); Gate A through the spec's own decode path, start states and image orientation in the
simulator (skip with --no-sim); versions; blank frames.

Each finding: a stable code (D = data, S = spec, C = checkpoint, R = replay) and id, severity (serious /
warning / info), evidence in numbers, the demos and steps where it was seen, the fix and what to run
next; serious first. --fix OUT writes a corrected copy (gripper sign or range, obs timing label,
no-op steps where nothing moved), never touching the input, and runs the doctor again on the copy.
Exit 0: nothing at or above --fail-on (default serious); 1: something; 2: inputs unreadable.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_demos, add_json, add_sets, add_spec, add_workdir, emit_json


def register(sub) -> None:
    p = sub.add_parser("doctor", help="find known LIBERO fine-tuning pitfalls in a demo file / spec / checkpoint",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demos(p, required=True, old=("--data",))
    add_spec(p, what="to judge on the file: scale audit, round trip, task (default: none, the file alone is "
                     "judged; Gate A then replays its actions through native_delta)")
    p.add_argument("--checkpoint", help="checkpoint bundle directory (codec.json + spec.yaml at least)")
    p.add_argument("--suite", help="override the suite the file says (or does not say)")
    p.add_argument("--task", type=int, help="override the task index")
    p.add_argument("--episodes", type=int, default=10, help="demos to replay for Gate A (default 10)")
    p.add_argument("--no-sim", action="store_true", help="skip the simulator checks (Gate A, start states, orientation)")
    add_sets(p)
    add_workdir(p, "Gate A results are cached there")
    p.add_argument("--checks", action="append", metavar="A,B", help="run only these checks (names, finding ids or "
                   "codes, comma-separated; repeatable): gripper, alignment, actions, images, versions, spec, scale, "
                   "roundtrip, stats, openloop, gate_a, start_state")
    p.add_argument("--fail-on", default="serious", choices=("serious", "warning", "never"),
                   help="lowest severity that makes the exit code 1 (default serious)")
    p.add_argument("--fix", type=Path, metavar="OUT", help="write a corrected copy of --demos to OUT (gripper sign or "
                   "range, obs timing, no-op steps), then run the doctor on the copy; the input is never changed")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..doctor import run_doctor

    data = str(args.demos)
    kw = dict(sim=not args.no_sim, episodes=args.episodes, suite=args.suite, task=args.task, workdir=args.workdir,
              sets=args.sets, checks=args.checks, fail_on=args.fail_on)
    report = run_doctor(data, args.spec, args.checkpoint, **kw)
    if args.fix is None:
        if args.json:
            emit_json(report.to_dict())
        else:
            print(report.text())
        return report.exit_code
    from ..doctor.fix import fix_file

    # the fixes are judged on the whole file, whatever --checks chose for the report
    full = report if args.checks is None else run_doctor(data, args.spec, args.checkpoint,
                                                          **{**kw, "checks": None, "sim": False})
    fixed = fix_file(data, args.fix, full.findings)
    after = run_doctor(args.fix, args.spec, args.checkpoint, **kw)
    if args.json:
        emit_json({"before": report.to_dict(), "fix": fixed.__dict__, "after": after.to_dict()})
    else:
        print(report.text() + "\n\n" + fixed.text() + "\n\ndoctor on the fixed copy:\n" + after.text())
    return after.exit_code
