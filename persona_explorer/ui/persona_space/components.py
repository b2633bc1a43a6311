"""The Persona space tab's widgets: :class:`PersonaSpaceTab`, filled by :func:`.tab.build` and
read by the handlers (which never import the layout).

Imports: gradio only.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

__all__ = ["PersonaSpaceTab"]


@dataclass
class PersonaSpaceTab:
    layer: gr.Slider
    view: gr.Radio
    personas: gr.Dropdown
    refresh: gr.Button
    arrow_length: gr.Radio
    prompt: gr.Textbox
    system: gr.Textbox
    max_new_tokens: gr.Slider
    place: gr.Button
    clear: gr.Button
    draw: gr.Button
    answer: gr.Textbox
    summary: gr.Markdown
    plot: gr.Plot
    variance: gr.Plot
    layers: gr.Plot
    coords: gr.JSON
    placed: gr.State
    # The coordinates as files (issue 26), JSON and CSV.
    file_json: gr.DownloadButton
    file_csv: gr.DownloadButton
