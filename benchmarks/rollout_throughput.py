"""Rollout throughput on this machine: warm worker pools of 1 and N, unbatched and batched policy calls.

    python benchmarks/rollout_throughput.py [--workers 2] [--episodes 10] [--max-steps 120] [--batch 4]
                                            [--repeats 2] [--checkpoint DIR] [--cameras]

1. Pool start: spawn, imports and env creation of a pool of 1 and of N workers, printed apart
   (a plan or tuning study pays it once).
2. Scripted expert (policy cost ~0: the simulator's own scaling): env steps/s of the same episodes
   in the warm pools, N workers vs 1, pool start excluded.
3. A diffusion policy, a 10-episode evaluation: --checkpoint DIR, or else a `small` model (the CPU
   profile's size) trained for a few steps on 2 expert demos (cached under the temp dir); its
   actions are poor, which does not matter for speed. In both pools, unbatched and with `--batch`
   episodes per worker in lockstep: env steps/s, the N-vs-1 ratio, policy chunks per second of
   policy time and the policy's share of wall time.
4. --cameras: the expert with two 128x128 cameras (slow on CPU; off by default).

Each comparison runs --repeats times, the pools interleaved (1, N, 1, N, ...), and keeps each pool's
fastest run: a burst of load elsewhere on a shared host then slows one repeat, not the ratio.
The machine's load is printed first: on shared cores the ratios move with what else runs.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablation.builtin_policies import ExpertPolicy  # noqa: E402
from ablation.rollout_records import RolloutResult  # noqa: E402
from ablation.rollout_pool import RolloutPool  # noqa: E402

SUITE, TASK = "libero_object", 0


def quick_checkpoint(cache: Path) -> str:
    """A `small` diffusion policy trained 20 steps on 2 expert demos (both cached in `cache`)."""
    from ablation.sim.demos import generate_demos
    from ablation.spec import resolve_spec, spec_path
    from ablation.train import train

    demos = generate_demos(SUITE, TASK, n=2, out=cache / "demos.hdf5", seed=0, progress=False)
    spec = resolve_spec(spec_path("fix_minmax"), ["model.size=small", "train.steps=20", "train.batch_size=32",
                                                  "train.num_threads=1", "train.eval_every=1000",
                                                  "train.checkpoint_every=1000", "train.warmup_steps=5"])
    # Keyed by the spec's hash: a cache left by another version of the spec is not resumed.
    return str(train(spec, demos, cache / f"run-{spec.hash()}", progress=False).checkpoint_dir)


def line(label: str, r: RolloutResult) -> str:
    calls = sum(e.policy_calls for e in r.episodes)
    policy_s = sum(e.policy_s for e in r.episodes)
    errors = f", {len(r.errors)} crashed" if r.errors else ""
    # occupancy: episode work per wall second (~N when the pool keeps N workers busy); the env-only rate
    # per process shows how much CPU each process got (it drops when other jobs share the cores).
    occupancy = sum(e.wall_s for e in r.episodes) / max(r.wall_s, 1e-9)
    env_rate = sum(e.env_steps for e in r.episodes) / max(sum(e.env_s for e in r.episodes), 1e-9)
    return (f"  {label:10s} {r.env_steps:5d} steps in {r.wall_s:6.1f} s = {r.env_steps_per_s:6.1f} env steps/s "
            f"(occupancy {occupancy:.2f}, per process {env_rate:5.1f} env steps/s of env time); "
            f"policy {calls / max(policy_s, 1e-9):7.1f} chunks/s, {r.policy_time_share:5.1%} of time{errors}")


def compare(title: str, pools: dict[int, RolloutPool], run, repeats: int = 1) -> dict[int, RolloutResult]:
    """Each pool's fastest of `repeats` interleaved runs (the same episodes every time)."""
    print(title, flush=True)
    res: dict[int, RolloutResult] = {}
    for r in range(repeats):
        for n, pool in pools.items():
            got = run(pool)
            label = f"{n} worker{'s' if n > 1 else ''}" + (f" #{r + 1}" if repeats > 1 else "")
            print(line(label, got), flush=True)
            if n not in res or got.env_steps_per_s > res[n].env_steps_per_s:
                res[n] = got
    one, many = res[min(res)], res[max(res)]
    best = f" (fastest of {repeats} each)" if repeats > 1 else ""
    print(f"  -> {max(res)} vs {min(res)} workers: {many.env_steps_per_s / max(one.env_steps_per_s, 1e-9):.2f}x "
          f"env steps/s (warm pools, start excluded){best}", flush=True)
    return res


def same_outcomes(a: RolloutResult, b: RolloutResult) -> str:
    """Whether two runs gave the same per-episode outcomes, and the largest action-mean difference."""
    same = [(x.success, x.steps) == (y.success, y.steps) for x, y in zip(a.episodes, b.episodes)]
    diff = max((abs(u - v) for x, y in zip(a.episodes, b.episodes) for u, v in zip(x.action_mean, y.action_mean)),
               default=0.0)
    return f"{sum(same)}/{len(same)} episodes with the same (success, length), max |action mean diff| {diff:.1e}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=120, help="policy steps per episode (after 10 wait steps)")
    p.add_argument("--replan-every", type=int, default=8)
    p.add_argument("--batch", type=int, default=4, help="episodes per worker in lockstep for the batched runs")
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs per pool; the fastest is kept")
    p.add_argument("--checkpoint", default=None, help="a checkpoint bundle to evaluate (default: a quick one)")
    p.add_argument("--cameras", action="store_true", help="also measure the expert with two 128x128 cameras")
    a = p.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}: load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores", flush=True)
    ckpt = a.checkpoint or quick_checkpoint(Path(tempfile.gettempdir()) / "ablation_rollout_bench")
    eps = list(range(a.episodes))
    kw = dict(replan_every=a.replan_every, max_steps=a.max_steps, seed=0)

    pools: dict[int, RolloutPool] = {}
    try:
        for n in sorted({1, a.workers}):
            t0 = time.perf_counter()
            pools[n] = RolloutPool(n)
            pools[n].warm(SUITE, TASK, envs=a.batch)
            print(f"pool start, {n} worker(s): {time.perf_counter() - t0:.1f} s (spawn, imports, {a.batch} env(s) "
                  "each)", flush=True)

        expert = functools.partial(ExpertPolicy, SUITE, TASK)
        compare(f"scripted expert, {a.episodes} episodes:", pools, lambda pool: pool.run(expert, SUITE, TASK, eps, **kw),
                a.repeats)

        from ablation.bundle_policy import load_rollout_policy

        policy = functools.partial(load_rollout_policy, ckpt)
        plain = compare(f"diffusion policy {ckpt}, {a.episodes} episodes, unbatched:", pools,
                        lambda pool: pool.run(policy, SUITE, TASK, eps, **kw), a.repeats)
        batched = compare(f"same, batched ({a.batch} episodes per worker in lockstep):", pools,
                          lambda pool: pool.run(policy, SUITE, TASK, eps, batch=a.batch, **kw), a.repeats)
        n, m = min(plain), max(plain)
        print(f"  unbatched, {n} vs {m} workers: {same_outcomes(plain[n], plain[m])}")
        print(f"  batched vs unbatched ({n} worker): {same_outcomes(plain[n], batched[n])}")

        if a.cameras:
            for pool in pools.values():
                pool.warm(SUITE, TASK, images=True)
            cam_eps = eps[:max(2, a.workers)]
            compare(f"scripted expert, two 128x128 cameras, {len(cam_eps)} episodes of 30 steps:", pools,
                    lambda pool: pool.run(expert, SUITE, TASK, cam_eps, images=True, **{**kw, "max_steps": 30}))
    finally:
        for pool in pools.values():
            pool.close()
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
