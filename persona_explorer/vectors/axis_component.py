"""A persona vector's component along the Assistant Axis, and the vector without it.

Why: a persona vector is mean("with the persona") − mean("without"), and "without" is the
default Assistant. So part of every such vector may say "not the Assistant" rather than "this
persona": on the embedded model the built-ins point away from the Assistant Axis (pirate cos
−0.62 at its layer 10), and a freshly extracted knight sounded like the pirate. Splitting a
vector into its axis part and the rest shows how much is shared, and steering with the rest
alone tests whether the persona survives without it.

The math, at one layer with vector ``v`` and axis ``a`` (unit ``â = a / |a|``):

* ``cos = ⟨v, â⟩ / |v|``: −1 points straight away from the Assistant, +1 toward it;
* ``projection = ⟨v, â⟩``: the scalar projection, in the vector's own units (what the
  Assistant-Axis papers call a projection, :func:`persona_explorer.axis.assistant_axis.project`);
* ``share = projection² / |v|² = cos²``: the share of the vector's squared norm along the axis;
* without the component: ``v⊥ = v − ⟨v, â⟩ â``, orthogonal to the axis, with
  ``|v⊥|² = |v|²(1 − share)``.

Norm of ``v⊥``: kept as the projection leaves it (shorter than ``v``), and the recorded strength
unchanged, so that ``strength · v⊥`` is exactly the original push minus its axis part: steering
with the copy isolates what the axis part did. Rescaling to ``|v|`` would instead push the
persona-specific part harder (by ``1 / sqrt(1 − share)``: 1.3x for the pirate), mixing two
changes in one comparison; the copy records ``norm_ratio = |v⊥| / |v|`` at its layer so that a
visitor can divide the strength by it for an equally long push.
``python -m persona_explorer.dev.axis_component`` measures both.

Axes come in as tensors ``[n_layers, d_model]``, row l = layer l (``AxisData.axis``): this
package never imports :mod:`persona_explorer.axis` (it loads models).

Imports: ``core`` (errors, limits), :mod:`.persona_vector`, torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import MAX_NAME_CHARS
from persona_explorer.vectors.persona_vector import PersonaVector

__all__ = [
    "AXIS_REMOVED",
    "AxisComponent",
    "axis_component",
    "component_at",
    "derived_name",
    "is_axis_removed",
    "mean_abs_cosine",
    "orthogonalise",
    "remove_axis_component",
]

AXIS_REMOVED = "assistant_axis_removed"  # metadata["derived"]["operation"] of a copy
NAME_SUFFIX = " (axis removed)"
# What the original's metadata measured about *it*: a sweep's choice, the held-out and test
# checks, the built-in flag. None of it holds for the copy, so none of it is copied.
_STALE_KEYS = ("sweep", "heldout", "test", "builtin", "created", "saved", "owner", "copied_from")
# Below this |cos| a vector has nothing along the axis worth removing (float32 rounding of a
# vector already made orthogonal leaves ~1e-8).
_ALREADY_ORTHOGONAL = 1e-6


@dataclass(frozen=True)
class AxisComponent:
    """A vector's component along the Assistant Axis at one layer (see the module doc)."""

    layer: int
    cos: float  # cos(v, axis): −1 = straight away from the Assistant
    projection: float  # ⟨v, â⟩, in the vector's own units
    share: float  # projection² / |v|² (= cos²), in [0, 1]
    norm: float  # |v| at the layer

    @property
    def remaining_norm(self) -> float:
        """|v⊥| = |v| · sqrt(1 − share): the norm left once the component is removed."""
        return self.norm * math.sqrt(max(0.0, 1.0 - self.share))

    def as_json(self) -> dict[str, float | int]:
        return {
            "layer": self.layer,
            "cos": round(self.cos, 6),
            "projection": round(self.projection, 6),
            "share": round(self.share, 6),
            "norm": round(self.norm, 6),
        }


def _as_rows(value: object, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point:
        raise InputError(f"{what} must be a tensor of floating-point numbers.")
    if value.dim() not in (1, 2) or value.numel() == 0:
        raise InputError(
            f"{what} must be [d_model] or [n_layers, d_model], got {list(value.shape)}."
        )
    out = value.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(out).all()):
        raise InputError(f"{what} contains NaN or infinite values.")
    return out


def _unit_axis(axis: torch.Tensor, where: str) -> torch.Tensor:
    norm = torch.linalg.vector_norm(axis, dim=-1, keepdim=True)
    zero = (norm == 0).reshape(-1)
    if bool(zero.any()):
        layer = int(zero.nonzero()[0])
        at = f" at layer {layer}" if axis.dim() == 2 else ""
        raise InputError(f"The Assistant Axis is all zeros{at}{where}: it has no direction.")
    return axis / norm


def _check_pair(vector: torch.Tensor, axis: torch.Tensor) -> None:
    if vector.shape[-1] != axis.shape[-1]:
        raise InputError(
            f"The vector has d_model {vector.shape[-1]} but the Assistant Axis has "
            f"{axis.shape[-1]}: they belong to different models."
        )
    if vector.dim() == 2 and axis.dim() == 2 and vector.shape[0] != axis.shape[0]:
        raise InputError(
            f"The vector has {vector.shape[0]} layers but the Assistant Axis has "
            f"{axis.shape[0]}: they belong to different models."
        )


def axis_component(vector: torch.Tensor, axis: torch.Tensor, layer: int = -1) -> AxisComponent:
    """The component of one direction ``vector`` [d_model] along ``axis`` [d_model].

    ``layer`` is only recorded. A zero vector has no direction, hence no cosine: InputError."""
    v, a = _as_rows(vector, "The vector"), _as_rows(axis, "The Assistant Axis")
    if v.dim() != 1 or a.dim() != 1:
        raise InputError("axis_component takes one direction and one axis row ([d_model] each).")
    _check_pair(v, a)
    norm = float(torch.linalg.vector_norm(v))
    if norm == 0.0:
        at = f" at layer {layer}" if layer >= 0 else ""
        raise InputError(
            f"The vector is all zeros{at}: it has no direction, so no component along the axis."
        )
    projection = float(v @ _unit_axis(a, ""))
    cos = max(-1.0, min(1.0, projection / norm))
    return AxisComponent(int(layer), cos, projection, min(1.0, cos * cos), norm)


def component_at(vec: PersonaVector, axis: torch.Tensor, layer: int) -> AxisComponent:
    """``vec``'s component along ``axis`` [n_layers, d_model] at ``layer`` (row l = layer l)."""
    a = _as_rows(axis, "The Assistant Axis")
    if a.dim() != 2:
        raise InputError("The Assistant Axis must be [n_layers, d_model], one row per layer.")
    _check_pair(vec.vectors, a)
    if isinstance(layer, bool) or not 0 <= int(layer) < vec.n_layers:
        raise InputError(f"Layer {layer} is out of range for {vec.n_layers} layers.")
    return axis_component(vec.vectors[int(layer)], a[int(layer)], int(layer))


def orthogonalise(vectors: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """``vectors`` with each row's component along the matching ``axis`` row removed:
    ``v − ⟨v, â⟩ â`` (the rows' own norms are not restored; see the module doc).

    Shapes: [d] with [d], or [n_layers, d] with [n_layers, d] (row l against axis row l).
    Computed in float64 and returned as float32, so the result's cosine with the axis is 0 to
    float32 rounding; a zero row stays zero."""
    v, a = _as_rows(vectors, "The vector"), _as_rows(axis, "The Assistant Axis")
    if v.dim() != a.dim():
        raise InputError("Give one axis row per vector row (both [d_model] or both 2-D).")
    _check_pair(v, a)
    unit = _unit_axis(a, "")
    return (v - (v * unit).sum(-1, keepdim=True) * unit).float()


def mean_abs_cosine(rows: torch.Tensor) -> float:
    """The mean |cos| over every pair of ``rows`` [n >= 2, d_model] (the off-diagonal of their
    cosine matrix): how much a set of vectors shares one direction. Zero rows count as cos 0."""
    v = _as_rows(rows, "The vectors")
    if v.dim() != 2 or v.shape[0] < 2:
        raise InputError("Compare at least two vectors ([n >= 2, d_model]).")
    unit = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp(min=1e-300)
    cos = (unit @ unit.T).abs()
    n = v.shape[0]
    return float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))


def is_axis_removed(vec: PersonaVector) -> bool:
    """Whether ``vec`` is a copy made by :func:`remove_axis_component`."""
    derived = vec.metadata.get("derived")
    return isinstance(derived, dict) and derived.get("operation") == AXIS_REMOVED


def derived_name(name: str) -> str:
    """``"<name> (axis removed)"``, the original name shortened to fit the name limit."""
    return name[: MAX_NAME_CHARS - len(NAME_SUFFIX)].rstrip() + NAME_SUFFIX


def remove_axis_component(
    vec: PersonaVector,
    axis: torch.Tensor,
    *,
    layer: int | None = None,
    axis_model_id: str = "",
) -> PersonaVector:
    """A copy of ``vec`` named "<name> (axis removed)" whose every layer is orthogonal to that
    layer's Assistant Axis row (``axis`` [n_layers, d_model]).

    Layer and strength are kept (see the module doc for why the norm is not restored). The
    metadata says it was derived, from what, and what was removed at ``layer`` (default: the
    vector's recorded layer, else its best, else two thirds up); measurements of the original
    (sweep, held-out and test checks) are left out. Refused with InputError: an all-zero vector,
    an axis of another shape, and a vector with nothing along the axis to remove.
    """
    if not bool(vec.vectors.any()):
        raise InputError(f"“{vec.name}” is all zeros: there is no direction to change.")
    at = layer if layer is not None else vec.layer if vec.layer is not None else vec.best_layer
    at = (2 * vec.n_layers) // 3 if at is None else at
    before = component_at(vec, axis, at)
    if abs(before.cos) < _ALREADY_ORTHOGONAL and is_axis_removed(vec):
        raise InputError(f"“{vec.name}” already has no Assistant-Axis component.")
    rows = orthogonalise(vec.vectors, axis)
    meta: dict[str, Any] = {k: v for k, v in vec.metadata.items() if k not in _STALE_KEYS}
    meta["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta["derived"] = {
        "operation": AXIS_REMOVED,
        "from": vec.name,
        "from_variant": vec.variant,
        "axis_model_id": axis_model_id or vec.model_id,
        "what": "every layer made orthogonal to that layer's Assistant Axis (v - <v, a> a, "
        "a the unit axis)",
        "norm": "the remainder's own norm (|v| sqrt(1 - share)), strength unchanged: strength "
        "x this vector is the original push minus its axis part",
        "removed": before.as_json(),
        "norm_ratio": round(before.remaining_norm / before.norm, 6),
        # The axis has no row for the embedding output, so that row cannot be made orthogonal.
        "embedding": "dropped" if vec.embedding is not None else "none",
    }
    return vec.with_(name=derived_name(vec.name), vectors=rows, metadata=meta, embedding=None)
