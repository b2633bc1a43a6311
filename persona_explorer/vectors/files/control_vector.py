"""llama.cpp control vectors: ``.gguf`` files for ``--control-vector`` (as repeng writes them).

Row layout: one 1-D F32 tensor ``direction.{k}`` [d_model] per layer, added by llama.cpp to the
output of block k, i.e. our layer k. llama.cpp refuses ``direction.0``, so layer 0 is never
written, and there is no row for the embedding output. Directions that name the same layer
are summed, as llama.cpp does. The file records no layer count of its own
(``controlvector.layer_count`` counts tensors), so a foreign file has max k + 1 layers unless
the caller knows better; ours also carry our fields as JSON under ``persona_explorer.metadata``.

Files are read by :func:`_walk`, not ``gguf.GGUFReader`` (which trusts the header's lengths,
counts and offsets): it walks the header with bounds checks, checks every tensor's declared
name, type, shape and byte span against the model and the byte budget, and only then are the
checked spans copied out of a read-only memory map. ``gguf`` is used for writing only.
"""

from __future__ import annotations

import itertools
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.fileio import atomic_write
from persona_explorer.vectors.files.common import (
    _MAX_LAYERS,
    MAX_META_JSON_BYTES,
    VectorFileError,
    _build,
    _Expect,
    _fields_from_ours,
    _file_json,
    _human,
    _matrix_from_file,
    _parse_json,
)
from persona_explorer.vectors.persona_vector import PersonaVector, VectorMismatchError

__all__ = ["load", "save"]

_ARCH = "controlvector"
_HINT_KEY = "controlvector.model_hint"
_COUNT_KEY = "controlvector.layer_count"
_META_KEY = "persona_explorer.metadata"


def save(vec: PersonaVector, path: Path, model_hint: str) -> Path:
    """Write layers 1..n-1 of ``vec``; layer 0 and the embedding are left out (see
    :func:`persona_explorer.vectors.files.save_notes`)."""
    if not isinstance(model_hint, str) or not model_hint.strip():
        # GGUFWriter.add_string silently skips empty strings, which would drop the key.
        raise InputError("model_hint must be a non-empty llama.cpp architecture name, e.g. 'llama'")
    meta = _file_json(vec)
    rows = [vec.vectors[k].numpy() for k in range(1, vec.n_layers)]

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), arch=_ARCH)
        try:
            writer.add_string(_HINT_KEY, model_hint)
            writer.add_uint32(_COUNT_KEY, len(rows))
            writer.add_string(_META_KEY, meta)
            for k, row in enumerate(rows, start=1):
                writer.add_tensor(f"direction.{k}", row)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    return atomic_write(path, write)


# GGUF value types (gguf.GGUFValueType) -> byte size.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_UINT32, _STRING, _ARRAY = 4, 8, 9
# ggml tensor types a direction may have -> (numpy type code, bytes per element).
_FLOAT_TYPES = {0: ("f4", 4), 1: ("f2", 2), 28: ("f8", 8)}
_MAX_KV = 4096
# One direction per layer (llama.cpp sums duplicates such as direction.5 and direction.05, so
# a few extra are allowed).
_MAX_TENSORS = _MAX_LAYERS + 16
# A control vector has no arrays at all; a model's tokenizer has hundreds of thousands.
_MAX_ARRAY_ITEMS = 65536
_MAX_KEY_BYTES = 1024
_MAX_NAME_BYTES = 256  # ggml itself allows 63
_MAX_DIMS = 4  # GGML_MAX_DIMS
_DEFAULT_ALIGNMENT = 32


class _Cursor:
    """Reads the header's integers and strings, refusing to step past the end."""

    def __init__(self, data: mmap.mmap, order: str, name: str) -> None:
        self.data, self.order, self.name, self.off = data, order, name, 0
        self.array_items = 0

    def take(self, n: int) -> int:
        if n < 0 or self.off + n > len(self.data):
            raise VectorFileError(f"{self.name}: GGUF header is truncated or corrupt")
        start = self.off
        self.off += n
        return start

    def u32(self) -> int:
        return struct.unpack_from(self.order + "I", self.data, self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack_from(self.order + "Q", self.data, self.take(8))[0]

    def span(self, limit: int, what: str) -> slice:
        """Where the next string's bytes are (not copied: most are never looked at)."""
        n = self.u64()
        if n > limit:
            raise VectorFileError(
                f"{self.name}: GGUF {what} is {_human(n)}; at most {_human(limit)} is read"
            )
        start = self.take(n)
        return slice(start, start + n)

    def string(self, limit: int, what: str) -> bytes:
        return self.data[self.span(limit, what)]

    def value(self, vtype: int) -> slice | int | None:
        """Where a string is, an unsigned 32-bit integer's value, or None for a value skipped."""
        if vtype == _UINT32:
            return self.u32()
        if vtype in _SCALAR_SIZES:
            self.take(_SCALAR_SIZES[vtype])
        elif vtype == _STRING:
            return self.span(MAX_META_JSON_BYTES, "string value")
        elif vtype == _ARRAY:
            itype, count = self.u32(), self.u64()
            self.array_items += count
            if self.array_items > _MAX_ARRAY_ITEMS:
                raise VectorFileError(
                    f"{self.name}: GGUF arrays hold more than {_MAX_ARRAY_ITEMS} items; too "
                    "many for a control vector (is this a model?)"
                )
            if itype in _SCALAR_SIZES:
                self.take(count * _SCALAR_SIZES[itype])
            elif itype == _STRING:
                for _ in range(count):
                    self.take(self.u64())
            else:
                raise VectorFileError(f"{self.name}: unsupported GGUF array item type {itype}")
        else:
            raise VectorFileError(f"{self.name}: unknown GGUF value type {vtype}")
        return None


@dataclass(frozen=True)
class _TensorInfo:
    name: str
    layer: int
    width: int
    ggml_type: int
    start: int  # absolute, in the file
    end: int


@dataclass(frozen=True)
class _Gguf:
    data: mmap.mmap
    order: str
    fields: dict[str, tuple[int, slice | int | None]]  # key -> (value type, Cursor.value)
    tensors: list[_TensorInfo]


def _walk(data: mmap.mmap, path: Path, expect: _Expect) -> _Gguf:
    """Walk the whole header with bounds checks, and check every tensor's declared name,
    type, shape and byte span (inside the file, not overlapping another) against the model
    and the byte budget. Reads no tensor data.

    gguf.GGUFReader trusts the header: array lengths (a count of 2**63 loops practically
    forever), tensor counts (65k tensors take seconds), and tensor offsets (4096 tensors
    pointing at the same 4 MB become 16 GB of copies).
    """
    name = path.name
    if data[:4] != b"GGUF":
        raise VectorFileError(
            f"{name} is not a GGUF file (bad magic); expected a llama.cpp control vector"
        )
    if len(data) < 24:
        raise VectorFileError(f"{name}: GGUF header is truncated")
    order = "<"
    (version,) = struct.unpack_from("<I", data, 4)
    if version & 0xFFFF == 0:  # written on a big-endian machine
        order = ">"
        (version,) = struct.unpack_from(">I", data, 4)
    if version not in (2, 3):
        raise VectorFileError(f"{name}: GGUF version {version} is not supported (2 or 3)")
    cur = _Cursor(data, order, name)
    cur.off = 8
    n_tensors, n_kv = cur.u64(), cur.u64()
    if n_tensors > _MAX_TENSORS or n_kv > _MAX_KV:
        raise VectorFileError(
            f"{name}: GGUF header claims {n_tensors} tensors and {n_kv} keys; a control "
            f"vector has at most {_MAX_TENSORS} tensors (one per layer) and {_MAX_KV} keys"
        )
    fields: dict[str, tuple[int, slice | int | None]] = {}
    for _ in range(n_kv):
        key = cur.string(_MAX_KEY_BYTES, "key").decode("utf-8", "replace")
        if key in fields:
            raise VectorFileError(f"{name}: GGUF key {key[:80]!r} appears twice")
        vtype = cur.u32()
        fields[key] = (vtype, cur.value(vtype))

    arch = _string(_Gguf(data, order, fields, []), "general.architecture", path)
    if arch != _ARCH:
        raise VectorFileError(
            f"{name}: GGUF architecture is {arch!r}; expected {_ARCH!r} "
            "(a llama.cpp control vector, not a model)"
        )

    raw_infos = []
    for _ in range(n_tensors):
        tname = cur.string(_MAX_NAME_BYTES, "tensor name")
        n_dims = cur.u32()
        if n_dims > _MAX_DIMS:
            raise VectorFileError(
                f"{name}: GGUF tensor with {n_dims} dimensions; ggml has at most {_MAX_DIMS}"
            )
        dims = [cur.u64() for _ in range(n_dims)]
        raw_infos.append((tname, dims, cur.u32(), cur.u64()))

    align_type, alignment = fields.get("general.alignment", (_UINT32, _DEFAULT_ALIGNMENT))
    if align_type != _UINT32 or not isinstance(alignment, int):
        raise VectorFileError(f"{name}: GGUF general.alignment must be a uint32")
    if alignment == 0 or alignment & (alignment - 1):
        raise VectorFileError(f"{name}: GGUF alignment {alignment} is not a power of two")
    data_start = -(-cur.off // alignment) * alignment

    tensors = [_tensor_info(path, raw, data_start, len(data), expect) for raw in raw_infos]
    # llama.cpp refuses such a file too; summing the two would hide it.
    if len({t.name for t in tensors}) != len(tensors):
        raise VectorFileError(f"{name}: a GGUF tensor name appears twice")
    spans = sorted((t.start, t.end, t.name) for t in tensors)
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise VectorFileError(
                f"{name}: the data of GGUF tensors {first!r} and {second!r} overlap"
            )
    widths = {t.width for t in tensors}
    if len(widths) > 1:
        raise VectorFileError(f"{name}: direction tensors differ in length {sorted(widths)}")
    # Every row becomes a float32 copy before rows naming the same layer are summed.
    expect.check_bytes(
        path, "its direction tensors", sum(max(t.end - t.start, t.width * 4) for t in tensors)
    )
    return _Gguf(data, order, fields, tensors)


def _tensor_info(
    path: Path, raw: tuple[bytes, list[int], int, int], data_start: int, size: int, expect: _Expect
) -> _TensorInfo:
    """One tensor's declared name, type, shape and span, checked before its data is read."""
    raw_name, dims, ggml_type, offset = raw
    try:
        tname = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise VectorFileError(f"{path.name}: a GGUF tensor name is not valid UTF-8") from None
    m = re.fullmatch(r"direction\.(\d{1,9})", tname)
    if m is None:
        raise VectorFileError(
            f"{path.name}: unexpected tensor {tname[:80]!r}; a control vector holds only "
            "direction.<layer> tensors"
        )
    k = int(m[1])
    if k >= _MAX_LAYERS:
        raise VectorFileError(f"{path.name}: {tname} is beyond {_MAX_LAYERS} layers")
    if expect.n_layers is not None and k >= expect.n_layers:
        raise VectorMismatchError(
            f"{path.name} holds {tname}; a model with {expect.n_layers} layers has no layer {k}"
        )
    if ggml_type not in _FLOAT_TYPES:
        type_name = (
            gguf.GGMLQuantizationType(ggml_type).name
            if ggml_type in gguf.GGMLQuantizationType._value2member_map_
            else str(ggml_type)
        )
        raise VectorFileError(
            f"{path.name}: {tname} has type {type_name}; expected F32 (or F16/F64)"
        )
    if len(dims) != 1:
        raise VectorFileError(f"{path.name}: {tname} has {len(dims)} dimensions; expected 1")
    (width,) = dims
    expect.check_width(path, tname, width)
    start = data_start + offset
    end = start + width * _FLOAT_TYPES[ggml_type][1]
    if end > size:
        raise VectorFileError(f"{path.name}: the data of {tname} lies outside the file")
    return _TensorInfo(tname, k, width, ggml_type, start, end)


def _string(g: _Gguf, key: str, path: Path) -> str | None:
    fld = g.fields.get(key)
    if fld is None:
        return None
    vtype, where = fld
    if vtype != _STRING or not isinstance(where, slice):
        raise VectorFileError(f"{path.name}: GGUF key {key!r} should be a string")
    try:
        return g.data[where].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VectorFileError(f"{path.name}: GGUF key {key!r} is not valid UTF-8") from exc


def _directions(g: _Gguf) -> dict[int, torch.Tensor]:
    """The ``direction.{k}`` tensors by layer k, as float32 copies of their checked spans."""
    directions: dict[int, torch.Tensor] = {}
    for t in g.tensors:
        dtype = np.dtype(g.order + _FLOAT_TYPES[t.ggml_type][0])
        # A bytes copy first: a numpy view would pin the mmap open.
        row = torch.from_numpy(
            np.frombuffer(g.data[t.start : t.end], dtype=dtype).astype(np.float32)
        )
        # llama.cpp sums directions that name the same layer ("direction.5", "direction.05").
        directions[t.layer] = directions[t.layer] + row if t.layer in directions else row
    return directions


@dataclass(frozen=True)
class _Contents:
    directions: dict[int, torch.Tensor]
    n_layers: int
    d_model: int
    hint: str | None
    ours: dict[str, Any] | None  # our stored fields, if the file has them


def _read(path: Path, expect: _Expect) -> _Contents:
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        g = _walk(data, path, expect)
        hint = _string(g, _HINT_KEY, path)
        ours_raw = _string(g, _META_KEY, path)
        ours: dict[str, Any] | None = None
        if ours_raw is not None:
            ours = _parse_json(ours_raw, path, f"{_META_KEY!r}")
            if not isinstance(ours, dict):
                raise VectorFileError(f"{path.name}: {_META_KEY!r} is not a JSON object")
        top = max((t.layer for t in g.tensors), default=-1) + 1
        n = _layer_count(path, top, ours, expect.n_layers)
        if g.tensors:
            d_model = g.tensors[0].width
        elif ours and isinstance(ours.get("d_model"), int) and ours["d_model"] >= 1:
            d_model = ours["d_model"]
            expect.check_width(path, "the stored d_model", d_model)
        else:
            raise VectorFileError(f"{path.name} holds no direction tensors")
        if n < 1:
            raise VectorFileError(f"{path.name} holds no layers")
        # The zero-padded matrix, checked before any data is read.
        expect.check_bytes(path, f"{n} layers x d_model {d_model}", n * d_model * 4)
        directions = _directions(g)
    return _Contents(directions, n, d_model, hint, ours)


def _layer_count(path: Path, min_n: int, ours: dict[str, Any] | None, n_layers: int | None) -> int:
    """The vector's layer count: the caller's, else ours as stored, else ``min_n`` (the
    highest direction k + 1)."""
    meta_n = ours.get("n_layers") if ours else None
    if meta_n is not None and (
        not isinstance(meta_n, int) or isinstance(meta_n, bool) or not 1 <= meta_n <= _MAX_LAYERS
    ):
        raise VectorFileError(f"{path.name}: stored n_layers {meta_n!r} is invalid")
    if meta_n is not None and meta_n < min_n:
        raise VectorFileError(
            f"{path.name}: stored n_layers {meta_n} but holds direction.{min_n - 1}"
        )
    if n_layers is None:
        return meta_n if meta_n is not None else min_n
    if n_layers < min_n:
        raise VectorMismatchError(
            f"{path.name} holds direction.{min_n - 1}; a model with {n_layers} layers "
            f"has no layer {min_n - 1}"
        )
    if meta_n is not None and meta_n != n_layers:
        raise VectorMismatchError(
            f"{path.name} was made for {meta_n} layers; the model has {n_layers}"
        )
    return n_layers


def load(path: Path, expect: _Expect) -> PersonaVector:
    """Read ``path``; missing layers (always layer 0) become zero rows. ``expect.n_layers``
    pads a foreign file, which does not record its layer count, to the model's."""
    got = _read(path, expect)
    vectors = torch.zeros(got.n_layers, got.d_model, dtype=torch.float32)
    for k, row in got.directions.items():
        vectors[k] = row
    vectors = _matrix_from_file(vectors, path, "the direction tensors")

    if got.ours is not None:
        fields = _fields_from_ours(
            got.ours, path, (got.n_layers, got.d_model), f"the {_META_KEY!r} key"
        )
    else:
        fields = {
            "name": path.stem,
            "variant": "imported",
            "metadata": {"source_format": "gguf", "source_file": path.name},
        }
    if got.hint is not None:
        fields["metadata"] = {**fields["metadata"], "model_hint": got.hint}
    return _build(path, vectors=vectors, **fields)
