"""The flags several commands share: one definition each, so they are spelled and mean the same everywhere.

tests/test_cli.py checks every command against SHARED_FLAGS: a command that takes a demo file takes it as
`--demos`, a spec as `--spec` (a name under experiments/ or a path), and so on.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import IO, Any

from ..workdir import DEFAULT_WORKDIR

JSON_HELP = "print the result as one JSON document on stdout; logs and progress go to stderr"
WORKDIR_HELP = "holds demos, checkpoints, mlruns.db, optuna.db and the report (default: $ABLATION_WORKDIR or ./workdir)"
SPEC_HELP = "spec: a name under experiments/ (e.g. baseline_rdt) or a YAML path"
DEMOS_HELP = "demo file: LIBERO-layout HDF5 (ours or from elsewhere)"
PROFILE_HELP = "resource profile (experiments/profiles/): auto = gpu when CUDA is present, else cpu"
PROFILES = ("auto", "cpu", "gpu")


def spec_ref(value: str) -> str:
    """--spec as given (a name under experiments/ or a path) -> the spec file's path; SpecError (one line,
    the known names) when it is neither. The CLI applies it after parsing (resolve_refs), so the error
    reads as every other input error, not as an argparse usage dump."""
    from ..spec import spec_path

    return str(spec_path(value))


def resolve_refs(args: argparse.Namespace) -> None:
    """--spec as a name -> its path (after parsing)."""
    if isinstance(getattr(args, "spec", None), str):
        args.spec = spec_ref(args.spec)


def seed_list(value: str) -> list[int]:
    """argparse type of --seeds: '0,1,2' -> [0, 1, 2]."""
    try:
        seeds = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}': give whole numbers separated by commas, e.g. 0,1,2") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"'{value}': give at least one seed, e.g. 0 or 0,1,2")
    return seeds


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def add_workdir(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help=WORKDIR_HELP + (f"; {what}" if what else ""))


def add_spec(p: argparse.ArgumentParser, *, required: bool = False, default: str | None = None,
             what: str = "") -> None:
    p.add_argument("--spec", required=required, default=default, metavar="SPEC",
                   help=SPEC_HELP + (f"; {what}" if what else ""))


def add_demos(p: argparse.ArgumentParser, *, required: bool = False, what: str = "",
              old: tuple[str, ...] = ()) -> None:
    """--demos FILE; `old` spellings stay accepted (hidden from the help)."""
    p.add_argument("--demos", type=Path, default=None, required=required and not old,
                   help=DEMOS_HELP + (f"; {what}" if what else ""))
    for flag in old:
        p.add_argument(flag, dest="demos", type=Path, help=argparse.SUPPRESS)
    if required and old:  # argparse cannot require one of two spellings: checked after parsing (check_required)
        p.set_defaults(demos_required_by=p)


def check_required(args: argparse.Namespace) -> None:
    """The argparse error for a required --demos given by none of its spellings."""
    p = getattr(args, "demos_required_by", None)
    if p is not None and args.demos is None:
        p.error("the following arguments are required: --demos")


def add_profile(p: argparse.ArgumentParser, *, default: str | None = "auto", what: str = "") -> None:
    p.add_argument("--profile", choices=PROFILES, default=default, help=PROFILE_HELP + (f"; {what}" if what else ""))


def add_sets(p: argparse.ArgumentParser, what: str = "a spec field") -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="a.b.c=VALUE",
                   help=f"override {what} (repeatable); the value is read as YAML")


_RESULT: list[IO[str]] = []  # where emit_json writes while the CLI keeps stdout for results (cli.results_only_on_stdout)


@contextlib.contextmanager
def result_stream(stream: IO[str]):
    _RESULT.append(stream)
    try:
        yield
    finally:
        _RESULT.remove(stream)


def _plain(o: Any) -> Any:
    try:
        return float(o)  # numpy scalars
    except (TypeError, ValueError):
        return str(o)


def emit_json(payload: Any) -> None:
    """A command's `--json` result: one JSON document on stdout (the real one, under the CLI)."""
    stream = _RESULT[-1] if _RESULT else sys.stdout
    stream.write(json.dumps(payload, indent=1, default=_plain) + "\n")
    stream.flush()
