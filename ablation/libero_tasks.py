"""Which LIBERO suite and task a demo file holds, from the facts it carries (our own attributes, the BDDL
file name or content, the language instruction), matched against LIBERO's task list.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from .episodes import DemoFileError
from .sim.libero_setup import benchmark_dict, get_suite

STANDARD_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")


def _benchmark_tasks() -> list[tuple[str, int, object]]:
    d = benchmark_dict()
    out = []
    for s in STANDARD_SUITES:
        if s not in d:
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            b = d[s]()
        for i in range(b.get_num_tasks()):
            out.append((s, i, b.get_task(i)))
    return out


def _norm_text(t: str) -> str:
    return " ".join(t.split())


def match_tasks(bddl_file_name: str = "", bddl_file_content: str = "", language: str = "") -> list[tuple[str, int, str]]:
    """Candidate (suite, task, how) for these facts, best evidence first; empty when nothing matches."""
    tasks = _benchmark_tasks()
    base = os.path.basename(bddl_file_name.replace("\\", "/"))
    stem = base[:-5] if base.endswith(".bddl") else base
    folder = os.path.basename(os.path.dirname(bddl_file_name.replace("\\", "/")))
    if stem:
        by_name = [(s, i, t) for s, i, t in tasks if t.name == stem or t.bddl_file == base]
        in_folder = [c for c in by_name if c[2].problem_folder == folder or c[0] == folder]
        if len(in_folder) == 1:
            return [(in_folder[0][0], in_folder[0][1], f"bddl_file_name '{folder}/{base}'")]
        if len(by_name) == 1:
            return [(by_name[0][0], by_name[0][1], f"bddl_file_name '{base}'")]
    if bddl_file_content.strip():
        want = _norm_text(bddl_file_content)
        hits = []
        for s, i, t in tasks:
            try:
                p = Path(get_suite(s).get_task_bddl_file_path(i))
                if _norm_text(p.read_text()) == want:
                    hits.append((s, i, "bddl_file_content"))
            except OSError:
                continue
        if len(hits) == 1:
            return hits
        if hits and folder:
            narrowed = [h for h in hits if h[0] == folder]
            if len(narrowed) == 1:
                return narrowed
        if hits:
            return hits
    if language:
        lang = _norm_text(language).lower()
        hits = [(s, i, "problem_info.language_instruction") for s, i, t in tasks if _norm_text(t.language).lower() == lang]
        return hits
    return []


def infer_suite_task_from(where: str, attrs: dict) -> tuple[str, int]:
    """(suite, task index) from a demo file's facts. Order: our own `ablation_attrs` (suite, task_id), then
    the BDDL file name (folder = suite), the BDDL content, and the language instruction in problem_info.
    `attrs`: the file's attributes (bddl_file_name, bddl_file_content, problem_info, ablation_attrs)."""
    a = attrs
    own = a.get("ablation_attrs") or {}
    task = own.get("task_id", own.get("task"))
    if own.get("suite") in STANDARD_SUITES and task is not None:
        return own["suite"], int(task)
    if a.get("suite") in STANDARD_SUITES and str(a.get("task", "")).lstrip("-").isdigit():
        return a["suite"], int(a["task"])
    language = (a.get("problem_info") or {}).get("language_instruction", "")
    if isinstance(language, list):
        language = " ".join(language)
    cands = match_tasks(a.get("bddl_file_name", ""), a.get("bddl_file_content", ""), str(language))
    if len(cands) == 1:
        return cands[0][0], cands[0][1]
    fix = "pass --suite/--task, or set data.suite/data.task in the spec"
    if not cands:
        raise DemoFileError(
            f"{where}: cannot tell the LIBERO suite/task: data.attrs['bddl_file_name']="
            f"{a.get('bddl_file_name', '')!r} matches no standard task, data.attrs['bddl_file_content'] "
            f"{'matches none' if a.get('bddl_file_content') else 'is missing'}, and "
            f"data.attrs['problem_info'] language {language!r} matches none; {fix}")
    listing = ", ".join(f"{s} task {i}" for s, i, _ in cands[:6])
    raise DemoFileError(f"{where}: the LIBERO suite/task is ambiguous from data.attrs['{cands[0][2].split('.')[0]}'] "
                        f"(could be {listing}); {fix}")
