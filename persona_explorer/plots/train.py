"""Fine-tuning: the training loss as it falls, and the persona shift it caused.

:func:`loss_figure` draws the loss of every optimizer step (drawn live while a run trains: the
x axis is fixed to the run's total steps from the start, so the line grows instead of the axis
rescaling), dotted lines between epochs and each epoch's mean as a flat segment.

:func:`shift_figure` draws, per persona vector, the mean projection of the base model's answers
and of the tuned model's (and, optionally, of a model tuned on the same data with an
inoculation context) at one layer, one panel per vector: every vector has its own scale, so
panels are never merged into one axis. Each panel's title states the shift (tuned minus base)
and, when given, the shift screening predicted for the training file.

Imports: plotly and :mod:`.common` only (no torch, no gradio).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots

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

__all__ = ["ShiftBar", "loss_figure", "shift_figure"]

LOSS_COLOR = STEERED_COLORS[0]
EPOCH_COLOR = MUTED_TEXT
BASE_COLOR = BASELINE_COLOR
TUNED_COLOR = STEERED_COLORS[0]
INOCULATED_COLOR = STEERED_COLORS[1]
MAX_PANELS = 8  # one per vector; the app allows fewer
_PANEL_PX = 150
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
    tuned model's answers, and (optional) the shift screening predicted for the data."""

    name: str
    layer: int
    base: float
    tuned: float
    predicted: float | None = None

    @property
    def shift(self) -> float:
        return self.tuned - self.base


def _bar(row: object, i: int, n_layers: int) -> ShiftBar:
    def get(key: str) -> object:
        if isinstance(row, Mapping):
            return row.get(key)
        return getattr(row, key, None)

    predicted = get("predicted")
    return ShiftBar(
        name=label(get("name"), f"rows[{i}].name"),
        layer=layer_index(get("layer"), f"rows[{i}].layer", n_layers),
        base=floats([get("base")], f"rows[{i}].base")[0],
        tuned=floats([get("tuned")], f"rows[{i}].tuned")[0],
        predicted=None if predicted is None else floats([predicted], f"rows[{i}].predicted")[0],
    )


def _panel_title(bar: ShiftBar, other: float | None, other_label: str) -> str:
    title = f"{text(bar.name)} · layer {bar.layer} · shift {fmt(bar.shift, 2, sign=True)}"
    if other is not None:
        title += f" ({text(other_label)}: {fmt(other - bar.base, 2, sign=True)})"
    if bar.predicted is not None:
        title += f" · screening predicted {fmt(bar.predicted, 2, sign=True)}"
    return title


def shift_figure(
    rows: Sequence[object],
    n_layers: int,
    *,
    inoculated: Mapping[str, float] | None = None,
    inoculated_label: str = "tuned with context",
    title: str | None = None,
) -> go.Figure:
    """Per vector (one panel each, stacked), horizontal bars of the base and the tuned model's
    mean response projection; with ``inoculated`` (vector name → the mean projection of a
    model tuned on the same data with an inoculation context) a third bar.

    ``rows``: :class:`ShiftBar` or anything with ``name``, ``layer``, ``base``, ``tuned`` (and
    optionally ``predicted``) as attributes or keys; names must be unique.
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
    other_label = label(inoculated_label, "inoculated_label")
    series = [("base model", BASE_COLOR), ("tuned", TUNED_COLOR)]
    if third:
        series.append((text(other_label), INOCULATED_COLOR))  # legend entries render HTML
    fig = make_subplots(
        rows=len(bars),
        cols=1,
        subplot_titles=[
            _panel_title(b, third.get(b.name), other_label) for b in bars
        ],  # escaped in _panel_title
        vertical_spacing=min(0.14, 0.36 / len(bars)),
    )
    fig.update_annotations(font={"size": 12})
    for row, bar in enumerate(bars, 1):
        values = [bar.base, bar.tuned]
        if third:
            values.append(third.get(bar.name, float("nan")))
        for (series_name, color), value in zip(series, values, strict=False):
            if value != value:  # nan: this vector was not measured on the third model
                continue
            fig.add_trace(
                go.Bar(
                    x=[value],
                    y=[series_name],
                    orientation="h",
                    name=series_name,
                    marker={"color": color},
                    text=[fmt(value, 2)],
                    textposition="auto",
                    showlegend=False,  # the bars are named on their axis
                    hovertemplate=(f"{text(bar.name)}, {series_name}: %{{x:.3f}}<extra></extra>"),
                ),
                row=row,
                col=1,
            )
        fig.update_yaxes(autorange="reversed", row=row, col=1)
    style(
        fig,
        title=title or "Mean projection of the answers to the evaluation questions",
        height=max(_MIN_HEIGHT, 90 + (_PANEL_PX + (30 if third else 0)) * len(bars)),
    )
    fig.update_layout(showlegend=False)
    fig.update_xaxes(zerolinecolor=ZERO_LINE_COLOR)
    fig.update_xaxes(title_text="mean response projection (activation units)", row=len(bars))
    fig.update_layout(barmode="group", bargap=0.25)
    return fig
