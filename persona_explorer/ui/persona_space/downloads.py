"""The Persona space map's coordinates as download files, JSON and CSV (issue 26; the format is
:mod:`persona_explorer.ui.shared.downloads`).

One CSV line per thing on the map: ``kind`` ``assistant``, ``role``, ``prompt``/``answer`` (the
placed points, their text in ``text``) and ``arrow`` (a persona vector: ``pc1``-``pc3`` its end,
``start_pc*`` its start, with its cosine with the axis, the share of it in the PC1-PC2 plane
and its length). ``axis`` is the normalised place on the Assistant Axis (0 = the roles' mean,
1 = the default Assistant); each PC's sign puts the Assistant on its positive side. The JSON
adds the map's whole summary (the ``/persona_map`` coordinates) under ``"map"``.

The numbers are made again from what the tab keeps (the placed points are a ``gr.State``), for
the map the form shows: the same as the figure.

Imports: ``axis.persona_space`` (the map's math), ``core.limits``, ``ui.shared`` (context,
downloads) and this tab's handlers (the form and its checks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from persona_explorer.axis.persona_space import check_arrow_scale, map_summary, space_for
from persona_explorer.core.limits import check_layer
from persona_explorer.ui.persona_space.handlers import (
    PersonaMapForm,
    _placed,
    check_view,
    chosen_vectors,
)
from persona_explorer.ui.shared.context import AppContext, user_errors
from persona_explorer.ui.shared.downloads import provenance, write_pair

__all__ = ["COLUMNS", "STEM", "map_downloads", "write_map"]

STEM = "persona-space-map"
COLUMNS = (
    "kind",
    "name",
    "pc1",
    "pc2",
    "pc3",
    "axis",
    "start_pc1",
    "start_pc2",
    "start_pc3",
    "axis_cosine",
    "plane_share",
    "norm",
    "text",
)


def _three(values: Sequence[float] | None) -> list[float | None]:
    values = list(values or [])
    return [values[i] if i < len(values) else None for i in range(3)]


def map_rows(summary: Mapping[str, Any]) -> list[list[Any]]:
    """The CSV's rows from :func:`~persona_explorer.axis.persona_space.map_summary`'s dict."""
    none4 = [None, None, None, None, None, None]
    rows: list[list[Any]] = []
    a = summary["assistant"]
    rows.append(["assistant", "Assistant", *_three(a["coords"]), a["axis"], *none4, ""])
    for r in summary["roles"]:
        rows.append(["role", r["name"], *_three(r["coords"]), r["axis"], *none4, ""])
    for p in summary["points"]:
        name = "your prompt" if p["kind"] == "prompt" else "its answer"
        rows.append([p["kind"], name, *_three(p["coords"]), p["axis"], *none4, p["text"]])
    for arrow in summary["arrows"]:
        rows.append(
            [
                "arrow",
                arrow["name"],
                *_three(arrow["end"]),
                None,
                *_three(arrow["start"]),
                arrow["axis_cosine"],
                arrow["plane_share"],
                arrow["norm"],
                "",
            ]
        )
    return rows


def write_map(
    ctx: AppContext, form: PersonaMapForm, session: Mapping | None, placed: object
) -> tuple[Path, Path]:
    """The map ``form`` shows as ``persona-space-map.json`` and ``.csv``."""
    check_view(form.view)
    scale = check_arrow_scale(form.arrow_length)
    vectors = chosen_vectors(ctx, session, form.personas)
    data = ctx.axis()  # drawn already: the event that chains here built or read it
    space = space_for(data)
    m = space.layer(check_layer(form.layer, data.n_layers))
    arrows = [m.arrow(name, vec.vectors, scale) for name, vec in vectors]
    points = _placed(placed)
    summary = map_summary(space, m, points, arrows)
    settings: dict[str, Any] = {
        "layer": m.layer,
        "view": form.view,
        "arrow_length": scale,
        "roles": len(m.roles),
        "placed": None,
    }
    if points is not None:
        settings["placed"] = {
            "prompt": points.prompt,
            "answer": points.answer,
            "decoding": "greedy",
            # As the form holds them now: the values the answer was made with, unless changed.
            "system_prompt": form.system_prompt,
            "max_new_tokens": form.max_new_tokens,
        }
    prov = provenance(
        "persona-space",
        model_id=ctx.model.model_id,
        layers=[m.layer],
        vectors=[{"name": name, "model_id": vec.model_id} for name, vec in vectors],
        settings=settings,
    )
    return write_pair(ctx.exports, STEM, prov, COLUMNS, map_rows(summary), {"map": summary})


def map_downloads(
    ctx: AppContext, form: PersonaMapForm, session: Mapping | None, placed: object
) -> tuple[str, str]:
    """The two download buttons' files for the map on screen."""
    with user_errors():
        json_path, csv_path = write_map(ctx, form, session, placed)
        return str(json_path), str(csv_path)
