"""How persona vectors relate to each other: the cosine heat map, and plain sentences about it.

:func:`similarity_statements` turns a cosine matrix into the few sentences a reader needs (which
pairs point the same way, which apart, which are unrelated), so teaching text about the vectors
is generated from the vectors rather than written from expectation. Its bands:

=================  ============================================
cosine             wording
=================  ============================================
≥ 0.9              point almost the same way
0.5 to < 0.9       point much the same way
0.2 to < 0.5       point partly the same way
> −0.2 and < 0.2   are nearly unrelated
−0.5 < c ≤ −0.2    point partly in opposite directions
−0.9 < c ≤ −0.5    point in opposite directions
≤ −0.9             point in almost exactly opposite directions
=================  ============================================

A cosine is banded as printed (two decimals), so a sentence never contradicts its own number;
a positive cosine is never called opposite.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import plotly.graph_objects as go

from persona_explorer.plots.common import DIVERGING_SCALE, floats, fmt, plain_int, style, text

ALIGNED = 0.2  # at or above: "the same way"
UNRELATED = 0.2  # |c| below: "nearly unrelated"
STRONG = 0.5  # |c| at or above: "much the same way" / "opposite directions"
NEAR_TOTAL = 0.9
# Above this many names the per-cell numbers crowd a phone screen; hover still has them.
_MAX_ANNOTATED_CELLS = 10
# Above this many names horizontal tick labels collide on a phone.
_FLAT_TICK_LABELS_MAX = 4
# Longer names are cut on the axes (hover shows them whole): one long name would otherwise
# take the room of the whole map.
_MAX_TICK_CHARS = 24


def tick_labels(names: Sequence[str], limit: int = _MAX_TICK_CHARS) -> list[str]:
    """``names`` cut to ``limit`` characters, still unique (a heat map's axes need that)."""
    out: list[str] = []
    for name in names:
        short = name if len(name) <= limit else name[: limit - 1] + "…"
        candidate, k = short, 2
        while candidate in out:
            candidate, k = f"{short} ({k})", k + 1
        out.append(candidate)
    return out


# Cosines computed in float32 can overshoot 1 a little.
_COSINE_TOLERANCE = 1e-3


def cosine_table(
    names: Sequence[str], matrix: Iterable[Iterable[float]]
) -> tuple[list[str], list[list[float]]]:
    """``names`` and ``matrix`` checked (unique names, square, finite, within [-1, 1]), the
    values clipped to [-1, 1]; a ValueError says what is wrong."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError("names must be a sequence of strings")
    labels = list(names)
    n = len(labels)
    if n == 0:
        raise ValueError("names is empty")
    for i, name in enumerate(labels):
        if not isinstance(name, str) or not name:
            raise ValueError(f"names[{i}] must be a non-empty string, got {name!r}")
    # Plotly merges equal category labels, which would silently fold rows together.
    dupes = sorted(x for x, k in Counter(labels).items() if k > 1)
    if dupes:
        raise ValueError(f"names must be unique; repeated: {', '.join(dupes)}")
    if isinstance(matrix, str) or not isinstance(matrix, Iterable):
        raise ValueError("matrix must be a square sequence of rows of numbers")
    rows = [floats(row, f"matrix[{i}]") for i, row in enumerate(matrix)]
    if len(rows) != n:
        raise ValueError(f"matrix has {len(rows)} rows but there are {n} names; they must match")
    for i, row in enumerate(rows):
        if len(row) != n:
            raise ValueError(f"matrix[{i}] has {len(row)} values but there are {n} names")
        for j, v in enumerate(row):
            if abs(v) > 1 + _COSINE_TOLERANCE:
                raise ValueError(
                    f"matrix[{i}][{j}] = {v:.4f} is not a cosine similarity (outside [-1, 1])"
                )
    return labels, [[max(-1.0, min(1.0, v)) for v in row] for row in rows]


def relation(cosine: float) -> str:
    """The verb phrase for two vectors at this cosine ("point much the same way")."""
    c = round(cosine, 2)
    if c >= NEAR_TOTAL:
        return "point almost the same way"
    if c >= STRONG:
        return "point much the same way"
    if c >= ALIGNED:
        return "point partly the same way"
    if c > -UNRELATED:
        return "are nearly unrelated"
    if c > -STRONG:
        return "point partly in opposite directions"
    if c > -NEAR_TOTAL:
        return "point in opposite directions"
    return "point in almost exactly opposite directions"


def similarity_statements(
    names: Sequence[str], matrix: Iterable[Iterable[float]], top: int = 3
) -> list[str]:
    """Plain sentences about a cosine matrix: up to ``top`` most aligned pairs, most opposite
    pairs and most unrelated pairs, in that order ("pirate and sarcastic point much the same
    way (cosine 0.76)."). Says so when no pair points the same way or apart; an empty list for
    fewer than two names. Names are returned as given: escape them for the place they go."""
    labels, rows = cosine_table(names, matrix)
    top = plain_int(top, "top")
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    n = len(labels)
    # Symmetrised: float noise could make [i][j] and [j][i] land in different bands.
    pairs = [
        ((rows[i][j] + rows[j][i]) / 2, labels[i], labels[j])
        for i in range(n)
        for j in range(i + 1, n)
    ]
    if not pairs:
        return []

    def sentence(c: float, a: str, b: str) -> str:
        return f"{a} and {b} {relation(c)} (cosine {fmt(c)})."

    shown = [(round(c, 2), c, a, b) for c, a, b in pairs]
    aligned = sorted((p for p in shown if p[0] >= ALIGNED), key=lambda p: -p[1])
    opposite = sorted((p for p in shown if p[0] <= -ALIGNED), key=lambda p: p[1])
    unrelated = sorted((p for p in shown if abs(p[0]) < UNRELATED), key=lambda p: abs(p[1]))

    out = [sentence(c, a, b) for _, c, a, b in aligned[:top]]
    if not aligned:
        out.append(f"No two of them point the same way: every cosine is below {fmt(ALIGNED)}.")
    out += [sentence(c, a, b) for _, c, a, b in opposite[:top]]
    if not opposite:
        out.append(
            f"None of them point in opposite directions: every cosine is above {fmt(-ALIGNED)}."
        )
    out += [sentence(c, a, b) for _, c, a, b in unrelated[:top]]
    return out


def cosine_heatmap_figure(
    names: Sequence[str],
    matrix: Sequence[Sequence[float]],
    layer: int,
    title: str | None = None,
) -> go.Figure:
    """Pairwise cosine similarities between persona vectors at one layer.

    The colour scale is fixed to [-1, 1] so figures for different layers compare at a glance.
    Cells carry their numbers only while there are few; hover gives the value and its wording.
    """
    layer = plain_int(layer, "layer")
    labels, z = cosine_table(names, matrix)
    n = len(labels)
    full = [text(name) for name in labels]
    cells = [[[full[i], full[j], "the same vector" if i == j else relation(v)]
              for j, v in enumerate(row)] for i, row in enumerate(z)]  # fmt: skip
    ticks = [text(name) for name in tick_labels(labels)]

    annotate = n <= _MAX_ANNOTATED_CELLS
    fig = go.Figure(
        go.Heatmap(
            z=z,
            # Plotly renders a subset of HTML in labels: names are user text, never markup.
            x=ticks,
            y=ticks,
            customdata=cells,
            zmin=-1.0,
            zmax=1.0,
            zmid=0.0,
            colorscale=DIVERGING_SCALE,
            colorbar={
                "title": {"text": "cosine"},
                "tickvals": [-1, -0.5, 0, 0.5, 1],
                "thickness": 12,
                "len": 0.9,
            },
            texttemplate="%{z:.2f}" if annotate else None,
            textfont={"size": 10},
            hovertemplate=(
                "%{customdata[0]} · %{customdata[1]}<br>cosine = %{z:.3f}<br>%{customdata[2]}"
                "<extra></extra>"
            ),
            xgap=1,
            ygap=1,
        )
    )
    style(
        fig,
        title=title if title is not None else f"Cosine similarity between personas, layer {layer}",
        height=max(360, min(900, 140 + 34 * n)),
    )
    fig.update_xaxes(showgrid=False, tickangle=-45 if n > _FLAT_TICK_LABELS_MAX else 0)
    # Row 0 on top, as in a table; equal aspect so the diagonal reads as a diagonal.
    fig.update_yaxes(showgrid=False, autorange="reversed", scaleanchor="x", constrain="domain")
    return fig
