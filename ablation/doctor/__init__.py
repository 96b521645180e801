"""`run_ablation.py doctor`: find the known LIBERO fine-tuning pitfalls in a demo file (and a spec, and a
checkpoint) before a long run. domain.md section 5 lists the pitfalls and the threads behind them.

    report = run_doctor("demos.hdf5", spec="experiments/fix_minmax.yaml", checkpoint=None)
    print(report.text()); report.exit_code   # 0 nothing serious, 1 something serious

Checks: gripper convention (sign, range), obs/action alignment (lag, no-ops), kind of the actions
(delta / double delta / absolute), scale audit, transform round trip, checkpoint statistics and
open-loop predictions (with a checkpoint), Gate A through the spec's own decode path, start states,
versions, images (blank frames, orientation). Unreadable inputs raise UserError (exit 2 in the CLI).
"""
from __future__ import annotations

import traceback
from pathlib import Path

from .. import libero_file as L
from ..errors import UserError
from .findings import ALL_PLAN, SMOKE_PLAN, DoctorReport, Finding

DEFAULT_SPEC = "native_delta"


def _guard(findings: list[Finding], check_id: str, fn, *args, **kwargs) -> None:
    """Run one check; a check that crashes becomes a warning naming the error, the others still run."""
    try:
        findings.extend(fn(*args, **kwargs))
    except UserError as e:
        findings.append(Finding(check_id, "warning", f"check '{check_id}' could not run", str(e)))
    except Exception as e:  # a bug in a check must not hide the other findings
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        findings.append(Finding(check_id, "warning", f"check '{check_id}' crashed", f"{type(e).__name__}: {e}{where}"))


def _read_demo_set(data: Path):
    from ..data import read_demo_file

    try:
        return read_demo_file(data), None
    except UserError as e:
        if "obs_convention" not in str(e):
            raise
        # neither the file nor the data tell the timing: read it LIBERO's original way, and say so
        return read_demo_file(data, obs_convention="after"), str(e)


def run_doctor(data: str | Path, spec: str | Path | None = None, checkpoint: str | Path | None = None, *,
               sim: bool = True, episodes: int = 10, suite: str | None = None, task: int | None = None,
               workdir: str | Path | None = None, sets: list[str] | None = None) -> DoctorReport:
    from ..provenance import file_sha256
    from ..spec import EXPERIMENTS_DIR, resolve_spec, with_overrides
    from . import ckpt_checks, file_checks, sim_checks, spec_checks

    data = Path(data)
    eps = L.load_episodes(data)  # unreadable file -> UserError (exit 2)
    attrs = L.file_attrs(data)
    demo_set, conv_err = _read_demo_set(data)
    n_steps = int(sum(ep["n"] for ep in eps))
    findings: list[Finding] = []

    # -- inputs: spec and checkpoint (unreadable -> UserError)
    bundle = None
    if checkpoint is not None:
        bundle = ckpt_checks.load_bundle_light(checkpoint)
    if spec is not None:
        spec_obj = resolve_spec(spec, sets or [])
        spec_label, explicit = str(spec), True
    elif bundle is not None:
        spec_obj, spec_label, explicit = bundle[0], f"{Path(checkpoint) / 'spec.yaml'}", True
    else:
        spec_obj = resolve_spec(EXPERIMENTS_DIR / f"{DEFAULT_SPEC}.yaml", sets or [])
        spec_label, explicit = f"experiments/{DEFAULT_SPEC}.yaml (default; pass --spec for yours)", False
    conv = demo_set.meta.obs_convention
    spec_conv = spec_obj.data.obs_convention if explicit else None
    spec_for_file = with_overrides(spec_obj, [f"data.obs_convention={conv}"])

    # -- suite and task
    if suite is None or task is None:
        try:
            s, t = L.infer_suite_task(data)
            suite, task = suite or s, t if task is None else task
            findings.append(Finding("suite_task", "info", f"the file holds {suite} task {task}",
                                    "from the file's own attributes (ablation_attrs, bddl_file_name, "
                                    "bddl_file_content, problem_info)", numbers={"suite": suite, "task": task}))
        except UserError as e:
            findings.append(Finding("suite_task", "warning", "suite/task unknown: simulator checks skipped", str(e),
                                    fix="pass --suite and --task", next=f"run_ablation.py doctor --data {data} "
                                    "--suite SUITE --task N"))
            suite = task = None
    if conv_err:
        findings.append(Finding("alignment.convention", "warning", "obs timing unknown; read as 'after'", conv_err,
                                fix="set data.obs_convention in the spec"))

    # -- the file alone
    _guard(findings, "gripper", file_checks.check_gripper, eps, str(data))
    _guard(findings, "alignment", file_checks.check_alignment, eps, str(data),
           L.declared_obs_convention(data), spec_conv)
    _guard(findings, "actions.kind", file_checks.check_action_kind, eps, str(data))
    frames = {}
    try:
        frames = file_checks.image_frames(str(data))
    except Exception as e:
        findings.append(Finding("images", "warning", "images could not be read", f"{type(e).__name__}: {e}"))
    uses_images = spec_obj.data.images if explicit else None
    _guard(findings, "images.blank", file_checks.check_images, frames, str(data), uses_images)
    _guard(findings, "versions", file_checks.check_versions, (attrs.get("ablation_attrs") or {}).get("versions", {}),
           suite, task, bool(frames))

    # -- the spec on the file
    if explicit:
        _guard(findings, "spec.task", spec_checks.check_spec_task, spec_obj, suite, task, str(data))
    _guard(findings, "scale", spec_checks.check_audit, spec_for_file, str(data), spec_label)
    _guard(findings, "roundtrip", spec_checks.check_roundtrip, spec_obj, demo_set, str(data))

    # -- the checkpoint
    if bundle is not None:
        b_spec, b_codec, b_meta, has_weights = bundle
        sha = file_sha256(data)
        _guard(findings, "stats.mismatch", ckpt_checks.check_stats, checkpoint, b_spec, b_codec, b_meta, demo_set,
               str(data), sha)
        if has_weights and (Path(checkpoint) / "meta.json").is_file():
            _guard(findings, "openloop", ckpt_checks.check_openloop, checkpoint, b_spec, demo_set, sha, b_meta)
        else:
            findings.append(Finding("openloop", "info", "open-loop check skipped: the bundle has no model weights",
                                    f"{Path(checkpoint)} holds codec.json + spec.yaml only; the statistics check "
                                    "needs no more, the open-loop check needs model.safetensors and meta.json"))

    # -- the simulator
    if not sim:
        findings.append(Finding("sim", "info", "simulator checks skipped (--no-sim)",
                                "Gate A, start states and image orientation were not run"))
    elif suite is not None:
        n = max(1, min(int(episodes), len(demo_set.episodes)))
        cache = Path(workdir) / "cache" / "gate_a" if workdir is not None else None
        _guard(findings, "gate_a", sim_checks.check_gate_a, spec_for_file, Path(spec_label).stem if explicit else
               DEFAULT_SPEC, str(data), suite, int(task), n, cache)
        _guard(findings, "start_state", sim_checks.check_start_states, demo_set, suite, int(task))
        if frames:
            _guard(findings, "images.orientation", sim_checks.check_orientation, demo_set, frames, suite, int(task),
                   uses_images)
    return DoctorReport(str(data), suite, task, spec_label, str(checkpoint) if checkpoint else None,
                        len(eps), n_steps, findings)


__all__ = ["run_doctor", "DoctorReport", "Finding", "DEFAULT_SPEC", "SMOKE_PLAN", "ALL_PLAN"]
