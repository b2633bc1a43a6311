"""How the Sweep tab shows a sweep: the grid as a table laid out like the heat maps, one layer's
answers side by side, a clicked cell's answers beside the baseline's, and the status line.

:class:`SweepRun` is what the tab keeps of a sweep (in its ``gr.State``); every function here
makes text or a table from one, and escapes whatever text it shows.

Imports: gradio (table updates), ``evaluate`` (the sweep's result), ``plots.sweep``, ``vectors``
and this package's markup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from persona_explorer.evaluate.sweep_result import Cell, SweepResult
from persona_explorer.plots.sweep import SweepGrid, strength_label, sweep_grid
from persona_explorer.ui.shared.markup import md
from persona_explorer.vectors.persona_vector import PersonaVector

__all__ = [
    "COLUMNS_FIRST",
    "GRID_FIRST",
    "SweepRun",
    "cell_markdown",
    "columns_frame",
    "grid_frame",
    "grid_of",
    "reason_markdown",
    "status_text",
    "table",
]


# A reason has a head line, one per layer (at most APP_SWEEP_MAX_LAYERS) and a "Next" line.
MAX_REASON_LINES = 40


@dataclass(frozen=True)
class SweepRun:
    """What the tab keeps of a sweep (in ``gr.State``): everything shown is made from it."""

    key: str  # the catalog key of the vector swept
    vector: PersonaVector  # as swept: "Use these settings" refuses a vector changed since
    result: SweepResult
    timed_out: bool = False


def grid_of(result: SweepResult) -> SweepGrid:
    rec = result.recommended
    return sweep_grid(
        [(c.layer, c.strength, c.trait, c.coherence, c.repetition) for c in result.grid],
        recommended=None if rec is None else (rec.layer, rec.strength),
        baseline_repetition=result.baseline.repetition,
    )


def _is_recommended(result: SweepResult, cell: Cell) -> bool:
    rec = result.recommended
    return rec is not None and (rec.layer, rec.strength) == (cell.layer, cell.strength)


def _strength_header(strength: float, unit: float | None) -> str:
    if strength == 0:
        return "baseline (strength 0)"
    head = f"strength {strength_label(strength)}"
    if unit:
        head += f" ({strength / unit:.3g}×)"
    return head


def _cell_summary(cell: Cell, recommended: bool) -> str:
    if cell.trait is None and cell.coherence is None:
        return "not run"
    trait = "—" if cell.trait is None else f"{cell.trait:+.2f}"
    coh = "—" if cell.coherence is None else f"{cell.coherence:.2f}"
    star = "★ " if recommended else ""
    judge = "" if cell.judge is None else f" · judge {cell.judge:.0f}"
    return f"{star}trait {trait} · coherence {coh} · repeats {cell.repetition:.2f}{judge}"


def grid_frame(run: SweepRun) -> dict[str, Any]:
    """The grid as a table laid out like the heat maps (rows: layers; columns: strengths)."""
    result = run.result
    strengths = sorted(result.config.strengths)
    unit = run.vector.strength
    rows = []
    for layer in sorted(result.config.layers):
        row: list[str] = [f"layer {layer}"]
        for s in strengths:
            cell = result.cell(layer, s)
            row.append(_cell_summary(cell, _is_recommended(result, cell)))
        rows.append(row)
    return {"headers": ["Layer", *(_strength_header(s, unit) for s in strengths)], "data": rows}


def table(frame: dict[str, Any], first: float) -> Any:
    """A frame for a results table: its first column ``first`` percent wide, the rest sharing
    the remainder (unset, the grid sizes columns to unwrapped text and scrolls sideways)."""
    rest = len(frame["headers"]) - 1
    widths = [f"{first:g}%"] + [f"{(100 - first) / max(rest, 1):.2f}%"] * rest
    return gr.update(value=frame, column_widths=widths)


GRID_FIRST = 11.0  # percent: "layer 12"
COLUMNS_FIRST = 18.0  # percent: a prompt


def columns_frame(run: SweepRun, layer: int) -> dict[str, Any]:
    """One row per prompt, one column per strength: the answers steered at ``layer``."""
    result = run.result
    strengths = sorted(result.config.strengths)
    cells = [result.cell(layer, s) for s in strengths]
    rows = []
    for p, prompt in enumerate(result.prompts):
        row = [prompt]
        for cell in cells:
            row.append(cell.texts[p] if p < len(cell.texts) else "(not run)")
        rows.append(row)
    heads = [_strength_header(s, run.vector.strength) for s in strengths]
    return {"headers": ["Prompt", *heads], "data": rows}


def cell_markdown(run: SweepRun, layer: int, strength: float) -> str:
    """A cell's numbers and its answers, each beside the baseline's (all text escaped)."""
    result = run.result
    cell = result.cell(layer, strength)
    head = f"#### Layer {layer}, strength {strength_label(strength)}"
    if strength == 0:
        head += " (the baseline: nothing added)"
    if _is_recommended(result, cell):
        head += " ★ recommended"
    lines = [head, _cell_summary(cell, False)]
    if not cell.texts:
        return "\n\n".join([*lines, "This cell was not run: the sweep stopped first."])
    base = result.baseline.texts
    for p, prompt in enumerate(result.prompts):
        answer = cell.texts[p] if p < len(cell.texts) else ""
        lines.append(f"**Prompt {p + 1}:** {md(prompt, 600)}")
        if strength != 0:
            lines.append(f"> *Baseline:* {md(base[p] if p < len(base) else '', 1500)}")
        lines.append(f"> *Steered:* {md(answer, 1500)}")
    return "\n\n".join(lines)


def status_text(run: SweepRun) -> str:
    result = run.result
    name = md(result.vector)
    done = (
        f"Swept **{name}**: {len(result.prompts)} prompts × {len(result.grid)} cells, trait "
        f"read at layer {result.read_layer}, in {result.seconds:.0f} s"
    )
    resumed = result.rows_total - result.rows_generated
    if resumed and not result.stopped:
        done += f" ({resumed} of {result.rows_total} answers came from an earlier run)"
    done += ". "
    if result.stopped:
        why = "ran past the time limit for one job" if run.timed_out else "was stopped"
        done += (
            f"The sweep {why} after {result.rows_total - _missing(result)} of "
            f"{result.rows_total} answers; press **Sweep** again with the same settings to "
            "resume from there. "
        )
    rec = result.recommended
    if rec is None:
        return done + f"**No recommendation.** {reason_markdown(result.reason)}"
    return (
        done
        + f"**Recommended: layer {rec.layer}, strength {strength_label(rec.strength)}** (★). "
        + reason_markdown(result.reason)
        + " Press **Use these settings** to make them the vector's defaults in Steer."
    )


def reason_markdown(reason: str) -> str:
    """A sweep's reason as Markdown, its lines kept (without a recommendation it has one line
    per layer and a last one saying what to try next), each escaped."""
    lines = [md(line, 400) for line in reason.splitlines() if line.strip()][:MAX_REASON_LINES]
    return "  \n".join(lines)


def _missing(result: SweepResult) -> int:
    n = len(result.prompts)
    missing = sum(n for c in result.grid if c.strength != 0 and not c.texts)
    return missing + (0 if result.baseline.texts else n)
