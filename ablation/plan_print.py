"""What a plan says on the console: its header, hypotheses and arms, each run's line, and the time breakdown."""
from __future__ import annotations

import logging
from pathlib import Path

from .arms import ResolvedPlan, RunUnit
from .host import cpu_class, cpu_model, usable_cpus
from .profiles import Profile
from .run import RunResult
from .tracking import ui_command

log = logging.getLogger(__name__)


def announce(rp: ResolvedPlan, profile: Profile, workdir: Path, uri: str, experiment: str) -> None:
    """The plan's first lines: its runs, workdir, MLflow store and UI command, then its hypotheses and arms."""
    n = len(rp.units())
    log.info(f"[plan] {rp.plan.name}: {len(rp.arms)} arm(s) x seeds{' x tasks' if rp.multitask else ''} = {n} run(s), "
             f"profile {profile.name}")
    log.info(f"[plan] workdir {workdir}")
    log.info(f"[plan] MLflow store {uri}, experiment '{experiment}'")
    log.info(f"[plan] open the UI with:  {ui_command(uri)}")
    describe_plan(rp)


def describe_plan(rp: ResolvedPlan) -> None:
    """Hypotheses, their arms and controls, and the seeds (what --dry-run shows first)."""
    for h in rp.hypotheses:
        log.info(f"[plan] hypothesis {h.name}: {h.title}")
        for c in h.comparisons:
            state = "" if c.arm in rp.arms and c.control in rp.arms else \
                f"  (left out: {rp.skipped.get(c.arm) or rp.skipped.get(c.control) or 'not selected'})"
            log.info(f"         {c.arm} vs {c.control} (expect {c.expect}){state}")
        if h.correlation is not None:
            log.info(f"         rank correlation of {h.correlation.x} with {h.correlation.y} over every arm x seed")
    seeds = sorted({s for a in rp.arms.values() for s in a.seeds})
    log.info(f"[plan] arms: {', '.join(rp.arms)}; seeds {seeds}")
    tasks = sorted({f"{a.spec.data.suite} {list(a.tasks)}" for a in rp.arms.values() if a.tasks is not None})
    if tasks:
        log.info(f"[plan] tasks: {'; '.join(tasks)} (each arm x seed x task is its own run; every comparison is "
                 "pooled over the tasks, tasks a random factor)")
    else:  # a single-task plan: say which task, since plans such as rotation move off the base task
        single = sorted({f"{a.spec.data.suite} task {a.spec.data.task}" for a in rp.arms.values()})
        if single:
            log.info(f"[plan] task: {'; '.join(single)} (data.suite, data.task)")
    if rp.plan.episodes:
        e = rp.plan.episodes
        log.info(f"[plan] episodes per arm x seed: looks at {list(e.looks)}, alpha {e.alpha} (Holm across "
                 f"comparisons, {e.spending} spending across looks)")


def print_timing(t: dict) -> None:
    parts = [f"set-up {t.get('setup_s', 0):.0f} s", f"demos {t.get('demos_s', 0):.0f} s",
             f"gate A {t.get('gate_worker_s', 0):.0f} worker-s",
             f"training {t.get('training_worker_s', 0):.0f} worker-s",
             f"rollouts {t.get('rollouts_worker_s', 0):.0f} worker-s",
             f"report {t.get('report_s', 0):.0f} s"]
    # The CPU beside the figures: worker-seconds differ several-fold between CPU classes (ablation.host).
    log.info(f"[plan] time: {', '.join(parts)}; runs {t.get('runs_wall_s', 0):.0f} s wall; "
             f"plan {t.get('wall_s', 0):.0f} s wall; on {cpu_model()} ({cpu_class()}, {usable_cpus()} CPUs)")


def task_text(u: RunUnit) -> str:
    """`  task K` for a run of a multi-task plan, else nothing."""
    return "" if u.task is None else f"  task {u.task}"


def print_results(results: list[RunResult], names: dict[str, str] | None = None) -> None:
    """One line per run; `names` (run id -> run name) for multi-task plans, whose runs share arm and seed."""
    for r in sorted(results, key=lambda r: ((names or {}).get(r.run_id, r.spec_name), r.seed)):
        line = f"  {(names or {}).get(r.run_id, r.spec_name):<26} seed {r.seed}  {r.status:<8}"
        if r.status == "FINISHED":
            sr = r.metrics.get("eval/success_rate")
            n = r.metrics.get("eval/episodes")
            line += f"  success {sr:.2f} over {n:.0f}" if sr is not None and n else ""
            line += f"  ({r.seconds:.0f} s)"
        elif r.reason:
            line += f"  {r.reason}"
        print(line)
