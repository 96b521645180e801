"""`run_ablation.py replay FILE`: open-loop replay of recorded demos (pre-flight Gate A).

Each demo i is reset to its init state, given the file's wait steps (10 for our demos), and its
actions are replayed open-loop through the rollout runner and a native codec (the same path as a
policy's evaluation). For DART demos the recorded `actions` are the clean expert labels, which
differ from what the env executed; by default the replay uses `executed_actions` when the file has
them (`--actions executed`), so success there checks that the file, its init states and the
simulator reproduce each other. `--actions recorded` replays the clean labels instead (expected to
fail more often under DART noise: an open-loop replay of labels is not what was executed).
"""
from __future__ import annotations

import argparse
import functools
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "replay", help="replay a demo file open-loop and report success (Gate A)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="LIBERO-layout demo .hdf5")
    p.add_argument("--n", type=int, default=None, help="replay only the first N demos")
    p.add_argument("--actions", choices=("executed", "recorded"), default="executed",
                   help="executed: executed_actions when present (default); recorded: the actions dataset")
    p.add_argument("--suite", default=None, help="override the suite stored in the file")
    p.add_argument("--task", type=int, default=None, help="override the task id stored in the file")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--min-success", type=float, default=0.9, help="exit 1 below this success rate")
    p.add_argument("--json", default=None, help="also write per-demo results to this JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import read_demo_file
    from ..rollout import ReplayPolicy, run_rollouts
    from ..sim.libero_setup import LiberoSetupError

    ds = read_demo_file(args.file)
    attrs = ds.meta.attrs
    suite = args.suite or attrs.get("suite")
    task = args.task if args.task is not None else attrs.get("task_id", attrs.get("task"))
    if suite is None or task is None:
        raise LiberoSetupError(f"{args.file}: the file does not say its suite/task; pass --suite and --task")
    n = len(ds.episodes) if args.n is None else min(args.n, len(ds.episodes))
    has_exec = all("executed_actions" in ep.extras for ep in ds.episodes[:n])
    use_exec = args.actions == "executed"
    factory = functools.partial(ReplayPolicy, str(args.file), use_exec)
    longest = max(len(ep) for ep in ds.episodes[:n])
    res = run_rollouts(factory, suite, int(task), list(range(n)), replan_every=8, workers=args.workers,
                       max_steps=longest + 5)
    which = "executed_actions" if (use_exec and has_exec) else "actions"
    for e in res.episodes:
        status = "ok  " if e.success else ("ERR " if e.error else "FAIL")
        extra = f" ({e.error})" if e.error else ""
        print(f"  demo_{e.episode}: {status} {e.steps} steps (demo has {len(ds.episodes[e.episode])}){extra}")
    print(f"replay of {n} demos ({which}): {res.successes}/{n} = {res.success_rate:.0%} success "
          f"(Gate A needs >= {args.min_success:.0%})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res.to_dict(), f, indent=1)
    return 0 if res.success_rate >= args.min_success else 1
