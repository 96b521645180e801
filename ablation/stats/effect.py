"""Paired, multi-seed effect of an arm on closed-loop success: point estimate, hierarchical bootstrap
interval and p-value, and per-task effects (the bootstrap's replicates are in bootstrap.py, the
heterogeneity check in heterogeneity.py).

Units: every rate, effect, interval bound and margin is a fraction of episodes in [0, 1] (or a
difference of two such fractions in [-1, 1]); 0.10 means 10 percentage points.

Design this code assumes (the harness's): every arm is evaluated on the same init states of each
task (the pairing, by (task, init_state)); each (arm, task, seed) is its own trained network
(single-task policies), so seeds are never paired across arms nor across tasks. Pass
`multitask=True` when one network per (arm, seed) runs all tasks: then a seed is resampled once per
replicate for all tasks of its arm.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping

import numpy as np
from scipy import stats as sps
from scipy.special import ndtri, stdtrit
from statsmodels.stats.proportion import confint_proportions_2indep

from .bootstrap import paired_bootstrap, seed_parts
from .heterogeneity import Heterogeneity, heterogeneity  # noqa: F401 (re-exported: their old home)
from .records import EpisodeArrays, EpisodeOutcome, TaskTable, task_table, to_arrays

Records = Iterable[EpisodeOutcome | Mapping[str, Any]] | EpisodeArrays


@dataclass(frozen=True)
class Effect:
    """Effect of `arm` minus `control` on success, as fractions (0.10 = +10 points).

    estimate: mean over the shared (task, init_state) units of [arm's mean over its seeds] minus
      [control's mean over its seeds]; rate_arm / rate_control are the two terms.
    lo, hi: the reported equal-tailed `conf` interval, `interval(conf)`: hierarchical bootstrap,
      t-calibrated for few seeds (see `bootstrap_interval` and `method`).
    p_value: two-sided p for H0 effect = 0, the larger of `p_bootstrap` (the smallest alpha whose
      (1 - alpha) `bootstrap_interval` excludes 0) and `p_sign` (mid-p exact sign test over the per-state
      differences, a small-sample floor); see `paired_effect`.
    df: Welch-Satterthwaite degrees of freedom of the bootstrap variance (its seed, state and task
      components); inf when it has no variance.
    n_seeds_arm / n_seeds_control: distinct training seeds per arm; n_states: shared (task,
      init_state) units; n_tasks: tasks with at least one shared state.
    n_episodes_* / successes_*: episodes (and successes) on the shared states; dropped_*: episodes
      whose (task, init_state) the other arm never ran (excluded).
    seed_variance: the between-seed (network) part of the estimate's variance, method of moments
      (used by `episodes_needed`: more episodes per seed cannot shrink it).
    episodes_per_seed: mean episodes per (arm, task, seed) network on the shared states.
    boot: the bootstrap replicates of the effect (for intervals at other levels). The rescaled seed
      effects can put a replicate slightly outside [-1, 1]; intervals are clipped to [-1, 1].
    """

    arm: str
    control: str
    estimate: float
    lo: float
    hi: float
    conf: float
    p_value: float
    p_bootstrap: float
    p_sign: float
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
    dropped_arm: int
    dropped_control: int
    seed_variance: float
    episodes_per_seed: float
    df: float
    method: str
    boot: np.ndarray = field(repr=False, compare=False)

    def bootstrap_interval(self, conf: float) -> tuple[float, float]:
        """Equal-tailed interval at level `conf`: the percentile interval of the replicates after
        scaling their deviations from the estimate by t_{df}(q) / z(q), q = (1 + conf) / 2, clipped
        to [-1, 1]. With 3 seeds per arm the seed-level variance is estimated on few degrees of
        freedom and the plain percentile interval under-covers (measured ~0.90 at a seed sd of 0.5
        logit); the Satterthwaite t factor is the usual small-sample fix (-> 1 with many seeds)."""
        return _interval(self.boot, self.estimate, self.df, conf)

    def newcombe_interval(self, conf: float) -> tuple[float, float]:
        """Newcombe's hybrid-score interval for the difference of two independent proportions on the
        pooled episode counts (statsmodels `confint_proportions_2indep(method="newcomb")`). It
        ignores seeds and pairing; used only as a guard where the bootstrap collapses."""
        lo, hi = confint_proportions_2indep(self.successes_arm, self.n_episodes_arm, self.successes_control,
                                            self.n_episodes_control, method="newcomb", compare="diff",
                                            alpha=1.0 - conf)
        return float(lo), float(hi)

    def interval(self, conf: float) -> tuple[float, float]:
        """The reported interval: `bootstrap_interval`, except when the bootstrap has no variance at
        all (every state gives the same difference and the seeds agree, e.g. 0% vs 0% or 100% vs
        0%): then its hull with `newcombe_interval`, so that 0/3 vs 0/3 does not read [0, 0]."""
        lo, hi = self.bootstrap_interval(conf)
        if self.boot_variance == 0.0:
            nlo, nhi = self.newcombe_interval(conf)
            lo, hi = min(lo, nlo), max(hi, nhi)
        return lo, hi

    @property
    def variance(self) -> float:
        """The estimate's variance (fraction^2): the bootstrap's."""
        return self.boot_variance

    @property
    def boot_variance(self) -> float:
        """Variance of the bootstrap replicates (the estimate's variance, fraction^2)."""
        return float(self.boot.var(ddof=1)) if self.boot.size > 1 else 0.0

    def equivalence_interval(self, alpha: float) -> tuple[float, float]:
        """The (1 - 2 alpha) interval of the equivalence (TOST) rule of `verdict`: the hull of
        `bootstrap_interval` and `newcombe_interval` at that level. The Newcombe part guards against a
        bootstrap that collapses or nearly collapses at 0% / 100% (few distinct outcomes); as it
        ignores the pairing it can only widen the interval (conservative for equivalence claims)."""
        lo, hi = self.bootstrap_interval(1.0 - 2.0 * alpha)
        nlo, nhi = self.newcombe_interval(1.0 - 2.0 * alpha)
        return min(lo, nlo), max(hi, nhi)

    def describe(self) -> str:
        """One line: estimate, interval and p in percentage points."""
        return (f"{self.arm} - {self.control}: {100 * self.estimate:+.1f} pts "
                f"[{100 * self.lo:+.1f}, {100 * self.hi:+.1f}] ({100 * self.conf:.0f}% CI), p={self.p_value:.3g}; "
                f"{self.n_states} states x {self.n_seeds_arm}/{self.n_seeds_control} seeds")


def _quantiles(sorted_boot: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """numpy's default (linear) quantiles of an already sorted array, without re-sorting."""
    n = sorted_boot.size
    out = []
    for q in qs:
        h = (n - 1) * q
        i = min(int(math.floor(h)), n - 1)
        j = min(i + 1, n - 1)
        out.append(float(sorted_boot[i] + (h - i) * (sorted_boot[j] - sorted_boot[i])))
    return out


def _interval(boot: np.ndarray, est: float, df: float, conf: float, *, is_sorted: bool = False
              ) -> tuple[float, float]:
    if not 0.0 < conf < 1.0:
        raise ValueError(f"conf must be in (0, 1), got {conf}")
    q = (1.0 + conf) / 2.0
    f = float(stdtrit(df, q) / ndtri(q)) if math.isfinite(df) else 1.0
    lo, hi = _quantiles(boot if is_sorted else np.sort(boot), (1.0 - q, q))
    return max(-1.0, est + f * (lo - est)), min(1.0, est + f * (hi - est))


def calibrated_p(boot: np.ndarray, est: float, df: float) -> float:
    """Two-sided p for H0 effect = 0 by inverting the interval: the smallest alpha at which the
    (1 - alpha) `Effect.bootstrap_interval` excludes 0 (bisection), at least 2 / (B + 1); 1 when the estimate
    is 0 or every interval contains 0. Without the t factor this is 2 x the smaller share of
    replicates beyond 0. It is valid exactly when those intervals have their nominal coverage, which
    tests/test_stats.py measures by simulation."""
    if est == 0.0:
        return 1.0
    a_min = 2.0 / (boot.size + 1)
    srt = np.sort(boot)

    def excludes(alpha: float) -> bool:
        lo, hi = _interval(srt, est, df, 1.0 - alpha, is_sorted=True)
        return lo > 0.0 or hi < 0.0

    if excludes(a_min):
        return a_min
    if not excludes(1.0 - 1e-9):
        return 1.0
    lo_a, hi_a = a_min, 1.0 - 1e-9
    for _ in range(30):  # alpha to ~1e-9
        mid = 0.5 * (lo_a + hi_a)
        lo_a, hi_a = (lo_a, mid) if excludes(mid) else (mid, hi_a)
    return float(hi_a)


def sign_test_midp(n_pos: int, n_neg: int) -> float:
    """Two-sided mid-p exact sign test (scipy.stats.binom) of n_pos positive vs n_neg negative
    differences under Binomial(n_pos + n_neg, 1/2): 2 x (P(X > k) + P(X = k) / 2), k the larger
    count, capped at 1; 1 when there is no non-zero difference. The mid-p version is used because
    the plain exact test is very conservative at these sizes (it would cost the bootstrap's power
    whenever it binds); as a floor it only has to catch the cases where few states differ and the
    bootstrap, blind to that, reports a tiny p (e.g. 2 states of 2 better: bootstrap p ~ 0.0005,
    mid-p 0.25)."""
    n = n_pos + n_neg
    if n == 0:
        return 1.0
    k = max(n_pos, n_neg)
    return float(min(1.0, 2.0 * (sps.binom.sf(k, n, 0.5) + 0.5 * sps.binom.pmf(k, n, 0.5))))


def _method(n_boot: int, conf: float, n_tasks: int, tasks: str, multitask: bool) -> str:
    if n_tasks > 1:
        tpart = ("tasks resampled with replacement (a random factor)" if tasks == "random"
                 else "every task kept once (stratified)") + ", then "
    else:
        tpart = ""
    spart = ("once per arm across tasks" if multitask and n_tasks > 1
             else "independently within each arm" + (" x task" if n_tasks > 1 else ""))
    return (f"paired hierarchical bootstrap, {n_boot} resamples: {tpart}init states resampled within "
            f"task (the same states for both arms), training seeds resampled {spart} (seed effects "
            f"rescaled to the between-seed variance, Davison & Hinkley 3.8); {100 * conf:g}% percentile "
            f"interval with spread scaled by t/z (Welch-Satterthwaite df); two-sided p = max(p inverting "
            f"that interval, mid-p sign test over per-state differences)")


def _prepare(a: EpisodeArrays, arm: str, control: str
             ) -> tuple[list[tuple[str, TaskTable, TaskTable]], np.ndarray, np.ndarray]:
    """Per task (arm table, control table) on the shared init states; the clear errors."""
    in_arm, in_ctl = a.arm == arm, a.arm == control
    for name, sel in ((arm, in_arm), (control, in_ctl)):
        if not sel.any():
            known = sorted(set(a.arm.tolist()))
            raise ValueError(f"arm {name!r} has no episodes (arms with episodes: {known})")
    tables: list[tuple[str, TaskTable, TaskTable]] = []
    for task in sorted(set(a.task[in_arm | in_ctl].tolist())):
        t_sel = a.task == task
        shared = np.intersect1d(a.init_state[in_arm & t_sel], a.init_state[in_ctl & t_sel])
        if shared.size:
            tables.append((task, task_table(a, in_arm & t_sel, shared), task_table(a, in_ctl & t_sel, shared)))
    if not tables:
        raise ValueError(f"arms {arm!r} and {control!r} share no (task, init_state): nothing to pair "
                         f"(tasks of {arm!r}: {sorted(set(a.task[in_arm].tolist()))}, "
                         f"of {control!r}: {sorted(set(a.task[in_ctl].tolist()))})")
    return tables, in_arm, in_ctl


def _check_effect_args(arm: str, control: str, conf: float, n_boot: int, tasks: str) -> None:
    """The clear errors for `paired_effect`'s arguments."""
    if arm == control:
        raise ValueError(f"arm and control are the same ({arm!r})")
    if not 0.0 < conf < 1.0:
        raise ValueError(f"conf must be in (0, 1), got {conf}")
    if n_boot < 100:
        raise ValueError(f"n_boot must be >= 100, got {n_boot}")
    if tasks not in ("random", "fixed"):
        raise ValueError(f"tasks must be 'random' or 'fixed', got {tasks!r}")


def _welch_df(tables: list[tuple[str, TaskTable, TaskTable]], w: np.ndarray, boot: np.ndarray, tasks: str
              ) -> tuple[float, float]:
    """(Welch-Satterthwaite df of the estimate, its between-seed variance) for `paired_effect`; `w` is
    each task's share of the shared states, `boot` the bootstrap replicates."""
    # Welch-Satterthwaite df: components (variance, df) of the estimate's bootstrap variance
    comps: list[tuple[float, float]] = []
    seed_var = 0.0
    for wt, (_, ta, tc) in zip(w, tables):
        d = ta.state_means() - tc.state_means()
        if d.size > 1:
            comps.append((wt ** 2 * float(d.var(ddof=1)) / d.size, d.size - 1.0))
        for tab in (ta, tc):
            sigma2 = seed_parts(tab)[2]
            if len(tab.seeds) > 1:
                comps.append((wt ** 2 * sigma2 / len(tab.seeds), len(tab.seeds) - 1.0))
                seed_var += wt ** 2 * sigma2 / len(tab.seeds)
    v_boot = float(boot.var(ddof=1))
    excess = v_boot - sum(v for v, _ in comps)
    if len(tables) > 1 and tasks == "random" and excess > 0:
        comps.append((excess, len(tables) - 1.0))  # what resampling tasks adds: T - 1 df
    den = sum(v * v / k for v, k in comps)
    tot = sum(v for v, _ in comps)
    df = tot * tot / den if den > 0 else math.inf
    return df, seed_var


def paired_effect(records: Records, arm: str, control: str, *, conf: float = 0.95, n_boot: int = 4000,
                  rng_seed: int = 0, tasks: Literal["random", "fixed"] = "random",
                  multitask: bool = False) -> Effect:
    """Effect of `arm` minus `control` on success with a paired hierarchical bootstrap.

    Point estimate: mean over the (task, init_state) units that both arms ran of [mean over the arm's
    seeds that ran the unit of their success fraction] minus the same for the control. Episodes on
    units only one arm ran are dropped and counted (`dropped_*`).

    Bootstrap replicate (vectorised: every draw is a multinomial weight vector):
    (1) with several tasks and `tasks="random"`, draw as many tasks with replacement (tasks as a
        random factor; each drawn copy gets its own draws below); `"fixed"` keeps each task once
        (a stratified bootstrap). Whole tasks are resampled, so each task's own noise is counted
        again at the task level: conservative (measured coverage 0.97-0.99 with 4-8 tasks that
        agree, 0.91 with 3 tasks whose effects differ strongly);
    (2) within each drawn task, draw its init states with replacement, the SAME draw for both arms
        (the pairing), and average the per-state differences of the seed means;
    (3) add, for each arm independently (and per drawn task; per arm only, shared across tasks, when
        `multitask`), the mean of its seeds' effects drawn with replacement, the seed effects
        rescaled as in Davison & Hinkley (1997, sec. 3.8) so that they carry the between-seed
        variance only (see `seed_parts`; resampling raw seeds *and* states would count the
        episode noise twice or more and shrink the seed variance by (K - 1) / K).
    The interval is the percentile interval of the replicates with their spread scaled by
    t_df / z (Welch-Satterthwaite df over the seed, state and task components), see
    `Effect.interval`. The p-value is max(interval-inversion p, `sign_test_midp`); the floor can only
    make the test more conservative, and stops a sample where few states differ (2 states of 2
    better) from being called significant by a bootstrap that cannot see its own sparsity.

    Missing cells (a seed that did not run a shared state) are allowed: per-state means use the
    seeds that ran the state, seed effects use the states the seed ran (an approximation when the
    gaps are large and uneven).

    Raises ValueError naming the arm when an arm has no episodes, or when the arms share no
    (task, init_state).
    """
    _check_effect_args(arm, control, conf, n_boot, tasks)
    a = records if isinstance(records, EpisodeArrays) else to_arrays(records)
    tables, in_arm, in_ctl = _prepare(a, arm, control)

    n_units = np.array([len(ta.states) for _, ta, _ in tables], dtype=float)
    w = n_units / n_units.sum()
    diffs = np.concatenate([ta.state_means() - tc.state_means() for _, ta, tc in tables])
    estimate = float(diffs.mean()) + 0.0  # no -0.0
    rate_arm = float(np.concatenate([ta.state_means() for _, ta, _ in tables]).mean())
    rate_ctl = float(np.concatenate([tc.state_means() for _, _, tc in tables]).mean())

    boot = paired_bootstrap(tables, n_boot, np.random.default_rng(rng_seed), tasks, multitask)
    df, seed_var = _welch_df(tables, w, boot, tasks)

    p_boot = calibrated_p(boot, estimate, df)
    n_pos, n_neg = int((diffs > 1e-12).sum()), int((diffs < -1e-12).sum())
    p_sign = sign_test_midp(n_pos, n_neg)

    n_ep_a = int(sum(ta.cnt.sum() for _, ta, _ in tables))
    n_ep_c = int(sum(tc.cnt.sum() for _, _, tc in tables))
    n_nets = sum(len(ta.seeds) + len(tc.seeds) for _, ta, tc in tables)
    eff = Effect(
        arm=arm, control=control, estimate=estimate, lo=math.nan, hi=math.nan, conf=conf,
        p_value=max(p_boot, p_sign), p_bootstrap=p_boot, p_sign=p_sign,
        rate_arm=rate_arm, rate_control=rate_ctl,
        n_seeds_arm=len({s for _, ta, _ in tables for s in ta.seeds}),
        n_seeds_control=len({s for _, _, tc in tables for s in tc.seeds}),
        n_states=int(n_units.sum()), n_tasks=len(tables),
        n_episodes_arm=n_ep_a, n_episodes_control=n_ep_c,
        successes_arm=int(round(sum(ta.succ.sum() for _, ta, _ in tables))),
        successes_control=int(round(sum(tc.succ.sum() for _, _, tc in tables))),
        dropped_arm=int(in_arm.sum()) - n_ep_a, dropped_control=int(in_ctl.sum()) - n_ep_c,
        seed_variance=seed_var, episodes_per_seed=(n_ep_a + n_ep_c) / max(n_nets, 1), df=df,
        method=_method(n_boot, conf, len(tables), tasks, multitask), boot=boot,
    )
    lo, hi = eff.interval(conf)
    return dataclasses.replace(eff, lo=lo, hi=hi)


def per_task_effects(records: Records, arm: str, control: str, **kw: Any) -> dict[str, Effect]:
    """`paired_effect` separately for every task both arms ran on shared states ({task: Effect});
    keyword arguments go to `paired_effect`. Tasks with no shared state are left out."""
    a = records if isinstance(records, EpisodeArrays) else to_arrays(records)
    _prepare(a, arm, control)  # the clear errors (missing arm, nothing shared), once for all tasks
    out: dict[str, Effect] = {}
    for task in sorted(set(a.task.tolist())):
        sel = a.task == task
        sub = EpisodeArrays(a.arm[sel], a.task[sel], a.seed[sel], a.init_state[sel], a.success[sel])
        try:
            out[task] = paired_effect(sub, arm, control, **kw)
        except ValueError:
            continue  # one arm absent from this task, or no shared state
    return out
