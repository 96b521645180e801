"""The contract between the run pipeline and its stages: Stage, StageResult and the RunContext they share.

A stage takes what it needs from the context (the spec, the demos read once, the data prepared once,
earlier stages' outputs) and returns a StageResult: its outputs for later stages, the metrics,
params and tags it measured, and the files to keep with the run. It never talks to MLflow, never
writes the run's state and never decides what a failure means: the pipeline (ablation/run.py) logs,
resumes and records failure, in one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .spec import Spec

if TYPE_CHECKING:
    from .data import DemoSet, PreparedData

MetricsCallback = Callable[[int, dict[str, float]], None]


@dataclass
class StageResult:
    """What one stage hands back to the pipeline."""

    outputs: dict[str, Any] = field(default_factory=dict)   # for later stages (ctx.outputs) and the run state
    metrics: dict[str, float] = field(default_factory=dict)
    step: int = 0                                           # the MLflow step of `metrics`
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    # artifact folder in the run ("" = its root) -> local file or folder; files are copied into one tree and
    # sent together, a folder is sent as its own (a checkpoint bundle is not copied twice)
    artifacts: list[tuple[str, Path]] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)    # kept in run_state.json (JSON), for later calls
    # A failure found after measuring (Gate A below its bar): the pipeline logs what was measured, then
    # fails the run with it.
    error: BaseException | None = None


@dataclass
class RunContext:
    """What a run's stages share: the job's settings, the demos and the prepared data (each made at
    most once per run, and only when a stage asks), the run's local state and earlier outputs."""

    spec: Spec
    seed: int
    demo_path: Path
    ckpt_dir: Path
    scratch: Path                      # a folder for files a stage hands back as artifacts (removed after the run)
    state: dict                        # run_state.json: done stages, bundle, train history, episodes
    init_states: tuple[int, ...] = ()
    gate_episodes: int = 10
    gate_dir: Path | None = None
    features_dir: Path | None = None
    rollout_workers: int = 1
    rollout_batch: int = 1
    progress: bool = True
    on_train_metrics: MetricsCallback | None = None   # the pipeline's: buffers for MLflow, then the caller's
    outputs: dict[str, Any] = field(default_factory=dict)
    _demos: DemoSet | None = None
    _data: PreparedData | None = None

    def demos(self) -> DemoSet:
        """The demo file, read once per run (gate, audit and training share it)."""
        if self._demos is None:
            # Imported here: the data path pulls torch in (RDT features), and `import ablation.run` stays
            # light for the CLI's quick failures (tests/test_cli.py).
            from .spec_data import read_spec_demos

            self._demos = read_spec_demos(self.spec, self.demo_path)
        return self._demos

    def data(self) -> PreparedData:
        """Training windows and the codec, fitted once on the training split: the codec the audit
        reports is the codec that trains."""
        if self._data is None:
            from .spec_data import prepare_spec_data

            self._data = prepare_spec_data(self.spec, self.demo_path, features_dir=self.features_dir,
                                           demos=self.demos())
        return self._data

    def done(self, name: str) -> bool:
        return name in self.state["done"]


class Stage:
    """One step of a run. Subclasses set `name` and implement `run`; `wanted` says whether this call
    of the pipeline must run it (default: not done yet)."""

    name: str = ""

    def wanted(self, ctx: RunContext) -> bool:
        return not ctx.done(self.name)

    def run(self, ctx: RunContext) -> StageResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<stage {self.name}>"
