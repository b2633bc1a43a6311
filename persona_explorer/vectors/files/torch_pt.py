"""``.pt`` / ``.pth`` tensors in the two layouts other projects use.

Row layouts:

* ``persona_vectors`` (Chen et al.): [n_layers + 1, d_model]; row 0 is the embedding output,
  row l + 1 is layer l. An all-zero row 0 reads back as "no embedding".
* ``assistant_axis`` (Lu et al.): [n_layers, d_model]; row l is layer l.

A file holds one bare tensor (what we write) or a dict with one (a known key, else the only 2-D
tensor). Nothing else survives: the name and variant come from persona_vectors' file naming
``{trait}_{response_avg|prompt_avg|prompt_last}_diff.pt`` (see :func:`persona_vectors_stem`).

Files are read with ``torch.load(weights_only=True)`` only, so a pickle never runs code, and
only after :func:`_check_archive` has checked the zip (stored records, a small pickle, storages
within the byte budget) and replayed the pickle's stack effects; the tensor is then checked
(:func:`_check_owned`) while still memory-mapped, before anything copies it.
"""

from __future__ import annotations

import math
import pickletools
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from persona_explorer.core.fileio import atomic_write
from persona_explorer.vectors.files.common import (
    VectorFileError,
    VectorLayout,
    _build,
    _Expect,
    _human,
    _matrix_from_file,
    _pick_tensor_key,
)
from persona_explorer.vectors.persona_vector import PersonaVector, VectorMismatchError

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


# torch.save writes a zip: {archive}/data.pkl (the pickled structure), {archive}/data/{key} (one
# record per storage, stored, never compressed) and a few small version records.
_MAX_ZIP_ENTRIES = 1024
_MAX_CENTRAL_DIR_BYTES = 1024 * 1024
# A tensor or a dict of tensors pickles to a few hundred bytes; 64 KiB leaves room for a dict
# with notes and lists, and keeps the unpickling (and our scan of it) to milliseconds.
_MAX_PICKLE_BYTES = 64 * 1024
# The version, byteorder and serialization id records hold a few bytes each.
_MAX_SMALL_RECORD_BYTES = 4096
# Bytes per element of the storage classes torch.save names in a persistent id.
_STORAGE_ITEM_BYTES = {
    "UntypedStorage": 1,
    "BoolStorage": 1,
    "ByteStorage": 1,
    "CharStorage": 1,
    "ShortStorage": 2,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "IntStorage": 4,
    "FloatStorage": 4,
    "LongStorage": 8,
    "DoubleStorage": 8,
}
# The globals a torch.save of tensors, dicts, lists and plain values names (bytes pickle as
# _codecs.encode); torch also allows sparse, quantized, meta and nested tensors, which some
# rebuild by allocating their declared size, and a vector needs none of them.
_TENSOR_REBUILDS = frozenset(
    f"torch._utils {name}"
    for name in (
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
    )
)
_PLAIN_GLOBALS = frozenset({"collections OrderedDict", "_codecs encode"})
# What the scan below needs to know of the opcodes torch's weights_only unpickler implements;
# it refuses every other opcode, and so do we.
_PUSH_ATOM = frozenset(
    {"NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "BINFLOAT", "LONG1"}
    | {"BINUNICODE", "SHORT_BINSTRING"}
)
_PUSH_EMPTY = frozenset({"EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"})
_TUPLE_N = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_MARK = object()


class _Value:
    """What the scan knows of one unpickled value: its kind (``atom``, ``global``, ``tensor``,
    ``storage`` or ``container``), and for atoms, globals and tuples, enough to check a
    storage reference."""

    __slots__ = ("items", "kind", "value")

    def __init__(self, kind: str, value: Any = None, items: list[_Value] | None = None) -> None:
        self.kind, self.value, self.items = kind, value, items


def _unsafe(path: Path, why: str) -> VectorFileError:
    return VectorFileError(
        f"{path.name} is not a tensor file torch can load safely: {why}. Expected a tensor "
        "(or a dict of tensors) saved with torch.save; pickled objects are never executed"
    )


def _scan_pickle(data: bytes, path: Path, records: dict[str, int]) -> None:
    """Replay the pickle's stack effects without building anything, before torch unpickles it.

    torch's weights_only unpickler runs no code, but it still hashes dict keys and follows
    memo references: a pickle of a few hundred bytes can name a tuple shared at every level
    (``t = (t, t)`` 60 times), whose hash takes 2**60 steps inside torch.load. A torch.save
    pickle only shares strings, globals, storages and whole tensors, so sharing anything else
    is refused. Every storage reference must name a record of exactly the size it claims, so
    nothing the pickle says can make torch read or map more than the records hold.
    """
    stack: list[Any] = []
    memo: dict[int, _Value] = {}

    def top() -> _Value:
        if not stack or stack[-1] is _MARK:
            raise _unsafe(path, "its pickle is malformed")
        return stack[-1]

    def pop() -> _Value:
        value = top()
        stack.pop()
        return value

    def pop_mark() -> list[_Value]:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1 :]
                del stack[i:]
                return items
        raise _unsafe(path, "its pickle is malformed")

    try:
        ops = list(pickletools.genops(data))
    except ValueError as exc:  # a truncated or garbled opcode stream
        raise _unsafe(path, "its pickle is malformed") from exc
    for opcode, arg, _pos in ops:
        name = opcode.name
        if name in _PUSH_ATOM:
            stack.append(_Value("atom", arg))
        elif name in _PUSH_EMPTY:
            stack.append(_Value("container", items=[] if name == "EMPTY_TUPLE" else None))
        elif name == "GLOBAL":
            stack.append(_Value("global", _check_global(str(arg), path)))
        elif name == "MARK":
            stack.append(_MARK)
        elif name == "TUPLE":
            stack.append(_Value("container", items=pop_mark()))
        elif name in _TUPLE_N:
            items = [pop() for _ in range(_TUPLE_N[name])][::-1]
            stack.append(_Value("container", items=items))
        elif name in ("APPEND", "SETITEM", "BUILD"):
            for _ in range(2 if name == "SETITEM" else 1):
                pop()
            top()  # the container (or tensor, for BUILD) they go into
        elif name in ("APPENDS", "SETITEMS"):
            pop_mark()
            top()
        elif name in ("REDUCE", "NEWOBJ"):
            pop()  # arguments
            func = pop()
            kind = "container"  # OrderedDict
            if func.kind == "global" and func.value in _TENSOR_REBUILDS:
                kind = "tensor"
            elif func.kind == "global" and func.value == "_codecs encode":
                kind = "atom"  # bytes
            stack.append(_Value(kind))
        elif name == "BINPERSID":
            _check_storage_ref(pop(), path, records)
            stack.append(_Value("storage"))
        elif name in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = top()
        elif name in ("BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise _unsafe(path, "its pickle is malformed")
            if memo[arg].kind == "container":
                raise _unsafe(path, "its pickle shares a container between several places")
            stack.append(memo[arg])
        elif name == "STOP":
            return
        elif name != "PROTO":
            raise _unsafe(path, f"its pickle uses the {name} opcode, which torch.save never writes")
    raise _unsafe(path, "its pickle is truncated")


def _check_global(name: str, path: Path) -> str:
    module, _, attr = name.partition(" ")
    if (
        name in _TENSOR_REBUILDS
        or name in _PLAIN_GLOBALS
        or _storage_item_bytes(name) is not None
        or (module == "torch" and isinstance(getattr(torch, attr, None), torch.dtype))
    ):
        return name
    raise _unsafe(path, f"its pickle names {name[:80]!r}, which a vector file does not need")


def _storage_item_bytes(name: str) -> int | None:
    """Bytes per element of a storage class as torch.save names it ("torch FloatStorage")."""
    if name == "torch.storage UntypedStorage":
        return 1
    module, _, attr = name.partition(" ")
    return _STORAGE_ITEM_BYTES.get(attr) if module == "torch" else None


def _check_storage_ref(pid: _Value, path: Path, records: dict[str, int]) -> None:
    """A storage reference ('storage', torch.XStorage, key, location, numel) must name a
    record holding exactly numel elements."""
    items = pid.items or []
    fields = [(v.kind, v.value) for v in items]
    if (
        len(fields) != 5
        or fields[0] != ("atom", "storage")
        or fields[1][0] != "global"
        or fields[2][0] != "atom"
        or not isinstance(fields[2][1], str)
        or fields[4][0] != "atom"
        or not isinstance(fields[4][1], int)
    ):
        raise _unsafe(path, "its pickle refers to data in a way torch.save never writes")
    item_bytes = _storage_item_bytes(str(fields[1][1]))
    if item_bytes is None:
        raise _unsafe(path, f"it holds storage of an unsupported type {str(fields[1][1])[:60]!r}")
    key, numel = fields[2][1], fields[4][1]
    if key not in records:
        raise _unsafe(path, f"its pickle refers to a missing data record {key[:40]!r}")
    if numel < 0 or numel * item_bytes != records[key]:
        raise _unsafe(path, f"data record {key[:40]!r} does not hold the size its pickle claims")


def _zip_directory(path: Path, size: int) -> None:
    """Bound the zip's central directory before zipfile parses it (one ZipInfo per entry).

    Found the way both zipfile and torch's miniz find it: the end record in the last 22 bytes
    (torch.save writes no comment) and, when its locator precedes that, the zip64 end record.
    The directory must end where those records begin, so both readers see the same entries.
    """
    tail_len = min(size, 22 + 20 + 56)
    with open(path, "rb") as fh:
        fh.seek(size - tail_len)
        tail = fh.read(tail_len)
        eocd = tail[-22:]
        if len(eocd) < 22 or eocd[:4] != b"PK\x05\x06":
            raise _unsafe(path, "its zip directory is missing or followed by other data")
        _sig, _disk, _cd_disk, _n_here, entries, cd_size, cd_offset, _comment = struct.unpack(
            "<4sHHHHIIH", eocd
        )
        records_start = size - 22
        locator = tail[-42:-22]
        if len(locator) == 20 and locator[:4] == b"PK\x06\x07":
            (zip64_offset,) = struct.unpack_from("<Q", locator, 8)
            if zip64_offset + 56 > size - 42:
                raise _unsafe(path, "its zip64 directory record is out of place")
            fh.seek(zip64_offset)
            zip64 = fh.read(56)
            if zip64[:4] != b"PK\x06\x06":
                raise _unsafe(path, "its zip64 directory record is missing")
            wide = struct.unpack_from("<QQQ", zip64, 32)
            # A reader that trusts the 32-bit record where it is not saturated would see
            # another directory than one that trusts the zip64 record: both must agree.
            for narrow, value, full in zip(
                (entries, cd_size, cd_offset), wide, (0xFFFF, 2**32 - 1, 2**32 - 1), strict=True
            ):
                if narrow not in (value, full):
                    raise _unsafe(path, "its zip end records disagree")
            entries, cd_size, cd_offset = wide
            records_start = zip64_offset
    if entries > _MAX_ZIP_ENTRIES or cd_size > _MAX_CENTRAL_DIR_BYTES:
        raise _unsafe(
            path,
            f"its zip holds {entries} entries in a {_human(cd_size)} directory; a vector file "
            f"has at most {_MAX_ZIP_ENTRIES}",
        )
    if cd_offset + cd_size != records_start:
        raise _unsafe(path, "its zip directory is not where its end record says")


def _check_archive(path: Path, expect: _Expect) -> None:
    """Check the zip a torch.save file is, before torch opens it: stored records only, one
    small pickle, storages within the byte budget; then scan the pickle."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"PK\x03\x04":
        raise _unsafe(
            path,
            "it is not in the zip format torch.save has written since PyTorch 1.6 (a legacy "
            "torch file or a plain pickle; load it and torch.save it again with a current "
            "PyTorch)",
        )
    _zip_directory(path, size)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise _unsafe(path, "it is not a readable zip archive") from exc
    with archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            raise _unsafe(path, "its zip names an entry twice")
        pickles = [
            i for i in infos if i.filename.count("/") == 1 and i.filename.endswith("/data.pkl")
        ]
        if len(pickles) != 1:
            raise _unsafe(path, "it has no single data.pkl record")
        prefix = pickles[0].filename.removesuffix("data.pkl")
        records: dict[str, int] = {}
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                raise _unsafe(
                    path,
                    f"its record {info.filename[:60]!r} is compressed; torch.save never compresses",
                )
            if info.header_offset + info.compress_size > size:
                raise _unsafe(
                    path, f"its record {info.filename[:60]!r} runs past the end of the file"
                )
            if not info.filename.startswith(prefix):
                raise _unsafe(path, "its records are not all in one archive folder")
            if info.filename.startswith(prefix + "data/"):
                records[info.filename.removeprefix(prefix + "data/")] = info.file_size
                continue
            cap = _MAX_PICKLE_BYTES if info is pickles[0] else _MAX_SMALL_RECORD_BYTES
            if info.file_size > cap:
                raise _unsafe(
                    path,
                    f"its record {info.filename[:60]!r} is {_human(info.file_size)}; at most "
                    f"{_human(cap)} is read",
                )
        expect.check_bytes(path, "its tensor data", sum(records.values()))
        try:
            pickled = archive.read(pickles[0])
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise _unsafe(path, "its data.pkl record is unreadable") from exc
    _scan_pickle(pickled, path, records)


def _check_owned(tensor: torch.Tensor, path: Path, expect: _Expect) -> None:
    """The chosen tensor, before anything copies it: a plain CPU float matrix that fits the
    budget and the model, owning exactly its storage (no expanded, overlapping or partial
    view, which a copy would inflate)."""
    if tensor.layout != torch.strided or tensor.device.type != "cpu":
        raise VectorFileError(
            f"{path.name}: the tensor must be a dense CPU tensor, got layout "
            f"{tensor.layout} on {tensor.device.type}"
        )
    if not tensor.dtype.is_floating_point:
        raise VectorFileError(
            f"{path.name}: the tensor must hold floating-point numbers, got dtype {tensor.dtype}; "
            "expected a finite float tensor [layers, d_model]"
        )
    shape = tuple(tensor.shape)
    expect.check_matrix(path, "the tensor", shape)
    needed = math.prod(shape) * tensor.element_size()
    dims = sorted((st, n) for st, n in zip(tensor.stride(), shape, strict=True) if n > 1)
    dense, span = True, 1
    for stride, n in dims:
        dense = dense and stride == span
        span *= n
    if not dense or tensor.storage_offset() != 0 or tensor.untyped_storage().nbytes() != needed:
        raise VectorFileError(
            f"{path.name}: the tensor {list(shape)} is a view (strides {list(tensor.stride())}) "
            f"over {_human(tensor.untyped_storage().nbytes())} of storage; expected a tensor "
            "that owns exactly its data (torch.save(tensor.clone()))"
        )


def _read_tensor(path: Path, expect: _Expect) -> tuple[torch.Tensor, str | None]:
    """The file's [rows, d_model] tensor, checked but still memory-mapped (not yet copied),
    and the dict key it was under (None for a bare one)."""
    _check_archive(path, expect)
    try:
        # mmap: storages stay in the file until _matrix_from_file copies the one tensor used.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        # torch's text advises weights_only=False, the one thing never to do with an upload.
        raise _unsafe(path, "it holds something other than tensors and plain values") from exc

    source_key: Any = None
    if isinstance(obj, dict):
        keys = list(obj)
        if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in keys):
            raise VectorFileError(f"{path.name}: a dict of tensors must have string keys")
        source_key = _pick_tensor_key(
            keys, lambda k: isinstance(obj[k], torch.Tensor) and obj[k].dim() == 2, path
        )
        obj = obj[source_key]
    if not isinstance(obj, torch.Tensor):
        raise VectorFileError(
            f"{path.name} holds a {type(obj).__name__}; expected a tensor "
            "[n_layers(+1), d_model] or a dict holding one"
        )
    _check_owned(obj, path, expect)
    return obj, None if source_key is None else str(source_key)


def load(path: Path, layout: VectorLayout | None, expect: _Expect) -> PersonaVector:
    """Read ``path``; with ``layout`` None it is told by ``expect.n_layers``, else assumed
    persona_vectors (and marked ``layout_assumed`` so a later mismatch can say so)."""
    mapped, source_key = _read_tensor(path, expect)
    rows = mapped.shape[0]
    n_layers = expect.n_layers

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
    has_embedding_row = layout == "persona_vectors"
    if has_embedding_row and rows < 2:
        raise VectorFileError(
            f"{path.name} has {rows} row; the persona_vectors layout needs an embedding row "
            "plus at least one layer (try layout='assistant_axis')"
        )
    if n_layers is not None and rows - has_embedding_row != n_layers:
        raise VectorMismatchError(
            f"{path.name} holds {rows - has_embedding_row} layers; the model has {n_layers} layers"
        )
    data = _matrix_from_file(mapped, path, "the tensor")

    embedding: torch.Tensor | None = None
    if has_embedding_row:
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
