"""Findings of the doctor, their ranking, and the report (text and JSON)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

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
    "gate_a": 9.5, "suite_task": 9.8, "sim": 9.9,
}


@dataclass
class Finding:
    id: str
    severity: str          # serious | warning | info
    title: str
    evidence: str          # in numbers
    fix: str = ""
    next: str = ""         # the spec or plan to run next
    numbers: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} not in {SEVERITIES}")

    @property
    def rank(self) -> tuple:
        return (SEVERITIES.index(self.severity), ORDER.get(self.id, ORDER.get(self.id.split(".")[0], 9.0)))

    def to_dict(self) -> dict:
        return asdict(self)


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

    def ranked(self) -> list[Finding]:
        return [f for _, f in sorted(enumerate(self.findings), key=lambda p: (p[1].rank, p[0]))]

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}

    @property
    def exit_code(self) -> int:
        return 1 if self.counts["serious"] else 0

    @property
    def top(self) -> Finding | None:
        r = self.ranked()
        return r[0] if r else None

    def next_step(self) -> str:
        if self.exit_code:
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
            lines.append(f"{f.severity.upper():<8} {f.id}: {f.title}")
            lines.append(f"         evidence: {f.evidence}")
            if f.fix:
                lines.append(f"         fix: {f.fix}")
            if f.next:
                lines.append(f"         next: {f.next}")
        c = self.counts
        lines += ["", f"{c['serious']} serious, {c['warning']} warning(s), {c['info']} info -> exit {self.exit_code}",
                  f"next: {self.next_step()}"]
        return "\n".join(lines)
