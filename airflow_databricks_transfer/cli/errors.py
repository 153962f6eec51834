"""What the command line reports as a one-line error with exit code 1 (usage errors exit 2)."""

from __future__ import annotations


class CliError(Exception):
    """A failure the user can act on, said in one line (a wrong path, a missing connection, bad auth)."""


class UsageError(CliError):
    """Arguments that do not fit together (exit code 2, like argparse's own errors)."""
