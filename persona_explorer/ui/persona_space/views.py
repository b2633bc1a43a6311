"""How the Persona space tab shows a map: the map itself with the placed points and the arrows,
the variance and per-layer charts, and the numbers under them in words (every name escaped).

Imports: plotly, ``axis.persona_space`` (the map's math), ``plots`` and this package's markup.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from persona_explorer.axis.persona_space import LayerMap, PersonaArrow, PersonaSpace, PlacedText
from persona_explorer.plots.common import fmt
from persona_explorer.plots.persona_map import (
    MapArrow,
    MapPoint,
    pc1_layers_figure,
    persona_map_figure,
    variance_figure,
)
from persona_explorer.ui.shared.markup import md

__all__ = ["map_figures", "summary_text"]


def map_figures(
    space: PersonaSpace,
    m: LayerMap,
    placed: PlacedText | None,
    arrows: Sequence[PersonaArrow],
    *,
    three_d: bool,
) -> tuple[go.Figure, go.Figure, go.Figure]:
    """The map, the variance chart and the per-layer chart."""
    points = []
    if placed is not None:
        points.append(MapPoint("your prompt", m.place(placed.prompt_mean), "prompt", placed.prompt))
        if placed.answer_mean is not None:
            points.append(
                MapPoint("its answer", m.place(placed.answer_mean), "answer", placed.answer)
            )
    fig = persona_map_figure(
        list(m.roles),
        m.role_coords.tolist(),
        m.role_axis.tolist(),
        m.assistant.tolist(),
        layer=m.layer,
        variance=m.variance.tolist(),
        points=points,
        arrows=[MapArrow(a.name, a.start, a.end, a.axis_cosine) for a in arrows],
        three_d=three_d,
    )
    return (
        fig,
        variance_figure(m.variance.tolist(), m.layer),
        pc1_layers_figure(space.pc1_axis_cosine, space.pc1_variance, m.layer),
    )


def summary_text(
    m: LayerMap, placed: PlacedText | None, arrows: Sequence[PersonaArrow], three_d: bool
) -> str:
    """The numbers under the map, in words (every name escaped)."""
    var = m.variance.tolist()
    order = m.role_axis.argsort(descending=True).tolist()
    near = ", ".join(md(m.roles[i]) for i in order[:3])
    far = ", ".join(md(m.roles[i]) for i in order[-3:][::-1])
    lines = [
        f"**Layer {m.layer}** · PC1 explains **{100 * var[0]:.0f} %** of the role vectors' "
        f"variance (the {'three' if three_d else 'two'} components shown: "
        f"{100 * sum(var[: 3 if three_d else 2]):.0f} %) · |cos(PC1, axis)| = "
        f"**{m.pc1_axis_cosine:.2f}** (the paper's large models: above 0.6 at every layer) · "
        f"the Assistant is **{m.assistant_sd:.1f} SD** above the roles' mean on the axis.",
        f"Nearest the Assistant on the axis: {near}. Farthest: {far}.",
    ]
    if placed is not None:
        if placed.answer_mean is not None:
            pos = m.axis_position(placed.answer_mean)
            nearest = m.nearest_roles(placed.answer_mean)
            names = ", ".join(md(n) for n, _ in nearest)
            lines.append(
                f"**Its answer** sits at **{fmt(pos)}** on the axis (0 = the roles' mean, "
                f"1 = the Assistant). Nearest roles in the full residual space: {names}, the "
                f"nearest {nearest[0][1] / max(m.spread, 1e-12):.1f}× the roles' spread away. "
                "One answer is far noisier than a role's average of many, so it lies apart "
                "from all of them; its place on the axis says more than its neighbours."
            )
        else:
            lines.append("The model gave an empty answer: only your prompt is placed.")
        lines.append(
            f"**Your prompt** sits at **{fmt(m.axis_position(placed.prompt_mean))}** on the "
            "axis. It is the mean over the prompt's tokens (the chat template and any system "
            "prompt included), not an answer like the roles' points, so it often lies apart."
        )
    for a in arrows:
        lines.append(
            f"**{md(a.name)}**: cos with the axis **{fmt(a.axis_cosine, sign=True)}** at this "
            f"layer; {100 * (a.space_share if three_d else a.plane_share):.0f} % of its length "
            f"lies in the {'space' if three_d else 'plane'} shown."
        )
    if placed is None:
        lines.append("Type a prompt and press *Place my prompt* to see where its answer lands.")
    return "\n\n".join(lines)
