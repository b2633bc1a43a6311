"""The Library tab and the Assistant Axis: how much of each vector lies along it, the vectors'
similarity without it, and a copy of the selected vector with it removed.

Why: persona vectors are measured against the default Assistant, so they may share one big
"not the Assistant" direction (the built-ins point away from the axis, and their pairwise
cosines are high). The math and the norm the copy keeps are :mod:`..vectors.axis_component`'s;
here it is only shown and saved. The axis is read only where it is already on disk (shipped or
cached): drawing a table never starts a minutes-long build; without one the views say so.

Imports: gradio, torch, ``axis`` (the axis on disk), ``plots``, ``steering.projection``,
``vectors``, ``ui.shared`` and this tab's :mod:`.components`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import gradio as gr
import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import check_layer
from persona_explorer.plots import cosine_heatmap_figure, empty_figure
from persona_explorer.steering.projection import cosine_matrix
from persona_explorer.ui.library.components import LibraryTab
from persona_explorer.ui.shared.catalog import CatalogView, VectorItem, add_to_session
from persona_explorer.ui.shared.context import AppContext, user_errors
from persona_explorer.ui.shared.markup import md
from persona_explorer.vectors.axis_component import (
    AxisComponent,
    component_at,
    is_axis_removed,
    mean_abs_cosine,
    orthogonalise,
    remove_axis_component,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

__all__ = [
    "AXIS_HEADERS",
    "axis_rows",
    "axis_views",
    "heatmap_figure",
    "remove_axis_copy",
    "selected_axis_line",
]

AXIS_HEADERS = ["Vector", "Layer", "cos with the axis", "Projection", "Share of |v|²"]
NO_AXIS = (
    "No Assistant Axis for this model yet, so no component along it: the **Persona space** tab "
    "builds it (a few minutes, once)."
)
ABOUT_AXIS = (
    "**Along the Assistant Axis**, at the heat map's layer: cos −1 points straight away from "
    "the default Assistant, +1 toward it; the projection is in the vector's own units; the share "
    "is the part of the vector's squared length that lies along the axis (cos²)."
)


def _fitting(view: CatalogView, keys: list[str]) -> list[VectorItem]:
    items = [view.by_key[k] for k in keys if k in view.by_key]  # deleted ones drop out
    return [i for i in items if i.info is not None and view.fits(i)]


def _labels(items: list[VectorItem]) -> list[str]:
    labels: list[str] = []
    for item in items:
        label, n = item.name, 1
        while label in labels:
            n += 1
            label = f"{item.name} ({item.where}{'' if n == 2 else f' {n - 1}'})"
        labels.append(label)
    return labels


def _fmt(c: AxisComponent) -> list:
    return [c.layer, round(c.cos, 3), round(c.projection, 3), f"{c.share:.0%}"]


def axis_rows(
    view: CatalogView, keys: list[str], layer: Any, axis: torch.Tensor | None
) -> list[list]:
    """One row per picked vector that fits the model: its component along ``axis`` at
    ``layer`` (a zero vector says so instead)."""
    if axis is None:
        return [[NO_AXIS.replace("**", ""), "", "", "", ""]]
    at = check_layer(layer, view.shape.n_layers)
    items = _fitting(view, keys)
    rows = []
    for label, item in zip(_labels(items), items, strict=True):
        try:
            rows.append([label, *_fmt(component_at(view.load(item), axis, at))])
        except InputError:
            rows.append([label, at, "—", "—", "zero vector"])
    return rows


def heatmap_figure(
    view: CatalogView, keys: list[str], layer: Any, without: torch.Tensor | None = None
) -> tuple[Any, str]:
    """The picked vectors' cosine heat map at ``layer`` (with ``without``, the axis
    [n_layers, d_model], after removing each vector's component along it) and a line with their
    mean |cos| with and without that component."""
    items = _fitting(view, keys)
    if len(items) < 2:
        return empty_figure("Pick at least two vectors to compare"), ""
    at = check_layer(layer, view.shape.n_layers)
    rows = torch.stack([view.load(i).vectors[at] for i in items])
    if without is None:
        return cosine_heatmap_figure(_labels(items), cosine_matrix(rows).tolist(), at), ""
    flat = orthogonalise(rows, without[at].expand_as(rows))
    figure = cosine_heatmap_figure(
        _labels(items),
        cosine_matrix(flat).tolist(),
        at,
        title=f"Cosine similarity without the Assistant-Axis component, layer {at}",
    )
    note = (
        f"Mean |cos| between these {len(items)} vectors at layer {at}: "
        f"**{mean_abs_cosine(rows):.2f}** as they are, **{mean_abs_cosine(flat):.2f}** without "
        "their Assistant-Axis component."
    )
    return figure, note


def axis_views(
    ctx: AppContext, tab: LibraryTab, keys: list[str], layer: Any, remove: Any, view: CatalogView
) -> dict:
    """The heat map (with or without the axis component), its note and the axis table."""
    if not isinstance(remove, bool):
        raise InputError("remove must be true or false.")
    axis = ctx.axis_if_ready()
    vectors = None if axis is None else axis.axis
    if remove and vectors is None:
        raise InputError(NO_AXIS.replace("**", ""))
    figure, note = heatmap_figure(view, keys, layer, vectors if remove else None)
    out: dict[Any, Any] = {tab.heatmap: figure}
    if tab.axis_table is not None:
        out[tab.axis_table] = axis_rows(view, keys, layer, vectors)
    if tab.axis_note is not None:
        out[tab.axis_note] = note
    return out


def selected_axis_line(ctx: AppContext, key: str | None, session: Mapping | None) -> str:
    """The selected vector's component along the axis at its recommended layer, in words (a
    problem with the vector is said in the line, not raised: selecting is not an action)."""
    if not key:
        return ""
    with user_errors():
        view = ctx.catalog.view(session)
        try:
            item = view.resolve(key)
            if not view.fits(item):
                return ""
            axis = ctx.axis_if_ready()
            if axis is None:
                return NO_AXIS
            vec = view.load(item)
            c = component_at(vec, axis.axis, ctx.default_layer(vec))
        except InputError as exc:
            return f"⚠️ {md(exc, 300)}"
        removed = " (its component was removed)" if is_axis_removed(vec) else ""
        return (
            f"**{md(vec.name)}** along the Assistant Axis at layer {c.layer}{removed}: "
            f"cos **{c.cos:+.2f}**, projection {c.projection:+.2f}, **{c.share:.0%}** of its "
            f"squared length. Without it, {c.remaining_norm / c.norm:.0%} of its length remains."
        )


def remove_axis_copy(
    ctx: AppContext, tab: LibraryTab, key: str | None, session: Mapping | None
) -> dict:
    """Add "<name> (axis removed)" to this session's vectors and select it; "Save to library"
    then keeps it (the library's atomic save, with its quotas and owner)."""
    with user_errors():
        view = ctx.catalog.view(session)
        item, vec = view.resolve_fitting(key)
        axis = ctx.axis_if_ready()
        if axis is None:
            raise InputError(NO_AXIS.replace("**", ""))
        layer = ctx.default_layer(vec)
        copy = remove_axis_component(vec, axis.axis, layer=layer, axis_model_id=axis.model_id)
        new_session, new_key = add_to_session(
            session, copy, ctx.settings.limits.max_session_vectors
        )
        removed = copy.metadata["derived"]["removed"]
        keep = (
            "Download it to keep it." if ctx.library.read_only else "**Save to library** keeps it."
        )
        return {
            tab.state: new_session,
            tab.selected: gr.update(
                choices=ctx.catalog.view(new_session).item_choices(), value=new_key
            ),
            tab.status: (
                f"Added **{md(copy.name)}** to this session's vectors: {md(item.name)} without "
                f"its Assistant-Axis component at every layer (at layer {layer} that was cos "
                f"{removed['cos']:+.2f}, {removed['share']:.0%} of its squared length). Same "
                "layer and strength, so it pushes by the rest of the original push. " + keep
            ),
        }
