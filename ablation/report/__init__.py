"""The plan's report: the answer first, then the evidence, then the caveats, as report.md, report.html
(figures embedded), report.json and the PNGs.

Presentation only. `recorded_plan` reads the plan and its runs from MLflow, `findings` judges them
(`analysis.judge` and the rules in `verdicts`); here `builder` writes the prose and tables into one
document (`document`), `plots` draws the figures, and `render` writes that document as markdown and as
HTML. No spec or hypothesis name appears in this code: a user adds a hypothesis by writing a YAML file.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..findings import judge_recorded
from ..locks import write_atomic
from ..recorded_plan import ReportError, read_plan
from ..slot_signature import add_signature_lines
from ..tracking import Tracker
from .builder import Report, build_document, report_of
from .plots import curve_plots, effect_plots
from .render import to_html, to_markdown

__all__ = ["Report", "ReportError", "build_report"]


def build_report(tracker: Tracker, *, parent_run_id: str | None = None, plan: str | None = None,
                 out_dir: Path) -> Report:
    """Build report.md, report.html (plots embedded), report.json and the PNGs from MLflow."""
    recorded = read_plan(tracker, parent_run_id=parent_run_id, plan=plan)
    found = judge_recorded(recorded)
    # H3: each arm's predicted slot 30-32 values regressed on the pose, beside the verdict they explain
    add_signature_lines(tracker, recorded.record, recorded.hypotheses, found.verdicts)
    rep = report_of(recorded, found)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {**effect_plots(rep.comparisons, out_dir), **curve_plots(recorded.curves, out_dir)}
    doc = build_document(rep, recorded, plots, out_dir)
    # renamed into place: two drivers of one plan may share the workdir, and one may be uploading these
    # files while the other rewrites them (a file truncated under an upload hangs it)
    write_atomic(out_dir / "report.md", to_markdown(doc))
    write_atomic(out_dir / "report.html", to_html(doc))
    write_atomic(out_dir / "report.json", json.dumps(rep.to_json(), indent=1, default=str))
    return rep
