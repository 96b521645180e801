"""One env step (20 Hz control, cameras off) three ways, side by side, on one core:

    python benchmarks/env_step.py [--suite libero_object] [--task 0] [--steps 60] [--rounds 5]

1. raw physics: mujoco.mj_step x substeps (25) on the env's own model and data, nothing else: the
   floor any env step pays;
2. the stock env: LiberoEnv.step through robosuite's env.step (--set sim.fast=false);
3. the fast env: LiberoEnv.step through ablation.sim.fast_step (sim.fast, the default).

Each round also times the reset before each env's steps (LiberoEnv.reset_to: LIBERO's hard reset, or
the fast env's model reuse, ablation.sim.fast_reset), and the last line prices a whole episode of
--episode-steps steps (a reset plus the steps) both ways.

Each round runs --steps steps of each, interleaved (physics, stock, fast, physics, ...), from the
same init state with the same random actions (the stock and fast episodes are checked to end in the
same state, bit for bit); each one's fastest round is kept, so a burst of load elsewhere on a shared
host slows one round, not the ratio. Time is the process's CPU time (one thread: BLAS is pinned to
1), i.e. steps/s per core; wall-clock figures are printed beside it. The target (issue 28): fast
>= 2.5x the stock env's steps/s, and <= 3x the raw physics cost per step.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core, before numpy loads
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablation.sim.env import make_env  # noqa: E402


def _timed(fn, n: int, setup=None) -> tuple[float, float]:
    """(CPU s, wall s) for fn(0..n-1); setup(i), when given, runs before each call, untimed."""
    cpu = wall = 0.0
    for i in range(n):
        if setup is not None:
            setup(i)
        c0, w0 = time.process_time(), time.perf_counter()
        fn(i)
        cpu, wall = cpu + time.process_time() - c0, wall + time.perf_counter() - w0
    return cpu, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="libero_object")
    ap.add_argument("--task", type=int, default=0)
    ap.add_argument("--steps", type=int, default=60, help="env steps per round and path")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--episode-steps", type=int, default=200,
                    help="steps of the episode priced on the last line (the expert solves libero_object 0 in ~190)")
    args = ap.parse_args()

    stock = make_env(args.suite, args.task, fast=False)
    fast = make_env(args.suite, args.task, fast=True)
    rng = np.random.default_rng(0)
    actions = np.clip(rng.normal(0.0, 0.4, (args.steps, 7)), -1.0, 1.0)
    actions[:, 6] = np.where(np.arange(args.steps) % 30 < 15, -1.0, 1.0)  # open and close the gripper
    init = stock.init_states[0]
    rs = stock.robosuite_env
    substeps = int(rs.control_timestep / rs.model_timestep)

    # Raw physics replays the episode's own states: before each step, untimed, the stock env's
    # state and actuator controls there; timed, the substeps' mj_step (so contacts match the rollout).
    import mujoco

    stock.reset_to(init)
    states, ctrls = [], []
    for a in actions:
        states.append(stock.sim_state())
        stock.step(a)
        ctrls.append(stock.sim.data.ctrl.copy())

    def physics_setup(i):
        stock.sim.set_state_from_flattened(states[i])
        stock.sim.data.ctrl[:] = ctrls[i]

    def physics(_i):
        m, d = stock.sim.model._model, stock.sim.data._data
        for _ in range(substeps):
            mujoco.mj_step(m, d)

    best = {k: (np.inf, np.inf) for k in ("physics", "stock", "fast", "stock_reset", "fast_reset")}
    for r in range(args.rounds):
        best["physics"] = min(best["physics"], _timed(physics, args.steps, physics_setup))
        for name, env in (("stock", stock), ("fast", fast)):
            best[f"{name}_reset"] = min(best[f"{name}_reset"], _timed(lambda _i, env=env: env.reset_to(init), 1))
            best[name] = min(best[name], _timed(lambda i, env=env: env.step(actions[i]), args.steps))
        if not np.array_equal(stock.sim_state(), fast.sim_state()):
            raise SystemExit(f"round {r}: the fast env's state differs from the stock env's: a bug, not a speed-up")
    stock.close()
    fast.close()

    reset_ms = {k: 1e3 * best[f"{k}_reset"][0] for k in ("stock", "fast")}
    ms = {k: 1e3 * best[k][0] / args.steps for k in ("physics", "stock", "fast")}
    wall = {k: 1e3 * best[k][1] / args.steps for k in ("physics", "stock", "fast")}
    load = os.getloadavg()[0]
    print(f"{args.suite} task {args.task}, cameras off, {substeps} substeps of {rs.model_timestep * 1e3:g} ms per "
          f"step; best of {args.rounds} rounds x {args.steps} steps; load average {load:.1f} on "
          f"{os.cpu_count()} CPUs")
    print(f"{'path':<14}{'CPU ms/step':>12}{'steps/s/core':>14}{'wall ms/step':>14}{'x physics':>11}")
    for k, label in (("physics", "raw physics"), ("stock", "stock env"), ("fast", "fast env")):
        print(f"{label:<14}{ms[k]:>12.2f}{1e3 / ms[k]:>14.1f}{wall[k]:>14.2f}{ms[k] / ms['physics']:>11.2f}")
    print(f"fast / stock steps/s: {ms['stock'] / ms['fast']:.2f}x (target >= 2.5x); "
          f"fast cost / physics cost: {ms['fast'] / ms['physics']:.2f}x (target <= 3x); "
          f"stock cost / physics cost: {ms['stock'] / ms['physics']:.2f}x; final states identical")
    n = args.episode_steps
    episode = {k: reset_ms[k] + n * ms[k] for k in ("stock", "fast")}
    print(f"reset CPU ms: stock {reset_ms['stock']:.0f}, fast {reset_ms['fast']:.0f} "
          f"({reset_ms['stock'] / reset_ms['fast']:.1f}x); a {n}-step episode (reset + steps): stock "
          f"{episode['stock'] / 1e3:.2f} s, fast {episode['fast'] / 1e3:.2f} s ({episode['stock'] / episode['fast']:.2f}x), "
          f"raw physics alone {n * ms['physics'] / 1e3:.2f} s")


if __name__ == "__main__":
    main()
