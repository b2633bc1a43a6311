"""How the Extract tab words an extraction: a persona's preview, the summary of a finished
extraction and a few of its answers side by side (every name escaped).

Imports: ``personas`` (a definition, an extraction's result), ``vectors`` (a persona vector, its
axis component), ``ui.shared`` (catalog, markup).
"""

from __future__ import annotations

from persona_explorer.personas.definitions import PersonaDefinition
from persona_explorer.personas.extract import ExtractionResult
from persona_explorer.ui.shared.catalog import fmt_strength
from persona_explorer.ui.shared.markup import md
from persona_explorer.vectors.axis_component import AxisComponent, is_axis_removed
from persona_explorer.vectors.persona_vector import PersonaVector

__all__ = ["N_EXAMPLES", "axis_line", "examples", "preview", "summary"]

NO_AXIS_LINE = (
    "*Along the Assistant Axis:* not shown, since this model has no axis yet (the Persona space "
    "tab builds it)."
)

N_EXAMPLES = 3


def preview(persona: PersonaDefinition) -> str:
    pair = persona.pairs[0]
    neg = pair.neg if pair.neg is not None else "(the default Assistant's own prompts)"
    return (
        f"**{md(persona.name)}** · {len(persona.pairs)} prompt pairs · "
        f"{len(persona.questions)} questions to draw from (the Questions slider picks how many "
        f"are asked)\n\n*With the persona:* {md(pair.pos, 600)}\n\n"
        f"*Without:* {md(neg, 600)}"
    )


def summary(result: ExtractionResult) -> str:
    vec = result.vector
    counts = vec.metadata.get("counts", {})
    best = vec.layer if vec.layer is not None else 0
    sep = vec.separation[best] if vec.separation else float("nan")
    text = (
        f"**{md(vec.name)}**: {counts.get('pos', '?')} answers with the persona and "
        f"{counts.get('neg', '?')} without, in {result.seconds:.0f} s. Recommended layer "
        f"**{best}** (separation d = {sep:.2f}) and strength **{fmt_strength(vec.strength)}**"
    )
    if vec.strength is not None:
        text += (
            ", which adds as large a share of that layer's activations as the built-in "
            "personas do (Try it in Steer starts there)."
        )
    else:
        text += " (the vector is zero there: nothing to scale a strength to)."
    if not result.cross_validated:
        text += (
            " With so few answers the separation is measured on the same answers that built "
            "the vector, so it looks better than it is: use more questions for a steadier vector."
        )
    return text


def examples(result: ExtractionResult) -> list[list[str]]:
    """A few (question, with persona, without) answer pairs, one per question."""

    def short(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= 280 else text[:277] + "…"

    rows: list[list[str]] = []
    seen: set[str] = set()
    roll = result.rollouts  # pos and neg rows alternate, same question and prompt pair
    for pos, neg in zip(roll[0::2], roll[1::2], strict=False):
        if pos.question in seen:
            continue
        seen.add(pos.question)
        rows.append([pos.question, short(pos.response), short(neg.response)])
        if len(rows) == N_EXAMPLES:
            break
    return rows


def axis_line(vec: PersonaVector, component: AxisComponent | None) -> str:
    """What part of the vector lies along the Assistant Axis at its layer, or what was removed
    (a copy made with "Remove the Assistant-Axis component")."""
    derived = vec.metadata.get("derived")
    if is_axis_removed(vec) and isinstance(derived, dict):
        was = derived.get("removed", {})
        cos, share, layer = was.get("cos"), was.get("share"), was.get("layer")
        if isinstance(cos, (int, float)) and isinstance(share, (int, float)):
            return (
                f"*Assistant-Axis component removed* at every layer: at layer {layer} it was cos "
                f"**{cos:+.2f}** with the axis, **{share:.0%}** of the vector's squared length. "
                "The strength is unchanged, so steering adds the original push minus that part."
            )
    if component is None:
        return NO_AXIS_LINE
    way = "away from" if component.cos < 0 else "toward"
    return (
        f"*Along the Assistant Axis* at layer {component.layer}: cos **{component.cos:+.2f}** "
        f"({way} the default Assistant), projection {component.projection:+.2f}, "
        f"**{component.share:.0%}** of its squared length. To keep only the rest, tick *Remove the "
        "Assistant-Axis component* and extract again, or copy it without in the Library tab."
    )
