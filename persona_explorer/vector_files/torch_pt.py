"""``.pt`` / ``.pth`` tensors in the two layouts other projects use.

Row layouts:

* ``persona_vectors`` (Chen et al.): [n_layers + 1, d_model]; row 0 is the embedding output,
  row l + 1 is layer l. An all-zero row 0 reads back as "no embedding".
* ``assistant_axis`` (Lu et al.): [n_layers, d_model]; row l is layer l.

A file holds one bare tensor (what we write) or a dict with one (a known key, else the only 2-D
tensor). Nothing else survives: the name and variant come from persona_vectors' file naming
``{trait}_{response_avg|prompt_avg|prompt_last}_diff.pt`` (see :func:`persona_vectors_stem`).

Files are read with ``torch.load(weights_only=True)`` only, so a pickle never runs code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..fileio import atomic_write
from ..vectors import PersonaVector, VectorMismatchError
from .common import (
    VectorFileError,
    VectorLayout,
    _build,
    _matrix_from_file,
    _pick_tensor_key,
    _short,
)

__all__ = ["load", "persona_vectors_stem", "save"]

_PV_NAME = re.compile(r"(?P<trait>.+)_(?P<kind>response_avg|prompt_avg|prompt_last)_diff")
_PV_VARIANT = {"response_avg": "response", "prompt_avg": "prompt", "prompt_last": "last"}
_PV_KIND = {variant: kind for kind, variant in _PV_VARIANT.items()}


def persona_vectors_stem(trait: str, variant: str) -> str | None:
    """persona_vectors' file stem for ``trait`` extracted as ``variant``, if it has one."""
    kind = _PV_KIND.get(variant)
    return None if kind is None else f"{trait}_{kind}_diff"


def save(vec: PersonaVector, path: Path, layout: VectorLayout) -> Path:
    if layout == "persona_vectors":
        emb = vec.embedding if vec.embedding is not None else torch.zeros(vec.d_model)
        data = torch.cat([emb.unsqueeze(0), vec.vectors], dim=0)
    else:
        # A fresh tensor, never a view: torch.save stores a view's whole underlying storage.
        data = vec.vectors.clone()
    return atomic_write(path, lambda tmp: torch.save(data, tmp))


def _read_matrix(path: Path) -> tuple[torch.Tensor, str | None]:
    """The file's [rows, d_model] tensor and the dict key it was under (None for a bare one)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise VectorFileError(
            f"{path.name} is not a tensor file torch can load safely ({_short(exc)}); "
            "expected a tensor saved with torch.save (pickled objects are never executed)"
        ) from exc

    source_key: Any = None
    if isinstance(obj, dict):
        keys = list(obj)
        source_key = _pick_tensor_key(
            keys, lambda k: isinstance(obj[k], torch.Tensor) and obj[k].dim() == 2, path
        )
        obj = obj[source_key]
    if not isinstance(obj, torch.Tensor):
        raise VectorFileError(
            f"{path.name} holds a {type(obj).__name__}; expected a tensor "
            "[n_layers(+1), d_model] or a dict holding one"
        )
    matrix = _matrix_from_file(obj, path, "the tensor")
    return matrix, None if source_key is None else str(source_key)


def load(path: Path, layout: VectorLayout | None, n_layers: int | None) -> PersonaVector:
    """Read ``path``; with ``layout`` None it is told by ``n_layers``, else assumed
    persona_vectors (and marked ``layout_assumed`` so a later mismatch can say so)."""
    data, source_key = _read_matrix(path)
    rows = data.shape[0]

    assumed = False
    if layout is None:
        if n_layers is not None:
            if rows == n_layers + 1:
                layout = "persona_vectors"
            elif rows == n_layers:
                layout = "assistant_axis"
            else:
                raise VectorMismatchError(
                    f"{path.name} has {rows} rows; a model with {n_layers} layers needs "
                    f"{n_layers + 1} (persona_vectors: embedding row + one per layer) or "
                    f"{n_layers} (assistant_axis: one per layer)"
                )
        else:
            layout, assumed = "persona_vectors", True

    embedding: torch.Tensor | None = None
    if layout == "persona_vectors":
        if rows < 2:
            raise VectorFileError(
                f"{path.name} has {rows} row; the persona_vectors layout needs an embedding row "
                "plus at least one layer (try layout='assistant_axis')"
            )
        embedding = data[0] if bool(data[0].any()) else None
        vectors = data[1:]
    else:
        vectors = data

    match = _PV_NAME.fullmatch(path.stem)
    name, variant = (
        (match["trait"], _PV_VARIANT[match["kind"]]) if match else (path.stem, "imported")
    )
    metadata: dict[str, Any] = {"source_format": layout, "source_file": path.name}
    if source_key is not None:
        metadata["source_key"] = source_key
    if assumed:
        metadata["layout_assumed"] = True
    return _build(
        path, name=name, vectors=vectors, variant=variant, embedding=embedding, metadata=metadata
    )
