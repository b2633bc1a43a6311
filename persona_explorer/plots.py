"""Figures for the app: plain Python numbers in, plotly figures (or an HTML snippet) out.

No torch and no gradio here, so every figure can be built and tested on its own. Inputs are
validated up front: a figure silently drawn from mismatched or NaN data would mislead.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .limits import check_layer

__all__ = [
    "BASELINE_COLOR",
    "STEERED_COLORS",
    "cosine_heatmap_figure",
    "empty_figure",
    "layer_projection_figure",
    "separation_figure",
    "strength_strip_figure",
    "token_projection_html",
]

# Okabe-Ito colours: distinguishable under the common colour-vision deficiencies.
BASELINE_COLOR = "#0072B2"  # blue
STEERED_COLORS: tuple[str, ...] = ("#D55E00", "#E69F00", "#CC79A7", "#009E73", "#56B4E9")
_NEUTRAL_COLOR = "#9AA5B1"  # grey for "everything else"
_BAND_COLOR = "#E69F00"
_MUTED_TEXT = "#5F6B7A"

# Blue-white-red, the same poles as the token colouring (negative blue, positive red).
_DIVERGING_SCALE = [
    [0.0, "#2166AC"],
    [0.25, "#92C5DE"],
    [0.5, "#F7F7F7"],
    [0.75, "#F4A582"],
    [1.0, "#B2182B"],
]
_NEG_RGB = (33, 102, 172)
_POS_RGB = (178, 24, 43)

_FONT = "Inter, system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
_HEIGHT = 400
# Above this many names the per-cell numbers become unreadable clutter; hover still has them.
_MAX_ANNOTATED_CELLS = 15
# Cosines computed in float32 can overshoot 1 a little.
_COSINE_TOLERANCE = 1e-3


# --------------------------------------------------------------------------- validation


def _floats(values: object, name: str, *, allow_empty: bool = False) -> list[float]:
    """``values`` as a list of finite floats, or a ValueError saying what is wrong."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    out: list[float] = []
    for i, v in enumerate(values):
        if isinstance(v, (str, bytes, bool)):
            raise ValueError(f"{name}[{i}] must be a number, got {v!r}")
        try:
            f = float(v)  # type: ignore[arg-type]  # numpy / torch scalars convert too
        except (TypeError, ValueError):
            raise ValueError(f"{name}[{i}] must be a number, got {type(v).__name__}") from None
        if not math.isfinite(f):
            raise ValueError(f"{name}[{i}] must be a finite number, got {f}")
        out.append(f)
    if not out and not allow_empty:
        raise ValueError(f"{name} is empty")
    return out


def _layer_index(value: object, name: str, n_layers: int) -> int:
    if not isinstance(value, int) and not hasattr(value, "__index__"):
        raise ValueError(f"{name} must be an integer layer index, got {value!r}")
    return check_layer(value, n_layers, name)


def _same_length(name: str, values: Sequence[float], expected: int, reference: str) -> None:
    if len(values) != expected:
        raise ValueError(
            f"{name} has {len(values)} values but {reference} has {expected}; they must match"
        )


def _text(label: str) -> str:
    return html.escape(label, quote=False)


# --------------------------------------------------------------------------- layout


def _style(
    fig: go.Figure,
    *,
    title: str,
    x_title: str | None = None,
    y_title: str | None = None,
    height: int = _HEIGHT,
) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        title={
            "text": html.escape(title, quote=False),
            "x": 0.01,
            "xanchor": "left",
            "font": {"size": 16},
        },
        font={"family": _FONT, "size": 13, "color": "#2A2F36"},
        height=height,
        margin={"l": 64, "r": 24, "t": 64, "b": 56},
        legend={
            "orientation": "h",
            "yanchor": "bottom",
            "y": 1.0,
            "xanchor": "right",
            "x": 1.0,
            "bgcolor": "rgba(255,255,255,0)",
        },
        hoverlabel={"font": {"family": _FONT, "size": 12}},
        plot_bgcolor="white",
        paper_bgcolor="white",
    )
    if x_title is not None:
        fig.update_xaxes(title_text=x_title)
    if y_title is not None:
        fig.update_yaxes(title_text=y_title)
    return fig


def _layer_axis(fig: go.Figure, n_layers: int) -> None:
    # Integer ticks: a "layer 2.5" tick means nothing. Every layer labelled while that stays
    # legible, every few layers otherwise.
    dtick = 1 if n_layers <= 32 else max(2, math.ceil(n_layers / 16))
    fig.update_xaxes(
        range=[-0.5, n_layers - 0.5],
        tickmode="linear",
        tick0=0,
        dtick=dtick,
        showgrid=False,
        zeroline=False,
    )


def _bands(layers: Iterable[int]) -> list[tuple[int, int]]:
    """Runs of consecutive layers as (first, last), so a window draws one band, not many."""
    runs: list[tuple[int, int]] = []
    for layer in sorted(set(layers)):
        if runs and layer == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], layer)
        else:
            runs.append((layer, layer))
    return runs


# --------------------------------------------------------------------------- figures


def empty_figure(message: str) -> go.Figure:
    """A blank placeholder that says ``message`` in the middle."""
    fig = go.Figure()
    fig.add_annotation(
        text=html.escape(message, quote=False),
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        showarrow=False,
        font={"size": 15, "color": _MUTED_TEXT},
    )
    _style(fig, title="", height=300)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(margin={"l": 24, "r": 24, "t": 24, "b": 24})
    return fig


def layer_projection_figure(
    baseline: Sequence[float],
    steered: Mapping[str, Sequence[float]] | Sequence[float],
    steered_layers: Sequence[int] = (),
    title: str = "Projection onto the persona vector, layer by layer",
    *,
    y_title: str = "Projection",
) -> go.Figure:
    """Per-layer projection of a baseline run and of one or more steered runs.

    ``steered`` is either one sequence (drawn as "steered") or a mapping label -> values; an
    empty one draws the baseline alone. Every sequence has one value per layer. The layers in
    ``steered_layers`` are shaded and marked "steered here".
    """
    base = _floats(baseline, "baseline")
    n = len(base)
    variants: list[tuple[str, list[float]]] = []
    if isinstance(steered, Mapping):
        for label, values in steered.items():
            if not isinstance(label, str) or not label:
                raise ValueError(f"steered labels must be non-empty strings, got {label!r}")
            vals = _floats(values, f"steered[{label!r}]")
            _same_length(f"steered[{label!r}]", vals, n, "baseline")
            variants.append((label, vals))
    else:
        vals = _floats(steered, "steered", allow_empty=True)
        if vals:
            _same_length("steered", vals, n, "baseline")
            variants.append(("steered", vals))
    if isinstance(steered_layers, (str, bytes)):
        raise ValueError("steered_layers must be a sequence of layer indices")
    layers = [_layer_index(v, f"steered_layers[{i}]", n) for i, v in enumerate(steered_layers)]

    fig = go.Figure()
    for first, last in _bands(layers):
        fig.add_vrect(
            x0=first - 0.5,
            x1=last + 0.5,
            fillcolor=_BAND_COLOR,
            opacity=0.15,
            line_width=0,
            layer="below",
            annotation_text="steered here",
            annotation_position="top left",
            annotation_font={"size": 11, "color": "#8A5A00"},
        )

    xs = list(range(n))
    hover = "%{fullData.name}: %{y:.3f}<extra></extra>"
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=base,
            name="baseline",
            mode="lines+markers",
            line={"color": BASELINE_COLOR, "width": 2, "dash": "dot"},
            marker={"size": 5},
            hovertemplate=hover,
        )
    )
    for k, (label, vals) in enumerate(variants):
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=vals,
                name=_text(label),
                mode="lines+markers",
                line={"color": STEERED_COLORS[k % len(STEERED_COLORS)], "width": 2.5},
                marker={"size": 5},
                hovertemplate=hover,
            )
        )
    _style(fig, title=title, x_title="Layer", y_title=y_title)
    _layer_axis(fig, n)
    fig.update_layout(hovermode="x unified")
    fig.update_yaxes(zeroline=True, zerolinecolor="#C8CED6")
    return fig


def separation_figure(
    separation: Sequence[float],
    best_layer: int | None,
    norms: Sequence[float] | None = None,
    title: str = "How well each layer separates the persona",
) -> go.Figure:
    """Per-layer separation (Cohen's d) as bars, the best layer highlighted.

    ``norms`` (the vector's norm per layer), when given, is drawn as a line on a second axis.
    """
    sep = _floats(separation, "separation")
    n = len(sep)
    best = None if best_layer is None else _layer_index(best_layer, "best_layer", n)
    norm_vals = None
    if norms is not None:
        norm_vals = _floats(norms, "norms")
        _same_length("norms", norm_vals, n, "separation")

    fig = make_subplots(specs=[[{"secondary_y": norm_vals is not None}]])
    xs = list(range(n))
    colors = [STEERED_COLORS[0] if i == best else _NEUTRAL_COLOR for i in xs]
    fig.add_trace(
        go.Bar(
            x=xs,
            y=sep,
            name="separation (Cohen's d)",
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
        fig.update_yaxes(title_text="Vector norm", secondary_y=True, showgrid=False)
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
    _style(fig, title=title, x_title="Layer")
    fig.update_yaxes(title_text="Separation (Cohen's d)", secondary_y=False)
    _layer_axis(fig, n)
    fig.update_layout(bargap=0.15, showlegend=norm_vals is not None)
    return fig


def cosine_heatmap_figure(
    names: Sequence[str],
    matrix: Sequence[Sequence[float]],
    layer: int,
    title: str | None = None,
) -> go.Figure:
    """Pairwise cosine similarities between persona vectors at one layer.

    The colour scale is fixed to [-1, 1] so figures for different layers compare at a glance.
    """
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError("names must be a sequence of strings")
    labels = list(names)
    n = len(labels)
    if n == 0:
        raise ValueError("names is empty")
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label:
            raise ValueError(f"names[{i}] must be a non-empty string, got {label!r}")
    # Plotly merges equal category labels, which would silently fold rows together.
    dupes = sorted(x for x, k in Counter(labels).items() if k > 1)
    if dupes:
        raise ValueError(f"names must be unique; repeated: {', '.join(dupes)}")
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"layer must be an int, got {layer!r}")
    if isinstance(matrix, str) or not isinstance(matrix, Iterable):
        raise ValueError("matrix must be a square sequence of rows of numbers")
    rows = [_floats(row, f"matrix[{i}]") for i, row in enumerate(matrix)]
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
    z = [[max(-1.0, min(1.0, v)) for v in row] for row in rows]

    annotate = n <= _MAX_ANNOTATED_CELLS
    fig = go.Figure(
        go.Heatmap(
            z=z,
            # Plotly renders a subset of HTML in labels: names are user text, never markup.
            x=[_text(x) for x in labels],
            y=[_text(y) for y in labels],
            zmin=-1.0,
            zmax=1.0,
            zmid=0.0,
            colorscale=_DIVERGING_SCALE,
            colorbar={"title": {"text": "cosine"}, "tickvals": [-1, -0.5, 0, 0.5, 1]},
            texttemplate="%{z:.2f}" if annotate else None,
            textfont={"size": 11},
            hovertemplate="%{y} · %{x}<br>cosine = %{z:.3f}<extra></extra>",
            xgap=1,
            ygap=1,
        )
    )
    _style(
        fig,
        title=title if title is not None else f"Cosine similarity between personas, layer {layer}",
        height=max(360, min(900, 120 + 34 * n)),
    )
    fig.update_xaxes(showgrid=False, tickangle=-40 if n > 6 else 0, automargin=True)
    # Row 0 on top, as in a table; equal aspect so the diagonal reads as a diagonal.
    fig.update_yaxes(
        showgrid=False, autorange="reversed", automargin=True, scaleanchor="x", constrain="domain"
    )
    return fig


def strength_strip_figure(
    strengths: Sequence[float],
    projections: Sequence[float],
    layer: int,
    title: str | None = None,
) -> go.Figure:
    """Projection at ``layer`` against the steering strength (coefficient) that produced it."""
    xs = _floats(strengths, "strengths")
    ys = _floats(projections, "projections")
    _same_length("projections", ys, len(xs), "strengths")
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"layer must be an int, got {layer!r}")
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
            annotation_font={"size": 11, "color": _MUTED_TEXT},
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
    _style(
        fig,
        title=title if title is not None else f"Projection vs steering strength, layer {layer}",
        x_title="Steering strength (coefficient)",
        y_title=f"Projection at layer {layer}",
    )
    fig.update_layout(showlegend=False)
    fig.update_yaxes(zeroline=True, zerolinecolor="#C8CED6")
    return fig


# --------------------------------------------------------------------------- token HTML


def _rgba(value: float, scale: float) -> tuple[str, float]:
    intensity = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    r, g, b = _POS_RGB if value > 0 else _NEG_RGB
    alpha = round(0.85 * intensity, 3)
    return f"rgba({r},{g},{b},{alpha})", alpha


def _token_markup(token: str) -> str:
    # Newlines become a faint return mark plus a real break, so a newline token stays visible
    # and hoverable. Everything else is escaped: tokens are model output.
    parts = token.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    nl = '<span style="opacity:0.45">↵</span><br>'
    return nl.join(html.escape(p, quote=True) for p in parts)


def token_projection_html(
    tokens: Sequence[str],
    values: Sequence[float],
    scale: float | None = None,
) -> str:
    """An HTML snippet colouring each token by its projection (for ``gr.HTML``).

    Negative values are blue, positive red, with intensity ``|value| / scale`` (``scale``
    defaults to the largest ``|value|``). Hovering a token shows its value. Tokens are
    HTML-escaped; whitespace is preserved and newlines break lines.
    """
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise ValueError("tokens must be a sequence of strings (one per token), not one string")
    toks = list(tokens)
    for i, t in enumerate(toks):
        if not isinstance(t, str):
            raise ValueError(f"tokens[{i}] must be a string, got {type(t).__name__}")
    vals = _floats(values, "values", allow_empty=True)
    _same_length("values", vals, len(toks), "tokens")
    if scale is not None:
        scale = _floats([scale], "scale")[0]
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")

    if not toks:
        return (
            '<div class="pe-tokens pe-empty" style="color:#6B7280;font-style:italic">'
            "No tokens to show.</div>"
        )

    peak = max(abs(v) for v in vals)
    # All-zero values: nothing to colour, and no division by zero.
    eff_scale = scale if scale is not None else (peak if peak > 0 else 1.0)

    spans: list[str] = []
    for tok, val in zip(toks, vals, strict=True):
        bg, alpha = _rgba(val, eff_scale)
        # Inherit the text colour (light or dark theme) unless the fill is dark enough to need
        # white text.
        color = "color:#FFFFFF;" if alpha > 0.5 else ""
        spans.append(
            f'<span class="pe-tok" title="{val:+.3f}" '
            f'style="background:{bg};{color}border-radius:3px;padding:1px 0">'
            f"{_token_markup(tok)}</span>"
        )

    neg_bg, _ = _rgba(-eff_scale, eff_scale)
    pos_bg, _ = _rgba(eff_scale, eff_scale)
    swatch = "display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;"
    legend = (
        '<div class="pe-legend" style="font-size:12px;color:#6B7280;margin-top:8px;'
        'display:flex;gap:14px;align-items:center;flex-wrap:wrap">'
        f'<span><span style="{swatch}background:{neg_bg}"></span> '
        f"negative (−{eff_scale:.3f})</span>"
        f'<span><span style="{swatch}background:transparent;border:1px solid #D1D5DB">'
        "</span> 0</span>"
        f'<span><span style="{swatch}background:{pos_bg}"></span> '
        f"positive (+{eff_scale:.3f})</span>"
        "<span>hover a token for its projection</span>"
        "</div>"
    )
    body = (
        '<div class="pe-token-text" style="white-space:pre-wrap;word-wrap:break-word;'
        "line-height:1.7;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;"
        f'font-size:13px">{"".join(spans)}</div>'
    )
    return f'<div class="pe-tokens">{body}{legend}</div>'
