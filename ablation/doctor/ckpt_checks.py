"""Checks of a checkpoint bundle against the file: codec statistics, open-loop predictions.

The statistics check needs only `codec.json` + `spec.yaml` from the bundle (meta.json when present
tells which file and split the codec was fitted on); the open-loop check needs the model weights too
and is skipped, with an info finding, when `model.safetensors` is not there.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from ..errors import UserError
from .findings import Finding
from .spec_checks import dim_names

STATS_TOL_SAME = 1e-6          # same file and split: the statistics must be the same numbers
STATS_TOL_CENTER = 0.25        # other file: centre moved by more than a quarter of the scale
STATS_TOL_SCALE = 1.5          # other file: scale off by more than 1.5x either way
STD_RATIO_RANGE = (0.5, 2.0)   # domain.md pitfall 2
OPENLOOP_WINDOWS = 64


def load_bundle_light(bundle: str | Path):
    """(spec, codec, meta or {}, has_weights) from codec.json + spec.yaml; UserError when unreadable."""
    from ..codec import ActionCodec
    from ..spec import spec_from_dict

    b = Path(bundle)
    if not b.is_dir():
        raise UserError(f"{b}: checkpoint directory not found")
    for name in ("spec.yaml", "codec.json"):
        if not (b / name).is_file():
            raise UserError(f"{b / name}: missing; the doctor needs at least codec.json and spec.yaml of a bundle")
    try:
        raw = yaml.safe_load((b / "spec.yaml").read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{b / 'spec.yaml'}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{b / 'spec.yaml'}: not a spec mapping")
    spec = spec_from_dict(raw, str(b / "spec.yaml"))
    codec = ActionCodec.load(b / "codec.json", expected=spec.codec)
    meta = {}
    if (b / "meta.json").is_file():
        try:
            meta = json.loads((b / "meta.json").read_text())
        except json.JSONDecodeError:
            raise UserError(f"{b / 'meta.json'}: not valid JSON") from None
    return spec, codec, meta, (b / "model.safetensors").is_file()


def _file_data(codec, demo_set):
    from ..data import episode_view

    rep = codec.rep
    views = [episode_view(ep, demo_set.meta.obs_convention) for ep in demo_set.episodes]
    phys = [rep.from_demo(v.actions, v.ee_pos, v.ee_rot, v.next_ee_pos, v.next_ee_rot) for v in views]
    return views, phys


def check_stats(bundle: str | Path, spec, codec, meta: dict, demo_set, data: str, data_sha: str) -> list[Finding]:
    from ..codec import ActionCodec
    from ..data import split_demos

    views, phys = _file_data(codec, demo_set)
    same = bool(meta.get("demo_sha256")) and meta.get("demo_sha256") == data_sha
    ids = split_demos(len(views), spec.data.val_fraction, 0)[0] if same else list(range(len(views)))
    ref = ActionCodec.fit(spec.codec, np.concatenate([phys[i] for i in ids]),
                          np.concatenate([views[i].state for i in ids]),
                          np.concatenate([views[i].actions for i in ids]))
    names = dim_names(codec.rep)
    fitted = spec.codec.normalizer in ("minmax", "meanstd", "quantile")
    if fitted:
        c_ck, s_ck = codec.action_tf.center, codec.action_tf.scale
        c_rf, s_rf = ref.action_tf.center, ref.action_tf.scale
        what = f"{spec.codec.normalizer} normaliser (centre, scale)"
    else:  # identity / scale: the normaliser has no statistics; compare the stored per-dim mean / std
        u = codec.action_tf.unit
        c_ck, s_ck = np.asarray(codec.stats["action"]["mean"]) * u, np.asarray(codec.stats["action"]["std"]) * np.abs(u)
        c_rf, s_rf = np.asarray(ref.stats["action"]["mean"]) * u, np.asarray(ref.stats["action"]["std"]) * np.abs(u)
        what = "stored action mean / std (the normaliser itself is fixed)"
    live = (s_rf > 1e-9) | (s_ck > 1e-9)
    dc = np.abs(c_ck - c_rf) / np.maximum(np.maximum(s_rf, s_ck), 1e-9)
    rs = np.maximum(s_ck, 1e-12) / np.maximum(s_rf, 1e-12)
    tol_c, tol_s = (STATS_TOL_SAME, 1 + STATS_TOL_SAME) if same else (STATS_TOL_CENTER, STATS_TOL_SCALE)
    off = live & ((dc > tol_c) | (rs > tol_s) | (rs < 1 / tol_s))
    nums = {"same_file": same, "normalizer": spec.codec.normalizer,
            "dims": {n: {"checkpoint": [float(c_ck[i]), float(s_ck[i])], "file": [float(c_rf[i]), float(s_rf[i])],
                         "center_shift": float(dc[i]), "scale_ratio": float(rs[i])} for i, n in enumerate(names)}}
    basis = ("the file and training split the checkpoint was trained on (meta.json sha256 matches)" if same else
             f"the whole file (meta.json names {meta.get('demo_file', 'no file')})")
    if off.any():
        bad = [names[i] for i in np.nonzero(off)[0]]
        detail = "; ".join(f"{names[i]}: checkpoint ({c_ck[i]:.4g}, {s_ck[i]:.4g}) vs file ({c_rf[i]:.4g}, {s_rf[i]:.4g})"
                           for i in np.nonzero(off)[0][:6])
        return [Finding(
            "stats.mismatch", "serious" if fitted else "warning",
            f"checkpoint statistics do not match the file in {', '.join(bad)}",
            f"{what} in {Path(bundle) / 'codec.json'} vs recomputed from {basis}: {detail}",
            fix=("the policy decodes with statistics of other data (another task or file): retrain on this file, or "
                 "evaluate on the task it was trained on"),
            next=f"run_ablation.py train --spec {Path(bundle) / 'spec.yaml'} --demos {data}", numbers=nums)]
    return [Finding("stats.mismatch", "info", "checkpoint statistics match the file",
                    f"{what} agree with {basis} in all {int(live.sum())} moving dims", numbers=nums)]


def check_openloop(bundle: str | Path, spec, demo_set, data_sha: str, meta: dict) -> list[Finding]:
    import torch

    from ..data import build_windows, split_demos
    from ..bundle import load_policy
    from ..train import WindowTensors

    if spec.data.images:
        return [Finding("openloop", "info", "open-loop check skipped", "the policy takes images; run "
                        "run_ablation.py eval --checkpoint DIR --open-loop-only")]
    policy = load_policy(bundle)
    codec = policy.codec
    views, _ = _file_data(codec, demo_set)
    same = meta.get("demo_sha256") == data_sha
    ids = (split_demos(len(views), spec.data.val_fraction, 0)[1] if same else []) or list(range(len(views)))
    w = build_windows(views, ids, codec, spec.data)
    idx = np.unique(np.linspace(0, len(w) - 1, min(OPENLOOP_WINDOWS, len(w))).round().astype(int))
    wt = WindowTensors(w, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    b = {k: v.to(policy.device) for k, v in wt.batch(torch.as_tensor(idx)).items()}
    pred = policy.sample(b, generator=gen).float().cpu().numpy().astype(np.float64)
    pred_phys, true_phys = codec.decode(pred), w.phys_actions[idx]
    valid = w.action_valid[idx] > 0
    names = dim_names(codec.rep)
    sp, sd = pred_phys[valid].std(0), true_phys[valid].std(0)
    ratio = {n: (float(sp[i] / sd[i]) if sd[i] > 1e-9 else None) for i, n in enumerate(names)}
    first = codec.to_env(pred[:, 0], w.ee_pos[idx], w.ee_rot[idx])
    demo_first = codec.rep.to_env(true_phys[:, 0], w.ee_pos[idx], w.ee_rot[idx])
    absmax = float(codec.stats.get("pos_step_m", {}).get("absmax", 0.0)) or float("nan")
    step = float(np.abs(first.pos_step_m).max())
    step_ratio = step / absmax if np.isfinite(absmax) and absmax > 0 else float("nan")
    nums = {"std_ratio": ratio, "clip_rate": first.clip_fraction, "demo_clip_rate": demo_first.clip_fraction,
            "pos_step_max_m": step, "train_pos_step_absmax_m": absmax, "pos_step_ratio": step_ratio,
            "windows": int(len(idx)), "held_out": bool(same)}
    out = []
    off = {n: r for n, r in ratio.items() if r is not None and not STD_RATIO_RANGE[0] <= r <= STD_RATIO_RANGE[1]}
    rtxt = ", ".join(f"{n} {r:.2f}" if r is not None else f"{n} const" for n, r in ratio.items())
    src = "held-out demos" if same else "the file's demos"
    if off:
        out.append(Finding("openloop.std_ratio", "warning", f"predicted spread is off in {', '.join(off)}",
                           f"std(predicted) / std(demo) per dim on {len(idx)} windows of {src}: {rtxt} "
                           f"(want {STD_RATIO_RANGE[0]}-{STD_RATIO_RANGE[1]})",
                           fix="check the statistics and normalisation mode at evaluation; train longer if all are low",
                           next="run_ablation.py eval --checkpoint DIR --open-loop-only", numbers=nums))
    if np.isfinite(step_ratio) and step_ratio > 1.5:
        out.append(Finding("openloop.pos_step", "serious" if step_ratio > 2 else "warning",
                           f"predicted position steps reach {step_ratio:.1f}x the training range",
                           f"largest predicted position step {step * 1000:.1f} mm vs {absmax * 1000:.1f} mm in training "
                           "(the seed's symptom: 20x, then clipped)",
                           fix="normalise position (codec.normalizer: minmax) or scale it (unit_scales.pos)",
                           next="experiments/fix_minmax.yaml", numbers=nums))
    if first.clip_fraction > max(0.05, 2 * demo_first.clip_fraction):
        out.append(Finding("openloop.clip", "warning", f"{first.clip_fraction:.0%} of predicted arm actions are clipped",
                           f"decoded env actions outside [-1, 1]: {first.clip_fraction:.1%} (demo {demo_first.clip_fraction:.1%})",
                           fix="see the statistics and position-step findings", next="experiments/fix_minmax.yaml",
                           numbers=nums))
    if not out:
        out.append(Finding("openloop", "info", "open-loop predictions are in range",
                           f"std ratios {rtxt}; clip rate {first.clip_fraction:.1%}; position step "
                           f"{step_ratio:.2f}x the training range", numbers=nums))
    return out
