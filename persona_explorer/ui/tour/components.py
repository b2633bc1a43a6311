"""The Tour's widgets: :class:`TourTab`, filled by :func:`.tab.build` and read by the handlers
(which never import the layout).

Imports: gradio only.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

__all__ = ["TourTab"]


@dataclass
class TourTab:
    steps: gr.Radio  # the step picker: its value is the step's key
    text: gr.Markdown  # what to look at, what it means, the papers, this model
    note: gr.Markdown  # live or precomputed, and when
    answers: gr.Row  # the two answers side by side (hidden where a step has none)
    left: gr.Textbox
    right: gr.Textbox
    output: gr.Markdown  # the result in words, with its numbers
    plot: gr.Plot
    live: gr.Button  # "Run it live" (precomputed steps)
    stop: gr.Button
    open: gr.Button  # "Open this in its tab" (wired in build_demo)
    next: gr.Button
    link: gr.Markdown  # a share link where the tab has them (Steer)
