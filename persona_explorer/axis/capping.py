"""Activation capping on the Assistant Axis: uncapped and capped answers side by side.

Capping (Lu et al., 2026) keeps the projection of the residual stream on the Assistant Axis at
or above a floor τ at a window of layers: ``h ← h + max(0, τ − ⟨h, â⟩) · â``. τ at each layer is a
percentile (25th by default) of the default Assistant's *per-token* projections there
(:meth:`.axis.AxisData.floors`). A token already above τ is left exactly as it was.

One request runs ONE batched generation (:func:`cap_stream`) with these rows:

* ``baseline`` (shown as *uncapped*): no edit;
* ``capped``: the cap at every cap layer;
* with a persona vector, also ``steered`` (the vector added, as in the Steer tab) and
  ``steered_capped`` (the vector added and the cap on top, in one row plan: at a layer with both,
  the vector is added first and the cap then lifts what fell below τ). Steered against capped is
  the paper's defence against persona jailbreaks.

Every row is read from the same passes that generated it. The capture records the residual
*after* the edits of its layer, so a capped row's projections are what the cap left:

* ``axis_projection[l]``: the response-mean projection on the axis at every layer ``l``;
* ``token_projection[i]``: response token ``i`` at the read-out layer (default: the last cap
  layer, where the floor is guaranteed);
* ``cap_token_projection[k][i]``: token ``i`` at the ``k``-th cap layer (for every row, so an
  uncapped row shows where the cap *would* have acted);
* ``cap_fired[k]`` (capped rows only): the share of response tokens the cap lifted at the
  ``k``-th cap layer. A lifted token sits exactly on τ, up to the rounding of the model's dtype,
  so this counts tokens within that rounding of τ (:func:`lift_tolerance`); a token that happened
  to land there on its own would be counted too, which the tolerance makes vanishingly rare.

Generation is row-invariant, and an edit that lifts nothing adds exact zeros: a cap whose floor
no token reaches gives a row bit-identical to the uncapped one (tokens and projections).

Imports: torch, ``core``, ``engine.model``, ``steering`` (generation side by side, operations),
``vectors`` and :mod:`.assistant_axis`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from persona_explorer.axis.assistant_axis import (
    DEFAULT_CAP_PERCENTILE,
    AxisData,
    check_percentile,
    default_cap_layers,
    normalised_projection,
    project,
)
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import check_finite, check_layer, parse_layers
from persona_explorer.engine.model import LoadedModel
from persona_explorer.steering.generation import (
    GenerationResult,
    SamplingConfig,
    last_result,
    side_by_side_stream,
    texts_then_result,
)
from persona_explorer.steering.ops import (
    Positions,
    RowPlan,
    SteeringError,
    add_plan,
    check_positions,
)
from persona_explorer.vectors.persona_vector import PersonaVector, check_fits

__all__ = [
    "ROW_LABELS",
    "CapInfo",
    "CapOutput",
    "CapRequest",
    "CapRow",
    "cap",
    "cap_stream",
    "lift_tolerance",
    "lifted_share",
    "parse_cap_layers",
]

# Row keys in batch order, and how they are shown: one word per row, the same in the answer
# boxes, the plots' legends, the status and the JSON (the key ``baseline`` stays, for the API).
ROW_LABELS: dict[str, str] = {
    "baseline": "uncapped",
    "capped": "capped",
    "steered": "steered",
    "steered_capped": "steered + capped",
}
# Rounding steps (eps) of the model's dtype, times the residual's norm, allowed between a lifted
# token's projection and τ: storing the lifted residual rounds each element by at most eps/2 of
# it, and computing the lift (a projection, then τ minus it) adds at most about eps·|h| more.
_TOLERANCE_ULPS = 2.0


@dataclass(frozen=True)
class CapRequest:
    """One prompt, uncapped and capped; with ``vector`` also steered and steered + capped."""

    prompt: str
    system: str | None = None
    vector: PersonaVector | None = None
    layers: tuple[int, ...] = ()  # where the vector is added (needed with a vector)
    strength: float = 0.0
    cap_layers: tuple[int, ...] | None = None  # None: axis.default_cap_layers
    percentile: float = DEFAULT_CAP_PERCENTILE
    positions: Positions = "all"  # for the steering and the cap alike
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    readout_layer: int | None = None  # per-token projections; None: the last cap layer


@dataclass(frozen=True)
class CapInfo:
    """Where the cap acts and with which floors (``floors[k]`` is τ at ``layers[k]``)."""

    layers: tuple[int, ...]
    floors: tuple[float, ...]
    percentile: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "floors": list(self.floors),
            "percentile": self.percentile,
        }


@dataclass(frozen=True)
class CapRow:
    key: str  # one of ROW_LABELS
    label: str
    capped: bool
    steered: bool
    text: str
    tokens: list[int]
    token_strings: list[str]
    finished: bool  # ended at EOS
    axis_projection: list[float]  # response mean at every layer, after the row's edits
    token_projection: list[float]  # per response token at the read-out layer
    cap_token_projection: list[list[float]]  # [cap layer k][token i]
    cap_fired: list[float] | None  # share of tokens lifted per cap layer; None: not capped

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "text": self.text,
            "finished": self.finished,
            "n_tokens": len(self.tokens),
            "axis_projection": self.axis_projection,
            "token_projection": self.token_projection,
            "cap_fired": self.cap_fired,
        }


@dataclass(frozen=True)
class CapOutput:
    rows: list[CapRow]  # baseline, capped[, steered, steered_capped]
    cap: CapInfo
    readout_layer: int
    decoder: str
    seconds: float
    new_tokens: int  # all rows together
    stopped: bool  # ended by should_stop before EOS and max_new_tokens
    prompt: str
    system: str | None
    vector_name: str | None
    steer_layers: tuple[int, ...]
    strength: float
    sampling: SamplingConfig
    model_id: str
    # The axis' own landmarks per layer, for the normalised scale (0 = roles, 1 = Assistant).
    roles_projection: list[float]  # the role vectors' mean projection
    default_projection: list[float]  # the default Assistant's projection

    def row(self, key: str) -> CapRow:
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(key)

    @property
    def combined(self) -> bool:
        return self.vector_name is not None

    def pairs(self) -> list[tuple[CapRow, CapRow]]:
        """(uncapped, capped) pairs: (baseline, capped)[, (steered, steered_capped)]."""
        out = [(self.row("baseline"), self.row("capped"))]
        if self.combined:
            out.append((self.row("steered"), self.row("steered_capped")))
        return out

    def normalised(
        self, values: Sequence[float], layers: Sequence[int] | None = None
    ) -> list[float]:
        """Projections at ``layers`` (default: every layer, in order) on the scale where 0 is
        the roles' mean and 1 the default Assistant at that layer. Raw projections grow
        with depth (FACTS.md), so only this scale compares layers."""
        at = list(range(len(self.roles_projection))) if layers is None else list(layers)
        roles = torch.tensor([self.roles_projection[x] for x in at], dtype=torch.float64)
        default = torch.tensor([self.default_projection[x] for x in at], dtype=torch.float64)
        return normalised_projection(
            torch.tensor(list(values), dtype=torch.float64), roles, default
        ).tolist()

    def as_dict(self) -> dict[str, Any]:
        """Everything as plain JSON values (for the API and downloads)."""
        return {
            "cap": self.cap.as_dict(),
            "roles_projection": self.roles_projection,
            "default_projection": self.default_projection,
            "readout_layer": self.readout_layer,
            "rows": [r.as_dict() for r in self.rows],
            "persona": self.vector_name,
            "steer_layers": list(self.steer_layers),
            "strength": self.strength,
            "new_tokens": self.new_tokens,
            "seconds": round(self.seconds, 3),
            "stopped": self.stopped,
            "decoder": self.decoder,
            "model_id": self.model_id,
        }


# --------------------------------------------------------------------------- pure math


def lift_tolerance(token_norms: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """How far from τ a lifted token's projection may land: a few rounding steps of ``dtype``
    at the size of the residual (the cap is computed and stored in the model's dtype)."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps
    return _TOLERANCE_ULPS * eps * token_norms.float().clamp(min=1.0)


def lifted_share(
    token_proj: torch.Tensor, floors: torch.Tensor, tolerance: torch.Tensor
) -> list[float]:
    """Per cap layer, the share of tokens whose projection sits on the floor.

    ``token_proj`` and ``tolerance`` [n_tokens, k], ``floors`` [k] -> k shares in [0, 1]
    (all 0 for a row with no tokens).
    """
    if token_proj.shape[0] == 0:
        return [0.0] * int(floors.shape[0])
    on_floor = (token_proj - floors[None, :]).abs() <= tolerance
    return on_floor.float().mean(0).tolist()


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class _Checked:
    cap: CapInfo
    plans: dict[str, RowPlan]  # row key -> plan, in batch order
    readout: int
    steer_layers: tuple[int, ...]
    strength: float


def _check(model: LoadedModel, axis: AxisData, req: CapRequest) -> _Checked:
    if (axis.n_layers, axis.d_model) != (model.n_layers, model.d_model):
        raise InputError(
            f"The axis has {axis.n_layers} layers of width {axis.d_model}; the loaded model has "
            f"{model.n_layers} of width {model.d_model}: build the axis for this model."
        )
    positions = check_positions(req.positions)
    percentile = check_percentile(req.percentile)
    cap_layers = (
        default_cap_layers(model.n_layers)
        if req.cap_layers is None
        else tuple(sorted({check_layer(x, model.n_layers, "Cap layer") for x in req.cap_layers}))
    )
    if not cap_layers:
        raise InputError("Capping needs at least one layer.")
    floors = axis.floors(percentile)
    info = CapInfo(cap_layers, tuple(float(floors[x]) for x in cap_layers), percentile)
    cap_ops = axis.cap_plan(cap_layers, percentile, positions)
    plans: dict[str, RowPlan] = {"baseline": (), "capped": cap_ops}
    steer_layers: tuple[int, ...] = ()
    strength = 0.0
    if req.vector is not None:
        check_fits(req.vector, model.n_layers, model.d_model, model.model_id)
        if not req.layers:
            raise SteeringError("Pick at least one layer to steer.")
        steer_layers = tuple(check_layer(x, model.n_layers) for x in req.layers)
        strength = check_finite(req.strength, "Strength")
        add = add_plan(req.vector.vectors, steer_layers, strength, positions)
        plans["steered"] = add
        plans["steered_capped"] = add + cap_ops
    readout = (
        cap_layers[-1]
        if req.readout_layer is None
        else check_layer(req.readout_layer, model.n_layers, "Read-out layer")
    )
    return _Checked(info, plans, readout, steer_layers, strength)


# --------------------------------------------------------------------------- running


def _outputs(
    model: LoadedModel,
    axis: AxisData,
    req: CapRequest,
    checked: _Checked,
    res: GenerationResult,
    seconds: float,
    stopped: bool,
) -> CapOutput:
    capture = res.capture
    assert capture.response_tokens is not None  # generated with keep_tokens=True
    device = capture.response_mean.device
    direction = axis.axis.to(device)
    layers = list(checked.cap.layers)
    floors = torch.tensor(checked.cap.floors, device=device)
    per_layer = project(capture.response_mean, direction)  # [batch, n_layers]
    rows = []
    for i, key in enumerate(checked.plans):
        toks = res.tokens[i]
        acts = capture.response_tokens[i, : len(toks)]  # [n, n_layers, d]
        # The same operations for every row, so identical rows project bit-identically.
        at_readout = project(acts[:, checked.readout], direction[checked.readout])
        at_caps = project(acts[:, layers], direction[layers])  # [n, k]
        capped = key in ("capped", "steered_capped")
        fired = None
        if capped:
            tol = lift_tolerance(acts[:, layers].float().norm(dim=-1), model.dtype)
            fired = lifted_share(at_caps, floors, tol)
        rows.append(
            CapRow(
                key=key,
                label=ROW_LABELS[key],
                capped=capped,
                steered=key in ("steered", "steered_capped"),
                text=model.decode(toks),
                tokens=toks,
                token_strings=model.token_strings(toks),
                finished=res.finished[i],
                axis_projection=per_layer[i].tolist(),
                token_projection=at_readout.tolist(),
                cap_token_projection=at_caps.T.tolist(),
                cap_fired=fired,
            )
        )
    return CapOutput(
        rows=rows,
        cap=checked.cap,
        readout_layer=checked.readout,
        decoder=res.decoder,
        seconds=seconds,
        new_tokens=sum(len(t) for t in res.tokens),
        stopped=stopped,
        prompt=req.prompt,
        system=req.system,
        vector_name=req.vector.name if req.vector is not None else None,
        steer_layers=checked.steer_layers,
        strength=checked.strength,
        sampling=req.sampling,
        model_id=model.model_id,
        roles_projection=project(axis.role_vectors, axis.axis).mean(0).tolist(),
        default_projection=project(axis.default_vector, axis.axis).tolist(),
    )


def cap_stream(
    model: LoadedModel,
    axis: AxisData,
    req: CapRequest,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[list[str], CapOutput | None]]:
    """Yield the texts so far (in row order) after each token; the last yield also carries the
    :class:`CapOutput`. The request is checked here, before anything runs: a bad one raises an
    :class:`InputError` at once. ``should_stop`` ends the run between steps (``stopped=True``)."""
    checked = _check(model, axis, req)
    return _generate(model, axis, req, checked, should_stop)


def _generate(
    model: LoadedModel,
    axis: AxisData,
    req: CapRequest,
    checked: _Checked,
    should_stop: Callable[[], bool] | None,
) -> Iterator[tuple[list[str], CapOutput | None]]:
    ids = model.chat_ids(req.prompt, system=req.system or None)
    plans = list(checked.plans.values())
    updates = side_by_side_stream(model, ids, plans, req.sampling, should_stop=should_stop)
    yield from texts_then_result(
        updates,
        lambda res, seconds, stopped: _outputs(model, axis, req, checked, res, seconds, stopped),
    )


def cap(
    model: LoadedModel,
    axis: AxisData,
    req: CapRequest,
    should_stop: Callable[[], bool] | None = None,
) -> CapOutput:
    """:func:`cap_stream` to the end."""
    return last_result(cap_stream(model, axis, req, should_stop), "capping")


def parse_cap_layers(text: str | Sequence[Any] | None, n_layers: int) -> tuple[int, ...] | None:
    """Cap layers as typed ("15-18", "15,17"; empty or None: the default window)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    return parse_layers(text, n_layers)
