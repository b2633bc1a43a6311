"""``sweep``: which layer, which strength? A layer x strength grid scored by the unsteered model.

Every cell answers every prompt (greedy); each answer is read back by the unsteered model for
its trait rise (projection onto the vector at one read-out layer, over the baseline, in units of
the vector's length there), its coherence (baseline perplexity over the cell's) and its
repetition (share of repeated 3-grams). See :mod:`persona_explorer.evaluate.sweep`. A sweep that
stops resumes where it stopped when run again with the same inputs (``--no-resume`` starts afresh).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from persona_explorer.cli import render, vector_io
from persona_explorer.cli.models import get_model
from persona_explorer.cli.options import Parents, arg_type, limited, text_type
from persona_explorer.cli.sweep_output import text_lines
from persona_explorer.cli.vector_io import add_vector_arguments
from persona_explorer.core.limits import MAX_BATCH_SIZE, check_int, check_max_new_tokens

if TYPE_CHECKING:
    from persona_explorer.cli.options import Subparsers
    from persona_explorer.engine.model import LoadedModel
    from persona_explorer.evaluate.sweep_config import Criteria
    from persona_explorer.evaluate.sweep_result import SweepResult
    from persona_explorer.vectors.files import VectorFormat
    from persona_explorer.vectors.persona_vector import PersonaVector


def register(subparsers: Subparsers, parents: Parents) -> None:
    p = subparsers.add_parser(
        "sweep",
        parents=[parents.model(), parents.output("the grid and the recommendation")],
        help="find the layer and strength that express a persona without breaking the text",
        description="Generate every prompt at every layer x strength, score trait rise, "
        "coherence and repetition with the unsteered model, and recommend a cell.",
    )
    add_vector_arguments(p, several=False, example="pirate")
    p.add_argument(
        "--prompts",
        default=None,
        help="text file, one prompt per line (or a JSON list / JSONL); "
        "default: the shipped selection prompts",
    )
    p.add_argument("--layers", default=None, help="e.g. 8,12,15 (default: around the vector's)")
    p.add_argument("--strengths", default=None, help="e.g. 0,1,2,4 (default: 0-4x the vector's)")
    lim = parents.limits
    p.add_argument(
        "--max-new-tokens",
        type=limited(check_max_new_tokens, lim, "MAX_NEW_TOKENS"),
        default=48,
        metavar="N",
        help="answer length (default: %(default)s)",
    )
    p.add_argument("--positions", choices=("all", "response"), default="all")
    p.add_argument(
        "--system",
        type=text_type("system prompt", lim, required=False),
        default=None,
        help="system prompt for every prompt",
    )
    p.add_argument(
        "--read-layer",
        type=arg_type(check_int, "Read-out layer", 0),
        default=None,
        help="layer the trait is read at (default: the vector's recorded layer)",
    )
    for flag, what in (
        ("margin", "trait rise required, in units of the vector's length"),
        ("min_coherence", "lowest baseline-over-cell perplexity ratio"),
        ("max_repetition_rise", "most added share of repeated 3-grams"),
    ):
        p.add_argument(f"--{flag.replace('_', '-')}", type=float, default=None, help=what)
    p.add_argument(
        "--batch-size", type=arg_type(check_int, "Batch size", 1, MAX_BATCH_SIZE), default=16
    )
    p.add_argument("--no-resume", action="store_true", help="ignore and replace a checkpoint")
    p.add_argument(
        "--save",
        default=None,
        metavar="FILE",
        help="write the vector with the recommended layer and strength recorded",
    )
    p.set_defaults(func=run)


def criteria_from(args: argparse.Namespace) -> Criteria:
    from persona_explorer.evaluate.sweep_config import Criteria

    names = ("margin", "min_coherence", "max_repetition_rise")
    return Criteria(**{n: getattr(args, n) for n in names if getattr(args, n) is not None})


def finish(
    args: argparse.Namespace,
    model: LoadedModel,
    vec: PersonaVector,
    out: Path,
    *,
    fmt: VectorFormat,
) -> tuple[PersonaVector, SweepResult | None, Path, list[str]]:
    """The end of every ``extract``: ``--strength``, then ``--sweep``, then write the file.
    Returns the vector, the sweep (or None), the path written and the format's notes."""
    if args.strength is not None:
        vec = vec.with_(strength=args.strength)
    swept = None
    if args.sweep:
        from persona_explorer.evaluate.sweep import quick_sweep

        settings = args.settings
        with render.Progress(quiet=args.quiet) as progress:
            vec, swept = quick_sweep(
                model,
                vec,
                checkpoint_dir=settings.cache_dir / "sweeps",
                max_prompt_tokens=settings.limits.max_prompt_tokens,
                progress=lambda done, total, msg: progress(done / max(total, 1), f"sweep: {msg}"),
                persona_data_dir=settings.persona_data_dir,
            )
    written, notes = vector_io.write(vec, out, fmt, model_hint=model.architecture or "llama")
    return vec, swept, written, notes


def run(args: argparse.Namespace) -> int:
    from persona_explorer.evaluate.judge import Judge, JudgeConfig, judge_status
    from persona_explorer.evaluate.sweep import run_sweep
    from persona_explorer.evaluate.sweep_config import (
        SELECT_PROMPTS,
        SweepConfig,
        default_grid,
        parse_numbers,
        read_prompts,
    )
    from persona_explorer.evaluate.sweep_result import with_recommendation

    settings = args.settings
    save = Path(args.save).expanduser() if args.save else None
    fmt = vector_io.output_format(save, None) if save else None
    prompts = read_prompts(Path(args.prompts).expanduser() if args.prompts else SELECT_PROMPTS)
    layers = parse_numbers(args.layers, "--layers", integer=True) if args.layers else None
    strengths = parse_numbers(args.strengths, "--strengths") if args.strengths else None
    criteria = criteria_from(args)
    path = vector_io.vector_path(args.vector, args.settings.builtin_vectors_dir)
    vector_io.read(path, args.in_layout, warn=False)  # a bad file fails before the model loads
    model = get_model(args)
    vec = vector_io.read(path, args.in_layout, n_layers=model.n_layers)
    grid_layers, grid_strengths = default_grid(vec, model.n_layers)
    cfg = SweepConfig(
        layers=tuple(int(x) for x in layers) if layers else grid_layers,
        strengths=strengths or grid_strengths,
        max_new_tokens=args.max_new_tokens,
        positions=args.positions,
        system=args.system or None,
        read_layer=args.read_layer,
        batch_size=args.batch_size,
        max_prompt_tokens=settings.limits.max_prompt_tokens,
        criteria=criteria,
    )
    ckpt = settings.cache_dir / "sweeps"
    if args.no_resume:
        from persona_explorer.evaluate.sweep_checkpoint import SweepCheckpoint

        SweepCheckpoint.open(ckpt, model, vec, prompts, cfg=cfg).start([])
    judge_cfg = JudgeConfig.from_env()  # operator's setting: a bad one fails before the sweep
    with render.Progress(quiet=args.quiet) as progress, contextlib.ExitStack() as stack:
        result = run_sweep(
            model,
            vec,
            prompts,
            cfg,
            checkpoint_dir=ckpt,
            progress=lambda done, total, msg: progress(done / max(total, 1), msg),
            judge=None if judge_cfg is None else stack.enter_context(Judge(judge_cfg)),
            persona_data_dir=settings.persona_data_dir,
        )
    if judge_cfg is None:
        render.note(judge_status(None))
    saved = None
    if save is not None and fmt is not None:
        if result.recommended is None:
            render.warning(f"no recommendation: {save} not written")
        else:
            tuned = with_recommendation(vec, result)
            saved, _ = vector_io.write(tuned, save, fmt, model_hint=model.architecture or "llama")
    if args.json:
        render.print_json({**result.as_json(), "saved": None if saved is None else str(saved)})
    else:
        render.write_lines(text_lines(result) + ([f"  saved {saved}"] if saved else []))
    return 0
