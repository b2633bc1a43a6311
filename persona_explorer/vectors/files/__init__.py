"""Vector files: reading and writing a persona vector
(:class:`~persona_explorer.vectors.persona_vector.PersonaVector`).

One module per format, each translating its own row layout to the project's layer convention
(written down once, in :mod:`persona_explorer.vectors.persona_vector`) at the boundary:

* :mod:`.native` — ``.safetensors``: tensor ``vectors`` [n_layers, d_model] (+ ``embedding``),
  our fields as JSON in the header; loses nothing;
* :mod:`.torch_pt` — ``.pt`` from persona_vectors ([n_layers + 1, d_model], row 0 = embedding)
  or assistant-axis ([n_layers, d_model]), read with ``torch.load(weights_only=True)`` only;
* :mod:`.control_vector` — GGUF control vectors (llama.cpp ``--control-vector``, repeng):
  ``direction.{k}`` = layer k; llama.cpp refuses ``direction.0``, so layer 0 is not written.

:mod:`.common` holds what they share (:class:`VectorFileError`, size limits, our JSON fields).
This ``__init__`` is the only entry point the rest of the project uses: :func:`load`,
:func:`read_info` (a file's fields and shape without its tensors), :func:`save`, the format
table :data:`FORMATS` with :func:`format_for_path`, and for offering a download
:func:`save_notes` (what a format loses) and :func:`export_stem` (its file name).
Every failure a file or a user's choice can cause is a :class:`VectorFileError` (or, for a
vector that does not fit the model, :class:`~persona_explorer.vectors.VectorMismatchError`).

Every file is treated as hostile: each reader checks what the file declares (tensor count,
shapes, dtypes, byte spans, the size of its JSON) against the target model and the byte budget
``max_bytes`` (``Limits.max_vector_bytes``, 16 MiB by default) before it allocates or copies
anything, so a small file cannot cost more memory or time than a vector of that budget.

Imports: :mod:`..vectors`, :mod:`..fileio`, :mod:`..errors`, :mod:`..limits` (and torch,
safetensors, gguf, numpy); never the model, the library, the UI or the CLI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from persona_explorer.core.names import slugify
from persona_explorer.vectors.files import control_vector, native, torch_pt
from persona_explorer.vectors.files.common import (
    MAX_VECTOR_FILE_BYTES,
    PathLike,
    VectorFileError,
    VectorLayout,
    _check_file,
    _expect,
)
from persona_explorer.vectors.persona_vector import PersonaVector, VectorInfo, VectorMismatchError

__all__ = [
    "FORMATS",
    "MAX_VECTOR_FILE_BYTES",
    "VectorFileError",
    "VectorFormat",
    "VectorLayout",
    "export_stem",
    "format_for_path",
    "load",
    "read_info",
    "save",
    "save_notes",
]


@dataclass(frozen=True)
class VectorFormat:
    """One way to write a vector: ``key`` names it in :data:`FORMATS`, ``label`` is for people,
    ``layout`` tells the two ``.pt`` row layouts apart (None for the other formats)."""

    key: str
    label: str
    suffix: str
    layout: VectorLayout | None


FORMATS: dict[str, VectorFormat] = {
    f.key: f
    for f in (
        VectorFormat("safetensors", "Persona Explorer (.safetensors)", ".safetensors", None),
        VectorFormat("persona_vectors", "persona_vectors (.pt)", ".pt", "persona_vectors"),
        VectorFormat("assistant_axis", "assistant-axis (.pt)", ".pt", "assistant_axis"),
        VectorFormat("gguf", "llama.cpp control vector (.gguf)", ".gguf", None),
    )
}

_PT_SUFFIXES = (".pt", ".pth")


def format_for_path(path: str | os.PathLike[str], layout: str | None = None) -> VectorFormat:
    """The format a file is read or written in, from its extension (and, for ``.pt``, the
    layout; persona_vectors when none is given)."""
    name = Path(path).name
    ext = Path(path).suffix.lower()
    if ext in _PT_SUFFIXES:
        if layout is None:
            return FORMATS["persona_vectors"]
        if layout not in get_args(VectorLayout):
            raise VectorFileError(
                f"{name}: unknown layout {layout!r}; a .pt file is 'persona_vectors' "
                "(embedding row + one row per layer) or 'assistant_axis' (one row per layer)"
            )
        return FORMATS[layout]
    if ext not in (".safetensors", ".gguf"):
        raise VectorFileError(
            f"{name}: unsupported file type {ext or '(no extension)'!r}; expected "
            ".safetensors (native), .pt (persona_vectors / assistant_axis) or .gguf "
            "(llama.cpp control vector)"
        )
    if layout is not None:
        raise VectorFileError(f"{name}: layout applies to .pt files only, not {ext}")
    return FORMATS[ext.removeprefix(".")]


def _resolve(fmt: str | VectorFormat) -> VectorFormat:
    if isinstance(fmt, VectorFormat):
        return fmt
    try:
        return FORMATS[fmt]
    except KeyError:
        raise VectorFileError(
            f"unknown vector format {fmt!r}; expected one of {', '.join(FORMATS)}"
        ) from None


def load(
    path: PathLike,
    layout: VectorLayout | None = None,
    n_layers: int | None = None,
    d_model: int | None = None,
    max_bytes: int | None = None,
) -> PersonaVector:
    """Read a vector file; the format follows the extension.

    ``layout`` applies to ``.pt`` only. ``n_layers``, the target model's layer count if
    known, picks the ``.pt`` layout when ``layout`` is None, pads GGUF files (which do
    not record their layer count) and is checked against every format's result.
    ``n_layers`` and ``d_model`` are checked against the shapes a file declares before any
    tensor data is read (:class:`~persona_explorer.vectors.VectorMismatchError`), and
    ``max_bytes`` (default ``Limits.max_vector_bytes``) caps what the vector's tensors may
    take, in the file and as the float32 copy it becomes (:class:`VectorFileError`).
    """
    src = Path(path)
    fmt = format_for_path(src, layout)
    expect = _expect(n_layers, d_model, max_bytes)
    _check_file(src)
    if fmt.key == "safetensors":
        vec = native.load(src, expect)
    elif fmt.key == "gguf":
        vec = control_vector.load(src, expect)
    else:
        # No layout given: the .pt reader tells the two apart by n_layers, or assumes.
        vec = torch_pt.load(src, fmt.layout if layout is not None else None, expect)
    if n_layers is not None and vec.n_layers != n_layers:
        raise VectorMismatchError(
            f"{src.name} holds {vec.n_layers} layers; the model has {n_layers} layers"
        )
    return vec


def read_info(path: PathLike, max_bytes: int | None = None) -> VectorInfo:
    """What :func:`load` would give for ``path``, without the tensors.

    A native ``.safetensors`` file is answered from its header alone (our JSON fields and the
    shape of ``vectors``): no tensor data is read, so listing a folder of vectors stays cheap
    whatever the files claim. Other formats hold no such header and are loaded (within
    ``max_bytes``, like :func:`load`). Raises what :func:`load` raises for a bad header.
    """
    src = Path(path)
    fmt = format_for_path(src)
    expect = _expect(None, None, max_bytes)
    _check_file(src)
    if fmt.key == "safetensors":
        return native.read_info(src, expect)
    return VectorInfo.of(load(src, max_bytes=max_bytes))


def save(
    vec: PersonaVector,
    path: PathLike,
    layout: VectorLayout | None = None,
    model_hint: str = "llama",
) -> Path:
    """Write ``vec`` atomically (readers see the old file or the whole new one); the format
    follows the extension.

    ``.pt`` needs ``layout``. ``model_hint`` (the llama.cpp architecture name) is used by
    ``.gguf`` only. What a format cannot hold is left out silently; :func:`save_notes`
    says what that is, for telling the user.
    """
    if not isinstance(vec, PersonaVector):
        raise TypeError(f"save() needs a PersonaVector, got {type(vec).__name__}")
    target = Path(path)
    fmt = format_for_path(target, layout)
    if fmt.layout is not None:
        if layout is None:
            raise VectorFileError(
                f"{target.name}: a .pt file needs a layout: 'persona_vectors' "
                "(embedding row + one row per layer) or 'assistant_axis' (one row per layer)"
            )
        return torch_pt.save(vec, target, fmt.layout)
    if fmt.key == "safetensors":
        return native.save(vec, target)
    return control_vector.save(vec, target, model_hint)


_CANNOT_HOLD_EMBEDDING = {
    "gguf": "GGUF control vectors have no row for the embedding output",
    "assistant_axis": "The assistant-axis layout has no row for the embedding output",
}


def save_notes(vec: PersonaVector, fmt: str | VectorFormat) -> list[str]:
    """What saving ``vec`` as ``fmt`` leaves out, one plain-English sentence each ([] if
    nothing)."""
    fmt = _resolve(fmt)
    notes = []
    if fmt.key == "gguf" and bool(vec.vectors[0].any()):
        notes.append(
            "GGUF control vectors cannot hold layer 0 (llama.cpp rejects direction.0); "
            f"layer 0 of {vec.name} is not zero and is left out."
        )
    if vec.embedding is not None and fmt.key in _CANNOT_HOLD_EMBEDDING:
        notes.append(
            f"{_CANNOT_HOLD_EMBEDDING[fmt.key]}; the embedding row of {vec.name} is left out."
        )
    if fmt.layout is not None:
        lost = [
            what
            for what, present in (
                ("model id", bool(vec.model_id)),
                ("steering layer", vec.layer is not None),
                ("strength", vec.strength is not None),
                ("per-layer separation scores", vec.separation is not None),
            )
            if present
        ]
        # A persona_vectors file name carries the variant (see export_stem); nothing else does.
        named = (
            fmt.layout == "persona_vectors"
            and torch_pt.persona_vectors_stem(vec.name, vec.variant) is not None
        )
        if vec.variant != "imported" and not named:
            lost.append("variant")
        if lost:
            listed = lost[0] if len(lost) == 1 else f"{', '.join(lost[:-1])} and {lost[-1]}"
            verb = "is" if len(lost) == 1 else "are"
            notes.append(
                f"A .pt file holds only the tensor; the {listed} of {vec.name} {verb} left out."
            )
    return notes


def export_stem(vec: PersonaVector, fmt: str | VectorFormat) -> str:
    """A safe file name stem for a download of ``vec`` as ``fmt``.

    For the persona_vectors format it follows their naming,
    ``{name}_{response_avg|prompt_avg|prompt_last}_diff``, which :func:`load` reads back as
    the name and variant.
    """
    fmt = _resolve(fmt)
    slug = slugify(vec.name)
    if fmt.key == "persona_vectors":
        return torch_pt.persona_vectors_stem(slug, vec.variant) or slug
    return slug
