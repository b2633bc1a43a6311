"""The PersonaVector value and the files it lives in.

Layer convention (the one place it is written down)
---------------------------------------------------
"Layer l" is the residual stream *after* decoder block l, counted from 0. It is
TransformerLens ``blocks.{l}.hook_resid_post`` and the output of HF decoder layer l
(HF ``hidden_states[l + 1]``; ``hidden_states[0]`` is the embedding output). A
PersonaVector stores one row per layer: ``vectors[l]`` belongs to layer l. Steering
with it means adding ``strength * vectors[l]`` to the output of block l.

Every file format has its own idea of what row k means, so each reader/writer below
translates at the boundary and nothing else in the project has to care:

* native ``.safetensors``: tensor ``vectors`` [n_layers, d_model], row l = layer l,
  plus optional ``embedding`` [d_model]; our fields are JSON in the safetensors
  metadata key ``persona_explorer``.
* persona_vectors ``.pt`` (Chen et al.): [n_layers + 1, d_model]; row 0 is the
  embedding output, row l + 1 is layer l.
* assistant_axis ``.pt`` (Lu et al.): [n_layers, d_model]; row l is layer l.
* GGUF control vectors (llama.cpp ``--control-vector``, repeng ``export_gguf``):
  1-D tensors ``direction.{k}`` added to the output of block k, i.e. our layer k.
  llama.cpp refuses ``direction.0``, so layer 0 cannot be exported.

Loading never executes code from a file: ``.pt`` goes through
``torch.load(weights_only=True)`` only, and GGUF headers are bounds-checked before
``gguf.GGUFReader`` walks them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import operator
import os
import re
import secrets
import stat
import struct
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import gguf
import safetensors
import safetensors.torch
import torch

__all__ = [
    "LAYER_CONVENTION",
    "MAX_VECTOR_FILE_BYTES",
    "PersonaVector",
    "Variant",
    "VectorFileError",
    "VectorLayout",
    "VectorMismatchError",
    "atomic_write",
    "check_fits",
    "describe",
    "load",
    "save",
]

LAYER_CONVENTION = "resid_post"
FORMAT_VERSION = 1
MAX_VECTOR_FILE_BYTES = 256 * 1024 * 1024

VectorLayout = Literal["persona_vectors", "assistant_axis"]
Variant = Literal["response", "prompt", "last", "imported", "custom"]

PathLike = str | os.PathLike[str]

_SAFETENSORS_META_KEY = "persona_explorer"
_GGUF_ARCH = "controlvector"
_GGUF_HINT_KEY = "controlvector.model_hint"
_GGUF_COUNT_KEY = "controlvector.layer_count"
_GGUF_META_KEY = "persona_explorer.metadata"
_PT_TENSOR_KEYS = ("vectors", "vector", "persona_vector", "persona_vectors", "axis")
# No real model has thousands of layers; the cap stops a crafted `direction.999999999`
# or n_layers field from allocating gigabytes of zero rows.
_MAX_LAYERS = 4096
# persona_vectors names its outputs `{trait}_{response_avg|prompt_avg|prompt_last}_diff.pt`.
_PV_NAME = re.compile(r"(?P<trait>.+)_(?P<kind>response_avg|prompt_avg|prompt_last)_diff")
_PV_VARIANT = {"response_avg": "response", "prompt_avg": "prompt", "prompt_last": "last"}


class VectorFileError(ValueError):
    """A vector file is malformed, unsupported or unsafe to read."""


class VectorMismatchError(ValueError):
    """A vector does not fit the model (or layer count) it is used with."""


# --------------------------------------------------------------------------- value


def _clean_tensor(value: Any, what: str, ndim: int) -> torch.Tensor:
    """Return `value` as a fresh, contiguous float32 CPU tensor, or raise ValueError."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(value).__name__}")
    if value.layout != torch.strided:
        raise ValueError(f"{what} must be a dense tensor, got layout {value.layout}")
    if not value.dtype.is_floating_point:
        raise ValueError(f"{what} must hold floating-point numbers, got dtype {value.dtype}")
    if value.dim() != ndim:
        shape = "[n_layers, d_model]" if ndim == 2 else "[d_model]"
        raise ValueError(f"{what} must be {ndim}-D {shape}, got shape {list(value.shape)}")
    if any(n < 1 for n in value.shape):
        raise ValueError(f"{what} must not be empty, got shape {list(value.shape)}")
    # clone(): the value must not alias a caller's (or a file's mmapped) buffer.
    out = value.detach().to(device="cpu", dtype=torch.float32).clone().contiguous()
    # Checked after the cast: float64 values beyond float32 range become inf here.
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{what} contains NaN or infinite values")
    return out


@dataclass(frozen=True, eq=False)
class PersonaVector:
    """Per-layer persona directions for one model, plus what we know about them.

    ``vectors[l]`` is layer l under the module's layer convention. Tensors are copied
    on construction; treat them as read-only. Equality is identity (tensors have no
    single truth value); compare fields with ``torch.equal`` where needed.
    """

    name: str
    vectors: torch.Tensor
    model_id: str = ""
    variant: str = "response"
    layer: int | None = None
    strength: float | None = None
    separation: tuple[float, ...] | None = None
    embedding: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.model_id, str):
            raise TypeError(f"model_id must be a string, got {type(self.model_id).__name__}")
        if self.variant not in get_args(Variant):
            raise ValueError(f"variant must be one of {get_args(Variant)}, got {self.variant!r}")

        vectors = _clean_tensor(self.vectors, "vectors", 2)
        object.__setattr__(self, "vectors", vectors)
        n_layers, d_model = vectors.shape

        if self.layer is not None:
            if isinstance(self.layer, bool):
                raise TypeError("layer must be an int, got a bool")
            layer = operator.index(self.layer)
            if not 0 <= layer < n_layers:
                raise ValueError(f"layer {layer} is out of range for {n_layers} layers")
            object.__setattr__(self, "layer", layer)

        if self.strength is not None:
            if isinstance(self.strength, bool) or not isinstance(self.strength, numbers.Real):
                raise TypeError(f"strength must be a number, got {self.strength!r}")
            strength = float(self.strength)
            if not math.isfinite(strength):
                raise ValueError(f"strength must be finite, got {strength}")
            object.__setattr__(self, "strength", strength)

        if self.separation is not None:
            raw = self.separation
            if isinstance(raw, torch.Tensor):
                raw = raw.detach().cpu().reshape(-1).tolist()
            if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
                raise TypeError("separation must be a sequence of numbers, one per layer")
            sep = tuple(float(s) for s in raw)
            if len(sep) != n_layers:
                raise ValueError(
                    f"separation has {len(sep)} values; expected one per layer ({n_layers})"
                )
            # NaN/inf would make best_layer meaningless and the JSON invalid.
            if not all(math.isfinite(s) for s in sep):
                raise ValueError("separation contains NaN or infinite values")
            object.__setattr__(self, "separation", sep)

        if self.embedding is not None:
            emb = _clean_tensor(self.embedding, "embedding", 1)
            if emb.shape[0] != d_model:
                raise ValueError(
                    f"embedding has {emb.shape[0]} values; expected d_model = {d_model}"
                )
            object.__setattr__(self, "embedding", emb)

        if not isinstance(self.metadata, Mapping):
            raise TypeError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        try:
            encoded = json.dumps(dict(self.metadata), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata must be JSON-serialisable: {exc}") from exc
        # Stored in its JSON form so a value compares equal to itself after a file round trip
        # (tuples would otherwise come back as lists) and callers' dicts are not aliased.
        object.__setattr__(self, "metadata", json.loads(encoded))

    def __repr__(self) -> str:
        return (
            f"PersonaVector(name={self.name!r}, n_layers={self.n_layers}, d_model={self.d_model}, "
            f"model_id={self.model_id!r}, variant={self.variant!r}, layer={self.layer}, "
            f"strength={self.strength})"
        )

    @property
    def n_layers(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def layer_norms(self) -> tuple[float, ...]:
        return tuple(float(x) for x in torch.linalg.vector_norm(self.vectors, dim=1).tolist())

    @property
    def best_layer(self) -> int | None:
        if self.separation is None:
            return None
        return max(range(self.n_layers), key=lambda i: self.separation[i])  # type: ignore[index]

    def _check_layer(self, layer: int) -> int:
        if isinstance(layer, bool):
            raise TypeError("layer must be an int, got a bool")
        layer = operator.index(layer)
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} is out of range for {self.n_layers} layers")
        return layer

    def at(self, layer: int) -> torch.Tensor:
        """The direction for layer `layer` (a copy, shape [d_model])."""
        return self.vectors[self._check_layer(layer)].clone()

    def unit(self, layer: int) -> torch.Tensor:
        """``at(layer) / |at(layer)|``; raises ValueError for an all-zero row."""
        v = self.at(layer)
        norm = torch.linalg.vector_norm(v)
        if float(norm) == 0.0:
            raise ValueError(f"{self.name}: layer {layer} is all zeros and has no direction")
        return v / norm

    def with_(self, **changes: Any) -> PersonaVector:
        return dataclasses.replace(self, **changes)

    def to_json_metadata(self) -> dict[str, Any]:
        """Everything but the tensors, JSON-ready (plus derived shape and norms)."""
        return {
            "name": self.name,
            "model_id": self.model_id,
            "variant": self.variant,
            "layer": self.layer,
            "strength": self.strength,
            "separation": None if self.separation is None else list(self.separation),
            "has_embedding": self.embedding is not None,
            "metadata": json.loads(json.dumps(self.metadata)),
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "layer_norms": list(self.layer_norms),
            "layer_convention": LAYER_CONVENTION,
        }


def describe(vec: PersonaVector) -> dict[str, Any]:
    """A JSON-ready summary (for ``info --json``)."""
    return {**vec.to_json_metadata(), "best_layer": vec.best_layer}


def _model_key(model_id: str) -> str:
    # "embedded:SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct" and a local
    # copy under another org name are the same weights for a vector's purposes.
    return model_id.rsplit(":", 1)[-1].rsplit("/", 1)[-1].strip().lower()


def check_fits(
    vec: PersonaVector, n_layers: int, d_model: int, model_id: str | None = None
) -> None:
    """Raise VectorMismatchError unless `vec` can steer a model of this shape (and id)."""
    loaded = f"the loaded model {model_id}" if model_id else "the loaded model"
    if (vec.n_layers, vec.d_model) != (n_layers, d_model):
        made = f" (made for {vec.model_id})" if vec.model_id else ""
        msg = (
            f"This vector fits a model with {vec.n_layers} layers and d_model {vec.d_model}{made}; "
            f"{loaded} has {n_layers} layers and d_model {d_model}."
        )
        if vec.metadata.get("layout_assumed") and vec.n_layers == n_layers - 1:
            msg += (
                " The file's layout was guessed as persona_vectors (embedding row first);"
                " if it is an assistant_axis file (one row per layer), load it with"
                " layout='assistant_axis'."
            )
        raise VectorMismatchError(msg)
    if model_id and vec.model_id and _model_key(model_id) != _model_key(vec.model_id):
        raise VectorMismatchError(
            f"This vector was made for {vec.model_id}, but {loaded} is loaded. Both have "
            f"{n_layers} layers and d_model {d_model}, but directions found in one model's "
            "residual stream do not carry over to another's."
        )


# --------------------------------------------------------------------------- writing


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write_fn: Callable[[Path], None]) -> Path:
    """Write a file so that readers see either the old file or the complete new one.

    `write_fn` receives the path of a fresh temporary file in the target's directory
    (so the final ``os.replace`` is a same-filesystem rename) and must write the whole
    file there; path-based because the GGUF and safetensors writers open files by name.
    On any error the temporary file is removed and the target is left untouched.
    """
    target = Path(path)
    directory = target.parent
    tmp = directory / f".{target.name[:200]}.{secrets.token_hex(6)}.tmp"
    # O_EXCL: never clobber someone else's file; mode 0o666 lets the umask decide, as open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    return target


def _extension(path: Path) -> str:
    ext = path.suffix.lower()
    if ext == ".pth":
        return ".pt"
    if ext not in (".safetensors", ".pt", ".gguf"):
        raise VectorFileError(
            f"{path.name}: unsupported file type {ext or '(no extension)'!r}; expected "
            ".safetensors (native), .pt (persona_vectors / assistant_axis) or .gguf "
            "(llama.cpp control vector)"
        )
    return ext


def _check_layout(layout: str) -> None:
    if layout not in get_args(VectorLayout):
        raise ValueError(f"layout must be one of {get_args(VectorLayout)}, got {layout!r}")


def save(
    vec: PersonaVector,
    path: PathLike,
    layout: VectorLayout | None = None,
    model_hint: str = "llama",
) -> Path:
    """Write `vec` atomically; the format follows the extension.

    ``.pt`` needs `layout`. `model_hint` (the llama.cpp architecture name) is used by
    ``.gguf`` only. GGUF cannot hold layer 0 or the embedding row; both are dropped.
    """
    if not isinstance(vec, PersonaVector):
        raise TypeError(f"save() needs a PersonaVector, got {type(vec).__name__}")
    target = Path(path)
    ext = _extension(target)
    if ext == ".pt":
        if layout is None:
            raise VectorFileError(
                f"{target.name}: a .pt file needs a layout: 'persona_vectors' "
                "(embedding row + one row per layer) or 'assistant_axis' (one row per layer)"
            )
        _check_layout(layout)
        return _save_pt(vec, target, layout)
    if layout is not None:
        raise VectorFileError(f"{target.name}: layout applies to .pt files only, not {ext}")
    if ext == ".safetensors":
        return _save_safetensors(vec, target)
    return _save_gguf(vec, target, model_hint)


def _file_json(vec: PersonaVector) -> str:
    return json.dumps(
        {**vec.to_json_metadata(), "format_version": FORMAT_VERSION},
        allow_nan=False,
        sort_keys=True,
    )


def _save_safetensors(vec: PersonaVector, path: Path) -> Path:
    tensors = {"vectors": vec.vectors}
    if vec.embedding is not None:
        tensors["embedding"] = vec.embedding
    header = {_SAFETENSORS_META_KEY: _file_json(vec), "format": "pt"}
    return atomic_write(
        path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=header)
    )


def _save_pt(vec: PersonaVector, path: Path, layout: VectorLayout) -> Path:
    if layout == "persona_vectors":
        emb = vec.embedding if vec.embedding is not None else torch.zeros(vec.d_model)
        data = torch.cat([emb.unsqueeze(0), vec.vectors], dim=0)
    else:
        # A fresh tensor, never a view: torch.save stores a view's whole underlying storage.
        data = vec.vectors.clone()
    return atomic_write(path, lambda tmp: torch.save(data, tmp))


def _save_gguf(vec: PersonaVector, path: Path, model_hint: str) -> Path:
    if not isinstance(model_hint, str) or not model_hint.strip():
        # GGUFWriter.add_string silently skips empty strings, which would drop the key.
        raise ValueError("model_hint must be a non-empty llama.cpp architecture name, e.g. 'llama'")
    if bool(vec.vectors[0].any()):
        warnings.warn(
            f"{vec.name}: layer 0 is not zero but GGUF control vectors cannot hold it "
            "(llama.cpp rejects direction.0); it is dropped from the export",
            stacklevel=3,
        )
    meta = _file_json(vec)
    rows = [vec.vectors[k].numpy() for k in range(1, vec.n_layers)]

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), arch=_GGUF_ARCH)
        try:
            writer.add_string(_GGUF_HINT_KEY, model_hint)
            writer.add_uint32(_GGUF_COUNT_KEY, len(rows))
            writer.add_string(_GGUF_META_KEY, meta)
            for k, row in enumerate(rows, start=1):
                writer.add_tensor(f"direction.{k}", row)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    return atomic_write(path, write)


# --------------------------------------------------------------------------- reading


def _check_file(path: Path) -> None:
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
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first[:200]


def load(
    path: PathLike,
    layout: VectorLayout | None = None,
    n_layers: int | None = None,
) -> PersonaVector:
    """Read a vector file; the format follows the extension.

    `layout` applies to ``.pt`` only. `n_layers`, the target model's layer count if
    known, picks the ``.pt`` layout when `layout` is None, pads GGUF files (which do
    not record their layer count) and is checked against every format's result.
    """
    src = Path(path)
    ext = _extension(src)
    if layout is not None:
        if ext != ".pt":
            raise VectorFileError(f"{src.name}: layout applies to .pt files only, not {ext}")
        _check_layout(layout)
    if n_layers is not None and not 1 <= n_layers <= _MAX_LAYERS:
        raise ValueError(f"n_layers must be between 1 and {_MAX_LAYERS}, got {n_layers}")
    _check_file(src)
    if ext == ".safetensors":
        vec = _load_safetensors(src)
    elif ext == ".pt":
        vec = _load_pt(src, layout, n_layers)
    else:
        vec = _load_gguf(src, n_layers)
    if n_layers is not None and vec.n_layers != n_layers:
        raise VectorMismatchError(
            f"{src.name} holds {vec.n_layers} layers; the model has {n_layers} layers"
        )
    return vec


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


def _pick_tensor_key(keys: Sequence[str], is_matrix: Callable[[str], bool], path: Path) -> str:
    """Choose the one tensor that holds the vectors: a known key, else the only 2-D one."""
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


def _load_safetensors(path: Path) -> PersonaVector:
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            keys = list(fh.keys())
            ours_raw = header.get(_SAFETENSORS_META_KEY)
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
        raise VectorFileError(
            f"{path.name}: the {_SAFETENSORS_META_KEY!r} metadata is not JSON"
        ) from exc
    fields = _fields_from_ours(meta, path, vectors, f"the {_SAFETENSORS_META_KEY!r} metadata")
    return _build(path, vectors=vectors, embedding=raw_emb, **fields)


def _load_pt(path: Path, layout: VectorLayout | None, n_layers: int | None) -> PersonaVector:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise VectorFileError(
            f"{path.name} is not a tensor file torch can load safely ({_short(exc)}); "
            "expected a tensor saved with torch.save (pickled objects are never executed)"
        ) from exc

    source_key: str | None = None
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
    data = _matrix_from_file(obj, path, "the tensor")
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
        metadata["source_key"] = str(source_key)
    if assumed:
        metadata["layout_assumed"] = True
    return _build(
        path, name=name, vectors=vectors, variant=variant, embedding=embedding, metadata=metadata
    )


# GGUF value types (gguf.GGUFValueType) -> byte size, for the header pre-check.
_GGUF_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_MAX_GGUF_KV = 4096
_MAX_GGUF_TENSORS = 65536
_MAX_GGUF_ARRAY = 65536


class _GGUFCursor:
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
        if vtype in _GGUF_SCALAR_SIZES:
            self.take(_GGUF_SCALAR_SIZES[vtype])
        elif vtype == _GGUF_STRING:
            self.take(self.u64())
        elif vtype == _GGUF_ARRAY:
            itype, count = self.u32(), self.u64()
            if count > _MAX_GGUF_ARRAY:
                raise VectorFileError(
                    f"{self.name}: GGUF array of {count} items is too large for a control vector"
                )
            if itype in _GGUF_SCALAR_SIZES:
                self.take(count * _GGUF_SCALAR_SIZES[itype])
            elif itype == _GGUF_STRING:
                for _ in range(count):
                    self.take(self.u64())
            else:
                raise VectorFileError(f"{self.name}: unsupported GGUF array item type {itype}")
        else:
            raise VectorFileError(f"{self.name}: unknown GGUF value type {vtype}")


def _gguf_precheck(path: Path) -> None:
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
    cur = _GGUFCursor(data, order, path.name)
    cur.off = 8
    n_tensors, n_kv = cur.u64(), cur.u64()
    if n_tensors > _MAX_GGUF_TENSORS or n_kv > _MAX_GGUF_KV:
        raise VectorFileError(
            f"{path.name}: GGUF header claims {n_tensors} tensors and {n_kv} keys; "
            "too many for a control vector"
        )
    for _ in range(n_kv):
        cur.take(cur.u64())  # key
        cur.skip_value(cur.u32())


def _gguf_string(reader: gguf.GGUFReader, key: str, path: Path) -> str | None:
    fld = reader.get_field(key)
    if fld is None:
        return None
    if fld.types != [gguf.GGUFValueType.STRING]:
        raise VectorFileError(f"{path.name}: GGUF key {key!r} should be a string")
    try:
        return str(fld.contents())
    except UnicodeDecodeError as exc:
        raise VectorFileError(f"{path.name}: GGUF key {key!r} is not valid UTF-8") from exc


def _load_gguf(path: Path, n_layers: int | None) -> PersonaVector:
    _gguf_precheck(path)
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:
        raise VectorFileError(f"{path.name} is not a readable GGUF file ({_short(exc)})") from exc

    arch = _gguf_string(reader, "general.architecture", path)
    if arch != _GGUF_ARCH:
        raise VectorFileError(
            f"{path.name}: GGUF architecture is {arch!r}; expected {_GGUF_ARCH!r} "
            "(a llama.cpp control vector, not a model)"
        )
    hint = _gguf_string(reader, _GGUF_HINT_KEY, path)
    ours_raw = _gguf_string(reader, _GGUF_META_KEY, path)

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
    del reader  # releases the memmap

    widths = {int(r.shape[0]) for r in directions.values()}
    if len(widths) > 1:
        raise VectorFileError(f"{path.name}: direction tensors differ in length {sorted(widths)}")

    ours: dict[str, Any] | None = None
    if ours_raw is not None:
        try:
            ours = json.loads(ours_raw)
        except json.JSONDecodeError as exc:
            raise VectorFileError(f"{path.name}: {_GGUF_META_KEY!r} is not JSON") from exc
        if not isinstance(ours, dict):
            raise VectorFileError(f"{path.name}: {_GGUF_META_KEY!r} is not a JSON object")

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
    if n_layers is not None:
        if n_layers < min_n:
            raise VectorMismatchError(
                f"{path.name} holds direction.{min_n - 1}; a model with {n_layers} layers "
                f"has no layer {min_n - 1}"
            )
        if meta_n is not None and meta_n != n_layers:
            raise VectorMismatchError(
                f"{path.name} was made for {meta_n} layers; the model has {n_layers}"
            )
        n = n_layers
    else:
        n = meta_n if meta_n is not None else min_n

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
        fields = _fields_from_ours(ours, path, vectors, f"the {_GGUF_META_KEY!r} key")
    else:
        fields = {
            "name": path.stem,
            "variant": "imported",
            "metadata": {"source_format": "gguf", "source_file": path.name},
        }
    if hint is not None:
        fields["metadata"] = {**fields["metadata"], "model_hint": hint}
    return _build(path, vectors=vectors, **fields)
