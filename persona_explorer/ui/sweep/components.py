"""The Sweep tab's widgets: :class:`SweepTab`, filled by :func:`.tab.build` and read by the
handlers (which never import the layout).

Imports: gradio only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

__all__ = ["SweepTab"]


@dataclass
class SweepTab:
    state: gr.State  # this session's vectors (shared with the other tabs)
    persona: gr.Dropdown
    info: gr.Markdown
    prompts: gr.Textbox
    layers: gr.Textbox
    strengths: gr.Textbox
    max_new_tokens: gr.Slider
    positions: gr.Radio
    margin: gr.Number
    min_coherence: gr.Number
    max_repetition_rise: gr.Number
    run: gr.Button
    stop: gr.Button
    status: gr.Markdown
    trait_plot: gr.Plot
    coherence_plot: gr.Plot
    grid: gr.Dataframe
    cell: gr.Markdown
    column_layer: gr.Dropdown
    columns: gr.Dataframe
    use: gr.Button
    use_note: gr.Markdown
    summary: gr.JSON
    run_state: gr.State
    used_key: gr.State  # the key of the vector that now records the recommendation
    swept: Any = None  # the /sweep event
    used: Any = None  # the "Use these settings" event, for chaining list refreshes
