"""What every figure shares: input validation, colours, the house style and the layer axis.

Inputs are validated up front: a figure silently drawn from mismatched or NaN data would
mislead. Styling is written for a phone-sized window (≈390 px wide) first: compact margins that
grow only as far as tick labels need (``automargin``), horizontal legends above the plot,
titles wrapped by hand (plotly never wraps them) and layer ticks thinned to fit the width.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Iterable, Sequence

import plotly.graph_objects as go

from persona_explorer.core.limits import check_layer

# Okabe-Ito colours: distinguishable under the common colour-vision deficiencies. The first
# three steered colours are the most different from each other and from the blue baseline,
# because a comparison shows up to three steered rows; orange comes later since the injected
# band is orange.
BASELINE_COLOR = "#0072B2"  # blue
STEERED_COLORS: tuple[str, ...] = ("#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
# Shapes as well as colours, so rows stay apart in grey-scale prints and for colour-blind eyes.
STEERED_SYMBOLS: tuple[str, ...] = ("circle", "square", "diamond", "triangle-up", "x")
NEUTRAL_COLOR = "#9AA5B1"  # grey for "everything else"
BAND_COLOR = "#E69F00"
BAND_TEXT_COLOR = "#8A5A00"
MUTED_TEXT = "#5F6B7A"
ZERO_LINE_COLOR = "#C8CED6"

# Blue-white-red, the same poles as the token colouring (negative blue, positive red).
DIVERGING_SCALE = [
    [0.0, "#2166AC"],
    [0.25, "#92C5DE"],
    [0.5, "#F7F7F7"],
    [0.75, "#F4A582"],
    [1.0, "#B2182B"],
]
NEG_RGB = (33, 102, 172)
POS_RGB = (178, 24, 43)

FONT = "Inter, system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
HEIGHT = 400
# 12 px text still reads on a phone; the title a little larger.
_FONT_SIZE = 12
_TITLE_SIZE = 15
# Characters per title line: what fits a ≈390 px phone at the title size.
TITLE_WRAP = 44
_TITLE_LINE_PX = 20
_LEGEND_ROW_PX = 22
# Below this many layers every layer gets a labelled tick even on a phone.
_ALL_TICKS_MAX_LAYERS = 8
# What a legend row may hold before it wraps, and the width of one entry's symbol and gaps:
# estimated for a phone, the narrowest screen the figures are made for.
_LEGEND_ROW_WIDTH_PX = 340
_LEGEND_ENTRY_PX = 48
_LEGEND_CHAR_PX = 6.5


# --------------------------------------------------------------------------- validation


def floats(values: object, name: str, *, allow_empty: bool = False) -> list[float]:
    """``values`` as a list of finite floats, or a ValueError saying what is wrong."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    out: list[float] = []
    for i, v in enumerate(values):
        out.append(number(v, f"{name}[{i}]"))
    if not out and not allow_empty:
        raise ValueError(f"{name} is empty")
    return out


def number(value: object, name: str) -> float:
    """One finite float (numpy / torch scalars convert too), or a ValueError."""
    if isinstance(value, (str, bytes, bool)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}") from None
    if not math.isfinite(f):
        raise ValueError(f"{name} must be a finite number, got {f}")
    return f


def layer_index(value: object, name: str, n_layers: int) -> int:
    if isinstance(value, bool) or (not isinstance(value, int) and not hasattr(value, "__index__")):
        raise ValueError(f"{name} must be an integer layer index, got {value!r}")
    return check_layer(value, n_layers, name)


def plain_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return value


def same_length(name: str, values: Sequence[float], expected: int, reference: str) -> None:
    if len(values) != expected:
        raise ValueError(
            f"{name} has {len(values)} values but {reference} has {expected}; they must match"
        )


def label(value: object, name: str) -> str:
    """A non-empty string label, or a ValueError."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def text(value: str) -> str:
    """User text for a plotly label: plotly renders a subset of HTML, so escape it."""
    return html.escape(value, quote=False)


def wrap_title(title: str, width: int = TITLE_WRAP) -> str:
    """``title`` escaped and broken into lines of at most ``width`` characters with ``<br>``.

    Wrapped before escaping, so an entity such as ``&amp;`` is never cut in half.
    """
    lines = textwrap.wrap(title, width=width, break_on_hyphens=False) or [""]
    return "<br>".join(text(line) for line in lines)


def fmt(value: float, digits: int = 2, *, sign: bool = False) -> str:
    """A number for people: a real minus sign, and ``+`` only when ``sign`` is asked for."""
    if round(value, digits) == 0:
        value = 0.0  # "−0.00" would claim a sign the number does not have
    out = f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    return out.replace("-", "−")


def fmt_layers(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}–{last}"


# --------------------------------------------------------------------------- layout


def legend_rows(names: Sequence[str]) -> int:
    """How many rows a horizontal legend of ``names`` takes on a phone (an estimate)."""
    rows, used = 1, 0.0
    for name in names:
        width = _LEGEND_ENTRY_PX + _LEGEND_CHAR_PX * len(name)
        if used and used + width > _LEGEND_ROW_WIDTH_PX:
            rows, used = rows + 1, 0.0
        used += width
    return rows


def style(
    fig: go.Figure,
    *,
    title: str,
    x_title: str | None = None,
    y_title: str | None = None,
    height: int = HEIGHT,
    legend: Sequence[str] = (),
) -> go.Figure:
    """The house style. ``title`` is user-facing plain text (escaped and wrapped here);
    ``legend`` lists the legend's entries, which sizes the room kept for it above the plot."""
    title_html = wrap_title(title) if title else ""
    lines = title_html.count("<br>") + 1 if title else 0
    title_px = _TITLE_LINE_PX * lines + 8 if title else 0
    legend_px = _LEGEND_ROW_PX * legend_rows(legend) if legend else 0
    fig.update_layout(
        template="plotly_white",
        # The title sits at the top of the figure and the legend directly above the plot; the
        # top margin holds both, so neither covers the other or the curves.
        title={
            "text": title_html,
            # From the figure's left edge, not the plot's: a phone has no width to spare.
            "x": 0.0,
            "xref": "container",
            "xanchor": "left",
            "y": 1.0,
            "yref": "container",
            "yanchor": "top",
            # Plotly lifts a multi-line title by about a line when anchored at the top.
            "pad": {"t": 10 if lines <= 1 else 22, "l": 8},
            "font": {"size": _TITLE_SIZE},
        },
        font={"family": FONT, "size": _FONT_SIZE, "color": "#2A2F36"},
        autosize=True,
        height=height,
        margin={"l": 8, "r": 8, "t": 12 + title_px + legend_px, "b": 8, "autoexpand": True},
        legend={
            "orientation": "h",
            "yanchor": "bottom",
            "y": 1.0,
            "yref": "paper",
            "xanchor": "left",
            "x": 0.0,
            "bgcolor": "rgba(255,255,255,0)",
            "font": {"size": _FONT_SIZE - 1},
        },
        hoverlabel={"font": {"family": FONT, "size": _FONT_SIZE}},
        plot_bgcolor="white",
        paper_bgcolor="white",
    )
    fig.update_xaxes(automargin=True, title_standoff=6)
    fig.update_yaxes(automargin=True, title_standoff=6)
    if x_title is not None:
        fig.update_xaxes(title_text=x_title)
    if y_title is not None:
        fig.update_yaxes(title_text=y_title)
    return fig


def layer_axis(fig: go.Figure, n_layers: int, **where: int) -> None:
    """Integer layer ticks that fit the width; ``where`` (row=, col=) picks a subplot axis."""
    ticks: dict[str, object]
    if n_layers <= _ALL_TICKS_MAX_LAYERS:
        ticks = {"tickmode": "linear", "tick0": 0, "dtick": 1}
    else:
        # Plotly's automatic ticks scale with the axis' pixel length, so a phone gets fewer
        # labels than a desktop instead of overlapping ones; over a span of 9+ layers they
        # are whole numbers. Unlabelled minor ticks still mark every layer.
        ticks = {"tickmode": "auto", "nticks": 0, "minor": {"dtick": 1, "ticklen": 3}}
    fig.update_xaxes(range=[-0.5, n_layers - 0.5], showgrid=False, zeroline=False, **ticks, **where)


def bands(layers: Iterable[int]) -> list[tuple[int, int]]:
    """Runs of consecutive layers as (first, last), so a window draws one band, not many."""
    runs: list[tuple[int, int]] = []
    for layer in sorted(set(layers)):
        if runs and layer == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], layer)
        else:
            runs.append((layer, layer))
    return runs


def empty_figure(message: str) -> go.Figure:
    """A blank placeholder that says ``message`` in the middle."""
    fig = go.Figure()
    fig.add_annotation(
        text=wrap_title(message),
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        showarrow=False,
        font={"size": 14, "color": MUTED_TEXT},
    )
    style(fig, title="", height=300)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(margin={"l": 16, "r": 16, "t": 16, "b": 16})
    return fig


def shade_layer_bands(
    fig: go.Figure,
    layers: Iterable[int],
    n_layers: int,
    panels: int,
    verb: str,
    label_every_panel: bool = True,
) -> None:
    """Shade each run of ``layers`` on every panel, labelled "<verb> at L" (e.g. "injected").

    Call after the traces: plotly skips shapes on a subplot that has no data yet.
    """
    for k, (first, last) in enumerate(bands(layers)):
        # A label near the right edge grows leftwards, so it stays inside the plot; labels of
        # several bands step down, so close bands on a narrow screen do not print over each other.
        side = "right" if first > n_layers / 2 else "left"
        label = {
            "annotation_text": f"{verb} at {fmt_layers(first, last)}",
            "annotation_position": f"top {side}",
            "annotation_font": {"size": 11, "color": BAND_TEXT_COLOR},
            "annotation": {"yshift": -13 * (k % 3)},
        }
        for row in range(1, panels + 1):
            fig.add_vrect(
                x0=first - 0.5,
                x1=last + 0.5,
                fillcolor=BAND_COLOR,
                opacity=0.15,
                line_width=0,
                layer="below",
                **(label if label_every_panel or row == 1 else {}),
                **({"row": row, "col": 1} if panels > 1 else {}),
            )
