"""`run_ablation.py report`: rebuild a plan's report (answer, verdicts, effects, plots) from MLflow."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_json, add_workdir, emit_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild a plan's report from its recorded runs (HTML + markdown, or --json)",
                       description="Finds the plan's parent run in the MLflow store (the newest, or --plan / "
                                   "--run-id) and reads its runs through what the plan recorded.")
    p.add_argument("--plan", help="plan name (default: the newest plan run in the store)")
    p.add_argument("--run-id", help="the plan's parent run id")
    add_workdir(p)
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the workdir)")
    p.add_argument("--experiment", default="libero-action-ablation", help="MLflow experiment name")
    p.add_argument("--out", type=Path, help="output folder (default: WORKDIR/report)")
    add_json(p)
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
        emit_json(rep.to_json())
    else:
        print((out_dir / "report.md").read_text())
        print(f"\nwritten: {out_dir / 'report.html'} (plots embedded), {out_dir / 'report.md'}")
    return 0
