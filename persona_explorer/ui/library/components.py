"""The Library tab's widgets: :class:`LibraryTab`, filled by :func:`.tab.build` and read by the
handlers (:mod:`.tab`'s and :mod:`.axis`'s), which never import the layout.

Imports: gradio only.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

__all__ = ["LibraryTab"]


@dataclass
class LibraryTab:
    state: gr.State
    table: gr.Dataframe
    selected: gr.Dropdown
    new_name: gr.Textbox
    rename: gr.Button
    delete: gr.Button
    confirm: gr.Button
    save: gr.Button
    fmt: gr.Radio
    export: gr.Button
    download: gr.DownloadButton
    upload: gr.File
    layout: gr.Radio
    status: gr.Markdown
    heat_pick: gr.CheckboxGroup
    heat_layer: gr.Slider
    heatmap: gr.Plot
    changed: list  # events after which the vector lists must be refreshed
    # The Assistant-Axis component (:mod:`.axis`): the selected vector's, the action that
    # copies it without, the heat map's switch and the picked vectors' table.
    axis_info: gr.Markdown | None = None
    remove_axis: gr.Button | None = None
    heat_remove: gr.Checkbox | None = None
    axis_table: gr.Dataframe | None = None
    axis_note: gr.Markdown | None = None  # the picked vectors' mean |cos| with and without
