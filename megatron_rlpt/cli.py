"""The `rlpt` command line.

Each subcommand lives in its own module under `megatron_rlpt.commands` and exposes
`register(subparsers)`; it adds its parser and sets `func(args) -> int`. Modules import their
heavy dependencies (torch, Megatron) inside `func`, so `rlpt --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings

from megatron_rlpt import __version__, commands
from megatron_rlpt.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlpt",
        description="RLPT (reinforcement learning on pre-training data) on Megatron-Core.",
    )
    parser.add_argument("--version", action="version", version=f"megatron-rlpt {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def _warnings_once() -> None:
    """Show each warning text once per process rather than once per place it is raised from.

    Warnings are kept (a cluster job's log is where a user looks for what went wrong), but a
    warning raised in a loop, or with the same text from several modules (Megatron-Core's
    kernel fallbacks), is not repeated. The filters stay as they are (libraries' own `ignore`
    filters keep working; `-W` and PYTHONWARNINGS still apply); only the display is deduplicated,
    since the `once` action's registry does not survive imports that reset it.
    """
    show = warnings.showwarning
    if getattr(show, "_rlpt_once", False):
        return
    seen: set[tuple[type, str]] = set()

    def show_once(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        key = (category, str(message))
        if key not in seen:
            seen.add(key)
            show(message, category, filename, lineno, file, line)

    show_once._rlpt_once = True  # type: ignore[attr-defined]
    warnings.showwarning = show_once


def main(argv: list[str] | None = None) -> int:
    _warnings_once()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"rlpt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlpt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
