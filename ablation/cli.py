"""`run_ablation.py` command line: one subcommand per module in ablation/commands/.

Results go to stdout, logs and progress to stderr (through `logging`); with `--json` stdout carries one
JSON document and nothing else, whatever the libraries and worker processes print.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys

from . import __version__
from .commands import common
from .errors import UserError
from .noise import silence_third_party

# Each module defines `register(subparsers)`, which adds its parser and sets `func=run(args) -> int`.
COMMAND_MODULES = [
    "ablation.commands.audit",
    "ablation.commands.demos",
    "ablation.commands.replay",
    "ablation.commands.train",
    "ablation.commands.eval",
    "ablation.commands.plan",
    "ablation.commands.tune",
    "ablation.commands.report",
    "ablation.commands.doctor",
]


def _add_verbosity(p: argparse.ArgumentParser, top: bool) -> None:
    # On the subcommands too (so `plan -q` works); there SUPPRESS keeps them from resetting the top level's.
    default = 0 if top else argparse.SUPPRESS
    p.add_argument("-q", "--quiet", action="count", default=default, help="fewer log lines on stderr (warnings only)")
    p.add_argument("-v", "--verbose", action="count", default=default, help="more log lines on stderr (debug)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_ablation.py",
        description="Ablation harness for action representations of RDT-style policies on LIBERO. "
                    "`run_ablation.py --plan NAME` runs a plan (= `run_ablation.py plan NAME`).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_verbosity(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that command is not built yet
                continue
            raise
        mod.register(sub)
    for p in sub.choices.values():
        _add_verbosity(p, top=False)
    return parser


def route_plan_shortcut(argv: list[str], commands) -> list[str]:
    """`--plan NAME` anywhere, with no subcommand named before it, means the `plan` subcommand."""
    at = next((i for i, a in enumerate(argv) if a == "--plan" or a.startswith("--plan=")), None)
    if at is None or any(a in commands for a in argv[:at]):
        return argv
    return ["plan", *argv]


def setup_logging(verbosity: int) -> None:
    """The harness's log lines (loggers under `ablation`) on stderr: INFO by default, WARNING with -q,
    DEBUG with -v."""
    level = logging.INFO if verbosity == 0 else (logging.WARNING if verbosity < 0 else logging.DEBUG)
    log = logging.getLogger("ablation")
    for h in list(log.handlers):
        if getattr(h, "ablation_cli", False):
            log.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.ablation_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    # Worker processes (spawned, without this handler) print their per-episode lines unless told not to.
    os.environ["ABLATION_QUIET"] = "1" if verbosity < 0 else ""


@contextlib.contextmanager
def results_only_on_stdout():
    """While a `--json` command runs, everything written to stdout (prints, libraries, spawned workers,
    C code) goes to stderr; common.emit_json writes the result to the real stdout."""
    out = sys.stdout
    out.flush()
    try:
        fd = out.fileno() if out is sys.__stdout__ else None
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is None:  # stdout is not a file (captured in tests): redirect at the Python level only
        with contextlib.redirect_stdout(sys.stderr):
            with common.result_stream(out):
                yield
        return
    saved = os.dup(fd)
    os.dup2(sys.stderr.fileno(), fd)
    result = os.fdopen(saved, "w")
    try:
        with common.result_stream(result):
            yield
    finally:
        out.flush()
        result.flush()
        os.dup2(saved, fd)
        result.close()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Subcommand name -> its parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def main(argv: list[str] | None = None) -> int:
    silence_third_party()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = set(_subcommands(parser))
    args = parser.parse_args(route_plan_shortcut(argv, commands))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    common.check_required(args)
    setup_logging(getattr(args, "verbose", 0) - getattr(args, "quiet", 0))
    try:
        common.resolve_refs(args)
        if getattr(args, "json", False):
            with results_only_on_stdout():
                return int(args.func(args) or 0)
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
