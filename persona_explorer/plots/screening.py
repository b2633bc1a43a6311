"""Dataset screening: how the samples' scores are spread, per persona vector, and how they move
when an inoculation context is put before every sample.

:func:`score_histograms_figure` draws one histogram per vector (one panel each, stacked), with
the mean dashed. :func:`inoculation_figure` overlays, per vector, the scores without and with
the context, on shared bins so the two bars of a bin compare directly, each with its mean.
Scores are raw activation units along each vector's unit direction: every vector has its own
scale, so panels are never merged into one axis.

Imports: plotly and :mod:`.common` only (no torch, no gradio).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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
    style,
    text,
)

__all__ = ["SCORE_LABELS", "inoculation_figure", "score_histograms_figure"]

# What a score is, in words for an axis title, by the engine's score key.
SCORE_LABELS = {
    "projection_difference": "sample − the model's own answer",
    "sample_projection": "sample's projection (raw)",
}
MAX_PANELS = 8  # one per vector; the app allows fewer
_BINS = 20
_PANEL_PX = 190
_MIN_HEIGHT = 330
BEFORE_COLOR = BASELINE_COLOR
AFTER_COLOR = STEERED_COLORS[0]


def _checked(scores: Mapping[str, Sequence[float]], what: str) -> dict[str, list[float]]:
    if not scores:
        raise ValueError(f"{what} needs at least one vector")
    if len(scores) > MAX_PANELS:
        raise ValueError(f"{what} draws at most {MAX_PANELS} vectors, got {len(scores)}")
    return {
        label(name, "vector name"): floats(v, f"{name} scores", allow_empty=True)
        for name, v in scores.items()
    }


def _bins(values: Sequence[float]) -> dict[str, float] | None:
    """Shared bins over ``values`` (about 20), or None when there is nothing to bin."""
    if not values:
        return None
    low, high = min(values), max(values)
    if math.isclose(low, high):
        low, high = low - 0.5, high + 0.5
    # plotly.js puts a value in bin ``floor((v - start) / size)`` and drops it when that bin
    # is past the last one: with ``size = span / 20`` the top score lands in bin 20 of 0..19
    # and vanishes. Bins a hundredth wider keep it in the last bin, a little short of its end.
    size = (high - low) / (_BINS - 0.01)
    return {"start": low, "end": low + size * _BINS, "size": size}


def _score_title(score: str) -> str:
    if score not in SCORE_LABELS:
        raise ValueError(f"score must be one of {', '.join(SCORE_LABELS)}, got {score!r}")
    return SCORE_LABELS[score]


def in_lengths(
    data: dict[str, list[float]], scales: Mapping[str, float] | None, score: str, layer: int
) -> tuple[dict[str, list[float]], str]:
    """The scores, and the axis title that states their unit. With ``scales`` (vector name →
    its length at ``layer``), every score divided by its vector's length: raw activation units
    differ from vector to vector and layer to layer, and only this unit compares (1 = as far
    as the distance between the persona's own positive and negative answers there)."""
    what = _score_title(score)
    if scales is None:
        return data, f"{what} (activation units)"
    out = {}
    for name, values in data.items():
        if name not in scales:
            raise ValueError(f"scales has no length for {name!r}")
        scale = floats([scales[name]], f"scales[{name!r}]")[0]
        if scale <= 0:
            raise ValueError(f"scales[{name!r}] must be positive, not {scale}")
        out[name] = [v / scale for v in values]
    return out, f"{what}, in persona lengths at layer {layer}"


def _mean_line(fig: go.Figure, values: Sequence[float], color: str, row: int, name: str) -> None:
    mean = sum(values) / len(values)
    fig.add_vline(
        x=mean,
        line={"dash": "dash", "color": color, "width": 1.5},
        annotation_text=f"{name} {fmt(mean, 2)}",
        annotation_position="top right" if name != "with context" else "top left",
        annotation_font={"size": 11, "color": color},
        row=row,
        col=1,
    )


def _panels(names: Sequence[str]) -> go.Figure:
    fig = make_subplots(
        rows=len(names),
        cols=1,
        subplot_titles=[text(n) for n in names],
        vertical_spacing=min(0.12, 0.3 / max(len(names), 1)),
    )
    # Subplot titles are annotations in the figure's font: a little smaller than the title.
    fig.update_annotations(font={"size": 12})
    return fig


def _empty_panel(fig: go.Figure, row: int, why: str) -> None:
    fig.add_annotation(
        text=text(why),
        x=0.5,
        y=0.5,
        xref="x domain" if row == 1 else f"x{row} domain",
        yref="y domain" if row == 1 else f"y{row} domain",
        showarrow=False,
        font={"color": MUTED_TEXT},
    )


def _height(n: int) -> int:
    return max(_MIN_HEIGHT, 110 + _PANEL_PX * n)


def score_histograms_figure(
    scores: Mapping[str, Sequence[float]],
    score: str,
    layer: int,
    n_layers: int,
    *,
    title: str | None = None,
    scales: Mapping[str, float] | None = None,
) -> go.Figure:
    """One histogram per vector of the samples' ``score`` (a key of :data:`SCORE_LABELS`) at
    ``layer``, the mean dashed. A vector without scores gets a panel that says so. With
    ``scales`` (each vector's length at ``layer``) every score is divided by its vector's
    length, so the panels share one unit (see :func:`in_lengths`)."""
    at = layer_index(layer, "layer", n_layers)
    data, what = in_lengths(_checked(scores, "score_histograms_figure"), scales, score, at)
    fig = _panels(list(data))
    for row, (name, values) in enumerate(data.items(), 1):
        if not values:
            _empty_panel(fig, row, "no scores (the model gave no answer to compare with)")
            continue
        fig.add_trace(
            go.Histogram(
                x=values,
                xbins=_bins(values),
                name=text(name),
                marker={"color": BEFORE_COLOR, "line": {"color": "white", "width": 1}},
                hovertemplate="%{x}: %{y} samples<extra>" + text(name) + "</extra>",
                showlegend=False,
            ),
            row=row,
            col=1,
        )
        _mean_line(fig, values, MUTED_TEXT, row, "mean")
        fig.update_yaxes(title_text="samples", row=row, col=1)
    n = sum(len(v) for v in data.values()) // max(len(data), 1)
    style(
        fig,
        title=title or f"Samples' scores at layer {at} ({n} samples)",
        height=_height(len(data)),
    )
    fig.update_xaxes(zerolinecolor=ZERO_LINE_COLOR)
    fig.update_xaxes(title_text=what, row=len(data), col=1)
    fig.update_layout(bargap=0.05)
    return fig


def inoculation_figure(
    before: Mapping[str, Sequence[float]],
    after: Mapping[str, Sequence[float]],
    score: str,
    layer: int,
    *,
    n_layers: int,
    scales: Mapping[str, float] | None = None,
) -> go.Figure:
    """Per vector, the samples' scores without (blue) and with (vermilion) the context,
    overlaid on shared bins, each with its mean dashed. ``before`` and ``after`` name the same
    vectors in the same order."""
    at = layer_index(layer, "layer", n_layers)
    base, what = in_lengths(_checked(before, "inoculation_figure"), scales, score, at)
    moved, _ = in_lengths(_checked(after, "inoculation_figure"), scales, score, at)
    if list(base) != list(moved):
        raise ValueError("before and after must name the same vectors in the same order")
    fig = _panels(list(base))
    for row, name in enumerate(base, 1):
        pair = (
            ("without context", base[name], BEFORE_COLOR),
            ("with context", moved[name], AFTER_COLOR),
        )
        bins = _bins([*base[name], *moved[name]])
        if bins is None:
            _empty_panel(fig, row, "no scores")
            continue
        for series, values, color in pair:
            if not values:
                continue
            fig.add_trace(
                go.Histogram(
                    x=values,
                    xbins=bins,
                    name=series,
                    marker={"color": color, "line": {"color": "white", "width": 1}},
                    opacity=0.6,
                    legendgroup=series,
                    showlegend=row == 1,
                    hovertemplate="%{x}: %{y} samples<extra>" + series + "</extra>",
                ),
                row=row,
                col=1,
            )
            _mean_line(fig, values, color, row, series)
        fig.update_yaxes(title_text="samples", row=row, col=1)
    style(
        fig,
        title=f"Scores without and with the context, layer {at}",
        height=_height(len(base)),
        legend=["without context", "with context"],
    )
    fig.update_xaxes(zerolinecolor=ZERO_LINE_COLOR)
    fig.update_xaxes(title_text=what, row=len(base), col=1)
    fig.update_layout(barmode="overlay", bargap=0.05)
    return fig
