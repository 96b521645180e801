"""Plan resolution: a plan's hypotheses and entries -> arms (a resolved spec, its seeds and tasks) -> runs.

    Plan + Profile + --set/--seeds/--only --resolve_plan--> ResolvedPlan: arms, the arms it leaves out
    (and why), and the key that names "the same plan" across invocations
    ResolvedPlan.units() -> RunUnit: one trained network (arm x seed, x task in a multi-task plan),
    with its MLflow run name, its key in the plan record and its checkpoint directory
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from .hypothesis import Hypothesis, load_hypothesis
from .profiles import Profile
from .spec import (EXPERIMENTS_DIR, Plan, PlanEntry, Spec, SpecError, affects_identity, parse_set, resolve_spec,
                   spec_path, with_overrides)


@dataclass(frozen=True)
class Arm:
    name: str
    spec: Spec                      # resolved, without the seed
    seeds: tuple[int, ...]
    # The plan's tasks of the spec's suite; None: the spec's own data.task (a single-task plan, whose
    # run names, checkpoint dirs and spec hashes carry no task, as before multi-task plans existed).
    tasks: tuple[int, ...] | None = None
    # Overrides for one seed's runs only, (seed, sets): e.g. the pretraining run (train.init_from) that
    # fine-tuning seed s starts from when a plan pretrains several times (pretrain.seeds).
    seed_sets: tuple[tuple[int, tuple[str, ...]], ...] = ()

    def spec_at(self, task: int | None) -> Spec:
        """The arm's spec on `task` (its own task when None), without the seed."""
        return self.spec if task is None else with_overrides(self.spec, [f"data.task={task}"])

    def spec_for(self, seed: int, task: int | None = None) -> Spec:
        """The arm's spec with `seed` (and on `task`, when given): one run's spec."""
        extra = [x for s, sets in self.seed_sets if s == seed for x in sets]
        return with_overrides(self.spec, [f"train.seed={seed}"] + ([] if task is None else [f"data.task={task}"]) + extra)


@dataclass(frozen=True)
class RunUnit:
    """One trained network of a plan: arm x seed (x task, in a multi-task plan)."""

    arm: Arm
    seed: int
    task: int | None = None

    @property
    def key(self) -> tuple[str, int, int | None]:
        return (self.arm.name, self.seed, self.task)

    @property
    def spec(self) -> Spec:
        return self.arm.spec_for(self.seed, self.task)

    @property
    def name(self) -> str:
        """The MLflow run name: `arm/seedN`, or `arm/seedN/taskK` in a multi-task plan."""
        return f"{self.arm.name}/seed{self.seed}" + ("" if self.task is None else f"/task{self.task}")

    @property
    def record_key(self) -> str:
        """Key of this run under its arm in plan.json's `runs`: the seed, or `seed/taskK`."""
        return str(self.seed) + ("" if self.task is None else f"/task{self.task}")

    def ckpt_dir(self, workdir: Path) -> Path:
        return self._ckpt_dir(workdir, self.spec.hash())

    def _ckpt_dir(self, workdir: Path, spec_hash: str) -> Path:
        task = "" if self.task is None else f"-task{self.task}"
        return workdir / "checkpoints" / f"{self.arm.name}-seed{self.seed}{task}-{spec_hash}"

    def adopt_legacy_ckpt_dir(self, workdir: Path) -> bool:
        """An older workdir names this run's checkpoint directory by Spec.legacy_hash: link the current
        name to it (the run's state records absolute paths under the old name), so the run resumes there.
        Returns whether it linked."""
        new, old = self.ckpt_dir(workdir), self._ckpt_dir(workdir, self.spec.legacy_hash())
        if new.exists() or new.is_symlink() or not old.is_dir():
            return False
        new.parent.mkdir(parents=True, exist_ok=True)
        new.symlink_to(old.name, target_is_directory=True)
        return True


@dataclass(frozen=True)
class ResolvedPlan:
    plan: Plan
    hypotheses: list[Hypothesis]
    arms: dict[str, Arm]
    key: str                        # identifies "the same plan" across invocations
    skipped: dict[str, str]         # arm -> why this plan leaves it out

    @property
    def comparisons(self) -> list[tuple[str, object]]:
        """(hypothesis name, Comparison) for every comparison whose arms this plan trains."""
        return [(h.name, c) for h in self.hypotheses for c in h.comparisons
                if c.arm in self.arms and c.control in self.arms]

    @property
    def multitask(self) -> bool:
        return any(a.tasks is not None for a in self.arms.values())

    def without(self, left_out: dict[str, str]) -> "ResolvedPlan":
        """This plan less the arms in `left_out` (arm -> why), which join its skipped arms."""
        return replace(self, arms={n: a for n, a in self.arms.items() if n not in left_out},
                       skipped={**self.skipped, **left_out})

    def entries(self) -> list[tuple[Arm, int]]:
        return [(a, s) for a in self.arms.values() for s in a.seeds]

    def units(self) -> list[RunUnit]:
        """Every run of the plan: arm x seed, times the arm's tasks in a multi-task plan."""
        return [RunUnit(a, s, t) for a in self.arms.values() for t in (a.tasks or (None,)) for s in a.seeds]

    def dispatch_order(self) -> list[RunUnit]:
        """The units in the order a look hands them to the workers: round-robin over (arm, task), so the
        runs that start together belong to different arms. An arm's runs share one Gate A (cached per
        codec and task, computed by the first run that gets there); in units() order an arm's seeds
        started together and, with 2 or more jobs, each computed that gate itself."""
        groups: dict[tuple, list[RunUnit]] = {}
        for u in self.units():
            groups.setdefault((u.arm.name, u.task), []).append(u)
        rounds = max((len(g) for g in groups.values()), default=0)
        return [g[i] for i in range(rounds) for g in groups.values() if i < len(g)]


def plan_tasks(plan: Plan, sets: list[str]) -> tuple[str | tuple[int, ...] | None, list[str]]:
    """The plan's tasks and the sets left for the specs. A `data.task=` set whose value is a list or
    `all` names the plan's tasks (the last one wins, after the plan's own `tasks`); a single id stays a
    spec override (one task, as before) and replaces any earlier list."""
    tasks, keep = plan.tasks, []
    for item in sets:
        path, value = parse_set(item)
        if path == ["data", "task"] and (value == "all" or isinstance(value, list)):
            if value != "all" and (not value or not all(isinstance(t, int) and t >= 0 for t in value)
                                   or len(set(value)) != len(value)):
                raise SpecError(f"--set {item}: data.task takes one task id, a list of distinct ids "
                                "(e.g. data.task=[0,3]) or 'all'")
            tasks = value if value == "all" else tuple(value)
            continue
        if path == ["data", "task"]:
            tasks = None
        keep.append(item)
    return tasks, keep


def with_plan_controls(plan: Plan, hyps: list[Hypothesis]) -> list[Hypothesis]:
    """The hypotheses with the plan's `positive_controls` set on them (a hypothesis file's own control
    stays; the plan may not name another)."""
    by_name = {h.name: h for h in hyps}
    unknown = sorted(set(plan.positive_controls) - set(by_name))
    if unknown:
        raise SpecError(f"{plan.path or plan.name}: positive_controls: {', '.join(unknown)} not among the plan's "
                        f"hypotheses ({', '.join(by_name) or 'none'})")
    out = []
    for h in hyps:
        pc = plan.positive_controls.get(h.name)
        if pc is not None and h.positive_control not in (None, pc):
            raise SpecError(f"{plan.path or plan.name}: positive_controls: {h.name} already has its own positive "
                            f"control {h.positive_control} ({h.path}); remove the plan's {pc}")
        out.append(h if pc is None else h.model_copy(update={"positive_control": pc}))
    return out


def resolve_plan(plan: Plan, profile: Profile, seeds: list[int] | None = None, only: list[str] | None = None,
                 extra_sets: list[str] | None = None) -> ResolvedPlan:
    """The plan's arms on this profile: every arm its hypotheses and entries name, less `skip_arms`, kept to
    `only` (arm names or file stems), each spec resolved with the profile's, the plan's, its entry's and
    `extra_sets`; `seeds` replaces every arm's seeds. Unknown arms and bad tasks raise SpecError."""
    plan_dir = Path(plan.path).parent if plan.path else EXPERIMENTS_DIR / "plans"
    hyps = with_plan_controls(plan, [load_hypothesis(h, plan_dir) for h in plan.hypotheses])
    names: list[str] = []
    for h in hyps:
        names += [a for a in h.arms() if a not in names]
    entry_sets = {e.spec: e for e in plan.entries}
    names += [e.spec for e in plan.entries if e.spec not in names]
    skipped = {a: why for a, why in plan.skip_arms.items() if a in names}
    names = [n for n in names if n not in skipped]
    if only:
        short = {n: Path(n).stem if n.endswith((".yaml", ".yml")) else n for n in names}
        unknown = [o for o in only if o not in names and o not in short.values()]
        if unknown:
            raise SpecError(f"--only {', '.join(unknown)}: no such arm in plan '{plan.name}' "
                            f"({', '.join(short.values())})")
        names = [n for n in names if n in only or short[n] in only]
    arms: dict[str, Arm] = {}
    for ref in names:
        e = entry_sets.get(ref)
        hyp_dirs = [Path(h.path).parent for h in hyps if h.path and ref in h.arms()]
        path = spec_path(ref, relative_to=hyp_dirs[0] if hyp_dirs else plan_dir)
        tasks, sets = plan_tasks(plan, [*profile.sets, *plan.set, *(e.set if e else ()), *(extra_sets or [])])
        arm_seeds = tuple(seeds or (e.seeds if e and e.seeds else None) or plan.seeds)
        # An entry given as a file path is named by its file (as its spec is), not by the whole path.
        name = Path(ref).stem if ref.endswith((".yaml", ".yml")) else ref
        spec = resolve_spec(path, sets)
        if tasks == "all":
            tasks = _covered_tasks(spec.data.suite)
        arms[name] = Arm(name, spec, arm_seeds, tasks)
        if plan.pretrain is not None and set(tasks or ()) & set(plan.pretrain.tasks):
            raise SpecError(f"{plan.path or plan.name}: tasks {list(tasks)} overlap pretrain.tasks "
                            f"{list(plan.pretrain.tasks)}; fine-tune on tasks the pretraining did not see")
    # Sets of resource or presentation fields (rollout.workers=2) leave the plan, as its runs, the same.
    key_sets = [s for s in extra_sets or [] if affects_identity(".".join(parse_set(s)[0]))]
    blob = json.dumps({"plan": plan.name, "profile": profile.name, "sets": sorted(key_sets)}, sort_keys=True)
    key = f"{plan.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"
    return ResolvedPlan(plan, hyps, arms, key, skipped)


_COVERED: dict[str, tuple[int, ...]] = {}


def _covered_tasks(suite: str) -> tuple[int, ...]:
    """`tasks: all`: every task of the suite whose goal the scripted expert covers (read once)."""
    if suite not in _COVERED:
        from .sim.expert import SUPPORTED_SUITES, covered_tasks

        if suite not in SUPPORTED_SUITES:
            raise SpecError(f"tasks: all: the scripted expert covers {', '.join(SUPPORTED_SUITES)}, not {suite}; "
                            "name the tasks (e.g. tasks: [0, 1]) with your own demo files")
        _COVERED[suite] = tuple(covered_tasks(suite))
    return _COVERED[suite]


def resolve_arm(spec_ref: str, profile: Profile, seed: int | None = None,
                extra_sets: list[str] | None = None) -> RunUnit:
    """One arm and seed as a plan on `profile` would run it: `train --spec NAME --seed S --profile P`.
    It goes through resolve_plan (a one-entry plan), so the spec hash, the run name and the checkpoint
    directory are the plan's for that arm (a plan whose own `set:` lines change the spec needs them as
    --set here). seed None: the spec's train.seed."""
    name = Path(spec_ref).stem if str(spec_ref).endswith((".yaml", ".yml")) else str(spec_ref)
    if seed is None:
        seed = resolve_spec(spec_path(spec_ref), [*profile.sets, *(extra_sets or [])]).train.seed
    plan = Plan(name=f"arm:{name}", seeds=(seed,), entries=(PlanEntry(spec=str(spec_ref)),))
    arm = next(iter(resolve_plan(plan, profile, [seed], None, list(extra_sets or [])).arms.values()))
    return RunUnit(arm, seed)
