"""Activation capping's figures: the projection on the Assistant Axis by layer for uncapped and
capped answers, and per token at one layer.

Pairs share a colour (uncapped and capped in blue; steered and steered + capped in the first
steered colour): the uncapped answer is dotted, the capped one solid. The layers the cap acts on
are shaded, and the floor τ is marked at each of them, in the plot's units: the caller passes
τ on the same scale as the curves (the app uses 0 = the roles' mean, 1 = the Assistant).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

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
    layer_axis,
    layer_index,
    number,
    plain_int,
    same_length,
    shade_layer_bands,
    style,
    text,
)

__all__ = ["FLOOR_NAME", "TokenSeries", "cap_layer_figure", "cap_token_figure"]

FLOOR_NAME = "floor τ"
FLOOR_COLOR = "#2A2F36"
PAIR_COLORS: tuple[str, ...] = (BASELINE_COLOR, *STEERED_COLORS)
Y_TITLE = "Projection on the axis"
DELTA_TITLE = "Capped minus<br>uncapped"


def _pair_color(k: int) -> str:
    return PAIR_COLORS[k % len(PAIR_COLORS)]


def _named(series: Mapping[str, Sequence[float]], what: str) -> list[tuple[str, list[float]]]:
    if not isinstance(series, Mapping):
        raise ValueError(f"{what} must be a mapping of label -> values per layer")
    return [(label(k, f"{what} labels"), floats(v, f"{what}[{k!r}]")) for k, v in series.items()]


def cap_layer_figure(
    uncapped: Mapping[str, Sequence[float]],
    capped: Mapping[str, Sequence[float]],
    cap_layers: Sequence[int],
    floors: Sequence[float],
    *,
    readout_layer: int | None = None,
    title: str = "Projection on the Assistant Axis, layer by layer",
    y_title: str = Y_TITLE,
    landmarks: Mapping[str, float] | None = None,
    delta: bool = True,
) -> go.Figure:
    """Response-mean projection on the axis at every layer.

    ``uncapped`` and ``capped`` map labels to one value per layer, in matching order: the k-th
    capped row is the k-th uncapped row with the cap added (uncapped -> capped, steered ->
    steered + capped). ``floors[k]`` is τ at ``cap_layers[k]``. With ``delta``, a bottom panel
    shows capped minus uncapped for each pair. ``readout_layer`` (where a per-token view reads)
    gets a dashed line; each of ``landmarks`` (label -> value, e.g. where the Assistant sits
    on a normalised scale) a labelled dotted line across the top panel.
    """
    before, after = _named(uncapped, "uncapped"), _named(capped, "capped")
    if not before or len(before) != len(after):
        raise ValueError("uncapped and capped need the same number of rows (at least one)")
    n = len(before[0][1])
    for name, values in before + after:
        same_length(f"row {name!r}", values, n, f"row {before[0][0]!r}")
    if isinstance(cap_layers, (str, bytes)):
        raise ValueError("cap_layers must be a sequence of layer indices")
    layers = [layer_index(v, f"cap_layers[{i}]", n) for i, v in enumerate(cap_layers)]
    taus = floats(floors, "floors", allow_empty=True)
    if len(taus) != len(layers) or not layers:
        raise ValueError(f"{len(taus)} floors for {len(layers)} cap layers: one floor per layer")
    readout = None if readout_layer is None else layer_index(readout_layer, "readout_layer", n)
    marks = _landmarks(landmarks)

    panels = 2 if delta else 1
    if panels == 2:
        fig = make_subplots(
            rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.05
        )
    else:
        fig = go.Figure()
    top = {"row": 1, "col": 1} if panels == 2 else {}
    xs = list(range(n))
    hover = "%{fullData.name}: %{y:.2f}<extra></extra>"
    legend: list[str] = []
    for k, ((b_name, b_vals), (a_name, a_vals)) in enumerate(zip(before, after, strict=True)):
        color = _pair_color(k)
        for name, values, dash, width in ((b_name, b_vals, "dot", 2), (a_name, a_vals, None, 2.5)):
            legend.append(name)
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=values,
                    name=text(name),
                    legendgroup=f"pair{k}",
                    mode="lines+markers",
                    line={"color": color, "width": width, "dash": dash},
                    marker={"size": 4 if dash else 6},
                    hovertemplate=hover,
                ),
                **top,
            )
        if panels == 2:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=[a - b for a, b in zip(a_vals, b_vals, strict=True)],
                    name=text(f"{a_name} − {b_name}"),
                    legendgroup=f"pair{k}",
                    showlegend=False,
                    mode="lines+markers",
                    line={"color": color, "width": 2},
                    marker={"size": 5},
                    hovertemplate="%{fullData.name}: %{y:+.2f}<extra></extra>",
                ),
                row=2,
                col=1,
            )
    legend.append(FLOOR_NAME)
    fig.add_trace(
        go.Scatter(
            x=layers,
            y=taus,
            name=FLOOR_NAME,
            mode="markers",
            marker={
                "symbol": "line-ew-open",
                "size": 22,
                "color": FLOOR_COLOR,
                "line": {"width": 3, "color": FLOOR_COLOR},
            },
            hovertemplate="τ at layer %{x}: %{y:.2f}<extra></extra>",
        ),
        **top,
    )
    shade_layer_bands(fig, layers, n, panels, "capped", label_every_panel=False)
    _landmark_lines(fig, marks, top)
    if readout is not None:
        for row in range(1, panels + 1):
            fig.add_vline(
                x=readout,
                line={"color": MUTED_TEXT, "width": 1, "dash": "dash"},
                **({"row": row, "col": 1} if panels > 1 else {}),
            )
    style(fig, title=title, height=480 if panels == 2 else 400, legend=legend)
    layer_axis(fig, n)
    fig.update_layout(hovermode="x unified", legend={"groupclick": "toggleitem"})
    fig.update_yaxes(zeroline=True, zerolinecolor=ZERO_LINE_COLOR)
    if panels == 2:
        fig.update_yaxes(title_text=y_title, row=1, col=1)
        fig.update_yaxes(title_text=DELTA_TITLE, zerolinecolor=MUTED_TEXT, row=2, col=1)
        fig.update_xaxes(title_text="Layer", row=2, col=1)
    else:
        fig.update_yaxes(title_text=y_title)
        fig.update_xaxes(title_text="Layer")
    return fig


def _landmarks(landmarks: Mapping[str, float] | None) -> list[tuple[str, float]]:
    return [
        (label(k, "landmark"), number(v, f"landmarks[{k!r}]")) for k, v in (landmarks or {}).items()
    ]


def _landmark_lines(fig: go.Figure, marks: Sequence[tuple[str, float]], at: dict) -> None:
    for name, value in marks:
        fig.add_hline(
            y=value,
            line={"color": MUTED_TEXT, "width": 1, "dash": "dot"},
            annotation_text=text(name),
            annotation_position="bottom left",
            annotation_font={"size": 11, "color": MUTED_TEXT},
            **at,
        )


class TokenSeries(NamedTuple):
    """One answer's per-token projections: dotted when uncapped, solid when capped; answers
    of one ``pair`` (an uncapped answer and its capped twin) share a colour."""

    label: str
    tokens: Sequence[str]
    values: Sequence[float]
    capped: bool
    pair: int = 0


def cap_token_figure(
    series: Sequence[TokenSeries | tuple],
    layer: int,
    floor: float | None,
    title: str | None = None,
    *,
    y_title: str | None = None,
    landmarks: Mapping[str, float] | None = None,
) -> go.Figure:
    """Per-token projection on the axis at ``layer`` for each answer, against the token's
    position in the answer (hover shows the token). ``floor``: τ at ``layer`` in the values'
    units (a dashed line), or None when the cap does not act there; ``landmarks`` as in
    :func:`cap_layer_figure`."""
    rows = [TokenSeries(*s) for s in series]
    if not rows:
        raise ValueError("series is empty")
    layer = plain_int(layer, "layer")
    tau = None if floor is None else number(floor, "floor")
    marks = _landmarks(landmarks)
    fig = go.Figure()
    legend = []
    for s in rows:
        name = label(s.label, "series label")
        values = floats(s.values, f"values of {name!r}", allow_empty=True)
        if isinstance(s.tokens, (str, bytes)) or len(s.tokens) != len(values):
            raise ValueError(f"{name!r}: one projection per token is needed (tokens and values)")
        legend.append(name)
        fig.add_trace(
            go.Scatter(
                x=list(range(1, len(values) + 1)),
                y=values,
                customdata=[text(str(t)) for t in s.tokens],
                name=text(name),
                mode="lines+markers",
                line={
                    "color": _pair_color(plain_int(s.pair, "pair")),
                    "width": 2.5 if s.capped else 1.5,
                    "dash": None if s.capped else "dot",
                },
                marker={"size": 5 if s.capped else 4},
                hovertemplate="%{fullData.name} · token %{x} “%{customdata}”: %{y:.2f}"
                "<extra></extra>",
            )
        )
    if tau is not None:
        fig.add_hline(
            y=tau,
            line={"color": FLOOR_COLOR, "width": 1.5, "dash": "dash"},
            annotation_text=f"τ = {fmt(tau)}",
            annotation_position="bottom right",
            annotation_font={"size": 11, "color": FLOOR_COLOR},
        )
    _landmark_lines(fig, marks, {})
    style(
        fig,
        title=title or f"Each token's projection on the axis at layer {layer}",
        x_title="Token of the answer",
        y_title=y_title or f"Projection at layer {layer}",
        legend=legend,
    )
    fig.update_layout(hovermode="closest")
    fig.update_yaxes(zeroline=True, zerolinecolor=ZERO_LINE_COLOR)
    return fig
