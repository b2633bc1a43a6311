"""``convert`` and ``info``: vector files only; no model is loaded."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from persona_explorer.cli import render, vector_io
from persona_explorer.cli.options import LAYOUTS, Parents
from persona_explorer.core.errors import InputError
from persona_explorer.vectors.files import format_for_path

if TYPE_CHECKING:
    from persona_explorer.cli.options import Subparsers


def register(subparsers: Subparsers, parents: Parents) -> None:
    p = subparsers.add_parser(
        "convert",
        parents=[parents.output("what was written")],
        help="convert a vector between .safetensors, .pt and .gguf",
        description="Convert a vector file; formats follow the extensions.",
    )
    p.add_argument("--in", dest="src", required=True, help="input vector file")
    p.add_argument("--in-layout", choices=LAYOUTS, default=None, help="layout of a .pt input")
    p.add_argument("--out", required=True, help="output vector file")
    p.add_argument(
        "--out-layout",
        choices=LAYOUTS,
        default=None,
        help="layout of a .pt output (default: persona_vectors)",
    )
    p.add_argument(
        "--model-hint", default="llama", help="llama.cpp architecture for .gguf (default llama)"
    )
    p.set_defaults(func=run_convert)

    p = subparsers.add_parser(
        "info",
        parents=[parents.output("describe()")],
        help="describe a vector file",
        description="Show what a vector file holds (no model is loaded).",
    )
    p.add_argument("file", help="vector file (.safetensors, .gguf, .pt)")
    p.add_argument("--layout", choices=LAYOUTS, default=None, help="layout of a .pt file")
    p.set_defaults(func=run_info)


def run_convert(args: argparse.Namespace) -> int:
    src = Path(args.src).expanduser()
    out = Path(args.out).expanduser()
    format_for_path(src, args.in_layout)  # a bad input name fails before anything is read
    fmt = vector_io.output_format(out, args.out_layout)
    model_hint = args.model_hint.strip()
    if not model_hint:
        raise InputError("--model-hint must not be empty (e.g. llama)")
    vec = vector_io.read(src, args.in_layout)
    written, notes = vector_io.write(vec, out, fmt, model_hint)
    size = written.stat().st_size
    if args.json:
        render.print_json(
            {
                "in": str(src),
                "out": str(written),
                "format": fmt.key,
                "name": vec.name,
                "n_layers": vec.n_layers,
                "d_model": vec.d_model,
                "bytes": size,
                "notes": notes,
            }
        )
    else:
        render.write_lines(
            [
                f"wrote {written} ({fmt.label}; {vec.name!r}, {vec.n_layers} layers x d_model "
                f"{vec.d_model}, {size:,} bytes)"
            ]
        )
    return 0


def run_info(args: argparse.Namespace) -> int:
    from persona_explorer.vectors.persona_vector import describe

    path = Path(args.file).expanduser()
    vec = vector_io.read(path, args.layout)
    desc = describe(vec)
    if args.json:
        render.print_json({**desc, "file": str(path)})
        return 0
    opt = render.optional
    rows = [
        ("file", str(path)),
        ("name", vec.name),
        ("model", vec.model_id or "-"),
        ("variant", vec.variant),
        ("layers", str(vec.n_layers)),
        ("d_model", str(vec.d_model)),
        ("recommended", f"layer {opt(vec.layer)}, strength {opt(vec.strength)}"),
        ("best layer", opt(vec.best_layer) + (" (by separation)" if vec.separation else "")),
        ("embedding", "yes" if vec.embedding is not None else "no"),
    ]
    for key in ("created", "source", "persona_kind", "source_format", "source_file"):
        if key in vec.metadata:
            rows.append((key.replace("_", " "), str(vec.metadata[key])))
    counts = vec.metadata.get("counts")
    if isinstance(counts, dict) and counts:
        rows.append(("counts", ", ".join(f"{k} {v}" for k, v in counts.items())))
    norms = desc["layer_norms"]
    rows.append(
        ("norms", f"{render.sparkline(norms)}  (min {min(norms):.3g}, max {max(norms):.3g})")
    )
    after_norms = len(rows)
    if vec.separation is not None:
        sep = list(vec.separation)
        rows.append(("separation", f"{render.sparkline(sep)}  (top: {render.top(sep)})"))
    width = max(len(k) for k, _ in rows)
    lines = render.table(rows)
    # The per-layer norms go under the norms row, their "L0-9:" labels ending in its column.
    lines[after_norms:after_norms] = [" " * (width - 7) + row for row in render.rows_of(norms)]
    render.write_lines(lines)
    return 0
