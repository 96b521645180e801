"""How often should a rollout replan? Re-roll a plan's trained bundles at other `rollout.replan_every`
values, on the same init states and sampling seeds, and compare success per seed (paired).

    .venv/bin/python benchmarks/replan.py --workdir workdir --arm fix_minmax --replan 8 4 2 --episodes 20

Nothing is trained: every bundle of the arm under <workdir>/checkpoints (its newest step) is rolled out
from benchmark init states 0..episodes-1 with the run's own seed, once per replan value, one process,
4 episodes in lockstep (the CPU profile's batch). Prints successes per seed and value, the totals, and
per value how many seeds it beat, tied and lost against the first value given. Nothing is logged to
MLflow: this probes the protocol, it does not add runs to a study.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ablation.bundle import latest_bundle, load_policy  # noqa: E402
from ablation.closed_loop import run_closed_loop  # noqa: E402
from ablation.spec import with_overrides  # noqa: E402
from ablation.train import configure_torch  # noqa: E402


def arm_bundles(workdir: Path, arm: str) -> list[Path]:
    """The newest step_N bundle of each run of `arm` in the workdir, in seed order."""
    runs = [r for r in (workdir / "checkpoints").glob(f"{arm}-seed*") if r.is_dir()]
    out = [b for b in map(latest_bundle, runs) if b is not None]
    return sorted(out, key=lambda b: int(b.parents[1].name.split("-seed")[1].split("-")[0]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True, help="a workdir whose plan trained the arm")
    ap.add_argument("--arm", required=True, help="the arm's spec name, e.g. fix_minmax")
    ap.add_argument("--replan", type=int, nargs="+", default=[8, 4], help="replan_every values; the first is the reference")
    ap.add_argument("--episodes", type=int, default=20, help="init states 0..N-1 per bundle")
    ap.add_argument("--batch", type=int, default=4, help="episodes in lockstep in this process")
    a = ap.parse_args(argv)
    bundles = arm_bundles(a.workdir, a.arm)
    if not bundles:
        ap.error(f"--workdir {a.workdir}: no trained bundle of arm {a.arm} under checkpoints/; run its plan first")
    configure_torch(1)
    rows: dict[str, dict[int, int]] = {}
    for b in bundles:
        spec = load_policy(b).spec
        name = b.parents[1].name
        rows[name] = {}
        for k in a.replan:
            t0 = time.time()
            res = run_closed_loop(b, with_overrides(spec, [f"rollout.replan_every={k}"]), spec.train.seed,
                                  list(range(a.episodes)), batch=a.batch)
            rows[name][k] = sum(bool(e.success) for e in res.episodes)
            print(f"{name} replan {k}: {rows[name][k]}/{a.episodes} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    print(f"\n{a.arm}, init states 0..{a.episodes - 1}, successes per seed")
    print("| run | " + " | ".join(f"replan {k}" for k in a.replan) + " |")
    print("|---|" + "---|" * len(a.replan))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(str(r[k]) for k in a.replan) + " |")
    n = a.episodes * len(rows)
    print("| total | " + " | ".join(f"{sum(r[k] for r in rows.values())}/{n} = "
                                   f"{100 * sum(r[k] for r in rows.values()) / n:.1f}%" for k in a.replan) + " |")
    ref = a.replan[0]
    for k in a.replan[1:]:
        d = [r[k] - r[ref] for r in rows.values()]
        print(f"replan {k} vs {ref}, per seed: {sum(x > 0 for x in d)} better, {sum(x == 0 for x in d)} tied, "
              f"{sum(x < 0 for x in d)} worse")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
