"""The stages of one spec x seed run: each takes its inputs from the RunContext and returns a StageResult.

Run in this order by the one run pipeline (ablation/run.py, which alone logs, resumes and records
failure). Metric keys:
    gate/*                   Gate A: demo replay through the spec's own codec path
    audit/*                  scale audit of the codec that trains (audit/constant/{g} = 1 flags a constant group)
    train/*, val/*           from the trainer's callback (loss, nmse, phys errors per group)
    val/openloop/*           sampled chunks on held-out demos: phys errors, clip rate, pos step ratio
    eval/*                   closed-loop rollouts in the simulator
    time/*                   seconds per stage
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .closed_loop import EpisodeProgress, episode_dict, run_closed_loop, summarise_episodes
from .gates import GATE_MIN_SUCCESS, GateFailed, replay_gate
from .stage import RunContext, Stage, StageResult

TAG_TRAIN_COMPILED = "ablation.train_compiled"
TAG_PLOT_ERROR = "ablation.plot_error"


class GateStage(Stage):
    """Gate A: replay the demos through this spec's own encode -> decode -> env path in the simulator
    (cached per codec). Below `min_success` the run cannot measure anything about learning: it fails
    with that reason, after its figures are logged."""

    name = "gate"

    def __init__(self, min_success: float = GATE_MIN_SUCCESS):
        self.min_success = min_success

    def wanted(self, ctx: RunContext) -> bool:
        return ctx.gate_episodes > 0 and not ctx.done(self.name)

    def run(self, ctx: RunContext) -> StageResult:
        t0 = time.time()
        spec = ctx.spec
        g = replay_gate(spec, ctx.demo_path, episodes=ctx.gate_episodes, cache_dir=ctx.gate_dir, demos=ctx.demos())
        m = {"gate/replay_success_rate": float(g.success_rate), "gate/replay_episodes": float(g.n),
             "gate/cached": float(g.cached), "time/gate_s": time.time() - t0}
        err = None
        if g.success_rate < self.min_success:
            err = GateFailed(f"Gate A failed: replaying the demos through codec {spec.codec.representation}/"
                             f"{spec.codec.layout}/{spec.codec.normalizer} succeeded in {g.success_rate:.0%} of "
                             f"{g.n} episodes (< {self.min_success:.0%}); the action interface is broken, not the "
                             f"learning. Run `run_ablation.py doctor --data {ctx.demo_path}` for the details")
        return StageResult(metrics=m, error=err)


class AuditStage(Stage):
    """The scale audit of the codec that trains: fitted once on the training split (ctx.data())."""

    name = "audit"

    def run(self, ctx: RunContext) -> StageResult:
        from .audit import audit, format_table

        t0 = time.time()
        res = audit(ctx.spec, ctx.demo_path, data=ctx.data())
        m = {"audit/scale_ratio": res.scale_ratio, "audit/dilution_factor": res.dilution_factor,
             "audit/flagged": float(res.flagged), "audit/rot_spread_deg": res.rot_spread_deg}
        for g, a in res.groups.items():
            m[f"audit/loss_share/{g}"] = a.mean_loss_share
            m[f"audit/rms/{g}"] = a.rms
            m[f"audit/constant/{g}"] = float(a.constant or a.near_constant)
        m["time/audit_s"] = time.time() - t0
        (ctx.scratch / "audit.json").write_text(json.dumps(res.to_json(), indent=1))
        (ctx.scratch / "audit.txt").write_text(format_table(res))
        return StageResult(metrics=m, artifacts=[("audit", ctx.scratch / "audit.json"),
                                                 ("audit", ctx.scratch / "audit.txt")])


class TrainStage(Stage):
    """Train, or resume from the newest bundle (a finished run only loads it). Wanted until the
    stages that need the trainer's result are done, or when the bundle went missing."""

    name = "train"
    NEEDS_RESULT = ("train", "open_loop", "artifacts")

    def wanted(self, ctx: RunContext) -> bool:
        bundle = ctx.state.get("bundle")
        return not all(ctx.done(s) for s in self.NEEDS_RESULT) or not bundle or not Path(bundle).is_dir()

    def run(self, ctx: RunContext) -> StageResult:
        from .train import train

        history: dict[str, list[tuple[int, float]]] = {}

        def on_metrics(step: int, metrics: dict) -> None:
            for k, v in metrics.items():
                if k.startswith(("train/loss/", "train/nmse/", "val/")):
                    history.setdefault(k, []).append((step, float(v)))
            if ctx.on_train_metrics is not None:
                ctx.on_train_metrics(step, metrics)

        result = train(ctx.spec, ctx.demo_path, ctx.ckpt_dir, on_metrics=on_metrics, resume=True,
                       progress=ctx.progress, data=ctx.data())
        record = {"bundle": str(result.checkpoint_dir)}
        if not ctx.done(self.name):  # the loss curves of the run that trained, not of a later reload
            record["train_history"] = history
        return StageResult(outputs={"train_result": result}, record=record)


class OpenLoopStage(Stage):
    """The trainer's final open-loop figures, and a plot of predicted vs demo actions."""

    name = "open_loop"

    def wanted(self, ctx: RunContext) -> bool:
        return not ctx.done(self.name) and "train_result" in ctx.outputs

    def run(self, ctx: RunContext) -> StageResult:
        from .run_plots import plot_predicted_vs_demo

        result = ctx.outputs["train_result"]
        m = {f"val/openloop/{k}": float(v) for k, v in (result.open_loop or {}).items()
             if isinstance(v, (int, float)) and np.isfinite(v)}
        m["time/train_s"] = float(result.wall_time_s)
        m["train/samples_per_s"] = float(result.samples_per_s)
        # train.compile: whether the compiled step ran (the tag says why not), and what compiling cost here
        m["time/train_first_step_s"] = float(result.first_step_s)
        tags = {TAG_TRAIN_COMPILED: str(result.compiled)[:500]}
        artifacts = []
        try:
            p = plot_predicted_vs_demo(ctx.spec, Path(result.checkpoint_dir), ctx.scratch / "pred_vs_demo.png",
                                       ctx.data())
            if p is not None:
                artifacts.append(("plots", p))
        except Exception as e:  # a plot must never fail a run; say why it is missing
            tags[TAG_PLOT_ERROR] = f"{type(e).__name__}: {e}"[:500]
        return StageResult(metrics=m, step=result.steps, tags=tags, artifacts=artifacts)


class ArtifactsStage(Stage):
    """Spec YAML, codec statistics, the checkpoint bundle and the per-group loss curves."""

    name = "artifacts"

    def wanted(self, ctx: RunContext) -> bool:
        return not ctx.done(self.name) and "train_result" in ctx.outputs

    def run(self, ctx: RunContext) -> StageResult:
        from .run_plots import plot_loss_curves

        bundle = Path(ctx.outputs["train_result"].checkpoint_dir)
        (ctx.scratch / "spec.yaml").write_text(ctx.spec.to_yaml())
        arts = [("", ctx.scratch / "spec.yaml")]
        p = plot_loss_curves(ctx.state.get("train_history", {}), ctx.scratch / "loss_curves.png", title=ctx.spec.name)
        if p is not None:
            arts.append(("plots", p))
        from .bundle import POLICY_FILES  # (imports torch: only in a worker that trained)

        # the final bundle once, what a policy loads, without the training state (train_state.pt)
        arts += [("", bundle / "codec.json")] + [("checkpoint", bundle / name) for name in POLICY_FILES]
        return StageResult(artifacts=arts)


class ClosedLoopStage(Stage):
    """Roll the bundle out from the init states the job asks for that the run has not evaluated yet
    (every call: later looks add episodes), then summarise every episode so far."""

    name = "closed_loop"

    def wanted(self, ctx: RunContext) -> bool:
        # every call (later looks add episodes), except a train-only call (`train --spec`) on a run with
        # no episodes yet: it would log eval/success_rate 0 for a network never rolled out
        return bool(ctx.init_states) or bool(ctx.state.get("episodes"))

    def run(self, ctx: RunContext) -> StageResult:
        spec, episodes = ctx.spec, list(ctx.state["episodes"])
        have = {int(r["init_state"]) for r in episodes}
        todo = [s for s in ctx.init_states if s not in have]
        arts = []
        if todo:
            # rollout.videos: an mp4 of each of the first N init states (cameras on for those episodes only).
            videos = tuple(s for s in todo if s < spec.rollout.videos)
            video_dir = ctx.ckpt_dir / "videos"
            res = run_closed_loop(Path(ctx.state["bundle"]), spec, ctx.seed, todo, workers=ctx.rollout_workers,
                                  batch=ctx.rollout_batch, videos=videos, video_dir=video_dir if videos else None,
                                  progress=EpisodeProgress(f"{spec.name} seed {ctx.seed}", len(todo)))
            if videos:
                arts.append(("videos", video_dir))
            episodes.extend(episode_dict(r) for r in res.episodes)
            print(f"[{spec.name} seed {ctx.seed}] +{len(todo)} episodes: {res.line()}", flush=True)
        # The run's per-episode record (every look so far), replacing the previous copy.
        (ctx.scratch / "episodes.json").write_text(json.dumps(episodes, indent=1, default=float))
        arts.append(("rollouts", ctx.scratch / "episodes.json"))
        # Step = episodes so far: every look leaves its own point in the metric history.
        m = summarise_episodes(episodes)
        return StageResult(outputs={"eval_metrics": m}, metrics=m, step=len(episodes), artifacts=arts,
                           record={"episodes": episodes})


def run_stages() -> list[Stage]:
    """The stages of a run, in order."""
    return [GateStage(), AuditStage(), TrainStage(), OpenLoopStage(), ArtifactsStage(), ClosedLoopStage()]


def log_episodes(tracker, run_id: str, episodes: list[dict]) -> None:
    """A per-episode record as a run keeps it (rollouts/episodes.json), for tools that write runs
    outside the pipeline (tests of the report)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "episodes.json").write_text(json.dumps(episodes, indent=1, default=float))
        tracker.log_artifact(run_id, Path(d) / "episodes.json", "rollouts")
