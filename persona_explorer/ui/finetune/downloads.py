"""The Train tab's files to take home (issue 26): the adapter as a zip, and the shift report as
JSON and CSV (the format is :mod:`persona_explorer.ui.shared.downloads`).

The adapter (:func:`adapter_download`): peft's own folder, zipped under one folder named
``persona-adapter-<id>`` with its ``persona_finetune.json`` (settings, seed, data hash, losses;
:func:`persona_explorer.training.adapter_io.zip_adapter`). Only the session that trained (or
uploaded) an adapter gets it.

The shift report (:func:`write_shift`): one CSV line per measured model and vector: ``run`` is
``measured`` (the adapter picked) or ``compared`` (the session's run on the same data with
another framing), then every reading of :class:`persona_explorer.training.shift.ShiftRow`
(answers, same tokens, last prompt token; raw and in persona lengths) and screening's
prediction. The provenance: the base model, the layers, the vectors (name, model, layer) and
the settings (the adapter and its training settings with the seed, the questions, the tokens,
the layer choice). The JSON adds the report the tab shows (answers included) under
``"report"``.

Imports: the domain (``training.adapter_io``, the shift report's type), ``ui.shared``
(context, downloads) and this tab's runs, tuned models and views.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from persona_explorer.training.adapter_io import zip_adapter
from persona_explorer.training.shift import ShiftReport
from persona_explorer.ui.finetune.runs import Measured, TrainRun
from persona_explorer.ui.finetune.tuned_models import TunedModels
from persona_explorer.ui.finetune.views import shift_json
from persona_explorer.ui.shared.context import AppContext, user_errors
from persona_explorer.ui.shared.downloads import provenance, write_pair

__all__ = [
    "ADAPTER_STEM",
    "COLUMNS",
    "STEM",
    "adapter_download",
    "shift_downloads",
    "shift_rows",
    "write_adapter_zip",
    "write_shift",
]

STEM = "persona-shift-report"
ADAPTER_STEM = "persona-adapter"
COLUMNS = (
    "run",
    "adapter",
    "framing",
    "vector",
    "layer",
    "base",
    "tuned",
    "shift",
    "scale",
    "relative_shift",
    "same_tokens_base",
    "same_tokens_tuned",
    "same_tokens_shift",
    "prompt_base",
    "prompt_tuned",
    "prompt_shift",
    "predicted",
    "predicted_relative",
    "questions",
    "seed",
)


def _rows(
    kind: str, run: TrainRun, report: ShiftReport, predicted: dict[str, float]
) -> list[list[Any]]:
    out = []
    for r in report.rows:
        scale = float(r.scale)
        guess = predicted.get(r.name)
        out.append(
            [
                kind,
                run.adapter,
                run.framing,
                r.name,
                int(r.layer),
                float(r.base),
                float(r.tuned),
                float(r.shift),
                scale,
                float(r.shift) / scale,
                float(r.same_tokens_base),
                float(r.same_tokens_tuned),
                float(r.same_tokens_shift),
                float(r.prompt_base),
                float(r.prompt_tuned),
                float(r.prompt_shift),
                guess,
                None if guess is None else guess / scale,
                len(report.questions),
                run.seed,
            ]
        )
    return out


def shift_rows(m: Measured) -> list[list[Any]]:
    """The CSV's lines: the measured run's vectors, then the compared run's."""
    predicted = m.prediction.values if m.prediction is not None else {}
    rows = _rows("measured", m.run, m.report, predicted)
    if m.other is not None and m.other_report is not None:
        rows += _rows("compared", m.other, m.other_report, {})
    return rows


def _training(run: TrainRun) -> dict[str, Any]:
    """What the report records of how a run's adapter was made."""
    s = run.settings if isinstance(run.settings, dict) else {}
    return {
        "adapter": run.adapter,
        "dataset": run.dataset,
        "framing": run.framing,
        "seed": run.seed,
        "uploaded": run.uploaded,
        "samples": run.n_samples,
        "epochs": run.epochs,
        "steps_done": len(run.losses),
        "stopped": run.stopped,
        "config": s.get("config"),
        "data": s.get("data"),
        "versions": s.get("versions"),
    }


def write_shift(ctx: AppContext, m: Measured) -> tuple[Path, Path]:
    """The measurement as ``persona-shift-report.json`` and ``.csv`` in a fresh export folder."""
    settings = {
        **m.asked,
        "tuned_model_id": m.report.tuned_model_id,
        "base_model_id": m.report.base_model_id,
        "stopped": bool(m.report.stopped),
        "training": _training(m.run),
        "compared_with": None if m.other is None else _training(m.other),
        "prediction": None if m.prediction is None else {"note": m.prediction.note},
    }
    prov = provenance(
        "shift-report",
        model_id=ctx.model.model_id,
        layers=sorted({int(r.layer) for r in m.report.rows}),
        vectors=list(m.vectors) or [{"name": r.name} for r in m.report.rows],
        settings=settings,
    )
    return write_pair(ctx.exports, STEM, prov, COLUMNS, shift_rows(m), {"report": shift_json(m)})


def shift_downloads(ctx: AppContext, kept: object) -> tuple[str | None, str | None]:
    """The shift report's two download buttons' files (none before a measurement)."""
    with user_errors():
        if not isinstance(kept, Measured):
            return None, None
        json_path, csv_path = write_shift(ctx, kept)
        return str(json_path), str(csv_path)


def write_adapter_zip(ctx: AppContext, store: TunedModels, adapter: object, owner: str) -> Path:
    """One of ``owner``'s adapters as ``persona-adapter-<id>.zip`` in a fresh export folder."""
    folder = store.folder(adapter, owner)  # refuses another session's adapter
    name = f"{ADAPTER_STEM}-{folder.name}"  # the id is checked: [a-z0-9]
    return zip_adapter(folder, ctx.exports.fresh_folder() / f"{name}.zip", name=name)


def adapter_download(
    ctx: AppContext, store: TunedModels, adapter: object, owner: str
) -> str | None:
    """The adapter button's file: the picked adapter's zip (none while nothing is picked)."""
    with user_errors():
        if not isinstance(adapter, str) or not adapter.strip():
            return None
        return str(write_adapter_zip(ctx, store, adapter, owner))
