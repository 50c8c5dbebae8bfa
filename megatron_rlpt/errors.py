"""Exceptions shared across megatron-rlpt."""


class UsageError(Exception):
    """Bad arguments or unusable input. The CLI prints it as one line and exits with status 2."""
