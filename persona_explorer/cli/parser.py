"""The whole command line: each command module's ``register`` on one parser.

The commands import their shared options from :mod:`.options`, never this module, so the parser
can import every command at the top without a circle.
"""

from __future__ import annotations

import argparse

from persona_explorer.cli import axis, bench, extract, files, finetune, screen, shift, steer, sweep
from persona_explorer.cli.options import PROG, Parents, Parser
from persona_explorer.core.config import load_settings
from persona_explorer.core.limits import Limits


def build_parser(limits: Limits | None = None) -> argparse.ArgumentParser:
    """The whole command line; ``limits`` default to the settings (``PERSONA_EXPLORER_*``)."""
    parser = Parser(
        prog=PROG,
        description="Extract persona vectors from a language model and steer it with them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parents = Parents(limits if limits is not None else load_settings().limits)
    for command in (extract, steer, files, axis, screen, sweep, finetune, shift, bench):
        command.register(sub, parents)
    return parser
