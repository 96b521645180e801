"""Findings of the doctor, their ranking, their stable codes, and the report (text and JSON)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

SEVERITIES = ("serious", "warning", "info")
SMOKE_PLAN = "experiments/plans/smoke.yaml"
ALL_PLAN = "experiments/plans/all.yaml"

# Rank of each check within a severity: domain.md section 5 order (how often a pitfall appears and
# what it costs); the specific cause comes before Gate A, which only confirms that something is wrong.
ORDER = {
    "input": 0.0,
    "gripper.range": 1.0, "gripper.sign": 1.1,
    "stats.mismatch": 2.0, "stats.task": 2.1, "openloop.pos_step": 2.2, "openloop.std_ratio": 2.3,
    "openloop.clip": 2.4, "openloop": 2.5, "spec.task": 2.6,
    "actions.kind": 3.0, "roundtrip": 3.1,
    "alignment.convention": 4.0, "alignment.noop": 4.1,
    "scale.share": 4.5, "scale.mismatch": 4.6, "scale.dilution": 4.7, "scale.constant": 4.8, "scale": 4.9,
    "start_state": 6.0, "versions": 7.0, "images.orientation": 8.0, "images.blank": 8.5,
    "gate_a": 9.5, "suite_task": 9.8, "sim": 9.9, "spec": 9.95,
}

# Stable finding codes, for CI filters and docs: a code never changes meaning and is never reused.
# D = the data file alone, S = a spec on the file, C = a checkpoint on the file, R = replay in the
# simulator. A finding id not listed here is a bug (tests/test_doctor.py checks every id emitted).
CODES = {
    "gripper.range": "D101", "gripper.sign": "D102",
    "alignment.convention": "D201", "alignment.noop": "D202",
    "actions.kind": "D301",
    "images.blank": "D401", "images.orientation": "D402",
    "versions": "D501", "suite_task": "D601", "input": "D001",
    "spec": "S001", "spec.task": "S101",
    "scale": "S200", "scale.share": "S201", "scale.mismatch": "S202", "scale.dilution": "S203",
    "scale.constant": "S204", "roundtrip": "S301",
    "stats.mismatch": "C101", "stats.task": "C102",
    "openloop": "C200", "openloop.std_ratio": "C201", "openloop.pos_step": "C202", "openloop.clip": "C203",
    "sim": "R001", "gate_a": "R101", "start_state": "R201",
}
MAX_WHERE_DEMOS = 8    # demos named per finding (the count of the rest is given)
MAX_WHERE_STEPS = 12   # steps named per demo


def where_steps(names: list[str], masks: list[np.ndarray]) -> list[dict]:
    """[{demo, steps, n}] for the demos whose mask has any True step (steps: the first few)."""
    out = []
    for name, m in zip(names, masks):
        idx = np.flatnonzero(np.asarray(m, bool))
        if idx.size:
            out.append({"demo": name, "steps": [int(i) for i in idx[:MAX_WHERE_STEPS]], "n": int(idx.size)})
    return out


def where_demos(names: list[str]) -> list[dict]:
    """Whole demos (the finding is about each of these demos as a whole, not single steps)."""
    return [{"demo": n, "steps": None, "n": None} for n in names]


def format_where(where: list[dict]) -> str:
    if not where:
        return "the whole file"
    parts = []
    for w in where[:MAX_WHERE_DEMOS]:
        if w.get("steps") is None:
            parts.append(f"{w['demo']} (all steps)")
        else:
            more = f" ... ({w['n']} steps)" if w["n"] > len(w["steps"]) else ""
            parts.append(f"{w['demo']} step{'s' if w['n'] > 1 else ''} {', '.join(map(str, w['steps']))}{more}")
    if len(where) > MAX_WHERE_DEMOS:
        parts.append(f"and {len(where) - MAX_WHERE_DEMOS} more demos")
    return "; ".join(parts)


@dataclass
class Finding:
    id: str
    severity: str          # serious | warning | info
    title: str
    evidence: str          # in numbers
    fix: str = ""
    next: str = ""         # the spec or plan to run next
    numbers: dict = field(default_factory=dict)
    where: list[dict] = field(default_factory=list)  # [{demo, steps (None: all), n}]; [] = the whole file

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} not in {SEVERITIES}")

    @property
    def code(self) -> str:
        return CODES.get(self.id, CODES.get(self.id.split(".")[0], "X000"))

    @property
    def rank(self) -> tuple:
        return (SEVERITIES.index(self.severity), ORDER.get(self.id, ORDER.get(self.id.split(".")[0], 9.0)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["code"] = self.code
        return d


@dataclass
class DoctorReport:
    data: str
    suite: str | None
    task: int | None
    spec: str
    checkpoint: str | None
    n_demos: int
    n_steps: int
    findings: list[Finding]
    fail_on: str = "serious"   # the lowest severity that makes the exit code 1 ("never": always 0)

    def ranked(self) -> list[Finding]:
        return [f for _, f in sorted(enumerate(self.findings), key=lambda p: (p[1].rank, p[0]))]

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}

    @property
    def exit_code(self) -> int:
        if self.fail_on == "never":
            return 0
        gate = SEVERITIES[:SEVERITIES.index(self.fail_on) + 1]
        return 1 if any(self.counts[s] for s in gate) else 0

    @property
    def top(self) -> Finding | None:
        r = self.ranked()
        return r[0] if r else None

    def next_step(self) -> str:
        if self.counts["serious"]:
            return "fix the serious findings first (top one first), then run the doctor again"
        return (f"nothing serious: run_ablation.py --plan smoke --set data.demo_file={self.data} "
                f"({SMOKE_PLAN}), then --plan all ({ALL_PLAN})")

    def to_dict(self) -> dict:
        return {"data": self.data, "suite": self.suite, "task": self.task, "spec": self.spec,
                "checkpoint": self.checkpoint, "n_demos": self.n_demos, "n_steps": self.n_steps,
                "counts": self.counts, "exit_code": self.exit_code, "next": self.next_step(),
                "findings": [f.to_dict() for f in self.ranked()]}

    def text(self) -> str:
        where = f"{self.suite} task {self.task}" if self.suite is not None else "suite/task unknown"
        lines = [f"doctor: {self.data} ({where}, {self.n_demos} demos, {self.n_steps} steps); spec {self.spec}"
                 + (f"; checkpoint {self.checkpoint}" if self.checkpoint else "")]
        for f in self.ranked():
            lines.append("")
            lines.append(f"{f.severity.upper():<8} {f.code} {f.id}: {f.title}")
            lines.append(f"         evidence: {f.evidence}")
            if f.severity != "info":
                lines.append(f"         where: {format_where(f.where)}")
            if f.fix:
                lines.append(f"         fix: {f.fix}")
            if f.next:
                lines.append(f"         next: {f.next}")
        c = self.counts
        lines += ["", f"{c['serious']} serious, {c['warning']} warning(s), {c['info']} info -> exit {self.exit_code}",
                  f"next: {self.next_step()}"]
        return "\n".join(lines)
