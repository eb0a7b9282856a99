"""The one exception type for mistakes a user can fix (bad option, bad path, impossible budget).

The command line prints its message and exits with status 2, without a traceback. Every layer may
raise it; it imports nothing of the project.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user asked for is invalid; the message says what, what is valid, and how to fix it."""


class UnknownNameError(UserError, KeyError):
    """A name (space, strategy, dataset, ...) that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
