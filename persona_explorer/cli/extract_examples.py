"""``extract --examples FILE``: a persona vector from written trait/neutral answer pairs.

The pairs are read teacher-forced (:mod:`persona_explorer.personas.examples`); no rollouts are
generated, so it takes seconds. ``FILE`` may also name a built-in example set (``pirate``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from persona_explorer.cli import render
from persona_explorer.cli.models import get_model, looks_like_path
from persona_explorer.cli.sweep import finish
from persona_explorer.core.errors import InputError

if TYPE_CHECKING:
    from persona_explorer.vectors.files import VectorFormat


def _examples_path(spec: str) -> Path:
    from persona_explorer.personas.examples import builtin_example_names, builtin_examples

    path = Path(spec).expanduser()
    if path.is_file() or looks_like_path(spec) or path.suffix.lower() in (".jsonl", ".csv"):
        return path
    found = builtin_examples(spec)
    if found is None:
        names = ", ".join(builtin_example_names()) or "none"
        raise InputError(f"no example file or built-in example set {spec!r} (built-in: {names})")
    return found


def run_examples(args: argparse.Namespace, out: Path, fmt: VectorFormat) -> int:
    from persona_explorer.personas.examples import extract_from_examples, read_examples

    path = _examples_path(args.examples)
    examples = read_examples(path)
    for line, problem in examples.problems[:20]:
        render.note(f"line {line}: {problem}; skipped")
    name = args.name or path.stem
    model = get_model(args)
    with render.Progress(quiet=args.quiet) as progress:
        result = extract_from_examples(
            model,
            name,
            examples.pairs,
            source=path.name,
            batch_size=min(args.batch_size, 32),
            max_prompt_tokens=args.settings.limits.max_prompt_tokens,
            progress=progress,
        )
    vec, swept, written, notes = finish(args, model, result.vector, out, fmt=fmt)
    sep = list(vec.separation or ())
    if args.json:
        render.print_json(
            {
                "name": vec.name,
                "method": "examples",
                "examples": str(path),
                "pairs": result.n_pairs,
                "skipped": len(examples.problems),
                "model_id": vec.model_id,
                "out": str(written),
                "format": fmt.key,
                "notes": notes,
                "layer": vec.layer,
                "best_layer": vec.best_layer,
                "strength": vec.strength,
                "separation": sep,
                "seconds": round(result.seconds, 3),
                "sweep": None if swept is None else swept.as_json(),
            }
        )
        return 0
    render.write_lines(
        [
            f"Extracted {vec.name!r} from {result.n_pairs} example pairs in {path.name} "
            f"({len(examples.problems)} lines skipped) in {result.seconds:.1f} s",
            f"  separation    Cohen's d by layer, L0-L{vec.n_layers - 1}: {render.sparkline(sep)}",
            f"  recommended   layer {vec.layer}"
            + (f", strength {vec.strength:g}" if vec.strength is not None else ""),
            f"  saved         {written} ({fmt.label})",
        ]
        + ([f"  sweep         {swept.reason}"] if swept is not None else [])
    )
    return 0
