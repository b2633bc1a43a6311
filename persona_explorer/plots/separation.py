"""The separation figure of the Extract tab: how cleanly each layer of a freshly extracted
vector tells the answers with the persona from those without."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from persona_explorer.plots.common import (
    BASELINE_COLOR,
    NEUTRAL_COLOR,
    STEERED_COLORS,
    floats,
    layer_axis,
    layer_index,
    same_length,
    style,
)


def separation_figure(
    separation: Sequence[float],
    best_layer: int | None,
    norms: Sequence[float] | None = None,
    title: str = "How well each layer separates the persona",
) -> go.Figure:
    """Per-layer separation (Cohen's d) as bars, the best layer highlighted.

    ``norms`` (the vector's norm per layer), when given, is drawn as a line on a second axis.
    """
    sep = floats(separation, "separation")
    n = len(sep)
    best = None if best_layer is None else layer_index(best_layer, "best_layer", n)
    norm_vals = None
    if norms is not None:
        norm_vals = floats(norms, "norms")
        same_length("norms", norm_vals, n, "separation")

    fig = make_subplots(specs=[[{"secondary_y": norm_vals is not None}]])
    xs = list(range(n))
    colors = [STEERED_COLORS[0] if i == best else NEUTRAL_COLOR for i in xs]
    bar_name = "separation (Cohen's d)"
    fig.add_trace(
        go.Bar(
            x=xs,
            y=sep,
            name=bar_name,
            marker={"color": colors, "line": {"width": 0}},
            hovertemplate="layer %{x}<br>Cohen's d = %{y:.3f}<extra></extra>",
        ),
        secondary_y=False,
    )
    if norm_vals is not None:
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=norm_vals,
                name="vector norm",
                mode="lines",
                line={"color": BASELINE_COLOR, "width": 2, "dash": "dot"},
                hovertemplate="layer %{x}<br>norm = %{y:.3f}<extra></extra>",
            ),
            secondary_y=True,
        )
    if best is not None:
        fig.add_annotation(
            x=best,
            y=sep[best],
            text=f"best: layer {best}<br>d = {sep[best]:.3f}",
            showarrow=True,
            arrowhead=2,
            arrowcolor=STEERED_COLORS[0],
            ax=0,
            ay=-36 if sep[best] >= 0 else 36,
            font={"size": 12, "color": STEERED_COLORS[0]},
            bgcolor="rgba(255,255,255,0.85)",
        )
    style(
        fig,
        title=title,
        x_title="Layer",
        legend=[bar_name, "vector norm"] if norm_vals is not None else (),
    )
    fig.update_yaxes(title_text="Separation (Cohen's d)", secondary_y=False)
    if norm_vals is not None:
        fig.update_yaxes(title_text="Vector norm", secondary_y=True, showgrid=False)
    layer_axis(fig, n)
    fig.update_layout(bargap=0.15, showlegend=norm_vals is not None)
    return fig
