"""Calibration of the plan's own decision procedure on synthetic outcomes with a known truth.

Episodes follow success ~ Bernoulli(expit(mu_arm + b_{arm,seed} + u_state + v_{arm,state})): a
between-seed (network) effect b ~ N(0, sd_seed^2), a state difficulty u ~ N(0, sd_state^2) shared by
every arm, and an arm x state interaction v ~ N(0, sd_inter^2). A study runs the plan's real
procedure on them: the hypothesis files, `analysis.judge` at each look, the arms of undecided
comparisons extended to the next look, left-out arms marked. benchmarks/calibration.py prints the
figures; tests/test_calibration.py runs a small version; the report quotes the table it wrote
(ablation/calibration_table.json) for the design a plan used.

Units: rates and effects are success fractions; sd_* are on the logit scale.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import yaml
from scipy.optimize import brentq
from scipy.special import expit

from .analysis import ArmFacts, ComparisonResult, judge, mark_left_out
from .hypothesis import Hypothesis, load_hypothesis
from .needs import untestable_arms
from .rules import DecisionRules
from .spec import EXPERIMENTS_DIR
from .stats import EpisodeArrays

TABLE_PATH = Path(__file__).resolve().with_name("calibration_table.json")
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(40)   # E over N(0, 1) by Gauss-Hermite
_GH_W = _GH_W / _GH_W.sum()


def marginal_rate(mu: float, sd_seed: float, sd_state: float, sd_inter: float = 0.0) -> float:
    """E[expit(mu + b + u + v)] over the seed, state and interaction effects."""
    sd = math.sqrt(sd_seed ** 2 + sd_state ** 2 + sd_inter ** 2)
    return float((_GH_W * expit(mu + sd * _GH_X)).sum())


def mu_for_rate(rate: float, sd_seed: float, sd_state: float, sd_inter: float = 0.0) -> float:
    """The logit mean whose marginal success rate is `rate`."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    return float(brentq(lambda m: marginal_rate(m, sd_seed, sd_state, sd_inter) - rate, -30, 30))


@dataclass(frozen=True)
class World:
    """One synthetic study's truth: per arm, the success probability of each (seed, state) network."""

    p: dict[str, np.ndarray]          # arm -> (n_seeds, n_states)
    cond: dict[str, np.ndarray]       # arm -> (n_states,) E over seeds of p (given these states)

    def true_effect(self, arm: str, control: str, n_states: int) -> float:
        """The estimand: mean over the first n_states states of the seed-averaged success difference."""
        return float((self.cond[arm][:n_states] - self.cond[control][:n_states]).mean())


def draw_world(rng: np.random.Generator, mus: dict[str, float], *, n_seeds: int, n_states: int = 50,
               sd_seed: float, sd_state: float = 1.0, sd_inter: float = 0.0) -> World:
    u = rng.normal(0.0, sd_state, n_states)
    p, cond = {}, {}
    for arm, mu in mus.items():
        v = rng.normal(0.0, sd_inter, n_states) if sd_inter > 0 else np.zeros(n_states)
        b = rng.normal(0.0, sd_seed, n_seeds)
        lin = mu + u + v
        p[arm] = expit(lin[None, :] + b[:, None])
        cond[arm] = (_GH_W[:, None] * expit(lin[None, :] + sd_seed * _GH_X[:, None])).sum(0)
    return World(p, cond)


def draw_outcomes(rng: np.random.Generator, world: World) -> dict[str, np.ndarray]:
    """One episode per (arm, seed, state): the benchmark's protocol (episode i from init state i)."""
    return {arm: rng.random(p.shape) < p for arm, p in world.p.items()}


def to_records(outcomes: dict[str, np.ndarray], episodes: dict[str, int], task: str = "sim/0") -> EpisodeArrays:
    arms, seeds, states, succ = [], [], [], []
    for arm, o in outcomes.items():
        n = episodes.get(arm, 0)
        if n <= 0:
            continue
        k = o.shape[0]
        arms += [arm] * (k * n)
        seeds.append(np.repeat(np.arange(k), n))
        states.append(np.tile(np.arange(n), k))
        succ.append(o[:, :n].reshape(-1))
    if not arms:
        z = np.zeros(0)
        return EpisodeArrays(np.zeros(0, object), np.zeros(0, object), z.astype(np.int64), z.astype(np.int64), z)
    return EpisodeArrays(np.array(arms, dtype=object), np.array([task] * len(arms), dtype=object),
                         np.concatenate(seeds).astype(np.int64), np.concatenate(states).astype(np.int64),
                         np.concatenate(succ).astype(np.float64))


def plan_hypotheses(plan: str = "all") -> tuple[list[Hypothesis], dict[str, str]]:
    """The plan's real hypothesis files and the arms it leaves out."""
    raw = yaml.safe_load((EXPERIMENTS_DIR / "plans" / f"{plan}.yaml").read_text())
    return [load_hypothesis(h) for h in raw.get("hypotheses", [])], dict(raw.get("skip_arms") or {})


def run_procedure(hyps: list[Hypothesis], skipped: dict[str, str], outcomes: dict[str, np.ndarray],
                  facts: dict[str, ArmFacts], looks: Sequence[int], rules: DecisionRules,
                  judge_fn: Callable = judge) -> list[ComparisonResult]:
    """The plan's look loop (ablation/analysis.analyse_look): judge at each look, keep decisions,
    extend every arm of an undecided comparison to the next look."""
    episodes = {arm: looks[0] for arm in outcomes}
    previous: dict = {}
    comps: list[ComparisonResult] = []
    for k, _look in enumerate(looks):
        recs = to_records(outcomes, episodes)
        comps = mark_left_out(judge_fn(hyps, recs, facts, look_index=k, looks=list(looks), previous=previous,
                                       rules=rules), skipped)
        next_look(comps, previous, episodes, looks[k + 1] if k + 1 < len(looks) else None)
    return comps


def next_look(comps: list[ComparisonResult], previous: dict, have: dict, more) -> None:
    """After one look: keep each first decision in `previous` (later looks carry it), and give every arm
    of an undecided comparison `more` (the next look's budget) in `have`; None: this was the last look."""
    for c in comps:
        if c.decided and (c.hypothesis, c.arm, c.control) not in previous:
            previous[(c.hypothesis, c.arm, c.control)] = c
    if more is None:
        return
    for c in comps:
        if c.word == "inconclusive":
            for a in c.involved:
                if a in have:
                    have[a] = more


def trained_arms(hyps: list[Hypothesis], skipped: dict[str, str], facts_deg: float) -> list[str]:
    """The arms a plan trains on a task whose demos turn `facts_deg` degrees: every arm of its
    hypotheses, minus the left-out ones and those the plan drops as untestable there (the plan's own
    rule, `needs.untestable_arms`)."""
    planned = list(dict.fromkeys(a for h in hyps for a in h.arms() if a not in skipped))
    dropped = untestable_arms(hyps, planned, {a: ArmFacts(rot_spread_deg=facts_deg) for a in planned})
    return [a for a in planned if a not in dropped]


def calibration_for(seeds: int, looks: Sequence[int], path: Path = TABLE_PATH) -> str:
    """One sentence with the measured calibration of the design (seeds per arm, looks), or "" when the
    table has no row for it."""
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    for row in table.get("designs", []):
        if row.get("seeds") == seeds and list(row.get("looks", [])) == list(looks):
            return (f"Calibration of this design ({seeds} seeds per arm, looks {list(looks)}; "
                    f"{table.get('command', 'benchmarks/calibration.py')}): family-wise error of 'better'/'worse' "
                    f"under the global null {row['fwer_max']:.3f} at worst over {row['n_regimes']} regimes "
                    f"(Monte Carlo SE {row['fwer_se']:.3f}); 95% interval coverage {row['coverage_min']:.3f} at "
                    f"worst; 'no meaningful difference' at a true difference of exactly the margin "
                    f"{row['equiv_size_max']:.3f} at worst; power to detect +25 points "
                    f"{row['power25_min']:.2f}-{row['power25_max']:.2f}.")
    return ""
