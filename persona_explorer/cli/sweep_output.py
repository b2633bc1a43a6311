"""The ``sweep`` command's text output (``--json`` prints ``SweepResult.as_json()`` instead)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from persona_explorer.cli import render

if TYPE_CHECKING:
    from persona_explorer.evaluate.sweep_result import SweepResult


def text_lines(result: SweepResult) -> list[str]:
    """The grid as a table, the recommendation and an example answer."""
    lines = [
        f"Swept {result.vector!r}: {len(result.prompts)} prompts, read at layer "
        f"{result.read_layer}, {result.seconds:.1f} s ({result.rows_generated} of "
        f"{result.rows_total} answers generated now)"
        + (" - stopped early" if result.stopped else ""),
        f"  baseline: perplexity {render.optional(result.baseline.perplexity)}, repetition "
        f"{result.baseline.repetition:.2f}",
        "  layer  strength   trait  coherence  repetition",
    ]
    for c in result.grid:
        mark = "  <- recommended" if c is result.recommended else ""
        trait = "   -  " if c.trait is None else f"{c.trait:+6.2f}"
        coh = "   -  " if c.coherence is None else f"{c.coherence:6.2f}"
        lines.append(
            f"  {c.layer:5d}  {c.strength:8.3g}  {trait}  {coh}     {c.repetition:6.2f}{mark}"
        )
    lines.append(f"  {result.reason}")
    if result.judge != "off":
        lines.append(f"  {result.judge}")
    if result.recommended is not None:
        first = result.recommended.texts[0] if result.recommended.texts else ""
        lines.append(f"  e.g. {first[:200]!r}")
    return lines
