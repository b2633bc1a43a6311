"""llama.cpp control vectors: ``.gguf`` files for ``--control-vector`` (as repeng writes them).

Row layout: one 1-D F32 tensor ``direction.{k}`` [d_model] per layer, added by llama.cpp to the
output of block k, i.e. our layer k. llama.cpp refuses ``direction.0``, so layer 0 is never
written, and there is no row for the embedding output. Directions that name the same layer
are summed, as llama.cpp does. The file records no layer count of its own
(``controlvector.layer_count`` counts tensors), so a foreign file has max k + 1 layers unless
the caller knows better; ours also carry our fields as JSON under ``persona_explorer.metadata``.

``gguf.GGUFReader`` trusts the header's lengths, so :func:`_precheck` walks the key/value
header with bounds checks first.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import gguf
import torch

from ..errors import InputError
from ..fileio import atomic_write
from ..vectors import PersonaVector, VectorMismatchError
from .common import (
    _MAX_LAYERS,
    MAX_VECTOR_FILE_BYTES,
    VectorFileError,
    _build,
    _fields_from_ours,
    _file_json,
    _matrix_from_file,
    _short,
)

__all__ = ["load", "save"]

_ARCH = "controlvector"
_HINT_KEY = "controlvector.model_hint"
_COUNT_KEY = "controlvector.layer_count"
_META_KEY = "persona_explorer.metadata"


def save(vec: PersonaVector, path: Path, model_hint: str) -> Path:
    """Write layers 1..n-1 of ``vec``; layer 0 and the embedding are left out (see
    :func:`persona_explorer.vector_files.save_notes`)."""
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


# GGUF value types (gguf.GGUFValueType) -> byte size, for the header pre-check.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_MAX_KV = 4096
_MAX_TENSORS = 65536
_MAX_ARRAY = 65536


class _Cursor:
    """Reads the header's integers and skips its values, refusing to step past the end."""

    def __init__(self, data: bytes, order: str, name: str) -> None:
        self.data, self.order, self.name, self.off = data, order, name, 0

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

    def skip_value(self, vtype: int) -> None:
        if vtype in _SCALAR_SIZES:
            self.take(_SCALAR_SIZES[vtype])
        elif vtype == _STRING:
            self.take(self.u64())
        elif vtype == _ARRAY:
            itype, count = self.u32(), self.u64()
            if count > _MAX_ARRAY:
                raise VectorFileError(
                    f"{self.name}: GGUF array of {count} items is too large for a control vector"
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


def _precheck(path: Path) -> None:
    """Walk the GGUF key/value header with bounds checks before GGUFReader does.

    GGUFReader trusts array lengths: an array whose items run past the end of the file
    reads as empty views without error, so a crafted count of 2**63 makes it loop
    practically forever. Tensor infos need no such walk: past the end GGUFReader raises.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:4] != b"GGUF":
        raise VectorFileError(
            f"{path.name} is not a GGUF file (bad magic); expected a llama.cpp control vector"
        )
    if len(data) < 24:
        raise VectorFileError(f"{path.name}: GGUF header is truncated")
    order = "<"
    (version,) = struct.unpack_from("<I", data, 4)
    if version & 0xFFFF == 0:  # written on a big-endian machine
        order = ">"
        (version,) = struct.unpack_from(">I", data, 4)
    if version not in (2, 3):
        raise VectorFileError(f"{path.name}: GGUF version {version} is not supported (2 or 3)")
    cur = _Cursor(data, order, path.name)
    cur.off = 8
    n_tensors, n_kv = cur.u64(), cur.u64()
    if n_tensors > _MAX_TENSORS or n_kv > _MAX_KV:
        raise VectorFileError(
            f"{path.name}: GGUF header claims {n_tensors} tensors and {n_kv} keys; "
            "too many for a control vector"
        )
    for _ in range(n_kv):
        cur.take(cur.u64())  # key
        cur.skip_value(cur.u32())


def _string(reader: gguf.GGUFReader, key: str, path: Path) -> str | None:
    fld = reader.get_field(key)
    if fld is None:
        return None
    if fld.types != [gguf.GGUFValueType.STRING]:
        raise VectorFileError(f"{path.name}: GGUF key {key!r} should be a string")
    try:
        return str(fld.contents())
    except UnicodeDecodeError as exc:
        raise VectorFileError(f"{path.name}: GGUF key {key!r} is not valid UTF-8") from exc


def _directions(reader: gguf.GGUFReader, path: Path) -> dict[int, torch.Tensor]:
    """The ``direction.{k}`` tensors by layer k, as float32 copies."""
    float_types = {
        gguf.GGMLQuantizationType.F32,
        gguf.GGMLQuantizationType.F16,
        gguf.GGMLQuantizationType.F64,
    }
    directions: dict[int, torch.Tensor] = {}
    for t in reader.tensors:
        m = re.fullmatch(r"direction\.(\d+)", t.name)
        if m is None:
            raise VectorFileError(
                f"{path.name}: unexpected tensor {t.name!r}; a control vector holds only "
                "direction.<layer> tensors"
            )
        k = int(m[1])
        if k >= _MAX_LAYERS:
            raise VectorFileError(f"{path.name}: {t.name} is beyond {_MAX_LAYERS} layers")
        if t.tensor_type not in float_types:
            raise VectorFileError(
                f"{path.name}: {t.name} has type {t.tensor_type.name}; expected F32 (or F16/F64)"
            )
        if len(t.shape) != 1:
            raise VectorFileError(
                f"{path.name}: {t.name} has {len(t.shape)} dimensions; expected 1"
            )
        # astype copies out of the memmap and into native byte order.
        row = torch.from_numpy(t.data.astype("float32")).reshape(-1)
        # llama.cpp sums directions that name the same layer ("direction.5", "direction.05").
        directions[k] = directions[k] + row if k in directions else row
    return directions


def _read(path: Path) -> tuple[dict[int, torch.Tensor], str | None, dict[str, Any] | None]:
    """The file's directions by layer, its model hint and our stored fields (if it has them)."""
    _precheck(path)
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:
        raise VectorFileError(f"{path.name} is not a readable GGUF file ({_short(exc)})") from exc

    arch = _string(reader, "general.architecture", path)
    if arch != _ARCH:
        raise VectorFileError(
            f"{path.name}: GGUF architecture is {arch!r}; expected {_ARCH!r} "
            "(a llama.cpp control vector, not a model)"
        )
    hint = _string(reader, _HINT_KEY, path)
    ours_raw = _string(reader, _META_KEY, path)
    directions = _directions(reader, path)
    del reader  # releases the memmap

    ours: dict[str, Any] | None = None
    if ours_raw is not None:
        try:
            ours = json.loads(ours_raw)
        except json.JSONDecodeError as exc:
            raise VectorFileError(f"{path.name}: {_META_KEY!r} is not JSON") from exc
        if not isinstance(ours, dict):
            raise VectorFileError(f"{path.name}: {_META_KEY!r} is not a JSON object")
    return directions, hint, ours


def _layer_count(
    path: Path,
    directions: dict[int, torch.Tensor],
    ours: dict[str, Any] | None,
    n_layers: int | None,
) -> int:
    """The vector's layer count: the caller's, else ours as stored, else the highest k + 1."""
    meta_n = ours.get("n_layers") if ours else None
    if meta_n is not None and (
        not isinstance(meta_n, int) or isinstance(meta_n, bool) or not 1 <= meta_n <= _MAX_LAYERS
    ):
        raise VectorFileError(f"{path.name}: stored n_layers {meta_n!r} is invalid")
    min_n = max(directions) + 1 if directions else 0
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


def load(path: Path, n_layers: int | None) -> PersonaVector:
    """Read ``path``; missing layers (always layer 0) become zero rows. ``n_layers`` pads a
    foreign file, which does not record its layer count, to the model's."""
    directions, hint, ours = _read(path)
    widths = {int(r.shape[0]) for r in directions.values()}
    if len(widths) > 1:
        raise VectorFileError(f"{path.name}: direction tensors differ in length {sorted(widths)}")
    n = _layer_count(path, directions, ours, n_layers)

    if widths:
        d_model = widths.pop()
    elif ours and isinstance(ours.get("d_model"), int) and ours["d_model"] >= 1:
        d_model = ours["d_model"]
    else:
        raise VectorFileError(f"{path.name} holds no direction tensors")
    if n < 1:
        raise VectorFileError(f"{path.name} holds no layers")
    if n * d_model * 4 > MAX_VECTOR_FILE_BYTES:
        raise VectorFileError(f"{path.name}: {n} layers x d_model {d_model} is implausibly large")

    vectors = torch.zeros(n, d_model, dtype=torch.float32)
    for k, row in directions.items():
        vectors[k] = row
    vectors = _matrix_from_file(vectors, path, "the direction tensors")

    if ours is not None:
        fields = _fields_from_ours(ours, path, vectors, f"the {_META_KEY!r} key")
    else:
        fields = {
            "name": path.stem,
            "variant": "imported",
            "metadata": {"source_format": "gguf", "source_file": path.name},
        }
    if hint is not None:
        fields["metadata"] = {**fields["metadata"], "model_hint": hint}
    return _build(path, vectors=vectors, **fields)
