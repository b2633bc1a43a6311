"""The PersonaVector value: per-layer persona directions for one model.

Layer convention (the one place it is written down)
---------------------------------------------------
"Layer l" is the residual stream *after* decoder block l, counted from 0. It is
TransformerLens ``blocks.{l}.hook_resid_post`` and the output of HF decoder layer l
(HF ``hidden_states[l + 1]``; ``hidden_states[0]`` is the embedding output). A
PersonaVector stores one row per layer: ``vectors[l]`` belongs to layer l. Steering
with it means adding ``strength * vectors[l]`` to the output of block l.

Every file format has its own idea of what row k means, so each reader/writer in
:mod:`.vector_files` translates at the boundary and nothing else in the project has to care:

* native ``.safetensors``: tensor ``vectors`` [n_layers, d_model], row l = layer l,
  plus optional ``embedding`` [d_model]; our fields are JSON in the safetensors
  metadata key ``persona_explorer``.
* persona_vectors ``.pt`` (Chen et al.): [n_layers + 1, d_model]; row 0 is the
  embedding output, row l + 1 is layer l.
* assistant_axis ``.pt`` (Lu et al.): [n_layers, d_model]; row l is layer l.
* GGUF control vectors (llama.cpp ``--control-vector``, repeng ``export_gguf``):
  1-D tensors ``direction.{k}`` added to the output of block k, i.e. our layer k.
  llama.cpp refuses ``direction.0``, so layer 0 cannot be exported.

This module does no file I/O; reading and writing files is :mod:`.vector_files`' job.

Imports: :mod:`.errors` only (and torch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch

from persona_explorer.core.errors import InputError

__all__ = [
    "LAYER_CONVENTION",
    "PersonaVector",
    "Variant",
    "VectorInfo",
    "VectorMismatchError",
    "check_fits",
    "describe",
]

LAYER_CONVENTION = "resid_post"

Variant = Literal["response", "prompt", "last", "imported", "custom"]


class VectorMismatchError(InputError):
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


@dataclass(frozen=True)
class VectorInfo:
    """What a vector is, without its tensors: enough to list it, check that it fits a model and
    pick its defaults. Read from a file's header alone (``vector_files.read_info``), so a
    listing never loads tensors."""

    name: str
    n_layers: int
    d_model: int
    model_id: str = ""
    variant: str = "response"
    layer: int | None = None
    strength: float | None = None
    best_layer: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, vec: PersonaVector) -> VectorInfo:
        return cls(
            name=vec.name,
            n_layers=vec.n_layers,
            d_model=vec.d_model,
            model_id=vec.model_id,
            variant=vec.variant,
            layer=vec.layer,
            strength=vec.strength,
            best_layer=vec.best_layer,
            metadata=vec.metadata,
        )


def describe(vec: PersonaVector) -> dict[str, Any]:
    """A JSON-ready summary (for ``info --json``)."""
    return {**vec.to_json_metadata(), "best_layer": vec.best_layer}


def _model_key(model_id: str) -> str:
    # "embedded:SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct" and a local
    # copy under another org name are the same weights for a vector's purposes. A fine-tuned
    # copy ("...+lora:NAME@HASH", finetune.py) keeps its base model's vectors: the persona
    # shift is measured along exactly those.
    base = model_id.split("+lora:", 1)[0]
    return base.rsplit(":", 1)[-1].rsplit("/", 1)[-1].strip().lower()


def check_fits(
    vec: PersonaVector | VectorInfo, n_layers: int, d_model: int, model_id: str | None = None
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
