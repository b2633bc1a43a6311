"""The sweep's heat maps (``persona_explorer.plots.sweep``): the grid is checked and laid out,
the colour scales read right, the recommended cell is marked and every number is in the hover.
"""

from __future__ import annotations

import itertools
import json
import math

import plotly.graph_objects as go
import pytest

from persona_explorer.plots.sweep import (
    REPEATS,
    STAR,
    coherence_heatmap_figure,
    grid_caption,
    sweep_grid,
    trait_heatmap_figure,
)

# (layer, strength, trait, coherence, repetition), given out of order on purpose.
CELLS = [
    (15, 2.0, 0.6, 0.8, 0.05),
    (12, 0.0, 0.0, 1.0, 0.02),
    (12, 2.0, 0.3, 0.9, 0.03),
    (15, 0.0, 0.0, 1.0, 0.02),
    (12, 8.0, 1.4, 0.2, 0.6),
    (15, 8.0, -0.2, 1.3, 0.0),
]


def heat(fig: go.Figure) -> go.Heatmap:
    (trace,) = [t for t in fig.data if isinstance(t, go.Heatmap)]
    return trace


def serialisable(fig: go.Figure) -> None:
    json.loads(fig.to_json())  # what gradio does with a figure


def test_the_grid_is_laid_out_in_ascending_order() -> None:
    grid = sweep_grid(CELLS, recommended=(15, 2.0), baseline_repetition=0.02)
    assert grid.layers == (12, 15) and grid.strengths == (0.0, 2.0, 8.0)
    assert grid.trait[0] == (0.0, 0.3, 1.4) and grid.trait[1] == (0.0, 0.6, -0.2)
    assert grid.coherence[1][2] == 1.3 and grid.repetition[0][2] == 0.6
    assert grid.index(15, 2.0) == (1, 1)


@pytest.mark.parametrize(
    ("cells", "recommended", "pattern"),
    [
        ([], None, "empty"),
        ([*CELLS, (12, 2.0, 0.0, 1.0, 0.0)], None, "appears twice"),
        (CELLS[:-1], None, "every layer at every strength"),
        ([(12, 0.0, math.nan, 1.0, 0.0)], None, "finite"),
        ([(12.5, 0.0, 0.0, 1.0, 0.0)], None, "int"),
        ([(12, 0.0, 0.0)], None, r"\(layer, strength"),
        (CELLS, (13, 2.0), "not in the grid"),
    ],
)
def test_bad_grids_are_refused(cells: list, recommended: tuple | None, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        sweep_grid(cells, recommended=recommended)


def test_the_trait_map_diverges_around_zero_and_marks_the_recommendation() -> None:
    grid = sweep_grid(CELLS, recommended=(15, 2.0))
    fig = trait_heatmap_figure(grid, margin=0.25, vector="<b>pirate</b>")
    serialisable(fig)
    h = heat(fig)
    assert h.zmid == 0 and h.zmin == -h.zmax and h.zmax >= 1.4
    assert list(h.x) == ["0", "2", "8"] and list(h.y) == ["L12", "L15"]
    # The recommended cell is starred and boxed; no other cell is.
    starred = [(i, j) for i, row in enumerate(h.text) for j, t in enumerate(row) if STAR in t]
    assert starred == [(1, 1)]
    (box,) = fig.layout.shapes
    assert (box.x0, box.x1, box.y0, box.y1) == (0.5, 1.5, 0.5, 1.5)
    # Signed numbers with a real minus sign, and the margin on the colour bar.
    assert h.text[1][2] == "−0.20" and h.text[0][1] == "+0.30"
    assert any("needed" in t for t in h.colorbar.ticktext)
    # The vector's name is user text: escaped in the title.
    assert "<b>pirate" not in fig.layout.title.text and "&lt;b&gt;" in fig.layout.title.text


def test_every_number_of_a_cell_is_in_its_hover() -> None:
    grid = sweep_grid(CELLS, recommended=(15, 2.0), baseline_repetition=0.02)
    for fig in (trait_heatmap_figure(grid), coherence_heatmap_figure(grid)):
        hover = heat(fig).customdata
        cell = hover[0][2]  # layer 12, strength 8
        assert "layer 12" in cell and "strength 8" in cell
        assert "+1.40" in cell and "0.20" in cell and "0.60" in cell and "0.02" in cell
        assert "recommended" in hover[1][1] and "recommended" not in cell


def test_the_coherence_map_spans_zero_to_one_and_flags_repetition() -> None:
    grid = sweep_grid(CELLS, recommended=(15, 2.0), baseline_repetition=0.02)
    fig = coherence_heatmap_figure(grid, min_coherence=0.25, max_repetition_rise=0.1)
    serialisable(fig)
    h = heat(fig)
    assert h.zmin == 0 and h.zmax == pytest.approx(1.3)  # above 1: more fluent than baseline
    flagged = [(i, j) for i, row in enumerate(h.text) for j, t in enumerate(row) if REPEATS in t]
    assert flagged == [(0, 2)]  # 0.6 > 0.02 + 0.1
    assert "needed 0.25" in h.colorbar.ticktext
    assert REPEATS in fig.layout.title.text
    # Below 1 everywhere: the scale still reaches 1, the baseline's coherence.
    calm = sweep_grid([(3, 0.0, 0.0, 0.4, 0.0), (3, 1.0, 0.1, 0.3, 0.0)])
    assert heat(coherence_heatmap_figure(calm)).zmax == 1.0


def test_a_stopped_sweep_leaves_gaps_and_says_so() -> None:
    cells = [(5, 0.0, 0.0, 1.0, 0.0), (5, 1.0, None, None, None)]
    grid = sweep_grid(cells)
    fig = trait_heatmap_figure(grid)
    serialisable(fig)
    h = heat(fig)
    assert h.z[0][1] is None and h.text[0][1] == ""
    assert "not run" in h.customdata[0][1]
    assert fig.layout.shapes == ()  # nothing recommended, nothing boxed
    assert STAR not in fig.layout.title.text
    assert grid_caption(grid) == "1 of 2 cells finished; the gaps were not run."
    assert grid_caption(sweep_grid(CELLS)).startswith("6 cells: 2 layers × 3 strengths")


def test_the_figures_grow_with_the_number_of_layers() -> None:
    small = sweep_grid([(1, 0.0, 0.0, 1.0, 0.0)])
    big = sweep_grid([(la, 0.0, 0.0, 1.0, 0.0) for la in range(8)])
    assert trait_heatmap_figure(big).layout.height > trait_heatmap_figure(small).layout.height


def test_colour_bar_labels_never_print_over_each_other() -> None:
    grid = sweep_grid([(3, 0.0, 0.0, 1.0, 0.0), (3, 1.0, 1.0, 0.02, 0.0)])
    for fig in (trait_heatmap_figure(grid, margin=0.01), coherence_heatmap_figure(grid, 0.03)):
        bar = heat(fig).colorbar
        vals = list(bar.tickvals)
        span = max(vals) - min(vals)
        assert all(b - a >= 0.1 * span for a, b in itertools.pairwise(vals))
        assert sum("needed" in t for t in bar.ticktext) == 1
