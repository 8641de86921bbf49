"""Errors shared across rlfleet's commands, and the exit codes they end with.

The convention every command follows (docs/cli.md): an expected failure is one line on
stderr, ``rlfleet <command>: <what is wrong; what to do>``, with no traceback unless ``-v``;
the exit code says whether the work was done.
"""

EXIT_OK = 0
"""The work was done; verdicts of any kind are results."""
EXIT_FAILED = 1
"""The run could not do its work: no engine, no server reachable, retries exhausted."""
EXIT_USAGE = 2
"""Bad usage: flags, input files that cannot be read, invalid input lines."""
EXIT_INTERRUPTED = 130
"""Ctrl-C or SIGTERM (128 + SIGINT, as shells report it)."""


class CommandError(Exception):
    """An expected failure the user can act on: the CLI prints its message after the
    command's prefix, without a traceback, and exits with ``exit_code``."""

    exit_code = EXIT_FAILED


class UsageError(CommandError):
    """The command was asked for something it cannot do as asked: a bad flag value, an
    input file that cannot be read."""

    exit_code = EXIT_USAGE


class Unavailable(Exception):
    """A service a command relies on cannot be reached, after its client's retries.

    It ends a run instead of becoming a per-item result: a result nobody could compute is
    not a verdict.
    """
