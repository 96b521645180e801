"""Rollout throughput on this machine: env steps/s with 1 and 2 workers, cameras off and on,
the 2-vs-1 ratio and the policy's share of wall time, all measured in one run.

    python benchmarks/rollout_throughput.py [--episodes 4] [--max-steps 120] [--camera-steps 30]

Wall time includes env creation in each worker (~4 s), as a real evaluation pays it too.
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablation.rollout import ExpertPolicy, run_rollouts  # noqa: E402


def measure(label, workers, episodes, max_steps, images):
    r = run_rollouts(functools.partial(ExpertPolicy, "libero_object", 0), "libero_object", 0,
                     list(range(episodes)), replan_every=8, workers=workers, max_steps=max_steps, images=images)
    env_only = sum(e.env_steps for e in r.episodes) / max(sum(e.env_s for e in r.episodes), 1e-9)
    print(f"{label:28s} workers={workers} episodes={episodes:2d} steps={r.env_steps:5d} wall={r.wall_s:6.1f}s "
          f"-> {r.env_steps_per_s:6.1f} env steps/s (per-process env-only {env_only:6.1f}/s), "
          f"policy share {r.policy_time_share:.1%}", flush=True)
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=120)
    p.add_argument("--camera-episodes", type=int, default=2)
    p.add_argument("--camera-steps", type=int, default=30)
    a = p.parse_args()
    res = {}
    res[("low", 1)] = measure("no cameras", 1, a.episodes, a.max_steps, False)
    res[("low", 2)] = measure("no cameras", 2, a.episodes, a.max_steps, False)
    res[("cam", 1)] = measure("2 cameras 128x128", 1, a.camera_episodes, a.camera_steps, True)
    res[("cam", 2)] = measure("2 cameras 128x128", 2, a.camera_episodes, a.camera_steps, True)
    for k in ("low", "cam"):
        r1, r2 = res[(k, 1)], res[(k, 2)]
        print(f"{'no cameras' if k == 'low' else 'cameras'}: 2-vs-1 worker throughput ratio "
              f"{r2.env_steps_per_s / max(r1.env_steps_per_s, 1e-9):.2f}")
    print(f"policy share of wall time (scripted expert, 1 worker, no cameras): {res[('low', 1)].policy_time_share:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
