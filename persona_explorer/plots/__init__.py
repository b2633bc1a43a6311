"""Figures for the app: plain Python numbers in, plotly figures (or an HTML snippet) out.

Owns how every plot and the per-token view look and what they are allowed to claim; the UI
passes numbers and labels and shows what comes back. One module per kind of figure:

* :mod:`.common` — input validation, colours, the house style (phone-first), the layer axis,
  :func:`empty_figure`;
* :mod:`.layers` — :func:`layer_projection_figure` (projection per layer and the change from the
  baseline) and :func:`strength_strip_figure`;
* :mod:`.separation` — :func:`separation_figure` (Extract tab);
* :mod:`.tokens` — the per-token HTML view and its caption;
* :mod:`.similarity` — the cosine heat map and :func:`similarity_statements`.
* :mod:`.capping` — the Assistant Axis before and after capping, per layer and per token;
* :mod:`.persona_map` — the Persona space map (2-D/3-D), variance explained, PC1 per layer;
* :mod:`.drift` — per-turn positions on the axis over a conversation;
* :mod:`.screening` — training samples' score histograms and the inoculation overlay;
* :mod:`.sweep` — a layer x strength sweep's heat maps (trait rise, coherence).

The last five are imported from their modules directly
(``from persona_explorer.plots.drift import ...``).

Imports: plotly, the standard library and :mod:`persona_explorer.core.limits` only: no torch and
no gradio, so every figure can be built and tested on its own. User text (names, labels,
captions) is escaped here.
"""

from __future__ import annotations

from persona_explorer.plots.common import (
    BASELINE_COLOR,
    STEERED_COLORS,
    STEERED_SYMBOLS,
    empty_figure,
)
from persona_explorer.plots.layers import layer_projection_figure, strength_strip_figure
from persona_explorer.plots.separation import separation_figure
from persona_explorer.plots.similarity import cosine_heatmap_figure, relation, similarity_statements
from persona_explorer.plots.tokens import (
    token_panels_html,
    token_projection_html,
    token_view_caption,
)

__all__ = [
    "BASELINE_COLOR",
    "STEERED_COLORS",
    "STEERED_SYMBOLS",
    "cosine_heatmap_figure",
    "empty_figure",
    "layer_projection_figure",
    "relation",
    "separation_figure",
    "similarity_statements",
    "strength_strip_figure",
    "token_panels_html",
    "token_projection_html",
    "token_view_caption",
]
