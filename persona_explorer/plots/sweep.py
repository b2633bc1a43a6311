"""Which layer, which strength: a sweep's layer x strength grid as two heat maps.

:func:`sweep_grid` checks a sweep's numbers and lays them out as a grid (rows: layers, top to
bottom; columns: strengths, left to right, both ascending). :func:`trait_heatmap_figure` colours
each cell by its trait rise over the baseline on a diverging scale centred at 0 (red: more of
the persona, blue: less); :func:`coherence_heatmap_figure` by its coherence (1 = as fluent as
the baseline; darker = more broken), and flags cells whose answers repeat themselves. Both
carry every number of a cell in its hover, box the recommended cell and star it. A cell that
was not run (a stopped sweep) is a gap.

Imports: plotly and :mod:`.common` only (no torch, no gradio).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import plotly.graph_objects as go

from persona_explorer.plots.common import DIVERGING_SCALE, fmt, number, plain_int, style

__all__ = [
    "COHERENCE_SCALE",
    "SweepGrid",
    "coherence_heatmap_figure",
    "grid_caption",
    "strength_label",
    "sweep_grid",
    "trait_heatmap_figure",
]

MAX_AXIS = 32  # layers or strengths: the engine's bound
STAR = "★"
REPEATS = "↻"
# Pale where the answers read as fluently as the baseline's, dark brown where they broke: a
# different hue family from the trait map's red and blue, so the two are never read as one.
COHERENCE_SCALE = [
    [0.0, "#7F2704"],
    [0.35, "#D94801"],
    [0.7, "#FDAE6B"],
    [1.0, "#FFF5EB"],
]
BOX_COLOR = "#111111"
_ROW_PX = 46
_BASE_PX = 190
_MIN_HEIGHT = 300
_COLORBAR_PX = 62  # below the plot: the colour bar and its tick labels
_TICK_GAP = 0.2  # of the colour bar's span: closer tick labels print over each other

Value = float | None


@dataclass(frozen=True)
class SweepGrid:
    """A sweep's numbers as a grid: ``trait[i][j]`` is layer ``layers[i]`` at strength
    ``strengths[j]`` (None: not run). Layers and strengths ascend."""

    layers: tuple[int, ...]
    strengths: tuple[float, ...]
    trait: tuple[tuple[Value, ...], ...]
    coherence: tuple[tuple[Value, ...], ...]
    repetition: tuple[tuple[Value, ...], ...]
    recommended: tuple[int, float] | None = None
    baseline_repetition: float = 0.0

    def index(self, layer: int, strength: float) -> tuple[int, int]:
        return self.layers.index(layer), self.strengths.index(strength)


def _optional(value: object, name: str) -> Value:
    return None if value is None else number(value, name)


def sweep_grid(
    cells: Iterable[tuple[int, float, Value, Value, Value]],
    recommended: tuple[int, float] | None = None,
    baseline_repetition: float = 0.0,
) -> SweepGrid:
    """A :class:`SweepGrid` from ``(layer, strength, trait, coherence, repetition)`` cells.

    Every layer must appear with every strength exactly once (the grid is complete; a cell
    that was not run has None numbers). A ValueError says what is wrong."""
    table: dict[tuple[int, float], tuple[Value, Value, Value]] = {}
    for k, cell in enumerate(cells):
        if not isinstance(cell, (tuple, list)) or len(cell) != 5:
            raise ValueError(f"cells[{k}] must be (layer, strength, trait, coherence, repetition)")
        layer = plain_int(cell[0], f"cells[{k}] layer")
        strength = number(cell[1], f"cells[{k}] strength")
        if (layer, strength) in table:
            raise ValueError(f"cells[{k}]: layer {layer}, strength {strength:g} appears twice")
        table[(layer, strength)] = (
            _optional(cell[2], f"cells[{k}] trait"),
            _optional(cell[3], f"cells[{k}] coherence"),
            _optional(cell[4], f"cells[{k}] repetition"),
        )
    if not table:
        raise ValueError("cells is empty")
    layers = tuple(sorted({la for la, _ in table}))
    strengths = tuple(sorted({s for _, s in table}))
    if len(layers) > MAX_AXIS or len(strengths) > MAX_AXIS:
        raise ValueError(f"at most {MAX_AXIS} layers and {MAX_AXIS} strengths")
    if len(table) != len(layers) * len(strengths):
        raise ValueError("cells must cover every layer at every strength exactly once")
    if recommended is not None:
        rec = (plain_int(recommended[0], "recommended layer"), number(recommended[1], "strength"))
        if rec not in table:
            raise ValueError(f"the recommended cell {rec} is not in the grid")
        recommended = rec
    base_rep = number(baseline_repetition, "baseline_repetition")

    def matrix(k: int) -> tuple[tuple[Value, ...], ...]:
        return tuple(tuple(table[(la, s)][k] for s in strengths) for la in layers)

    return SweepGrid(
        layers, strengths, matrix(0), matrix(1), matrix(2), recommended, base_rep
    )  # fmt: skip


# --------------------------------------------------------------------------- figures


def _num(value: Value, digits: int = 2, *, sign: bool = False) -> str:
    return "—" if value is None else fmt(value, digits, sign=sign)


def strength_label(strength: float) -> str:
    return f"{strength:g}".replace("-", "−")


def _hover(grid: SweepGrid) -> list[list[str]]:
    rows = []
    for i, layer in enumerate(grid.layers):
        row = []
        for j, strength in enumerate(grid.strengths):
            trait, coh, rep = grid.trait[i][j], grid.coherence[i][j], grid.repetition[i][j]
            head = f"layer {layer} · strength {strength_label(strength)}"
            if (layer, strength) == grid.recommended:
                head += f" · {STAR} recommended"
            if trait is None and coh is None:
                row.append(f"{head}<br>not run (the sweep stopped first)")
                continue
            row.append(
                f"{head}<br>trait rise {_num(trait, sign=True)} (× the vector's length)"
                f"<br>coherence {_num(coh)} (1 = as fluent as the baseline)"
                f"<br>repetition {_num(rep)} (baseline {fmt(grid.baseline_repetition)})"
            )
        rows.append(row)
    return rows


def _cell_text(
    grid: SweepGrid,
    values: tuple[tuple[Value, ...], ...],
    sign: bool,
    flags: list[list[bool]] | None = None,
) -> list[list[str]]:
    out = []
    for i, layer in enumerate(grid.layers):
        row = []
        for j, strength in enumerate(grid.strengths):
            v = values[i][j]
            label = "" if v is None else fmt(v, 2, sign=sign)
            if flags is not None and flags[i][j]:
                label += f" {REPEATS}"
            if (layer, strength) == grid.recommended:
                label = f"{STAR} {label}"
            row.append(label)
        out.append(row)
    return out


def _z(values: tuple[tuple[Value, ...], ...]) -> list[list[float | None]]:
    return [list(row) for row in values]


def _figure(
    grid: SweepGrid,
    z: list[list[float | None]],
    cell_text: list[list[str]],
    title: str,
    heat: dict,
) -> go.Figure:
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[strength_label(s) for s in grid.strengths],
            y=[f"L{layer}" for layer in grid.layers],
            text=cell_text,
            texttemplate="%{text}",
            textfont={"size": 12},
            customdata=_hover(grid),
            hovertemplate="%{customdata}<extra></extra>",
            hoverongaps=True,
            xgap=2,
            ygap=2,
            **heat,
        )
    )
    style(
        fig,
        title=title,
        x_title="strength",
        y_title="layer steered",
        height=max(_MIN_HEIGHT, _BASE_PX + _COLORBAR_PX + _ROW_PX * len(grid.layers)),
    )
    # Categories, not numbers: strengths are often uneven (0, 0.5, 1, 2, 4) and each column
    # should be as wide as the next. The first layer on top, as in the table below the maps.
    fig.update_layout(margin={"b": _COLORBAR_PX})
    fig.update_xaxes(type="category", showgrid=False, zeroline=False)
    fig.update_yaxes(type="category", showgrid=False, zeroline=False, autorange="reversed")
    if grid.recommended is not None:
        i, j = grid.index(*grid.recommended)
        fig.add_shape(
            type="rect",
            x0=j - 0.5,
            x1=j + 0.5,
            y0=i - 0.5,
            y1=i + 0.5,
            xref="x",
            yref="y",
            line={"color": BOX_COLOR, "width": 3},
            fillcolor="rgba(0,0,0,0)",
        )
    return fig


def _colorbar(**ticks: object) -> dict:
    # Under the plot, not beside it: on a phone the cells need the width for their numbers.
    # No title of its own: the figure's title names what the colours measure.
    return {
        "orientation": "h",
        "x": 0.5,
        "xanchor": "center",
        "y": 0.0,
        "yref": "container",
        "yanchor": "bottom",
        "ypad": 6,
        "thickness": 10,
        "len": 0.9,
        **ticks,
    }


def _ticks(base: list[float], needed: float | None, low: float, high: float) -> dict:
    """Colour-bar ticks at ``base``, plus ``needed`` (a criterion) labelled as such when it
    lies inside (low, high); base ticks too close to it to be read apart give way."""
    vals = sorted(set(base))
    if needed is None or not low < needed < high:
        return {"tickvals": vals, "ticktext": [fmt(v) for v in vals]}
    near = _TICK_GAP * (high - low)
    vals = sorted({v for v in vals if abs(v - needed) >= near} | {needed})
    return {
        "tickvals": vals,
        "ticktext": [f"needed {fmt(v)}" if v == needed else fmt(v) for v in vals],
    }


def trait_heatmap_figure(
    grid: SweepGrid, margin: float | None = None, vector: str | None = None
) -> go.Figure:
    """Trait rise over the baseline per cell, diverging around 0 (``margin``: the rise a
    recommendation needs, marked on the colour bar; ``vector``: its name, for the title)."""
    values = [v for row in grid.trait for v in row if v is not None]
    reach = max([abs(v) for v in values] + [1e-6])
    needed = None if margin is None else number(margin, "margin")
    edge = math.floor(reach * 100) / 100  # a tick label must not round past the bar's end
    ticks = _ticks([-edge, 0.0, edge], needed, -reach, reach)
    name = f" of {vector}" if vector else ""
    star = f" ({STAR} recommended)" if grid.recommended is not None else ""
    return _figure(
        grid,
        _z(grid.trait),
        _cell_text(grid, grid.trait, sign=True),
        f"Trait rise{name} over the baseline{star}",
        {
            "colorscale": DIVERGING_SCALE,
            "zmid": 0.0,
            "zmin": -reach,
            "zmax": reach,
            "colorbar": _colorbar(**ticks),
        },
    )


def coherence_heatmap_figure(
    grid: SweepGrid, min_coherence: float | None = None, max_repetition_rise: float | None = None
) -> go.Figure:
    """Coherence per cell on 0 .. 1 (and above, where a cell reads more fluently than the
    baseline). ``min_coherence`` is marked on the colour bar; cells whose repetition rose more
    than ``max_repetition_rise`` over the baseline's get ↻."""
    values = [v for row in grid.coherence for v in row if v is not None]
    top = max([1.0, *values])
    flags = None
    if max_repetition_rise is not None:
        limit = grid.baseline_repetition + number(max_repetition_rise, "max_repetition_rise")
        flags = [[r is not None and r > limit for r in row] for row in grid.repetition]
    base = [0.0, 0.5, 1.0] if top < 1.5 else [0.0, 0.5, 1.0, math.floor(top * 100) / 100]
    needed = None if min_coherence is None else number(min_coherence, "min_coherence")
    ticks = _ticks(base, needed, 0.0, top)
    star = f", {STAR} recommended" if grid.recommended is not None else ""
    rep = f", {REPEATS} repeats itself" if flags is not None and any(map(any, flags)) else ""
    return _figure(
        grid,
        _z(grid.coherence),
        _cell_text(grid, grid.coherence, sign=False, flags=flags),
        f"Coherence (1 = as fluent as the baseline{star}{rep})",
        {
            "colorscale": COHERENCE_SCALE,
            "zmin": 0.0,
            "zmax": top,
            "colorbar": _colorbar(**ticks),
        },
    )


def grid_caption(grid: SweepGrid) -> str:
    """One plain sentence on how many cells have numbers (for a stopped sweep)."""
    total = len(grid.layers) * len(grid.strengths)
    done = sum(1 for row in grid.trait for v in row if v is not None)
    if done == total:
        return f"{total} cells: {len(grid.layers)} layers × {len(grid.strengths)} strengths."
    return f"{done} of {total} cells finished; the gaps were not run."
