"""`run_ablation.py eval`: open-loop (and closed-loop, when the simulator is there) evaluation of a bundle.

Closed-loop results go to MLflow: to the spec run that owns the bundle (a plan's or `train --spec`'s:
found by the run_state.json beside it and its spec hash and seed), merged into that run's per-episode
record as a plan's look would (eval/* metrics, rollouts/episodes.json); under another sampling seed, or
for a bundle no run owns (train --out), to a new `eval` run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError
from .common import add_demos, add_json, add_profile, add_sets, add_spec, add_workdir, emit_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint bundle open-loop and in the simulator",
                       description="Open-loop: sampled chunks vs held-out demo windows (physical errors, "
                                   "out-of-range env actions, std ratios). Closed-loop: rollouts in LIBERO.")
    p.add_argument("--checkpoint", type=Path, help="bundle directory (…/checkpoints/step_N); or give --spec")
    add_spec(p, what="with --seed and --profile (and train's --set): the bundle a plan (or `train --spec`) "
                     "made for that arm in --workdir")
    add_sets(p, "a spec field, as given to train or the plan, to find the arm's run")
    add_workdir(p, "its MLflow store gets the results (a bundle inside a workdir's checkpoints/: that one)")
    p.add_argument("--episodes", type=int, help="closed-loop episodes (default: the spec's rollout.episodes)")
    p.add_argument("--open-loop-only", action="store_true", help="skip the simulator")
    add_demos(p, what="open-loop windows are drawn from it (default: the one in the bundle's meta.json)")
    p.add_argument("--n", type=int, default=256, help="held-out windows to sample open-loop")
    add_profile(p, default=None, what="its rollout workers and batch, as the plan's rollouts used (default: "
                                      "the spec's rollout.workers, batch 1); with --spec, the arm's profile too")
    p.add_argument("--workers", type=int, help="rollout worker processes (default: the profile's, else rollout.workers)")
    p.add_argument("--batch", type=int, default=None,
                   help="episodes per process in lockstep, one policy call for all of them (the CPU profile's "
                        "plans use 4); outcomes agree with batch 1 to float rounding in the policy's matmuls")
    p.add_argument("--seed", type=int, help="with --spec: the arm's seed; the sampling seed (default: the run's "
                                            "train.seed, as the plan used)")
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


def _arm_bundle(args: argparse.Namespace) -> Path:
    """--spec/--seed/--profile: the newest bundle in that arm's plan folder under --workdir."""
    from ..arms import resolve_arm
    from ..profiles import Profile, load_profile
    from ..run import load_state

    profile = load_profile(args.profile) if args.profile else Profile("none", (), 1, None)
    unit = resolve_arm(args.spec, profile, args.seed, list(args.sets))
    ckpt = unit.ckpt_dir(Path(args.workdir).resolve())
    bundle = load_state(ckpt).get("bundle")
    if not bundle:
        raise UserError(f"--spec {unit.arm.name} --seed {unit.seed} --profile {profile.name}: no trained bundle in "
                        f"{ckpt}; train it first (`train --spec {unit.arm.name} --seed {unit.seed} --profile "
                        f"{profile.name}` or a plan), with the same --set and --workdir")
    return Path(bundle)


def _owner(bundle: Path, workdir: Path) -> tuple[Path, Path | None]:
    """(workdir whose store gets the results, the run folder whose pipeline wrote `bundle` or None)."""
    run_dir = bundle.resolve().parent.parent  # <workdir>/checkpoints/<run>/checkpoints/step_N
    state = run_dir / "run_state.json"
    if state.is_file() and run_dir.parent.name == "checkpoints":
        return run_dir.parent.parent, run_dir
    return workdir, None


def log_closed_loop(spec, bundle: Path, seed: int, res, workdir: Path) -> tuple[str, str]:
    """The results into MLflow -> (run id, how): "spec run" (merged into its record), or "eval run"."""
    from ..executors import checkpoint_lock
    from ..registry import find_bundle_run, start_eval_run
    from ..run import episode_dict, load_state, save_state, summarise_episodes
    from ..stages import log_episodes
    from ..tracking import Tracker, default_tracking_uri

    workdir, run_dir = _owner(bundle, workdir)
    tracker = Tracker.open(spec.tracking.tracking_uri or default_tracking_uri(workdir), spec.tracking.experiment,
                           workdir / "mlartifacts")
    owner = find_bundle_run(tracker, spec) if run_dir is not None else None
    new = [episode_dict(r) for r in res.episodes]
    if owner is not None and seed == spec.train.seed:
        # The plan's protocol (its seed, init states by index): these episodes join the run's record, so a
        # later look of a plan does not roll them out again.
        rid = owner.info.run_id
        with checkpoint_lock(run_dir):
            state = load_state(run_dir)
            have = {int(r["init_state"]) for r in state["episodes"]}
            state["episodes"].extend(r for r in new if int(r["init_state"]) not in have)
            save_state(run_dir, state)
            n = len(state["episodes"])
            tracker.log_metrics(rid, [(k, v, n) for k, v in summarise_episodes(state["episodes"]).items()])
            log_episodes(tracker, rid, state["episodes"])
        return rid, "spec run"
    rid = start_eval_run(tracker, spec, bundle, seed=seed, parent=owner.info.run_id if owner is not None else None)
    tracker.log_metrics(rid, [(k, v, len(new)) for k, v in summarise_episodes(new).items()])
    log_episodes(tracker, rid, new)
    tracker.end_run(rid, "FINISHED")
    return rid, "eval run"


def run(args: argparse.Namespace) -> int:
    if (args.checkpoint is None) == (args.spec is None):
        raise UserError("eval: give --checkpoint DIR, or --spec NAME (with --seed and --profile) for an arm's bundle")
    if args.spec is not None:
        args.checkpoint = _arm_bundle(args)
        args.seed = None  # --seed named the arm; its sampling seed is the run's own
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
    rid, how = log_closed_loop(spec, args.checkpoint, seed, res, Path(args.workdir).resolve())
    if args.json:
        emit_json({**out, "seed": seed, "closed_loop": res.to_dict(), "run_id": rid, "logged_to": how})
        return 0
    print()
    print(_table(f"closed-loop, {spec.data.suite} task {spec.data.task}, seed {seed}", dict(res.summary())))
    if args.json_out:
        print(f"per-episode records: {args.json_out}")
    print(f"MLflow: {how} {rid}")
    return 0
