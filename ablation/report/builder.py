"""From a judged plan to the report: its content (`Report`, also written as report.json) and the one
document both formats render, in the report's order: the answer first, then the baseline and each
hypothesis's verdict, the effects with their intervals, the arms, and the caveats last.

A hypothesis's section may carry more than its verdict: the extras registered in `extras` add blocks
after its verdict lines.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..analysis import ComparisonResult
from ..findings import Findings
from ..recorded_plan import ArmRow, RecordedPlan
from ..verdicts import HypothesisVerdict
from .document import Block, BulletList, Document, Figure, Paragraph, Section
from .extras import HYPOTHESIS_EXTRAS, HypothesisContext
from .prose import caveats_of, method_text, seeds_per_arm, write_answer
from .tables import NMSE_NOTE, PER_TASK_NOTE, arm_table, effects_table, per_task_table


@dataclass
class Report:
    plan: str
    answer: str
    baseline: str | None
    baseline_reproduced: bool | None
    baseline_note: str
    arms: list[ArmRow]
    comparisons: list[ComparisonResult]
    verdicts: list[HypothesisVerdict]
    caveats: list[str]
    method: str
    versions: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"plan": self.plan, "answer": self.answer, "baseline": self.baseline,
                "baseline_reproduced": self.baseline_reproduced, "baseline_note": self.baseline_note,
                "arms": [asdict(a) for a in self.arms], "comparisons": [asdict(c) for c in self.comparisons],
                "verdicts": [asdict(v) for v in self.verdicts], "caveats": self.caveats, "method": self.method,
                "versions": self.versions, "timing": self.timing}


def report_of(plan: RecordedPlan, f: Findings) -> Report:
    """The report's content: the answer, the method and the caveats written from the findings."""
    record, rows, comps = plan.record, plan.rows, f.comparisons
    method = method_text(record["plan"], comps, f.looks, f.rules, f.planned, seeds_per_arm(rows))
    answer = write_answer(rows, comps, f.verdicts, f.baseline, f.baseline_reproduced, plan.hypotheses)
    caveats = caveats_of(rows, comps, record, f.baseline_reproduced, f.baseline_note, record.get("demos", {}), f.rules)
    return Report(record["plan"], answer, f.baseline, f.baseline_reproduced, f.baseline_note, rows, comps, f.verdicts,
                  caveats, method.strip(), record.get("versions", {}), record.get("timing", {}))


def verdict_section(ctx: HypothesisContext) -> Section:
    """One hypothesis: its title with the verdict word, the claim, what the outcome means, one line per
    comparison, then whatever the registered extras add."""
    v = ctx.verdict
    blocks: list[Block] = [Paragraph(f"Claim: {v.claim}"), Paragraph(v.meaning), BulletList(tuple(v.lines))]
    for extra in HYPOTHESIS_EXTRAS.values():
        blocks += extra(ctx)
    return Section(f"{v.name}: {v.title}", tuple(blocks), mark=v.word)


# ----------------------------------------------------------------------------- the document

def build_document(rep: Report, plan: RecordedPlan, plots: dict[str, Path], out_dir: Path) -> Document:
    """The report's one document; `plots` is {name: PNG} as `plots.effect_plots` / `curve_plots` name them."""
    figs = {k: Figure(p) for k, p in plots.items()}
    hyps = {h.name: h for h in plan.hypotheses}
    verdicts = tuple(verdict_section(HypothesisContext(
        hyps[v.name], v, tuple(c for c in rep.comparisons if c.hypothesis == v.name), plan, out_dir))
        for v in rep.verdicts)
    sections = [Section("Answer", (Paragraph(rep.answer, role="answer"),)),
                Section("Baseline", (Paragraph(f"{rep.baseline_note}."),)),
                Section("Verdicts", verdicts),
                Section("Effects", (effects_table(rep.comparisons), Paragraph(f"Method: {rep.method}"))
                        + tuple(figs[k] for k in ("forest",) if k in figs))]
    per_task = per_task_table(rep.comparisons)
    if per_task.rows:
        sections.append(Section("Per-task effects", (Paragraph(PER_TASK_NOTE), per_task)
                                + tuple(figs[k] for k in ("per_task_forest",) if k in figs)))
    sections.append(Section("Arms", (arm_table(rep.arms), Paragraph(NMSE_NOTE))
                            + tuple(f for k, f in figs.items() if k not in ("forest", "per_task_forest"))))
    versions = (Paragraph("Versions: " + ", ".join(f"{k} {v}" for k, v in rep.versions.items())),) \
        if rep.versions else ()
    sections.append(Section("Caveats", (BulletList(tuple(rep.caveats), empty="none"),) + versions))
    return Document(f"Plan '{rep.plan}'", tuple(sections))
