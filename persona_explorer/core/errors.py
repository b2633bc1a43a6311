"""The project's own error types: the failures a user can cause and fix.

Every expected failure (a bad value, file, persona, layer; a model that cannot be loaded) raises
a subclass of :class:`UserError` whose message says what went wrong and what to do instead. The
web app shows exactly these to the user (``gr.Error``) and the command line prints them as one
``error: ...`` line; anything else is a bug, logged with its traceback and reported as one.

Each module that raises one of these defines it next to the code that raises it (``SteeringError``
in :mod:`.steering`, ``VectorFileError`` in :mod:`.vectors`, ...), subclassing one of the two
bases here. They stay ``ValueError`` / ``RuntimeError`` subclasses so plain Python callers can
catch them the usual way.

Imports: nothing from the package (every module may import this one).
"""

from __future__ import annotations

__all__ = ["ConfigError", "InputError", "UserError"]


class UserError(Exception):
    """An expected failure whose message tells the user what to do."""


class InputError(UserError, ValueError):
    """A value given by the user (a form field, an option, an API argument, a file) that cannot
    be used; the message names the value, the rule and what to enter instead."""


class ConfigError(InputError):
    """A setting (an environment variable) holds a value the app cannot use; the message
    names it."""
