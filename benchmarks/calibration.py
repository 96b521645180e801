"""Calibration benchmark: the plan's own decision procedure on synthetic outcomes with a known truth.

    .venv/bin/python benchmarks/calibration.py                 # the full table (~10 min on 2 cores)
    .venv/bin/python benchmarks/calibration.py --studies 200   # quicker, wider Monte Carlo errors
    .venv/bin/python benchmarks/calibration.py --old 300       # also the pre-calibration bootstrap method

It runs `--plan all`'s real procedure (its hypothesis files, seeds and looks, O'Brien-Fleming spending,
one Shaffer-Holm family, left-out arms) on libero_object-like studies (the demos do not turn, so the
rotation cells are untestable), and prints, per regime:
  - the family-wise error of "better"/"worse" under the global null (every arm the same);
  - the coverage of the 95% interval of one comparison (truth: the seed-averaged success difference
    on the states run);
  - the size of the equivalence test: P("no meaningful difference") at a true difference of exactly
    the margin;
  - the power to detect +25 points with 3, 5 and 8 seeds and the plan's own number;
each with its Monte Carlo standard error. Targets: FWER <= 0.05 (within 2 MC SE), coverage >= 0.93,
equivalence size <= alpha. It writes the plan's design (seeds per arm, looks) into
ablation/calibration_table.json, beside the designs measured before; the report quotes the row of the
design a plan ran.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ablation.analysis import ArmFacts, ComparisonResult, with_demo_spread  # noqa: E402
from ablation.calibration import (TABLE_PATH, draw_outcomes, draw_world, mu_for_rate, plan_hypotheses,  # noqa: E402
                                  run_procedure, to_records, trained_arms)
from ablation.rules import DEFAULT_RULES  # noqa: E402
from ablation.spec_plan import load_plan  # noqa: E402
from ablation.stats import (SequentialDesign, holm, paired_effect, seed_effect, verdict)  # noqa: E402

_PLAN = load_plan("all")
LOOKS = tuple(_PLAN.episodes.looks)   # the design --plan all runs, which the table row describes
SEEDS = len(_PLAN.seeds)
SD_STATE, SD_INTER = 1.0, 0.3
ROT_DEG = 2.0   # libero_object 0: the expert never turns


def se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def old_judge(hyps, records, facts, *, look_index, looks, previous, rules):
    """The pre-calibration method (hierarchical bootstrap, Holm over differences, TOST on the bootstrap
    interval), reproduced for comparison only."""
    from ablation.analysis import unmet_needs

    design = SequentialDesign(looks=tuple(looks), alpha=rules.alpha, spending=rules.spending)
    alpha_k = design.nominal_alpha(look_index)
    arms = set(records.arm.tolist())
    n_comp = sum(len(h.comparisons) for h in hyps)
    n_boot = max(4000, 2 * design.required_n_boot(max(1, n_comp)))
    out, effects = [], {}
    for h in hyps:
        for c in h.comparisons:
            res = ComparisonResult(h.name, c.arm, c.control, c.expect, c.label, "inconclusive")
            if unmet_needs((*h.needs, *c.needs), [c.arm, c.control], facts, rules):
                res.word = "untestable"
            elif c.arm not in arms or c.control not in arms:
                res.word = "missing"
            else:
                effects[(h.name, c.arm, c.control)] = paired_effect(records, c.arm, c.control, n_boot=n_boot)
            out.append(res)
    adj = holm({"|".join(k): e.p_value for k, e in effects.items()}, rules.alpha) if effects else {}
    for res in out:
        key = (res.hypothesis, res.arm, res.control)
        if key not in effects:
            continue
        prev = previous.get(key)
        if prev is not None and prev.decided:
            res.word, res.decided_at_look = prev.word, prev.decided_at_look
            continue
        w = verdict(effects[key], adj["|".join(key)], alpha_k, margin=rules.margin)
        res.word = w
        if res.decided:
            res.decided_at_look = look_index
    return out


def study_words(rng, hyps, skipped, arms, mus, n_seeds, sd_seed, judge_fn=None):
    facts = with_demo_spread({a: ArmFacts(rot_spread_deg=ROT_DEG) for a in arms},
                             {a for h in hyps for a in h.arms()})
    world = draw_world(rng, mus, n_seeds=n_seeds, sd_seed=sd_seed, sd_state=SD_STATE, sd_inter=0.0)
    outcomes = draw_outcomes(rng, world)
    kw = {"judge_fn": judge_fn} if judge_fn else {}
    return run_procedure(hyps, skipped, outcomes, facts, LOOKS, DEFAULT_RULES, **kw)


def fwer(rng, hyps, skipped, arms, rate, sd_seed, n, n_seeds=SEEDS, judge_fn=None):
    mu = mu_for_rate(rate, sd_seed, SD_STATE)
    bad = 0
    for _ in range(n):
        comps = study_words(rng, hyps, skipped, arms, {a: mu for a in arms}, n_seeds, sd_seed, judge_fn)
        bad += any(c.word in ("better", "worse") for c in comps)
    return bad / n


def coverage(rng, rate_c, rate_a, sd_seed, n, n_seeds=SEEDS, n_states=50):
    mu_c, mu_a = mu_for_rate(rate_c, sd_seed, SD_STATE, SD_INTER), mu_for_rate(rate_a, sd_seed, SD_STATE, SD_INTER)
    hit = 0
    for _ in range(n):
        w = draw_world(rng, {"a": mu_a, "c": mu_c}, n_seeds=n_seeds, n_states=n_states, sd_seed=sd_seed,
                       sd_state=SD_STATE, sd_inter=SD_INTER)
        e = seed_effect(to_records(draw_outcomes(rng, w), {"a": n_states, "c": n_states}), "a", "c")
        hit += e.lo <= w.true_effect("a", "c", n_states) <= e.hi
    return hit / n


def tail_ratio(rng, rate, sd_seed, n, levels, n_seeds=SEEDS, n_states=50):
    """P(null p < level) / level for one comparison (no family, no looks): the tails the decisions use."""
    mu = mu_for_rate(rate, sd_seed, SD_STATE)
    ps = []
    for _ in range(n):
        w = draw_world(rng, {"a": mu, "c": mu}, n_seeds=n_seeds, n_states=n_states, sd_seed=sd_seed,
                       sd_state=SD_STATE)
        ps.append(seed_effect(to_records(draw_outcomes(rng, w), {"a": n_states, "c": n_states}), "a", "c").p_value)
    ps = np.array(ps)
    return {lv: float((ps < lv).mean() / lv) for lv in levels}


def shifted(arms, arm, control, rate_c, delta, sd_seed):
    """mus with every arm at rate_c except `arm` at rate_c + delta (marginal rates)."""
    mu_c = mu_for_rate(rate_c, sd_seed, SD_STATE)
    mus = {a: mu_c for a in arms}
    mus[arm] = mu_for_rate(rate_c + delta, sd_seed, SD_STATE)
    return mus


def rate_of(rng, hyps, skipped, arms, mus, n, n_seeds, sd_seed, arm, control, word):
    k = 0
    for _ in range(n):
        comps = study_words(rng, hyps, skipped, arms, mus, n_seeds, sd_seed)
        k += any(c.arm == arm and c.control == control and c.word == word for c in comps)
    return k / n


def write_table(args, rows: dict) -> None:
    """This design's row in ablation/calibration_table.json (the rows of other designs are kept, so a
    report of an earlier plan still finds its own); the regime rows are this run's."""
    p = rows["power"]
    design = {"seeds": SEEDS, "looks": list(LOOKS), "n_regimes": len(rows["fwer"]),
              "fwer_max": max(r["fwer"] for r in rows["fwer"]), "fwer_se": se(0.05, args.studies),
              "coverage_min": min(r["coverage"] for r in rows["coverage"]),
              "equiv_size_max": max(r["size"] for r in rows["equiv"]),
              "power25_min": min(r["power"] for r in p if r["seeds"] == SEEDS),
              "power25_max": max(r["power"] for r in p if r["seeds"] == SEEDS)}
    try:
        old = json.loads(TABLE_PATH.read_text()).get("designs", [])
    except (OSError, ValueError):
        old = []
    designs = [d for d in old if (d.get("seeds"), list(d.get("looks", []))) != (SEEDS, list(LOOKS))] + [design]
    extra = [{"seeds": k, "looks": list(LOOKS), "power25": {str(r["sd_seed"]): r["power"] for r in p
                                                           if r["seeds"] == k}} for k in sorted({3, 5, 8} - {SEEDS})]
    TABLE_PATH.write_text(json.dumps({"command": f"benchmarks/calibration.py --studies {args.studies} "
                                      f"--power-studies {args.power_studies}",
                                      "designs": designs, "power_other_seeds": extra, "rows": rows}, indent=1) + "\n")
    print(f"wrote {TABLE_PATH.relative_to(REPO)} (the design {SEEDS} seeds x looks {list(LOOKS)}; "
          f"{len(designs)} design(s) in it)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=1000, help="simulated studies per FWER regime (default 1000)")
    ap.add_argument("--coverage-studies", type=int, default=2000, help="simulated comparisons per coverage cell")
    ap.add_argument("--power-studies", type=int, default=400, help="simulated studies per power / size cell")
    ap.add_argument("--old", type=int, default=0, metavar="N",
                    help="also run the pre-calibration bootstrap method on N null studies (slow: ~0.5 s each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help=f"do not write {TABLE_PATH.name}")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    hyps, skipped = plan_hypotheses("all")
    arms = trained_arms(hyps, skipped, ROT_DEG)
    t0 = time.time()
    print(f"plan all: arms trained on a task whose demos do not turn: {', '.join(arms)}; {SEEDS} seeds, looks {list(LOOKS)}; "
          f"alpha {DEFAULT_RULES.alpha}, margin {DEFAULT_RULES.margin}; sd_state {SD_STATE}, sd_inter {SD_INTER} (logit)")
    rows = {"fwer": [], "coverage": [], "equiv": [], "power": [], "tails": []}

    print(f"\n1. Family-wise error of 'better'/'worse' under the global null ({SEEDS} seeds, {args.studies} studies each; "
          f"target <= 0.05 within 2 MC SE)")
    print(f"{'rate':>6} {'sd_seed':>8} {'FWER':>7} {'MC SE':>7}  ok")
    for rate in (0.02, 0.50, 0.90):
        for sd in (0.3, 0.6, 1.2):
            f = fwer(rng, hyps, skipped, arms, rate, sd, args.studies)
            ok = f <= 0.05 + 2 * se(0.05, args.studies)
            rows["fwer"].append({"rate": rate, "sd_seed": sd, "fwer": f, "se": se(f, args.studies), "ok": ok})
            print(f"{rate:6.2f} {sd:8.1f} {f:7.3f} {se(f, args.studies):7.3f}  {'yes' if ok else 'NO'}", flush=True)

    print(f"\n2. Coverage of the 95% interval, one comparison ({SEEDS} seeds, 50 states, {args.coverage_studies} each; "
          "target >= 0.93)")
    print(f"{'control->arm':>13} {'sd_seed':>8} {'coverage':>9} {'MC SE':>7}  ok")
    for rc, ra in ((0.02, 0.02), (0.50, 0.50), (0.85, 0.99), (0.03, 0.60), (0.50, 0.75)):
        for sd in (0.3, 0.6, 1.2):
            c = coverage(rng, rc, ra, sd, args.coverage_studies)
            ok = c >= 0.93
            rows["coverage"].append({"control": rc, "arm": ra, "sd_seed": sd, "coverage": c,
                                     "se": se(c, args.coverage_studies), "ok": ok})
            print(f"{f'{rc:.2f}->{ra:.2f}':>13} {sd:8.1f} {c:9.3f} {se(c, args.coverage_studies):7.3f}  "
                  f"{'yes' if ok else 'NO'}", flush=True)

    levels = tuple(round(x, 5) for x in SequentialDesign(LOOKS).nominal_alphas())
    print(f"\n3. Tails: P(null p < level) / level for one comparison at the looks' levels {levels} "
          f"(50% success, sd_seed 0.6; 1 = exact)")
    tr = tail_ratio(rng, 0.5, 0.6, max(4000, args.coverage_studies * 2), levels)
    rows["tails"].append({str(k): v for k, v in tr.items()})
    print("  " + ", ".join(f"{k}: {v:.2f}x" for k, v in tr.items()))

    m = DEFAULT_RULES.margin
    arm, ctl = "fix_pos_cm", "baseline_rdt"
    print(f"\n4. Equivalence size: P('no meaningful difference') for {arm} vs {ctl} at a true difference of exactly "
          f"+{100 * m:.0f} pts ({SEEDS} seeds, {args.power_studies} studies each; target <= {DEFAULT_RULES.alpha})")
    print(f"{'control->arm':>13} {'sd_seed':>8} {'P(same)':>8} {'MC SE':>7}  ok")
    for rc in (0.02, 0.40, 0.80):
        for sd in (0.3, 0.6, 1.2):
            p = rate_of(rng, hyps, skipped, arms, shifted(arms, arm, ctl, rc, m, sd), args.power_studies, SEEDS,
                        sd, arm, ctl, "no meaningful difference")
            ok = p <= DEFAULT_RULES.alpha + 2 * se(DEFAULT_RULES.alpha, args.power_studies)
            rows["equiv"].append({"control": rc, "sd_seed": sd, "size": p, "se": se(p, args.power_studies), "ok": ok})
            print(f"{f'{rc:.2f}->{rc + m:.2f}':>13} {sd:8.1f} {p:8.3f} {se(p, args.power_studies):7.3f}  "
                  f"{'yes' if ok else 'NO'}", flush=True)

    arm = "fix_minmax"
    print(f"\n5. Power: P('better') for {arm} vs {ctl} at +25 pts (0.45 -> 0.70), the other arms null, "
          f"{args.power_studies} studies each")
    print(f"{'seeds':>6} {'sd_seed':>8} {'power':>7} {'MC SE':>7}")
    for k in sorted({3, 5, 8, SEEDS}):
        for sd in (0.3, 0.6, 1.2):
            p = rate_of(rng, hyps, skipped, arms, shifted(arms, arm, ctl, 0.45, 0.25, sd), args.power_studies, k, sd,
                        arm, ctl, "better")
            rows["power"].append({"seeds": k, "sd_seed": sd, "power": p, "se": se(p, args.power_studies)})
            print(f"{k:6d} {sd:8.1f} {p:7.3f} {se(p, args.power_studies):7.3f}", flush=True)

    if args.old:
        print(f"\n6. The pre-calibration method (hierarchical bootstrap) on the same null, {args.old} studies per regime")
        for rate, sd in ((0.50, 0.6), (0.50, 1.2)):
            f = fwer(rng, hyps, skipped, arms, rate, sd, args.old, judge_fn=old_judge)
            rows.setdefault("old_fwer", []).append({"rate": rate, "sd_seed": sd, "fwer": f, "se": se(f, args.old)})
            print(f"  rate {rate:.2f} sd_seed {sd:.1f}: FWER {f:.3f} (MC SE {se(f, args.old):.3f})", flush=True)

    ok = (all(r["ok"] for r in rows["fwer"]) and all(r["ok"] for r in rows["coverage"])
          and all(r["ok"] for r in rows["equiv"]))
    print(f"\nall targets met: {'yes' if ok else 'NO'}; {time.time() - t0:.0f} s")
    if not args.no_write:
        write_table(args, rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
