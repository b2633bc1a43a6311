"""Persona Explorer's own format: ``.safetensors``.

Row layout: tensor ``vectors`` [n_layers, d_model], row l = layer l (our convention as is), plus
an optional tensor ``embedding`` [d_model] for the embedding output. Every other field of the
value is JSON in the safetensors metadata key ``persona_explorer``, so nothing is lost.

A safetensors file without that key (someone else's) is imported from its one 2-D tensor (or
the one under a known key), its rows read as layers 0..n-1.
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors
import safetensors.torch

from ..fileio import atomic_write
from ..vectors import PersonaVector
from .common import (
    VectorFileError,
    _build,
    _fields_from_ours,
    _file_json,
    _matrix_from_file,
    _pick_tensor_key,
    _short,
)

__all__ = ["load", "save"]

_META_KEY = "persona_explorer"


def save(vec: PersonaVector, path: Path) -> Path:
    tensors = {"vectors": vec.vectors}
    if vec.embedding is not None:
        tensors["embedding"] = vec.embedding
    header = {_META_KEY: _file_json(vec), "format": "pt"}
    return atomic_write(
        path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=header)
    )


def load(path: Path) -> PersonaVector:
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            keys = list(fh.keys())
            ours_raw = header.get(_META_KEY)
            if ours_raw is not None:
                if "vectors" not in keys:
                    raise VectorFileError(f"{path.name} has our metadata but no 'vectors' tensor")
                key = "vectors"
            else:
                key = _pick_tensor_key(keys, lambda k: len(fh.get_slice(k).get_shape()) == 2, path)
            raw = fh.get_tensor(key)
            raw_emb = (
                fh.get_tensor("embedding") if ours_raw is not None and "embedding" in keys else None
            )
    except VectorFileError:
        raise
    except Exception as exc:
        raise VectorFileError(
            f"{path.name} is not a readable safetensors file ({_short(exc)})"
        ) from exc

    vectors = _matrix_from_file(raw, path, f"tensor {key!r}")
    if ours_raw is None:
        return _build(
            path,
            name=path.stem,
            vectors=vectors,
            variant="imported",
            metadata={
                "source_format": "safetensors",
                "source_file": path.name,
                "source_key": key,
                "safetensors_metadata": dict(header),
            },
        )
    try:
        meta = json.loads(ours_raw)
    except json.JSONDecodeError as exc:
        raise VectorFileError(f"{path.name}: the {_META_KEY!r} metadata is not JSON") from exc
    fields = _fields_from_ours(meta, path, vectors, f"the {_META_KEY!r} metadata")
    return _build(path, vectors=vectors, embedding=raw_emb, **fields)
