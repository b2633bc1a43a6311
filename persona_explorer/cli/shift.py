"""``shift``: how far a fine-tuned adapter moved the model along persona vectors.

Base and tuned model answer the evaluation questions (default: the built-in set, unrelated to
the teaching data); per vector, the mean response projection of each, and the difference. Also
the same-tokens and last-prompt-token readings (see :mod:`persona_explorer.training.shift`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from persona_explorer.cli import render, vector_io
from persona_explorer.cli.models import get_base_model, get_tuned
from persona_explorer.cli.options import Parents, arg_type, limited
from persona_explorer.cli.vector_io import add_vector_arguments
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import check_int, check_max_new_tokens

if TYPE_CHECKING:
    from persona_explorer.cli.options import Subparsers
    from persona_explorer.training.shift import ShiftReport

_ANSWER_CHARS = 160


def register(subparsers: Subparsers, parents: Parents) -> None:
    p = subparsers.add_parser(
        "shift",
        parents=[parents.model(), parents.output("the report")],
        help="measure the persona shift of a fine-tuned adapter on unrelated questions",
        description="Answer evaluation questions with the base and the tuned model and report, "
        "per persona vector, the mean projection of both and the difference.",
    )
    p.add_argument("--adapter", required=True, metavar="DIR", help="directory written by finetune")
    add_vector_arguments(p, several=True, example="evil")
    p.add_argument(
        "--layer",
        type=arg_type(check_int, "Layer", 0),
        default=None,
        help="layer to read every vector at (default: each vector's recommended layer)",
    )
    p.add_argument(
        "--questions",
        default=None,
        metavar="FILE",
        help="one question per line (default: the built-in evaluation questions)",
    )
    lim = parents.limits
    p.add_argument(
        "--max-new-tokens",
        type=limited(check_max_new_tokens, lim, "MAX_NEW_TOKENS"),
        default=48,
        metavar="N",
        help="tokens per answer (default: %(default)s)",
    )
    p.set_defaults(func=run)


def _text(report: ShiftReport) -> list[str]:
    lines = [
        f"Persona shift of {report.tuned_model_id} over {len(report.questions)} questions "
        f"({report.seconds:.1f} s)",
        f"  {'vector':<14} {'layer':>5} {'base':>9} {'tuned':>9} {'shift':>9} "
        f"{'relative':>9} {'same-tok':>9} {'prompt':>9}",
    ]
    for row in report.rows:
        lines.append(
            f"  {row.name:<14} {row.layer:>5} {row.base:>+9.3f} {row.tuned:>+9.3f} "
            f"{row.shift:>+9.3f} {row.relative_shift:>+9.3f} {row.same_tokens_shift:>+9.3f} "
            f"{row.prompt_shift:>+9.3f}"
        )
    lines.append(
        "  shift: each model's own answers, in activation units; relative: the shift over the "
        "vector's length at its layer (1 = as far as the persona's own prompts move the model), "
        "the unit that compares across vectors; same-tok: the base answers read by both; "
        "prompt: the last prompt token"
    )
    for q, b, t in zip(report.questions, report.base_answers, report.tuned_answers, strict=False):
        lines += [
            f"\n  Q: {q}",
            f"    base:  {b[:_ANSWER_CHARS]!r}",
            f"    tuned: {t[:_ANSWER_CHARS]!r}",
        ]
    return lines


def run(args: argparse.Namespace) -> int:
    from persona_explorer.training.shift import (
        DEFAULT_QUESTIONS_PATH,
        persona_shift,
        read_questions,
    )

    questions = read_questions(Path(args.questions) if args.questions else DEFAULT_QUESTIONS_PATH)
    paths = [vector_io.vector_path(spec, args.settings.builtin_vectors_dir) for spec in args.vector]
    for path in paths:  # a bad vector file fails before the (slow) model load
        vector_io.read(path, args.in_layout, warn=False)
    adapter = Path(args.adapter).expanduser()
    if not adapter.is_dir():
        raise InputError(f"--adapter {adapter}: not a directory (give the one finetune wrote)")
    base = get_base_model(args)
    tuned = get_tuned(base, str(adapter), args.quiet)
    vectors = [vector_io.read(p, args.in_layout, n_layers=base.n_layers) for p in paths]
    with render.Progress(quiet=args.quiet) as progress:
        report = persona_shift(
            base,
            tuned,
            vectors,
            questions,
            layer=args.layer,
            max_new_tokens=args.max_new_tokens,
            max_prompt_tokens=args.settings.limits.max_prompt_tokens,
            progress=progress,
        )
    if args.json:
        render.print_json({"adapter": str(adapter), **report.as_json()})
    else:
        render.write_lines(_text(report))
    return 0
