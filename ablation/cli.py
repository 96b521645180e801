"""`run_ablation.py` command line: one subcommand per module in ablation/commands/."""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_ablation.py",
        description="Ablation harness for action representations of RDT-style policies on LIBERO.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that command is not built yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `run_ablation.py --plan all` is the main job: route it to the `plan` subcommand.
    if argv and argv[0].startswith("--plan"):
        argv = ["plan", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
