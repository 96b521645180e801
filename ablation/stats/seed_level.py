"""Seed-level inference: the trained network is the unit of replication.

Each (arm, task, seed) network is summarised by its success fraction over the init states that both
arms ran (the pairing: a shared state's difficulty is the same constant in every network's rate, so it
cancels in the difference). The effect of an arm is the difference of the mean per-seed rates, tested
with Welch's t on those rates: a test whose degrees of freedom come from the seeds (2-4 with 3 seeds
per arm), not from the episodes, which cannot buy them back. The calibration benchmark
(benchmarks/calibration.py) measures its error rates on synthetic outcomes with seed, state and
arm x state effects; the earlier hierarchical bootstrap (`effect.paired_effect`) is kept only for
that comparison.

Inference is about the init states that were run (LIBERO's fixed benchmark states) and generalises
over training seeds. Units: rates, effects, margins and variances are fractions (0.10 = 10 points).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

import numpy as np
from scipy.special import stdtr, stdtrit

from .records import EpisodeArrays, EpisodeOutcome, TaskTable, task_table, to_arrays

Records = Iterable[EpisodeOutcome | Mapping[str, Any]] | EpisodeArrays
MAX_SEEDS_SEARCHED = 64   # seeds_needed gives up beyond this many seeds per arm


@dataclass(frozen=True)
class ArmSeeds:
    """One arm's networks on one task: per-seed success fractions over the shared states.

    rates: (K,) per-seed success fraction; episodes: (K,) episodes each seed ran on those states;
    var: the variance used for one seed's rate: the sample variance of `rates` (ddof 1), floored at
    the binomial variance of a seed's rate with no seed effect at all (Jeffreys-smoothed pooled rate),
    which the sample variance of 2-3 near-equal rates at 0% or 100% would otherwise undercut;
    binom: that binomial variance (the part more episodes per seed would shrink)."""

    rates: np.ndarray
    episodes: np.ndarray
    var: float
    binom: float

    @property
    def k(self) -> int:
        return int(self.rates.size)

    @property
    def between_seed_var(self) -> float:
        """The between-network variance of a seed's rate (what more episodes cannot shrink)."""
        return max(0.0, self.var - self.binom)


def arm_seeds(t: TaskTable) -> ArmSeeds:
    n = t.cnt.sum(1)
    rates = t.succ.sum(1) / np.maximum(n, 1)
    # The episode noise of one seed's rate: sum over its states of p_s (1 - p_s) / n^2, with p_s the
    # state's rate over this arm's seeds, shrunk by one pseudo-episode towards the arm's (Jeffreys)
    # rate, so a state every seed failed still counts some noise. State difficulty is shared by both
    # arms and cancels in the difference; only this noise is floored.
    cnt_s, succ_s = t.cnt.sum(0), t.succ.sum(0)
    p_arm = (succ_s.sum() + 0.5) / (cnt_s.sum() + 1.0)
    p_s = (succ_s + p_arm) / (cnt_s + 1.0)
    ran = t.cnt > 0
    per_seed = np.array([(p_s * (1 - p_s) * ran[i]).sum() / max(float(n[i]), 1.0) ** 2 for i in range(len(n))])
    binom = float(per_seed.mean()) if per_seed.size else 0.25
    s2 = float(rates.var(ddof=1)) if rates.size > 1 else 0.0
    return ArmSeeds(rates, n, max(s2, binom), binom)


def welch(a: ArmSeeds, c: ArmSeeds) -> tuple[float, float]:
    """Variance of the difference of the two arms' mean rates and its Welch-Satterthwaite df. An arm
    with one seed has no seed variance of its own: it borrows the other arm's (df of that arm only),
    or, with one seed on both sides, the binomial variance with df = inf (a statement about these two
    networks, not about training; `SeedEffect.method` says so)."""
    va, vc = a.var, c.var
    if a.k < 2 and c.k >= 2:
        va = max(c.var, a.binom)
    if c.k < 2 and a.k >= 2:
        vc = max(a.var, c.binom)
    ua, uc = va / a.k, vc / c.k
    terms = [(u, k - 1) for u, k in ((ua, a.k), (uc, c.k)) if k >= 2]
    den = sum(u * u / d for u, d in terms)
    var = ua + uc
    df = var * var / den if den > 0 else math.inf
    return var, df


@dataclass(frozen=True)
class SeedEffect:
    """Effect of `arm` minus `control` on success (fractions), judged at the seed level.

    estimate: mean over tasks (weighted by shared states) of [mean per-seed rate of the arm minus the
      control's]; se, df: its standard error and Welch-Satterthwaite degrees of freedom (tasks as a
      random factor add the between-task variance, DerSimonian-Laird, with T - 1 df);
    p_value: two-sided Welch t p for effect = 0; lo, hi: the `conf` interval (clipped to [-1, 1]).
    seeds_arm / seeds_control: per task, the arm's per-seed rates (for the power statements).
    """

    arm: str
    control: str
    estimate: float
    se: float
    df: float
    conf: float
    lo: float
    hi: float
    p_value: float
    rate_arm: float
    rate_control: float
    n_seeds_arm: int
    n_seeds_control: int
    n_states: int
    n_tasks: int
    n_episodes_arm: int
    n_episodes_control: int
    successes_arm: int
    successes_control: int
    episodes_per_seed: float
    tau2: float
    method: str
    per_task_parts: tuple = ()   # ((task, ArmSeeds arm, ArmSeeds control, weight), ...)

    @property
    def variance(self) -> float:
        return self.se * self.se

    def interval(self, conf: float) -> tuple[float, float]:
        """Equal-tailed t interval at level `conf`, clipped to [-1, 1]."""
        if not 0.0 < conf < 1.0:
            raise ValueError(f"conf must be in (0, 1), got {conf}")
        if self.se == 0.0:
            return max(-1.0, self.estimate), min(1.0, self.estimate)
        h = float(stdtrit(self.df, (1.0 + conf) / 2.0)) * self.se if math.isfinite(self.df) else \
            float(stdtrit(1e9, (1.0 + conf) / 2.0)) * self.se
        return max(-1.0, self.estimate - h), min(1.0, self.estimate + h)

    def p_equivalence(self, margin: float) -> float:
        """Two one-sided tests (TOST) of |effect| >= margin: the larger of the two one-sided t p's.
        Rejecting it at alpha is the same as the (1 - 2 alpha) interval lying inside (-margin, margin)."""
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        if self.se == 0.0:
            return 0.0 if abs(self.estimate) < margin else 1.0
        df = self.df if math.isfinite(self.df) else 1e9
        p_lo = 1.0 - float(stdtr(df, (self.estimate + margin) / self.se))   # H0: effect <= -margin
        p_hi = float(stdtr(df, (self.estimate - margin) / self.se))         # H0: effect >= +margin
        return max(p_lo, p_hi)

    def describe(self) -> str:
        return (f"{self.arm} - {self.control}: {100 * self.estimate:+.1f} pts [{100 * self.lo:+.1f}, "
                f"{100 * self.hi:+.1f}] ({100 * self.conf:.0f}% CI), p={self.p_value:.3g}; "
                f"{self.n_seeds_arm}/{self.n_seeds_control} seeds, df {self.df:.1f}")


def _p_two_sided(est: float, se: float, df: float) -> float:
    if est == 0.0:
        return 1.0
    if se == 0.0:
        return 0.0
    return float(2.0 * stdtr(df if math.isfinite(df) else 1e9, -abs(est) / se))


def _tables(a: EpisodeArrays, arm: str, control: str) -> list[tuple[str, TaskTable, TaskTable]]:
    in_arm, in_ctl = a.arm == arm, a.arm == control
    for name, sel in ((arm, in_arm), (control, in_ctl)):
        if not sel.any():
            raise ValueError(f"arm {name!r} has no episodes (arms with episodes: {sorted(set(a.arm.tolist()))})")
    out = []
    for task in sorted(set(a.task[in_arm | in_ctl].tolist())):
        t_sel = a.task == task
        shared = np.intersect1d(a.init_state[in_arm & t_sel], a.init_state[in_ctl & t_sel])
        if shared.size:
            out.append((task, task_table(a, in_arm & t_sel, shared), task_table(a, in_ctl & t_sel, shared)))
    if not out:
        raise ValueError(f"arms {arm!r} and {control!r} share no (task, init_state): nothing to pair "
                         f"(tasks of {arm!r}: {sorted(set(a.task[in_arm].tolist()))}, "
                         f"of {control!r}: {sorted(set(a.task[in_ctl].tolist()))})")
    return out


def seed_effect(records: Records, arm: str, control: str, *, conf: float = 0.95,
                tasks: str = "random") -> SeedEffect:
    """Seed-level effect of `arm` minus `control` (see the module doc). With several tasks each task
    contributes its Welch difference; `tasks="random"` adds the between-task variance (the answer
    speaks for tasks like these), `"fixed"` does not. Raises ValueError naming the arm when an arm has
    no episodes or the arms share no (task, init_state)."""
    if arm == control:
        raise ValueError(f"arm and control are the same ({arm!r})")
    if tasks not in ("random", "fixed"):
        raise ValueError(f"tasks must be 'random' or 'fixed', got {tasks!r}")
    a = records if isinstance(records, EpisodeArrays) else to_arrays(records)
    tables = _tables(a, arm, control)
    parts, d, v, dfs = [], [], [], []
    n_states = np.array([len(ta.states) for _, ta, _ in tables], dtype=float)
    w = n_states / n_states.sum()
    for (task, ta, tc), wt in zip(tables, w):
        sa, sc = arm_seeds(ta), arm_seeds(tc)
        var, df = welch(sa, sc)
        parts.append((task, sa, sc, float(wt)))
        d.append(float(sa.rates.mean() - sc.rates.mean()))
        v.append(var)
        dfs.append(df)
    d_, v_ = np.array(d), np.array(v)
    est = float((w * d_).sum()) + 0.0
    tau2 = 0.0
    if len(tables) > 1 and tasks == "random":
        iw = 1.0 / np.maximum(v_, 1e-12)
        mu = (iw * d_).sum() / iw.sum()
        q = float((iw * (d_ - mu) ** 2).sum())
        c = float(iw.sum() - (iw ** 2).sum() / iw.sum())
        tau2 = max(0.0, (q - (len(tables) - 1)) / c) if c > 0 else 0.0
    comps = [(wt * wt * vt, dft) for wt, vt, dft in zip(w, v_, dfs)]
    if tau2 > 0:
        comps.append((tau2 * float((w ** 2).sum()), len(tables) - 1.0))
    var = sum(x for x, _ in comps)
    den = sum(x * x / k for x, k in comps if math.isfinite(k))
    df = var * var / den if den > 0 else math.inf
    se = math.sqrt(var)
    p = _p_two_sided(est, se, df)
    rate_arm = float(sum(wt * sa.rates.mean() for (_, sa, _, wt) in parts))
    rate_ctl = float(sum(wt * sc.rates.mean() for (_, _, sc, wt) in parts))
    n_ep_a = int(sum(ta.cnt.sum() for _, ta, _ in tables))
    n_ep_c = int(sum(tc.cnt.sum() for _, _, tc in tables))
    n_nets = sum(len(ta.seeds) + len(tc.seeds) for _, ta, tc in tables)
    k_a = len({s for _, ta, _ in tables for s in ta.seeds})
    k_c = len({s for _, _, tc in tables for s in tc.seeds})
    eff = SeedEffect(
        arm=arm, control=control, estimate=est, se=se, df=df, conf=conf, lo=math.nan, hi=math.nan, p_value=p,
        rate_arm=rate_arm, rate_control=rate_ctl, n_seeds_arm=k_a, n_seeds_control=k_c,
        n_states=int(n_states.sum()), n_tasks=len(tables), n_episodes_arm=n_ep_a, n_episodes_control=n_ep_c,
        successes_arm=int(round(sum(ta.succ.sum() for _, ta, _ in tables))),
        successes_control=int(round(sum(tc.succ.sum() for _, _, tc in tables))),
        episodes_per_seed=(n_ep_a + n_ep_c) / max(n_nets, 1), tau2=tau2,
        method=_method(k_a, k_c, len(tables), tasks), per_task_parts=tuple(parts))
    lo, hi = eff.interval(conf)
    return replace(eff, lo=lo, hi=hi)


def _method(k_a: int, k_c: int, n_tasks: int, tasks: str) -> str:
    one = " (one seed on a side: that side borrows the other's seed variance)" if min(k_a, k_c) < 2 <= max(k_a, k_c) \
        else " (ONE seed per arm: a statement about these networks, not about training)" if max(k_a, k_c) < 2 else ""
    tpart = (f"; pooled over {n_tasks} tasks weighted by their states, "
             + ("tasks a random factor (between-task variance, DerSimonian-Laird)" if tasks == "random"
                else "tasks fixed")) if n_tasks > 1 else ""
    return ("seed-level Welch t: each trained network's success over the init states both arms ran is one "
            "observation; the effect is the difference of the arms' mean per-seed rates, its variance and "
            "Welch-Satterthwaite df come from the seeds (each arm's seed variance floored at the binomial "
            f"variance of a seed's rate){one}{tpart}")


def per_task_seed_effects(records: Records, arm: str, control: str, **kw: Any) -> dict[str, SeedEffect]:
    """`seed_effect` on every task both arms ran on shared states ({task: SeedEffect})."""
    a = records if isinstance(records, EpisodeArrays) else to_arrays(records)
    _tables(a, arm, control)  # the clear errors, once for all tasks
    out: dict[str, SeedEffect] = {}
    for task in sorted(set(a.task.tolist())):
        sel = a.task == task
        sub = EpisodeArrays(a.arm[sel], a.task[sel], a.seed[sel], a.init_state[sel], a.success[sel])
        try:
            out[task] = seed_effect(sub, arm, control, **kw)
        except ValueError:
            continue
    return out


def _power_gap(delta: float, var: float, df: float, alpha: float, power: float) -> float:
    """> 0 when a two-sided t test at `alpha` has at least `power` for `delta` (normal-t approximation:
    delta / se >= t_{df, 1 - alpha/2} + t_{df, power})."""
    dfx = df if math.isfinite(df) else 1e9
    return abs(delta) / math.sqrt(var) - float(stdtrit(dfx, 1.0 - alpha / 2.0)) - float(stdtrit(dfx, power))


def seeds_needed(eff: SeedEffect, *, alpha: float, power: float = 0.8) -> int | None:
    """Seeds per arm (the same for both, each running the current episodes) at which a Welch t test at
    `alpha` (the level the decision actually used: the look's spending level over its Holm divisor)
    has `power` to detect the observed effect, with each arm's per-seed variance as observed. None
    when the effect is 0, or when even MAX_SEEDS_SEARCHED seeds would not do. Post-hoc: it takes the
    observed effect as true (optimistic for lucky effects)."""
    if not eff.per_task_parts or abs(eff.estimate) < 1e-12:
        return None
    for k in range(2, MAX_SEEDS_SEARCHED + 1):
        comps = []
        for _, sa, sc, wt in eff.per_task_parts:
            ua, uc = sa.var / k, sc.var / k
            comps += [(wt * wt * ua, k - 1), (wt * wt * uc, k - 1)]
        var = sum(x for x, _ in comps) + eff.tau2 * sum(wt * wt for *_, wt in eff.per_task_parts)
        den = sum(x * x / d for x, d in comps)
        df = var * var / den if den > 0 else math.inf
        if var > 0 and _power_gap(eff.estimate, var, df, alpha, power) >= 0:
            return k
    return None


def episodes_needed_t(eff: SeedEffect, *, alpha: float, power: float = 0.8, max_episodes: int = 10_000) -> int | None:
    """Episodes per (arm, seed) network, at the current seeds, at which the Welch t test at `alpha` has
    `power` for the observed effect: each per-seed variance is its between-seed part plus a binomial
    part that shrinks as 1 / episodes. None when the between-seed part alone is too large (more
    episodes cannot settle it: add seeds) or the effect is 0."""
    if not eff.per_task_parts or abs(eff.estimate) < 1e-12:
        return None
    n0 = max(eff.episodes_per_seed, 1.0)

    def var_at(n: float) -> tuple[float, float]:
        comps = []
        for _, sa, sc, wt in eff.per_task_parts:
            for s in (sa, sc):
                v = s.between_seed_var + s.binom * n0 / n
                comps.append((wt * wt * v / s.k, s.k - 1 if s.k >= 2 else math.inf))
        var = sum(x for x, _ in comps) + eff.tau2 * sum(wt * wt for *_, wt in eff.per_task_parts)
        den = sum(x * x / d for x, d in comps if math.isfinite(d))
        return var, (var * var / den if den > 0 else math.inf)

    if _power_gap(eff.estimate, *var_at(1e12), alpha, power) < 0:
        return None
    lo, hi = 1, max_episodes
    if _power_gap(eff.estimate, *var_at(hi), alpha, power) < 0:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if _power_gap(eff.estimate, *var_at(mid), alpha, power) >= 0:
            hi = mid
        else:
            lo = mid + 1
    return lo


def contrast_effect(records: Records, weights: Mapping[str, float], name: str, *, conf: float = 0.95) -> SeedEffect:
    """A linear contrast of arms' success, sum_arm w_arm x (mean per-seed rate of the arm), judged at the
    seed level: e.g. a 2x2 factorial's main effects and interaction. Each arm's networks are independent,
    so the contrast's variance is sum w^2 var_arm / K_arm, with Welch-Satterthwaite df. Every arm is
    taken on the init states all of them ran (per task); several tasks are pooled weighted by their
    states (tasks fixed). Raises ValueError naming the arm when an arm has no episodes."""
    if not weights:
        raise ValueError("a contrast needs at least one arm")
    a = records if isinstance(records, EpisodeArrays) else to_arrays(records)
    arms = list(weights)
    for arm in arms:
        if not (a.arm == arm).any():
            raise ValueError(f"arm {arm!r} has no episodes (arms with episodes: {sorted(set(a.arm.tolist()))})")
    est, comps, n_states, rates = 0.0, [], 0, {arm: 0.0 for arm in arms}
    tasks = sorted(set(a.task[np.isin(a.arm, arms)].tolist()))
    per_task = []
    for task in tasks:
        t_sel = a.task == task
        shared = None
        for arm in arms:
            s = np.unique(a.init_state[(a.arm == arm) & t_sel])
            shared = s if shared is None else np.intersect1d(shared, s)
        if shared is not None and shared.size:
            per_task.append((task, shared, {arm: arm_seeds(task_table(a, (a.arm == arm) & t_sel, shared))
                                            for arm in arms}))
            n_states += int(shared.size)
    if not per_task:
        raise ValueError(f"arms {', '.join(arms)} share no (task, init_state): nothing to contrast")
    for task, shared, parts in per_task:
        wt = shared.size / n_states
        for arm, s in parts.items():
            w = float(weights[arm])
            est += wt * w * float(s.rates.mean())
            rates[arm] += wt * float(s.rates.mean())
            v = s.var if s.k >= 2 else max(s.binom, max((p.var for p in parts.values() if p.k >= 2), default=s.binom))
            comps.append((wt * wt * w * w * v / s.k, s.k - 1.0 if s.k >= 2 else math.inf))
    var = sum(x for x, _ in comps)
    den = sum(x * x / d for x, d in comps if math.isfinite(d) and d > 0)
    df = var * var / den if den > 0 else math.inf
    se = math.sqrt(var)
    k = min(len(p.rates) for _, _, parts in per_task for p in parts.values())
    pos = [arm for arm in arms if weights[arm] > 0]
    neg = [arm for arm in arms if weights[arm] < 0]
    eff = SeedEffect(
        arm=name, control="contrast", estimate=est + 0.0, se=se, df=df, conf=conf, lo=math.nan, hi=math.nan,
        p_value=_p_two_sided(est, se, df),
        rate_arm=float(np.mean([rates[x] for x in pos])) if pos else math.nan,
        rate_control=float(np.mean([rates[x] for x in neg])) if neg else math.nan,
        n_seeds_arm=k, n_seeds_control=k, n_states=n_states, n_tasks=len(per_task),
        n_episodes_arm=0, n_episodes_control=0, successes_arm=0, successes_control=0,
        episodes_per_seed=float(np.mean([p.episodes.mean() for _, _, parts in per_task for p in parts.values()])),
        tau2=0.0, method=("seed-level Welch contrast " + " ".join(f"{w:+g} x {arm}" for arm, w in weights.items())
                          + ": each arm's networks independent, variance sum w^2 var / K, Welch-Satterthwaite df"))
    lo, hi = eff.interval(conf)
    return replace(eff, lo=lo, hi=hi)
