"""Persona space: the role vectors' principal components at one layer, and what lands in them.

Per layer, PCA of the role vectors (Lu et al., 2026) gives a map: each role's coordinates on
PC1-PC3, the default Assistant projected with the same centre and components, the variance each
component explains, and each role's position on the Assistant Axis (normalised: 0 = the roles'
mean, 1 = the default Assistant) for colouring.

Sign convention: a principal component has no sign of its own, so each of PC1-PC3 is flipped
where needed to give the default Assistant a coordinate ≥ 0 on it. PC1 then points towards the
Assistant at every layer, and the map does not mirror itself from one layer to the next.

What else can be placed on the map:

* an activation (a prompt's or an answer's mean residual) is a *point*, centred and projected
  like the roles (:meth:`LayerMap.place`);
* a persona vector is a *direction*, drawn as an arrow starting at the Assistant
  (:meth:`LayerMap.arrow`). A vector extracted here is the mean residual of answers with the
  persona minus answers without it, so "as extracted" the arrow shows where the persona's answers
  sit relative to the plain Assistant's. "Same length" scales every direction to the roles'
  spread instead (for vectors of arbitrary norm, e.g. unit-length uploads): the arrow's length
  on the map is then the share of the direction that lies in the map's plane.

Nothing here runs a model or draws a figure.

Imports: torch, ``core`` and :mod:`.assistant_axis`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from persona_explorer.axis.assistant_axis import (
    AxisData,
    normalised_projection,
    pc1_axis_cosine,
    pc1_variance,
    pca,
    project,
)
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import check_layer

N_COORDS = 3  # PC1-PC3: the 2-D map uses the first two, the 3-D view all three
N_VARIANCE = 10  # components shown in the variance-explained chart
N_NEAREST = 3

ArrowScale = Literal["extracted", "spread"]
ARROW_SCALES: tuple[ArrowScale, ...] = get_args(ArrowScale)

# Spaces built per AxisData (by id, holding the AxisData so the id stays unique); a server has
# one model, so one entry, but tests and the CLI may see a few.
_SPACES: dict[int, tuple[AxisData, PersonaSpace]] = {}
_SPACES_LOCK = threading.Lock()
_MAX_SPACES = 4


def check_arrow_scale(value: object) -> ArrowScale:
    if value not in ARROW_SCALES:
        raise InputError(f"Arrow length must be one of {', '.join(ARROW_SCALES)}, not {value!r}.")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class PersonaArrow:
    """A persona vector drawn on the map: from ``start`` (the Assistant) to ``end``, PC1-PC3."""

    name: str
    start: tuple[float, float, float]
    end: tuple[float, float, float]
    axis_cosine: float  # cos(vector, axis) at this layer, signed: > 0 = towards the Assistant
    plane_share: float  # |part in PC1-PC2| / |vector|: how much of it the 2-D map shows
    space_share: float  # the same for PC1-PC3
    norm: float  # the vector's length at this layer
    scale: ArrowScale


@dataclass(frozen=True)
class LayerMap:
    """The map at one layer. Tensors are float32 on the CPU; treat them as read-only."""

    layer: int
    roles: tuple[str, ...]
    centre: torch.Tensor  # [d] the roles' mean
    components: torch.Tensor  # [3, d] unit rows, signs flipped so the Assistant is ≥ 0
    role_coords: torch.Tensor  # [n_roles, 3]
    assistant: torch.Tensor  # [3]
    variance: torch.Tensor  # [<= N_VARIANCE] share of the roles' variance per component
    role_axis: torch.Tensor  # [n_roles] normalised axis projection (0 = roles' mean, 1 = default)
    role_vectors: torch.Tensor  # [n_roles, d]
    axis: torch.Tensor  # [d]
    roles_mean_proj: float  # raw ⟨roles' mean, â⟩
    default_proj: float  # raw ⟨default, â⟩
    assistant_sd: float  # (default − mean of the roles' projections) / their SD
    pc1_axis_cosine: float  # |cos(PC1, axis)|
    spread: float  # RMS distance of the roles from their mean, in the full space

    def place(self, activation: torch.Tensor) -> tuple[float, float, float]:
        """PC1-PC3 coordinates of an activation: ``[d]``, or ``[n_layers, d]`` (this layer's
        row is used)."""
        row = self._row(activation)
        return _triple((row - self.centre) @ self.components.T)

    def axis_position(self, activation: torch.Tensor) -> float:
        """Where an activation sits on the axis: 0 = the roles' mean, 1 = the default."""
        raw = project(self._row(activation)[None], self.axis[None])[0]
        return float(
            normalised_projection(
                raw, torch.tensor(self.roles_mean_proj), torch.tensor(self.default_proj)
            )
        )

    def nearest_roles(
        self, activation: torch.Tensor, k: int = N_NEAREST
    ) -> tuple[tuple[str, float], ...]:
        """The ``k`` roles closest to an activation in the full residual space (not on the map,
        which shows only a few directions of it), with their Euclidean distances."""
        dist = (self.role_vectors - self._row(activation)).norm(dim=-1)
        order = dist.argsort()[: max(0, min(k, len(self.roles)))]
        return tuple((self.roles[i], float(dist[i])) for i in order.tolist())

    def arrow(
        self, name: str, vector: torch.Tensor, scale: ArrowScale = "extracted"
    ) -> PersonaArrow:
        """A persona vector (``[d]`` or ``[n_layers, d]``) as an arrow from the Assistant.

        ``extracted``: the vector as it is (a mean shift between answers with and without the
        persona). ``spread``: its direction scaled to :attr:`spread`, so arrows of any norm
        compare, and each one's length on the map is the share of it inside the map.
        """
        v = self._row(vector)
        norm = float(v.norm())
        if norm <= 1e-12:
            raise InputError(f"The vector {name!r} is zero at layer {self.layer}.")
        step = v if check_arrow_scale(scale) == "extracted" else v / norm * self.spread
        delta = step @ self.components.T
        unit_parts = v @ self.components.T / norm
        a = self.axis
        return PersonaArrow(
            name=name,
            start=_triple(self.assistant),
            end=_triple(self.assistant + delta),
            axis_cosine=float(v @ a / (norm * float(a.norm().clamp(min=1e-12)))),
            plane_share=float(unit_parts[:2].norm()),
            space_share=float(unit_parts.norm()),
            norm=norm,
            scale=scale,
        )

    def _row(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach().float().cpu()
        if t.ndim == 2:
            t = t[self.layer]
        if t.shape != self.centre.shape:
            raise ValueError(f"expected [d={self.centre.shape[0]}] values, got {tuple(t.shape)}")
        return t


def layer_map(data: AxisData, layer: int) -> LayerMap:
    """PCA of the role vectors at ``layer`` and everything the map shows (uncached)."""
    layer = check_layer(layer, data.n_layers)
    roles = data.role_vectors[:, layer].float().cpu()
    default = data.default_vector[layer].float().cpu()
    axis = data.axis[layer].float().cpu()
    centre = roles.mean(0)
    comps, variance, _ = pca(roles, N_VARIANCE)
    comps = _pad_rows(comps[:N_COORDS], N_COORDS)
    signs = torch.where((default - centre) @ comps.T < 0, -1.0, 1.0)
    comps = comps * signs[:, None]
    role_proj = project(roles[:, None], axis[None])[:, 0]
    default_proj = float(project(default[None], axis[None])[0])
    roles_mean_proj = float(role_proj.mean())
    sd = float(role_proj.std()) if len(roles) > 1 else 0.0
    spread = float((roles - centre).pow(2).sum(-1).mean().sqrt())
    pc1 = comps[0]
    cos = float((pc1 @ axis).abs() / axis.norm().clamp(min=1e-12))
    return LayerMap(
        layer=layer,
        roles=data.roles,
        centre=centre,
        components=comps,
        role_coords=(roles - centre) @ comps.T,
        assistant=(default - centre) @ comps.T,
        variance=variance,
        role_axis=normalised_projection(
            role_proj, torch.tensor(roles_mean_proj), torch.tensor(default_proj)
        ),
        role_vectors=roles,
        axis=axis,
        roles_mean_proj=roles_mean_proj,
        default_proj=default_proj,
        assistant_sd=(default_proj - roles_mean_proj) / sd if sd > 1e-12 else float("inf"),
        pc1_axis_cosine=cos,
        spread=spread,
    )


class PersonaSpace:
    """Every layer's map of one :class:`AxisData`, computed on first use and kept, plus the
    per-layer curves (|cos(PC1, axis)| and PC1's share of the variance)."""

    def __init__(self, data: AxisData) -> None:
        self.data = data
        self.n_layers = data.n_layers
        self.pc1_axis_cosine: tuple[float, ...] = tuple(
            pc1_axis_cosine(data.role_vectors, data.axis).tolist()
        )
        self.pc1_variance: tuple[float, ...] = tuple(pc1_variance(data.role_vectors).tolist())
        self._maps: dict[int, LayerMap] = {}
        self._lock = threading.Lock()

    def layer(self, layer: int) -> LayerMap:
        layer = check_layer(layer, self.n_layers)
        with self._lock:
            found = self._maps.get(layer)
        if found is None:
            found = layer_map(self.data, layer)
            with self._lock:
                found = self._maps.setdefault(layer, found)
        return found


def space_for(data: AxisData) -> PersonaSpace:
    """The (cached) :class:`PersonaSpace` of ``data``."""
    with _SPACES_LOCK:
        hit = _SPACES.get(id(data))
        if hit is not None and hit[0] is data:
            return hit[1]
    space = PersonaSpace(data)
    with _SPACES_LOCK:
        while len(_SPACES) >= _MAX_SPACES:
            _SPACES.pop(next(iter(_SPACES)))
        _SPACES[id(data)] = (data, space)
    return space


@dataclass(frozen=True)
class PlacedText:
    """A prompt and the answer the model gave, as mean residuals at every layer."""

    prompt: str
    answer: str
    prompt_mean: torch.Tensor  # [n_layers, d]
    answer_mean: torch.Tensor | None  # [n_layers, d]; None for an empty answer


def map_summary(
    space: PersonaSpace,
    m: LayerMap,
    placed: PlacedText | None = None,
    arrows: Sequence[PersonaArrow] = (),
) -> dict[str, Any]:
    """Everything on the map as JSON-ready numbers (for the API and the download)."""

    def r(x: float) -> float:
        return round(float(x), 5)

    def coords(t: Sequence[float] | torch.Tensor) -> list[float]:
        return [r(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]

    out: dict[str, Any] = {
        "layer": m.layer,
        "sign_convention": "each PC's sign is chosen so the default Assistant is >= 0 on it",
        "axis_scale": "normalised projection: 0 = the roles' mean, 1 = the default Assistant",
        "variance_explained": coords(m.variance),
        "pc1_axis_cosine": r(m.pc1_axis_cosine),
        "assistant_sd_above_roles": r(m.assistant_sd),
        "roles_spread": r(m.spread),
        "assistant": {"coords": coords(m.assistant), "axis": 1.0},
        "roles": [
            {"name": name, "coords": coords(m.role_coords[i]), "axis": r(m.role_axis[i])}
            for i, name in enumerate(m.roles)
        ],
        "per_layer": {
            "pc1_axis_cosine": [r(c) for c in space.pc1_axis_cosine],
            "pc1_variance": [r(v) for v in space.pc1_variance],
        },
        "points": [],
        "arrows": [
            {
                "name": a.name,
                "start": coords(a.start),
                "end": coords(a.end),
                "axis_cosine": r(a.axis_cosine),
                "plane_share": r(a.plane_share),
                "norm": r(a.norm),
                "scale": a.scale,
            }
            for a in arrows
        ],
    }
    if placed is not None:
        acts = [("prompt", placed.prompt_mean, placed.prompt)]
        if placed.answer_mean is not None:
            acts.append(("answer", placed.answer_mean, placed.answer))
        out["points"] = [
            {
                "kind": kind,
                "text": text,
                "coords": coords(m.place(act)),
                "axis": r(m.axis_position(act)),
                "nearest_roles": [{"name": n, "distance": r(d)} for n, d in m.nearest_roles(act)],
            }
            for kind, act, text in acts
        ]
    return out


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Zero rows up to ``rows`` (fewer roles than components leave the rest undefined)."""
    if t.shape[0] >= rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], t.shape[1])])


def _triple(t: torch.Tensor) -> tuple[float, float, float]:
    a, b, c = (float(x) for x in t.tolist())
    return a, b, c
