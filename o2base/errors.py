"""What a command tells its user when it cannot do what was asked.

Raise :class:`UsageError` for a mistake in the command line or a file the user gave (exit 2)
and :class:`RunError` for a failure while running (exit 1). ``o2chain.cli.main`` prints either
as one line, ``o2chain <command>: <message>``; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations


class CliError(Exception):
    """A failure the user can act on; the message is the whole explanation."""

    exit_code = 1


class UsageError(CliError):
    """A bad option, argument or input file: nothing was started (exit 2)."""

    exit_code = 2


class RunError(CliError):
    """Something failed while running: a port taken, a service that did not start (exit 1)."""

    exit_code = 1
