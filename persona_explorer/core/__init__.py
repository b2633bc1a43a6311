"""The floor every other package stands on: what a user can get wrong, and the rules for it.

* :mod:`.errors` — ``UserError`` / ``InputError`` / ``ConfigError``: the failures a user can cause
  and fix (the edges show them as one line, never a traceback);
* :mod:`.limits` — every limit on user input and every input rule, written once (forms and CLI
  arguments check through these, so the web app and the command line refuse alike);
* :mod:`.config` — :class:`~.config.Settings`, read once at an edge (``app.py``, the CLI, a dev
  tool) from ``PERSONA_EXPLORER_*`` and passed down; nothing below the edges reads them again;
* :mod:`.names` — display names and file slugs: one rule for the library, downloads, sessions;
* :mod:`.fileio` — :func:`~.fileio.atomic_write`, the one way files are written.

Imports: the standard library only (and ``platformdirs``, lazily, for the user's data and cache
folders). Nothing of this project.
"""
