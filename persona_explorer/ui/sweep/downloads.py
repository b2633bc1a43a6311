"""The Sweep tab's grid as download files, JSON and CSV (issue 26; the format is
:mod:`persona_explorer.ui.shared.downloads`).

One CSV line per cell, the baseline first (``kind=baseline``, layer empty, strength 0); the
JSON adds the whole result (every answer's text, the criteria, why this cell) under
``"result"``. The provenance: the model, the grid's layers, the vector swept (name, catalog
key, model) and every sweep setting (the read-out layer, tokens, positions, decoding, criteria).

Imports: ``evaluate`` (the sweep's result), ``ui.shared`` (context, downloads) and this tab's
views (:class:`.views.SweepRun`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from persona_explorer.evaluate.sweep_result import Cell
from persona_explorer.ui.shared.context import AppContext, user_errors
from persona_explorer.ui.shared.downloads import provenance, write_pair
from persona_explorer.ui.sweep.views import SweepRun

__all__ = ["COLUMNS", "STEM", "sweep_downloads", "write_sweep"]

STEM = "persona-sweep-grid"
COLUMNS = (
    "kind",
    "layer",
    "strength",
    "trait",
    "projection",
    "perplexity",
    "coherence",
    "repetition",
    "worst_repetition",
    "judge",
    "recommended",
    "answers",
)


def _row(kind: str, cell: Cell, recommended: bool) -> list[Any]:
    return [
        kind,
        None if kind == "baseline" else cell.layer,
        cell.strength,
        cell.trait,
        cell.projection,
        cell.perplexity,
        cell.coherence,
        cell.repetition,
        cell.worst_repetition,
        cell.judge,
        recommended,
        len(cell.texts),
    ]


def write_sweep(ctx: AppContext, run: SweepRun) -> tuple[Path, Path]:
    """The kept sweep as ``persona-sweep-grid.json`` and ``.csv`` in a fresh export folder."""
    result = run.result
    cfg = result.config
    rec = result.recommended
    settings = {
        **dataclasses.asdict(cfg),
        "read_layer": result.read_layer,
        "prompts": list(result.prompts),
        "judge": result.judge,
        "stopped": result.stopped,
        "timed_out": run.timed_out,
    }
    prov = provenance(
        "sweep-grid",
        model_id=ctx.model.model_id,
        layers=cfg.layers,
        vectors=[{"name": run.vector.name, "key": run.key, "model_id": run.vector.model_id}],
        settings=settings,
    )
    rows = [_row("baseline", result.baseline, False)]
    rows += [_row("cell", c, c is rec) for c in result.grid]
    return write_pair(ctx.exports, STEM, prov, COLUMNS, rows, {"result": result.as_json()})


def sweep_downloads(ctx: AppContext, kept: object) -> tuple[str | None, str | None]:
    """The two download buttons' files for the sweep the tab keeps (none without one)."""
    with user_errors():
        if not isinstance(kept, SweepRun):
            return None, None
        json_path, csv_path = write_sweep(ctx, kept)
        return str(json_path), str(csv_path)
