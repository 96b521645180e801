"""Checks of a spec against the file: the scale audit and the transform round trip."""
from __future__ import annotations

import numpy as np

from ..hypothesis import ROT_SPREAD_MIN_DEG
from .findings import Finding, where_steps

ROUNDTRIP_TOL = 1e-6  # native units; the codec is float64 and exactly invertible
LOSS_SHARE_SERIOUS = 0.01  # a moving group with under 1% of the mean-predictor loss is ignored by training


def dim_names(rep) -> list[str]:
    rot = ["rx", "ry", "rz"] if rep.rotation == "axis_angle" else [f"r{i}" for i in range(6)]
    return ["pos.x", "pos.y", "pos.z"] + [f"rot.{r}" for r in rot] + ["grip"]


def check_spec_task(spec, suite, task, data: str) -> list[Finding]:
    if suite is None or spec is None:
        return []
    if (spec.data.suite, spec.data.task) != (suite, task):
        return [Finding("spec.task", "serious", "the spec evaluates another task than the file holds",
                        f"spec {spec.name}: data.suite {spec.data.suite}, data.task {spec.data.task}; the file: "
                        f"{suite} task {task}",
                        fix=f"--set data.suite={suite} --set data.task={task} (the rollouts must be on the demos' task)",
                        next=f"run_ablation.py --plan smoke --set data.demo_file={data} --set data.suite={suite} "
                             f"--set data.task={task}",
                        numbers={"spec": [spec.data.suite, spec.data.task], "file": [suite, task]})]
    return []


def check_audit(spec, data: str, spec_path: str) -> list[Finding]:
    from ..audit import audit

    res = audit(spec, data)
    nums = {"scale_ratio": res.scale_ratio, "groups": list(res.scale_ratio_groups),
            "dilution_factor": res.dilution_factor,
            "loss_share": {g: a.mean_loss_share for g, a in res.groups.items()},
            "rms": {g: a.rms for g, a in res.groups.items()}}
    # Groups that do not vary enough to be learned or ranked on: constant or nearly constant ones, and
    # rotation when the demos turn less than the hypotheses' own threshold (ROT_SPREAD_MIN_DEG). A loss
    # that ignores such a group loses nothing, so a finding about it is info, never serious.
    still = {g: ("constant" if a.constant else "nearly constant") for g, a in res.groups.items()
             if a.constant or a.near_constant}
    if "rot" in res.groups and "rot" not in still and res.rot_spread_deg < ROT_SPREAD_MIN_DEG:
        still["rot"] = (f"turns by {res.rot_spread_deg:.1f} deg, under the {ROT_SPREAD_MIN_DEG:g} deg the "
                        "hypotheses need (rotation_varies)")
    nums["still"] = dict(still)
    nums["rot_spread_deg"] = res.rot_spread_deg
    out = []
    starved_all = [g for g, a in res.groups.items() if not a.constant and a.mean_loss_share < LOSS_SHARE_SERIOUS]
    starved = [g for g in starved_all if g not in still]
    shares = ", ".join(f"{g} {100 * a.mean_loss_share:.3g}%" for g, a in res.groups.items())
    rms = ", ".join(f"{g} {a.rms:.3g}" for g, a in res.groups.items())
    evid = (f"share of the mean-predictor loss per group: {shares}; model-space RMS: {rms}; largest scale ratio "
            f"{res.scale_ratio:.0f}x ({res.scale_ratio_groups[0]} / {res.scale_ratio_groups[1]}); rotation spread "
            f"of the demos {res.rot_spread_deg:.1f} deg")
    if starved:
        out.append(Finding(
            "scale.share", "serious", f"the loss ignores {', '.join(starved)} (spec {spec.name})", evid,
            fix="bring the groups to one scale: codec.normalizer: minmax (or unit_scales / loss.weights)",
            next="experiments/fix_minmax.yaml (run_ablation.py train --spec experiments/fix_minmax.yaml "
                 f"--demos {data}), or --plan all to compare every fix", numbers=nums))
    for g in [g for g in starved_all if g in still]:
        out.append(Finding(
            "scale.share", "info", f"the loss ignores '{g}', which barely varies in these demos (spec {spec.name})",
            evid + f"; '{g}' {still[g]}: a policy that ignores it loses nothing on this file",
            fix="", next="nothing to run; use demos that exercise it to study it", numbers=nums))
    if not starved and res.scale_ratio > 10:
        small = res.scale_ratio_groups[1]
        out.append(Finding("scale.mismatch", "info" if small in still else "warning",
                           f"group scales differ {res.scale_ratio:.0f}x (spec {spec.name})", evid
                           + (f"; the small group '{small}' {still[small]}" if small in still else ""),
                           fix="" if small in still else "codec.normalizer: minmax",
                           next="" if small in still else "experiments/fix_minmax.yaml", numbers=nums))
    if res.dilution_factor < 0.5:
        out.append(Finding(
            "scale.dilution", "info" if starved else "warning",
            f"loss dilution: {res.filled_slots} of {res.total_slots} slots filled",
            f"the {res.reduction} loss is {1 / res.dilution_factor:.1f}x smaller than the error on the filled slots; "
            f"a tiny loss proves little", fix="judge training by the per-group nMSE, not the total loss",
            next="experiments/fix_masked_loss.yaml", numbers=nums))
    for g, why in still.items():
        a = res.groups[g]
        out.append(Finding(
            "scale.constant", "info", f"'{g}' does not vary enough in these demos to rank fixes on it",
            f"'{g}' {why}; model-space std {a.std:.3g}, RMS {a.rms:.3g}; rotation spread of the demos "
            f"{res.rot_spread_deg:.1f} deg",
            fix=f"do not rank fixes on '{g}' errors; use demos that exercise it",
            next="the report flags it; nothing to run", numbers=nums))
    if not out:
        out.append(Finding("scale", "info", f"scale audit of {spec.name}: no warnings",
                           f"model-space RMS: {rms}; loss shares: {shares}", numbers=nums))
    return out


def roundtrip_errors(codec, demo_set) -> dict:
    """Encode the file's actions in the spec's representation, decode, turn into env actions at the
    recorded pose, and compare with the raw actions. Exact groups (deltas) must come back to 1e-6;
    absolute targets come back as the pose actually reached, so their gap is the controller's
    tracking error and is reported, not judged."""
    from ..data import episode_view

    rep = codec.rep
    conv = demo_set.meta.obs_convention
    phys, native, pos, rot = [], [], [], []
    for ep in demo_set.episodes:
        v = episode_view(ep, conv)
        phys.append(rep.from_demo(v.actions, v.ee_pos, v.ee_rot, v.next_ee_pos, v.next_ee_rot))
        native.append(v.actions)
        pos.append(v.ee_pos)
        rot.append(v.ee_rot)
    phys, native = np.concatenate(phys), np.concatenate(native)
    pos, rot = np.concatenate(pos), np.concatenate(rot)
    model = codec.encode(phys)
    back = codec.decode(model)
    env = rep.to_env(back, pos, rot).raw
    absolute = rep.absolute_groups
    native_groups = {"pos": slice(0, 3), "rot": slice(3, 6), "grip": slice(6, 7)}
    err = {g: float(np.abs(env[:, s] - native[:, s]).max()) for g, s in native_groups.items()}
    p95 = {g: float(np.quantile(np.abs(env[:, s] - native[:, s]), 0.95)) for g, s in native_groups.items()}
    phys_err = float(np.abs(back - phys).max() / max(1.0, float(np.abs(phys).max())))
    exact = [s for g, s in native_groups.items() if g not in absolute]
    step_err = (np.max([np.abs(env[:, s] - native[:, s]).max(1) for s in exact], axis=0) if exact
                else np.zeros(len(native)))
    return {"model_roundtrip_rel_err": phys_err, "native_max_err": err, "native_p95_err": p95,
            "absolute_groups": list(absolute), "n": int(len(native)),
            "_step_err": step_err, "_lengths": [len(ep.actions) for ep in demo_set.episodes]}


def check_roundtrip(spec, demo_set, data: str, codec=None) -> list[Finding]:
    """codec: an already fitted codec (or a stand-in); default: the spec's codec fitted on the file."""
    from ..codec import ActionCodec
    from ..representations import representation
    from ..data import episode_view

    if codec is None:
        rep = representation(spec.codec.representation, spec.codec.rotation)
        views = [episode_view(ep, demo_set.meta.obs_convention) for ep in demo_set.episodes]
        phys = np.concatenate([rep.from_demo(v.actions, v.ee_pos, v.ee_rot, v.next_ee_pos, v.next_ee_rot) for v in views])
        codec = ActionCodec.fit(spec.codec, phys, np.concatenate([v.state for v in views]),
                                np.concatenate([v.actions for v in views]))
    r = roundtrip_errors(codec, demo_set)
    step_err, lengths = r.pop("_step_err"), r.pop("_lengths")
    bounds = np.cumsum([0] + lengths)
    where = where_steps(list(demo_set.names), [step_err[a:b] > ROUNDTRIP_TOL for a, b in zip(bounds[:-1], bounds[1:])])
    exact = [g for g in ("pos", "rot", "grip") if g not in r["absolute_groups"]]
    bad = {g: r["native_max_err"][g] for g in exact if r["native_max_err"][g] > ROUNDTRIP_TOL}
    if r["model_roundtrip_rel_err"] > ROUNDTRIP_TOL:
        bad["model"] = r["model_roundtrip_rel_err"]
    name = getattr(spec, "name", "spec")
    evid = (f"encode -> decode -> env action at the recorded pose vs the raw actions over {r['n']} steps: max error "
            + ", ".join(f"{g} {v:.2g}" for g, v in r["native_max_err"].items())
            + f" (native units); decode(encode(x)) relative error {r['model_roundtrip_rel_err']:.2g}")
    if r["absolute_groups"]:
        evid += ("; absolute group(s) " + ", ".join(r["absolute_groups"]) + " come back as the pose reached (p95 gap "
                 + ", ".join(f"{g} {r['native_p95_err'][g]:.2g}" for g in r["absolute_groups"])
                 + ": the controller's tracking error, not judged)")
    if bad:
        return [Finding("roundtrip", "serious", f"the transform round trip of {name} does not give back the raw actions",
                        evid + "; off: " + ", ".join(f"{g} {v:.3g}" for g, v in bad.items()),
                        fix="the inverse output transform must undo the training transform (a double delta "
                            "transform or a rotation-representation mistake; openpi #804)",
                        next="fix the codec, then run_ablation.py doctor --data FILE --spec SPEC", numbers=r,
                        where=where)]
    return [Finding("roundtrip", "info", f"transform round trip of {name} gives back the raw actions", evid, numbers=r)]
