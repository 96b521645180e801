"""Judge a finished plan's episodes with the seed-level method and with the pre-calibration bootstrap,
side by side (the same records, the same hypotheses, the same looks).

    .venv/bin/python benchmarks/rejudge.py --workdir workdir [--plan all]

Reads the plan record and every run's per-episode record from the workdir's MLflow store (nothing is
re-run), judges all of them at the plan's last look (no early stopping, so the two methods see the same
data), and prints, per comparison: the success rates (per seed), the effect, each method's interval
and word.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from calibration import old_judge  # noqa: E402

from ablation.analysis import ArmFacts, judge, mark_left_out, with_demo_spread  # noqa: E402
from ablation.hypothesis import Hypothesis  # noqa: E402
from ablation.plan_record import PLAN_RECORD  # noqa: E402
from ablation.recorded_plan import collect, download_json, find_plan_run  # noqa: E402
from ablation.rules import DEFAULT_RULES  # noqa: E402
from ablation.stats import to_arrays  # noqa: E402
from ablation.tracking import Tracker, default_tracking_uri  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=REPO / "workdir", help="the plan's workdir (default ./workdir)")
    ap.add_argument("--plan", default=None, help="plan name (default: the newest plan run)")
    args = ap.parse_args()
    tracker = Tracker.open(default_tracking_uri(args.workdir), "libero-action-ablation", args.workdir / "mlartifacts")
    parent = find_plan_run(tracker, args.plan)
    record = download_json(tracker, parent.info.run_id, PLAN_RECORD)
    hyps = [Hypothesis.model_validate({k: v for k, v in h.items() if k != "path"}) for h in record["hypotheses"]]
    rows, records, _ = collect(tracker, record)
    facts = with_demo_spread({r.arm: ArmFacts(rot_spread_deg=r.rot_spread_deg,
                                              pretrained=bool(record["arms"][r.arm].get("pretrained", False)))
                              for r in rows}, record.get("skipped_arms", {}))
    sched = record.get("episodes") or {}
    looks = [x for x in (sched.get("looks") or []) if x is not None] or [max(r["init_state"] for r in records) + 1]
    rules = DEFAULT_RULES.with_overrides(sched)
    k = max(0, len(record.get("looks", [])) - 1)
    new = mark_left_out(judge(hyps, records, facts, look_index=k, looks=looks, rules=rules),
                        record.get("skipped_arms") or {})
    old = mark_left_out(old_judge(hyps, to_arrays(records), facts, look_index=k, looks=looks, previous={},
                                  rules=rules), record.get("skipped_arms") or {})
    print(f"plan {record['plan']}: {len(records)} episodes, judged at look {k + 1} of {looks}")
    print(f"{'comparison':48} {'rates (per seed)':34} {'effect':>7}  {'seed-level t: interval':26} word"
          f"{'':20} | bootstrap (old): word")
    for c, o in zip(new, old):
        name = f"{c.hypothesis}: {c.arm} vs {c.control}"
        if c.estimate is None:
            print(f"{name[:48]:48} {c.word} | {o.word}")
            continue
        seeds = "/".join(f"{100 * x:.0f}" for x in c.per_seed_arm) + " vs " + "/".join(
            f"{100 * x:.0f}" for x in c.per_seed_control)
        print(f"{name[:48]:48} {seeds[:34]:34} {100 * c.estimate:+6.0f}  "
              f"[{100 * c.lo:+4.0f}, {100 * c.hi:+4.0f}] at {100 * (c.level or 0):.2f}%   {c.word:24} | {o.word}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
