"""What every vector file format shares: the error type, limits, file checks and our JSON fields.

Readers turn whatever a file holds into a
:class:`~persona_explorer.vectors.persona_vector.PersonaVector` through :func:`_matrix_from_file`
and :func:`_build`, so a malformed file always surfaces as one :class:`VectorFileError` naming
the file, never as the value's own ``ValueError``/``TypeError``.
Our own fields travel as the JSON of :func:`_file_json` (in the safetensors header or a GGUF
key) and come back through :func:`_parse_json` (bounded in size and nesting) and
:func:`_fields_from_ours`.

Every file is hostile until checked: each reader checks what its header *declares* (tensor
count, shapes, dtypes, byte spans) against :class:`_Expect` (the target model's shape, if known,
and the byte budget, ``Limits.max_vector_bytes``) before it allocates or copies anything.

Names with a leading underscore are for this package's format modules only.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import DEFAULT_LIMITS, MAX_META_JSON_BYTES, MAX_VECTOR_FILE_BYTES
from persona_explorer.vectors.persona_vector import (
    LAYER_CONVENTION,
    PersonaVector,
    VectorMismatchError,
    _clean_tensor,
)

__all__ = [
    "FORMAT_VERSION",
    "MAX_META_JSON_BYTES",
    "MAX_VECTOR_FILE_BYTES",
    "PathLike",
    "VectorFileError",
    "VectorLayout",
]

PathLike = str | os.PathLike[str]
VectorLayout = Literal["persona_vectors", "assistant_axis"]

FORMAT_VERSION = 1
# No real model has thousands of layers; the cap stops a crafted `direction.999999999`
# or n_layers field from allocating gigabytes of zero rows.
_MAX_LAYERS = 4096
# The widest residual stream of any released model is ~30k; this only keeps arithmetic on a
# crafted width sane, the byte budget is the real bound.
_MAX_D_MODEL = 1 << 20
# Keys other tools store their vectors under, tried before guessing "the only 2-D tensor".
_PT_TENSOR_KEYS = ("vectors", "vector", "persona_vector", "persona_vectors", "axis")
# Ours nests 3 deep; json.loads recurses per level, so a deep one would be a RecursionError.
_MAX_JSON_DEPTH = 32
_LIMIT_SETTING = "PERSONA_EXPLORER_MAX_VECTOR_MB"


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


def _byte_limit(max_bytes: int | None) -> int:
    """The byte budget for one vector's tensors: the caller's, else the default limit."""
    if max_bytes is None:
        return DEFAULT_LIMITS.max_vector_bytes
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    return max_bytes


def _human(n: int) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class _Expect:
    """What a reader may accept: the target model's shape (None: unknown) and the byte budget
    for the vector's tensors."""

    n_layers: int | None
    d_model: int | None
    max_bytes: int

    def check_bytes(self, path: Path, what: str, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            raise VectorFileError(
                f"{path.name}: {what} needs {_human(nbytes)}; vectors are limited to "
                f"{_human(self.max_bytes)} ({_LIMIT_SETTING})"
            )

    def check_width(self, path: Path, what: str, width: int) -> None:
        if not 1 <= width <= _MAX_D_MODEL:
            raise VectorFileError(f"{path.name}: {what} has width {width}; expected d_model")
        if self.d_model is not None and width != self.d_model:
            raise VectorMismatchError(
                f"{path.name}: {what} has width {width}; the model's d_model is {self.d_model}"
            )

    def check_matrix(self, path: Path, what: str, shape: Sequence[int]) -> None:
        """A [rows, d_model] tensor's declared shape, before its data is read: 2-D, at most one
        row per layer plus an embedding row, the model's width, within the byte budget as the
        float32 copy a PersonaVector holds."""
        if len(shape) != 2:
            raise VectorFileError(
                f"{path.name}: {what} must be 2-D [n_layers, d_model], got shape {list(shape)}"
            )
        rows, width = shape
        if not 1 <= rows <= _MAX_LAYERS + 1:
            raise VectorFileError(
                f"{path.name}: {what} has {rows} rows; expected 1 to {_MAX_LAYERS + 1} "
                "(one per layer)"
            )
        self.check_width(path, what, width)
        self.check_bytes(path, f"{what} {list(shape)}", rows * width * 4)


def _expect(n_layers: int | None, d_model: int | None, max_bytes: int | None) -> _Expect:
    if n_layers is not None and (
        isinstance(n_layers, bool)
        or not isinstance(n_layers, int)
        or not 1 <= n_layers <= _MAX_LAYERS
    ):
        raise ValueError(f"n_layers must be between 1 and {_MAX_LAYERS}, got {n_layers!r}")
    if d_model is not None and (
        isinstance(d_model, bool)
        or not isinstance(d_model, int)
        or not 1 <= d_model <= _MAX_D_MODEL
    ):
        raise ValueError(f"d_model must be between 1 and {_MAX_D_MODEL}, got {d_model!r}")
    return _Expect(n_layers, d_model, _byte_limit(max_bytes))


_JSON_SPECIAL = re.compile(r'[\[\]{}"\\]')


def _json_too_deep(text: str, limit: int) -> bool:
    """Whether ``text`` nests arrays/objects more than ``limit`` deep, judged by a scan that
    skips string contents (so it needs no recursion, unlike json.loads)."""
    depth, in_string, skip_to = 0, False, -1
    for match in _JSON_SPECIAL.finditer(text):
        pos = match.start()
        if pos < skip_to:
            continue
        char = text[pos]
        if in_string:
            if char == "\\":
                skip_to = pos + 2  # the escaped character, which may be a quote
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _parse_json(
    text: str | bytes, path: Path, where: str, max_len: int = MAX_META_JSON_BYTES
) -> Any:
    """``text`` decoded as JSON, refused as a :class:`VectorFileError` when longer than
    ``max_len``, nested deeper than :data:`_MAX_JSON_DEPTH` or malformed."""
    if len(text) > max_len:
        raise VectorFileError(
            f"{path.name}: {where} is {_human(len(text))}; at most {_human(max_len)} of JSON "
            "is read"
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise VectorFileError(f"{path.name}: {where} is not UTF-8 text") from None
    if _json_too_deep(text, _MAX_JSON_DEPTH):
        raise VectorFileError(f"{path.name}: {where} nests more than {_MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(text)
    except RecursionError:  # unreachable after the depth scan; kept as a guard
        raise VectorFileError(f"{path.name}: {where} is nested too deeply") from None
    except ValueError as exc:
        raise VectorFileError(f"{path.name}: {where} is not JSON") from exc


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


def _fields_from_ours(meta: Any, path: Path, shape: tuple[int, int], where: str) -> dict[str, Any]:
    """Turn our stored JSON back into PersonaVector fields, checking it matches the tensors'
    ``shape`` [n_layers, d_model]."""
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
    for key, actual in (("n_layers", shape[0]), ("d_model", shape[1])):
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
    shown = sorted(str(k)[:40] for k in keys)[:10]
    raise VectorFileError(
        f"{path.name} holds {len(matrices)} 2-D tensors ({shown}); "
        f"expected one, or one named {' / '.join(_PT_TENSOR_KEYS)}"
    )
