"""The paired hierarchical bootstrap behind `paired_effect`: seed effects rescaled to the between-seed
variance, and the replicates (tasks, then shared init states, then seeds, as multinomial weights)."""
from __future__ import annotations

import math

import numpy as np

from .records import TaskTable


def seed_parts(t: TaskTable) -> tuple[np.ndarray, np.ndarray, float]:
    """Split one arm's (seed x state) table for the bootstrap (Davison & Hinkley 1997, sec. 3.8,
    resampling shrunken cluster effects):

    state_part: (n_states,) per-state mean over the seeds that ran it (carries the state-to-state
      spread and the episode noise, once);
    seed_effects: (n_seeds,) each seed's mean over its states minus the arm's mean, rescaled by c so
      that resampling them with replacement has, in expectation, the between-seed variance
      sigma_seed^2 / K: c^2 = max(0, s^2 - noise) / (s^2 (K - 1) / K), with s^2 the sample variance
      (ddof 1) of the per-seed means and noise the episode-noise variance of a per-seed mean. This
      removes the episode noise that the raw per-seed means carry (which resampling states already
      counts) and the (K - 1) / K shrinkage of the plain bootstrap with few seeds.
    sigma2: the estimated between-seed variance sigma_seed^2 (0 with one seed).
    """
    m = t.cnt > 0
    state_part = t.state_means()
    k = len(t.seeds)
    if k < 2:
        return state_part, np.zeros(k), 0.0
    per_seed = (t.rate * m).sum(1) / np.maximum(m.sum(1), 1)
    k_u = m.sum(0)
    pq = state_part * (1 - state_part) * np.where(k_u > 1, k_u / np.maximum(k_u - 1, 1), 1.0)
    noise = np.array([(pq * m[i] / np.maximum(t.cnt[i], 1)).sum() / max(m[i].sum(), 1) ** 2 for i in range(k)])
    s2 = float(per_seed.var(ddof=1))
    sigma2 = max(0.0, s2 - float(noise.mean()))
    eff = per_seed - per_seed.mean()
    c = math.sqrt(sigma2 / (s2 * (k - 1) / k)) if s2 > 0 else 0.0
    return state_part, c * eff, sigma2


def paired_bootstrap(tables: list[tuple[str, TaskTable, TaskTable]], n_boot: int, rng: np.random.Generator,
               tasks: str, multitask: bool) -> np.ndarray:
    n_t = len(tables)
    slots = (rng.integers(n_t, size=(n_boot, n_t)) if n_t > 1 and tasks == "random"
             else np.broadcast_to(np.arange(n_t), (n_boot, n_t)))
    glob: list[dict[int, np.ndarray]] = [{}, {}]  # multitask: per arm, seed id -> (n_boot,) weights
    if multitask:
        for side in (0, 1):
            ids = sorted({s for tab in tables for s in tab[1 + side].seeds})
            wts = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=n_boot).astype(float)
            glob[side] = {s: wts[:, i] for i, s in enumerate(ids)}
    val = np.zeros((n_boot, n_t))
    for ti, (_, ta, tc) in enumerate(tables):
        rows, cols = np.nonzero(slots == ti)
        r = rows.size
        if r == 0:
            continue
        (sa, ea, _), (sc, ec, _) = seed_parts(ta), seed_parts(tc)
        n = sa.size
        uw = rng.multinomial(n, np.full(n, 1 / n), size=r)  # the same states for both arms: pairing
        v = uw @ (sa - sc) / n
        for side, e_k, sign in ((0, ea, 1.0), (1, ec, -1.0)):
            k = e_k.size
            if k < 2:
                continue
            tab = ta if side == 0 else tc
            if multitask:
                sw = np.stack([glob[side][s][rows] for s in tab.seeds], axis=1)
            else:
                sw = rng.multinomial(k, np.full(k, 1 / k), size=r).astype(float)
            v = v + sign * (sw @ e_k) / k
        val[rows, cols] = v
    n_units = np.array([len(ta.states) for _, ta, _ in tables], dtype=float)
    wgt = n_units[slots]
    return (val * wgt).sum(1) / wgt.sum(1)
