"""The doctor's precision and recall on a corpus of real files, and its speed per file.

    python benchmarks/doctor_corpus.py [--tasks libero_spatial:0,libero_object:2,...] [--n 3]
                                       [--out DIR] [--no-sim] [--sim-episodes 3] [--sim-tasks K] [--budget-min 15]

Builds a clean file per task with the scripted expert (ablation/sim/demos.py; reused when already made),
plus one small file with 32x32 camera images, then plants every known pitfall in copies
(ablation/doctor/plant.py) and a checkpoint whose statistics come from another task. Prints:
  - the confusion table: each clean file must get 0 serious findings (alone, and with the seed's
    native_delta spec set to the file's task), each planted pitfall must be the top finding;
  - the doctor's seconds per file: file checks only (--no-sim) and with the simulator checks (Gate A on
    --sim-episodes demos, start states, image orientation).
The default tasks: 8 covered tasks across the 4 suites (README "Scripted-expert coverage"), three of
them with rotation in their demos (libero_spatial 2, libero_goal 7, libero_10 5).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# one task per suite first (the simulator checks run on the first --sim-tasks), then a second per suite
DEFAULT_TASKS = ("libero_spatial:0,libero_object:2,libero_goal:7,libero_10:5,libero_spatial:2,libero_object:0,"
                 "libero_goal:1,libero_10:0")
IMAGE_TASK = ("libero_object", 0)


def _tasks(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        suite, _, task = item.strip().partition(":")
        out.append((suite, int(task)))
    return out


def main(argv: list[str] | None = None) -> int:
    from ablation.doctor.corpus import CLEAN, check_clean, check_planted, confusion_table
    from ablation.sim.demos import generate_demos
    from ablation.spec import EXPERIMENTS_DIR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=DEFAULT_TASKS, help="suite:task,... (default: 8 covered tasks, 4 suites)")
    p.add_argument("--n", type=int, default=3, help="expert demos per clean file (default 3)")
    p.add_argument("--out", type=Path, default=Path("workdir/cache/doctor_corpus"))
    p.add_argument("--no-sim", action="store_true", help="skip the doctor's simulator checks on the clean files")
    p.add_argument("--sim-episodes", type=int, default=3, help="demos Gate A replays per clean file (default 3)")
    p.add_argument("--sim-tasks", type=int, default=None, help="run the simulator checks on the first K tasks' clean "
                   "files only, and not on the image file (default: all)")
    p.add_argument("--workers", type=int, default=1, help="demo generation workers (default 1)")
    p.add_argument("--budget-min", type=float, default=15.0, help="start no new task after this many minutes; the "
                   "table then covers the tasks done and says so (default 15)")
    a = p.parse_args(argv)
    print("load average %.2f %.2f %.2f" % os.getloadavg(), "on", os.cpu_count(), "cores", flush=True)

    tasks = _tasks(a.tasks)
    t0 = time.perf_counter()
    img = generate_demos(*IMAGE_TASK, n=2, out=a.out / "images32.hdf5", images=True, image_size=32, seed=0,
                         progress=False, workers=a.workers)
    gen_s = time.perf_counter() - t0

    def clean_file(suite: str, task: int) -> Path:
        nonlocal gen_s
        t = time.perf_counter()
        path = generate_demos(suite, task, n=a.n, out=a.out / f"{suite}_{task}_n{a.n}.hdf5", seed=0,
                              progress=False, workers=a.workers)
        gen_s += time.perf_counter() - t
        print(f"clean file {suite}:{task}: {time.perf_counter() - t:.0f} s", flush=True)
        return path

    rows, nosim_s, sim_s = [], [], []
    keys, clean, doctored, stopped = list(tasks), {}, [], None
    for i, (suite, task) in enumerate(keys):
        if time.perf_counter() - t0 > 60 * a.budget_min:
            stopped = f"stopped at the {a.budget_min:g}-minute budget after {i} of {len(keys)} tasks"
            break
        path = clean.get((suite, task)) or clean_file(suite, task)
        clean[(suite, task)] = path
        doctored.append((suite, task))
        r = check_clean(path, suite, task, sim=False, workdir=a.out / "wd")
        nosim_s.append(r.seconds)
        rows.append(r)
        if not a.no_sim and (a.sim_tasks is None or i < a.sim_tasks):
            r_sim = check_clean(path, suite, task, sim=True, workdir=a.out / "wd", episodes=a.sim_episodes)
            sim_s.append(r_sim.seconds)
            rows[-1] = r_sim  # the full doctor's verdict counts for the table
        rows.append(check_clean(path, suite, task, sim=False, workdir=a.out / "wd",
                                spec=EXPERIMENTS_DIR / "native_delta.yaml"))
        nxt = keys[(i + 1) % len(keys)]
        if nxt not in clean and len(keys) > 1:  # the next task's file is made now, for the statistics pitfall
            clean[nxt] = clean_file(*nxt)
        other = clean[nxt] if len(keys) > 1 else None
        rows += check_planted(path, suite, task, a.out / "planted" / f"{suite}_{task}", other_clean=other,
                              kinds=[k for k in ("flipped_gripper", "zero_one_gripper", "double_delta", "obs_late",
                                                 "noops", "other_task_stats")])
        print(f"doctored {suite}:{task} (+ its plantings): elapsed {time.perf_counter() - t0:.0f} s", flush=True)
    # the image file's simulator checks (image orientation) render; with --sim-tasks they are left out
    rows.append(check_clean(img, *IMAGE_TASK, sim=not a.no_sim and a.sim_tasks is None, workdir=a.out / "wd",
                            episodes=2))
    rows += check_planted(img, *IMAGE_TASK, a.out / "planted" / "images32", kinds=["blank_frames"])

    print()
    print(confusion_table(rows))
    print()
    planted_s = [r.seconds for r in rows if r.kind not in (CLEAN, "clean + spec")]
    print(f"doctor seconds per file ({a.n} demos of ~150-370 steps): file checks only (--no-sim) median "
          f"{statistics.median(nosim_s):.1f} s (max {max(nosim_s):.1f}); planted copies (--no-sim, incl. writing "
          f"the copy) median {statistics.median(planted_s):.1f} s"
          + (f"; with the simulator checks (Gate A on {a.sim_episodes} demos, start states) median "
             f"{statistics.median(sim_s):.1f} s (max {max(sim_s):.1f}), "
             f"{statistics.median(sim_s) / statistics.median(nosim_s):.0f}x the file checks" if sim_s else ""))
    done = [f"{s}:{t}" for s, t in doctored]
    print(f"corpus: {len(done)} tasks x {a.n} demos ({', '.join(done)}) + 1 image file; generation {gen_s:.0f} s; "
          f"total {time.perf_counter() - t0:.0f} s" + (f"; {stopped}" if stopped else ""))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
