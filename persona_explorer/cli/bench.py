"""``bench``: forwarded to :mod:`persona_explorer.dev.bench`, which parses its own options.

:func:`~persona_explorer.cli.main` hands everything after ``bench`` to :func:`forward`; the
parser registered here only lists the command in ``--help``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from persona_explorer.cli.options import Parents
from persona_explorer.core.errors import UserError

if TYPE_CHECKING:
    from persona_explorer.cli.options import Subparsers


def register(subparsers: Subparsers, parents: Parents) -> None:
    subparsers.add_parser(
        "bench",
        help="benchmark generation speed (options: see 'bench --help')",
        add_help=False,
    )


def forward(argv: list[str]) -> int:
    try:
        from persona_explorer.dev import bench
    except ModuleNotFoundError as exc:
        if exc.name != "persona_explorer.dev.bench":
            raise
        raise UserError(
            "the benchmark module persona_explorer.dev.bench is not available"
        ) from None
    try:
        rc = bench.main(argv)
    except SystemExit as exc:  # its own --help (0) or usage error (2, already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return int(rc) if isinstance(rc, int) else 0
