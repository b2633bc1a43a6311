"""Side by side: the baseline and up to three steered answers to one prompt, in one batched pass.

Row 0 is always the unsteered baseline. Each further row steers with its own vector, layers and
strength (:class:`CompareRequest`): up to three different personas, or one persona at several
layers or strengths. :class:`SteerRequest` is the older one-persona form (one row per strength,
any number of them); it runs through the same code.

Projections come from the same forward passes as the texts, and each row is projected onto its
*own* vector (unit length per layer, :mod:`.projection`):

* ``layer_projection[l]``: the response-mean residual at every layer ``l``;
* ``token_projection[i]``: response token ``i`` at the row's *read-out layer* ``R``. By default
  ``R`` is the layer right after the row's last steered layer (the last layer if that is the
  last one): read at the steered layer itself, the view mostly shows the vector that was just
  added, not what the model made of it. A request may name any read-out layer.

The added vector stays in the residual stream, so part of every projection at or after a steered
layer is the vector itself. Adding ``s * v_L`` at layer ``L`` contributes ``s * <v_L, unit(v_R)>``
*directly* to the projection at layer ``R >= L`` (summed over the steered layers ``L <= R``;
nothing before ``L``, nothing for the baseline). ``layer_injected[l]`` is that component at every
layer and ``token_injected`` at the read-out layer; it is the same for every response token,
since every response position is steered, so it applies to the per-token values and to their
mean alike. ``projection - injected`` is therefore the model's own part: how its later layers
responded to the edit (they react to the added vector too; that reaction is exactly what
remains). A row with no response tokens has all-zero projections and injected components.

For comparison, every row also carries the baseline's projections onto *its* vector (at its
read-out layer): ``baseline_layer_projection`` and ``baseline_token_projection``. The baseline row
itself is projected onto the first steered row's vector at that row's read-out layer.

Strength 0 adds nothing (``steering.ops`` skips the edit), and generation is row-invariant, so a
zero-strength row is bit-identical to the baseline: same tokens, same projections, zero injected.

Imports: torch, ``core``, ``engine.model``, ``steering`` (generation, operations, projections)
and ``vectors``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import MAX_COMPARE_ROWS, check_finite, check_layer
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
from persona_explorer.steering.projection import layer_projections, token_projections, unit_rows
from persona_explorer.vectors.persona_vector import PersonaVector, check_fits

__all__ = [
    "CompareRequest",
    "RowOutput",
    "SteerOutput",
    "SteerRequest",
    "SteerRow",
    "compare",
    "compare_stream",
    "default_readout_layer",
    "injected_components",
    "row_label",
    "steer",
    "steer_stream",
]


@dataclass(frozen=True)
class SteerRow:
    """One steered row: ``strength * vector.vectors[l]`` added at each of ``layers``."""

    vector: PersonaVector
    layers: tuple[int, ...]
    strength: float
    label: str | None = (
        None  # None: made from the strength (and vector name, layers if rows differ)
    )


@dataclass(frozen=True)
class CompareRequest:
    prompt: str
    rows: tuple[SteerRow, ...]  # 1 to MAX_COMPARE_ROWS steered rows; the baseline is added
    system: str | None = None
    positions: Positions = "all"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    readout_layer: int | None = None  # None: each row's own default (default_readout_layer)


@dataclass(frozen=True)
class SteerRequest:
    """One persona at one or more strengths (any number of rows, e.g. a strength sweep)."""

    prompt: str
    vector: PersonaVector
    layers: tuple[int, ...]
    strengths: tuple[float, ...]  # one steered row per strength
    system: str | None = None
    positions: Positions = "all"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    projection_layer: int | None = None  # the read-out layer; None: default_readout_layer


@dataclass(frozen=True)
class RowOutput:
    label: str
    strength: float  # 0 for the baseline
    text: str
    tokens: list[int]
    token_strings: list[str]
    layer_projection: list[float]  # response mean at every layer, onto this row's vector
    token_projection: list[float]  # per response token, at readout_layer
    finished: bool  # ended at EOS
    vector_name: str  # the vector projected onto (the baseline: the first steered row's)
    vector_model_id: str
    layers: tuple[int, ...]  # steered layers; () for the baseline
    readout_layer: int
    token_injected: float  # the added vector's direct part of each token_projection value
    layer_injected: list[float]  # the same at every layer (part of layer_projection)
    baseline_layer_projection: list[float]  # the baseline row onto this row's vector
    baseline_token_projection: list[float]  # the baseline's tokens, same vector and layer


@dataclass(frozen=True)
class SteerOutput:
    rows: list[RowOutput]  # [baseline, steered...]
    layers: tuple[int, ...]  # every steered layer, in the order first given
    readout_layer: int  # the baseline row's (= the first steered row's)
    decoder: str
    seconds: float
    new_tokens: int  # generated tokens, all rows together
    stopped: bool  # ended by should_stop, before EOS and max_new_tokens
    prompt: str
    system: str | None
    positions: Positions
    sampling: SamplingConfig
    model_id: str  # the model that generated

    @property
    def baseline(self) -> RowOutput:
        return self.rows[0]

    @property
    def steered(self) -> list[RowOutput]:
        return self.rows[1:]

    @property
    def projection_layer(self) -> int:
        """The older name of :attr:`readout_layer`."""
        return self.readout_layer

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def row_label(strength: float) -> str:
    return f"steered, strength {strength:g}"


def default_readout_layer(layers: Sequence[int], n_layers: int) -> int:
    """The layer right after the last of ``layers``, or the model's last layer."""
    return min(max(layers) + 1, n_layers - 1)


def injected_components(
    vectors: torch.Tensor, layers: Sequence[int], strength: float
) -> list[float]:
    """Per read-out layer ``R``: ``strength * sum(<v_L, unit(v_R)> for L in layers if L <= R)``.

    The direct contribution of the added vectors to a projection at ``R`` (module docstring).
    ``unit`` is :func:`.projection.unit_rows`, the direction the projections use; the dot
    products are taken in float64. A layer listed twice is added twice, so it counts twice.
    """
    n_layers = vectors.shape[0]
    if strength == 0.0 or not layers:
        return [0.0] * n_layers
    v = vectors.detach().to("cpu", torch.float64)
    unit = unit_rows(vectors.detach().cpu()).to(torch.float64)
    dots = v @ unit.T  # dots[L, R] = <v_L, unit(v_R)>
    out = []
    for r in range(n_layers):
        below = [int(layer) for layer in layers if layer <= r]
        # Exactly 0.0 where nothing was added yet (strength * 0.0 would be -0.0 for s < 0).
        out.append(strength * float(dots[below, r].sum()) if below else 0.0)
    return out


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class _Row:
    """A checked steered row."""

    vector: PersonaVector
    layers: tuple[int, ...]
    strength: float
    label: str
    readout: int


def _labels(rows: Sequence[SteerRow]) -> list[str]:
    """Default labels say only what tells the rows apart (the strength, always)."""
    names = {row.vector.name for row in rows}
    layer_sets = {tuple(row.layers) for row in rows}
    out = []
    for row in rows:
        if row.label is not None:
            if not isinstance(row.label, str):
                raise InputError(f"A row label must be text, not {row.label!r}.")
            out.append(row.label)
            continue
        head = row.vector.name if len(names) > 1 else "steered"
        label = f"{head}, strength {row.strength:g}"
        if len(layer_sets) > 1:
            s = "s" if len(row.layers) > 1 else ""
            label += f" at layer{s} {','.join(str(x) for x in row.layers)}"
        out.append(label)
    return out


def _check(model: LoadedModel, req: CompareRequest) -> list[_Row]:
    check_positions(req.positions)
    readout = None
    if req.readout_layer is not None:
        readout = check_layer(req.readout_layer, model.n_layers, "Read-out layer")
    rows = []
    for row, label in zip(req.rows, _labels(req.rows), strict=True):
        check_fits(row.vector, model.n_layers, model.d_model, model.model_id)
        if not row.layers:
            raise SteeringError("Pick at least one layer to steer.")
        # Checked before add_plan, which indexes the vector by layer.
        layers = tuple(check_layer(layer, model.n_layers) for layer in row.layers)
        rows.append(
            _Row(
                vector=row.vector,
                layers=layers,
                strength=check_finite(row.strength, "Strength"),
                label=label,
                readout=readout
                if readout is not None
                else default_readout_layer(layers, model.n_layers),
            )
        )
    return rows


# --------------------------------------------------------------------------- running


def _ordered_layers(rows: Sequence[_Row]) -> tuple[int, ...]:
    seen: dict[int, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row.layers))
    return tuple(seen)


def _outputs(
    model: LoadedModel,
    req: CompareRequest,
    rows: list[_Row],
    res: GenerationResult,
    seconds: float,
    stopped: bool,
) -> SteerOutput:
    cap = res.capture
    assert cap.response_tokens is not None  # generated with keep_tokens=True
    device = cap.response_mean.device
    on_device: dict[int, torch.Tensor] = {}  # one copy per distinct vector

    def project(i: int, vectors: torch.Tensor, readout: int) -> tuple[list[float], list[float]]:
        # The same operations for every row, so identical rows project bit-identically.
        n_tokens = len(res.tokens[i])
        per_layer = layer_projections(cap.response_mean[i], vectors).tolist()
        tokens = token_projections(cap.response_tokens[i, :n_tokens], vectors, readout)
        return per_layer, tokens.tolist()

    def row_output(i: int, row: _Row | None, first: _Row) -> RowOutput:
        shown = row if row is not None else first  # the baseline is seen through row 1
        if id(shown.vector) not in on_device:
            on_device[id(shown.vector)] = shown.vector.vectors.to(device)
        vectors = on_device[id(shown.vector)]
        per_layer, per_token = project(i, vectors, shown.readout)
        if i:
            base_layer, base_token = project(0, vectors, shown.readout)
        else:
            base_layer, base_token = list(per_layer), list(per_token)
        toks = res.tokens[i]
        if row is None or not toks:
            injected = [0.0] * model.n_layers
        else:
            injected = injected_components(row.vector.vectors, row.layers, row.strength)
        return RowOutput(
            label=row.label if row is not None else "baseline",
            strength=row.strength if row is not None else 0.0,
            text=model.decode(toks),
            tokens=toks,
            token_strings=model.token_strings(toks),
            layer_projection=per_layer,
            token_projection=per_token,
            finished=res.finished[i],
            vector_name=shown.vector.name,
            vector_model_id=shown.vector.model_id,
            layers=row.layers if row is not None else (),
            readout_layer=shown.readout,
            token_injected=injected[shown.readout],
            layer_injected=injected,
            baseline_layer_projection=base_layer,
            baseline_token_projection=base_token,
        )

    outs = [row_output(0, None, rows[0])]
    outs += [row_output(i, row, rows[0]) for i, row in enumerate(rows, start=1)]
    return SteerOutput(
        rows=outs,
        layers=_ordered_layers(rows),
        readout_layer=rows[0].readout,
        decoder=res.decoder,
        seconds=seconds,
        new_tokens=sum(len(t) for t in res.tokens),
        stopped=stopped,
        prompt=req.prompt,
        system=req.system,
        positions=req.positions,
        sampling=req.sampling,
        model_id=model.model_id,
    )


def _run(
    model: LoadedModel,
    req: CompareRequest,
    should_stop: Callable[[], bool] | None,
) -> Iterator[tuple[list[str], SteerOutput | None]]:
    """The one code path behind :func:`compare_stream` and :func:`steer_stream`. The request
    is checked here, when the stream is made, so a bad one fails before anything runs."""
    rows = _check(model, req)
    return _generate(model, req, rows, should_stop)


def _generate(
    model: LoadedModel,
    req: CompareRequest,
    rows: list[_Row],
    should_stop: Callable[[], bool] | None,
) -> Iterator[tuple[list[str], SteerOutput | None]]:
    ids = model.chat_ids(req.prompt, system=req.system or None)
    plans: list[RowPlan] = [()]
    plans += [add_plan(r.vector.vectors, r.layers, r.strength, req.positions) for r in rows]
    updates = side_by_side_stream(model, ids, plans, req.sampling, should_stop=should_stop)
    yield from texts_then_result(
        updates, lambda res, seconds, stopped: _outputs(model, req, rows, res, seconds, stopped)
    )


def compare_stream(
    model: LoadedModel,
    req: CompareRequest,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[list[str], SteerOutput | None]]:
    """Yield the texts so far ([baseline, row 1, ...]) after each token; the last yield also
    carries the full :class:`SteerOutput`.

    ``should_stop`` is asked between prompt chunks and after every decoding step; when it ends
    the run, the output says ``stopped=True`` and holds what was generated (no tokens at all
    if it came during the prompt pass). Refuses no rows, or more than
    :data:`MAX_COMPARE_ROWS`, with an :class:`InputError`.
    """
    if not req.rows:
        raise InputError("Add at least one steered row to compare with the baseline.")
    if len(req.rows) > MAX_COMPARE_ROWS:
        raise InputError(
            f"Compare takes at most {MAX_COMPARE_ROWS} steered rows beside the baseline, "
            f"not {len(req.rows)}: remove {len(req.rows) - MAX_COMPARE_ROWS}."
        )
    return _run(model, req, should_stop)


def compare(
    model: LoadedModel, req: CompareRequest, should_stop: Callable[[], bool] | None = None
) -> SteerOutput:
    return last_result(compare_stream(model, req, should_stop), "steering")


def _as_compare(req: SteerRequest) -> CompareRequest:
    return CompareRequest(
        prompt=req.prompt,
        rows=tuple(SteerRow(req.vector, req.layers, s, row_label(s)) for s in req.strengths),
        system=req.system,
        positions=req.positions,
        sampling=req.sampling,
        readout_layer=req.projection_layer,
    )


def steer_stream(
    model: LoadedModel,
    req: SteerRequest,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[list[str], SteerOutput | None]]:
    """:func:`compare_stream` for one persona at each of ``req.strengths`` (no row limit)."""
    if not req.strengths:
        raise SteeringError("Give at least one strength.")
    return _run(model, _as_compare(req), should_stop)


def steer(
    model: LoadedModel, req: SteerRequest, should_stop: Callable[[], bool] | None = None
) -> SteerOutput:
    return last_result(steer_stream(model, req, should_stop), "steering")
