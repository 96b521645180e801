"""`run_ablation.py report`: the comparison table, plots, confounds and verdicts, from MLflow."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..workdir import DEFAULT_WORKDIR


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="comparison report of a plan's recorded runs (markdown + PNG, or --json)")
    p.add_argument("--plan", default="all")
    p.add_argument("--profile", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="a.b.c=VALUE")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    p.add_argument("--tracking-uri")
    p.add_argument("--json", action="store_true", help="print the report data as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..plan import load_profile, resolve_entries
    from ..report import build_report
    from ..spec import load_plan
    from ..tracking import Tracker, default_tracking_uri

    plan = load_plan(args.plan)
    entries = resolve_entries(plan, load_profile(args.profile), args.seeds, None, args.sets)
    workdir = args.workdir.resolve()
    uri = args.tracking_uri or default_tracking_uri(workdir)
    tracker = Tracker.open(uri, entries[0][0].tracking.experiment, workdir / "mlartifacts")
    out_dir = workdir / "report"
    rep = build_report(tracker, entries=[(s.name, s.hash(), sd) for s, sd in entries], out_dir=out_dir,
                       title=f"Plan '{plan.name}'")
    if args.json:
        print(json.dumps(rep.to_json(), indent=1))
    else:
        print((out_dir / "report.md").read_text())
        print(f"\nwritten: {out_dir / 'report.md'} (+ PNG plots)")
    return 0
