"""The Extract tab's widgets: :class:`ExtractTab`, filled by :func:`.tab.build` and read by the
handlers (which never import the layout).

Imports: gradio only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

__all__ = ["ExtractTab"]


@dataclass
class ExtractTab:
    state: gr.State  # this session's vectors (shared with the other tabs)
    source: gr.Radio
    trait: gr.Dropdown
    role: gr.Dropdown
    about: gr.Markdown
    custom_box: gr.Group
    custom_name: gr.Textbox
    run: gr.Button
    summary: gr.Markdown
    plot: gr.Plot
    examples: gr.Dataframe
    last: gr.State  # session key of the last extracted vector
    try_it: gr.Button
    save: gr.Button
    download: gr.DownloadButton
    extracted: Any = None  # the extraction event, for chaining list refreshes
    remove_axis: gr.Checkbox | None = None  # "Remove the Assistant-Axis component"
