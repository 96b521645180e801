"""`run_ablation.py eval`: open-loop (and closed-loop, when the simulator is there) evaluation of a bundle."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError
from .common import add_demos, add_json, add_profile, emit_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint bundle open-loop and in the simulator",
                       description="Open-loop: sampled chunks vs held-out demo windows (physical errors, "
                                   "out-of-range env actions, std ratios). Closed-loop: rollouts in LIBERO.")
    p.add_argument("--checkpoint", required=True, type=Path, help="bundle directory (…/checkpoints/step_N)")
    p.add_argument("--episodes", type=int, help="closed-loop episodes (default: the spec's rollout.episodes)")
    p.add_argument("--open-loop-only", action="store_true", help="skip the simulator")
    add_demos(p, what="open-loop windows are drawn from it (default: the one in the bundle's meta.json)")
    p.add_argument("--n", type=int, default=256, help="held-out windows to sample open-loop")
    add_profile(p, default=None, what="its rollout workers and batch, as the plan's rollouts used (default: "
                                      "the spec's rollout.workers, batch 1)")
    p.add_argument("--workers", type=int, help="rollout worker processes (default: the profile's, else rollout.workers)")
    p.add_argument("--batch", type=int, default=None,
                   help="episodes per process in lockstep, one policy call for all of them (the CPU profile's "
                        "plans use 4); outcomes agree with batch 1 to float rounding in the policy's matmuls")
    p.add_argument("--seed", type=int, help="sampling seed (default: the run's train.seed, as the plan used)")
    p.add_argument("--first-init-state", type=int, default=0, help="first benchmark init state (default 0)")
    p.add_argument("--episodes-json", dest="json_out", type=Path, metavar="FILE",
                   help="also write the per-episode records to this file")
    add_json(p)
    p.set_defaults(func=run)


def _table(title: str, rows: dict[str, float]) -> str:
    w = max((len(k) for k in rows), default=10)
    lines = [title, "-" * (w + 14)]
    lines += [f"{k:<{w}}  {v:>12.5g}" if isinstance(v, (int, float)) else f"{k:<{w}}  {v!s:>12}"
              for k, v in rows.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    # Before the heavy imports (torch, the simulator): a wrong path is a one-line error at once.
    if not args.checkpoint.is_dir():
        raise UserError(f"--checkpoint {args.checkpoint}: directory not found; give a checkpoint bundle "
                        "(<workdir>/checkpoints/<run>/checkpoints/step_N, or train's --out/checkpoints/step_N)")
    if not (args.checkpoint / "meta.json").is_file():
        raise UserError(f"--checkpoint {args.checkpoint}: no meta.json there, so not a checkpoint bundle; "
                        "give a step_N directory")
    if args.batch is not None and args.batch < 1:
        raise UserError(f"--batch {args.batch}: give 1 or more episodes per process")
    from ..bundle import load_policy
    from ..spec_data import prepare_spec_data
    from ..train import configure_torch, open_loop_eval

    profile = None
    if args.profile:
        from ..profiles import load_profile

        profile = load_profile(args.profile)
    configure_torch()
    policy = load_policy(args.checkpoint)
    spec = policy.spec
    meta = json.loads((args.checkpoint / "meta.json").read_text())
    demo = args.demos or Path(meta.get("demo_file", ""))
    if not (demo.is_file() or demo.is_dir()):  # a LIBERO file or a LeRobot dataset folder
        raise UserError(f"demo file {demo} (from {args.checkpoint / 'meta.json'}) not found; pass --demos")
    data = prepare_spec_data(spec, demo)
    windows = data.val if data.val is not None else data.train
    ol = open_loop_eval(policy, windows, n=args.n, seed=spec.train.seed)
    out: dict = {"checkpoint": str(args.checkpoint), "spec": spec.name, "spec_hash": spec.hash(), "demos": str(demo),
                 "open_loop": ol}
    if not args.json:
        print(_table(f"open-loop, {spec.name} ({'held-out' if data.val is not None else 'training'} windows)", ol))
    if args.open_loop_only:
        if args.json:
            emit_json(out)
        return 0
    from ..run import EpisodeProgress, run_closed_loop

    # The same spec -> rollout mapping as plan and tune runs (ablation/run.py), seeded by the run's seed,
    # so `eval` of a plan's checkpoint reproduces the plan's per-episode outcomes (bit for bit with the
    # plan's --batch and looks; to float rounding in the batched policy call otherwise).
    seed = args.seed if args.seed is not None else spec.train.seed
    n = args.episodes or spec.rollout.episodes
    workers = args.workers or (profile.rollout_workers if profile else None) or spec.rollout.workers
    batch = args.batch or (profile.rollout_batch if profile else 1)
    res = run_closed_loop(args.checkpoint, spec, seed, list(range(args.first_init_state, args.first_init_state + n)),
                          workers=workers, batch=batch, progress=EpisodeProgress(f"eval {spec.name} seed {seed}", n))
    if args.json_out:
        args.json_out.write_text(json.dumps(res.to_dict(), indent=1, default=float))
    if args.json:
        emit_json({**out, "seed": seed, "closed_loop": res.to_dict()})
        return 0
    print()
    print(_table(f"closed-loop, {spec.data.suite} task {spec.data.task}, seed {seed}", dict(res.summary())))
    if args.json_out:
        print(f"per-episode records: {args.json_out}")
    return 0
