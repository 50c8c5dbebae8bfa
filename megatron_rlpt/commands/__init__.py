"""Subcommands of `rlpt`: one module each, discovered by `megatron_rlpt.cli`.

A module here defines `register(subparsers: argparse._SubParsersAction) -> None`, which adds
its parser and sets `func=<callable(args) -> int>` as a default. Raise
`megatron_rlpt.errors.UsageError` for bad input: it becomes a one-line message and exit status 2.
"""
