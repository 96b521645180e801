"""Precision and recall of the doctor on a corpus: clean expert files, and copies of them with each known
pitfall planted. A clean file must get 0 serious findings; a planted pitfall must be the top finding.

Used by benchmarks/doctor_corpus.py (the full corpus: >= 8 covered tasks across the 4 suites) and by
tests/test_doctor.py (a small one).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import episode_view, read_demo_file
from ..libero_file import infer_suite_task
from . import run_doctor
from .plant import PITFALLS, plant

STATS_PITFALL = "other_task_stats"  # a checkpoint whose codec was fitted on another task's demos
EXPECTED = {k: (v[0], v[1]) for k, v in PITFALLS.items()} | {STATS_PITFALL: ("stats.mismatch", "serious")}
CLEAN, CLEAN_SPEC = "clean", "clean + spec"


@dataclass
class CorpusRow:
    file: str
    task: str                 # "suite:task"
    kind: str                 # CLEAN, CLEAN_SPEC or a pitfall name
    top: str                  # "CODE id severity" of the top finding
    n_serious: int
    ok: bool                  # clean: no serious finding; planted: the expected finding ranked first
    seconds: float
    sim: bool = False
    serious: list[str] = field(default_factory=list)  # the serious findings, for a clean file that fails


def stats_bundle(dir_: Path, spec_name: str, demo_file: Path, sets: list[str] | None = None) -> Path:
    """codec.json + spec.yaml only, the codec fitted on `demo_file` as training fits it."""
    from ..codec import ActionCodec
    from ..representations import representation
    from ..spec import EXPERIMENTS_DIR, resolve_spec

    spec = resolve_spec(EXPERIMENTS_DIR / f"{spec_name}.yaml", sets or [])
    ds = read_demo_file(demo_file)
    rep = representation(spec.codec.representation, spec.codec.rotation)
    views = [episode_view(ep, ds.meta.obs_convention) for ep in ds.episodes]
    phys = np.concatenate([rep.from_demo(v.actions, v.ee_pos, v.ee_rot, v.next_ee_pos, v.next_ee_rot) for v in views])
    codec = ActionCodec.fit(spec.codec, phys, np.concatenate([v.state for v in views]),
                            np.concatenate([v.actions for v in views]))
    dir_.mkdir(parents=True, exist_ok=True)
    codec.save(dir_ / "codec.json")
    (dir_ / "spec.yaml").write_text(spec.to_yaml())
    return dir_


def _row(path: Path, task: str, kind: str, report, seconds: float, sim: bool) -> CorpusRow:
    top = report.top
    serious = [f"{f.code} {f.id}: {f.title}" for f in report.ranked() if f.severity == "serious"]
    if kind == CLEAN:
        ok = not serious
    elif kind == CLEAN_SPEC:
        # the spec's own findings (S codes) judge the spec, not the file: a clean file must get no
        # serious finding about its data (D) or its replay (R) whatever the spec
        ok = not [s for s in serious if s[0] in "DR"]
    else:
        ok = top is not None and (top.id, top.severity) == EXPECTED[kind]
    return CorpusRow(str(path), task, kind, f"{top.code} {top.id} {top.severity}" if top else "-", len(serious), ok,
                     seconds, sim, serious)


def check_clean(path: Path, suite: str, task: int, *, sim: bool, workdir: Path, episodes: int = 3,
                spec: str | Path | None = None) -> CorpusRow:
    """The doctor on a clean file: alone (spec None) or with a spec set to the file's own task."""
    t = time.perf_counter()
    sets = [f"data.suite={suite}", f"data.task={task}"] if spec is not None else None
    r = run_doctor(path, spec, sim=sim, episodes=episodes, workdir=workdir, sets=sets)
    return _row(path, f"{suite}:{task}", CLEAN if spec is None else CLEAN_SPEC, r, time.perf_counter() - t, sim)


def check_planted(clean: Path, suite: str, task: int, out_dir: Path, *, other_clean: Path | None = None,
                  kinds: list[str] | None = None) -> list[CorpusRow]:
    """Plant each pitfall in a copy of `clean` and run the doctor (file checks only: --no-sim) on it.
    blank_frames needs a file with images; other_task_stats needs `other_clean` (another task's file)."""
    ds = read_demo_file(clean, load_images=True)
    has_images = "agentview_rgb" in ds.episodes[0].obs
    rows = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind in kinds or [*PITFALLS, STATS_PITFALL]:
        if (kind == "blank_frames" and not has_images) or (kind == STATS_PITFALL and other_clean is None):
            continue
        t = time.perf_counter()
        if kind == STATS_PITFALL:
            # a checkpoint trained on the other task: its spec names that task, its mean/std are that task's
            o_suite, o_task = infer_suite_task(other_clean)
            bundle = stats_bundle(out_dir / f"{kind}_bundle", "fix_meanstd", other_clean,
                                  [f"data.suite={o_suite}", f"data.task={o_task}"])
            path, r = clean, run_doctor(clean, None, bundle, sim=False)
        else:
            path = plant(ds, kind, out_dir / f"{kind}.hdf5")
            r = run_doctor(path, sim=False)
        rows.append(_row(path, f"{suite}:{task}", kind, r, time.perf_counter() - t, False))
    return rows


def confusion_table(rows: list[CorpusRow]) -> str:
    """One line per kind: what was expected, how often it was met, and the top findings seen (the row of
    a confusion matrix: expected kind against the top finding's code)."""
    kinds = [k for k in (CLEAN, CLEAN_SPEC, *EXPECTED) if any(r.kind == k for r in rows)]
    lines = [f"{'file kind':<18} {'expected':<46} {'met':>7}   top finding seen (count)",
             f"{'-' * 18} {'-' * 46} {'-' * 7}   {'-' * 40}"]
    for k in kinds:
        rs = [r for r in rows if r.kind == k]
        if k == CLEAN:
            exp = "0 serious findings"
            seen = f"serious findings: {sum(r.n_serious for r in rs)}"
        elif k == CLEAN_SPEC:
            exp = "0 serious data/replay findings (D, R)"
            spec_f = Counter(x.split(":")[0] for r in rs for x in r.serious)
            seen = "serious: " + (", ".join(f"{c} x{n}" for c, n in spec_f.most_common()) or "none")
        else:
            from .findings import CODES

            fid, sev = EXPECTED[k]
            exp = f"{CODES[fid]} {fid} {sev} as the top"
            seen = ", ".join(f"{t} x{n}" for t, n in Counter(r.top for r in rs).most_common())
        lines.append(f"{k:<18} {exp:<46} {sum(r.ok for r in rs):>3}/{len(rs):<3}   {seen}")
    bad = [r for r in rows if not r.ok]
    lines.append("")
    lines.append(f"all met: {not bad} ({sum(r.ok for r in rows)}/{len(rows)} files)")
    for r in bad:
        lines.append(f"  MISSED {r.kind} on {r.task}: top {r.top}; serious: {'; '.join(r.serious) or '-'}")
    return "\n".join(lines)


__all__ = ["CorpusRow", "check_clean", "check_planted", "confusion_table", "stats_bundle", "EXPECTED",
           "STATS_PITFALL", "CLEAN", "CLEAN_SPEC"]
