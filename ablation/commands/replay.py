"""`run_ablation.py replay --demos FILE`: open-loop replay of recorded demos (pre-flight Gate A).

Each demo i is reset to its own stored init state, given the file's wait steps (10 for our demos, 0
for files from elsewhere), and its actions are replayed open-loop through the rollout runner: through
a native codec by default, or with `--spec SPEC` through that spec's own codec (encode -> decode ->
env action at the current simulated pose; what a policy of that spec would execute with a perfect
network). The suite and task come from the file itself (our attributes, else bddl_file_name /
bddl_file_content / problem_info); `--suite/--task` override them.

For DART demos the recorded `actions` are the clean expert labels, which differ from what the env
executed; by default the replay uses `executed_actions` when the file has them (`--actions executed`),
so success there checks that the file, its init states and the simulator reproduce each other.
`--actions recorded` replays the clean labels instead (expected to fail more often under DART noise).

`--json` prints the result as JSON instead of text (as on every command); `--out FILE` also writes it.
"""
from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from ..episodes import check_replayable
from ..errors import UserError
from .common import add_demos, add_json, add_spec, emit_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "replay", help="replay a demo file open-loop and report success (Gate A)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demos(p)
    p.add_argument("file", nargs="?", type=Path, help=argparse.SUPPRESS)  # the older spelling: replay FILE
    p.add_argument("--n", type=int, default=None, help="replay only the first N demos")
    p.add_argument("--actions", choices=("executed", "recorded"), default="executed",
                   help="executed: executed_actions when present (default); recorded: the actions dataset")
    add_spec(p, what="replay through this spec's own codec (default: native actions)")
    p.add_argument("--suite", default=None, help="override the suite the file says")
    p.add_argument("--task", type=int, default=None, help="override the task id the file says")
    p.add_argument("--workers", type=int, default=1, help="rollout worker processes")
    p.add_argument("--min-success", type=float, default=0.9, help="exit 1 below this success rate")
    add_json(p)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON result to this file")
    p.set_defaults(func=run)


def suite_task_for(path, suite: str | None, task: int | None) -> tuple[str, int]:
    """--suite/--task when given, else what the file says (ablation.demo_io.infer_suite_task)."""
    if suite is not None and task is not None:
        return suite, int(task)
    from ..demo_io import infer_suite_task

    s, t = infer_suite_task(path)
    return suite or s, int(t if task is None else task)


def run(args) -> int:
    from ..data import read_demo_file

    if (args.demos is None) == (args.file is None):
        raise UserError("replay: give the demo file once, as --demos FILE")
    args.file = args.demos or args.file
    ds = read_demo_file(args.file)
    suite, task = suite_task_for(args.file, args.suite, args.task)
    n = len(ds.episodes) if args.n is None else max(1, min(args.n, len(ds.episodes)))
    check_replayable(ds, n)
    use_exec = args.actions == "executed"
    if args.spec:
        out = _replay_spec(args, suite, task, n, use_exec)
    else:
        out = _replay_native(args, ds, suite, task, n, use_exec)
    lines, payload, rate = out
    if args.json:
        emit_json(payload)
    else:
        print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1, default=str))
    return 0 if rate >= args.min_success else 1


def _replay_native(args, ds, suite, task, n, use_exec):
    from ..builtin_policies import ReplayPolicy
    from ..rollout_pool import run_rollouts
    from ..run import EpisodeProgress

    has_exec = all("executed_actions" in ep.extras for ep in ds.episodes[:n])
    factory = functools.partial(ReplayPolicy, str(args.file), use_exec)
    longest = max(len(ep) for ep in ds.episodes[:n])
    res = run_rollouts(factory, suite, int(task), list(range(n)), replan_every=8, workers=args.workers,
                       max_steps=longest + 5, progress=EpisodeProgress(f"replay {Path(args.file).name}", n))
    which = "executed_actions" if (use_exec and has_exec) else "actions"
    lines = []
    for e in res.episodes:
        status = "ok  " if e.success else ("ERR " if e.error else "FAIL")
        extra = f" ({e.error})" if e.error else ""
        lines.append(f"  demo_{e.episode}: {status} {e.steps} steps (demo has {len(ds.episodes[e.episode])}){extra}")
    lines.append(f"replay of {n} demos of {suite} task {task} ({which}): {res.successes}/{n} = "
                 f"{res.success_rate:.0%} success (Gate A needs >= {args.min_success:.0%})")
    payload = dict(res.to_dict(), file=str(args.file), actions_source=which, codec="native",
                   passed=res.success_rate >= args.min_success)
    return lines, payload, res.success_rate


def _replay_spec(args, suite, task, n, use_exec):
    from ..gates import replay_gate
    from ..spec import resolve_spec

    spec = resolve_spec(args.spec)
    r = replay_gate(spec, args.file, episodes=n, workers=args.workers, suite=suite, task=task, executed=use_exec,
                    min_success=args.min_success)
    lines = [f"  demo_{i}: {'ok  ' if s else ('ERR ' if err else 'FAIL')} {k} steps" + (f" ({err})" if err else "")
             for i, (s, k, err) in enumerate(zip(r.successes, r.steps, r.errors))]
    lines.append(r.reason)
    return lines, r.to_dict(), r.success_rate
