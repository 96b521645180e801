"""A plan's pretraining stage: its cached pretraining networks, and the arms pointed at them.

Each pretraining spec x pretraining seed is one network, trained once per workdir (ablation/pretrain.py
caches it by key) and logged as its own run under the plan's parent. Arms say where they start:
`train.init_from: "@pretrain"` (the plan's single spec) or "@pretrain:NAME", and may freeze their
normaliser on the pretraining demos (`data.norm_stats_from: "@pretrain"`).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from .arms import Arm, ResolvedPlan
from .profiles import Profile
from .registry import ensure_pretrain_run
from .spec import EXPERIMENTS_DIR, Spec, SpecError, resolve_spec, spec_path, with_overrides
from .tracking import MetricBuffer, Tracker

log = logging.getLogger(__name__)


def run_pretrain_stage(tracker: Tracker, parent: str, rp: ResolvedPlan, profile: Profile, workdir: Path,
                       extra_sets: list[str]) -> ResolvedPlan:
    """Train (or reuse) the plan's pretraining networks (each spec x pretraining seed), log each as a run
    under the parent, and return the plan with its arms pointed at them."""
    from .pretrain import marker_spec  # (imports torch: only for plans that pretrain)

    st = rp.plan.pretrain
    plan_dir = Path(rp.plan.path).parent if rp.plan.path else EXPERIMENTS_DIR / "plans"
    target = next(iter(rp.arms.values())).spec
    wanted = {marker_spec(a.spec.train.init_from, st.spec) for a in rp.arms.values()} - {None}
    unknown = sorted(wanted - set(st.spec_names))
    if unknown:
        raise SpecError(f"{rp.plan.path or rp.plan.name}: arms fine-tune from pretraining spec(s) {', '.join(unknown)} "
                        f"that pretrain.specs does not list ({', '.join(st.spec_names)})")
    names = [n for n in st.spec_names if n in wanted] or list(st.spec_names)[:1]  # one run gives the demos
    bundles: dict[tuple[str, int | None], str] = {}
    demo_file = None
    for name in names:
        for pseed in st.seeds or (None,):
            seed_set = [] if pseed is None else [f"train.seed={pseed}"]
            spec = resolve_spec(spec_path(name, relative_to=plan_dir),
                                [*profile.sets, *rp.plan.set, *extra_sets, f"data.suite={target.data.suite}", *seed_set])
            res = _pretrain_one(tracker, parent, spec, st, workdir)
            bundles[(name, pseed)] = str(res.bundle)
            demo_file = demo_file or res.demo_file
    return replace(rp, arms={n: point_at_pretraining(a, st, bundles, demo_file) for n, a in rp.arms.items()})


def point_at_pretraining(arm: Arm, st, bundles: dict[tuple[str, int | None], str], demo_file: Path | None) -> Arm:
    """The arm with its pretraining markers resolved: `data.norm_stats_from: "@pretrain"` -> the pretraining
    demos; `train.init_from: "@pretrain[:NAME]"` -> the bundle of (NAME, None) when the plan pretrains once,
    else, per fine-tuning seed s, of (NAME, pretrain.seeds[s % n]) (Arm.seed_sets)."""
    from .pretrain import PRETRAIN_MARKER, marker_spec, pretrain_run_seed

    sets: list[str] = []
    if arm.spec.data.norm_stats_from == PRETRAIN_MARKER:
        sets.append(f"data.norm_stats_from={demo_file}")
    which = marker_spec(arm.spec.train.init_from, st.spec)
    if which is not None and not st.seeds:
        sets.append(f"train.init_from={bundles[(which, None)]}")
    if sets:
        arm = replace(arm, spec=with_overrides(arm.spec, sets))
    if which is not None and st.seeds:
        arm = replace(arm, seed_sets=tuple(
            (s, (f"train.init_from={bundles[(which, pretrain_run_seed(s, st.seeds))]}",)) for s in arm.seeds))
    return arm


def _pretrain_one(tracker: Tracker, parent: str, spec: Spec, st, workdir: Path):
    """One pretraining network (cached), logged as its own run under the plan's parent."""
    from .pretrain import pretrain
    from .train import configure_torch

    label = f"pretrain:{spec.name}" + (f"/seed{spec.train.seed}" if st.seeds else "")
    rid = ensure_pretrain_run(tracker, spec, tuple(st.tasks), parent, label)
    log.info(f"[plan] pretraining {label} on {spec.data.suite} tasks {list(st.tasks)} ({st.n_demos} demos each), "
             "cached and shared by the arms that start from it")
    configure_torch(spec.train.num_threads)
    buf = MetricBuffer(tracker, rid)
    res = pretrain(spec, tuple(st.tasks), st.n_demos, workdir, on_metrics=buf)
    buf.flush()
    tracker.set_tags(rid, {"ablation.pretrain_bundle": str(res.bundle), "ablation.demo_file": str(res.demo_file)})
    tracker.end_run(rid, "FINISHED")
    log.info(f"[plan] pretrained network: {res.bundle} ({'reused' if res.reused else f'{res.seconds:.0f} s'})")
    return res
