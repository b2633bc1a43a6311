"""Side-by-side steering: the baseline and steered answers to one prompt, in one batched pass.

Row 0 is always the unsteered baseline; each further row steers with one strength. Projections
onto the persona (per layer, and per token at one layer) come from the same forward passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .generation import GenerationResult, SamplingConfig, generate_stream
from .limits import check_layer
from .model import LoadedModel
from .projection import layer_projections, token_projections
from .steering import Positions, SteeringError, add_plan
from .vectors import PersonaVector, check_fits


@dataclass(frozen=True)
class SteerRequest:
    prompt: str
    vector: PersonaVector
    layers: tuple[int, ...]
    strengths: tuple[float, ...]  # one steered row per strength
    system: str | None = None
    positions: Positions = "all"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    projection_layer: int | None = None  # per-token view; default: the first steered layer


@dataclass(frozen=True)
class RowOutput:
    label: str
    strength: float
    text: str
    tokens: list[int]
    token_strings: list[str]
    layer_projection: list[float]  # response-mean projection at every layer
    token_projection: list[float]  # per response token, at the projection layer
    finished: bool


@dataclass(frozen=True)
class SteerOutput:
    rows: list[RowOutput]
    layers: tuple[int, ...]
    projection_layer: int
    decoder: str
    seconds: float
    new_tokens: int

    @property
    def baseline(self) -> RowOutput:
        return self.rows[0]

    @property
    def steered(self) -> list[RowOutput]:
        return self.rows[1:]

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def row_label(strength: float) -> str:
    return f"steered ×{strength:g}"


def _check(model: LoadedModel, req: SteerRequest) -> int:
    check_fits(req.vector, model.n_layers, model.d_model, model.model_id)
    if not req.layers:
        raise SteeringError("Pick at least one layer to steer.")
    if not req.strengths:
        raise SteeringError("Give at least one strength.")
    # Checked before add_plan, which indexes the vector by layer.
    for layer in req.layers:
        check_layer(layer, model.n_layers)
    proj_layer = req.projection_layer if req.projection_layer is not None else req.layers[0]
    return check_layer(proj_layer, model.n_layers, "Projection layer")


def _outputs(
    model: LoadedModel, req: SteerRequest, res: GenerationResult, proj_layer: int, seconds: float
) -> SteerOutput:
    cap = res.capture
    vectors = req.vector.vectors.to(cap.response_mean.device)
    per_layer = layer_projections(cap.response_mean, vectors).tolist()
    rows = []
    for i, toks in enumerate(res.tokens):
        strength = 0.0 if i == 0 else req.strengths[i - 1]
        assert cap.response_tokens is not None
        token_acts = cap.response_tokens[i, : len(toks)]
        rows.append(
            RowOutput(
                label="baseline" if i == 0 else row_label(strength),
                strength=strength,
                text=model.decode(toks),
                tokens=toks,
                token_strings=model.token_strings(toks),
                layer_projection=per_layer[i],
                token_projection=token_projections(
                    token_acts, req.vector.vectors, proj_layer
                ).tolist(),
                finished=res.finished[i],
            )
        )
    return SteerOutput(
        rows=rows,
        layers=req.layers,
        projection_layer=proj_layer,
        decoder=res.decoder,
        seconds=seconds,
        new_tokens=sum(len(t) for t in res.tokens),
    )


def steer_stream(
    model: LoadedModel,
    req: SteerRequest,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[list[str], SteerOutput | None]]:
    """Yield the texts so far ([baseline, steered...]) after each token; the last yield also
    carries the full :class:`SteerOutput`."""
    proj_layer = _check(model, req)
    ids = model.chat_ids(req.prompt, system=req.system or None)
    plans = [()] + [
        add_plan(req.vector.vectors, req.layers, s, req.positions) for s in req.strengths
    ]
    started = time.perf_counter()
    for update in generate_stream(
        model, [ids] * len(plans), plans, req.sampling, keep_tokens=True, should_stop=should_stop
    ):
        texts = [model.decode(t) for t in update.tokens]
        if update.result is None:
            yield texts, None
        else:
            seconds = time.perf_counter() - started
            yield texts, _outputs(model, req, update.result, proj_layer, seconds)


def steer(model: LoadedModel, req: SteerRequest) -> SteerOutput:
    for _, out in steer_stream(model, req):
        if out is not None:
            return out
    raise RuntimeError("steering ended without a result")
