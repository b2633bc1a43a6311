"""Command line: ``python -m persona_explorer {extract,steer,convert,info,axis,screen,sweep,
finetune,shift,bench}``.

``info`` and ``convert`` only touch vector files: they never load a model and never import
transformers or TransformerLens. The others load the model once per process (:mod:`.models`).
``finetune`` trains a LoRA adapter and saves it to a directory; ``shift --adapter DIR`` measures
how far it moved the persona, and ``steer``/``screen --adapter DIR`` run on the tuned model
(:func:`.models.get_model` merges the adapter, once per process and directory).

The pattern every command follows
---------------------------------
A new command (or group of related commands) is one module in this package that exposes:

* ``register(subparsers, parents)``: adds its parser with ``subparsers.add_parser(...)``, taking
  the shared options from ``parents`` (:class:`.options.Parents`: ``parents.model()`` for
  ``--model --device --dtype -q``, ``parents.sampling()`` for ``--max-new-tokens --temperature
  --top-p --seed``, ``parents.output()`` for ``--json``), sets its own sampling defaults with
  ``set_defaults(...)`` and ends with ``set_defaults(func=run)``;
* ``run(args) -> int`` (``run_<command>`` in a group module): does the work and returns the
  exit code (0).

and is added to the tuple in :func:`.parser.build_parser` (the one module that imports the
commands; they import the shared options from :mod:`.options`, so nothing imports in a circle).
:func:`main` reads the settings once and hands them to the command as ``args.settings``.
Within it:

* argument types convert with :mod:`persona_explorer.core.limits`'s rules, through
  :func:`.options.arg_type` / :func:`.options.limited` (never a rule of its own);
* the engine and the model libraries (transformers, TransformerLens) are imported inside
  ``run``, so ``--help`` and the file commands never load them;
* the model comes from :func:`.models.get_model` (loaded once per process); vector files are
  read and written through :mod:`.vector_io` (which prints what a format leaves out);
* everything it writes goes through :mod:`.render`: the result on stdout (text, or JSON with
  ``--json``), progress, ``note:`` and ``warning:`` lines on stderr;
* an expected failure raises one of the project's :class:`~persona_explorer.core.errors.UserError`
  types (``InputError`` for a bad option value) with a message that says what to do; :func:`main`
  prints it as one ``error: ...`` line and exits with 2. So does a file or directory named by the
  user that cannot be opened (``FileNotFoundError``, ``IsADirectoryError``, ``PermissionError``,
  ``NotADirectoryError``): ``error: <path>: <reason>``;
* anything else is a bug: :func:`main` prints the traceback and ``internal error (a bug): ...``
  and exits with 1. A command never catches broad exceptions to turn them into messages;
* a module stays under ~150 lines: long output formatting moves to its own module (as
  :mod:`.steer_output` does for ``steer``).

``bench`` is the one exception: :mod:`persona_explorer.dev.bench` parses its own options, so
:func:`main` forwards everything after ``bench`` to :func:`.bench.forward` untouched.

Other exit codes: ``--help`` 0, a usage error 2 (one line), Ctrl-C 130.
"""

from __future__ import annotations

import os
import sys
import traceback

from persona_explorer.cli.bench import forward
from persona_explorer.cli.parser import build_parser
from persona_explorer.core.config import load_settings
from persona_explorer.core.errors import UserError

__all__ = ["main"]

# What a user gets wrong by naming a path; other OS errors (a full disk, ...) are not theirs.
_PATH_ERRORS = (FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError)

_NUMERIC_OPTIONS = frozenset(
    {"--strength", "--steer-strength", "--temperature", "--top-p", "--seed", "--lr"}
)


def _join_negative_numbers(argv: list[str]) -> list[str]:
    """``--strength -1e3`` -> ``--strength=-1e3``: argparse reads only plain negative decimals
    ("-2", "-1.5") as values, and anything else starting with "-" as an unknown option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg in _NUMERIC_OPTIONS and nxt is not None and nxt.startswith("-"):
            try:
                float(nxt)
            except ValueError:
                pass
            else:
                out.append(f"{arg}={nxt}")
                i += 2
                continue
        out.append(arg)
        i += 1
    return out


def _path_error_text(exc: OSError) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename else reason


def _run(argv: list[str]) -> int:
    if argv[:1] == ["bench"]:
        return forward(argv[1:])
    # The settings are read here, once (PERSONA_EXPLORER_*), and travel with the arguments.
    settings = load_settings()
    parser = build_parser(settings.limits)
    try:
        args = parser.parse_args(_join_negative_numbers(argv))
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.settings = settings
    return int(args.func(args))


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (see the module docstring)."""
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); stop quietly.
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return 1
    except UserError as exc:
        sys.stderr.write(f"error: {str(exc).strip() or type(exc).__name__}\n")
        return 2
    except _PATH_ERRORS as exc:
        sys.stderr.write(f"error: {_path_error_text(exc)}\n")
        return 2
    except Exception as exc:
        if isinstance(exc, OSError) and exc.filename is not None:
            # A file that cannot be written (full disk, read-only folder) is not a bug either.
            sys.stderr.write(f"error: {_path_error_text(exc)}\n")
            return 2
        traceback.print_exc(file=sys.stderr)
        first = (str(exc).strip().splitlines() or [""])[0]
        sys.stderr.write(
            f"internal error (a bug): {type(exc).__name__}: {first} "
            "(please report it with the traceback above)\n"
        )
        return 1
