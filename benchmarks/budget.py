"""Where the budget goes: between-seed spread of closed-loop success and the cost of one seed, by training length.

    .venv/bin/python benchmarks/budget.py run   [--workdir workdir/budget] [--jobs 2] [--episodes 20]
                                                [--queue default|CELLS | --queue-file FILE] [--limit-s N]
    .venv/bin/python benchmarks/budget.py table [--workdir DIR [DIR ...]] [--json]
    .venv/bin/python benchmarks/budget.py power [--workdir DIR [DIR ...]] [--studies 300] [--extra ARM:STEPS:N:K1,K2..]
                                                [--sd STEPS:SD ...] [--lengths STEPS ...]

`run` trains arm x seed x length cells on libero_object task 0 with the CPU profile (its `set:` list:
small model, low-dim obs, compiled training, 1 thread) plus `train.steps=<length>` and
`train.seed=<seed>`, then rolls each trained bundle out from the benchmark's fixed init states
0..episodes-1 (the same states for every arm and seed: paired), with the profile's lockstep batch.
The harness's own code paths do the work: `spec.resolve_spec` (the spec plus `--set`-style
overrides, as the plan does), `workdir.ensure_demos` (one scripted-expert demo file, made once),
`train.train` (cosine LR to 0 at `train.steps`, so every length is trained on its own: a bundle of
a longer run at step 600 is NOT what a 600-step run gives) and `run.run_closed_loop`.

Each cell runs in one of `--jobs` worker processes (spawned; one torch thread each) and records:
  - train_cpu_s / train_wall_s: process CPU time and wall time of `train()` (data prep, the compiled
    steps, the periodic validation with sampled open-loop chunks, checkpoints, the final open-loop
    evaluation); compile_cpu_s: the CPU time of its first step, which compiles (cold for the first
    cell of a worker process, ~0 later: the compiled graph is reused in the process);
    child_cpu_s: CPU time of waited-for child processes (the C++ compiler of torch.compile);
  - rollout_cpu_s / rollout_wall_s: the same for the closed loop (envs are cached per worker: the
    first cell of a worker pays their creation);
  - per episode: init state, success, policy steps.
CPU-seconds are the honest figure on a shared, loaded machine; wall time is printed beside them.

Results are appended to <workdir>/budget.json after every cell (atomically), so a killed run loses
only the cells in flight (their training resumes from its last bundle), and a re-run skips the
cells that are done. `table` prints, per arm x length: per-seed successes, mean, between-seed sd,
train and rollout CPU-s, mean episode length (of successes and failures).
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import resource
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROFILE = "cpu"
BASELINE = "baseline_rdt"
FIXES = ("fix_minmax", "fix_loss_weight_1e4", "fix_pos_cm")


def default_queue() -> list[tuple[str, int, int]]:
    """(arm, seed, steps), most useful first: a partial run still answers the first questions.

    1. min-max and the x10^4 weight at 600 and 1200 steps, 4 seeds; then cm;
    2. the seed's baseline (at the floor, so one length is enough to show it) at 600;
    3. the fixes at 2400; the baseline at 2400;
    4. seeds 4 and 5 at 2400 then at 1200; then 4800 steps."""
    q: list[tuple[str, int, int]] = []
    for arms in (FIXES[:2], FIXES[2:]):
        for seed in range(4):
            for steps in (600, 1200):
                q += [(a, seed, steps) for a in arms]
    q += [(BASELINE, s, 600) for s in range(4)]
    q += [(a, s, 2400) for s in range(4) for a in FIXES]
    q += [(BASELINE, s, 2400) for s in range(2)]
    q += [(a, s, st) for st in (2400, 1200) for s in (4, 5) for a in FIXES]
    q += [(a, s, 4800) for s in range(4) for a in FIXES[:2]]
    return q


def parse_queue(text: str) -> list[tuple[str, int, int]]:
    """'default' or 'arm:seed:steps,arm:seeds-range:steps,...' (e.g. fix_minmax:0-3:600)."""
    if text == "default":
        return default_queue()
    out = []
    for item in text.split(","):
        try:
            arm, seeds, steps = item.split(":")
            lo, _, hi = seeds.partition("-")
            out += [(arm, s, int(steps)) for s in range(int(lo), int(hi or lo) + 1)]
        except ValueError:
            raise SystemExit(f"--queue: '{item}' is not arm:seed[-seed]:steps (e.g. fix_minmax:0-3:600)") from None
    return out


def cell_key(arm: str, seed: int, steps: int) -> str:
    return f"{arm}/seed{seed}/steps{steps}"


# ----------------------------------------------------------------------------- one cell (worker process)

def _cpu() -> tuple[float, float]:
    return time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime + \
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime


def _worker_init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["ABLATION_QUIET"] = "1"
    from ablation.train import configure_torch

    configure_torch(1)


def run_cell(arm: str, seed: int, steps: int, episodes: int, demos: str, workdir: str) -> dict:
    """Train one arm x seed x length and roll it out; costs measured in this process."""
    from ablation.profiles import load_profile
    from ablation.run import run_closed_loop
    from ablation.spec import resolve_spec, spec_path
    from ablation.train import train

    profile = load_profile(PROFILE)
    spec = resolve_spec(spec_path(arm), [*profile.sets, f"train.steps={steps}", f"train.seed={seed}"])
    ckpt = Path(workdir) / "checkpoints" / f"{arm}-seed{seed}-steps{steps}-{spec.hash()}"
    load0 = os.getloadavg()[0]
    # Training's costs are kept beside its bundle: a cell killed during its rollouts (e.g. by the OOM
    # killer on a crowded machine) resumes at the rollouts with its training costs intact.
    side = ckpt / "budget_train.json"
    if side.is_file():
        tr = json.loads(side.read_text())
        bundle = tr.pop("bundle")
    else:
        resumed = ckpt.is_dir() and any(ckpt.rglob("*.json"))  # a killed training: its costs are partial
        w0, (c0, k0) = time.time(), _cpu()
        res = train(spec, demos, ckpt, progress=False)
        w1, (c1, k1) = time.time(), _cpu()
        tr = {"train_cpu_s": c1 - c0, "train_wall_s": w1 - w0, "train_child_cpu_s": k1 - k0,
              "compile_cpu_s": res.first_step_cpu_s, "compile_wall_s": res.first_step_s, "compiled": res.compiled,
              "step_cpu_s": res.step_cpu_s, "trained_steps": res.steps, "resumed": resumed,
              "openloop_pos_mm": res.final.get("openloop/pos_err_mm")}
        bundle = str(res.checkpoint_dir)
        side.write_text(json.dumps({**tr, "bundle": bundle}))
        del res
        gc.collect()  # the trainer's tensors go before the rollouts' envs come
    w1, (c1, k1) = time.time(), _cpu()
    roll = run_closed_loop(Path(bundle), spec, seed, list(range(episodes)), workers=1,
                           batch=profile.rollout_batch)
    w2, (c2, k2) = time.time(), _cpu()
    eps = [{"init_state": e.episode, "success": bool(e.success), "steps": int(e.steps),
            "error": e.error} for e in roll.episodes]
    return {"arm": arm, "seed": seed, "steps": steps, "episodes": eps,
            "successes": sum(e["success"] for e in eps), "n": len(eps),
            **tr, "rollout_cpu_s": c2 - c1, "rollout_wall_s": w2 - w1, "rollout_child_cpu_s": k2 - k1,
            "env_steps": roll.env_steps, "pid": os.getpid(), "load1_start": load0, "load1_end": os.getloadavg()[0],
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# ----------------------------------------------------------------------------- the record

def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"cells": {}, "failed": {}}


def load_many(dirs: list[str]) -> dict:
    """The cells of several workdirs (runners that ran apart, e.g. one per core) as one record."""
    data = {"cells": {}, "failed": {}}
    for d in dirs:
        one = load_results(Path(d) / "budget.json")
        data["cells"].update(one.get("cells", {}))
        data.setdefault("meta", one.get("meta"))
    return data


def save_results(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)  # a kill never leaves half a record


def cmd_run(args) -> int:
    from ablation.profiles import load_profile
    from ablation.spec import resolve_spec, spec_path
    from ablation.workdir import ensure_demos

    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    out = wd / "budget.json"
    data = load_results(out)
    profile = load_profile(PROFILE)
    spec = resolve_spec(spec_path(FIXES[0]), list(profile.sets))
    t = time.time()
    demos = str(ensure_demos(spec, wd))
    print(f"demos: {demos} ({time.time() - t:.0f} s)", flush=True)
    data["meta"] = {"profile": PROFILE, "sets": list(profile.sets), "rollout_batch": profile.rollout_batch,
                    "episodes": args.episodes, "demos": demos, "suite": spec.data.suite, "task": spec.data.task}
    data["failed"] = {}   # a re-run tries the failed cells again (once)
    save_results(out, data)

    def pending(running_cells) -> list[tuple[str, int, int]]:
        # --queue-file is re-read before every dispatch: the order can be changed while cells run.
        text = Path(args.queue_file).read_text().split() if args.queue_file else [args.queue]
        q = [c for c in parse_queue(",".join(text)) if cell_key(*c) not in data["cells"]
             and cell_key(*c) not in data["failed"]]
        return [c for c in dict.fromkeys(q) if c not in running_cells]

    queue = pending(set())
    print(f"{len(queue)} cell(s) to run on {args.jobs} worker(s)", flush=True)
    deadline = time.time() + args.limit_s if args.limit_s else math.inf
    ctx = get_context("spawn")
    t0 = time.time()
    with ProcessPoolExecutor(args.jobs, mp_context=ctx, initializer=_worker_init) as ex:
        running: dict = {}
        while True:
            while len(running) < args.jobs and time.time() < deadline:
                queue = pending(set(running.values()))
                if not queue:
                    break
                cell = queue.pop(0)
                running[ex.submit(run_cell, *cell, args.episodes, demos, str(wd))] = cell
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                cell = running.pop(f)
                key = cell_key(*cell)
                try:
                    r = f.result()
                except Exception as e:  # noqa: BLE001 - record and go on with the other cells
                    data["failed"][key] = f"{type(e).__name__}: {e}"
                    print(f"[{time.time() - t0:6.0f} s] {key}: FAILED {e}", flush=True)
                else:
                    data["cells"][key] = r
                    print(f"[{time.time() - t0:6.0f} s] {key}: {r['successes']}/{r['n']}; train {r['train_cpu_s']:.0f} "
                          f"CPU-s ({r['train_wall_s']:.0f} wall, compile {r['compile_cpu_s']:.0f}), rollouts "
                          f"{r['rollout_cpu_s']:.0f} CPU-s ({r['rollout_wall_s']:.0f} wall); load {r['load1_end']:.1f}",
                          flush=True)
                save_results(out, data)
    print_table(data)
    return 0


# ----------------------------------------------------------------------------- the table

def summarise(data: dict) -> list[dict]:
    """One row per arm x length: per-seed successes, mean, sd, costs, episode lengths."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in data["cells"].values():
        groups.setdefault((r["arm"], r["steps"]), []).append(r)
    order = {a: i for i, a in enumerate((*FIXES, BASELINE))}
    rows = []
    for (arm, steps), rs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        rs = sorted(rs, key=lambda r: r["seed"])
        rates = [r["successes"] / r["n"] for r in rs]
        eps = [e for r in rs for e in r["episodes"]]
        ok = [e["steps"] for e in eps if e["success"]]
        bad = [e["steps"] for e in eps if not e["success"]]
        # compile-free training: cells whose first step did not compile (a warm worker process)
        warm = [r["train_cpu_s"] for r in rs if r["compile_cpu_s"] < 5.0]
        rows.append({
            "arm": arm, "steps": steps, "seeds": [r["seed"] for r in rs], "successes": [r["successes"] for r in rs],
            "n": rs[0]["n"], "mean": statistics.fmean(rates), "sd": statistics.stdev(rates) if len(rates) > 1 else float("nan"),
            "train_cpu_s": statistics.fmean(r["train_cpu_s"] for r in rs),
            "train_cpu_warm_s": statistics.fmean(warm) if warm else float("nan"),
            "compile_cpu_s": max(r["compile_cpu_s"] for r in rs),
            "train_wall_s": statistics.fmean(r["train_wall_s"] for r in rs),
            "rollout_cpu_s": statistics.fmean(r["rollout_cpu_s"] for r in rs),
            "rollout_wall_s": statistics.fmean(r["rollout_wall_s"] for r in rs),
            "episode_cpu_s": sum(r["rollout_cpu_s"] for r in rs) / max(1, len(eps)),
            "ep_len": statistics.fmean(e["steps"] for e in eps),
            "ep_len_success": statistics.fmean(ok) if ok else float("nan"),
            "ep_len_failure": statistics.fmean(bad) if bad else float("nan"),
        })
    return rows


def print_table(data: dict) -> None:
    rows = summarise(data)
    n = rows[0]["n"] if rows else 0
    print(f"\narm x length on {data.get('meta', {}).get('suite')} task {data.get('meta', {}).get('task')}, "
          f"{n} episodes per seed (init states 0..{n - 1}); CPU-s = process CPU time of one seed")
    print(f"| arm | steps | successes per seed (/{n}) | mean | between-seed sd | train CPU-s (warm) | compile CPU-s | "
          "train wall-s | rollout CPU-s | rollout wall-s | CPU-s/episode | mean ep. len (success / failure) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arm']} | {r['steps']} | {' '.join(map(str, r['successes']))} | {100 * r['mean']:.0f}% | "
              f"{100 * r['sd']:.1f} pts | {r['train_cpu_s']:.0f} ({r['train_cpu_warm_s']:.0f}) | {r['compile_cpu_s']:.0f} | "
              f"{r['train_wall_s']:.0f} | {r['rollout_cpu_s']:.0f} | {r['rollout_wall_s']:.0f} | {r['episode_cpu_s']:.2f} | "
              f"{r['ep_len']:.0f} ({r['ep_len_success']:.0f} / {r['ep_len_failure']:.0f}) |")


# ----------------------------------------------------------------------------- the power model

SD_STATE = 1.0          # the calibration benchmark's state difficulty (logit); shared by every arm
POWER_FROM, POWER_DELTA = 0.45, 0.25   # the calibration's +25 points (0.45 -> 0.70)
TESTED, CONTROL = "fix_minmax", BASELINE


def expected_rate_var(rate: float, sd_seed: float, n_eps: int, rng, worlds: int = 60, seeds: int = 200) -> float:
    """E[sample variance of per-seed success rates] over n_eps init states, in the calibration's model
    success ~ Bernoulli(expit(mu + b_seed + u_state)), b ~ N(0, sd_seed^2), u ~ N(0, SD_STATE^2), with mu
    set so that the marginal rate is `rate`. Binomial noise included (what a measured sd contains)."""
    from scipy.special import expit

    from ablation.calibration import mu_for_rate

    mu = mu_for_rate(min(max(rate, 0.005), 0.995), sd_seed, SD_STATE)
    out = []
    for _ in range(worlds):
        u = rng.normal(0, SD_STATE, n_eps)
        b = rng.normal(0, sd_seed, seeds)
        p = expit(mu + u[None, :] + b[:, None])
        out.append((rng.random(p.shape) < p).mean(1).var(ddof=1))
    return float(sum(out) / len(out))


def sd_seed_logit(rate: float, sd_rates: float, n_eps: int, seed: int = 0) -> float:
    """The between-seed sd on the logit scale (the calibration's sd_seed) whose expected per-seed rate
    variance at this mean rate and episode count equals the measured one (moment matching). 0 when
    the measured spread is no more than episode noise."""
    import numpy as np

    target = sd_rates ** 2
    f = lambda sd: expected_rate_var(rate, sd, n_eps, np.random.default_rng(seed)) - target  # common numbers
    if f(0.0) >= 0:
        return 0.0
    lo, hi = 0.0, 4.0
    if f(hi) < 0:
        return hi
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def staged_procedure(hyps, skipped, outcomes, facts, stages, rules):
    """The plan's look loop with seeds as well as episodes added in looks: stage k = (seeds, episodes)
    per arm for the arms of undecided comparisons. Alpha is spent by information = seeds x episodes
    (the plan's own episode looks are the case of fixed seeds)."""
    from ablation.analysis import judge, mark_left_out
    from ablation.calibration import next_look, to_records

    info = [s * e for s, e in stages]
    have = {arm: stages[0] for arm in outcomes}
    previous: dict = {}
    comps = []
    for k in range(len(stages)):
        cut = {a: o[: have[a][0]] for a, o in outcomes.items()}
        recs = to_records(cut, {a: have[a][1] for a in outcomes})
        comps = mark_left_out(judge(hyps, recs, facts, look_index=k, looks=info, previous=previous, rules=rules),
                              skipped)
        next_look(comps, previous, have, stages[k + 1] if k + 1 < len(stages) else None)
    return comps, have


def simulate_power(stages, sd_seed: float, studies: int, seed: int = 0, rate_from: float = POWER_FROM,
                   delta: float = POWER_DELTA) -> tuple[float, float, float, float]:
    """(power, MC SE, mean seeds, mean episodes per seed) of 'better' for fix_minmax vs the baseline at
    +25 points (0.45 -> 0.70, every other arm null at 0.45), running `--plan all`'s hypotheses, family
    and alpha spending with the given stages [(seeds, episodes), ...]; seeds and episodes are those the
    tested arm ended with."""
    import numpy as np

    from ablation.analysis import ArmFacts, with_demo_spread
    from ablation.calibration import draw_outcomes, draw_world, mu_for_rate, trained_arms
    from ablation.rules import DEFAULT_RULES

    rng = np.random.default_rng(seed)
    hyps, skipped = plan_all()
    arms = trained_arms(hyps, skipped, 2.0)
    facts = with_demo_spread({a: ArmFacts(rot_spread_deg=2.0) for a in arms}, {a for h in hyps for a in h.arms()})
    mu_c = mu_for_rate(rate_from, sd_seed, SD_STATE)
    mus = {a: mu_c for a in arms}
    mus[TESTED] = mu_for_rate(rate_from + delta, sd_seed, SD_STATE)
    n_seeds, n_eps = max(s for s, _ in stages), max(e for _, e in stages)
    hits, seeds_used, eps_used = 0, 0.0, 0.0
    for _ in range(studies):
        world = draw_world(rng, mus, n_seeds=n_seeds, n_states=n_eps, sd_seed=sd_seed, sd_state=SD_STATE)
        comps, have = staged_procedure(hyps, skipped, draw_outcomes(rng, world), facts, stages, DEFAULT_RULES)
        hits += any(c.arm == TESTED and c.control == CONTROL and c.word == "better" for c in comps)
        seeds_used += have[TESTED][0]
        eps_used += have[TESTED][1]
    p = hits / studies
    return p, math.sqrt(max(p * (1 - p), 1e-12) / studies), seeds_used / studies, eps_used / studies


@functools.lru_cache(maxsize=1)
def plan_all() -> tuple[list, dict]:
    """--plan all's hypotheses and left-out arms, read once per process."""
    from ablation.calibration import plan_hypotheses

    return plan_hypotheses("all")


def cached_power(cache: Path, stages, sd_seed: float, studies: int, seed: int, rate_from: float = POWER_FROM):
    """simulate_power, remembered in `cache` (a JSON file): the costs can be recomputed without
    simulating again."""
    hyps, skipped = plan_all()   # the family the power is for: a changed plan is a new key
    family = [sorted(h.name for h in hyps), sorted(skipped)]
    key = json.dumps([stages, round(sd_seed, 4), studies, seed, round(rate_from, 4), family])
    memo = json.loads(cache.read_text()) if cache.is_file() else {}
    if key not in memo:
        memo[key] = simulate_power(stages, sd_seed, studies, seed=seed, rate_from=rate_from)
        memo.update(json.loads(cache.read_text()) if cache.is_file() else {})
        save_results(cache, memo)
    return tuple(memo[key])


def pool_sd(v: list[tuple[float, int]]) -> float:
    """The df-weighted pool of (sd, df) pairs' variances."""
    return math.sqrt(sum(s * s * d for s, d in v) / max(1, sum(d for _, d in v)))


def plan_trained_fixes() -> list[str]:
    """The fixes --plan all trains on libero_object task 0 (the rotation cells dropped there)."""
    from ablation.calibration import trained_arms

    hyps, skipped = plan_all()
    return [a for a in FIXES if a in trained_arms(hyps, skipped, 2.0)]


def candidate_designs() -> dict[str, list[tuple[int, int]]]:
    """name -> stages [(seeds, episodes per seed), ...]; one stage = no looks."""
    d = {}
    for k in (3, 4, 5, 6, 8):
        d[f"{k} seeds x 20"] = [(k, 20)]
        d[f"{k} seeds x 20/35/50"] = [(k, 20), (k, 35), (k, 50)]
    d["4/6/8 seeds x 20"] = [(4, 20), (6, 20), (8, 20)]
    d["5/8 seeds x 20"] = [(5, 20), (8, 20)]
    return d


def cost_model(data: dict) -> dict:
    """Per-seed CPU-s as a function of length, fitted on every measured cell (the fixes and the
    baseline): train_cpu(L) = a + b L (least squares; b from the step CPU when only one length ran),
    rollouts = CPU-s per policy step x policy steps, with an episode's length its success or failure
    length (the mean over every measured episode), so cost per episode = c (p len_s + (1 - p) len_f)."""
    import numpy as np

    cells = [r for r in data["cells"].values() if not r.get("resumed")]
    L = np.array([r["steps"] for r in cells], float)
    y = np.array([r["train_cpu_s"] - max(0.0, r["compile_cpu_s"] - 5.0) for r in cells])  # compile apart
    if len(set(L.tolist())) >= 2:
        b, a = np.polyfit(L, y, 1)
    else:
        b = float(np.mean([r["step_cpu_s"] / r["trained_steps"] for r in cells]))
        a = float(np.mean(y - b * L))
    steps = sum(e["steps"] for r in cells for e in r["episodes"])
    c = sum(r["rollout_cpu_s"] for r in cells) / max(steps, 1)
    ok = [e["steps"] for r in cells for e in r["episodes"] if e["success"]]
    bad = [e["steps"] for r in cells for e in r["episodes"] if not e["success"]]
    compile_cold = max((r["compile_cpu_s"] + r["train_child_cpu_s"] for r in cells), default=0.0)
    return {"train_a": float(a), "train_b": float(b), "cpu_per_policy_step": c,
            "len_success": statistics.fmean(ok) if ok else 150.0, "len_failure": statistics.fmean(bad) if bad else 280.0,
            "compile_cold_cpu_s": compile_cold, "cells": len(cells)}


def seed_cost_s(cm: dict, steps: int, episodes: float, rate: float) -> float:
    """Modelled CPU-s of one seed: training to `steps` plus `episodes` at success `rate` (compile apart)."""
    ep = cm["cpu_per_policy_step"] * (rate * cm["len_success"] + (1 - rate) * cm["len_failure"])
    return cm["train_a"] + cm["train_b"] * steps + episodes * ep


SETUP_S = 330.0          # scripts/setup.sh from a fresh clone: 226-330 s on 2 shared cores (README)
DEMO_CPU_S, GATE_CPU_S, N_DEMOS, N_CODECS = 4.5, 30.0, 50, 4   # the profile's measured costs; all's codecs
# The seed's baseline, by length, from the harness's plan runs on this task (docs/measurements.md):
# 2% at 600 steps (`all`), 10% at 1200 (this benchmark, 2 seeds: 2/20 and 2/20), 19% at 4x = 2400
# (`training_length`, H4); failing episodes run 280 steps.
BASELINE_RATE = {600: 0.02, 1200: 0.10, 2400: 0.19}


def plan_all_cpu_s(cm: dict, o: dict, p_fix: float) -> tuple[float, float]:
    """(expected, all looks) CPU-s of --plan all's work with design `o`: demos, Gate A, the fixes it trains at
    success p_fix and the baseline (failing: full-length episodes), each with the design's seeds and
    episodes (expected: the tested arm's; all looks: the last stage's, every arm)."""
    fixed = N_DEMOS * DEMO_CPU_S + N_CODECS * GATE_CPU_S + 2 * cm["compile_cold_cpu_s"]
    last_s, last_e = max(s for s, _ in o["stages"]), max(e for _, e in o["stages"])
    n_fixes = len(plan_trained_fixes())
    per = lambda seeds, eps: seeds * (n_fixes * seed_cost_s(cm, o["steps"], eps, p_fix)
                                      + seed_cost_s(cm, o["steps"], eps, BASELINE_RATE.get(o["steps"], 0.19)))
    return fixed + per(o["seeds"], o["episodes"]), fixed + per(last_s, last_e)


def parse_extra(items: list[str]) -> list[dict]:
    """Earlier measurements: 'arm:steps:episodes:k1,k2,...' (successes per seed)."""
    rows = []
    for it in items:
        arm, steps, n, ks = it.split(":")
        k = [int(x) for x in ks.split(",")]
        rates = [x / int(n) for x in k]
        rows.append({"arm": arm, "steps": int(steps), "n": int(n), "seeds": list(range(len(k))), "successes": k,
                     "mean": statistics.fmean(rates), "sd": statistics.stdev(rates) if len(k) > 1 else float("nan"),
                     "source": "extra"})
    return rows


def cmd_power(args) -> int:
    data = load_many(args.workdir)
    measured = summarise(data)
    rows = [r for r in measured + parse_extra(args.extra) if len(r["seeds"]) >= 2]
    cm = cost_model(data)
    print(f"cost model (CPU-s of one seed, compile apart; {cm['cells']} cells): train = {cm['train_a']:.0f} + "
          f"{cm['train_b']:.4f} x steps; rollouts {cm['cpu_per_policy_step'] * 1000:.1f} CPU-ms per policy step, "
          f"episodes {cm['len_success']:.0f} steps when they succeed, {cm['len_failure']:.0f} when they fail; "
          f"a cold compile {cm['compile_cold_cpu_s']:.0f} CPU-s once per worker process")
    print(f"\n1. Between-seed sd on the logit scale (the calibration's sd_seed; state sd {SD_STATE}), by moment "
          "matching the measured per-seed rate variance")
    print("| arm | steps | source | seeds x episodes | per-seed successes | mean | sd of rates | sd_seed (logit) |")
    print("|---|---|---|---|---|---|---|---|")
    by_len: dict[int, list[tuple[float, int]]] = {}
    every_fix: dict[int, list[tuple[float, int]]] = {}
    rates: dict[int, list[float]] = {}
    plan_fixes = plan_trained_fixes()
    for r in rows:
        sd = sd_seed_logit(r["mean"], r["sd"], r["n"])
        print(f"| {r['arm']} | {r['steps']} | {r.get('source', 'this run')} | {len(r['seeds'])} x {r['n']} | "
              f"{' '.join(map(str, r['successes']))} | {100 * r['mean']:.0f}% | {100 * r['sd']:.1f} pts | {sd:.2f} |")
        if r["arm"] in FIXES:
            every_fix.setdefault(r["steps"], []).append((sd, len(r["seeds"]) - 1))
        if r["arm"] in plan_fixes:
            by_len.setdefault(r["steps"], []).append((sd, len(r["seeds"]) - 1))
            rates.setdefault(r["steps"], []).append(r["mean"])
    # Pooled over the fixes --plan all trains (df-weighted mean of the variances): one sd_seed per length;
    # every measured fix's pool is printed beside it
    pooled = {L: pool_sd(v) for L, v in sorted(by_len.items())}
    print(f"pooled over --plan all's fixes ({', '.join(plan_fixes)}): " + ", ".join(
        f"{L} steps: {s:.2f} ({sum(d for _, d in by_len[L])} df)" for L, s in pooled.items()))
    print("pooled over every measured fix: " + ", ".join(
        f"{L} steps: {pool_sd(v):.2f} ({sum(d for _, d in v)} df)" for L, v in sorted(every_fix.items())))
    sds = [(L, sd, True) for L, sd in pooled.items()]
    for item in args.sd:   # sensitivity: the same designs at other spreads (e.g. an upper bound)
        L, sd = item.split(":")
        sds.append((int(L), float(sd), False))
    print(f"\n2. Power to detect +{100 * POWER_DELTA:.0f} points ({POWER_FROM:.2f} -> {POWER_FROM + POWER_DELTA:.2f}) for "
          f"{TESTED} vs {CONTROL} within --plan all's family (Holm, O'Brien-Fleming across looks, alpha 0.05), "
          f"{args.studies} simulated studies per cell. CPU-min per arm = E[seeds] x modelled seed cost (training "
          "to the length + E[episodes] at the fixes' mean success there), compile apart")
    print("(power at level: the same +25 points, ending at the fixes' measured mean success at that length)")
    print("| steps | sd_seed | design | power | MC SE | power at level | E[seeds] | E[episodes/seed] | CPU-min per arm (expected) | "
          "CPU-min per arm (all looks) | power per CPU-min |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    out = []
    for L, sd, measured in sorted(sds):
        if args.lengths and L not in args.lengths:
            continue
        p_fix = statistics.fmean(rates[L]) if L in rates else 0.8
        for name, stages in candidate_designs().items():
            cache = Path(args.workdir[0]) / "power_cache.json"
            p, se, s_used, e_used = cached_power(cache, stages, sd, args.studies, args.seed)
            top = min(p_fix, 0.97)
            p_lvl = cached_power(cache, stages, sd, args.studies, args.seed, rate_from=top - POWER_DELTA)[0]
            cost = s_used * seed_cost_s(cm, L, e_used, p_fix) / 60
            cmax = max(s for s, _ in stages) * seed_cost_s(cm, L, max(e for _, e in stages), p_fix) / 60
            out.append({"steps": L, "sd_seed": sd, "design": name, "stages": stages, "power": p, "se": se,
                        "power_at_level": p_lvl, "level": top, "measured_sd": measured,
                        "seeds": s_used, "episodes": e_used, "cpu_min": cost, "cpu_min_max": cmax})
            print(f"| {L} | {sd:.2f} | {name} | {p:.2f} | {se:.3f} | {p_lvl:.2f} ({100 * top:.0f}%) | {s_used:.1f} | {e_used:.0f} | {cost:.1f} | "
                  f"{cmax:.1f} | {p / cost:.3f} |", flush=True)
    # The choice is made at the measured spreads; the --sd rows say how robust it is.
    ok = [o for o in out if o["power"] >= 0.8 and o["measured_sd"]]
    best = min(ok, key=lambda o: o["cpu_min"]) if ok else max(out, key=lambda o: o["power"])
    ok = [o for o in out if o["power"] >= 0.8]
    print(f"\n3. --plan all on 2 cores from a fresh clone: set-up {SETUP_S / 60:.1f} min + (demos + Gate A + "
          f"{len(plan_trained_fixes())} fixes and the baseline x seeds x (training + episodes)) / 2 cores, from the cost model (CPU-s: an idle machine; "
          "the 45-minute target is wall time), for the designs with power >= 0.8 and the cheapest of each length")
    print("| steps | sd_seed | design | power | plan CPU-min (expected) | wall min on 2 cores (expected) | wall min (all looks) | fits 45 min |")
    print("|---|---|---|---|---|---|---|---|")
    shown = ok or sorted(out, key=lambda o: -o["power"])[:6]
    for o in sorted(shown, key=lambda o: (o["steps"], o["sd_seed"], o["cpu_min"])):
        p_fix = statistics.fmean(rates[o["steps"]]) if o["steps"] in rates else 0.8
        exp_s, max_s = plan_all_cpu_s(cm, o, p_fix)
        wall, wall_max = SETUP_S + exp_s / 2, SETUP_S + max_s / 2
        o["plan_cpu_min"], o["plan_wall_min"], o["plan_wall_max_min"] = exp_s / 60, wall / 60, wall_max / 60
        print(f"| {o['steps']} | {o['sd_seed']:.2f} | {o['design']} | {o['power']:.2f} | {exp_s / 60:.0f} | {wall / 60:.0f} | {wall_max / 60:.0f} | "
              f"{'yes' if wall_max <= 2700 else ('expected only' if wall <= 2700 else 'no')} |")
    print(f"\nchoice ({'cheapest with power >= 0.8' if ok else 'no design reaches 0.8: the most power'}): "
          f"{best['steps']} steps, {best['design']}: power {best['power']:.2f}, {best['cpu_min']:.1f} CPU-min per arm")
    (Path(args.workdir[0]) / "power.json").write_text(json.dumps({"sd_seed": [list(x) for x in sds], "cost_model": cm,
                                                               "rows": out, "choice": best}, indent=1))
    return 0

def cmd_table(args) -> int:
    data = load_many(args.workdir)
    if args.json:
        print(json.dumps(summarise(data), indent=1))
    else:
        print_table(data)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train and roll out the queued cells (resumes)")
    r.add_argument("--workdir", default="workdir/budget")
    r.add_argument("--jobs", type=int, default=2, help="cells in parallel, one process each")
    r.add_argument("--episodes", type=int, default=20, help="closed-loop episodes per cell (init states 0..N-1)")
    r.add_argument("--queue", default="default", help="'default' or arm:seed[-seed]:steps,... in order")
    r.add_argument("--queue-file", default="", help="a file of queue items (whitespace-separated), re-read "
                   "before each cell starts (overrides --queue)")
    r.add_argument("--limit-s", type=float, default=0, help="start no new cell after this many seconds (0: none)")
    r.set_defaults(func=cmd_run)
    t = sub.add_parser("table", help="print the table of what is recorded")
    t.add_argument("--workdir", nargs="+", default=["workdir/budget"], help="one or more (their cells merged)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_table)
    pw = sub.add_parser("power", help="the power model at the measured spread, and the choice")
    pw.add_argument("--workdir", nargs="+", default=["workdir/budget"], help="one or more (their cells merged)")
    pw.add_argument("--studies", type=int, default=1000, help="simulated studies per (length, design) cell")
    pw.add_argument("--seed", type=int, default=0)
    pw.add_argument("--lengths", type=int, nargs="*", default=[], help="only these lengths (default: every one)")
    pw.add_argument("--extra", nargs="*", default=[], metavar="ARM:STEPS:EPISODES:K1,K2,..",
                    help="earlier per-seed successes to pool with the measured ones (e.g. a plan's)")
    pw.add_argument("--sd", nargs="*", default=[], metavar="STEPS:SD",
                    help="also evaluate the designs at this sd_seed for this length (e.g. a bound)")
    pw.set_defaults(func=cmd_power)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
