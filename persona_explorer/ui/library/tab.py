"""The Library tab: every vector with its metadata; upload, download, rename, delete; the
cosine similarity between vectors at one layer; and each vector's component along the Assistant
Axis, with a copy that leaves it out (:mod:`.axis`).

One status line says what the last action did; each action clears it first, and its errors are
toasts only. The actions on the selected vector are disabled while none is selected.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import gradio as gr

from persona_explorer.core.errors import InputError
from persona_explorer.core.names import clean_name
from persona_explorer.ui.library import axis as axis_view
from persona_explorer.ui.library.components import LibraryTab
from persona_explorer.ui.library.similarity import (
    builtin_axis_statement,
    builtin_similarity_figure,
    statements_markdown,
)
from persona_explorer.ui.shared import teaching
from persona_explorer.ui.shared.catalog import (
    CatalogView,
    add_to_session,
    fmt_strength,
    model_label,
    source_label,
)
from persona_explorer.ui.shared.context import AppContext, check_owner, user_errors
from persona_explorer.ui.shared.markup import md, plain
from persona_explorer.ui.shared.uploads import discard
from persona_explorer.vectors.files import FORMATS, load
from persona_explorer.vectors.persona_vector import PersonaVector

log = logging.getLogger(__name__)

TABLE_HEADERS = [
    "Name", "Where", "Model", "Variant", "Layer", "Strength", "Created", "Source", "Fits",
]  # fmt: skip
LAYOUT_CHOICES = [
    ("Auto-detect", "auto"),
    ("persona_vectors", "persona_vectors"),
    ("assistant-axis", "assistant_axis"),
]
FORMAT_CHOICES = [(f.label, key) for key, f in FORMATS.items()]
UPLOAD_TYPES = [".safetensors", ".pt", ".pth", ".gguf"]
MAX_HEATMAP_DEFAULT = 12


# --------------------------------------------------------------------------- pure helpers


def _created(vec: PersonaVector) -> str:
    raw = str(vec.metadata.get("created") or vec.metadata.get("saved") or "")
    return raw.replace("T", " ")[:16] if raw else "—"


def table_rows(view: CatalogView) -> list[list]:
    rows = []
    for item in view.items:
        vec = item.info
        if vec is None:
            rows.append([item.name, item.where, "—", "—", "—", "—", "—", "—", "✗ unreadable"])
            continue
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
                "✓" if view.fits(item) else "✗ other model",
            ]
        )
    return rows


NO_DOWNLOAD = gr.update(value=None, label="Download", interactive=False)
# Runs in the browser before an action's handler: a message from the previous action must not
# pass for this one's.
CLEAR_STATUS_JS = "() => ''"


def heatmap_keys(keys: Any, limit: int) -> list[str]:
    """The requested keys, deduplicated, at most ``limit`` (a script may send thousands)."""
    if keys is None:
        return []
    if not isinstance(keys, (list, tuple)) or len(keys) > 10 * limit:
        raise InputError(f"Pick at most {limit} vectors to compare.")
    unique = list(dict.fromkeys(k for k in keys if isinstance(k, str)))
    if len(unique) > limit:
        raise InputError(f"Pick at most {limit} vectors to compare (got {len(unique)}).")
    return unique


def builtin_relations(ctx: AppContext) -> None:
    """The built-ins' cosine heat map and what it says, in plain sentences (computed once)."""
    try:
        figure, statements = builtin_similarity_figure(ctx.settings.builtin_vectors_dir)
    except (ValueError, OSError) as exc:  # built-ins of several shapes, or none readable
        log.warning("no built-in similarity panel: %s", exc)
        return
    sentences = statements_markdown(statements) or "Fewer than two built-in vectors."
    axis = ctx.axis_if_ready()
    if axis is not None and statements:
        try:
            sentences += "\n" + builtin_axis_statement(ctx.settings.builtin_vectors_dir, axis.axis)
        except (ValueError, OSError) as exc:  # InputError too: an axis of another shape
            log.warning("no built-in axis statement: %s", exc)
    with gr.Accordion("How the built-in personas relate", open=False, elem_id="pe-relations"):
        gr.Markdown(sentences)
        gr.Plot(figure, label="Cosine similarity of the built-ins", show_label=False)


# --------------------------------------------------------------------------- the tab


def build(ctx: AppContext, state: gr.State, owner: gr.BrowserState) -> LibraryTab:
    n_layers = ctx.model.n_layers
    view = ctx.catalog.view(None)
    heat = view.fitting_choices()
    heat_default = [k for _, k in heat][:MAX_HEATMAP_DEFAULT]

    teaching.panel(teaching.LIBRARY)
    builtin_relations(ctx)
    table = gr.Dataframe(
        table_rows(view),
        headers=TABLE_HEADERS,
        interactive=False,
        wrap=True,
        max_height=420,
        label="Vectors",
        column_widths=["14%", "9%", "17%", "9%", "6%", "8%", "13%", "15%", "9%"],
        elem_id="pe-library-table",
        elem_classes="pe-table",
    )
    status = gr.Markdown(elem_id="pe-library-status", label="Library status")
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=300):
            gr.Markdown("#### Selected vector")
            selected = gr.Dropdown(
                view.item_choices(),
                value=None,
                label="Vector",
                filterable=True,
                elem_id="pe-library-selected",
            )
            with gr.Row():
                new_name = gr.Textbox(
                    label="New name", placeholder="e.g. pirate-strong", scale=3,
                    elem_id="pe-new-name",
                )  # fmt: skip
                rename = gr.Button("Rename", scale=1, interactive=False, elem_id="pe-rename")
            axis_info = gr.Markdown(elem_id="pe-library-axis-info")
            remove_axis = gr.Button(
                "Copy without its Assistant-Axis component",
                interactive=False,
                elem_id="pe-remove-axis",
            )
            with gr.Row():
                # Hidden on a public server (the handler refuses there too: a script may call it).
                save = gr.Button(
                    "Save to library",
                    visible=not ctx.library.read_only,
                    interactive=False,
                    elem_id="pe-library-save",
                )
                delete = gr.Button("Delete", interactive=False, elem_id="pe-delete")
                confirm = gr.Button(
                    "Confirm delete", variant="stop", visible=False, elem_id="pe-confirm-delete"
                )
            fmt = gr.Radio(FORMAT_CHOICES, value="safetensors", label="Download format")
            with gr.Row():
                export = gr.Button(
                    "Prepare download", interactive=False, elem_id="pe-library-export"
                )
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
            heat_remove = gr.Checkbox(
                False,
                label="Remove the Assistant-Axis component",
                info="Compare what is left of each vector once its part along the Assistant "
                "Axis (toward or away from the default Assistant) is taken out.",
                elem_id="pe-heat-remove-axis",
            )
        with gr.Column(scale=8, min_width=420):
            heatmap = gr.Plot(
                axis_view.heatmap_figure(view, heat_default, (2 * n_layers) // 3)[0],
                show_label=False,
                elem_id="pe-heatmap",
            )
            axis_note = gr.Markdown(elem_id="pe-heat-axis-note")
    axis = ctx.axis_if_ready()
    gr.Markdown(axis_view.ABOUT_AXIS if axis is not None else axis_view.NO_AXIS)
    axis_table = gr.Dataframe(
        axis_view.axis_rows(
            view, heat_default, (2 * n_layers) // 3, None if axis is None else axis.axis
        ),
        headers=axis_view.AXIS_HEADERS,
        interactive=False,
        wrap=True,
        label="Along the Assistant Axis",
        elem_id="pe-library-axis",
        elem_classes="pe-table",
    )

    tab = LibraryTab(
        state=state, table=table, selected=selected, new_name=new_name, rename=rename,
        delete=delete, confirm=confirm, save=save, fmt=fmt, export=export, download=download,
        upload=upload, layout=layout, status=status, heat_pick=heat_pick, heat_layer=heat_layer,
        heatmap=heatmap, changed=[], axis_info=axis_info, remove_axis=remove_axis,
        heat_remove=heat_remove, axis_table=axis_table, axis_note=axis_note,
    )  # fmt: skip
    private: dict[str, Any] = {"api_visibility": "private"}
    # A failed handler marks its outputs with Gradio's error badge unless progress is hidden;
    # the toast already says what went wrong, and these actions are quick.
    quiet: dict[str, Any] = {"show_progress": "hidden"}

    def cleared(trigger: Any) -> Any:
        """``trigger``, after which the status line is blanked in the browser."""
        return trigger(None, None, status, js=CLEAR_STATUS_JS, **private)

    def upload_vector(file: str | None, layout: str, session: dict | None) -> dict:
        """Add a vector file (.safetensors, .pt, .gguf) to this session's vectors."""
        return add_upload(ctx, tab, file, layout, session)

    uploaded = cleared(upload.upload).then(
        upload_vector, [upload, layout, state], [state, selected, status],
        api_name="upload_vector", **quiet,
    )  # fmt: skip
    renamed = cleared(rename.click).then(
        lambda key, name, session, token: rename_vector(ctx, tab, key, name, session, token),
        [selected, new_name, state, owner], [state, selected, new_name, status],
        **private, **quiet,
    )  # fmt: skip
    # Deleting takes two clicks: "Delete" arms "Confirm delete", any new selection disarms it.
    delete.click(lambda: gr.update(visible=True), None, confirm, queue=False, **private)
    deleted = cleared(confirm.click).then(
        lambda key, session, token: delete_vector(ctx, tab, key, session, token),
        [selected, state, owner], [state, selected, status, *selection_outputs(tab)],
        **private, **quiet,
    )  # fmt: skip
    saved = cleared(save.click).then(
        lambda key, session, token: save_vector(ctx, tab, key, session, token),
        [selected, state, owner], [state, selected, status], **private, **quiet,
    )  # fmt: skip
    flattened = cleared(remove_axis.click).then(
        lambda key, session: axis_view.remove_axis_copy(ctx, tab, key, session),
        [selected, state], [state, selected, status], **private, **quiet,
    )  # fmt: skip
    # A refused delete disarms too: another try must be asked for again.
    deleted.failure(lambda: gr.update(visible=False), None, confirm, queue=False, **private)
    tab.changed = [uploaded, renamed, deleted, saved, flattened]
    # Any selection (by a click, a handler or a list refresh) sets which actions apply; a new
    # choice also withdraws a download file written for the previous one.
    selected.change(
        lambda key: selection_updates(tab, key), selected, selection_outputs(tab), queue=False,
        **private, **quiet,
    )  # fmt: skip
    fmt.change(lambda: NO_DOWNLOAD, None, download, queue=False, **private)
    cleared(export.click).then(
        lambda key, fmt, session: prepare_download(ctx, key, fmt, session),
        [selected, fmt, state], download, **private, **quiet,
    )  # fmt: skip
    selected.change(
        lambda key, session: axis_view.selected_axis_line(ctx, key, session),
        [selected, state], axis_info, **private, **quiet,
    )  # fmt: skip
    gr.on(
        [heat_pick.change, heat_layer.change, heat_remove.change],
        lambda keys, layer, remove, session: draw_heatmap(ctx, tab, keys, layer, remove, session),
        [heat_pick, heat_layer, heat_remove, state], [heatmap, axis_note, axis_table],
        **private, **quiet,
    )  # fmt: skip

    def on_select(evt: gr.SelectData, session: dict | None) -> Any:
        return select_row(ctx, evt, session)

    table.select(on_select, [state], selected, **private)
    return tab


# --------------------------------------------------------------------------- handlers


def selection_outputs(tab: LibraryTab) -> list[gr.Button | gr.DownloadButton]:
    buttons = [tab.rename, tab.save, tab.delete, tab.confirm, tab.export, tab.download]
    return buttons + ([tab.remove_axis] if tab.remove_axis is not None else [])


def selection_updates(tab: LibraryTab, key: str | None) -> dict:
    """The actions on the selected vector: enabled once one is selected, disarmed "Confirm
    delete", and no download file of another vector."""
    chosen = bool(key)
    extra = {tab.remove_axis: gr.update(interactive=chosen)} if tab.remove_axis is not None else {}
    return extra | {
        tab.rename: gr.update(interactive=chosen),
        tab.save: gr.update(interactive=chosen),
        tab.delete: gr.update(interactive=chosen),
        tab.confirm: gr.update(visible=False),
        tab.export: gr.update(interactive=chosen),
        tab.download: NO_DOWNLOAD,
    }


def add_upload(
    ctx: AppContext, tab: LibraryTab, file: str | None, layout: str, session: Mapping | None
) -> dict:
    if not file:
        return {tab.status: ""}
    try:
        return _add_upload(ctx, tab, file, layout, session)
    finally:
        discard(file)  # read into the session (or refused): the file is not needed again


def _add_upload(
    ctx: AppContext, tab: LibraryTab, file: str, layout: str, session: Mapping | None
) -> dict:
    with user_errors():
        path = ctx.check_upload(file)
        if layout not in ("auto", "persona_vectors", "assistant_axis"):
            raise InputError("layout must be auto, persona_vectors or assistant_axis.")
        suffix = path.suffix.lower()
        is_pt = suffix in (".pt", ".pth")
        n_layers = ctx.model.n_layers
        vec = load(
            path,
            layout=None if layout == "auto" or not is_pt else layout,  # type: ignore[arg-type]
            # The model's layer count picks a .pt layout and sizes a GGUF (which does not
            # store it); a .safetensors file for another model is still accepted: it is
            # listed, but refused for steering.
            n_layers=n_layers if (is_pt and layout == "auto") or suffix == ".gguf" else None,
        )
        new_session, key = add_to_session(session, vec, ctx.settings.limits.max_session_vectors)
        view = ctx.catalog.view(new_session)
        problem = view.fit_problem(key)
        note = f" It cannot steer this model: {md(problem, 400)}" if problem else ""
        return {
            tab.state: new_session,
            tab.selected: gr.update(choices=view.item_choices(), value=key),
            tab.status: f"Added **{md(vec.name)}** to this session's vectors.{note}",
        }


def rename_vector(
    ctx: AppContext,
    tab: LibraryTab,
    key: str,
    name: str,
    session: Mapping | None,
    owner: object,
) -> dict:
    with user_errors():
        item = ctx.catalog.view(session).resolve(key)
        if item.where == "built-in":
            raise InputError("Built-in vectors are read-only: save a copy to rename it.")
        if item.where == "library":
            entry = ctx.library.rename(item.key.split(":", 1)[1], name, owner=check_owner(owner))
            new_key, new_session = f"library:{entry.id}", dict(session or {})
        else:
            new_session = {k: v for k, v in (session or {}).items() if k != item.key}
            renamed = item.vector.with_(name=clean_name(name))  # type: ignore[union-attr]
            new_session, new_key = add_to_session(
                new_session, renamed, ctx.settings.limits.max_session_vectors
            )
        return {
            tab.state: new_session,
            tab.selected: gr.update(
                choices=ctx.catalog.view(new_session).item_choices(), value=new_key
            ),
            tab.new_name: "",
            tab.status: f"Renamed **{md(item.name)}** to **{md(name)}**.",
        }


def delete_vector(
    ctx: AppContext, tab: LibraryTab, key: str, session: Mapping | None, owner: object
) -> dict:
    with user_errors():
        item = ctx.catalog.view(session).find(key)
        if item.where == "built-in":
            raise InputError("Built-in vectors cannot be deleted.")
        new_session = dict(session or {})
        if item.where == "library":
            ctx.library.delete(item.key.split(":", 1)[1], owner=check_owner(owner))
        else:
            new_session.pop(item.key, None)
        # Nothing is selected next: a vector moved up into the freed place would take the
        # clicks meant for the deleted one.
        return {
            tab.state: new_session,
            tab.selected: gr.update(
                choices=ctx.catalog.view(new_session).item_choices(), value=None
            ),
            tab.status: f"Deleted **{md(item.name)}**.",
            **selection_updates(tab, None),
        }


def save_vector(
    ctx: AppContext, tab: LibraryTab, key: str, session: Mapping | None, owner: object
) -> dict:
    with user_errors():
        view = ctx.catalog.view(session)
        item = view.resolve(key)
        if item.where == "library":
            raise InputError("That vector is already in the library.")
        entry = ctx.save_to_library(view.load(item), owner)
        # The saved copy replaces a session one: listed twice, they would look like two vectors.
        new_session = {k: v for k, v in (session or {}).items() if k != item.key}
        return {
            tab.state: new_session,
            tab.selected: gr.update(
                choices=ctx.catalog.view(new_session).item_choices(),
                value=f"library:{entry.id}",
            ),
            tab.status: f"Saved **{md(entry.name)}** to the library ({md(entry.path.name)}).",
        }


def prepare_download(ctx: AppContext, key: str | None, fmt: str, session: Mapping | None) -> Any:
    """Write the selected vector in ``fmt`` and offer it; the label says what the format lost."""
    with user_errors():
        if not key:
            return NO_DOWNLOAD
        view = ctx.catalog.view(session)
        path, notes = ctx.exports.write(view.load(view.resolve(key)), fmt)
        lost = " (without layer 0)" if any("layer 0" in n for n in notes) else ""
        for note in notes:
            gr.Info(plain(note, 400))
        return gr.update(value=str(path), label=f"Download {path.name}{lost}", interactive=True)


def draw_heatmap(
    ctx: AppContext,
    tab: LibraryTab,
    keys: list[str],
    layer: float,
    remove: bool,
    session: Mapping | None,
) -> dict:
    """The heat map of the picked vectors (with or without their Assistant-Axis component)
    and their components along the axis."""
    with user_errors():
        limit = ctx.settings.limits.max_heatmap_vectors
        picked = heatmap_keys(keys, limit)
        return axis_view.axis_views(ctx, tab, picked, layer, remove, ctx.catalog.view(session))


def select_row(ctx: AppContext, evt: gr.SelectData, session: Mapping | None) -> Any:
    """The table row a user clicked becomes the selected vector (rows follow the catalog)."""
    items = ctx.catalog.view(session).items
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    if isinstance(row, int) and 0 <= row < len(items):
        return gr.update(value=items[row].key)
    return gr.update()
