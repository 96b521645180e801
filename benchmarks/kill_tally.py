"""Kill `--plan all` with SIGKILL at random moments, re-run it each time, then check the bookkeeping.

    python benchmarks/kill_tally.py --workdir /tmp/kill_tally [--kills 10] [--seed 0] [--cheap]

Each attempt starts `run_ablation.py --plan all` in its own process group and, after a delay drawn
uniformly from [--min-delay, --max-delay] seconds (counted from the start for the first attempt, from
the moment the demo file exists for the others), kills the whole group with SIGKILL (the plan, its
worker pool and their rollout workers at once: what the OOM killer or a lost node does). After the
last kill, one more invocation runs the plan to the end. Then it checks, from the MLflow store and the
checkpoint folders:

- every spec x seed the plan ran has exactly one run, and it is FINISHED (0 lost, 0 duplicated);
- no plan parent and no child run is left RUNNING (0 stale);
- every run's final bundle loads (`ablation.bundle.load_policy`).

`--cheap` keeps the plan's structure (its arms, seeds, hypotheses, looks, Gate A) and shrinks the work
per run (150 training steps without compile, 40-step episodes) so the ten kills land across every
stage within about a quarter of an hour on 2 cores; the statistics of such a plan are meaningless, its
bookkeeping is not. It prints the tally, one line per attempt, and exits 1 if any check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ablation.bundle import load_policy  # noqa: E402
from ablation.tracking import TAG_KIND, TAG_SEED, TAG_SPEC, Tracker, default_tracking_uri  # noqa: E402

EXPERIMENT = "libero-action-ablation"
CHEAP_SETS = ["train.steps=150", "train.eval_every=75", "train.compile=false", "rollout.max_steps=40"]


def plan_cmd(workdir: Path, sets: list[str]) -> list[str]:
    cmd = [sys.executable, str(REPO / "run_ablation.py"), "--plan", "all", "--profile", "cpu",
           "--workdir", str(workdir), "--json", "-q"]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def finished_runs(workdir: Path) -> int:
    """Children FINISHED so far (what progress each attempt made before its kill)."""
    try:
        tr = Tracker.open(default_tracking_uri(workdir), EXPERIMENT)
        return sum(r.info.status == "FINISHED" for r in tr.find_runs(f"tags.`{TAG_KIND}` = 'spec_run'"))
    except Exception:  # no store yet: the first attempt was killed before it made one
        return 0


def demos_made(workdir: Path) -> bool:
    return any((workdir / "demos").glob("*.hdf5"))


def attempt(workdir: Path, sets: list[str], delay_s: float | None, log: Path, after_demos: bool) -> tuple[str, float]:
    """One invocation; killed delay_s after its start, or after the demo file exists when after_demos
    (None: run to the end). -> (outcome, seconds)."""
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(plan_cmd(workdir, sets), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        clock = None if after_demos else t0
        while proc.poll() is None:
            if clock is None and demos_made(workdir):
                clock = time.time()
            if delay_s is not None and clock is not None and time.time() - clock >= delay_s:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return "killed", time.time() - t0
            time.sleep(0.5)
        return f"exited {proc.returncode}", time.time() - t0


def check(workdir: Path) -> tuple[list[str], dict]:
    """The three invariants -> (problems, counts)."""
    tr = Tracker.open(default_tracking_uri(workdir), EXPERIMENT)
    children = tr.find_runs(f"tags.`{TAG_KIND}` = 'spec_run'")
    parents = tr.find_runs(f"tags.`{TAG_KIND}` = 'plan'")
    per_cell = Counter((r.data.tags.get(TAG_SPEC), r.data.tags.get(TAG_SEED)) for r in children)
    problems = [f"{spec} seed {seed}: {n} runs" for (spec, seed), n in sorted(per_cell.items()) if n != 1]
    problems += [f"{r.data.tags.get(TAG_SPEC)} seed {r.data.tags.get(TAG_SEED)}: {r.info.status}"
                 for r in children if r.info.status != "FINISHED"]
    problems += [f"plan parent {r.info.run_id}: RUNNING" for r in parents if r.info.status == "RUNNING"]
    bundles, bad = 0, []
    for run_dir in sorted((workdir / "checkpoints").glob("*-seed*")):
        steps = sorted(run_dir.glob("checkpoints/step_*"), key=lambda p: int(p.name.split("_")[1]))
        finals = [p for p in steps if (p / "meta.json").is_file()]
        if not finals:
            continue
        try:
            load_policy(finals[-1])
            bundles += 1
        except Exception as e:  # noqa: BLE001 - any failure to load is the finding
            bad.append(f"{finals[-1]}: {type(e).__name__}: {e}")
    problems += bad
    counts = {"cells": len(per_cell), "children": len(children), "finished": sum(r.info.status == "FINISHED" for r in children),
              "running_children": sum(r.info.status == "RUNNING" for r in children),
              "parents": len(parents), "running_parents": sum(r.info.status == "RUNNING" for r in parents),
              "bundles_loaded": bundles, "bundles_failed": len(bad)}
    return problems, counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True, help="a fresh or reused workdir for the plan")
    ap.add_argument("--kills", type=int, default=10, help="SIGKILLs before the final run (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    ap.add_argument("--min-delay", type=float, default=15.0, help="shortest delay before a kill, s")
    ap.add_argument("--max-delay", type=float, default=150.0, help="longest delay before a kill, s")
    ap.add_argument("--cheap", action="store_true", help="shrink the per-run work, keep the plan's structure")
    ap.add_argument("--set", action="append", default=[], metavar="a.b=V", help="extra spec override (repeatable)")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    sets = (CHEAP_SETS if a.cheap else []) + a.set
    rng = random.Random(a.seed)
    rows = []
    for k in range(a.kills):
        delay = rng.uniform(a.min_delay, a.max_delay)
        # The first kill counts from the start (it lands while the demos are made, most likely); the
        # others from the moment the demo file exists, so they spread over training, gates and rollouts.
        outcome, secs = attempt(a.workdir, sets, delay, a.workdir / f"attempt_{k:02d}.log", after_demos=k > 0)
        rows.append((k, f"{delay:.0f}", outcome, f"{secs:.0f}", finished_runs(a.workdir)))
        print(f"attempt {k:2d}: kill after {delay:5.0f} s -> {outcome:10s} ({secs:5.0f} s), "
              f"{rows[-1][-1]} runs FINISHED so far", flush=True)
    outcome, secs = attempt(a.workdir, sets, None, a.workdir / "final.log", after_demos=False)
    print(f"final run: {outcome} ({secs:.0f} s), {finished_runs(a.workdir)} runs FINISHED", flush=True)
    problems, counts = check(a.workdir)
    print("tally: " + json.dumps(counts))
    print(f"killed {sum(r[2] == 'killed' for r in rows)} of {a.kills} attempts; "
          f"{'0 problems' if not problems else str(len(problems)) + ' problems:'}")
    for p in problems:
        print("  " + p)
    return 1 if problems or not outcome.startswith("exited 0") else 0


if __name__ == "__main__":
    sys.exit(main())
