"""What a layer x strength sweep found: each answer's numbers, each cell's, the whole grid, and
the recommended cell.

* :class:`RowResult` — one answer: its tokens, its read-out projection, its log-likelihood
  (what a checkpoint stores, one JSON line each);
* :class:`Cell` — a (layer, strength) cell: trait rise, coherence and repetition (see
  :mod:`.sweep` for what they measure);
* :class:`SweepResult` — the baseline, the grid and the recommendation, as the CLI's and the
  API's JSON;
* :func:`recommend` — for the layer where the trait rises most while staying coherent, the
  smallest strength that raises it by the margin (:class:`.sweep_config.Criteria`), and why;
  without one, what failed in each layer and the next sweep to try;
  :func:`with_recommendation` records it in the vector.

Imports: the standard library, :mod:`.sweep_config` and ``vectors`` (types only).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from persona_explorer.evaluate.sweep_config import Criteria, SweepConfig

if TYPE_CHECKING:
    from persona_explorer.vectors.persona_vector import PersonaVector

__all__ = [
    "NGRAM",
    "Cell",
    "RowResult",
    "SweepResult",
    "qualifies",
    "recommend",
    "repetition",
    "with_recommendation",
    "word_repetition",
]

NGRAM = 3


def repetition(tokens: Sequence[int], n: int = NGRAM) -> float:
    """The share of an answer's token n-grams that repeat an earlier one (0 for fewer than n)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


_WORD = re.compile(r"\w+(?:'\w+)*")


def word_repetition(text: str, n: int = NGRAM) -> float:
    """The share of a text's word n-grams (lower-cased, punctuation ignored) that repeat an
    earlier one: what a reader sees as a loop ("aye, aye, aye" is one word 3-gram repeated),
    whatever the tokenizer made of it. 0 for fewer than n words."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


@dataclass(frozen=True)
class RowResult:
    """One answer: its tokens, its read-out projection, its mean log-likelihood."""

    layer: int | None  # None for the baseline
    strength: float
    prompt: int
    tokens: tuple[int, ...]
    projection: float | None  # None for an empty answer
    mean_logprob: float | None
    finished: bool

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "tokens": list(self.tokens)}

    @classmethod
    def from_json(cls, raw: Any, vocab: int) -> RowResult:
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        tokens = raw["tokens"]
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and 0 <= t < vocab for t in tokens
        ):
            raise ValueError("bad tokens")

        def num(value: Any) -> float | None:
            if value is None:
                return None
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError("bad number")
            return float(value)

        layer = raw["layer"]
        if layer is not None and not isinstance(layer, int):
            raise ValueError("bad layer")
        prompt = raw["prompt"]
        if not isinstance(prompt, int) or prompt < 0:
            raise ValueError("bad prompt")
        return cls(
            layer=layer,
            strength=float(num(raw["strength"]) or 0.0),
            prompt=prompt,
            tokens=tuple(tokens),
            projection=num(raw["projection"]),
            mean_logprob=num(raw["mean_logprob"]),
            finished=bool(raw.get("finished", False)),
        )


@dataclass
class Cell:
    layer: int
    strength: float
    trait: float | None  # rise over the baseline, in units of |v| at the read-out layer
    projection: float | None  # mean raw projection of the answers at the read-out layer
    perplexity: float | None
    coherence: float | None  # baseline perplexity / this cell's
    repetition: float
    texts: list[str]
    judge: float | None = None  # mean judge score 0-100 where a judge scored the answers
    # The worst answer's word_repetition: a class sees single answers, not the mean.
    worst_repetition: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SweepResult:
    vector: str
    read_layer: int
    prompts: tuple[str, ...]
    config: SweepConfig
    baseline: Cell
    grid: list[Cell]  # layer-major, strengths in the order given
    recommended: Cell | None
    reason: str  # why this cell, or why none
    stopped: bool
    seconds: float
    rows_generated: int  # rows run this time (the rest came from the checkpoint)
    rows_total: int
    judge: str = "off"  # what the optional judge did (see :func:`judge_cells`)

    def cell(self, layer: int, strength: float) -> Cell:
        for c in self.grid:
            if c.layer == layer and c.strength == strength:
                return c
        raise KeyError((layer, strength))

    def as_json(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "vector": self.vector,
            "read_layer": self.read_layer,
            "prompts": list(self.prompts),
            "layers": list(cfg.layers),
            "strengths": list(cfg.strengths),
            "positions": cfg.positions,
            "max_new_tokens": cfg.max_new_tokens,
            "criteria": asdict(cfg.criteria),
            "baseline": self.baseline.as_json(),
            "grid": [c.as_json() for c in self.grid],
            "recommended": None if self.recommended is None else self.recommended.as_json(),
            "reason": self.reason,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
            "rows_generated": self.rows_generated,
            "rows_total": self.rows_total,
            "judge": self.judge,
        }


# --------------------------------------------------------------------------- recommendation


def qualifies(cell: Cell, crit: Criteria, base_rep: float) -> bool:
    """A steered cell that raises the trait by the margin with coherence and repetition (over
    the baseline's ``base_rep``) within tolerance."""
    return (
        cell.strength > 0
        and cell.trait is not None
        and cell.coherence is not None
        and cell.trait >= crit.margin
        and cell.coherence >= crit.min_coherence
        and cell.repetition <= base_rep + crit.max_repetition_rise
        and cell.worst_repetition <= crit.max_worst_repetition
    )


def _problems(cell: Cell, crit: Criteria, base_rep: float) -> list[str]:
    """What keeps a steered cell that has answers from qualifying, in plain words (the trait
    shortfall not included: see :func:`_layer_reason`)."""
    out = []
    if cell.coherence is None:
        out.append("its coherence could not be measured")
    elif cell.coherence < crit.min_coherence:
        out.append(f"the text lost coherence ({cell.coherence:.2f} < {crit.min_coherence:g})")
    limit = base_rep + crit.max_repetition_rise
    if cell.repetition > limit:
        out.append(
            f"the answers repeated themselves ({cell.repetition:.2f} > {limit:.2f}, the "
            f"baseline's {base_rep:.2f} + {crit.max_repetition_rise:g})"
        )
    if cell.worst_repetition > crit.max_worst_repetition:
        out.append(
            f"the worst answer looped ({cell.worst_repetition:.2f} > {crit.max_worst_repetition:g})"
        )
    return out


def _s(x: float) -> str:
    return f"{x:g}"


def _between(lo: float, hi: float) -> str:
    """Three strengths evenly between ``lo`` and ``hi`` (exclusive), as a Strengths field."""
    return ", ".join(_s(round(lo + (hi - lo) * k / 4, 2)) for k in (1, 2, 3))


# What to try next at a layer, best first: (rank, text).
_Next = tuple[int, str]


def _layer_reason(
    layer: int, cells: Sequence[Cell], crit: Criteria, base_rep: float
) -> tuple[str, _Next | None]:
    """Why no cell of ``layer`` qualified, and what to try there next (None: nothing there)."""
    steered = sorted(
        (c for c in cells if c.strength > 0 and c.trait is not None), key=lambda c: c.strength
    )
    if not steered:
        return f"Layer {layer}: no steered answers to judge yet.", None
    margin = crit.margin
    rising = [c for c in steered if (c.trait or 0.0) >= margin]
    broken = {id(c): _problems(c, crit, base_rep) for c in steered}
    clean = [c for c in steered if not broken[id(c)]]
    if not rising:
        top = max(steered, key=lambda c: c.trait or 0.0)
        said = (
            f"Layer {layer}: the trait never rose by {margin:g} (at most {top.trait:+.2f}, at "
            f"strength {_s(top.strength)})"
        )
        first_broken = next((c for c in steered if broken[id(c)]), None)
        if first_broken is None:
            hi = steered[-1].strength
            return (
                f"{said}, and nothing broke: try stronger, {_s(round(hi * 1.5, 2))} or "
                f"{_s(round(hi * 2, 2))}.",
                (2, f"layer {layer} at strengths {_s(round(hi * 1.5, 2))}, {_s(round(hi * 2, 2))}"),
            )
        return (
            f"{said}; from strength {_s(first_broken.strength)} "
            f"{' and '.join(broken[id(first_broken)])}: the text breaks before the trait shows "
            "here, so try another layer.",
            None,
        )
    lo = rising[0]
    where = ", ".join(_s(c.strength) for c in rising)
    failed = " and ".join(broken[id(lo)])
    said = (
        f"Layer {layer}: the trait rose by {margin:g} only at strength {where}, where {failed}"
        if len(rising) == 1
        else f"Layer {layer}: the trait rose by {margin:g} only at strengths {where}; at "
        f"{_s(lo.strength)} {failed}"
    )
    below = [c for c in clean if c.strength < lo.strength]
    if below:
        b = below[-1]
        return (
            f"{said}; at {_s(b.strength)} the trait rose {b.trait:+.2f} < {margin:g}. Try "
            f"strengths between {_s(b.strength)} and {_s(lo.strength)}.",
            (0, f"layer {layer} at strengths {_between(b.strength, lo.strength)}"),
        )
    if lo is steered[0]:
        return (
            f"{said}. {_s(lo.strength)} is the weakest strength swept: try weaker, "
            f"{_s(round(lo.strength / 2, 2))} or {_s(round(lo.strength / 4, 2))}.",
            (
                1,
                f"layer {layer} at strengths {_s(round(lo.strength / 4, 2))}, "
                f"{_s(round(lo.strength / 2, 2))}",
            ),
        )
    return f"{said}, and the weaker strengths broke too: try another layer.", None


def _no_recommendation(grid: Sequence[Cell], baseline: Cell, crit: Criteria) -> str:
    """Why no cell qualified, one line per layer, and what to try next (lines separated by
    newlines; a page shows them as lines)."""
    base_rep = baseline.repetition
    head = (
        f"No cell raised the trait by {crit.margin:g} with coherence ≥ {crit.min_coherence:g}, "
        f"repetition ≤ the baseline's + {crit.max_repetition_rise:g} ({base_rep:.2f} + "
        f"{crit.max_repetition_rise:g}) and no answer looping (repeated word 3-grams ≤ "
        f"{crit.max_worst_repetition:g})."
    )
    lines = [head]
    options: list[_Next] = []
    for layer in dict.fromkeys(c.layer for c in grid):
        text, nxt = _layer_reason(layer, [c for c in grid if c.layer == layer], crit, base_rep)
        lines.append(text)
        if nxt is not None:
            options.append(nxt)
    if options:
        lines.append(f"Next: sweep {min(options, key=lambda o: o[0])[1]}.")
    elif any(c.strength > 0 and c.trait is not None for c in grid):
        lines.append(
            "Next: sweep other layers, or extract the vector again with clearer examples "
            "(every layer here broke before the trait rose)."
        )
    return "\n".join(lines)


def recommend(grid: Sequence[Cell], baseline: Cell, crit: Criteria) -> tuple[Cell | None, str]:
    """The recommended cell and why.

    A cell qualifies when its trait rises by ``margin`` with coherence and repetition within
    tolerance, and its worst answer does not loop. The layer is the one whose qualifying cells
    reach the highest trait (the most room to steer before the text breaks); the strength is the
    smallest qualifying one there.

    Without one, the reason says for each layer which condition failed (the trait fell short,
    or where it rose the text broke, and how) and what to try there, then the most promising
    next sweep: strengths between the strongest clean one and the weakest that raised the trait,
    else weaker ones, else stronger ones. Its lines are separated by newlines.
    """
    ok = [c for c in grid if qualifies(c, crit, baseline.repetition)]
    if not ok:
        return None, _no_recommendation(grid, baseline, crit)
    layers = {c.layer for c in ok}
    reach = {layer: max(c.trait or 0.0 for c in ok if c.layer == layer) for layer in layers}
    layer = max(layers, key=lambda la: (reach[la], -la))
    chosen = min((c for c in ok if c.layer == layer), key=lambda c: c.strength)
    return chosen, (
        f"Layer {layer} reaches the highest trait rise while coherent ({reach[layer]:.2f}); "
        f"strength {chosen.strength:g} is the smallest there that raises it by ≥ "
        f"{crit.margin:g} (trait {chosen.trait:.2f}, coherence {chosen.coherence:.2f}, "
        f"repetition {chosen.repetition:.2f} vs baseline {baseline.repetition:.2f}, worst "
        f"answer {chosen.worst_repetition:.2f})."
    )


def with_recommendation(vec: PersonaVector, result: SweepResult) -> PersonaVector:
    """``vec`` with the recommended layer and strength recorded (unchanged if none)."""
    cell = result.recommended
    if cell is None:
        return vec
    meta = dict(vec.metadata)
    meta["sweep"] = {
        "layer": cell.layer,
        "strength": cell.strength,
        "trait": cell.trait,
        "coherence": cell.coherence,
        "repetition": cell.repetition,
        "read_layer": result.read_layer,
        "layers": list(result.config.layers),
        "strengths": list(result.config.strengths),
        "positions": result.config.positions,
        "n_prompts": len(result.prompts),
        "max_new_tokens": result.config.max_new_tokens,
        "criteria": asdict(result.config.criteria),
        "reason": result.reason,
    }
    return vec.with_(layer=cell.layer, strength=cell.strength, metadata=meta)
