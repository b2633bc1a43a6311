"""``steer``: baseline and steered answers side by side, one batched pass per prompt.

``--cap-axis`` adds activation capping on the Assistant Axis (:mod:`persona_explorer.axis.capping`):
the capped answer (and, with ``--vector``, the steered and steered-and-capped ones) from one more
batched pass per prompt. ``--vector`` is optional then.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from persona_explorer.cli import render, steer_output, vector_io
from persona_explorer.cli.models import add_adapter_option, get_model
from persona_explorer.cli.options import LAYOUTS, Parents, arg_type, strength_type, text_type
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import DEFAULT_TEMPERATURE, check_int, check_layer, parse_layers

if TYPE_CHECKING:
    from persona_explorer.cli.options import Subparsers
    from persona_explorer.vectors.persona_vector import PersonaVector


def register(subparsers: Subparsers, parents: Parents) -> None:
    p = subparsers.add_parser(
        "steer",
        parents=[
            parents.model(),
            parents.sampling(penalty=True),
            parents.output("the answers (a list, one per prompt)"),
            parents.capping(),
        ],
        help="generate baseline and steered (or capped) answers side by side",
        description="Answer each prompt without and with the vector added to the residual "
        "stream (one batched pass per prompt); with --cap-axis, also with the projection on "
        "the Assistant Axis capped from below.",
    )
    p.add_argument(
        "--vector",
        default=None,
        help="vector file (.safetensors, .gguf, .pt); optional with --cap-axis",
    )
    p.add_argument("--in-layout", choices=LAYOUTS, default=None, help="row layout of a .pt vector")
    layer = arg_type(check_int, "Layer", 0)
    layers = p.add_mutually_exclusive_group()
    layers.add_argument("--layer", type=layer, default=None, help="layer (default: the vector's)")
    layers.add_argument("--layers", default=None, help="several layers: 18,20 or 18-22")
    p.add_argument(
        "--strength",
        type=strength_type(parents.limits),
        action="append",
        default=None,
        help="steering strength; repeat for several steered rows (default: the vector's)",
    )
    p.add_argument(
        "--prompt",
        type=text_type("prompt", parents.limits, required=True),
        action="append",
        required=True,
        help="repeatable",
    )
    p.add_argument(
        "--system",
        type=text_type("system prompt", parents.limits, required=False),
        default=None,
        help="system prompt",
    )
    p.add_argument("--ignore-eos", action="store_true", help="always generate max-new-tokens")
    p.add_argument("--positions", choices=("all", "response"), default="all")
    p.add_argument(
        "--projection-layer",
        type=layer,
        default=None,
        help="read-out layer of the per-token projections (default: the one after the last "
        "steered layer)",
    )
    add_adapter_option(p)
    p.set_defaults(max_new_tokens=64, temperature=DEFAULT_TEMPERATURE, top_p=1.0, seed=0, func=run)


def _check_options(args: argparse.Namespace) -> None:
    """What the options mean together, before the model loads. (--cap-layers was read for
    form by the parser, with room for any model; it is checked against the model later.)"""
    if args.cap_percentile is not None:
        from persona_explorer.axis.assistant_axis import check_percentile

        args.cap_percentile = check_percentile(args.cap_percentile, "--cap-percentile")
    if not args.cap_axis:
        if args.vector is None:
            raise InputError("--vector is required (or give --cap-axis to cap without steering)")
        given = [o for o in ("cap_percentile", "cap_layers") if getattr(args, o) is not None]
        if given:
            raise InputError(f"--{given[0].replace('_', '-')} needs --cap-axis")
    elif args.vector is None:
        steer_only = ("layer", "layers", "strength", "projection_layer", "in_layout")
        given = [o for o in steer_only if getattr(args, o) is not None]
        if given:
            raise InputError(f"--{given[0].replace('_', '-')} needs --vector")


def _layers(args: argparse.Namespace, vec: PersonaVector, n_layers: int) -> tuple[int, ...]:
    if args.layers is not None:
        return parse_layers(args.layers, n_layers)
    if args.layer is not None:
        return parse_layers([args.layer], n_layers)
    if vec.layer is not None:
        return parse_layers([vec.layer], n_layers)
    raise InputError(
        f"no --layer given and {vec.name!r} records no recommended layer; pass --layer L"
    )


def _strengths(args: argparse.Namespace, vec: PersonaVector) -> tuple[float, ...]:
    if args.strength:
        return tuple(args.strength)
    if vec.strength is not None:
        return (vec.strength,)
    raise InputError(
        f"no --strength given and {vec.name!r} records no recommended strength; "
        "pass e.g. --strength 2"
    )


def run(args: argparse.Namespace) -> int:
    from persona_explorer.evaluate.compare import SteerRequest, steer
    from persona_explorer.steering.generation import SamplingConfig
    from persona_explorer.vectors.persona_vector import check_fits

    _check_options(args)
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        frequency_penalty=args.frequency_penalty,
        stop_at_eos=not args.ignore_eos,
        max_prompt_tokens=args.settings.limits.max_prompt_tokens,
    )
    vec_path = Path(args.vector).expanduser() if args.vector is not None else None
    if vec_path is not None:
        # Read the file once before the (slow) model load: a bad file or a missing layer or
        # strength fails at once. It is read again below with the model's layer count, which
        # picks a .pt file's layout and pads a GGUF file.
        early = vector_io.read(vec_path, args.in_layout, warn=False)
        _strengths(args, early)
        if args.layers is None and args.layer is None:
            _layers(args, early, early.n_layers)
    model = get_model(args)
    vec, layers, strengths = None, (), (0.0,)
    if vec_path is not None:
        vec = vector_io.read(vec_path, args.in_layout, n_layers=model.n_layers)
        check_fits(vec, model.n_layers, model.d_model, model.model_id)
        layers, strengths = _layers(args, vec, model.n_layers), _strengths(args, vec)
    if args.projection_layer is not None:
        check_layer(args.projection_layer, model.n_layers, "--projection-layer")
    capping = steer_output.Capping.prepare(args, model) if args.cap_axis else None
    records = []
    for i, prompt in enumerate(args.prompt, start=1):
        record: dict = {"prompt": prompt}
        lines: list[str] = []
        if vec is not None:
            req = SteerRequest(
                prompt=prompt,
                vector=vec,
                layers=layers,
                strengths=strengths,
                system=args.system or None,
                positions=args.positions,
                sampling=sampling,
                projection_layer=args.projection_layer,
            )
            out = steer(model, req)
            record = steer_output.record(prompt, out, strengths)
            lines = steer_output.text(i, len(args.prompt), prompt, out)
        if capping is not None:
            steering = (vec, layers, strengths[0]) if vec is not None else None
            cap_out = capping.run(model, prompt, args.system, steering, sampling, args.positions)
            record = steer_output.cap_record(record, cap_out)
            lines = steer_output.cap_text(i, len(args.prompt), prompt, cap_out, lines)
        records.append(record)
        if not args.json:
            render.write_lines(lines)
    if args.json:
        render.print_json(records)
    return 0
