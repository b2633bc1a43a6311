"""The Screen data tab's widgets, as one dataclass: what the layout (:mod:`.tab`) builds and
the handlers (:mod:`.handlers`) read and update.

Imports: gradio only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

__all__ = ["ScreeningTab"]


@dataclass
class ScreeningTab:
    dataset: gr.Dropdown
    upload: gr.File
    vectors: gr.Dropdown
    refresh: gr.Button
    layer: gr.Slider
    own: gr.Checkbox
    max_new_tokens: gr.Slider
    max_samples: gr.Slider
    run: gr.Button
    stop: gr.Button
    status: gr.Markdown
    histogram: gr.Plot
    top: gr.Markdown
    filter: gr.Textbox
    sort_by: gr.Dropdown
    table: gr.Dataframe
    problems: gr.Markdown
    context: gr.Textbox
    with_context: gr.Checkbox
    rescore: gr.Button
    inoculation: gr.Markdown
    inoculation_plot: gr.Plot
    prepare: gr.Button
    download_csv: gr.DownloadButton
    download_jsonl: gr.DownloadButton
    summary: gr.JSON
    run_state: gr.State
    screened: Any = None  # the /screen event
