"""The projection of each run along the layer axis, and the projection against steering strength
(the Steer tab's two figures)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from persona_explorer.plots.common import (
    BASELINE_COLOR,
    MUTED_TEXT,
    NEUTRAL_COLOR,
    STEERED_COLORS,
    STEERED_SYMBOLS,
    ZERO_LINE_COLOR,
    floats,
    label,
    layer_axis,
    layer_index,
    plain_int,
    same_length,
    shade_layer_bands,
    style,
    text,
)

PROJECTION_TITLE = "Projection (activation units)"
DELTA_TITLE = "Change from<br>baseline"
OWN_BASELINE_KEY = "baseline (dotted, per row)"
_HEIGHT_ONE_PANEL = 400
_HEIGHT_TWO_PANELS = 480


def _rows(
    steered: Mapping[str, Sequence[float]] | Sequence[float],
) -> list[tuple[str, list[float]]]:
    if isinstance(steered, Mapping):
        return [
            (label(name, "steered labels"), floats(values, f"steered[{name!r}]"))
            for name, values in steered.items()
        ]
    values = floats(steered, "steered", allow_empty=True)
    return [("steered", values)] if values else []


def _own_baselines(
    baselines: Mapping[str, Sequence[float]] | None, labels: Sequence[str]
) -> dict[str, list[float]]:
    if baselines is None:
        return {}
    if not isinstance(baselines, Mapping):
        raise ValueError("baselines must be a mapping of steered label -> values")
    own: dict[str, list[float]] = {}
    for name, values in baselines.items():
        if name not in labels:
            raise ValueError(f"baselines[{name!r}] has no steered row of that label")
        own[name] = floats(values, f"baselines[{name!r}]")
    return own


def _mark_readout(fig: go.Figure, layer: int, n: int, panels: int) -> None:
    # For a line, "left" puts the label on the line's left: inwards near the right edge.
    side = "left" if layer > n / 2 else "right"
    for row in range(1, panels + 1):
        # Labelled once, at the bottom of the top panel: the top holds the injected labels.
        fig.add_vline(
            x=layer,
            line={"color": MUTED_TEXT, "width": 1, "dash": "dash"},
            **(
                {
                    "annotation_text": "read-out",
                    "annotation_position": f"bottom {side}",
                    "annotation_font": {"size": 11, "color": MUTED_TEXT},
                }
                if row == 1
                else {}
            ),
            **({"row": row, "col": 1} if panels > 1 else {}),
        )


def layer_projection_figure(
    baseline: Sequence[float] | None,
    steered: Mapping[str, Sequence[float]] | Sequence[float],
    steered_layers: Sequence[int] = (),
    title: str = "Projection onto the persona vector, layer by layer",
    *,
    y_title: str = PROJECTION_TITLE,
    delta: bool = True,
    readout_layer: int | None = None,
    baselines: Mapping[str, Sequence[float]] | None = None,
) -> go.Figure:
    """Per-layer projection of a baseline run and of one or more steered runs.

    ``steered`` is one sequence (drawn as "steered") or a mapping label -> values; an empty one
    draws the baseline alone. Every sequence has one value per layer. Top panel: the baseline
    (dotted) and each steered row (one colour and marker each). Bottom panel, when ``delta``
    and there is a steered row: steered − baseline per row, around a zero line, so what the
    injection changes downstream shows even where both curves are large. The layers in
    ``steered_layers`` are shaded "injected at L" in both panels; ``readout_layer`` (where the
    per-token view reads) gets a dashed "read-out" line.

    ``baselines`` maps a steered label to that row's own baseline (rows projected onto
    different vectors); those are dotted in the row's colour and its delta uses them. Rows
    without one use ``baseline``, which may be None only when every row has its own.
    """
    rows = _rows(steered)
    labels = [name for name, _ in rows]
    own = _own_baselines(baselines, labels)
    if baseline is None:
        if not rows or any(name not in own for name in labels):
            raise ValueError("baseline is required unless every steered row has its own")
        base = None
        n = len(rows[0][1])
        reference = f"steered[{labels[0]!r}]"
    else:
        base = floats(baseline, "baseline")
        n = len(base)
        reference = "baseline"
    for name, values in rows:
        what = "steered" if not isinstance(steered, Mapping) else f"steered[{name!r}]"
        same_length(what, values, n, reference)
    for name, values in own.items():
        same_length(f"baselines[{name!r}]", values, n, reference)
    if isinstance(steered_layers, (str, bytes)):
        raise ValueError("steered_layers must be a sequence of layer indices")
    injected = [layer_index(v, f"steered_layers[{i}]", n) for i, v in enumerate(steered_layers)]
    readout = None if readout_layer is None else layer_index(readout_layer, "readout_layer", n)

    panels = 2 if delta and rows else 1
    shape = _Shape(
        n=n,
        labels=tuple(labels),
        own=tuple(name for name in labels if name in own),
        has_base=base is not None,
        injected=tuple(injected),
        readout=readout,
        title=title,
        y_title=y_title,
        panels=panels,
    )
    ys = _series(base, rows, own, panels)
    drawn = copy.deepcopy(_drawn(shape))
    for trace, y in zip(drawn["data"], ys, strict=True):
        trace["y"] = y
    # Checked above, drawn and styled once per shape by plotly's own calls: nothing to validate
    # again (plotly's builders took 45 ms a figure, the last step of every Steer answer).
    return go.Figure(drawn, _validate=False)


@dataclass(frozen=True)
class _Shape:
    """Everything a layer figure's look depends on; the values only fill its traces."""

    n: int
    labels: tuple[str, ...]
    own: tuple[str, ...]  # the labels with a baseline of their own
    has_base: bool
    injected: tuple[int, ...]
    readout: int | None
    title: str
    y_title: str
    panels: int


def _series(
    base: list[float] | None,
    rows: list[tuple[str, list[float]]],
    own: Mapping[str, list[float]],
    panels: int,
) -> list[list[float | None]]:
    """Each trace's y values, in the order :func:`_draw` adds the traces."""
    ys: list[list[float | None]] = []
    if base is not None:
        ys.append(list(base))
    if own:
        ys.append([None])  # the legend key for every row's dotted baseline
    for name, values in rows:
        if name in own:
            ys.append(list(own[name]))
        ys.append(list(values))
    if panels == 2:
        for name, values in rows:
            ref = own.get(name, base)
            assert ref is not None  # checked: every row has a baseline
            ys.append([v - b for v, b in zip(values, ref, strict=True)])
    return ys


@lru_cache(maxsize=64)
def _drawn(shape: _Shape) -> dict:
    """The figure of ``shape`` as plotly's JSON-ready dict, drawn with zeros (read-only)."""
    zeros = [0.0] * shape.n
    rows = [(name, zeros) for name in shape.labels]
    own = dict.fromkeys(shape.own, zeros)
    return _draw(shape, _series(zeros if shape.has_base else None, rows, own, shape.panels))


def _draw(shape: _Shape, ys: list[list[float | None]]) -> dict:
    """Draw the figure with plotly's builders: the traces (y from ``ys``, in order), the bands,
    the read-out line, the house style and the axes. Returns plotly's dict of it."""
    n, panels, own = shape.n, shape.panels, set(shape.own)
    series = iter(ys)
    if panels == 2:
        fig = make_subplots(
            rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.05
        )
    else:
        fig = go.Figure()
    top = {"row": 1, "col": 1} if panels == 2 else {}
    bottom = {"row": 2, "col": 1}

    xs = list(range(n))
    hover = "%{fullData.name}: %{y:.3f}<extra></extra>"
    legend: list[str] = []
    if shape.has_base:
        legend.append("baseline")
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=next(series),
                name="baseline",
                mode="lines+markers",
                line={"color": BASELINE_COLOR, "width": 2, "dash": "dot"},
                marker={"size": 5},
                hovertemplate=hover,
            ),
            **top,
        )
    if own:
        # One legend entry explains every row's dotted twin, instead of doubling the legend.
        legend.append(OWN_BASELINE_KEY)
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=next(series),
                name=OWN_BASELINE_KEY,
                mode="lines",
                line={"color": NEUTRAL_COLOR, "width": 2, "dash": "dot"},
                hoverinfo="skip",
            ),
            **top,
        )
    for k, name in enumerate(shape.labels):
        color = STEERED_COLORS[k % len(STEERED_COLORS)]
        group = f"row{k}"
        legend.append(name)
        if name in own:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=next(series),
                    name=text(f"{name} · baseline"),
                    legendgroup=group,
                    showlegend=False,
                    mode="lines",
                    line={"color": color, "width": 1.5, "dash": "dot"},
                    hovertemplate=hover,
                ),
                **top,
            )
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=next(series),
                name=text(name),
                legendgroup=group,
                mode="lines+markers",
                line={"color": color, "width": 2.5},
                marker={"size": 6, "symbol": STEERED_SYMBOLS[k % len(STEERED_SYMBOLS)]},
                hovertemplate=hover,
            ),
            **top,
        )
    if panels == 2:
        for k, name in enumerate(shape.labels):
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=next(series),
                    name=text(name),
                    legendgroup=f"row{k}",
                    showlegend=False,
                    mode="lines+markers",
                    line={"color": STEERED_COLORS[k % len(STEERED_COLORS)], "width": 2},
                    marker={"size": 5, "symbol": STEERED_SYMBOLS[k % len(STEERED_SYMBOLS)]},
                    hovertemplate="%{fullData.name}: %{y:+.3f} from baseline<extra></extra>",
                ),
                **bottom,
            )
    if next(series, None) is not None:
        raise AssertionError("more series than traces")

    # After the traces: plotly skips shapes on a subplot that has no data yet.
    shade_layer_bands(fig, shape.injected, n, panels, "injected")
    if shape.readout is not None:
        _mark_readout(fig, shape.readout, n, panels)
    style(
        fig,
        title=shape.title,
        height=_HEIGHT_TWO_PANELS if panels == 2 else _HEIGHT_ONE_PANEL,
        legend=legend,
    )
    layer_axis(fig, n)
    fig.update_layout(hovermode="x unified", legend={"groupclick": "togglegroup"})
    fig.update_yaxes(zeroline=True, zerolinecolor=ZERO_LINE_COLOR)
    if panels == 2:
        fig.update_yaxes(title_text=shape.y_title, **top)
        fig.update_yaxes(
            title_text=DELTA_TITLE, rangemode="tozero", zerolinecolor=MUTED_TEXT, **bottom
        )
        fig.update_xaxes(title_text="Layer", **bottom)
    else:
        fig.update_yaxes(title_text=shape.y_title)
        fig.update_xaxes(title_text="Layer")
    return fig.to_plotly_json()


def strength_strip_figure(
    strengths: Sequence[float],
    projections: Sequence[float],
    layer: int,
    title: str | None = None,
) -> go.Figure:
    """Projection at ``layer`` against the steering strength (coefficient) that produced it."""
    xs = floats(strengths, "strengths")
    ys = floats(projections, "projections")
    same_length("projections", ys, len(xs), "strengths")
    layer = plain_int(layer, "layer")
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    xs = [xs[i] for i in order]
    ys = [ys[i] for i in order]

    fig = go.Figure()
    if xs[0] <= 0.0 <= xs[-1]:
        fig.add_vline(
            x=0.0,
            line={"color": "#B8C0CA", "width": 1, "dash": "dash"},
            annotation_text="no steering",
            annotation_position="top",
            annotation_font={"size": 11, "color": MUTED_TEXT},
        )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            name=f"layer {layer}",
            mode="lines+markers",
            line={"color": STEERED_COLORS[0], "width": 2},
            marker={"size": 9, "color": STEERED_COLORS[0], "line": {"color": "white", "width": 1}},
            hovertemplate="strength %{x:.3f}<br>projection %{y:.3f}<extra></extra>",
        )
    )
    style(
        fig,
        title=title if title is not None else f"Projection vs steering strength, layer {layer}",
        x_title="Steering strength",
        y_title=f"Projection at layer {layer}",
    )
    fig.update_layout(showlegend=False)
    fig.update_yaxes(zeroline=True, zerolinecolor=ZERO_LINE_COLOR)
    return fig
