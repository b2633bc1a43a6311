"""Fine-tuning: the training loss as it falls, and the persona shift it caused.

:func:`loss_figure` draws the loss of every optimizer step (drawn live while a run trains: the
x axis is fixed to the run's total steps from the start, so the line grows instead of the axis
rescaling), dotted lines between epochs and each epoch's mean as a flat segment.

:func:`shift_figure` draws every persona vector's shift (the tuned model's mean response
projection minus the base model's, at the vector's layer) on one axis, in units of that vector's
length at its layer: raw activation units differ from vector to vector and layer to layer, so
only this unit compares (0 = the base model, 1 = as far as the persona's own system prompts move
the model). A model tuned with an inoculation context is a second bar, screening's prediction a
diamond; raw units are on hover.

Imports: plotly and :mod:`.common` only (no torch, no gradio).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from persona_explorer.plots.common import (
    BASELINE_COLOR,
    MUTED_TEXT,
    STEERED_COLORS,
    ZERO_LINE_COLOR,
    floats,
    fmt,
    label,
    layer_index,
    plain_int,
    style,
    text,
)

__all__ = ["SHIFT_UNIT", "ShiftBar", "loss_figure", "shift_figure"]

LOSS_COLOR = STEERED_COLORS[0]
EPOCH_COLOR = MUTED_TEXT
BASE_COLOR = BASELINE_COLOR
TUNED_COLOR = STEERED_COLORS[0]
INOCULATED_COLOR = STEERED_COLORS[1]
MAX_PANELS = 8  # one per vector; the app allows fewer
_BAR_PX = 56
_MIN_HEIGHT = 300
_LOSS_HEIGHT = 320


# --------------------------------------------------------------------------- loss


def _boundaries(values: Sequence[int], n_steps: int) -> list[int]:
    out: list[int] = []
    for i, v in enumerate(values):
        step = plain_int(v, f"epoch_boundaries[{i}]")
        if step < 1:
            raise ValueError(f"epoch_boundaries[{i}] must be a step number >= 1, got {step}")
        if out and step <= out[-1]:
            raise ValueError("epoch_boundaries must be strictly increasing")
        out.append(step)
    if out and out[-1] > n_steps:
        raise ValueError(f"an epoch boundary ({out[-1]}) lies beyond the last step ({n_steps})")
    return out


def loss_figure(
    losses: Sequence[float],
    epoch_boundaries: Sequence[int] = (),
    *,
    total_steps: int | None = None,
    epoch_losses: Sequence[float] = (),
    title: str | None = None,
) -> go.Figure:
    """The training loss per optimizer step (1-based on the x axis).

    ``epoch_boundaries``: the last step of each epoch so far (e.g. ``[16, 32]``), drawn as dotted
    lines between epochs; ``epoch_losses``: each finished epoch's mean loss, drawn as a flat
    segment over its steps (one per boundary, at most). ``total_steps``: the run's planned
    steps, so a live plot keeps its x axis while the line grows.
    """
    values = floats(losses, "losses", allow_empty=True)
    total = len(values) if total_steps is None else plain_int(total_steps, "total_steps")
    if total < len(values):
        raise ValueError(f"total_steps ({total}) is less than the steps drawn ({len(values)})")
    bounds = _boundaries(epoch_boundaries, max(total, 1))
    means = floats(epoch_losses, "epoch_losses", allow_empty=True)
    if len(means) > len(bounds):
        raise ValueError(
            f"{len(means)} epoch losses but only {len(bounds)} epoch boundaries: one mean per "
            "finished epoch"
        )
    fig = go.Figure()
    steps = list(range(1, len(values) + 1))
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=values,
            mode="lines+markers" if len(values) <= 40 else "lines",
            name="loss per step",
            line={"color": LOSS_COLOR, "width": 2},
            marker={"size": 5},
            hovertemplate="step %{x}: loss %{y:.3f}<extra></extra>",
        )
    )
    starts = [0, *bounds]
    for i, mean in enumerate(means):
        fig.add_trace(
            go.Scatter(
                x=[starts[i] + 0.5, starts[i + 1] + 0.5],
                y=[mean, mean],
                mode="lines",
                name="epoch mean",
                line={"color": EPOCH_COLOR, "width": 2, "dash": "dash"},
                showlegend=i == 0,
                legendgroup="epoch mean",
                hovertemplate=f"epoch {i + 1}: mean loss {fmt(mean, 3)}<extra></extra>",
            )
        )
    for step in bounds:
        if step < total:  # the end of the last epoch is the end of the run
            fig.add_vline(
                x=step + 0.5, line={"dash": "dot", "color": ZERO_LINE_COLOR, "width": 1.5}
            )
    edges = [*starts, total] if not bounds or bounds[-1] < total else starts
    spans = [(a, b) for a, b in itertools.pairwise(edges) if b > a]
    for i, (start, end) in enumerate(spans if len(spans) > 1 else []):
        fig.add_annotation(
            x=(start + end) / 2 + 0.5,
            y=1.0,
            xref="x",
            yref="paper",
            yanchor="top",  # inside the plot: the legend sits right above it
            text=f"epoch {i + 1}",
            showarrow=False,
            bgcolor="rgba(255,255,255,0.7)",
            font={"size": 11, "color": MUTED_TEXT},
        )
    if title is None:
        if values:
            title = f"Training loss: {fmt(values[-1], 3)} after step {len(values)} of {total}"
        else:
            title = "Training loss (waiting for the first step)"
    legend = ["loss per step", "epoch mean"] if means else []
    style(
        fig,
        title=title,
        x_title="optimizer step",
        y_title="loss (assistant tokens)",
        height=_LOSS_HEIGHT,
        legend=legend,
    )
    fig.update_layout(showlegend=bool(means))
    fig.update_xaxes(range=[0.5, max(total, 1) + 0.5], zeroline=False)
    if total <= 20:
        fig.update_xaxes(tickmode="linear", tick0=1, dtick=1)
    return fig


# --------------------------------------------------------------------------- shift


@dataclass(frozen=True)
class ShiftBar:
    """One vector's numbers: the mean response projections at ``layer`` of the base and the
    tuned model's answers, the vector's length ``scale`` there (for an extracted vector, the
    distance between its persona's positive and negative answers at that layer) and, optional,
    the shift screening predicted for the data (in activation units, like ``base``)."""

    name: str
    layer: int
    base: float
    tuned: float
    scale: float
    predicted: float | None = None

    @property
    def shift(self) -> float:
        return self.tuned - self.base

    def in_lengths(self, shift: float) -> float:
        """A shift (activation units) in units of the vector's length at its layer: 0 = the
        base model, 1 = as far as the persona's own prompts move it."""
        return shift / self.scale

    @property
    def relative(self) -> float:
        """The tuned model's shift in persona lengths (:meth:`in_lengths`)."""
        return self.in_lengths(self.shift)


def _bar(row: object, i: int, n_layers: int) -> ShiftBar:
    def get(key: str) -> object:
        if isinstance(row, Mapping):
            return row.get(key)
        return getattr(row, key, None)

    predicted = get("predicted")
    scale = floats([get("scale")], f"rows[{i}].scale")[0]
    if scale <= 0:
        raise ValueError(f"rows[{i}].scale must be positive (the vector's length), not {scale}")
    return ShiftBar(
        name=label(get("name"), f"rows[{i}].name"),
        layer=layer_index(get("layer"), f"rows[{i}].layer", n_layers),
        base=floats([get("base")], f"rows[{i}].base")[0],
        tuned=floats([get("tuned")], f"rows[{i}].tuned")[0],
        scale=scale,
        predicted=None if predicted is None else floats([predicted], f"rows[{i}].predicted")[0],
    )


SHIFT_UNIT = "shift in persona lengths (0 = base model, 1 = the persona's own prompts)"


def shift_figure(
    rows: Sequence[object],
    n_layers: int,
    *,
    inoculated: Mapping[str, float] | None = None,
    inoculated_label: str = "tuned with context",
    title: str | None = None,
) -> go.Figure:
    """Every vector's shift (tuned minus base) on one axis, in units of that vector's length at
    its layer, so vectors and layers compare: 0 is the base model, 1 is as far along the vector
    as the persona's own system prompts move the model. With ``inoculated`` (vector name → the
    mean projection of a model tuned on the same data with an inoculation context) a second
    bar; a predicted shift (screening's) is a diamond. Raw activation units are on hover.

    ``rows``: :class:`ShiftBar` or anything with ``name``, ``layer``, ``base``, ``tuned``,
    ``scale`` (and optionally ``predicted``) as attributes or keys; names must be unique.
    """
    if not rows:
        raise ValueError("shift_figure needs at least one vector")
    if len(rows) > MAX_PANELS:
        raise ValueError(f"shift_figure draws at most {MAX_PANELS} vectors, got {len(rows)}")
    bars = [_bar(r, i, n_layers) for i, r in enumerate(rows)]
    names = [b.name for b in bars]
    if len(set(names)) != len(names):
        raise ValueError("every vector must appear once in rows")
    third = dict(inoculated or {})
    unknown = set(third) - set(names)
    if unknown:
        raise ValueError(f"inoculated names vectors not in rows: {sorted(unknown)}")
    for name, value in third.items():
        third[name] = floats([value], f"inoculated[{name!r}]")[0]
    other_label = text(label(inoculated_label, "inoculated_label"))
    ticks = [f"{text(b.name)} · layer {b.layer}" for b in bars]
    hover = (
        "%{y}<br>%{x:+.2f} of the persona's length<br>"
        "%{customdata[0]:+.3f} activation units (base %{customdata[1]:.3f}, "
        "length %{customdata[2]:.3f})<extra>%{fullData.name}</extra>"
    )

    def bar_trace(name: str, color: str, picked: list[tuple[str, ShiftBar, float]]) -> go.Bar:
        rel = [b.in_lengths(value - b.base) for _, b, value in picked]
        return go.Bar(
            x=rel,
            y=[tick for tick, _, _ in picked],
            orientation="h",
            name=name,
            marker={"color": color},
            text=[fmt(r, 2, sign=True) for r in rel],
            textposition="auto",
            customdata=[[value - b.base, b.base, b.scale] for _, b, value in picked],
            hovertemplate=hover,
        )

    fig = go.Figure()
    fig.add_trace(
        bar_trace("tuned", TUNED_COLOR, [(t, b, b.tuned) for t, b in zip(ticks, bars, strict=True)])
    )
    if third:
        picked = [
            (t, b, third[b.name]) for t, b in zip(ticks, bars, strict=True) if b.name in third
        ]
        fig.add_trace(bar_trace(other_label, INOCULATED_COLOR, picked))
    predicted = [(t, b) for t, b in zip(ticks, bars, strict=True) if b.predicted is not None]
    if predicted:
        fig.add_trace(
            go.Scatter(
                x=[b.in_lengths(b.predicted) for _, b in predicted],  # type: ignore[arg-type]
                y=[t for t, _ in predicted],
                mode="markers",
                name="screening predicted",
                marker={"symbol": "diamond", "size": 11, "color": MUTED_TEXT},
                customdata=[[b.predicted, b.base, b.scale] for _, b in predicted],
                hovertemplate=hover,
            )
        )
    legend = [
        "tuned",
        *([other_label] if third else []),
        *(["screening predicted"] if predicted else []),
    ]
    style(
        fig,
        title=title or "Persona shift of the answers to the evaluation questions",
        x_title=SHIFT_UNIT,
        height=max(_MIN_HEIGHT, 140 + (_BAR_PX + (18 if third else 0)) * len(bars)),
        legend=legend,
    )
    fig.update_layout(barmode="group", bargap=0.3, showlegend=True)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(zeroline=True, zerolinecolor=ZERO_LINE_COLOR, zerolinewidth=2)
    return fig
