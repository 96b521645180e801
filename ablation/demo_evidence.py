"""What the steps of a demo set show about its conventions, whatever file they came from: when the obs
were recorded (alignment), the gripper command's sign and range, the share of no-op steps, and whether the
actions are deltas, deltas of deltas or absolute targets. Works on `episodes.Episode` as stored.

    alignment_evidence(episodes)      -> "before" | "after" | None, and the lag correlations behind it
    gripper_evidence(episodes)        -> sign and value range of the gripper command
    noop_share(episodes)              -> share of no-op actions (OpenVLA's definition)
    delta_kind_evidence(episodes)     -> do the actions look like deltas, deltas of deltas, or absolutes
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .episodes import Episode

NOOP_ARM_NORM = 1e-4      # OpenVLA: ||a[:6]|| < 1e-4 and the gripper command unchanged
NOOP_WARN_SHARE = 0.05    # domain.md pitfall 4: above 5% warns
LAG_MIN_CORR = 0.2        # below this the position change does not follow the actions at all
GRIP_HORIZON = 5          # steps after a gripper flip over which the finger width is watched
GRIP_MIN_CHANGE_M = 1e-3  # a flip whose width change is smaller than this says nothing


# ----------------------------------------------------------------------------- alignment

def _corr(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else float("nan")


def _actions(ep: Episode, executed: bool) -> np.ndarray:
    a = ep.extras.get("executed_actions") if executed else None
    return np.asarray(ep.actions if a is None else a, dtype=np.float64)


def _ee_pos(ep: Episode) -> np.ndarray | None:
    p = ep.obs.get("ee_pos")
    return None if p is None else np.asarray(p, dtype=np.float64)


def _lag_pairs(eps: list[Episode], executed: bool, lag: int, whiten: bool, transform=None):
    """Stack (action, position-change) pairs with d[k+lag], d[k] = p[k+1]-p[k]; optionally both differenced."""
    xs, ys = [], []
    for ep in eps:
        a = _actions(ep, executed)[:, :3]
        if transform is not None:
            a = transform(a)
        p = _ee_pos(ep)
        if p is None or len(p) < 6:
            continue
        d = np.diff(p, axis=0)
        if whiten:
            # innovations: a'[j] = a[j+1]-a[j] pairs with d'[j+lag] = d[j+1+lag]-d[j+lag]
            a, d = np.diff(a, axis=0), np.diff(d, axis=0)
        k = np.arange(len(a))
        m = (k + lag >= 0) & (k + lag < len(d))
        xs.append(a[k[m]])
        ys.append(d[k[m] + lag])
    if not xs:
        return None, None
    return np.concatenate(xs), np.concatenate(ys)


def _mean_corr(x, y) -> float:
    if x is None or len(x) < 10:
        return float("nan")
    cs = [_corr(x[:, i], y[:, i]) for i in range(x.shape[1]) if x[:, i].std() > 1e-9 and y[:, i].std() > 1e-12]
    return float(np.mean(cs)) if cs else float("nan")


@dataclass
class AlignmentEvidence:
    convention: str | None      # "before" | "after" | None (cannot be told)
    lag: int | None             # onset lag: 0 = obs before the step, -1 = obs after the step
    corr_by_lag: dict[int, float]
    actions_used: str           # "executed_actions" or "actions"
    n_steps: int
    reason: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["corr_by_lag"] = {str(k): v for k, v in self.corr_by_lag.items()}
        return d


def alignment_evidence(eps: list[Episode]) -> AlignmentEvidence:
    """When were the obs recorded? The action at k moves the EEF from p[k] to p[k+1] when obs are
    recorded before each step, and from p[k-1] to p[k] when recorded after it.

    An action cannot move the arm before it is executed, so the *onset* is what tells: the first lag
    at which the (differenced, i.e. innovation) action correlates with the (differenced) position
    change. Executed actions are used when the file has them (DART noise makes the onset sharp)."""
    executed = all("executed_actions" in ep.extras for ep in eps)
    used = "executed_actions" if executed else "actions"
    n = int(sum(len(ep) for ep in eps))
    corr = {lag: _mean_corr(*_lag_pairs(eps, executed, lag, whiten=True)) for lag in (-2, -1, 0, 1, 2)}
    if any(_ee_pos(ep) is None for ep in eps):
        return AlignmentEvidence(None, None, corr, used, n, "no obs/ee_pos in the file")
    vals = np.array([corr[k] for k in sorted(corr)])
    if n < 20 or not np.isfinite(vals).any():
        return AlignmentEvidence(None, None, corr, used, n, f"too short ({n} steps) or no motion")
    peak = float(np.nanmax(vals))
    if peak < LAG_MIN_CORR:
        return AlignmentEvidence(None, None, corr, used, n,
                                 f"the position change does not follow the actions (best correlation {peak:.2f} "
                                 f"< {LAG_MIN_CORR}); cannot tell")
    onset = min(k for k in sorted(corr) if np.isfinite(corr[k]) and corr[k] >= 0.5 * peak)
    conv = {0: "before", -1: "after"}.get(onset)
    why = (f"the {used} first move the EEF at lag {onset} (correlation by lag: "
           + ", ".join(f"{k:+d}: {v:.2f}" for k, v in sorted(corr.items())) + ")")
    if conv is None:
        why += "; neither 0 (before) nor -1 (after)"
    return AlignmentEvidence(conv, onset, corr, used, n, why)


# ----------------------------------------------------------------------------- no-ops

def noop_mask(actions: np.ndarray) -> np.ndarray:
    """OpenVLA: a no-op moves nothing (||a[:6]|| < 1e-4) and repeats the previous gripper command."""
    a = np.asarray(actions, dtype=np.float64)
    still = np.linalg.norm(a[:, :6], axis=1) < NOOP_ARM_NORM
    same = np.r_[False, a[1:, 6] == a[:-1, 6]] if len(a) else np.zeros(0, bool)
    return still & same


def noop_share(eps: list[Episode]) -> tuple[float, int, int]:
    """(share, no-op count, steps) over the recorded `actions`."""
    m = np.concatenate([noop_mask(ep.actions) for ep in eps])
    return (float(m.mean()) if m.size else 0.0, int(m.sum()), int(m.size))


# ----------------------------------------------------------------------------- gripper

@dataclass
class GripperEvidence:
    min: float
    max: float
    range: str            # "[-1, 1]", "[0, 1]", "other"
    values: list[float]   # distinct values (at most 6)
    corr: float           # command vs finger-width change over the next GRIP_HORIZON steps, all steps
    n_events: int         # command flips followed by a visible width change
    agree: float | None   # share of those where close (+) narrows / open (-) widens the fingers
    sign: str | None      # "ok" | "flipped" | None (cannot be told)
    # each judged flip: (demo name, step of the flip, whether the fingers moved the LIBERO way)
    events: list[tuple[str, int, bool]] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("events")
        return d


def gripper_evidence(eps: list[Episode]) -> GripperEvidence:
    """Sign and range of the gripper command, from its effect on the finger width (LIBERO: -1 open,
    +1 close; robosuite reads only the sign). The threshold between the two commands is the middle
    of the value range, so a [0, 1] file is judged by its own convention."""
    g = np.concatenate([np.asarray(ep.actions[:, 6], dtype=np.float64) for ep in eps])
    lo, hi = float(g.min()), float(g.max())
    vals = sorted({round(float(v), 4) for v in np.unique(g)})[:6]
    rng = "[-1, 1]" if lo < -0.5 and hi <= 1.0 + 1e-6 else ("[0, 1]" if lo >= -1e-6 and hi <= 1.0 + 1e-6 else "other")
    mid = (lo + hi) / 2
    cs, ws, agree, n, events = [], [], 0, 0, []
    for ep in eps:
        grip = ep.obs.get("gripper_states")
        if grip is None:
            continue
        grip = np.asarray(grip, dtype=np.float64)
        cmd = np.asarray(ep.actions[:, 6], dtype=np.float64)
        w = grip[:, 0] - grip[:, 1]
        T = len(cmd)
        fut = np.minimum(np.arange(T) + GRIP_HORIZON, T - 1)
        cs.append(cmd)
        ws.append(w[fut] - w)
        high = cmd > mid
        for k in np.nonzero(high[1:] != high[:-1])[0] + 1:  # the command changes at step k
            dw = w[min(k + GRIP_HORIZON, T - 1)] - w[max(k - 1, 0)]
            if abs(dw) < GRIP_MIN_CHANGE_M:
                continue
            n += 1
            ok = (dw < 0) == bool(high[k])
            agree += int(ok)
            events.append((ep.name, int(k), bool(ok)))
    corr = _corr(np.concatenate(cs), np.concatenate(ws)) if cs else float("nan")
    share = agree / n if n else None
    sign = None if share is None else ("ok" if share >= 0.75 else "flipped" if share <= 0.25 else None)
    return GripperEvidence(lo, hi, rng, vals, corr, n, share, sign, events)


# ----------------------------------------------------------------------------- delta kind

@dataclass
class DeltaKindEvidence:
    kind: str | None                 # "delta" | "double_delta" | "absolute" | None
    corr: dict[str, float]           # best |corr| with the position change over lags -1..1, per reading
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def delta_kind_evidence(eps: list[Episode]) -> DeltaKindEvidence:
    """Which reading of the recorded position actions explains the EEF's position change best:
    as deltas (LIBERO's), as deltas of deltas (their running sum explains it: a delta transform was
    applied twice), or as absolute targets (their differences explain it)."""
    readings = {
        "delta": None,
        "double_delta": lambda a: np.cumsum(a, axis=0),
        "absolute": lambda a: np.diff(a, axis=0, prepend=a[:1]),
    }
    corr = {}
    for name, tf in readings.items():
        best = float("nan")
        for lag in (-1, 0, 1):
            c = _mean_corr(*_lag_pairs(eps, False, lag, whiten=False, transform=tf))
            if np.isfinite(c) and not (np.isfinite(best) and best >= c):
                best = c
        corr[name] = best
    d = corr["delta"]
    if not np.isfinite(d):
        return DeltaKindEvidence(None, corr, "no position motion to compare with")
    alt = max(("double_delta", "absolute"), key=lambda k: corr[k] if np.isfinite(corr[k]) else -1)
    if np.isfinite(corr[alt]) and corr[alt] > 0.5 and corr[alt] > d + 0.25:
        what = ("their running sum" if alt == "double_delta" else "their step-to-step differences")
        return DeltaKindEvidence(alt, corr, f"{what} follow the EEF position change (correlation {corr[alt]:.2f}) "
                                            f"far better than the actions themselves ({d:.2f})")
    if d >= 0.5:
        return DeltaKindEvidence("delta", corr, f"the actions follow the EEF position change (correlation {d:.2f})")
    return DeltaKindEvidence(None, corr, f"no reading explains the position change well (best {max(corr.values()):.2f})")
