"""Errors shared across rlfleet's commands."""


class CommandError(Exception):
    """A user-facing failure: the CLI prints it without a traceback and exits 2."""
