"""`run_ablation.py eval`: open-loop (and closed-loop, when the simulator is there) evaluation of a bundle."""
from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint bundle open-loop and in the simulator",
                       description="Open-loop: sampled chunks vs held-out demo windows (physical errors, "
                                   "out-of-range env actions, std ratios). Closed-loop: rollouts in LIBERO.")
    p.add_argument("--checkpoint", required=True, type=Path, help="bundle directory (…/checkpoints/step_N)")
    p.add_argument("--episodes", type=int, help="closed-loop episodes (default: the spec's rollout.episodes)")
    p.add_argument("--open-loop-only", action="store_true", help="skip the simulator")
    p.add_argument("--demos", type=Path, help="demo file for open-loop windows (default: the one in meta.json)")
    p.add_argument("--n", type=int, default=256, help="held-out windows to sample open-loop")
    p.add_argument("--workers", type=int, help="rollout worker processes (default: rollout.workers)")
    p.set_defaults(func=run)


def _table(title: str, rows: dict[str, float]) -> str:
    w = max((len(k) for k in rows), default=10)
    lines = [title, "-" * (w + 14)]
    lines += [f"{k:<{w}}  {v:>12.5g}" if isinstance(v, (int, float)) else f"{k:<{w}}  {v!s:>12}"
              for k, v in rows.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..data import prepare_data
    from ..policy import load_policy
    from ..train import open_loop_eval

    policy = load_policy(args.checkpoint)
    spec = policy.spec
    meta = json.loads((args.checkpoint / "meta.json").read_text())
    demo = args.demos or Path(meta.get("demo_file", ""))
    if not demo.is_file():
        raise UserError(f"demo file {demo} (from {args.checkpoint / 'meta.json'}) not found; pass --demos")
    data = prepare_data(spec.data, spec.codec, demo)
    windows = data.val if data.val is not None else data.train
    ol = open_loop_eval(policy, windows, n=args.n, seed=spec.train.seed)
    print(_table(f"open-loop, {spec.name} ({'held-out' if data.val is not None else 'training'} windows)", ol))
    if args.open_loop_only:
        return 0
    try:
        from ..rollout import run_rollouts
    except ModuleNotFoundError as e:
        if e.name and e.name.endswith("rollout"):
            print("\nclosed-loop: skipped (ablation.rollout is not available)")
            return 0
        raise
    res = run_rollouts(functools.partial(load_policy, str(args.checkpoint)), spec.data.suite, spec.data.task,
                       episodes=args.episodes or spec.rollout.episodes, replan_every=spec.rollout.replan_every,
                       workers=args.workers or spec.rollout.workers, max_steps=spec.rollout.max_steps,
                       images=spec.data.images, image_size=spec.data.image_size,
                       wait_steps=spec.rollout.wait_steps)
    agg = res.summary() if callable(getattr(res, "summary", None)) else {}
    print()
    print(_table(f"closed-loop, {spec.data.suite} task {spec.data.task}", dict(agg)))
    return 0
