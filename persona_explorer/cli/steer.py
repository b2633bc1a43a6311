"""``steer``: baseline and steered answers side by side, one batched pass per prompt."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..limits import check_int, check_layer, parse_layers
from . import render, steer_output, vector_io
from .models import get_model
from .parser import LAYOUTS, Parents, arg_type, strength_type, text_type

if TYPE_CHECKING:
    from ..vectors import PersonaVector
    from .parser import Subparsers


def register(subparsers: Subparsers, parents: Parents) -> None:
    p = subparsers.add_parser(
        "steer",
        parents=[
            parents.model(),
            parents.sampling(),
            parents.output("the answers (a list, one per prompt)"),
        ],
        help="generate baseline and steered answers side by side",
        description="Answer each prompt without and with the vector added to the residual "
        "stream (one batched pass per prompt).",
    )
    p.add_argument("--vector", required=True, help="vector file (.safetensors, .gguf, .pt)")
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
    p.set_defaults(max_new_tokens=64, temperature=0.0, top_p=1.0, seed=0, func=run)


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
    from ..compare import SteerRequest, steer
    from ..config import load_settings
    from ..generation import SamplingConfig
    from ..vectors import check_fits

    vec_path = Path(args.vector).expanduser()
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop_at_eos=not args.ignore_eos,
        max_prompt_tokens=load_settings().limits.max_prompt_tokens,
    )
    # Read the file once before the (slow) model load: a bad file or a missing layer/strength
    # fails at once. It is read again below with the model's layer count, which picks a .pt
    # file's layout and pads a GGUF file.
    early = vector_io.read(vec_path, args.in_layout, warn=False)
    _strengths(args, early)
    if args.layers is None and args.layer is None:
        _layers(args, early, early.n_layers)
    model = get_model(args)
    vec = vector_io.read(vec_path, args.in_layout, n_layers=model.n_layers)
    check_fits(vec, model.n_layers, model.d_model, model.model_id)
    layers = _layers(args, vec, model.n_layers)
    strengths = _strengths(args, vec)
    if args.projection_layer is not None:
        check_layer(args.projection_layer, model.n_layers, "--projection-layer")
    records = []
    for i, prompt in enumerate(args.prompt, start=1):
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
        records.append(steer_output.record(prompt, out, strengths))
        if not args.json:
            render.write_lines(steer_output.text(i, len(args.prompt), prompt, out))
    if args.json:
        render.print_json(records)
    return 0
