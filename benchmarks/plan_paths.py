"""The fast env step against the stock one on a whole plan: two workdirs that ran the same plan and seeds,
one of them with `--set sim.fast=false`. Nothing is re-run; both are read from their MLflow stores.

    .venv/bin/python run_ablation.py --plan all --seeds 0,1,2 --workdir /tmp/stock --set sim.fast=false
    .venv/bin/python benchmarks/plan_paths.py --fast workdir --stock /tmp/stock [--plan all]

Prints, side by side in one run: the plans' time breakdowns (wall, demos, Gate A, training, rollouts),
rollout worker-seconds per episode and their ratio, whether the demo files hold the same arrays, and
whether every (arm, seed, init state) episode that both ran had the same outcome. Runs of seeds that only
one side ran are left out of the episode comparison (the fast plan may have run more seeds).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ablation.recorded_plan import read_plan  # noqa: E402
from ablation.tracking import Tracker, default_tracking_uri  # noqa: E402

TIMES = (("wall_s", "plan wall s"), ("demos_s", "demos s (wall)"), ("gate_worker_s", "Gate A worker-s"),
         ("training_worker_s", "training worker-s"), ("rollouts_worker_s", "rollouts worker-s"))


def open_store(workdir: Path) -> Tracker:
    return Tracker.open(default_tracking_uri(workdir), "libero-action-ablation", workdir / "mlartifacts")


def demo_digests(workdir: Path) -> dict[str, str]:
    """A digest of every demo file's arrays (names, shapes, dtypes, values). Attributes are left out: they
    hold the LIBERO install's paths (the BDDL file, the MJCF meshes), which differ between checkouts."""
    import h5py

    out = {}
    for p in sorted((workdir / "demos").glob("*.hdf5")):
        h = hashlib.sha256()

        def add(name, obj, h=h):
            if isinstance(obj, h5py.Dataset):
                x = obj[()]
                h.update(f"{name}|{getattr(x, 'shape', '')}|{getattr(x, 'dtype', '')}|".encode())
                h.update(x.tobytes() if hasattr(x, "tobytes") else repr(x).encode())

        with h5py.File(p, "r") as f:
            f.visititems(add)
        out[p.name] = h.hexdigest()[:16]
    return out


def first_look(tracker: Tracker) -> dict[tuple[str, int], tuple[float, float, float]]:
    """(arm, seed) -> (rollout s, episodes, mean episode length) of each finished run's first look: the
    runs both plans ran there step the same episodes, so their times pair exactly."""
    out = {}
    for r in tracker.find_runs("tags.`ablation.kind` = 'spec_run'"):
        if r.info.status != "FINISHED":
            continue
        first = [tracker.client.get_metric_history(r.info.run_id, k)
                 for k in ("time/closed_loop_s", "eval/episodes", "eval/episode_len")]
        if all(first):
            key = (r.data.tags.get("ablation.arm", "?"), int(r.data.tags.get("ablation.seed", -1)))
            out[key] = tuple(float(min(h, key=lambda m: (m.step, m.timestamp)).value) for h in first)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", type=Path, required=True, help="workdir of the plan run with the fast env step")
    ap.add_argument("--stock", type=Path, required=True, help="workdir of the same plan with sim.fast=false")
    ap.add_argument("--plan", default=None, help="plan name (default: the newest plan run in each)")
    args = ap.parse_args()
    tr_fast, tr_stock = open_store(args.fast), open_store(args.stock)
    fast, stock = read_plan(tr_fast, plan=args.plan), read_plan(tr_stock, plan=args.plan)
    ft, st = fast.record.get("timing", {}), stock.record.get("timing", {})
    eps = {name: {(e["arm"], e["seed"], e.get("task"), e["init_state"]): bool(e["success"]) for e in rp.episodes}
           for name, rp in (("fast", fast), ("stock", stock))}
    print(f"| | fast ({args.fast}) | stock ({args.stock}) | stock / fast |")
    print("|---|---|---|---|")
    for key, label in TIMES:
        f, s = ft.get(key), st.get(key)
        ratio = f"{s / f:.2f}x" if f and s else "-"
        print(f"| {label} | {f if f is None else round(f)} | {s if s is None else round(s)} | {ratio} |")
    nf, ns = len(eps["fast"]), len(eps["stock"])
    pf = ft.get("rollouts_worker_s", 0) / max(nf, 1)
    ps = st.get("rollouts_worker_s", 0) / max(ns, 1)
    print(f"| episodes | {nf} | {ns} | |")
    print(f"| rollout worker-s per episode | {pf:.2f} | {ps:.2f} | {ps / pf if pf else float('nan'):.2f}x |")
    lf, ls = first_look(tr_fast), first_look(tr_stock)
    common = sorted(set(lf) & set(ls))
    print(f"\nthe first look of the runs both plans ran ({len(common)}), paired: rollout wall s of the run "
          "(env creation, policy and env steps), env steps/s")
    print("| arm | seed | episodes x mean length | fast s | stock s | stock / fast | fast steps/s | stock steps/s |")
    print("|---|---|---|---|---|---|---|---|")
    tf = ts = 0.0
    for k in common:
        (f_s, n, length), (s_s, n2, length2) = lf[k], ls[k]
        steps = n * length
        same = "" if (n, length) == (n2, length2) else f" (stock: {n2:.0f} x {length2:.1f})"
        tf, ts = tf + f_s, ts + s_s
        print(f"| {k[0]} | {k[1]} | {n:.0f} x {length:.1f}{same} | {f_s:.0f} | {s_s:.0f} | {s_s / f_s:.2f}x | "
              f"{steps / f_s:.0f} | {steps / s_s:.0f} |")
    if common:
        print(f"| all | | | {tf:.0f} | {ts:.0f} | {ts / tf:.2f}x | | |")
    dfast, dstock = demo_digests(args.fast), demo_digests(args.stock)
    same_demos = [n for n in dfast if dstock.get(n) == dfast[n]]
    print(f"\ndemo files: {len(same_demos)} of {len(dfast)} with the same arrays in both workdirs "
          f"({', '.join(f'{n} {d}' for n, d in dfast.items())}; stock: "
          f"{', '.join(f'{n} {d}' for n, d in dstock.items())})")
    both = sorted(set(eps["fast"]) & set(eps["stock"]), key=str)
    differ = [k for k in both if eps["fast"][k] != eps["stock"][k]]
    print(f"episodes both ran: {len(both)}; outcomes that differ: {len(differ)}")
    for k in differ[:20]:
        print(f"  {k}: fast {'success' if eps['fast'][k] else 'failure'}, stock {'success' if eps['stock'][k] else 'failure'}")
    return 1 if differ or not both else 0


if __name__ == "__main__":
    sys.exit(main())
