"""A plan file: its typed sections (entries, episode looks, pretraining, tasks) and where plans and
spec references are found."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, ValidationError, model_validator

from .rules import DEFAULT_RULES
from .spec_load import _read_yaml, format_validation_error
from .spec_model import SpecError, _Frozen


class PlanEntry(_Frozen):
    spec: str
    seeds: Optional[tuple[int, ...]] = None
    set: tuple[str, ...] = ()


class EpisodeSchedule(_Frozen):
    """Adaptive closed-loop episodes: every arm x seed gets `looks[0]` episodes (init states
    0..looks[0]-1, the same for every arm: paired); after each look, only the arms of comparisons that
    are still undecided get more, up to looks[-1]. The family-wise error over the plan's comparisons
    is controlled with Holm; across looks the error is spent by `spending` (see ablation/stats/)."""

    looks: tuple[int, ...] = (20, 35, 50)
    # The decision thresholds; their defaults live in one place, ablation/rules.py (DecisionRules).
    alpha: float = Field(DEFAULT_RULES.alpha, gt=0, lt=0.5)
    spending: Literal["obrien_fleming", "bonferroni"] = DEFAULT_RULES.spending
    # A difference smaller than this (in success-rate points / 100) counts as "no meaningful difference".
    margin: float = Field(DEFAULT_RULES.margin, gt=0, lt=1)
    # Both arms at or below `floor` (or at or above `ceiling`) success cannot show a difference.
    floor: float = Field(DEFAULT_RULES.floor, ge=0, lt=1)
    ceiling: float = Field(DEFAULT_RULES.ceiling, gt=0, le=1)

    @model_validator(mode="after")
    def _increasing(self) -> "EpisodeSchedule":
        if not self.looks or any(b <= a for a, b in zip(self.looks, self.looks[1:])) or self.looks[0] < 1:
            raise ValueError(f"looks {list(self.looks)} must be positive and increasing")
        if self.looks[-1] > 50:
            raise ValueError("looks: LIBERO has 50 init states per task; the last look is at most 50")
        return self


class PretrainStage(_Frozen):
    """Networks pretrained once per plan (cached, shared by the arms) that arms fine-tune from: an arm
    whose spec says `train.init_from: "@pretrain"` starts from `spec`, one that says
    `"@pretrain:<name>"` from the pretraining spec <name> of `specs`. See ablation/pretrain.py.

    `seeds`: independent pretraining runs of each spec (train.seed of the pretraining). The arm's run
    with fine-tuning seed s starts from the pretraining run seeds[s % len(seeds)], so with seeds [0, 1]
    and fine-tuning seeds [0, 1, 2, 3] every pretraining run carries two fine-tuned networks per arm,
    and the spread between seeds includes the spread between pretraining runs. Empty: one run, at the
    pretraining spec's own seed (as before)."""

    spec: Optional[str] = None      # the pretraining spec (e.g. absolute EEF poses in slots 30-38)
    specs: tuple[str, ...] = ()     # several pretraining specs, named by the arms ("@pretrain:<name>")
    seeds: tuple[int, ...] = ()
    tasks: tuple[int, ...]          # other tasks of the suite (never the target task)
    n_demos: int = Field(20, ge=1)  # expert demos per task

    @model_validator(mode="after")
    def _one_form(self) -> "PretrainStage":
        if (self.spec is None) == (not self.specs):
            raise ValueError("pretrain: give `spec: NAME` (arms say \"@pretrain\") or `specs: [A, B]` (arms say "
                             "\"@pretrain:A\"), not both and not neither")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.specs)) != len(self.specs):
            raise ValueError(f"pretrain: seeds {list(self.seeds)} and specs {list(self.specs)} must be distinct")
        return self

    @property
    def spec_names(self) -> tuple[str, ...]:
        return (self.spec,) if self.spec is not None else self.specs


class Plan(_Frozen):
    name: str
    description: str = ""
    path: Optional[str] = None  # the plan file; spec references resolve relative to it
    seeds: tuple[int, ...] = (0,)
    set: tuple[str, ...] = ()  # overrides applied to every entry (e.g. a short budget)
    # Hypothesis files (experiments/hypotheses/NAME.yaml); their arms and controls become entries.
    hypotheses: tuple[str, ...] = ()
    entries: tuple[PlanEntry, ...] = ()
    # None: one look of each spec's rollout.episodes.
    episodes: Optional[EpisodeSchedule] = None
    # Arms (in hypotheses) that this plan leaves out, with the reason the report prints.
    skip_arms: dict[str, str] = {}
    # hypothesis name -> an arm that must succeed in THIS plan's setting for that hypothesis's
    # comparisons to mean anything (Hypothesis.positive_control; trained beside them). Whether a task
    # can be learnt at a budget is the setting's, not the claim's: e.g. the rotation plan's min-max.
    positive_controls: dict[str, str] = {}
    pretrain: Optional[PretrainStage] = None
    # Several tasks of the arms' suite: task ids, or "all" (every task the scripted expert covers).
    # None: each spec's own data.task, one task. With tasks, runs are arm x seed x task and every
    # comparison is pooled over the tasks (a random factor). `--set data.task=[0,3]` sets this too.
    tasks: Optional[Literal["all"] | tuple[int, ...]] = None

    @model_validator(mode="after")
    def _has_work(self) -> "Plan":
        if not self.hypotheses and not self.entries:
            raise ValueError("a plan lists hypotheses (experiments/hypotheses/*.yaml) or entries (specs)")
        if isinstance(self.tasks, tuple):
            if not self.tasks or min(self.tasks) < 0 or len(set(self.tasks)) != len(self.tasks):
                raise ValueError(f"tasks: {list(self.tasks)} must be distinct task ids >= 0, e.g. [0, 3], or 'all'")
        return self


EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"


def find_plan(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    candidate = EXPERIMENTS_DIR / "plans" / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(q.stem for q in (EXPERIMENTS_DIR / "plans").glob("*.yaml"))
    raise SpecError(f"plan '{name_or_path}' not found: not a file, and not one of {', '.join(known)}")


def load_plan(name_or_path: str) -> Plan:
    path = find_plan(name_or_path)
    raw = _read_yaml(path)
    raw.setdefault("name", path.stem)
    raw["path"] = str(path.resolve())
    entries = raw.get("entries")
    if isinstance(entries, list):  # allow the short form: a bare spec name per entry
        raw["entries"] = [{"spec": e} if isinstance(e, str) else e for e in entries]
    try:
        plan = Plan.model_validate(raw)
    except ValidationError as e:
        msg = format_validation_error(e, str(path)).replace(f"{path}: ", f"{path}: plan ")
        raise SpecError(msg) from None
    for entry in plan.entries:
        spec_path(entry.spec, relative_to=path.parent)
    return plan


def spec_path(name: str, relative_to: Path | None = None) -> Path:
    """Resolve a spec reference: a path, or a name under experiments/."""
    here = relative_to or EXPERIMENTS_DIR
    for cand in (Path(name), here / name, here / f"{name}.yaml", EXPERIMENTS_DIR / name,
                 EXPERIMENTS_DIR / f"{name}.yaml"):
        if cand.is_file():
            return cand
    known = sorted(q.stem for q in EXPERIMENTS_DIR.glob("*.yaml") if q.stem != "base")
    raise SpecError(f"spec '{name}' not found; known specs: {', '.join(known)}")
