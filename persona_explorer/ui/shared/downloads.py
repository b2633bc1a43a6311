"""A tab's numbers as a pair of download files, JSON and CSV, that say how they were made
(issue 26): the Sweep grid, the Drift series, the Persona space coordinates.

Every file records its **provenance**, so that a figure made from it can be traced back to its
run: the app's version, the model, the layer(s), the vector(s) and the settings.

JSON (:func:`record`)
---------------------
One object::

    {"format": "persona-explorer-download", "version": 1, "kind": str,
     "app_version": str, "created": "2025-01-01T12:00:00Z",
     "model_id": str, "layers": [int, ...], "vectors": [{"name", ...}, ...],
     "settings": {...}, "columns": [str, ...], "rows": [[...], ...], ...the tab's own keys}

``rows`` are the CSV's rows (same columns, the CSV's provenance columns left out); a tab adds
the fuller data it has under keys of its own (e.g. the sweep's whole result). A non-finite
number is written as ``null``, so the file is always strict JSON.

CSV (:func:`table_csv`)
-----------------------
A header, then one line per row, ``\\n`` line ends; the tab's columns first, then the
provenance columns :data:`PROVENANCE_COLUMNS` (the same on every line: any line copied out of
the file still says where it came from). ``layers``, ``vectors`` and ``settings`` cells are
compact JSON. Numbers are written as numbers (a non-finite one or ``None`` as an empty cell),
booleans as ``true``/``false``. A text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return gets a leading ``'`` so that a spreadsheet shows it as text instead of running
it as a formula (CSV injection), as :mod:`persona_explorer.evaluate.run_export` does.

Files are written by :func:`write_pair` into a fresh folder of the app's capped export area
(:class:`.context.Exports`: pruned by age and count); their names are fixed by the code (the
``stem``), never taken from the visitor.

Imports: the standard library, ``core`` (config, fileio), ``evaluate.run_export`` (JSON-ready
values and safe CSV text cells, written once) and :mod:`.context` for types only.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_explorer.core.config import app_version
from persona_explorer.core.fileio import atomic_write
from persona_explorer.evaluate.run_export import plain, text_cell

if TYPE_CHECKING:
    from persona_explorer.ui.shared.context import Exports

__all__ = [
    "FORMAT",
    "PROVENANCE_COLUMNS",
    "VERSION",
    "provenance",
    "record",
    "table_csv",
    "write_pair",
]

FORMAT = "persona-explorer-download"
VERSION = 1
PROVENANCE_COLUMNS = ("model_id", "app_version", "layers", "vectors", "settings", "created")
_STEM = re.compile(r"^[a-z0-9][a-z0-9-]{0,60}$")


def provenance(
    kind: str,
    *,
    model_id: str,
    layers: Sequence[int],
    vectors: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """What every download says about how it was made (JSON-ready)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "app_version": app_version(),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model_id": model_id,
        "layers": [int(x) for x in layers],
        "vectors": plain([dict(v) for v in vectors]),
        "settings": plain(dict(settings)),
    }


def record(
    prov: Mapping[str, Any],
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON file's object: the provenance, the table, and the tab's own ``extra`` keys."""
    out = {**prov, "columns": list(columns), "rows": [list(r) for r in rows]}
    for key, value in (extra or {}).items():
        out.setdefault(key, value)
    done: dict[str, Any] = plain(out)
    return done


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else ""
    return text_cell(str(value))


def _compact(value: Any) -> str:
    return json.dumps(plain(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def table_csv(
    prov: Mapping[str, Any], columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> str:
    """The table as CSV, every line ending in the provenance columns (module docstring)."""
    tail = [
        prov["model_id"],
        prov["app_version"],
        _compact(prov["layers"]),
        _compact(prov["vectors"]),
        _compact(prov["settings"]),
        prov["created"],
    ]
    tail_cells = [_cell(v) for v in tail]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*columns, *PROVENANCE_COLUMNS])
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"a row of {len(row)} cells for {len(columns)} columns")
        writer.writerow([*(_cell(v) for v in row), *tail_cells])
    return buf.getvalue()


def write_pair(
    exports: Exports,
    stem: str,
    prov: Mapping[str, Any],
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """``<stem>.json`` and ``<stem>.csv`` in a fresh export folder; returns both paths."""
    if not _STEM.match(stem):
        raise ValueError(f"not a download name: {stem!r}")
    json_text = json.dumps(
        record(prov, columns, rows, extra), ensure_ascii=False, allow_nan=False, indent=2
    )
    csv_text = table_csv(prov, columns, rows)
    folder = exports.fresh_folder()  # pruned with the other downloads (age and count)
    paths = (folder / f"{stem}.json", folder / f"{stem}.csv")
    for path, text in zip(paths, (json_text, csv_text), strict=True):
        atomic_write(path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
    return paths
