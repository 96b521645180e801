"""Demo generation throughput: the same demos made serially (1 worker) and in parallel (N workers).

    python benchmarks/demo_throughput.py [--suite libero_object] [--task 0] [--n 50] [--workers N]
                                         [--starts random|benchmark] [--dart-sigma 0.3]

Prints the wall time of each run (env creation and worker start-up included: that is what a plan
pays), the parallel/serial ratio, and whether the two files hold identical demos (they must: each
attempt's randomness comes from (seed, attempt), not from the worker). The machine's load is printed
first: on shared cores the ratio moves with what else runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from ablation.data import read_demo_file
    from ablation.sim.demos import generate_demos, usable_cpus

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--workers", type=int, default=None, help="parallel workers (default: usable CPUs)")
    p.add_argument("--starts", default="random", choices=("random", "benchmark"))
    p.add_argument("--dart-sigma", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    workers = a.workers or usable_cpus()
    try:
        load = "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "load average n/a"
    print(f"{a.suite} task {a.task}, {a.n} demos, starts={a.starts}, dart sigma {a.dart_sigma}; "
          f"{usable_cpus()} usable CPUs, {load}", flush=True)
    times, files = {}, {}
    with tempfile.TemporaryDirectory(prefix="demo_throughput_") as tmp:
        for w in (1, workers):
            out = Path(tmp) / f"w{w}.hdf5"
            t0 = time.perf_counter()
            generate_demos(a.suite, a.task, a.n, out, dart_sigma=a.dart_sigma, seed=a.seed, starts=a.starts,
                           workers=w, force=True, progress=True)
            times[w] = time.perf_counter() - t0
            files[w] = read_demo_file(out)
            at = files[w].meta.attrs
            print(f"workers={w}: {times[w]:.1f} s ({times[w] / a.n:.2f} s/demo), expert success "
                  f"{at['successes']}/{at['attempts']}", flush=True)
        s, q = files[1], files[workers]
        same = (s.meta.attrs["start_attempts"] == q.meta.attrs["start_attempts"] and
                all(np.array_equal(x.actions, y.actions) and np.array_equal(x.init_state, y.init_state)
                    for x, y in zip(s.episodes, q.episodes)))
    ratio = times[workers] / times[1]
    print(f"serial {times[1]:.1f} s, parallel ({workers} workers) {times[workers]:.1f} s, "
          f"ratio {ratio:.2f}x (target <= 0.6x), identical demos: {same}")
    try:
        print("load average after: %.2f %.2f %.2f" % os.getloadavg())
    except OSError:
        pass
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
