"""Reading and writing the vector files a command is given, with what the user should know.

Shared by every command that takes or writes a vector file; the formats themselves are
:mod:`persona_explorer.vectors.files`'. Checks here run before any slow work (a model load, an
extraction), so a bad output path fails at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from persona_explorer.cli import render
from persona_explorer.cli.models import looks_like_path
from persona_explorer.core.errors import InputError
from persona_explorer.vectors.files import (
    VectorFormat,
    VectorLayout,
    format_for_path,
    load,
    save,
    save_notes,
)

if TYPE_CHECKING:
    from persona_explorer.vectors.persona_vector import PersonaVector


def output_format(path: Path, layout: VectorLayout | None) -> VectorFormat:
    """The format ``path`` will be written in; refuses a path that cannot be written."""
    fmt = format_for_path(path, layout)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: the directory {parent} does not exist")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a directory")
    return fmt


def read(
    path: Path, layout: VectorLayout | None, n_layers: int | None = None, warn: bool = True
) -> PersonaVector:
    """Load a vector file; say so when a ``.pt`` file's layout had to be guessed."""
    vec = load(path, layout=layout, n_layers=n_layers)
    if warn and vec.metadata.get("layout_assumed"):
        render.warning(
            f"{path.name}: layout guessed as persona_vectors (row 0 = embedding); "
            "pass --in-layout/--layout assistant_axis if it has one row per layer"
        )
    return vec


def write(
    vec: PersonaVector, path: Path, fmt: VectorFormat, model_hint: str
) -> tuple[Path, list[str]]:
    """Save ``vec``; print and return what the format left out (one ``note:`` line each)."""
    notes = save_notes(vec, fmt)
    written = save(vec, path, layout=fmt.layout, model_hint=model_hint)
    for line in notes:
        render.note(line)
    return written, notes


def vector_path(spec: str, builtin_vectors_dir: Path | None = None) -> Path:
    """A vector file, or a built-in vector by name (in the ``builtin_vectors_dir`` setting)."""
    from persona_explorer.personas.builtin import builtin_dir, builtin_vector_paths

    path = Path(spec).expanduser()
    if path.is_file() or looks_like_path(spec) or path.suffix in (".safetensors", ".gguf", ".pt"):
        return path
    folder = builtin_vectors_dir or builtin_dir()
    builtin = folder / f"{spec}.safetensors"
    if builtin.is_file():
        return builtin
    names = ", ".join(p.stem for p in builtin_vector_paths(folder)) or "none installed"
    raise InputError(f"no vector file or built-in vector {spec!r} (built-in: {names})")


def add_vector_arguments(p: argparse.ArgumentParser, *, several: bool, example: str) -> None:
    """``--vector`` (repeatable with ``several``) and ``--in-layout``, alike in every command
    that reads persona vectors."""
    p.add_argument(
        "--vector",
        action="append" if several else "store",
        required=True,
        help=f"vector file or built-in name (e.g. {example})"
        + ("; repeat for several" if several else ""),
    )
    p.add_argument(
        "--in-layout",
        choices=get_args(VectorLayout),
        default=None,
        help="row layout of .pt vectors",
    )
