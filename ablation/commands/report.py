"""`run_ablation.py report`: rebuild a plan's report (answer, verdicts, effects, plots) from MLflow."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..workdir import DEFAULT_WORKDIR


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild a plan's report from its recorded runs (HTML + markdown, or --json)",
                       description="Finds the plan's parent run in the MLflow store (the newest, or --plan / "
                                   "--run-id) and reads its runs through what the plan recorded.")
    p.add_argument("--plan", help="plan name (default: the newest plan run in the store)")
    p.add_argument("--run-id", help="the plan's parent run id")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the workdir)")
    p.add_argument("--experiment", default="libero-action-ablation")
    p.add_argument("--out", type=Path, help="output folder (default: WORKDIR/report)")
    p.add_argument("--json", action="store_true", help="print the report data as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..report import ReportError, build_report
    from ..tracking import Tracker, default_tracking_uri

    workdir = args.workdir.resolve()
    uri = args.tracking_uri or default_tracking_uri(workdir)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UserError(f"no MLflow store at {uri[len('sqlite:///'):]}; run a plan first or pass --workdir")
    tracker = Tracker.open(uri, args.experiment, workdir / "mlartifacts")
    out_dir = args.out or workdir / "report"
    try:
        rep = build_report(tracker, parent_run_id=args.run_id, plan=args.plan, out_dir=out_dir)
    except ReportError as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(rep.to_json(), indent=1, default=str))
    else:
        print((out_dir / "report.md").read_text())
        print(f"\nwritten: {out_dir / 'report.html'} (plots embedded), {out_dir / 'report.md'}")
    return 0
