"""Persona drift: each assistant turn's projection on the Assistant Axis, turn by turn.

One line per conversation (several side by side, one colour each). On the normalised scale a
dashed line marks 1, the default Assistant, and another 0, the roles' mean: a line sliding from
the first toward the second is a conversation drifting away from the Assistant. Turns read
through a window of recent turns (earlier ones dropped) are drawn as open markers. An optional
second panel shows the projections on persona vectors (raw units: each vector has its own).

Imports: plotly and :mod:`.common` only (no torch, no gradio).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from persona_explorer.plots.common import (
    BASELINE_COLOR,
    MUTED_TEXT,
    STEERED_COLORS,
    STEERED_SYMBOLS,
    ZERO_LINE_COLOR,
    floats,
    fmt,
    label,
    layer_index,
    same_length,
    style,
    text,
)

__all__ = ["DriftLine", "drift_figure"]

# The first conversation blue like every baseline; the others in the steered colours.
LINE_COLORS: tuple[str, ...] = (BASELINE_COLOR, *STEERED_COLORS)
DEFAULT_COLOR = "#2A7A3B"
_PREVIEW_CHARS = 90
_HEIGHT_ONE = 420
_HEIGHT_TWO = 560


@dataclass(frozen=True)
class DriftLine:
    """One conversation (or one persona vector's projections) across its turns."""

    name: str
    turns: Sequence[int]  # 1-based assistant turn numbers
    values: Sequence[float]  # one per turn, at the chosen layer
    previews: Sequence[str] = ()  # the turn's first words (user text: escaped here)
    windowed: Sequence[bool] = field(default_factory=tuple)  # read through a window


def _check(line: DriftLine, what: str) -> tuple[list[int], list[float], list[str], list[bool]]:
    name = label(line.name, f"{what} name")
    turns = [int(t) for t in floats(line.turns, f"{name} turns", allow_empty=True)]
    values = floats(line.values, f"{name} values", allow_empty=True)
    same_length(f"{name} values", values, len(turns), "its turns")
    previews = [str(p) for p in line.previews] or [""] * len(turns)
    same_length(f"{name} previews", previews, len(turns), "its turns")
    windowed = [bool(w) for w in line.windowed] or [False] * len(turns)
    same_length(f"{name} windowed", windowed, len(turns), "its turns")
    return turns, values, previews, windowed


def _hover(turn: int, value: float, preview: str, windowed: bool, digits: int) -> str:
    short = preview if len(preview) <= _PREVIEW_CHARS else preview[: _PREVIEW_CHARS - 1] + "…"
    parts = [f"turn {turn}: {fmt(value, digits)}"]
    if windowed:
        parts.append("(read in a window of recent turns)")
    if short:
        parts.append(f"“{text(short)}”")
    return "<br>".join(parts)


def _add_line(
    fig: go.Figure, line: DriftLine, k: int, row: int | None, digits: int, what: str
) -> None:
    turns, values, previews, windowed = _check(line, what)
    color = LINE_COLORS[k % len(LINE_COLORS)]
    symbol = STEERED_SYMBOLS[k % len(STEERED_SYMBOLS)]
    hover = [
        _hover(t, v, p, w, digits)
        for t, v, p, w in zip(turns, values, previews, windowed, strict=True)
    ]
    trace = go.Scatter(
        x=turns,
        y=values,
        mode="lines+markers",
        name=text(line.name),
        line={"color": color, "width": 2},
        marker={
            "color": ["white" if w else color for w in windowed],
            "line": {"color": color, "width": 2},
            "symbol": symbol,
            "size": 8,
        },
        hovertext=hover,
        hovertemplate="%{hovertext}<extra>%{fullData.name}</extra>",
        legendgroup=f"{what}{k}",
        showlegend=True,  # plotly hides a lone trace's legend; the name says what it is
    )
    if row is None:
        fig.add_trace(trace)
    else:
        fig.add_trace(trace, row=row, col=1)


def _reference(fig: go.Figure, y: float, name: str, color: str, row: int | None) -> None:
    where = {} if row is None else {"row": row, "col": 1}
    fig.add_hline(
        y=y,
        line={"dash": "dash", "color": color, "width": 1.5},
        annotation_text=name,
        annotation_position="top left",
        annotation_font={"size": 11, "color": color},
        layer="below",
        **where,
    )


def drift_figure(
    lines: Sequence[DriftLine],
    layer: int,
    n_layers: int,
    *,
    normalised: bool = True,
    personas: Sequence[DriftLine] = (),
    title: str | None = None,
) -> go.Figure:
    """Per-turn projections of ``lines`` at ``layer`` (normalised: 0 = roles' mean,
    1 = default Assistant; else raw activation units), and under them, when ``personas`` is
    given, each persona vector's projection per turn."""
    at = layer_index(layer, "layer", n_layers)
    if not lines:
        raise ValueError("drift_figure needs at least one line")
    two = bool(personas)
    fig = (
        make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12)
        if two
        else go.Figure()
    )
    row = 1 if two else None
    for k, line in enumerate(lines):
        _add_line(fig, line, k, row, 2 if normalised else 1, "conversation")
    if normalised:
        _reference(fig, 1.0, "default Assistant (1)", DEFAULT_COLOR, row)
        _reference(fig, 0.0, "roles' mean (0)", MUTED_TEXT, row)
    for k, line in enumerate(personas):
        _add_line(fig, line, len(lines) + k, 2, 1, "persona")
    y_title = "Axis (0 = roles, 1 = Assistant)" if normalised else "Axis projection"
    names = [ln.name for ln in (*lines, *personas)]
    style(
        fig,
        title=title or f"Each assistant turn on the Assistant Axis, layer {at}",
        y_title=None if two else y_title,
        height=_HEIGHT_TWO if two else _HEIGHT_ONE,
        legend=names,
    )
    last = max([1, *(int(t) for ln in (*lines, *personas) for t in ln.turns)])
    # Whole turns only: about ten labelled ticks, whatever the length of the conversation.
    fig.update_xaxes(
        tickmode="linear",
        tick0=1,
        dtick=max(1, math.ceil(last / 10)),
        range=[0.5, last + 0.5],
        zeroline=False,
        showgrid=False,
    )
    fig.update_xaxes(title_text="Assistant turn", **({"row": 2, "col": 1} if two else {}))
    if two:
        fig.update_yaxes(title_text=y_title, row=1, col=1)
        fig.update_yaxes(title_text="Persona projection", row=2, col=1)
        fig.update_yaxes(zerolinecolor=ZERO_LINE_COLOR, row=2, col=1)
    return fig
