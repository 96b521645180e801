"""The report's one document, rendered twice: markdown and HTML carry the same facts in the same order.

Each format is read back into a list of facts (headings, paragraphs, list items, table rows, figures):
markdown line by line, HTML with the standard library's parser (and, in the slow test, as the DOM a
real browser builds). A report built from a real sqlite MLflow store must give the same list both ways.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ablation.report import build_report
from ablation.report.extras import HYPOTHESIS_EXTRAS, hypothesis_extra
from ablation.report.document import BulletList, Document, Figure, Paragraph, Section, Table
from ablation.report.render import to_html, to_markdown
from ablation.tracking import Tracker, default_tracking_uri

from .test_multitask import record_multitask_plan
from .test_report import record_plan

Fact = tuple


def md_facts(md: str) -> list[Fact]:
    """("h", level, text) / ("p", text) / ("li", text) / ("row", cells) / ("img", alt) per markdown line."""
    out: list[Fact] = []
    for line in md.splitlines():
        if not line.strip() or re.fullmatch(r"\|(---\|)+", line):
            continue
        if m := re.match(r"(#+) (.*)", line):
            out.append(("h", len(m[1]), m[2].replace("**", "")))
        elif line.startswith("| "):
            cells = re.split(r"(?<!\\) \| ", line[2:-2])
            out.append(("row", tuple(c.replace("\\|", "|") for c in cells)))
        elif line.startswith("- "):
            out.append(("li", line[2:]))
        elif m := re.fullmatch(r"!\[(.*)\]\((.*)\)", line):
            out.append(("img", m[1]))
        else:
            out.append(("p", line))
    return out


class _HtmlFacts(HTMLParser):
    BLOCKS = {"h1": "h", "h2": "h", "h3": "h", "h4": "h", "p": "p", "li": "li"}

    def __init__(self) -> None:
        super().__init__()
        self.facts: list[Fact] = []
        self.text: list[str] | None = None
        self.row: list[str] | None = None
        self.in_head = False

    def handle_starttag(self, tag, attrs):
        if tag == "head":
            self.in_head = True
        elif tag in self.BLOCKS or tag in ("td", "th"):
            self.text = []
        elif tag == "tr":
            self.row = []
        elif tag == "img":
            self.facts.append(("img", dict(attrs)["alt"]))

    def handle_endtag(self, tag):
        if tag == "head":
            self.in_head = False
        elif tag in self.BLOCKS and self.text is not None:
            text = "".join(self.text)
            self.facts.append(("h", int(tag[1]), text) if tag.startswith("h") else (self.BLOCKS[tag], text))
            self.text = None
        elif tag in ("td", "th") and self.row is not None:
            self.row.append("".join(self.text or []))
            self.text = None
        elif tag == "tr":
            self.facts.append(("row", tuple(self.row or ())))
            self.row = None

    def handle_data(self, data):
        if self.text is not None and not self.in_head:
            self.text.append(data)


def html_facts(page: str) -> list[Fact]:
    p = _HtmlFacts()
    p.feed(page)
    return p.facts


def test_renderers_escape_and_keep_every_fact(tmp_path):
    png = tmp_path / "effect.png"
    png.write_bytes(b"\x89PNG not really")
    doc = Document("Plan 'a<b>'", (
        Section("Answer", (Paragraph("5 < 6 & 7 > 2", role="answer"),)),
        Section("Verdicts", (Section("H: a | b", (BulletList(("x <y>", "z")),), mark="SUPPORTED"),)),
        Section("Effects", (Table(("arm", "note"), (("a|b", "<i>"), ("c", ""))), Figure(png))),
        Section("Caveats", (BulletList((), empty="none"),))))
    md, page = to_markdown(doc), to_html(doc)
    assert md_facts(md) == html_facts(page) == [
        ("h", 1, "Plan 'a<b>'"), ("h", 2, "Answer"), ("p", "5 < 6 & 7 > 2"), ("h", 2, "Verdicts"),
        ("h", 3, "H: a | b — SUPPORTED"), ("li", "x <y>"), ("li", "z"), ("h", 2, "Effects"), ("row", ("arm", "note")),
        ("row", ("a|b", "<i>")), ("row", ("c", "")), ("img", "effect"), ("h", 2, "Caveats"), ("li", "none")]
    assert "<i>" not in page and "src=\"data:image/png;base64," in page
    with pytest.raises(ValueError, match="do not have the header's 2 cells"):
        Table(("a", "b"), (("only one",),))


@pytest.fixture
def correlation_note():
    """A registered extra that adds a paragraph to correlation hypotheses only."""
    @hypothesis_extra("test_correlation_note")
    def note(ctx):
        if ctx.hypothesis.kind != "correlation":
            return []
        return [Paragraph(f"extra for {ctx.hypothesis.name}: {len(ctx.plan.rows)} arms, verdict {ctx.verdict.word}")]
    yield note
    del HYPOTHESIS_EXTRAS["test_correlation_note"]


def _build_both(tmp_path: Path) -> list[tuple[str, str]]:
    """(markdown, HTML) of two real reports: one with a missing arm, a failed run, crashed episodes and a
    correlation hypothesis; one over two tasks (per-task effects and their forest plot)."""
    out = []
    tracker = Tracker.open(default_tracking_uri(tmp_path), "libero-action-ablation", tmp_path / "art")
    parents = [record_plan(tracker, ["H1_practical", "H2_loss_proxy"], {
        "baseline_rdt": {"rates": [0, 0, 0.05], "loss": 1e-5, "nmse_pos": 0.9},
        "fix_minmax": {"rates": [0.8, 0.85, 0.8], "loss": 2e-3, "nmse_pos": 0.1, "crash_first": 2},
        "fix_loss_weight": {"rates": [0.5, 0.5, 0.5], "failed": True}}),
        record_multitask_plan(tracker, {"baseline_rdt": {0: 0.5, 3: 0.5}, "fix_minmax": {0: 0.9, 3: 0.9},
                                        "fix_loss_weight": {0: 1.0, 3: 0.0}})]
    for i, parent in enumerate(parents):
        d = tmp_path / f"r{i}"
        build_report(tracker, parent_run_id=parent, out_dir=d)
        out.append(((d / "report.md").read_text(), (d / "report.html").read_text()))
    return out


def test_markdown_and_html_of_a_real_report_carry_the_same_facts(tmp_path, correlation_note):
    (md, page), (md_mt, page_mt) = _build_both(tmp_path)
    for m, h in ((md, page), (md_mt, page_mt)):
        facts = md_facts(m)
        assert facts == html_facts(h)
        kinds = {f[0] for f in facts}
        assert kinds == {"h", "p", "li", "row", "img"}, kinds
    facts = md_facts(md)
    heads = [f[2] for f in facts if f[0] == "h"]
    # the order: the answer first, verdicts, effects with intervals, arms, caveats last
    assert heads[:3] == ["Plan 't'", "Answer", "Baseline"] and heads[-3:] == ["Effects", "Arms", "Caveats"]
    assert ("li", "Crashed episodes (counted as failures): fix_minmax (6).") in facts
    # the extra sits in its hypothesis's section, after the verdict lines, and only there
    h2 = next(i for i, f in enumerate(facts) if f[0] == "h" and f[2].startswith("H2_loss_proxy: "))
    extra = [i for i, f in enumerate(facts) if f[0] == "p" and f[1].startswith("extra for ")]
    assert len(extra) == 1 and facts[extra[0]][1].startswith("extra for H2_loss_proxy: 3 arms, verdict ")
    assert h2 < extra[0] < facts.index(("h", 2, "Effects"))
    assert "## Per-task effects" in md_mt and ("img", "per_task_forest") in md_facts(md_mt)


@pytest.mark.slow
def test_a_browser_reads_the_same_facts_from_the_html(tmp_path):
    """The HTML as a real browser parses it (its DOM, dumped by headless Chromium) still carries every
    fact of the markdown: no unclosed or misnested tag swallows a row or a line."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (scripts/ci_services.sh installs it)"
    (md, _page), _ = _build_both(tmp_path)
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom",
                          (tmp_path / "r0" / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=180).stdout
    assert html_facts(dom) == md_facts(md), dom[-2000:]
