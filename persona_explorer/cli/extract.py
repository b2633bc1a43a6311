"""``extract``: generate contrasting rollouts and save the persona vector they give (or, with
``--examples``, read written example pairs: :mod:`.extract_examples`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from persona_explorer.cli import render, vector_io
from persona_explorer.cli.models import get_model, looks_like_path
from persona_explorer.cli.options import LAYOUTS, Parents, arg_type, strength_type
from persona_explorer.cli.sweep import finish
from persona_explorer.core.limits import MAX_BATCH_SIZE, MAX_SAMPLES, check_int

if TYPE_CHECKING:
    from persona_explorer.cli.options import Subparsers
    from persona_explorer.personas.definitions import BuiltinKind, PersonaDefinition


def register(subparsers: Subparsers, parents: Parents) -> None:
    p = subparsers.add_parser(
        "extract",
        parents=[parents.model(), parents.sampling(), parents.output("the summary")],
        help="extract a persona vector (mean activation difference of pos/neg rollouts)",
        description="Generate rollouts under contrasting system prompts and save the "
        "per-layer mean difference of their activations.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--persona",
        help="a trait/role JSON file (persona_vectors format) or a built-in name (e.g. evil)",
    )
    source.add_argument(
        "--examples",
        metavar="FILE",
        help="instead of rollouts: written trait/neutral answer pairs (JSONL or CSV with "
        "question, trait, neutral), read teacher-forced; or a built-in name (e.g. pirate)",
    )
    p.add_argument("--name", default=None, help="the vector's name (with --examples)")
    p.add_argument("--out", required=True, help="output file: .safetensors, .gguf or .pt")
    p.add_argument(
        "--out-layout",
        choices=LAYOUTS,
        default=None,
        help="row layout of a .pt output (default: persona_vectors)",
    )
    p.add_argument("--kind", choices=("trait", "role"), default="trait", help="for built-in names")
    p.add_argument("--variant", choices=("response", "prompt", "last"), default="response")
    # The same bounds as ExtractionConfig's, checked here so a bad value fails before the load.
    p.add_argument(
        "--samples",
        type=arg_type(check_int, "Samples", 1, MAX_SAMPLES),
        default=1,
        help="per prompt",
    )
    p.add_argument(
        "--questions",
        type=arg_type(check_int, "Questions", 1),
        default=20,
        help="number of questions (default 20)",
    )
    p.add_argument(
        "--batch-size", type=arg_type(check_int, "Batch size", 1, MAX_BATCH_SIZE), default=64
    )
    p.add_argument(
        "--strength",
        type=strength_type(parents.limits),
        default=None,
        help="recommended steering strength to record in the file (optional)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="then find the layer and strength to record with a small sweep (about a minute)",
    )
    p.set_defaults(max_new_tokens=64, temperature=0.7, top_p=0.95, seed=0, func=run)


def resolve_persona(spec: str, kind: BuiltinKind, data_dir: Path) -> PersonaDefinition:
    """A persona file, or a built-in trait/role by name (in ``data_dir``, the
    ``persona_data_dir`` setting)."""
    from persona_explorer.personas.data import load_builtin
    from persona_explorer.personas.definitions import load_persona

    path = Path(spec).expanduser()
    if spec.lower().endswith(".json") or path.is_file() or looks_like_path(spec):
        return load_persona(path)
    return load_builtin(spec, kind, data_dir=data_dir)


def run(args: argparse.Namespace) -> int:
    from persona_explorer.personas.extract import ExtractionConfig, extract_persona

    out = Path(args.out).expanduser()
    fmt = vector_io.output_format(out, args.out_layout)
    if args.examples:
        from persona_explorer.cli.extract_examples import run_examples

        return run_examples(args, out, fmt)
    cfg = ExtractionConfig(
        variant=args.variant,
        n_questions=args.questions,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        batch_size=args.batch_size,
        max_prompt_tokens=args.settings.limits.max_prompt_tokens,
    )
    persona = resolve_persona(args.persona, args.kind, args.settings.persona_data_dir)
    model = get_model(args)
    with render.Progress(quiet=args.quiet) as progress:
        result = extract_persona(model, persona, cfg, progress=progress)
    vec, swept, written, notes = finish(args, model, result.vector, out, fmt=fmt)

    sep = list(vec.separation or ())
    counts = vec.metadata.get("counts", {})
    if args.json:
        render.print_json(
            {
                "name": vec.name,
                "kind": persona.kind,
                "variant": vec.variant,
                "model_id": vec.model_id,
                "out": str(written),
                "format": fmt.key,
                "notes": notes,
                "n_layers": vec.n_layers,
                "d_model": vec.d_model,
                "layer": vec.layer,
                "best_layer": vec.best_layer,
                "strength": vec.strength,
                "separation": sep,
                "separation_cross_validated": result.cross_validated,
                "layer_norms": list(vec.layer_norms),
                "counts": counts,
                "rollouts": len(result.rollouts),
                "seconds": round(result.seconds, 3),
                "sweep": None if swept is None else swept.as_json(),
            }
        )
        return 0
    cv = "cross-validated" if result.cross_validated else "in-sample"
    c = {k: counts.get(k, "?") for k in ("pos", "neg", "pairs", "questions", "samples")}
    render.write_lines(
        [
            f"Extracted {vec.name!r} ({persona.kind}, variant {vec.variant}) from "
            f"{model.display_name} in {result.seconds:.1f} s",
            f"  rollouts      {c['pos']} pos / {c['neg']} neg ({c['pairs']} prompt pairs x "
            f"{c['questions']} questions x {c['samples']} samples; "
            f"{counts.get('empty_responses', 0)} empty responses)",
            f"  separation    Cohen's d ({cv}) by layer, L0-L{vec.n_layers - 1}: "
            f"{render.sparkline(sep)}",
            f"                top: {render.top(sep)}",
            f"  best layer    {vec.best_layer} (highest separation)",
            f"  recommended   layer {vec.layer} (best in the middle of the stack)"
            + (f", strength {vec.strength:g}" if vec.strength is not None else ""),
            f"  saved         {written} ({fmt.label}, "
            f"{vec.n_layers} layers x d_model {vec.d_model})",
        ]
        + ([f"  sweep         {swept.reason}"] if swept is not None else [])
    )
    return 0
