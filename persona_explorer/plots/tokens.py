"""The per-token view: generated text coloured by how far each token leans along the persona.

What a token's colour may honestly mean is the model's own lean at a *read-out layer*: at or
after the layer where a vector was added, the raw projection also contains the added vector's
own component, which paints the steered text red by construction. So the panels here take the
raw projections and that component (``injected``) and show the difference, and every panel says
where it was read, what was removed and which colour scale it uses.

Zero is not a neutral point at a read-out layer. The persona direction is a difference of means,
and the residual stream of *any* text has a large component along it that depends on the layer
(with SmolLM2-135M and the built-in pirate: about −21 at layers 11 and 14 for plain Assistant
answers, about +130 at the last layer). Coloured around 0, every token of both answers came out
blue in the middle layers, including a steered answer whose own part sat 5–10 units above the
baseline's. So :func:`token_panels_html` can centre the colours on the baseline answer's mean
(``centre_on_baseline``): red then means "further towards the persona than the plain Assistant's
average token here", which is what the text is compared against.

A panel may also carry its answer's log-probabilities (:class:`LogprobHover`): each token's
hover then adds its log-probability under the model that wrote the answer and under the other
column's model, and a line under the caption gives the mean per token under each. These are the
model's raw next-token probabilities, before the frequency penalty the app decodes with, and
the hover and the line say so (:data:`LOGPROB_NOTE`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from persona_explorer.plots.common import NEG_RGB, POS_RGB, floats, fmt, number

_MUTED = "#6B7280"

# What the log-probabilities are, in the hover and the summary line.
LOGPROB_NOTE = "raw model probabilities, before the frequency penalty used for decoding"


@dataclass(frozen=True)
class LogprobHover:
    """One panel's answer scored by teacher forcing: ``own[i]`` is token ``i``'s natural-log
    probability under ``own_model`` (the model that wrote it), ``other[i]`` under
    ``other_model`` (the other column's). Labels are plain text; a non-finite value shows as
    "n/a" and is left out of the means."""

    own: Sequence[float]
    other: Sequence[float]
    own_model: str
    other_model: str


def _logprob_list(values: object, name: str, n_tokens: int) -> list[float | None]:
    """Numbers, one per token; non-finite ones as None (shown as n/a, never as NaN)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if isinstance(v, (str, bytes, bool)):
            raise ValueError(f"{name}[{i}] must be a number, got {v!r}")
        try:
            f = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"{name}[{i}] must be a number, got {type(v).__name__}") from None
        out.append(f if math.isfinite(f) else None)
    if len(out) != n_tokens:
        raise ValueError(f"{name} has {len(out)} values but tokens has {n_tokens}; they must match")
    return out


def _checked_hover(hover: object, n_tokens: int) -> tuple[list[float | None], list[float | None]]:
    if not isinstance(hover, LogprobHover):
        raise ValueError(f"logprobs must be a LogprobHover, got {type(hover).__name__}")
    for name in ("own_model", "other_model"):
        if not isinstance(getattr(hover, name), str):
            raise ValueError(f"logprobs.{name} must be a string")
    return (
        _logprob_list(hover.own, "logprobs.own", n_tokens),
        _logprob_list(hover.other, "logprobs.other", n_tokens),
    )


def _lp(value: float | None) -> str:
    return "n/a" if value is None else fmt(value, 3)


def _lp_mean(values: Sequence[float | None]) -> str:
    kept = [v for v in values if v is not None]
    return "n/a" if not kept else fmt(math.fsum(kept) / len(kept), 2)


def logprob_summary(hover: LogprobHover) -> str:
    """The plain-text line under a panel's caption: the answer's mean log-probability per
    token under its own model and under the other column's."""
    own, other = _checked_hover(hover, len(hover.own))
    n = len(own)
    if not n:
        return "Log-probability: no tokens to score."
    return (
        f"Mean log-probability per token ({n} tokens; {LOGPROB_NOTE}): "
        f"{_lp_mean(own)} under the model that wrote it ({hover.own_model}), "
        f"{_lp_mean(other)} under the other column's ({hover.other_model})."
    )


def _title(value: float, own: float | None, other: float | None, hover: LogprobHover) -> str:
    return (
        f"projection {value:+.3f}\nlog p {_lp(own)} under {hover.own_model} (this answer's model)"
        f"\nlog p {_lp(other)} under {hover.other_model}\n({LOGPROB_NOTE})"
    )


def _rgba(value: float, scale: float) -> tuple[str, float]:
    intensity = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    r, g, b = POS_RGB if value > 0 else NEG_RGB
    alpha = round(0.85 * intensity, 3)
    return f"rgba({r},{g},{b},{alpha})", alpha


def _token_markup(token: str) -> str:
    # Newlines become a faint return mark plus a real break, so a newline token stays visible
    # and hoverable. Everything else is escaped: tokens are model output.
    parts = token.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    nl = '<span style="opacity:0.45">↵</span><br>'
    return nl.join(html.escape(p, quote=True) for p in parts)


def _num(value: float, *, sign: bool = False) -> str:
    """About three significant digits, whatever the magnitude of the activations."""
    mag = abs(value)
    digits = 0 if mag >= 100 else 1 if mag >= 10 else 2 if mag >= 1 else 3
    return fmt(value, digits, sign=sign)


def _scale(value: object) -> float:
    scale = number(value, "scale")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return scale


def token_view_caption(
    readout_layer: int,
    injected: float,
    scale: float,
    shared: bool,
    centre: float | None = None,
) -> str:
    """The plain-text line above a per-token panel: where it was read, what was removed, the
    colour scale (``shared``: one scale for all panels) and what the numbers mean. ``centre``:
    the baseline answer's mean projection the colours are relative to (None: coloured around 0).
    """
    if isinstance(readout_layer, bool) or not isinstance(readout_layer, int) or readout_layer < 0:
        raise ValueError(f"readout_layer must be a layer index (int >= 0), got {readout_layer!r}")
    injected = number(injected, "injected")
    scale = _scale(scale)
    if not isinstance(shared, bool):
        raise ValueError(f"shared must be True or False, got {shared!r}")
    if centre is not None:
        centre = number(centre, "centre")
    where = f"Read at layer {readout_layer}"
    # Rounded to what is printed: "(+0.000) removed" would read as a contradiction.
    if float(_num(abs(injected))) == 0.0:
        removed = f"{where}; no added vector to remove there."
    else:
        removed = (
            f"{where}; the added vector's own component ({_num(injected, sign=True)}) removed."
        )
    whose = "one scale for every panel" if shared else "this panel's own scale"
    if centre is None:
        return (
            f"{removed} Colour: ±{_num(scale)} ({whose}). Values are projections onto the unit "
            "persona vector, in activation units: 0 = no lean either way."
        )
    return (
        f"{removed} Colour: ±{_num(scale)} ({whose}) around the baseline answer's mean here "
        f"({_num(centre, sign=True)}): red leans further towards the persona than the plain "
        "Assistant's average token, blue less. Values (hover) are relative to that mean, in "
        "activation units along the unit persona vector; raw values sit far from 0 for any "
        "text, so 0 itself means nothing."
    )


def token_projection_html(
    tokens: Sequence[str],
    values: Sequence[float],
    scale: float | None = None,
    *,
    caption: str | None = None,
    centre_label: str = "0: no lean",
    logprobs: LogprobHover | None = None,
) -> str:
    """An HTML snippet colouring each token by its projection (for ``gr.HTML``).

    Negative values are blue (away from the persona), positive red (towards it), with intensity
    ``|value| / scale`` (``scale`` defaults to the largest ``|value|``). Hovering a token shows
    its value. ``caption`` (plain text, escaped) is a line above the tokens saying what the
    colours mean; see :func:`token_view_caption`. Tokens are HTML-escaped; whitespace is
    preserved and newlines break lines. ``centre_label`` is the legend's word for an uncoloured
    token (the values' 0). ``logprobs``: the answer's log-probabilities, added to each token's
    hover and summed up in a line under the caption (module docstring).
    """
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise ValueError("tokens must be a sequence of strings (one per token), not one string")
    toks = list(tokens)
    for i, t in enumerate(toks):
        if not isinstance(t, str):
            raise ValueError(f"tokens[{i}] must be a string, got {type(t).__name__}")
    vals = floats(values, "values", allow_empty=True)
    if len(vals) != len(toks):
        raise ValueError(
            f"values has {len(vals)} values but tokens has {len(toks)}; they must match"
        )
    if scale is not None:
        scale = _scale(scale)
    if caption is not None and not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {type(caption).__name__}")
    if not isinstance(centre_label, str):
        raise ValueError(f"centre_label must be a string, got {type(centre_label).__name__}")
    lp_own: list[float | None] = [None] * len(toks)
    lp_other: list[float | None] = [None] * len(toks)
    if logprobs is not None:
        lp_own, lp_other = _checked_hover(logprobs, len(toks))

    head = (
        f'<div class="pe-token-caption" style="font-size:12px;color:{_MUTED};'
        f'margin-bottom:6px;line-height:1.4">{html.escape(caption, quote=False)}</div>'
        if caption
        else ""
    )
    if logprobs is not None:
        head += (
            f'<div class="pe-logprob-summary" style="font-size:12px;color:{_MUTED};'
            f'margin-bottom:6px;line-height:1.4">'
            f"{html.escape(logprob_summary(logprobs), quote=False)}</div>"
        )
    if not toks:
        return (
            f'<div class="pe-tokens pe-empty">{head}<div style="color:{_MUTED};'
            'font-style:italic">No tokens to show.</div></div>'
        )

    peak = max(abs(v) for v in vals)
    # All-zero values: nothing to colour, and no division by zero.
    eff_scale = scale if scale is not None else (peak if peak > 0 else 1.0)

    spans: list[str] = []
    for tok, val, own, other in zip(toks, vals, lp_own, lp_other, strict=True):
        bg, alpha = _rgba(val, eff_scale)
        # Inherit the text colour (light or dark theme) unless the fill is dark enough to need
        # white text.
        color = "color:#FFFFFF;" if alpha > 0.5 else ""
        title = f"{val:+.3f}" if logprobs is None else _title(val, own, other, logprobs)
        spans.append(
            f'<span class="pe-tok" title="{html.escape(title, quote=True)}" '
            f'style="background:{bg};{color}border-radius:3px;padding:1px 0">'
            f"{_token_markup(tok)}</span>"
        )

    hover_hint = (
        "hover a token for its value"
        if logprobs is None
        else "hover a token for its value and log-probabilities"
    )
    neg_bg, _ = _rgba(-eff_scale, eff_scale)
    pos_bg, _ = _rgba(eff_scale, eff_scale)
    swatch = "display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;"
    legend = (
        f'<div class="pe-legend" style="font-size:12px;color:{_MUTED};margin-top:8px;'
        'display:flex;gap:14px;align-items:center;flex-wrap:wrap">'
        f'<span><span style="{swatch}background:{neg_bg}"></span> '
        f"blue: away from the persona (−{eff_scale:.3f})</span>"
        f'<span><span style="{swatch}background:transparent;border:1px solid #D1D5DB">'
        f"</span> {html.escape(centre_label, quote=False)}</span>"
        f'<span><span style="{swatch}background:{pos_bg}"></span> '
        f"red: towards it (+{eff_scale:.3f})</span>"
        f"<span>{hover_hint}</span>"
        "</div>"
    )
    body = (
        '<div class="pe-token-text" style="white-space:pre-wrap;word-wrap:break-word;'
        "line-height:1.7;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;"
        f'font-size:13px">{"".join(spans)}</div>'
    )
    return f'<div class="pe-tokens">{head}{body}{legend}</div>'


def token_panels_html(
    rows: Sequence[tuple[Sequence[str], Sequence[float], float]],
    readout_layer: int,
    *,
    shared_scale: bool = False,
    centre_on_baseline: bool = False,
    logprobs: Sequence[LogprobHover | None] | None = None,
) -> list[str]:
    """One captioned per-token panel per row of ``(tokens, raw projections, injected)``.

    Each panel colours ``raw − injected`` (the model's own part at ``readout_layer``; the
    baseline's ``injected`` is 0). With ``centre_on_baseline`` the first row is the baseline and
    every panel is coloured relative to its mean (module docstring: 0 is no neutral point at a
    read-out layer); a baseline with no tokens leaves the centre at 0. Each panel gets its own
    colour scale (its largest ``|value|``), or with ``shared_scale`` one scale for all, and the
    caption says which. ``logprobs``: one :class:`LogprobHover` (or None) per row, for the
    hovers and the summary line.
    """
    if logprobs is not None and len(logprobs) != len(rows):
        raise ValueError(f"logprobs has {len(logprobs)} entries but rows has {len(rows)}")
    own: list[tuple[Sequence[str], list[float], float]] = []
    for i, row in enumerate(rows):
        if not isinstance(row, tuple) or len(row) != 3:
            raise ValueError(f"rows[{i}] must be a (tokens, values, injected) tuple")
        tokens, raw, injected = row
        inj = number(injected, f"rows[{i}] injected")
        own.append(
            (tokens, [v - inj for v in floats(raw, f"rows[{i}] values", allow_empty=True)], inj)
        )

    centre: float | None = None
    if centre_on_baseline and own:
        base_values = own[0][1]
        centre = sum(base_values) / len(base_values) if base_values else 0.0
        own = [(tokens, [v - centre for v in values], inj) for tokens, values, inj in own]

    def peak(values: Sequence[float]) -> float:
        top = max((abs(v) for v in values), default=0.0)
        return top if top > 0 else 1.0  # nothing to colour: any positive scale will do

    everything = [v for _, values, _ in own for v in values]
    label = "0: no lean" if centre is None else "centre: the baseline's mean"
    panels = []
    for i, (tokens, values, inj) in enumerate(own):
        scale = peak(everything) if shared_scale else peak(values)
        caption = token_view_caption(readout_layer, inj, scale, shared_scale, centre)
        panels.append(
            token_projection_html(
                tokens,
                values,
                scale,
                caption=caption,
                centre_label=label,
                logprobs=None if logprobs is None else logprobs[i],
            )
        )
    return panels
