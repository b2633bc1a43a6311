"""The Train tab's widgets, as one dataclass: what the layout (:mod:`.tab`) builds and the
handlers (:mod:`.handlers`) read and update, with the tab's store of tuned models.

Imports: gradio and this tab's :mod:`.tuned_models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from persona_explorer.ui.finetune.tuned_models import TunedModels

__all__ = ["TrainTab"]


@dataclass
class TrainTab:
    state: gr.State  # this session's vectors (shared with the other tabs)
    store: TunedModels
    dataset: gr.Dropdown
    upload: gr.File
    max_samples: gr.Slider
    with_context: gr.Checkbox
    context: gr.Textbox
    epochs: gr.Slider
    learning_rate: gr.Number
    rank: gr.Slider
    max_tokens: gr.Slider
    steer: gr.Checkbox
    steer_vector: gr.Dropdown
    steer_layer: gr.Slider
    steer_strength: gr.Number
    seed: gr.Number
    train: gr.Button
    stop: gr.Button
    status: gr.Markdown
    loss_plot: gr.Plot
    problems: gr.Markdown
    summary: gr.JSON
    runs: gr.State
    adapter: gr.Dropdown
    adapter_file: gr.DownloadButton  # the picked adapter, zipped
    adapter_upload: gr.UploadButton
    adapter_note: gr.Markdown
    vectors: gr.Dropdown
    refresh: gr.Button
    questions: gr.Textbox
    layer: gr.Dropdown
    max_new_tokens: gr.Slider
    predict: gr.Checkbox
    measure: gr.Button
    shift_status: gr.Markdown
    shift_plot: gr.Plot
    answers: gr.Dataframe
    shift_summary: gr.JSON
    shift_file_json: gr.DownloadButton
    shift_file_csv: gr.DownloadButton
    last_shift: gr.State  # the last measurement (a runs.Measured), for its files
    trained: Any = None  # the /train event
    measured: Any = None  # the /shift event
