"""The Library tab: every vector with its metadata; upload, download, rename, delete; and the
cosine similarity between vectors at one layer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr
import torch

from ..library import clean_name
from ..plots import cosine_heatmap_figure, empty_figure
from ..projection import cosine_matrix
from ..vectors import PersonaVector, load
from . import teaching
from .common import (
    EXPORT_FORMATS,
    AppContext,
    InputError,
    VectorItem,
    add_to_session,
    fmt_strength,
    model_label,
    source_label,
    user_errors,
)

TABLE_HEADERS = [
    "Name", "Where", "Model", "Variant", "Layer", "Strength", "Created", "Source", "Fits",
]  # fmt: skip
LAYOUT_CHOICES = [
    ("Auto-detect", "auto"),
    ("persona_vectors", "persona_vectors"),
    ("assistant-axis", "assistant_axis"),
]
FORMAT_CHOICES = [(label, key) for key, (label, _, _) in EXPORT_FORMATS.items()]
UPLOAD_TYPES = [".safetensors", ".pt", ".pth", ".gguf"]
MAX_HEATMAP_DEFAULT = 12


@dataclass
class LibraryTab:
    table: gr.Dataframe
    selected: gr.Dropdown
    new_name: gr.Textbox
    rename: gr.Button
    delete: gr.Button
    save: gr.Button
    fmt: gr.Radio
    download: gr.DownloadButton
    upload: gr.File
    layout: gr.Radio
    status: gr.Markdown
    heat_pick: gr.CheckboxGroup
    heat_layer: gr.Slider
    heatmap: gr.Plot
    changed: list  # events after which the vector lists must be refreshed


# --------------------------------------------------------------------------- pure helpers


def _created(vec: PersonaVector) -> str:
    raw = str(vec.metadata.get("created") or vec.metadata.get("saved") or "")
    return raw.replace("T", " ")[:16] if raw else "—"


def table_rows(ctx: AppContext, session: Mapping[str, PersonaVector] | None) -> list[list]:
    rows = []
    for item in ctx.items(session):
        vec = item.vector
        if vec is None:
            rows.append([item.name, item.where, "—", "—", "—", "—", "—", "—", "✗ unreadable"])
            continue
        problem = ctx.fit_problem(vec)
        rows.append(
            [
                vec.name,
                item.where,
                model_label(vec.model_id),
                vec.variant,
                "—" if vec.layer is None else vec.layer,
                fmt_strength(vec.strength),
                _created(vec),
                source_label(vec),
                "✓" if problem is None else "✗ other model",
            ]
        )
    return rows


def item_choices(ctx: AppContext, session: Mapping[str, PersonaVector] | None) -> list:
    return [(f"{i.name} · {i.where}", i.key) for i in ctx.items(session) if i.vector is not None]


def heatmap_choices(ctx: AppContext, session: Mapping[str, PersonaVector] | None) -> list:
    return [
        (f"{i.name} · {i.where}", i.key)
        for i in ctx.items(session)
        if i.vector is not None and ctx.fit_problem(i.vector) is None
    ]


def download_update(
    ctx: AppContext, key: str | None, fmt: str, session: Mapping | None
) -> dict[str, Any]:
    """The download button's new state: the selected vector written in ``fmt``."""
    if not key:
        return gr.update(value=None, label="Download", interactive=False)
    item = ctx.resolve(key, session)
    path = ctx.export(item.vector, fmt)  # type: ignore[arg-type]
    return gr.update(value=str(path), label=f"Download {path.name}", interactive=True)


def _unique_labels(items: list[VectorItem]) -> list[str]:
    labels: list[str] = []
    for item in items:
        label, n = item.name, 1
        while label in labels:
            n += 1
            label = f"{item.name} ({item.where}{'' if n == 2 else f' {n - 1}'})"
        labels.append(label)
    return labels


def heatmap_figure(
    ctx: AppContext, keys: list[str] | None, layer: Any, session: Mapping | None
) -> Any:
    items = []
    for key in keys or []:
        try:
            item = ctx.resolve(key, session)
        except InputError:
            continue  # deleted meanwhile
        if ctx.fit_problem(item.vector) is None:  # type: ignore[arg-type]
            items.append(item)
    if len(items) < 2:
        return empty_figure("Pick at least two vectors to compare")
    at = ctx.check_layer(layer)
    rows = torch.stack([i.vector.vectors[at] for i in items])  # type: ignore[union-attr]
    return cosine_heatmap_figure(_unique_labels(items), cosine_matrix(rows).tolist(), at)


# --------------------------------------------------------------------------- the tab


def build(ctx: AppContext, state: gr.State) -> LibraryTab:
    n_layers = ctx.model.n_layers
    heat = heatmap_choices(ctx, None)
    heat_default = [k for _, k in heat][:MAX_HEATMAP_DEFAULT]

    teaching.panel(teaching.LIBRARY)
    table = gr.Dataframe(
        table_rows(ctx, None),
        headers=TABLE_HEADERS,
        interactive=False,
        wrap=True,
        max_height=420,
        label="Vectors",
        column_widths=["14%", "9%", "17%", "9%", "6%", "8%", "13%", "15%", "9%"],
        elem_id="pe-library-table",
        elem_classes="pe-table",
    )
    status = gr.Markdown(elem_id="pe-library-status")
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=300):
            gr.Markdown("#### Selected vector")
            first = item_choices(ctx, None)
            selected = gr.Dropdown(
                first,
                value=first[0][1] if first else None,
                label="Vector",
                filterable=True,
                elem_id="pe-library-selected",
            )
            with gr.Row():
                new_name = gr.Textbox(
                    label="New name", placeholder="e.g. pirate-strong", scale=3,
                    elem_id="pe-new-name",
                )  # fmt: skip
                rename = gr.Button("Rename", scale=1, elem_id="pe-rename")
            with gr.Row():
                save = gr.Button("Save to library", elem_id="pe-library-save")
                delete = gr.Button("Delete", elem_id="pe-delete")
                confirm = gr.Button(
                    "Confirm delete", variant="stop", visible=False, elem_id="pe-confirm-delete"
                )
            fmt = gr.Radio(FORMAT_CHOICES, value="safetensors", label="Download format")
            download = gr.DownloadButton(
                "Download", interactive=False, elem_id="pe-library-download"
            )
        with gr.Column(scale=4, min_width=280):
            gr.Markdown("#### Upload a vector")
            layout = gr.Radio(LAYOUT_CHOICES, value="auto", label=".pt layout", elem_id="pe-layout")
            upload = gr.File(
                label=".safetensors, .pt or .gguf",
                file_types=UPLOAD_TYPES,
                file_count="single",
                type="filepath",
                height=140,
                elem_id="pe-upload",
            )
    gr.Markdown("#### How similar are they?")
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=280):
            heat_pick = gr.CheckboxGroup(
                heat, value=heat_default, label="Vectors", elem_id="pe-heat-pick"
            )
            heat_layer = gr.Slider(
                0, n_layers - 1, value=(2 * n_layers) // 3, step=1, label="Layer",
                elem_id="pe-heat-layer",
            )  # fmt: skip
        with gr.Column(scale=8, min_width=420):
            heatmap = gr.Plot(
                heatmap_figure(ctx, heat_default, (2 * n_layers) // 3, None),
                show_label=False,
                elem_id="pe-heatmap",
            )

    # ---------------------------------------------------------------- handlers

    def upload_vector(file: str | None, layout: str, session: dict | None) -> dict:
        """Add a vector file (.safetensors, .pt, .gguf) to this session's vectors."""
        if not file:
            return {status: ""}
        with user_errors():
            path = ctx.check_upload(file)
            if layout not in ("auto", "persona_vectors", "assistant_axis"):
                raise InputError("layout must be auto, persona_vectors or assistant_axis.")
            suffix = path.suffix.lower()
            is_pt = suffix in (".pt", ".pth")
            vec = load(
                path,
                layout=None if layout == "auto" or not is_pt else layout,  # type: ignore[arg-type]
                # The model's layer count picks a .pt layout and sizes a GGUF (which does not
                # store it); a .safetensors file for another model is still accepted: it is
                # listed, but refused for steering.
                n_layers=n_layers if (is_pt and layout == "auto") or suffix == ".gguf" else None,
            )
            new_session, key = add_to_session(session, vec)
            problem = ctx.fit_problem(vec)
            note = f" It cannot steer this model: {problem}" if problem else ""
            return {
                state: new_session,
                selected: gr.update(choices=item_choices(ctx, new_session), value=key),
                status: f"Added **{vec.name}** to this session's vectors.{note}",
            }

    def rename_vector(key: str, name: str, session: dict | None) -> dict:
        with user_errors():
            item = ctx.resolve(key, session)
            if item.where == "built-in":
                raise InputError("Built-in vectors are read-only: save a copy to rename it.")
            if item.where == "library":
                entry = ctx.library.rename(item.key.split(":", 1)[1], name)
                new_key, new_session = f"library:{entry.id}", session
            else:
                new_session = {k: v for k, v in (session or {}).items() if k != item.key}
                renamed = item.vector.with_(name=clean_name(name))  # type: ignore[union-attr]
                new_session, new_key = add_to_session(new_session, renamed)
            return {
                state: new_session,
                selected: gr.update(choices=item_choices(ctx, new_session), value=new_key),
                new_name: "",
                status: f"Renamed **{item.name}** to **{name.strip()}**.",
            }

    def delete_vector(key: str, session: dict | None) -> dict:
        with user_errors():
            item = ctx.resolve(key, session)
            if item.where == "built-in":
                raise InputError("Built-in vectors cannot be deleted.")
            new_session = session
            if item.where == "library":
                ctx.library.delete(item.key.split(":", 1)[1])
            else:
                new_session = {k: v for k, v in (session or {}).items() if k != item.key}
            return {
                state: new_session,
                selected: gr.update(choices=item_choices(ctx, new_session), value=None),
                status: f"Deleted **{item.name}**.",
            }

    def save_vector(key: str, session: dict | None) -> dict:
        with user_errors():
            item = ctx.resolve(key, session)
            if item.where == "library":
                raise InputError(f"{item.name!r} is already in the library.")
            entry = ctx.library.save(item.vector)  # type: ignore[arg-type]
            return {
                selected: gr.update(
                    choices=item_choices(ctx, session), value=f"library:{entry.id}"
                ),
                status: f"Saved **{entry.name}** to the library ({entry.path.name}).",
            }

    def prepare_download(key: str | None, fmt: str, session: dict | None) -> Any:
        with user_errors():
            return download_update(ctx, key, fmt, session)

    def draw_heatmap(keys: list[str], layer: float, session: dict | None) -> Any:
        with user_errors():
            return heatmap_figure(ctx, keys, layer, session)

    def select_row(evt: gr.SelectData, session: dict | None) -> Any:
        items = [i for i in ctx.items(session)]
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if isinstance(row, int) and 0 <= row < len(items) and items[row].vector is not None:
            return gr.update(value=items[row].key)
        return gr.update()

    private: dict[str, Any] = {"api_visibility": "private"}
    uploaded = upload.upload(
        upload_vector,
        [upload, layout, state],
        [state, selected, status],
        api_name="upload_vector",
    )
    renamed = rename.click(
        rename_vector, [selected, new_name, state], [state, selected, new_name, status],
        **private,
    )  # fmt: skip
    # Deleting takes two clicks: "Delete" arms "Confirm delete", any new selection disarms it.
    delete.click(lambda: gr.update(visible=True), None, confirm, queue=False, **private)
    selected.change(lambda: gr.update(visible=False), None, confirm, queue=False, **private)
    deleted = confirm.click(
        delete_vector, [selected, state], [state, selected, status], **private
    ).then(lambda: gr.update(visible=False), None, confirm, queue=False, **private)
    saved = save.click(save_vector, [selected, state], [selected, status], **private)
    gr.on(
        [selected.change, fmt.change],
        prepare_download,
        [selected, fmt, state],
        download,
        **private,
    )
    gr.on(
        [heat_pick.change, heat_layer.change],
        draw_heatmap,
        [heat_pick, heat_layer, state],
        heatmap,
        **private,
    )
    table.select(select_row, [state], selected, **private)
    return LibraryTab(
        table=table,
        selected=selected,
        new_name=new_name,
        rename=rename,
        delete=delete,
        save=save,
        fmt=fmt,
        download=download,
        upload=upload,
        layout=layout,
        status=status,
        heat_pick=heat_pick,
        heat_layer=heat_layer,
        heatmap=heatmap,
        changed=[uploaded, renamed, deleted, saved],
    )
