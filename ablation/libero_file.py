"""Facts read from LIBERO-format HDF5 files, including files written elsewhere (LIBERO's own
`create_dataset.py`, OpenVLA's no-op-free regenerations, LeRobot conversions).

    infer_suite_task(path)            -> (suite, task index), from bddl_file_name / bddl_file_content /
                                         problem_info; UserError naming the file, the attr and the fix
    detect_obs_convention(path)       -> "before" | "after" | None
    alignment_evidence(episodes)      -> the numbers behind it (lag correlations, actions used)
    gripper_evidence(episodes)        -> sign and value range of the gripper command
    noop_share(episodes)              -> share of no-op actions (OpenVLA's definition)
    delta_kind_evidence(episodes)     -> do the actions look like deltas, deltas of deltas, or absolutes

This module reads the file with h5py directly and imports nothing from `ablation.data`, so data.py
can import it without a cycle. Episodes here are plain dicts of arrays (see `load_episodes`).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError

STANDARD_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
NOOP_ARM_NORM = 1e-4      # OpenVLA: ||a[:6]|| < 1e-4 and the gripper command unchanged
NOOP_WARN_SHARE = 0.05    # domain.md pitfall 4: above 5% warns
LAG_MIN_CORR = 0.2        # below this the position change does not follow the actions at all
GRIP_HORIZON = 5          # steps after a gripper flip over which the finger width is watched
GRIP_MIN_CHANGE_M = 1e-3  # a flip whose width change is smaller than this says nothing


class LiberoFileError(UserError):
    """A LIBERO file cannot be read or does not say what is needed; names the file, the attr and the fix."""


# ----------------------------------------------------------------------------- raw reading

def _open(path: str | Path):
    import h5py

    path = Path(path)
    if not path.is_file():
        raise LiberoFileError(f"{path}: file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise LiberoFileError(f"{path}: not a readable HDF5 file ({e})") from None
    if "data" not in f:
        f.close()
        raise LiberoFileError(f"{path}: no 'data' group; not a LIBERO demo file")
    return f


def _s(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, np.ndarray) and v.shape == ():
        return _s(v.item())
    return str(v)


def _json(v) -> dict:
    try:
        d = json.loads(_s(v)) if _s(v) else {}
    except json.JSONDecodeError:
        return {}
    return d if isinstance(d, dict) else {}


def file_attrs(path: str | Path) -> dict:
    """The `data` group's attributes (strings decoded, JSON attrs parsed) and the demo names."""
    with _open(path) as f:
        g = f["data"]
        out = {k: _s(v) if not isinstance(v, (np.integer, int, float, np.floating)) else v for k, v in g.attrs.items()}
        for k in ("problem_info", "env_args", "ablation_attrs"):
            out[k] = _json(g.attrs.get(k))
        out["demos"] = demo_names(g)
    return out


def demo_names(g) -> list[str]:
    names = [k for k in g.keys() if k.startswith("demo_")]
    return sorted(names, key=lambda k: int(k.split("_")[1]) if k.split("_")[1].isdigit() else 1 << 30)


def load_episodes(path: str | Path, max_demos: int | None = None, images: bool = False) -> list[dict]:
    """Per demo a dict: actions (T,7), executed (T,7) or None, ee_pos (T,3), gripper (T,2) or None,
    joints, init_state, states0, n and, with images=True, the image datasets (uint8)."""
    out = []
    with _open(path) as f:
        g = f["data"]
        for name in demo_names(g)[:max_demos]:
            d = g[name]
            if "actions" not in d:
                raise LiberoFileError(f"{path}: {name}: missing dataset 'actions'")
            obs = d["obs"] if "obs" in d else {}
            ep = {"name": name, "actions": np.asarray(d["actions"][()], dtype=np.float64),
                  "executed": np.asarray(d["executed_actions"][()], dtype=np.float64) if "executed_actions" in d else None,
                  "ee_pos": np.asarray(obs["ee_pos"][()], dtype=np.float64) if "ee_pos" in obs else None,
                  "gripper": np.asarray(obs["gripper_states"][()], dtype=np.float64) if "gripper_states" in obs else None,
                  "joints": np.asarray(obs["joint_states"][()], dtype=np.float64) if "joint_states" in obs else None,
                  "init_state": np.asarray(d.attrs["init_state"], dtype=np.float64) if "init_state" in d.attrs else None,
                  "states0": np.asarray(d["states"][0], dtype=np.float64) if "states" in d and len(d["states"]) else None}
            if ep["actions"].ndim != 2 or ep["actions"].shape[1] != 7:
                raise LiberoFileError(f"{path}: {name}: 'actions' has shape {ep['actions'].shape}, LIBERO's is (T, 7)")
            if images:
                for k in ("agentview_rgb", "eye_in_hand_rgb"):
                    if k in obs:
                        ep[k] = np.asarray(obs[k][()])
            ep["n"] = len(ep["actions"])
            out.append(ep)
    if not out:
        raise LiberoFileError(f"{path}: 'data' holds no demo_* groups")
    return out


# ----------------------------------------------------------------------------- suite and task

def _benchmark_tasks() -> list[tuple[str, int, object]]:
    import contextlib
    import io

    from .sim.libero_setup import benchmark_dict

    d = benchmark_dict()
    out = []
    for s in STANDARD_SUITES:
        if s not in d:
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            b = d[s]()
        for i in range(b.get_num_tasks()):
            out.append((s, i, b.get_task(i)))
    return out


def _norm_text(t: str) -> str:
    return " ".join(t.split())


def match_tasks(bddl_file_name: str = "", bddl_file_content: str = "", language: str = "") -> list[tuple[str, int, str]]:
    """Candidate (suite, task, how) for these facts, best evidence first; empty when nothing matches."""
    tasks = _benchmark_tasks()
    base = os.path.basename(bddl_file_name.replace("\\", "/"))
    stem = base[:-5] if base.endswith(".bddl") else base
    folder = os.path.basename(os.path.dirname(bddl_file_name.replace("\\", "/")))
    if stem:
        by_name = [(s, i, t) for s, i, t in tasks if t.name == stem or t.bddl_file == base]
        in_folder = [c for c in by_name if c[2].problem_folder == folder or c[0] == folder]
        if len(in_folder) == 1:
            return [(in_folder[0][0], in_folder[0][1], f"bddl_file_name '{folder}/{base}'")]
        if len(by_name) == 1:
            return [(by_name[0][0], by_name[0][1], f"bddl_file_name '{base}'")]
    if bddl_file_content.strip():
        want = _norm_text(bddl_file_content)
        from .sim.libero_setup import get_suite

        hits = []
        for s, i, t in tasks:
            try:
                p = Path(get_suite(s).get_task_bddl_file_path(i))
                if _norm_text(p.read_text()) == want:
                    hits.append((s, i, "bddl_file_content"))
            except OSError:
                continue
        if len(hits) == 1:
            return hits
        if hits and folder:
            narrowed = [h for h in hits if h[0] == folder]
            if len(narrowed) == 1:
                return narrowed
        if hits:
            return hits
    if language:
        lang = _norm_text(language).lower()
        hits = [(s, i, "problem_info.language_instruction") for s, i, t in tasks if _norm_text(t.language).lower() == lang]
        return hits
    return []


def infer_suite_task(path: str | Path) -> tuple[str, int]:
    """(suite, task index) of a LIBERO file. Order: our own `ablation_attrs` (suite, task_id), then the
    BDDL file name (folder = suite), the BDDL content, and the language instruction in problem_info."""
    a = file_attrs(path)
    own = a.get("ablation_attrs") or {}
    task = own.get("task_id", own.get("task"))
    if own.get("suite") in STANDARD_SUITES and task is not None:
        return own["suite"], int(task)
    if a.get("suite") in STANDARD_SUITES and str(a.get("task", "")).lstrip("-").isdigit():
        return a["suite"], int(a["task"])
    language = (a.get("problem_info") or {}).get("language_instruction", "")
    if isinstance(language, list):
        language = " ".join(language)
    cands = match_tasks(a.get("bddl_file_name", ""), a.get("bddl_file_content", ""), str(language))
    if len(cands) == 1:
        return cands[0][0], cands[0][1]
    fix = "pass --suite/--task, or set data.suite/data.task in the spec"
    if not cands:
        raise LiberoFileError(
            f"{path}: cannot tell the LIBERO suite/task: data.attrs['bddl_file_name']="
            f"{a.get('bddl_file_name', '')!r} matches no standard task, data.attrs['bddl_file_content'] "
            f"{'matches none' if a.get('bddl_file_content') else 'is missing'}, and "
            f"data.attrs['problem_info'] language {language!r} matches none; {fix}")
    listing = ", ".join(f"{s} task {i}" for s, i, _ in cands[:6])
    raise LiberoFileError(f"{path}: the LIBERO suite/task is ambiguous from data.attrs['{cands[0][2].split('.')[0]}'] "
                          f"(could be {listing}); {fix}")


# ----------------------------------------------------------------------------- alignment

def _corr(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else float("nan")


def _lag_pairs(eps: list[dict], key: str, lag: int, whiten: bool, transform=None):
    """Stack (action, position-change) pairs with d[k+lag], d[k] = p[k+1]-p[k]; optionally both differenced."""
    xs, ys = [], []
    for ep in eps:
        a = ep[key] if ep.get(key) is not None else ep["actions"]
        a = a[:, :3]
        if transform is not None:
            a = transform(a)
        p = ep["ee_pos"]
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


def alignment_evidence(eps: list[dict]) -> AlignmentEvidence:
    """When were the obs recorded? The action at k moves the EEF from p[k] to p[k+1] when obs are
    recorded before each step, and from p[k-1] to p[k] when recorded after it.

    An action cannot move the arm before it is executed, so the *onset* is what tells: the first lag
    at which the (differenced, i.e. innovation) action correlates with the (differenced) position
    change. Executed actions are used when the file has them (DART noise makes the onset sharp)."""
    key = "executed" if all(ep.get("executed") is not None for ep in eps) else "actions"
    used = "executed_actions" if key == "executed" else "actions"
    n = int(sum(ep["n"] for ep in eps))
    corr = {lag: _mean_corr(*_lag_pairs(eps, key, lag, whiten=True)) for lag in (-2, -1, 0, 1, 2)}
    if any(ep["ee_pos"] is None for ep in eps):
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


def detect_obs_convention(path: str | Path, max_demos: int | None = 20) -> str | None:
    """"before" | "after" from the data itself (not from an attribute); None when it cannot be told."""
    return alignment_evidence(load_episodes(path, max_demos)).convention


def declared_obs_convention(path: str | Path) -> str | None:
    """What the file says (data.attrs['obs_convention'], written by our writer), or None."""
    v = file_attrs(path).get("obs_convention")
    return v if v in ("before", "after") else None


# ----------------------------------------------------------------------------- no-ops

def noop_mask(actions: np.ndarray) -> np.ndarray:
    """OpenVLA: a no-op moves nothing (||a[:6]|| < 1e-4) and repeats the previous gripper command."""
    a = np.asarray(actions, dtype=np.float64)
    still = np.linalg.norm(a[:, :6], axis=1) < NOOP_ARM_NORM
    same = np.r_[False, a[1:, 6] == a[:-1, 6]] if len(a) else np.zeros(0, bool)
    return still & same


def noop_share(eps: list[dict]) -> tuple[float, int, int]:
    """(share, no-op count, steps) over the recorded `actions`."""
    m = np.concatenate([noop_mask(ep["actions"]) for ep in eps])
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


def gripper_evidence(eps: list[dict]) -> GripperEvidence:
    """Sign and range of the gripper command, from its effect on the finger width (LIBERO: -1 open,
    +1 close; robosuite reads only the sign). The threshold between the two commands is the middle
    of the value range, so a [0, 1] file is judged by its own convention."""
    g = np.concatenate([ep["actions"][:, 6] for ep in eps])
    lo, hi = float(g.min()), float(g.max())
    vals = sorted({round(float(v), 4) for v in np.unique(g)})[:6]
    rng = "[-1, 1]" if lo < -0.5 and hi <= 1.0 + 1e-6 else ("[0, 1]" if lo >= -1e-6 and hi <= 1.0 + 1e-6 else "other")
    mid = (lo + hi) / 2
    cs, ws, agree, n, events = [], [], 0, 0, []
    for ep in eps:
        if ep["gripper"] is None:
            continue
        cmd = ep["actions"][:, 6]
        w = ep["gripper"][:, 0] - ep["gripper"][:, 1]
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
            events.append((str(ep.get("name", "")), int(k), bool(ok)))
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


def delta_kind_evidence(eps: list[dict]) -> DeltaKindEvidence:
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
            c = _mean_corr(*_lag_pairs(eps, "actions", lag, whiten=False, transform=tf))
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


__all__ = ["LiberoFileError", "infer_suite_task", "match_tasks", "detect_obs_convention", "declared_obs_convention",
           "alignment_evidence", "AlignmentEvidence", "gripper_evidence", "GripperEvidence", "noop_mask",
           "noop_share", "delta_kind_evidence", "DeltaKindEvidence", "load_episodes", "file_attrs",
           "STANDARD_SUITES", "NOOP_WARN_SHARE"]
