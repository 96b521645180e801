"""A new process's first env of a task, three ways, side by side (each in its own fresh interpreter):

    python benchmarks/env_build.py [--suite libero_object] [--task 0] [--rounds 3]

1. stock (`sim.fast=false`): robosuite compiles the scene at construction, and again at the first reset;
2. fast, compiled-scene cache cold (`ablation/sim/model_cache.py`): the fast env compiles once and
   writes the compiled model to the cache;
3. fast, cache warm: the fast env loads that model.

Every rollout worker, plan job, demo worker and CLI command that steps the simulator is a new process and
pays this once per task. Each child process reports the CPU seconds of `make_env` plus the first
`reset_to` (imports excluded, paid before the clock starts); each way's fastest round is kept, and the
ways alternate within a round, so a burst of load elsewhere slows one round, not the ratio. The cache
lives in a temporary folder here, never the user's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import json, sys, time
import numpy as np
from ablation.sim.env import make_env
from ablation.sim import model_cache
from ablation.sim.libero_setup import ensure_libero
ensure_libero()
import robosuite, libero.libero.envs  # imports before the clock
suite, task, fast = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
t0 = time.process_time()
env = make_env(suite, task, fast=fast)
np.random.seed(0)
env.reset_to(env.init_states[0])
print(json.dumps({"cpu_s": time.process_time() - t0, **model_cache.STATS}))
"""


def child(suite: str, task: int, fast: bool, cache: Path) -> dict:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", CHILD, suite, str(task), "1" if fast else "0"], cwd=REPO, env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="libero_object")
    ap.add_argument("--task", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    best: dict[str, float] = {}
    for r in range(a.rounds):
        with tempfile.TemporaryDirectory(prefix="env-build-") as d:
            cache = Path(d)
            for way, fast in (("stock", False), ("fast, cache cold", True), ("fast, cache warm", True)):
                res = child(a.suite, a.task, fast, cache)
                expect = {"stock": 0, "fast, cache cold": 0, "fast, cache warm": 1}[way]
                if res["hits"] != expect:
                    raise SystemExit(f"{way}: expected {expect} cache hit(s), got {res}")
                best[way] = min(best.get(way, float("inf")), res["cpu_s"])
                print(f"round {r + 1} {way:17s} {res['cpu_s']:.2f} CPU-s", flush=True)
    s, cold, warm = best["stock"], best["fast, cache cold"], best["fast, cache warm"]
    print(f"\n{a.suite} {a.task}, first env + first reset in a new process (fastest of {a.rounds}, CPU-s): "
          f"stock {s:.2f}, fast cache cold {cold:.2f}, fast cache warm {warm:.2f}; "
          f"warm / cold {cold / warm:.2f}x, warm / stock {s / warm:.2f}x")


if __name__ == "__main__":
    main()
