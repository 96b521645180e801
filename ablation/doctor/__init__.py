"""`run_ablation.py doctor`: find the known LIBERO fine-tuning pitfalls in a demo file (and a spec, and a
checkpoint) before a long run. domain.md section 5 lists the pitfalls and the threads behind them.

    report = run_doctor("demos.hdf5", spec="experiments/fix_minmax.yaml", checkpoint=None)
    print(report.text()); report.exit_code   # 0 nothing serious, 1 something serious

The data and the spec are judged apart: without a spec (or a checkpoint, which carries one) only the
file is judged (its conventions, its integrity, its replay in the simulator); with one, also whether
that spec would train well on it (scale audit, round trip, task).

Checks: gripper convention (sign, range), obs/action alignment (lag, no-ops), kind of the actions
(delta / double delta / absolute), scale audit, transform round trip, checkpoint statistics and
open-loop predictions (with a checkpoint), Gate A through the spec's own decode path, start states,
versions, images (blank frames, orientation). Unreadable inputs raise UserError (exit 2 in the CLI).
"""
from __future__ import annotations

import traceback
from pathlib import Path

from .. import demo_io
from ..errors import UserError
from .findings import ALL_PLAN, CODES, SMOKE_PLAN, DoctorReport, Finding

DEFAULT_SPEC = "native_delta"  # the codec Gate A replays the file through when no spec is given
# The checks `--checks` chooses from, by what they judge. "images" covers blank frames and orientation.
DATA_CHECKS = ("gripper", "alignment", "actions", "images", "versions")
SPEC_CHECKS = ("spec", "scale", "roundtrip")
CHECKPOINT_CHECKS = ("stats", "openloop")
SIM_CHECKS = ("gate_a", "start_state")
CHECKS = DATA_CHECKS + SPEC_CHECKS + CHECKPOINT_CHECKS + SIM_CHECKS
FAIL_ON = ("serious", "warning", "never")


def resolve_checks(tokens: list[str] | None) -> list[str] | None:
    """`--checks` tokens (check names, finding ids or codes, comma lists allowed) -> finding-id prefixes;
    None runs every check. Unknown tokens raise UserError listing the valid ones."""
    if not tokens:
        return None
    by_code = {c: i for i, c in CODES.items()}
    out = []
    for t in (x.strip() for tok in tokens for x in tok.split(",")):
        if not t:
            continue
        t = by_code.get(t.upper(), t)
        if t not in CHECKS and t not in CODES:
            raise UserError(f"--checks: unknown check '{t}'; choose from {', '.join(CHECKS)}, a finding id "
                            f"(e.g. gripper.sign) or a code (e.g. D102)")
        out.append(t)
    return out or None


def _selected(check_id: str, wanted: list[str] | None) -> bool:
    """Run the check `check_id` when a token names it, a finding it emits, or a group it belongs to."""
    if wanted is None:
        return True
    return any(check_id == t or check_id.startswith(t + ".") or t.startswith(check_id + ".") for t in wanted)


def _keep(f: Finding, wanted: list[str] | None) -> bool:
    if wanted is None or f.id in ("suite_task", "sim", "spec"):
        return True
    # a crashed check reports under its check id (e.g. "gripper" for a wanted "gripper.sign")
    return any(f.id == t or f.id.startswith(t + ".") or t.startswith(f.id + ".") for t in wanted)


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
    try:
        return demo_io.read_demo_file(data), None
    except UserError as e:
        if "obs_convention" not in str(e):
            raise
        # neither the file nor the data tell the timing: read it LIBERO's original way, and say so
        return demo_io.read_demo_file(data, obs_convention="after"), str(e)


def _inputs(spec: str | Path | None, checkpoint: str | Path | None, sets: list[str] | None) -> tuple:
    """(the checkpoint's light bundle or None, the spec, its label, whether the user named it or the
    checkpoint carries it): unreadable inputs raise UserError."""
    from ..spec import EXPERIMENTS_DIR, resolve_spec
    from . import ckpt_checks

    bundle = None
    if checkpoint is not None:
        bundle = ckpt_checks.load_bundle_light(checkpoint)
    if spec is not None:
        spec_obj = resolve_spec(spec, sets or [])
        spec_label, explicit = str(spec), True
    elif bundle is not None:
        spec_obj, spec_label, explicit = bundle[0], f"{Path(checkpoint) / 'spec.yaml'}", True
    else:
        # no spec: the file alone is judged; Gate A replays its own actions through LIBERO's native codec
        spec_obj = resolve_spec(EXPERIMENTS_DIR / f"{DEFAULT_SPEC}.yaml", sets or [])
        spec_label, explicit = "none (the file alone; pass --spec to judge a spec on it)", False
    return bundle, spec_obj, spec_label, explicit


def _suite_task(findings: list[Finding], data: Path, suite: str | None, task: int | None
                ) -> tuple[str | None, int | None]:
    """The suite and task asked for, else the file's own (with an info finding), else (None, None)
    with a warning: the simulator checks are then skipped."""
    if suite is None or task is None:
        try:
            s, t = demo_io.infer_suite_task(data)
            suite, task = suite or s, t if task is None else task
            findings.append(Finding("suite_task", "info", f"the file holds {suite} task {task}",
                                    "from the file's own attributes (ablation_attrs, bddl_file_name, "
                                    "bddl_file_content, problem_info)", numbers={"suite": suite, "task": task}))
        except UserError as e:
            findings.append(Finding("suite_task", "warning", "suite/task unknown: simulator checks skipped", str(e),
                                    fix="pass --suite and --task", next=f"run_ablation.py doctor --data {data} "
                                    "--suite SUITE --task N"))
            suite = task = None
    return suite, task


def _spec_findings(findings: list[Finding], run, data: Path, demo_set, spec_obj, spec_for_file, spec_label: str,
                   explicit: bool, suite: str | None, task: int | None) -> None:
    """The spec on the file: only a spec the user named, or the checkpoint's."""
    from . import spec_checks

    if explicit:
        if run("spec.task"):
            _guard(findings, "spec.task", spec_checks.check_spec_task, spec_obj, suite, task, str(data))
        if run("scale"):
            _guard(findings, "scale", spec_checks.check_audit, spec_for_file, str(data), spec_label)
        if run("roundtrip"):
            _guard(findings, "roundtrip", spec_checks.check_roundtrip, spec_obj, demo_set, str(data))
    elif any(run(c) for c in SPEC_CHECKS):
        findings.append(Finding("spec", "info", "spec checks not run: no spec given",
                                "the file alone was judged; the scale audit, the transform round trip and the "
                                "task check judge a spec on the file",
                                next=f"run_ablation.py doctor --data {data} --spec experiments/YOUR_SPEC.yaml"))


def _checkpoint_findings(findings: list[Finding], run, data: Path, demo_set, checkpoint: str | Path,
                         bundle: tuple) -> None:
    """The checkpoint's statistics and open-loop predictions on the file."""
    from ..provenance import file_sha256
    from . import ckpt_checks

    b_spec, b_codec, b_meta, has_weights = bundle
    sha = file_sha256(data)
    if run("stats"):
        _guard(findings, "stats.mismatch", ckpt_checks.check_stats, checkpoint, b_spec, b_codec, b_meta,
               demo_set, str(data), sha)
    if not run("openloop"):
        pass
    elif has_weights and (Path(checkpoint) / "meta.json").is_file():
        _guard(findings, "openloop", ckpt_checks.check_openloop, checkpoint, b_spec, demo_set, sha, b_meta)
    else:
        findings.append(Finding("openloop", "info", "open-loop check skipped: the bundle has no model weights",
                                f"{Path(checkpoint)} holds codec.json + spec.yaml only; the statistics check "
                                "needs no more, the open-loop check needs model.safetensors and meta.json"))


def _sim_findings(findings: list[Finding], run, data: Path, demo_set, *, sim: bool, episodes: int,
                  workdir: str | Path | None, suite: str | None, task: int | None, spec_for_file, spec_label: str,
                  explicit: bool, names: list[str], frames: dict, uses_images: bool | None) -> None:
    """The simulator: Gate A, start states and image orientation (when a suite and task are known)."""
    from . import sim_checks

    sim_wanted = [c for c in ("gate_a", "start_state", "images.orientation") if run(c)]
    if not sim_wanted:
        pass
    elif not sim:
        findings.append(Finding("sim", "info", "simulator checks skipped (--no-sim)",
                                "Gate A, start states and image orientation were not run"))
    elif suite is not None:
        n = max(1, min(int(episodes), len(demo_set.episodes)))
        cache = Path(workdir) / "cache" / "gate_a" if workdir is not None else None
        if "gate_a" in sim_wanted:
            _guard(findings, "gate_a", sim_checks.check_gate_a, spec_for_file, Path(spec_label).stem if explicit
                   else f"the file's own actions ({DEFAULT_SPEC})", str(data), suite, int(task), n, cache,
                   names=names)
        if "start_state" in sim_wanted:
            _guard(findings, "start_state", sim_checks.check_start_states, demo_set, suite, int(task))
        if frames and "images.orientation" in sim_wanted:
            _guard(findings, "images.orientation", sim_checks.check_orientation, demo_set, frames, suite, int(task),
                   uses_images)


def run_doctor(data: str | Path, spec: str | Path | None = None, checkpoint: str | Path | None = None, *,
               sim: bool = True, episodes: int = 10, suite: str | None = None, task: int | None = None,
               workdir: str | Path | None = None, sets: list[str] | None = None, checks: list[str] | None = None,
               fail_on: str = "serious") -> DoctorReport:
    from ..spec import with_overrides
    from . import file_checks

    if fail_on not in FAIL_ON:
        raise UserError(f"--fail-on: '{fail_on}' is not one of {', '.join(FAIL_ON)}")
    wanted = resolve_checks(checks)
    run = lambda cid: _selected(cid, wanted)  # noqa: E731
    data = Path(data)
    demo_set, conv_err = _read_demo_set(data)  # unreadable file or unmappable dataset -> UserError (exit 2)
    eps = demo_set.episodes  # as stored: the file checks judge the timing themselves
    names = [ep.name for ep in eps]
    attrs = demo_io.file_attrs(data)
    n_steps = int(sum(len(ep) for ep in eps))
    findings: list[Finding] = []

    bundle, spec_obj, spec_label, explicit = _inputs(spec, checkpoint, sets)
    conv = demo_set.meta.obs_convention
    spec_conv = spec_obj.data.obs_convention if explicit else None
    spec_for_file = with_overrides(spec_obj, [f"data.obs_convention={conv}"])

    suite, task = _suite_task(findings, data, suite, task)
    if conv_err and run("alignment"):
        findings.append(Finding("alignment.convention", "warning", "obs timing unknown; read as 'after'", conv_err,
                                fix="set data.obs_convention in the spec", where=[]))

    # -- the file alone
    if run("gripper"):
        _guard(findings, "gripper", file_checks.check_gripper, eps, str(data))
    if run("alignment"):
        _guard(findings, "alignment", file_checks.check_alignment, eps, str(data),
               demo_io.declared_obs_convention(data), spec_conv)
    if run("actions"):
        _guard(findings, "actions.kind", file_checks.check_action_kind, eps, str(data))
    frames = {}
    if run("images"):
        try:
            frames = file_checks.image_frames(str(data))
        except Exception as e:
            findings.append(Finding("images", "warning", "images could not be read", f"{type(e).__name__}: {e}"))
    uses_images = spec_obj.data.images if explicit else None
    if run("images.blank"):
        _guard(findings, "images.blank", file_checks.check_images, frames, str(data), uses_images, names)
    if run("versions"):
        _guard(findings, "versions", file_checks.check_versions,
               (attrs.get("ablation_attrs") or {}).get("versions", {}), suite, task, bool(frames))

    _spec_findings(findings, run, data, demo_set, spec_obj, spec_for_file, spec_label, explicit, suite, task)

    if bundle is not None:
        _checkpoint_findings(findings, run, data, demo_set, checkpoint, bundle)

    _sim_findings(findings, run, data, demo_set, sim=sim, episodes=episodes, workdir=workdir, suite=suite, task=task,
                  spec_for_file=spec_for_file, spec_label=spec_label, explicit=explicit, names=names,
                  frames=frames, uses_images=uses_images)
    findings = [f for f in findings if _keep(f, wanted)]
    return DoctorReport(str(data), suite, task, spec_label, str(checkpoint) if checkpoint else None,
                        len(eps), n_steps, findings, fail_on=fail_on)


__all__ = ["run_doctor", "resolve_checks", "DoctorReport", "Finding", "DEFAULT_SPEC", "CHECKS", "FAIL_ON",
           "SMOKE_PLAN", "ALL_PLAN"]
