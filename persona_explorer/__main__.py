"""``python -m persona_explorer``: the command line (see :mod:`persona_explorer.cli`)."""

from persona_explorer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
