"""What Ray adds: one tiny plan's wall time with the local executor (process pool) and with the Ray
executor (a Ray instance started on this machine by the plan), in one run.

    .venv/bin/python benchmarks/executor_overhead.py                  # 1 spec x 2 seeds, --jobs 2
    .venv/bin/python benchmarks/executor_overhead.py --seeds 0,1,2,3 --set train.steps=200

Each phase is a fresh `run_ablation.py --plan` process with its own workdir and sqlite MLflow store (so no
run is skipped), on the same demo file, made once beforehand and copied in (not timed). The figures:
  wall        spawn of the driver -> its exit (imports, Ray start-up, report included)
  runs        the plan's own `runs_wall_s`: from the plan's start to the last run's end, minus demos
              (the executor's start-up, Ray's included, and the runs)
  worker-s    training + rollout seconds summed over the runs (what the runs themselves cost)
The budget is tiny, so start-up weighs far more than in a real plan; on 2 shared cores the ratio moves
with whatever else runs (the load is printed first).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEC = "experiments/fix_minmax.yaml"
TINY = ["data.n_demos=2", "model.size=tiny", "train.steps=40", "train.eval_every=20", "train.log_every=10",
        "train.batch_size=16", "rollout.episodes=1", "rollout.max_steps=40", "data.action_chunk=8"]


def phase(executor: str, plan: Path, workdir: Path, jobs: int, log: Path) -> dict:
    cmd = [sys.executable, "run_ablation.py", "--plan", str(plan), "--profile", "cpu", "--gate-episodes", "0",
           "--workdir", str(workdir), "--jobs", str(jobs), "--executor", executor, "--json"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.time()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.time() - t0
    text = log.read_text(errors="replace")
    if rc != 0:
        raise SystemExit(f"[bench] {executor} plan exited {rc}; log {log}:\n{text[-3000:]}")
    out = json.loads(text[text.rindex('\n{\n "parent_run_id"') + 1:])
    t = out["timing"]
    return {"wall_s": wall, "runs_s": t.get("runs_wall_s", 0.0),
            "worker_s": t.get("training_worker_s", 0.0) + t.get("rollouts_worker_s", 0.0),
            "statuses": sorted(r["status"] for r in out["results"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds of the one spec (runs = seeds)")
    p.add_argument("--jobs", type=int, default=2, help="local pool size (Ray: the machine's CPUs decide)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="a.b.c=VALUE")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores)")
    a = p.parse_args(argv)
    try:
        import ray  # noqa: F401
    except ImportError:
        raise SystemExit('[bench] needs Ray: pip install -e ".[cluster]"') from None
    import yaml

    from ablation.spec import resolve_spec
    from ablation.workdir import ensure_demos

    print("[bench] load average %.2f %.2f %.2f, %d CPUs" % (*os.getloadavg(), os.cpu_count() or 0))
    root = Path(tempfile.mkdtemp(prefix="executor-overhead-"))
    try:
        sets = TINY + a.sets
        seeds = [int(s) for s in a.seeds.split(",")]
        plan = root / "plan_overhead.yaml"
        plan.write_text(yaml.safe_dump({"seeds": seeds, "set": sets, "entries": [str(REPO / SPEC)]}))
        t0 = time.time()
        seed_wd = root / "demos_only"
        demo = ensure_demos(resolve_spec(REPO / SPEC, ["data.images=false", *sets]), seed_wd, 0)
        print(f"[bench] demos ready in {time.time() - t0:.0f} s (not timed): {demo.name}")
        res = {}
        for ex in ("local", "ray"):
            wd = root / f"wd_{ex}"
            shutil.copytree(seed_wd / "demos", wd / "demos")
            res[ex] = r = phase(ex, plan, wd, a.jobs, root / f"{ex}.log")
            print(f"[bench] {ex:<5}  wall {r['wall_s']:6.1f} s   runs {r['runs_s']:6.1f} s   "
                  f"worker-s {r['worker_s']:6.1f}   runs {r['statuses']}")
        lo, ra = res["local"], res["ray"]
        print(f"[bench] {len(seeds)} run(s): ray / local wall = {ra['wall_s'] / lo['wall_s']:.2f} "
              f"(+{ra['wall_s'] - lo['wall_s']:.1f} s); runs = {ra['runs_s'] / max(lo['runs_s'], 1e-9):.2f} "
              f"(+{ra['runs_s'] - lo['runs_s']:.1f} s)")
    finally:
        if a.keep:
            print(f"[bench] kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
