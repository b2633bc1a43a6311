"""A side-by-side run (:class:`.compare.SteerOutput`) as a JSON record and as a CSV table.

Pure: the standard library only, reading the output dataclasses' fields.

JSON (:func:`run_record`, :func:`run_json`)
--------------------------------------------
One object::

    {"format": "persona-explorer-run", "version": 1,
     "prompt": str, "system": str | null,
     "settings": {"model_id", "positions", "readout_layer", "layers", "strengths",
                  "vectors": [{"name", "model_id"}, ...], "sampling": {...}, ...},
     "stopped": bool,
     "timing": {"seconds", "new_tokens", "tokens_per_second", "decoder"},
     "rows": [{"index", "kind", "label", "vector_name", "vector_model_id", "strength",
               "layers", "readout_layer", "text", "tokens", "token_ids", "finished", "stopped",
               "layer_projection", "layer_injected", "baseline_layer_projection",
               "token_projection", "token_injected", "baseline_token_projection",
               "logprobs"}, ...],
     "logprobs_meaning": str | null}

Row 0 is the baseline (``"kind": "baseline"``), then the steered rows in order. ``tokens`` are
the response tokens as text, ``token_ids`` the same as ids. ``stopped`` on a row: the run was
stopped before that row reached EOS. The caller's ``settings`` (e.g. the form's values) are added
to ``settings`` under every key the run does not record itself: where both name a key, the run's
value stays, since it is what ran. The meaning of the projections and the injected components is
in :mod:`.compare`. A non-finite number (there should be none) is written as ``null``, so the
file is always strict JSON.

A row's ``logprobs`` (``null`` when the run was not scored, e.g. stopped) is its answer scored by
teacher forcing (:mod:`persona_explorer.steering.logprobs`)::

    {"own_row", "own_label", "other_row", "other_label",
     "tokens": [{"token", "token_id", "logprob_own", "logprob_other"}, ...],
     "sum_own", "sum_other", "mean_own", "mean_other"}

``logprob_own`` is the token's natural-log probability under the model that wrote the answer
(the row's own steering), ``logprob_other`` under the other column's model (``other_row``: the
baseline for a steered row, the first steered row for the baseline). Means are per token
(``null`` for an empty answer). ``logprobs_meaning`` says in words what the numbers are: the
model's raw next-token distribution, not the penalised sampling distribution it decoded with.

CSV (:func:`projections_csv`)
-----------------------------
One long table, header ``kind,row,label,layer,token_index,token,projection,baseline_projection,
injected``, ``\\n`` line ends, quoted by the :mod:`csv` module where a cell needs it (tokens with
commas, quotes or line breaks):

* ``kind=layer``: one line per output row and layer; ``projection`` is the response mean at
  ``layer``, ``baseline_projection`` the baseline's onto the same vector, ``injected`` the added
  vector's direct part of ``projection``; ``token_index`` and ``token`` are empty.
* ``kind=token``: one line per output row and response token, at the row's read-out layer
  (``layer``); ``projection`` is that token's, ``injected`` its direct part, and
  ``baseline_projection`` the baseline answer's *mean* at that layer onto the same vector (the
  baseline's tokens do not line up with this row's; they are its own lines, row 0, and in the
  JSON's ``baseline_token_projection``).

``row`` is 0 for the baseline. Numbers are written as numbers (a non-finite one as an empty
cell). A text cell (``label``, ``token``) starting with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return gets a leading ``'``, so a spreadsheet shows it as text instead of running it
as a formula (CSV injection).

Imports: the standard library; :mod:`.compare` for types only.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from persona_explorer.evaluate.compare import RowOutput, SteerOutput
    from persona_explorer.steering.logprobs import AnswerLogprobs

__all__ = [
    "CSV_COLUMNS",
    "FORMAT",
    "VERSION",
    "plain",
    "projections_csv",
    "run_json",
    "run_record",
    "text_cell",
]

FORMAT = "persona-explorer-run"
VERSION = 1
CSV_COLUMNS = (
    "kind",
    "row",
    "label",
    "layer",
    "token_index",
    "token",
    "projection",
    "baseline_projection",
    "injected",
)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: containers as dicts and lists, non-finite floats as None,
    anything else JSON cannot hold as its ``str()``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


def _run_settings(out: SteerOutput) -> dict[str, Any]:
    s = out.sampling
    return {
        "model_id": out.model_id,
        "positions": out.positions,
        "readout_layer": out.readout_layer,
        "layers": list(out.layers),
        "strengths": [row.strength for row in out.steered],
        "vectors": [{"name": r.vector_name, "model_id": r.vector_model_id} for r in out.steered],
        "sampling": {
            "max_new_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
            "stop_at_eos": s.stop_at_eos,
            "shared_noise": s.shared_noise,
            "max_prompt_tokens": s.max_prompt_tokens,
        },
    }


def _logprob_record(
    row: RowOutput, scored: AnswerLogprobs, labels: Sequence[str]
) -> dict[str, Any]:
    if len(scored.own) != len(row.tokens):
        raise ValueError(
            f"row {scored.row} has {len(row.tokens)} tokens but {len(scored.own)} logprobs"
        )
    return {
        "own_row": scored.row,
        "own_label": labels[scored.row],
        "other_row": scored.other_row,
        "other_label": labels[scored.other_row],
        "tokens": [
            {"token": text, "token_id": tid, "logprob_own": own, "logprob_other": other}
            for text, tid, own, other in zip(
                row.token_strings, row.tokens, scored.own, scored.other, strict=True
            )
        ],
        "sum_own": scored.sum_own,
        "sum_other": scored.sum_other,
        "mean_own": scored.mean_own,
        "mean_other": scored.mean_other,
    }


def _row_record(
    index: int,
    row: RowOutput,
    run_stopped: bool,
    scored: AnswerLogprobs | None = None,
    labels: Sequence[str] = (),
) -> dict[str, Any]:
    return {
        "index": index,
        "kind": "baseline" if index == 0 else "steered",
        "label": row.label,
        "vector_name": row.vector_name,
        "vector_model_id": row.vector_model_id,
        "strength": row.strength,
        "layers": list(row.layers),
        "readout_layer": row.readout_layer,
        "text": row.text,
        "tokens": list(row.token_strings),
        "token_ids": list(row.tokens),
        "finished": row.finished,
        "stopped": run_stopped and not row.finished,
        "layer_projection": list(row.layer_projection),
        "layer_injected": list(row.layer_injected),
        "baseline_layer_projection": list(row.baseline_layer_projection),
        "token_projection": list(row.token_projection),
        "token_injected": row.token_injected,
        "baseline_token_projection": list(row.baseline_token_projection),
        "logprobs": None if scored is None else _logprob_record(row, scored, labels),
    }


def run_record(
    out: SteerOutput,
    settings: Mapping[str, Any] | None = None,
    logprobs: Sequence[AnswerLogprobs] | None = None,
) -> dict[str, Any]:
    """The run as JSON-ready data (the format: module docstring). ``logprobs``: one entry per
    row, in order (:func:`persona_explorer.steering.logprobs.run_logprobs`); each entry's
    ``meaning`` becomes ``logprobs_meaning``."""
    if logprobs is not None and len(logprobs) != len(out.rows):
        raise ValueError(f"{len(logprobs)} logprob entries for {len(out.rows)} rows")
    labels = [row.label for row in out.rows]
    scored = list(logprobs) if logprobs is not None else [None] * len(out.rows)
    merged = {str(k): v for k, v in (settings or {}).items()} | _run_settings(out)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "prompt": out.prompt,
        "system": out.system,
        "settings": merged,
        "stopped": out.stopped,
        "timing": {
            "seconds": out.seconds,
            "new_tokens": out.new_tokens,
            "tokens_per_second": out.tokens_per_second,
            "decoder": out.decoder,
        },
        "rows": [
            _row_record(i, row, out.stopped, lp, labels)
            for i, (row, lp) in enumerate(zip(out.rows, scored, strict=True))
        ],
        "logprobs_meaning": logprobs[0].meaning if logprobs else None,
    }
    ready: dict[str, Any] = plain(record)
    return ready


def run_json(
    out: SteerOutput,
    settings: Mapping[str, Any] | None = None,
    logprobs: Sequence[AnswerLogprobs] | None = None,
) -> str:
    """:func:`run_record` as indented JSON text (UTF-8 characters kept, never NaN)."""
    record = run_record(out, settings, logprobs)
    return json.dumps(record, ensure_ascii=False, allow_nan=False, indent=2)


def text_cell(text: str) -> str:
    """A CSV text cell a spreadsheet will not read as a formula."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _number_cell(value: float) -> float | str:
    return value if math.isfinite(value) else ""


def projections_csv(out: SteerOutput) -> str:
    """The per-layer and per-token projections of every row as one CSV table (module
    docstring)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for index, row in enumerate(out.rows):
        label = text_cell(row.label)
        for layer, (value, base, injected) in enumerate(
            zip(
                row.layer_projection,
                row.baseline_layer_projection,
                row.layer_injected,
                strict=True,
            )
        ):
            writer.writerow(
                [
                    "layer",
                    index,
                    label,
                    layer,
                    "",
                    "",
                    _number_cell(value),
                    _number_cell(base),
                    _number_cell(injected),
                ]
            )
        base_mean = _number_cell(row.baseline_layer_projection[row.readout_layer])
        for i, (token, value) in enumerate(
            zip(row.token_strings, row.token_projection, strict=True)
        ):
            writer.writerow(
                [
                    "token",
                    index,
                    label,
                    row.readout_layer,
                    i,
                    text_cell(token),
                    _number_cell(value),
                    base_mean,
                    _number_cell(row.token_injected),
                ]
            )
    return buf.getvalue()
