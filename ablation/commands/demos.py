"""`run_ablation.py demos`: generate scripted-expert demos (LIBERO HDF5 layout), cached by inputs."""
from __future__ import annotations

import argparse

from .common import add_demos, add_json, emit_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demos", help="generate scripted-expert demos for a LIBERO task",
        description="Run the privileged scripted expert (goal read from the task's BDDL file) from fresh "
                    "randomised resets of the task (default; seeded by --seed, none equal to a benchmark "
                    "init state) or from the benchmark's init states (--starts benchmark), and keep the "
                    "successful episodes. Obs are recorded BEFORE each step. DART noise: "
                    "the env executes expert + N(0, sigma) on the position dims while moving; the file "
                    "records the clean action (actions) and the executed one (executed_actions). "
                    "An existing --demos file made from the same inputs is reused.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--suite", default="libero_object",
                   help="benchmark suite: libero_spatial, libero_object, libero_goal, libero_10 "
                        "(see `python -m ablation.sim.expert` for the tasks the expert covers)")
    p.add_argument("--task", type=int, default=0, help="task id within the suite")
    p.add_argument("--n", type=int, default=50, help="number of successful demos to keep")
    p.add_argument("--images", action="store_true", help="also record 2 camera images (slow on CPU)")
    p.add_argument("--image-size", type=int, default=128, help="camera image side in pixels (with --images)")
    p.add_argument("--dart-sigma", type=float, default=0.3, help="DART noise std (native units, position dims); 0 = off")
    p.add_argument("--speed", type=float, default=1.0, help="expert speed factor")
    p.add_argument("--turn-deg", type=float, default=0.0,
                   help="the expert turns the wrist this far (deg, 0-80) before a grasp that needs no turn, so "
                        "libero_object demos carry rotation (the rotation plan; data.expert_turn_deg); 0 = stock")
    p.add_argument("--seed", type=int, default=0, help="seeds the random starts and the DART noise")
    p.add_argument("--starts", choices=("random", "benchmark"), default="random",
                   help="random: fresh randomised resets (training); benchmark: the benchmark's init states "
                        "0, 1, ... (the evaluation starts)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel worker processes (default: one per 8 demos, up to the usable CPUs; always workers "
                        "for images); the demos do not depend on it")
    add_demos(p, required=True, what="the file to write (.hdf5)", old=("--out",))
    p.add_argument("--force", action="store_true", help="regenerate even if --demos matches these inputs")
    add_json(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..sim.demos import demo_summary, generate_demos

    path = generate_demos(args.suite, args.task, args.n, args.demos, images=args.images,
                          dart_sigma=args.dart_sigma, seed=args.seed, speed=args.speed,
                          image_size=args.image_size, force=args.force, starts=args.starts,
                          workers=args.workers, turn_deg=args.turn_deg)
    if args.json:
        emit_json(demo_record(path))
    else:
        print(demo_summary(path))
    return 0


def demo_record(path) -> dict:
    """What `demos --json` prints: the file, its demos and how they were made."""
    from ..data import read_demo_file

    ds = read_demo_file(path)
    a = ds.meta.attrs
    keep = ("suite", "task_id", "task_name", "successes", "attempts", "dart_sigma", "starts", "start_seed")
    return {"demos": str(path), "n_demos": len(ds.episodes), "lengths": [len(e) for e in ds.episodes],
            **{k: a.get(k) for k in keep}}
