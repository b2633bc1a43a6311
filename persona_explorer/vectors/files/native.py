"""Persona Explorer's own format: ``.safetensors``.

Row layout: tensor ``vectors`` [n_layers, d_model], row l = layer l (our convention as is), plus
an optional tensor ``embedding`` [d_model] for the embedding output. Every other field of the
value is JSON in the safetensors metadata key ``persona_explorer``, so nothing is lost.

A safetensors file without that key (someone else's) is imported from its one 2-D tensor (or
the one under a known key), its rows read as layers 0..n-1.

The header is read and checked here (:func:`_read_header`: its length, tensor count, each
tensor's dtype, shape and byte span) before safetensors opens the file, so :func:`read_info`
can answer from the header alone and :func:`load` knows what it will copy before it does.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from persona_explorer.core.fileio import atomic_write
from persona_explorer.vectors.files.common import (
    MAX_META_JSON_BYTES,
    VectorFileError,
    _build,
    _Expect,
    _fields_from_ours,
    _file_json,
    _human,
    _matrix_from_file,
    _parse_json,
    _pick_tensor_key,
    _short,
)
from persona_explorer.vectors.persona_vector import PersonaVector, VectorInfo, VectorMismatchError

__all__ = ["load", "read_info", "save"]

_META_KEY = "persona_explorer"

# safetensors dtype names -> bytes per element (the ones safetensors 0.4+ writes).
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}
_FLOAT_DTYPES = frozenset({"F8_E5M2", "F8_E4M3", "F16", "BF16", "F32", "F64"})
# Our JSON travels escaped inside the header, which can double it; the rest is a few hundred
# bytes per tensor.
_MAX_HEADER_BYTES = 2 * MAX_META_JSON_BYTES + 64 * 1024
# Ours holds two tensors, other tools' vector files a handful; a model checkpoint thousands.
_MAX_TENSORS = 256
_MAX_DIMS = 8


@dataclass(frozen=True)
class _Spec:
    """One tensor as the header declares it; ``begin``/``end`` are relative to the data."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class _Header:
    metadata: dict[str, str]
    tensors: dict[str, _Spec]
    data_bytes: int  # what the file holds after the header (may be short: see read_info)


def _read_header(path: Path) -> _Header:
    """The file's header, checked entry by entry; reads nothing past it."""
    name = path.name
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise VectorFileError(f"{name} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER_BYTES:
            raise VectorFileError(
                f"{name}: safetensors header claims {_human(length)}; a vector file's is at "
                f"most {_human(_MAX_HEADER_BYTES)} (is this a model checkpoint?)"
            )
        raw = fh.read(length)
        if len(raw) < length:
            raise VectorFileError(f"{name}: safetensors header is truncated")
        fh.seek(0, 2)
        data_bytes = fh.tell() - 8 - length
    parsed = _parse_json(raw, path, "safetensors header", _MAX_HEADER_BYTES)
    if not isinstance(parsed, dict):
        raise VectorFileError(f"{name}: safetensors header is not a JSON object")

    metadata = parsed.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise VectorFileError(f"{name}: safetensors __metadata__ must map strings to strings")
    if len(parsed) > _MAX_TENSORS:
        raise VectorFileError(
            f"{name} declares {len(parsed)} tensors; a vector file holds at most {_MAX_TENSORS} "
            "(is this a model checkpoint?)"
        )
    tensors = {key: _spec(path, key, entry) for key, entry in parsed.items()}
    spans = sorted((s.begin, s.end) for s in tensors.values() if s.end > s.begin)
    for (_, end), (begin, _) in itertools.pairwise(spans):
        if begin < end:
            raise VectorFileError(f"{name}: safetensors tensors overlap in the file")
    return _Header(metadata, tensors, data_bytes)


def _spec(path: Path, key: str, entry: Any) -> _Spec:
    where = f"{path.name}: tensor {key[:80]!r}"
    if not isinstance(entry, dict):
        raise VectorFileError(f"{where} has no valid header entry")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _DTYPE_BYTES:
        raise VectorFileError(f"{where} has unknown dtype {str(dtype)[:20]!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise VectorFileError(f"{where} has an invalid shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise VectorFileError(f"{where} has invalid data_offsets")
    begin, end = offsets
    if end - begin != math.prod(shape) * _DTYPE_BYTES[dtype]:
        raise VectorFileError(
            f"{where}: shape {shape} of {dtype} does not match its {end - begin} bytes"
        )
    return _Spec(dtype, tuple(shape), begin, end)


@dataclass(frozen=True)
class _Plan:
    """What :func:`load` will read, decided from the header alone."""

    key: str
    ours: dict[str, Any] | None  # our fields, decoded; None for a foreign file
    embedding: bool
    metadata: dict[str, str]


def _plan(path: Path, header: _Header, expect: _Expect) -> _Plan:
    """Choose the tensors to read and check them (dtype, shape, budget, the model's shape)."""
    tensors = header.tensors
    ours_raw = header.metadata.get(_META_KEY)
    if ours_raw is not None:
        if "vectors" not in tensors:
            raise VectorFileError(f"{path.name} has our metadata but no 'vectors' tensor")
        key = "vectors"
    else:
        key = _pick_tensor_key(list(tensors), lambda k: len(tensors[k].shape) == 2, path)
    spec = tensors[key]
    what = f"tensor {key[:80]!r}"
    _check_float(path, what, spec)
    expect.check_matrix(path, what, spec.shape)
    rows, width = spec.shape
    if expect.n_layers is not None and rows != expect.n_layers:
        raise VectorMismatchError(
            f"{path.name} holds {rows} layers; the model has {expect.n_layers} layers"
        )
    need = max(spec.end - spec.begin, rows * width * 4)

    embedding = ours_raw is not None and "embedding" in tensors
    if embedding:
        emb = tensors["embedding"]
        _check_float(path, "tensor 'embedding'", emb)
        if emb.shape != (width,):
            raise VectorFileError(
                f"{path.name}: tensor 'embedding' has shape {list(emb.shape)}; expected [{width}]"
            )
        need += max(emb.end - emb.begin, width * 4)
    expect.check_bytes(path, "its tensors", need)

    ours = None
    if ours_raw is not None:
        meta = _parse_json(ours_raw, path, f"the {_META_KEY!r} metadata")
        ours = _fields_from_ours(meta, path, (rows, width), f"the {_META_KEY!r} metadata")
    return _Plan(key, ours, embedding, header.metadata)


def _check_float(path: Path, what: str, spec: _Spec) -> None:
    if spec.dtype not in _FLOAT_DTYPES:
        raise VectorFileError(
            f"{path.name}: {what} must hold floating-point numbers, got dtype {spec.dtype}"
        )


def _foreign_metadata(path: Path, plan: _Plan) -> dict[str, Any]:
    return {
        "source_format": "safetensors",
        "source_file": path.name,
        "source_key": plan.key,
        "safetensors_metadata": dict(plan.metadata),
    }


def save(vec: PersonaVector, path: Path) -> Path:
    tensors = {"vectors": vec.vectors}
    if vec.embedding is not None:
        tensors["embedding"] = vec.embedding
    header = {_META_KEY: _file_json(vec), "format": "pt"}
    return atomic_write(
        path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=header)
    )


def read_info(path: Path, expect: _Expect) -> VectorInfo:
    """What :func:`load` would return, less the tensors, from the header alone: no tensor
    data is read, so a listing costs a few KB per file whatever the files claim."""
    header = _read_header(path)
    plan = _plan(path, header, expect)
    rows, width = header.tensors[plan.key].shape
    if plan.ours is None:
        return VectorInfo(
            name=path.stem,
            n_layers=rows,
            d_model=width,
            variant="imported",
            metadata=_foreign_metadata(path, plan),
        )
    # PersonaVector checks the fields (layer in range, separation per layer, ...); one column
    # of zeros gives it the layer count to check them against without a d_model-wide copy.
    probe = _build(path, vectors=torch.zeros(rows, 1), **plan.ours)
    return dataclasses.replace(VectorInfo.of(probe), d_model=width)


def load(path: Path, expect: _Expect) -> PersonaVector:
    header = _read_header(path)
    plan = _plan(path, header, expect)
    ends = [s.end for s in header.tensors.values()]
    if ends and max(ends) > header.data_bytes:
        raise VectorFileError(f"{path.name}: safetensors data is truncated")
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as fh:

            def read(key: str) -> torch.Tensor:
                # safetensors parses the header again: if it sees other than we checked (a
                # file swapped in between, a key given twice), nothing is read.
                spec, seen = header.tensors[key], fh.get_slice(key)
                if (list(seen.get_shape()), seen.get_dtype()) != (list(spec.shape), spec.dtype):
                    raise VectorFileError(f"{path.name}: tensor {key!r} is not what was checked")
                return fh.get_tensor(key)

            raw = read(plan.key)
            raw_emb = read("embedding") if plan.embedding else None
    except VectorFileError:
        raise
    except Exception as exc:
        raise VectorFileError(
            f"{path.name} is not a readable safetensors file ({_short(exc)})"
        ) from exc

    vectors = _matrix_from_file(raw, path, f"tensor {plan.key!r}")
    if plan.ours is None:
        return _build(
            path,
            name=path.stem,
            vectors=vectors,
            variant="imported",
            metadata=_foreign_metadata(path, plan),
        )
    return _build(path, vectors=vectors, embedding=raw_emb, **plan.ours)
