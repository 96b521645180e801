"""Scale audit: the seed's diagnosis, automated, before any training.

For the spec's codec as a run fits it (on the training split, ablation.data.fit_codec: the codec the
run trains with), it reports per action group (in model space, over that split) the range, spread
and RMS; the largest ratio between group scales; how much the loss reduction dilutes the filled
slots; and each group's share of the loss of a predictor that outputs the per-dim mean.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .codec import ActionCodec
from .data import PreparedData, episode_view, fit_codec, physical_actions, read_demo_file, split_demos
from .spec import GROUPS, Spec

SCALE_RATIO_WARN = 10.0
CONSTANT_RMS = 1e-9  # a group whose values never change carries no signal to rank on
# A group whose per-dim spread is under 1% of its magnitude is nearly constant (e.g. the absolute
# orientation of an expert that never turns): its nMSE divides by a tiny variance and misleads.
NEAR_CONSTANT_REL_STD = 0.01


@dataclass
class GroupAudit:
    slots: list[int]
    min: float
    max: float
    std: float
    absmax: float
    rms: float
    mean_loss_share: float
    constant: bool
    near_constant: bool = False


@dataclass
class AuditResult:
    spec: str
    spec_hash: str
    demo_file: str
    n_demos: int
    n_steps: int
    representation: str
    layout: str
    normalizer: str
    reduction: str
    groups: dict[str, GroupAudit]
    scale_ratio: float
    scale_ratio_groups: tuple[str, str]
    filled_slots: int
    total_slots: int
    dilution_factor: float
    mean_predictor_loss: float
    # How far the demos turn the gripper: per demo the largest angle (degrees) between the EEF
    # orientation and its start; the median over demos. Near 0 means rotation cannot be tested here.
    rot_spread_deg: float = 0.0
    codec_fit: str = ""  # which demos the codec was fitted on and measured on, e.g. "training split: 9 of 10 demos"
    warnings: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return self.scale_ratio > SCALE_RATIO_WARN

    def to_json(self) -> dict:
        d = asdict(self)
        d["flagged"] = self.flagged
        return d


def audit(spec: Spec, demo_path: str | Path, data: PreparedData | None = None) -> AuditResult:
    """The spec's codec as a run fits and trains it (on the training split of the demos), measured on
    the actions the loss sees (that split) in model space. `data`: the run's prepared data (the file
    read and the codec fitted once, shared with training); without it the file is read here and the
    codec fitted the same way."""
    if data is not None:
        ds, codec, ids = data.demo_set, data.codec, list(data.train_ids)
        views = [episode_view(ep, ds.meta.obs_convention) for ep in ds.episodes]
    else:
        ds = read_demo_file(demo_path, obs_convention=spec.data.obs_convention)
        views = [episode_view(ep, ds.meta.obs_convention) for ep in ds.episodes]
        ids, _ = split_demos(len(views), spec.data.val_fraction)
        codec = fit_codec(spec.codec, views, ids)
    phys = np.concatenate([physical_actions(views[i], codec.rep) for i in ids])
    model = codec.encode(phys)  # (N, W)
    groups, total_loss = _group_audits(spec, codec, phys, model)
    ratio, pair = _scale_ratio(groups)
    filled = int(codec.action_mask.sum())
    width = codec.width
    dilution = filled / width if spec.loss.reduction == "rdt_mean" else 1.0
    denom = width if spec.loss.reduction == "rdt_mean" else filled
    return AuditResult(
        # The rotation spread is the file's (every demo), as ablation.needs measures it; the rest is the codec's.
        rot_spread_deg=rotation_spread_deg(views), codec_fit=f"training split: {len(ids)} of {len(views)} demos",
        spec=spec.name, spec_hash=spec.hash(), demo_file=str(demo_path), n_demos=len(ids),
        n_steps=int(model.shape[0]), representation=spec.codec.representation, layout=spec.codec.layout,
        normalizer=spec.codec.normalizer, reduction=spec.loss.reduction, groups=groups,
        scale_ratio=float(ratio), scale_ratio_groups=pair, filled_slots=filled, total_slots=width,
        dilution_factor=float(dilution), mean_predictor_loss=float(total_loss / denom),
        warnings=_warnings(spec, groups, ratio, pair, filled, width, dilution))


def _group_audits(spec: Spec, codec: ActionCodec, phys: np.ndarray, model: np.ndarray
                  ) -> tuple[dict[str, GroupAudit], float]:
    """Per group: range, spread and RMS in model space, and its share of the loss of the per-dim mean
    predictor (whose expected loss is the per-dim variance, weighted per group)."""
    weights = spec.loss.weights.as_dict()
    slots = codec.group_slots
    var = model.var(axis=0)
    group_loss = {g: weights[g] * float(var[slots[g]].sum()) for g in GROUPS}
    total_loss = sum(group_loss.values())
    groups: dict[str, GroupAudit] = {}
    phys_idx = codec.rep.group_index
    for g in GROUPS:
        x = model[:, slots[g]]
        p = phys[:, phys_idx[g]]
        p_rms = float(np.sqrt(np.mean(p ** 2)))
        near_const = bool(p_rms > 0 and float(p.std(0).mean()) < NEAR_CONSTANT_REL_STD * p_rms)
        groups[g] = GroupAudit(
            slots=[int(s) for s in slots[g]], min=float(x.min()), max=float(x.max()), std=float(x.std()),
            absmax=float(np.abs(x).max()), rms=float(np.sqrt(np.mean(x ** 2))),
            mean_loss_share=group_loss[g] / total_loss if total_loss > 0 else 0.0,
            constant=bool(np.all(np.ptp(x, axis=0) <= CONSTANT_RMS)), near_constant=near_const)
    return groups, total_loss


def _scale_ratio(groups: dict[str, GroupAudit]) -> tuple[float, tuple[str, str]]:
    """The largest RMS ratio between two groups that carry signal, and which two."""
    live = [g for g in GROUPS if groups[g].rms > CONSTANT_RMS]
    ratio, pair = 1.0, (GROUPS[0], GROUPS[0])
    for a in live:
        for b in live:
            r = groups[a].rms / groups[b].rms
            if r > ratio:
                ratio, pair = r, (a, b)
    return ratio, pair


def _warnings(spec: Spec, groups: dict[str, GroupAudit], ratio: float, pair: tuple[str, str], filled: int,
              width: int, dilution: float) -> list[str]:
    warnings = []
    if ratio > SCALE_RATIO_WARN:
        warnings.append(
            f"scale mismatch: '{pair[0]}' is {ratio:.0f}x larger than '{pair[1]}' in model space (RMS); "
            f"the loss will mostly ignore '{pair[1]}'. Normalise (e.g. codec.normalizer: minmax) or re-weight.")
    if dilution < 0.5:
        warnings.append(
            f"loss dilution: only {filled} of {width} slots are filled, so the {spec.loss.reduction} loss is "
            f"{1 / dilution:.1f}x smaller than the error on the filled slots; a tiny loss proves little.")
    for g in GROUPS:
        if groups[g].constant:
            warnings.append(f"constant group: '{g}' never changes in these demos; a fix cannot be ranked on it.")
        elif groups[g].near_constant:
            warnings.append(f"nearly constant group: '{g}' varies by under {100 * NEAR_CONSTANT_REL_STD:g}% of its "
                            "magnitude; its nMSE divides by a tiny variance, so do not rank fixes on it.")
        elif groups[g].mean_loss_share < 0.01:
            warnings.append(f"'{g}' carries {100 * groups[g].mean_loss_share:.2g}% of the mean-predictor loss; "
                            "errors there barely move the total.")
    return warnings


def rotation_spread_deg(views) -> float:
    """Median over demos of the largest angle (degrees) the EEF turns away from its start pose."""
    per_demo = []
    for v in views:
        rel = np.einsum("ji,tjk->tik", v.ee_rot[0], v.ee_rot)  # R0^T R_t
        cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
        per_demo.append(float(np.degrees(np.arccos(cos)).max()))
    return float(np.median(per_demo)) if per_demo else 0.0


def format_table(res: AuditResult) -> str:
    lines = [
        f"scale audit: spec {res.spec} ({res.spec_hash}) on {res.demo_file}",
        f"  codec fitted on the {res.codec_fit or f'{res.n_demos} demos'}; measured there: {res.n_steps} steps",
        f"  representation={res.representation} layout={res.layout} "
        f"normalizer={res.normalizer} reduction={res.reduction}",
        "",
        f"  {'group':<5} {'slots':<10} {'min':>10} {'max':>10} {'std':>10} {'absmax':>10} {'rms':>10} {'loss share':>11}",
    ]
    for g, a in res.groups.items():
        sl = f"{a.slots[0]}-{a.slots[-1]}" if len(a.slots) > 1 else str(a.slots[0])
        lines.append(f"  {g:<5} {sl:<10} {a.min:>10.4g} {a.max:>10.4g} {a.std:>10.4g} {a.absmax:>10.4g} "
                     f"{a.rms:>10.4g} {100 * a.mean_loss_share:>10.2f}%")
    lines += [
        "",
        f"  largest group scale ratio: {res.scale_ratio:.1f} ({res.scale_ratio_groups[0]} / {res.scale_ratio_groups[1]})",
        f"  loss dilution factor: {res.dilution_factor:.3f} ({res.filled_slots} filled of {res.total_slots} slots)",
        f"  loss of the per-dim mean predictor: {res.mean_predictor_loss:.4g}",
        f"  rotation spread of the demos: {res.rot_spread_deg:.1f} deg (median over demos of the largest turn)",
    ]
    if res.warnings:
        lines.append("")
        lines += [f"  WARNING: {w}" for w in res.warnings]
    else:
        lines += ["", "  no warnings: group scales are within 10x of each other"]
    return "\n".join(lines)
