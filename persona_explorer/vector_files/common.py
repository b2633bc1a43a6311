"""What every vector file format shares: the error type, limits, file checks and our JSON fields.

Readers turn whatever a file holds into a :class:`~persona_explorer.vectors.PersonaVector` through
:func:`_matrix_from_file` and :func:`_build`, so a malformed file always surfaces as one
:class:`VectorFileError` naming the file, never as the value's own ``ValueError``/``TypeError``.
Our own fields travel as the JSON of :func:`_file_json` (in the safetensors header or a GGUF
key) and come back through :func:`_fields_from_ours`.

Names with a leading underscore are for this package's format modules only.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import InputError
from ..vectors import LAYER_CONVENTION, PersonaVector, _clean_tensor

__all__ = [
    "FORMAT_VERSION",
    "MAX_VECTOR_FILE_BYTES",
    "PathLike",
    "VectorFileError",
    "VectorLayout",
]

PathLike = str | os.PathLike[str]
VectorLayout = Literal["persona_vectors", "assistant_axis"]

FORMAT_VERSION = 1
MAX_VECTOR_FILE_BYTES = 256 * 1024 * 1024
# No real model has thousands of layers; the cap stops a crafted `direction.999999999`
# or n_layers field from allocating gigabytes of zero rows.
_MAX_LAYERS = 4096
# Keys other tools store their vectors under, tried before guessing "the only 2-D tensor".
_PT_TENSOR_KEYS = ("vectors", "vector", "persona_vector", "persona_vectors", "axis")


class VectorFileError(InputError):
    """A vector file is malformed, unsupported or unsafe to read."""


def _check_file(path: Path) -> None:
    """Refuse anything but a non-empty regular file of plausible size, before opening it."""
    st = os.stat(path)  # FileNotFoundError is honest for a missing file
    if not stat.S_ISREG(st.st_mode):
        raise VectorFileError(f"{path.name} is not a regular file")
    if st.st_size > MAX_VECTOR_FILE_BYTES:
        raise VectorFileError(
            f"{path.name} is {st.st_size / 2**20:.0f} MiB; vector files are at most "
            f"{MAX_VECTOR_FILE_BYTES // 2**20} MiB (is this a model checkpoint?)"
        )
    if st.st_size == 0:
        raise VectorFileError(f"{path.name} is empty")


def _matrix_from_file(value: Any, path: Path, what: str) -> torch.Tensor:
    try:
        return _clean_tensor(value, what, 2)
    except (TypeError, ValueError) as exc:
        raise VectorFileError(
            f"{path.name}: {exc}; expected a finite float tensor [layers, d_model]"
        ) from exc


def _build(path: Path, **fields: Any) -> PersonaVector:
    try:
        return PersonaVector(**fields)
    except (TypeError, ValueError) as exc:
        raise VectorFileError(f"{path.name}: {exc}") from exc


def _short(exc: BaseException) -> str:
    """The first line of a library's error, short enough to quote inside ours."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first[:200]


def _file_json(vec: PersonaVector) -> str:
    """Our fields as stored in a file: everything but the tensors, plus the format version."""
    return json.dumps(
        {**vec.to_json_metadata(), "format_version": FORMAT_VERSION},
        allow_nan=False,
        sort_keys=True,
    )


def _fields_from_ours(meta: Any, path: Path, vectors: torch.Tensor, where: str) -> dict[str, Any]:
    """Turn our stored JSON back into PersonaVector fields, checking it matches the tensors."""
    if not isinstance(meta, dict):
        raise VectorFileError(f"{path.name}: {where} is not a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise VectorFileError(f"{path.name}: {where} has no valid format_version")
    if version > FORMAT_VERSION:
        raise VectorFileError(
            f"{path.name} uses format_version {version}; this version of Persona Explorer "
            f"reads up to {FORMAT_VERSION} (upgrade to read it)"
        )
    convention = meta.get("layer_convention")
    if convention != LAYER_CONVENTION:
        raise VectorFileError(
            f"{path.name}: layer_convention is {convention!r}; expected {LAYER_CONVENTION!r}"
        )
    for key, actual in (("n_layers", vectors.shape[0]), ("d_model", vectors.shape[1])):
        if key in meta and meta[key] != actual:
            raise VectorFileError(
                f"{path.name}: {where} says {key} = {meta[key]!r} but the tensor has {actual}"
            )
    extra = meta.get("metadata", {})
    return {
        "name": meta.get("name") or path.stem,
        "model_id": meta.get("model_id", ""),
        "variant": meta.get("variant", "custom"),
        "layer": meta.get("layer"),
        "strength": meta.get("strength"),
        "separation": meta.get("separation"),
        "metadata": extra if isinstance(extra, dict) else {"metadata": extra},
    }


def _pick_tensor_key(keys: Sequence[Any], is_matrix: Callable[[Any], bool], path: Path) -> Any:
    """Choose the one tensor that holds the vectors: a known key, else the only 2-D one.

    Keys are whatever the file uses: strings in safetensors, any picklable key in a ``.pt`` dict.
    """
    named = [k for k in _PT_TENSOR_KEYS if k in keys]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise VectorFileError(
            f"{path.name} holds several candidate tensors {named}; expected exactly one"
        )
    matrices = [k for k in keys if is_matrix(k)]
    if len(matrices) == 1:
        return matrices[0]
    raise VectorFileError(
        f"{path.name} holds {len(matrices)} 2-D tensors ({sorted(map(str, keys))[:10]}); "
        f"expected one, or one named {' / '.join(_PT_TENSOR_KEYS)}"
    )
