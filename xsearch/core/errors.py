"""The exception types for mistakes a user can fix (bad option, bad path, impossible budget).

The command line prints a ``UserError``'s message and exits with status 2, without a traceback.
Every layer may raise one; a component's constructor refuses a bad setting with ``SettingError``.
This module imports nothing of the project.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user asked for is invalid; the message says what, what is valid, and how to fix it."""


class UnknownNameError(UserError, KeyError):
    """A name (space, strategy, dataset, ...) that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SettingError(UserError, ValueError):
    """A component's setting is out of range or clashes with another (raised by the component's constructor).

    The configuration's builders turn it, and only it, into an exit-2 message naming the component;
    any other exception from a constructor is a bug and keeps its traceback. A ``ValueError`` too, so
    library code that catches ValueError from a constructor keeps working.
    """
