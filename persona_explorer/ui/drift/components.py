"""The Drift tab's widgets: :class:`DriftTab`, filled by :func:`.tab.build` and read by the
handlers (which never import the layout).

Imports: gradio only.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

__all__ = ["DriftTab"]


@dataclass
class DriftTab:
    plot_layer: gr.Slider
    projections: gr.Dropdown
    chatbot: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    stop_chat: gr.Button
    clear: gr.Button
    persona: gr.Dropdown
    layer: gr.Slider
    strength: gr.Slider
    cap: gr.Checkbox
    cap_percentile: gr.Slider
    cap_layers: gr.Textbox
    max_new_tokens: gr.Slider
    temperature: gr.Slider
    seed: gr.Number
    frequency_penalty: gr.Slider
    chat_plot: gr.Plot
    chat_status: gr.Markdown
    history: gr.JSON
    transcripts: gr.Dropdown
    upload: gr.File
    window: gr.Dropdown
    replay_cap: gr.Checkbox
    run_replay: gr.Button
    stop_replay: gr.Button
    replay_plot: gr.Plot
    replay_status: gr.Markdown
    replay_json: gr.JSON
    replays: gr.State
    # The series as files (issue 26): the chat's and the replays', JSON and CSV.
    chat_file_json: gr.DownloadButton
    chat_file_csv: gr.DownloadButton
    replay_file_json: gr.DownloadButton
    replay_file_csv: gr.DownloadButton
