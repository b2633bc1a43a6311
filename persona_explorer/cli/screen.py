"""``screen``: score training samples for persona evidence before training on them.

For each sample and vector: the projection of the sample's response (teacher-forced) minus the
projection of the model's own greedy answer to the same prompt (see
:mod:`persona_explorer.training.screening`). Writes the scored file with a
``projection_difference_NAME`` column per vector; skipped lines are listed as ``note:`` lines
on stderr.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_explorer.cli import render, vector_io
from persona_explorer.cli.models import add_adapter_option, get_model
from persona_explorer.cli.options import Parents, arg_type, limited, text_type
from persona_explorer.cli.vector_io import add_vector_arguments
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import MAX_BATCH_SIZE, check_int, check_max_new_tokens

if TYPE_CHECKING:
    from persona_explorer.cli.options import Subparsers
    from persona_explorer.training.screening_scores import ScreenResult
    from persona_explorer.vectors.persona_vector import PersonaVector

_NOTES_SHOWN = 20  # skipped lines listed one by one; the rest are counted


def register(subparsers: Subparsers, parents: Parents) -> None:
    p = subparsers.add_parser(
        "screen",
        parents=[parents.model(), parents.output("the summary")],
        help="score a dataset's samples for persona evidence (projection differences)",
        description="Project each sample's response onto persona vectors, minus the projection "
        "of the model's own answer to the same prompt, and write the scored file.",
    )
    p.add_argument(
        "--data", required=True, help="JSONL (chat 'messages' or prompt/response) or CSV"
    )
    add_vector_arguments(p, several=True, example="evil")
    p.add_argument(
        "--layer",
        type=arg_type(check_int, "Layer", 0),
        default=None,
        help="layer to read (default: the first vector's recommended layer)",
    )
    p.add_argument(
        "--context",
        type=text_type("context", parents.limits, required=False),
        default=None,
        help="system prompt put before every sample, for both readings (inoculation)",
    )
    p.add_argument(
        "--no-own", action="store_true", help="skip the model's own answers: raw projections"
    )
    p.add_argument("--no-cache", action="store_true", help="do not reuse or store own answers")
    lim = parents.limits
    p.add_argument(
        "--max-new-tokens",
        type=limited(check_max_new_tokens, lim, "MAX_NEW_TOKENS"),
        default=64,
        metavar="N",
        help=f"length of the model's own answers, at most {lim.max_new_tokens} "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--batch-size", type=arg_type(check_int, "Batch size", 1, MAX_BATCH_SIZE), default=16
    )
    p.add_argument(
        "--top",
        type=arg_type(check_int, "Top", 0, 100),
        default=5,
        help="samples listed per vector",
    )
    p.add_argument("--out", required=True, help="scores file: .csv or .jsonl")
    add_adapter_option(p)
    p.set_defaults(func=run)


def _check_out(out: Path) -> None:
    if out.suffix.lower() not in (".csv", ".jsonl"):
        raise InputError(f"--out {out}: the scores file must end in .csv or .jsonl")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write {out}: the directory {parent} does not exist")


def _text(result: ScreenResult, summary: dict[str, Any], data: Path, out: Path) -> list[str]:
    own = (
        f"own answers: {result.generated} generated, {result.cached} cached"
        if result.own
        else "raw projections (no own answers)"
    )
    lines = [
        f"Screened {len(result.rows):,} samples of {data.name} at layer {result.layer} in "
        f"{result.seconds:.1f} s ({own}; {result.n_problems:,} lines skipped)"
        + (" - stopped early" if result.stopped else "")
    ]
    for name, s in summary.items():
        if not s["count"]:
            lines.append(f"  {name}: no scores")
            continue
        lines.append(
            f"  {name}: {s['score']} mean {s['mean']:+.3g}, "
            f"range {s['min']:+.3g} to {s['max']:+.3g}"
        )
        for item in s["top"]:
            lines.append(
                f"    line {item['line']:>6}  {item[s['score']]:+8.3g}  {item['prompt'][:70]}"
            )
    lines.append(f"  saved {out}")
    return lines


def run(args: argparse.Namespace) -> int:
    from persona_explorer.training.samples import open_samples
    from persona_explorer.training.screening import OwnResponseCache, ScreenConfig, screen_file
    from persona_explorer.training.screening_scores import write_scores

    settings = args.settings
    data = Path(args.data).expanduser()
    out = Path(args.out).expanduser()
    _check_out(out)
    paths = [vector_io.vector_path(spec, args.settings.builtin_vectors_dir) for spec in args.vector]
    # Everything that can fail fast does so before the (slow) model load: the file's size, a
    # CSV header, the vector files.
    opened = open_samples(data)
    early: list[PersonaVector] = [vector_io.read(p, args.in_layout, warn=False) for p in paths]
    layer = args.layer if args.layer is not None else early[0].layer
    if layer is None:
        raise InputError(f"no --layer given and {early[0].name!r} records no recommended layer")
    model = get_model(args)
    vectors = [vector_io.read(p, args.in_layout, n_layers=model.n_layers) for p in paths]
    cfg = ScreenConfig(
        layer=layer,
        own=not args.no_own,
        max_new_tokens=args.max_new_tokens,
        context=args.context or None,
        batch_size=args.batch_size,
        max_prompt_tokens=settings.limits.max_prompt_tokens,
    )
    cache = None if args.no_cache else OwnResponseCache.in_cache_dir(settings.cache_dir)
    with render.Progress(quiet=args.quiet) as progress:
        result = screen_file(model, opened, vectors, cfg, progress=progress, cache=cache)
    for problem in result.problems[:_NOTES_SHOWN]:
        render.note(f"{problem}; skipped")
    if result.n_problems > _NOTES_SHOWN:
        render.note(f"{result.n_problems - _NOTES_SHOWN:,} more lines skipped")
    written = write_scores(out, result, source=data)
    summary = result.summary(args.top)
    if args.json:
        render.print_json(
            {
                "data": str(data),
                "out": str(written),
                "model_id": model.model_id,
                "layer": result.layer,
                "own": result.own,
                "context": result.context,
                "samples": len(result.rows),
                "skipped": result.n_problems,
                "problems": [{"line": p.line, "reason": p.reason} for p in result.problems],
                "generated": result.generated,
                "cached": result.cached,
                "seconds": round(result.seconds, 3),
                "vectors": summary,
            }
        )
    else:
        render.write_lines(_text(result, summary, data, written))
    return 0
