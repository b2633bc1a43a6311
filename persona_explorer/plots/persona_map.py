"""Figures of the Persona space tab: the map of the role vectors (2-D or 3-D), the variance
each principal component explains, and how well PC1 matches the Assistant Axis at every layer.

The map's numbers come from :mod:`persona_explorer.axis.persona_space` (coordinates on PC1-PC3,
signs chosen so the Assistant is on the positive side); these functions only draw them. Roles are
coloured by their position on the axis, 0 = the roles' mean and 1 = the default Assistant, on the
blue-white-red scale every figure here uses, so red means "towards the Assistant".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import plotly.graph_objects as go

from persona_explorer.plots.common import (
    BAND_COLOR,
    BAND_TEXT_COLOR,
    BASELINE_COLOR,
    DIVERGING_SCALE,
    MUTED_TEXT,
    NEUTRAL_COLOR,
    STEERED_COLORS,
    floats,
    fmt,
    label,
    layer_axis,
    layer_index,
    plain_int,
    same_length,
    style,
    text,
)

MAP_HEIGHT = 560
PAPER_COSINE = 0.6  # Lu et al.: |cos(PC1, axis)| > 0.6 at every layer of their large models
ASSISTANT_COLOR = BAND_COLOR
POINT_STYLE: dict[str, tuple[str, str, str]] = {
    # kind: (colour, 2-D symbol, 3-D symbol)
    "prompt": ("#009E73", "diamond", "square"),
    "answer": ("#CC79A7", "square", "diamond-open"),
}
_ARROW_COLORS = (BASELINE_COLOR, *STEERED_COLORS)
_HOVER_TEXT_CHARS = 120
# A user point farther out than this many times the half-width of the roles' box (about their
# centre) is drawn on that boundary, in its direction, marked "(off the map)": a prompt's mean
# (chat template included) can lie ten times farther out than any role, and one greedy answer
# two to three times (issue 26). Any more room than a margin shrinks the roles to one cluster.
FAR_FACTOR = 1.25


@dataclass(frozen=True)
class MapPoint:
    """A user activation on the map: ``kind`` picks its marker; ``detail`` shows on hover."""

    name: str
    coords: Sequence[float]
    kind: Literal["prompt", "answer"]
    detail: str = ""


@dataclass(frozen=True)
class MapArrow:
    """A persona vector drawn from ``start`` to ``end`` (PC1-PC3 coordinates)."""

    name: str
    start: Sequence[float]
    end: Sequence[float]
    axis_cosine: float


def _coords(values: Sequence[float], name: str, dims: int) -> list[float]:
    out = floats(values, name)
    if len(out) < dims:
        raise ValueError(f"{name} needs at least {dims} coordinates, got {len(out)}")
    return out[:dims]


def pull_in(
    point: Sequence[float], core: Sequence[Sequence[float]], factor: float = FAR_FACTOR
) -> tuple[list[float], bool]:
    """``point`` as drawn: where it is when within ``factor`` times the core box's half-width
    of the box's centre (on every coordinate), else moved along the line from the centre onto
    that boundary. Returns the drawn coordinates and whether it was moved."""
    dims = len(point)
    lo = [min(c[i] for c in core) for i in range(dims)]
    hi = [max(c[i] for c in core) for i in range(dims)]
    centre = [(a + b) / 2 for a, b in zip(lo, hi, strict=True)]
    half = [max((b - a) / 2, 1e-9) * factor for a, b in zip(lo, hi, strict=True)]
    offset = [p - c for p, c in zip(point, centre, strict=True)]
    t = min(1.0, *(h / abs(o) for h, o in zip(half, offset, strict=True) if o))
    if t >= 1.0:
        return list(point), False
    return [c + t * o for c, o in zip(centre, offset, strict=True)], True


def _short(value: str) -> str:
    one_line = " ".join(value.split())
    if len(one_line) > _HOVER_TEXT_CHARS:
        one_line = one_line[: _HOVER_TEXT_CHARS - 1] + "…"
    return text(one_line)


def _pct(value: float) -> str:
    return f"{100 * value:.0f} %"


def persona_map_figure(
    roles: Sequence[str],
    role_coords: Sequence[Sequence[float]],
    role_axis: Sequence[float],
    assistant: Sequence[float],
    *,
    layer: int,
    variance: Sequence[float],
    points: Sequence[MapPoint] = (),
    arrows: Sequence[MapArrow] = (),
    three_d: bool = False,
) -> go.Figure:
    """The roles on PC1-PC2 (or PC1-PC3 with ``three_d``), labelled and coloured by their
    position on the axis; the Assistant as a star, the axis as a dashed line from the roles'
    mean (the origin) to it, the user's points and the persona vectors' arrows."""
    dims = 3 if three_d else 2
    names = [label(r, f"roles[{i}]") for i, r in enumerate(roles)]
    coords = [_coords(c, f"role_coords[{i}]", dims) for i, c in enumerate(role_coords)]
    same_length("role_coords", coords, len(names), "roles")
    on_axis = floats(role_axis, "role_axis")
    same_length("role_axis", on_axis, len(names), "roles")
    home = _coords(assistant, "assistant", dims)
    var = floats(variance, "variance")
    if len(var) < dims:
        raise ValueError(f"variance needs at least {dims} components, got {len(var)}")
    plain_int(layer, "layer")
    checked_points = [
        (p, _coords(p.coords, f"points[{i}].coords", dims)) for i, p in enumerate(points)
    ]
    checked_arrows = [
        (
            a,
            _coords(a.start, f"arrows[{i}].start", dims),
            _coords(a.end, f"arrows[{i}].end", dims),
        )
        for i, a in enumerate(arrows)
    ]

    reach = max([1.0, *(abs(v) for v in on_axis)])
    axis_titles = [
        f"PC1 ({_pct(var[0])}) → Assistant side",
        f"PC2 ({_pct(var[1])})",
        f"PC3 ({_pct(var[2])})" if dims == 3 else "",
    ]
    hover_roles = [
        f"<b>{text(n)}</b><br>on the axis: {fmt(v)}<br>"
        + " · ".join(f"PC{k + 1} {fmt(c[k])}" for k in range(dims))
        for n, v, c in zip(names, on_axis, coords, strict=True)
    ]
    marker = {
        "size": 9,
        "color": on_axis,
        "colorscale": DIVERGING_SCALE,
        "cmin": -reach,
        "cmax": reach,
        "line": {"width": 0.5, "color": "#5F6B7A"},
        # Below the plot, across it: on a phone a side bar would take a third of the width.
        "colorbar": {
            "title": {
                "text": "on the axis: 0 roles' mean · 1 Assistant",
                "side": "bottom",
                "font": {"size": 11},
            },
            "orientation": "h",
            "thickness": 8,
            "len": 0.7,
            "x": 0.5,
            "xanchor": "center",
            "y": 0.01,
            "yref": "container",
            "yanchor": "bottom",
        },
    }
    fig = go.Figure()
    legend = ["roles", "Assistant", "the axis"]
    columns = list(zip(*coords, strict=True)) if coords else [[] for _ in range(dims)]

    def xyz(values: Sequence[float]) -> dict[str, list[float]]:
        keys = ("x", "y", "z")[:dims]
        return {k: [values[i]] for i, k in enumerate(keys)}

    def segment(a: Sequence[float], b: Sequence[float]) -> dict[str, list[float]]:
        keys = ("x", "y", "z")[:dims]
        return {k: [a[i], b[i]] for i, k in enumerate(keys)}

    trace = go.Scatter3d if three_d else go.Scatter
    role_kw = {"x": list(columns[0]), "y": list(columns[1])}
    if three_d:
        role_kw["z"] = list(columns[2])
    fig.add_trace(
        trace(
            **role_kw,
            mode="markers+text",
            name="roles",
            text=[text(n) for n in names],
            textposition="top center",
            textfont={"size": 10, "color": MUTED_TEXT},
            marker=marker if not three_d else {**marker, "size": 5},
            hovertext=hover_roles,
            hovertemplate="%{hovertext}<extra></extra>",
        )
    )
    origin = [0.0] * dims
    fig.add_trace(
        trace(
            **segment(origin, home),
            mode="lines+markers",
            name="the axis",
            line={"color": NEUTRAL_COLOR, "width": 2, "dash": "dash"},
            marker={"size": [6, 0], "color": NEUTRAL_COLOR, "symbol": "x"},
            hovertemplate="the Assistant Axis: from the roles' mean to the Assistant"
            "<extra></extra>",
        )
    )
    fig.add_trace(
        trace(
            **xyz(home),
            mode="markers+text",
            name="Assistant",
            text=["<b>Assistant</b>"],
            textposition="bottom center",
            textfont={"size": 12, "color": BAND_TEXT_COLOR},
            marker={
                "size": 20 if not three_d else 9,
                "symbol": "diamond" if three_d else "star",
                "color": ASSISTANT_COLOR,
                "line": {"width": 1.5, "color": "#2A2F36"},
            },
            hovertemplate="<b>the default Assistant</b><br>on the axis: 1 (by definition)"
            "<extra></extra>",
        )
    )
    core = [*coords, home, origin]
    core += [c for _, start, end in checked_arrows for c in (start, end)]
    for p, c in checked_points:
        color, symbol2, symbol3 = POINT_STYLE[p.kind]
        drawn, moved = pull_in(c, core)
        shown = f"{p.name} (off the map)" if moved else p.name
        legend.append(shown)
        detail = f"<br>{_short(p.detail)}" if p.detail else ""
        where = " · ".join(f"PC{k + 1} {fmt(c[k])}" for k in range(dims))
        symbol = symbol3 if three_d else symbol2
        fig.add_trace(
            trace(
                **xyz(drawn),
                mode="markers+text",
                name=text(shown),
                text=[f"<b>{text(shown)}</b>"],
                # A label at the map's edge is written inwards, so it is not cut off.
                textposition=_inwards(drawn, core) if moved else "top center",
                textfont={"size": 12, "color": color},
                marker={
                    "size": 14 if not three_d else 7,
                    "symbol": ("circle-open" if three_d else f"{symbol}-open") if moved else symbol,
                    "color": color,
                    "line": {"width": 1.5, "color": "#2A2F36" if not moved else color},
                },
                hovertemplate=f"<b>{text(p.name)}</b><br>{where}{detail}<extra></extra>",
            )
        )
    for i, (a, start, end) in enumerate(checked_arrows):
        color = _arrow_color(i)
        name = f"{a.name} (cos with axis {fmt(a.axis_cosine, sign=True)})"
        legend.append(name)
        hover = (
            f"<b>{text(a.name)}</b><br>cos with the axis {fmt(a.axis_cosine, sign=True)}"
            "<extra></extra>"
        )
        if three_d:
            fig.add_trace(
                go.Scatter3d(
                    **segment(start, end),
                    mode="lines+markers+text",
                    name=text(name),
                    text=["", f"<b>{text(a.name)}</b>"],
                    textposition="top center",
                    textfont={"size": 11, "color": color},
                    line={"color": color, "width": 6},
                    marker={"size": [0, 5], "color": color},
                    hovertemplate=hover,
                )
            )
            continue
        # The arrow is an annotation (plotly draws heads only there); the marker at its tip
        # carries the label and the legend entry, and makes autorange include the tip.
        fig.add_annotation(
            x=end[0],
            y=end[1],
            ax=start[0],
            ay=start[1],
            xref="x",
            yref="y",
            axref="x",
            ayref="y",
            text="",
            showarrow=True,
            arrowhead=2,
            arrowsize=1.2,
            arrowwidth=2.5,
            arrowcolor=color,
        )
        fig.add_trace(
            go.Scatter(
                x=[end[0]],
                y=[end[1]],
                mode="markers+text",
                name=text(name),
                text=[f"<b>{text(a.name)}</b>"],
                textposition="bottom center",
                textfont={"size": 11, "color": color},
                marker={"size": 6, "color": color},
                hovertemplate=hover,
            )
        )

    # In 3-D every point carries its label, and plotly stacks a 3-D legend one entry per row,
    # over the title on a phone: no legend there.
    style(
        fig,
        title=f"Persona space at layer {layer}",
        height=MAP_HEIGHT,
        legend=() if three_d else legend,
    )
    fig.update_layout(showlegend=not three_d)
    # Room under the plot for the colour bar.
    fig.update_layout(margin={"b": 70})
    if three_d:
        fig.update_layout(
            scene={
                "xaxis": {"title": {"text": axis_titles[0]}},
                "yaxis": {"title": {"text": axis_titles[1]}},
                "zaxis": {"title": {"text": axis_titles[2]}},
                "aspectmode": "data",
            },
        )
    else:
        fig.update_xaxes(title_text=axis_titles[0], zeroline=True, zerolinecolor="#E3E7EC")
        # Equal units on both axes: distances on the map are distances in the plane.
        fig.update_yaxes(
            title_text=axis_titles[1],
            zeroline=True,
            zerolinecolor="#E3E7EC",
            scaleanchor="x",
            scaleratio=1,
        )
    return fig


def _inwards(point: Sequence[float], core: Sequence[Sequence[float]]) -> str:
    middle = (min(c[0] for c in core) + max(c[0] for c in core)) / 2
    return "top left" if point[0] > middle else "top right"


def _arrow_color(i: int) -> str:
    return _ARROW_COLORS[i % len(_ARROW_COLORS)]


def variance_figure(variance: Sequence[float], layer: int) -> go.Figure:
    """Share of the role vectors' variance per principal component (bars) and the running
    total (line), at one layer."""
    var = floats(variance, "variance")
    if any(v < -1e-6 for v in var) or sum(var) > 1 + 1e-4:
        raise ValueError("variance shares must be ≥ 0 and sum to at most 1")
    plain_int(layer, "layer")
    xs = [f"PC{i + 1}" for i in range(len(var))]
    total, running = 0.0, []
    for v in var:
        total += v
        running.append(total)
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=xs,
            y=var,
            name="this component",
            marker={"color": [BASELINE_COLOR] + [NEUTRAL_COLOR] * (len(var) - 1)},
            text=[_pct(v) for v in var],
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{x}: %{y:.1%} of the variance<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=running,
            name="running total",
            mode="lines+markers",
            line={"color": STEERED_COLORS[0], "width": 2},
            hovertemplate="PC1 to %{x}: %{y:.1%}<extra></extra>",
        )
    )
    style(
        fig,
        title=f"Variance per component (layer {layer})",
        y_title="Share of variance",
        height=340,
        legend=["this component", "running total"],
    )
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%")
    fig.update_layout(bargap=0.2)
    return fig


def pc1_layers_figure(
    pc1_axis_cosine: Sequence[float],
    pc1_variance: Sequence[float],
    selected_layer: int,
) -> go.Figure:
    """|cos(PC1, axis)| and PC1's share of the variance at every layer, with the paper's
    threshold (cos > 0.6 at every layer of its large models) and the shown layer marked."""
    cos = floats(pc1_axis_cosine, "pc1_axis_cosine")
    var = floats(pc1_variance, "pc1_variance")
    same_length("pc1_variance", var, len(cos), "pc1_axis_cosine")
    if any(not -1e-6 <= v <= 1 + 1e-6 for v in (*cos, *var)):
        raise ValueError("|cos| and variance shares must lie in [0, 1]")
    n = len(cos)
    layer = layer_index(selected_layer, "selected_layer", n)
    xs = list(range(n))
    names = ["|cos(PC1, axis)|", "PC1's share of variance"]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=cos,
            name=names[0],
            mode="lines+markers",
            line={"color": BASELINE_COLOR, "width": 2},
            marker={"size": 5},
            hovertemplate="layer %{x}<br>|cos(PC1, axis)| = %{y:.2f}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=var,
            name=names[1],
            mode="lines+markers",
            line={"color": STEERED_COLORS[0], "width": 2, "dash": "dot"},
            marker={"size": 5, "symbol": "square"},
            hovertemplate="layer %{x}<br>PC1 explains %{y:.1%}<extra></extra>",
        )
    )
    fig.add_hline(
        y=PAPER_COSINE,
        line={"color": NEUTRAL_COLOR, "width": 1, "dash": "dash"},
        annotation_text="paper's models: cos > 0.6",
        annotation_position="bottom right",
        annotation_font={"size": 11, "color": MUTED_TEXT},
    )
    fig.add_vline(x=layer, line={"color": BAND_COLOR, "width": 2})
    fig.add_annotation(
        x=layer,
        y=1.04,
        text=f"layer {layer}",
        showarrow=False,
        font={"size": 11, "color": BAND_TEXT_COLOR},
        bgcolor="rgba(255,255,255,0.85)",
    )
    style(
        fig,
        title="PC1 and the axis, layer by layer",
        x_title="Layer",
        height=340,
        legend=names,
    )
    fig.update_yaxes(range=[0, 1.08])
    layer_axis(fig, n)
    return fig
