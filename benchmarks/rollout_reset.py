"""Closed-loop episodes with LIBERO's hard reset vs the fast env's model reuse, in one run:

    python benchmarks/rollout_reset.py [--suite libero_object] [--task 0] [--episodes 10] [--rounds 2]

The scripted expert (policy cost ~0, so the env is what is timed) runs the benchmark's init states
0..episodes-1 through the rollout runner in this process (one worker, the fast env step), once with
`ablation.sim.fast_reset` installed (the default) and once with it taken out, interleaved per round;
each way's fastest round is kept. Prints CPU seconds per episode both ways and their ratio, and
checks that every episode's outcome, length and action statistics are identical.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core, before numpy loads
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablation.builtin_policies import ExpertPolicy  # noqa: E402
from ablation.rollout_envs import close_cached_envs, warm_envs  # noqa: E402
from ablation.rollout_pool import run_rollouts  # noqa: E402
from ablation.sim import fast_reset  # noqa: E402


def _episodes(args, reuse: bool):
    """One pass over the init states with a fresh cached env (made untimed); the runner switches it to
    the fast step, which installs the model reuse unless `reuse` is off."""
    install = fast_reset.ModelReuse.install
    if not reuse:
        fast_reset.ModelReuse.install = lambda self: self
    try:
        warm_envs(args.suite, args.task)
        c0, w0 = time.process_time(), time.perf_counter()
        res = run_rollouts(ExpertPolicy, args.suite, args.task, list(range(args.episodes)), replan_every=1,
                           max_steps=args.max_steps, fast=True)
        return time.process_time() - c0, time.perf_counter() - w0, res
    finally:
        fast_reset.ModelReuse.install = install
        close_cached_envs()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="libero_object")
    ap.add_argument("--task", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    best: dict[bool, tuple] = {}
    outcomes: dict[bool, list] = {}
    for _ in range(args.rounds):
        for reuse in (False, True):
            cpu, wall, res = _episodes(args, reuse)
            outcomes[reuse] = [(e.episode, e.success, e.steps, e.action_mean, e.action_std, e.error)
                               for e in res.episodes]
            if reuse not in best or cpu < best[reuse][0]:
                best[reuse] = (cpu, wall, sum(e.steps for e in res.episodes))
    if outcomes[False] != outcomes[True]:
        raise SystemExit("episode outcomes differ between the two resets: a bug, not a speed-up")
    n = args.episodes
    (c0, w0, s0), (c1, w1, s1) = best[False], best[True]
    print(f"{args.suite} task {args.task}: the scripted expert from init states 0..{n - 1}, one process, fast env "
          f"step; best of {args.rounds} rounds; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"hard reset (robosuite's): {c0 / n:.2f} CPU s/episode ({w0 / n:.2f} wall), {s0 / c0:.0f} steps per CPU s")
    print(f"fast reset (model reuse): {c1 / n:.2f} CPU s/episode ({w1 / n:.2f} wall), {s1 / c1:.0f} steps per CPU s")
    wins = sum(o[1] for o in outcomes[True])
    print(f"fast / hard episodes per CPU s: {c0 / c1:.2f}x; outcomes identical ({wins}/{n} successes, "
          f"{s1} steps either way)")


if __name__ == "__main__":
    main()
