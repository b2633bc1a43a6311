"""What a layer x strength sweep is asked: its prompts, its grid, its decoding settings and what
a recommended cell must show.

* :func:`read_prompts` / :func:`clean_prompts` — the prompts (a text, JSON or JSONL file);
* :func:`parse_numbers` — a comma-separated list of layers or strengths;
* :class:`SweepConfig` and :class:`Criteria` — the grid, the decoding and the recommendation's
  tolerances, checked when made;
* :func:`default_grid` and :func:`quick_sweep_setup` — a first grid around what a vector
  records, and the small sweep offered after an extraction.

The sweep itself is :mod:`.sweep`; its results and recommendation :mod:`.sweep_result`.

Its bounds are ``core.limits``' (``MAX_SWEEP_*``).

Imports: the standard library, ``core`` (errors, limits), ``steering.ops`` (positions) and
``vectors`` (types only).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    DEFAULT_FREQUENCY_PENALTY,
    DEFAULT_TEMPERATURE,
    MAX_SWEEP_GRID_AXIS,
    MAX_SWEEP_PROMPT_CHARS,
    MAX_SWEEP_PROMPTS,
    MAX_SWEEP_PROMPTS_FILE_BYTES,
    check_int,
    check_max_new_tokens,
    check_penalty,
    check_seed,
    check_temperature,
)
from persona_explorer.steering.ops import Positions, check_positions

if TYPE_CHECKING:
    from persona_explorer.vectors.persona_vector import PersonaVector

__all__ = [
    "DEFAULT_MULTIPLES",
    "QUICK_MAX_NEW_TOKENS",
    "QUICK_PROMPTS",
    "SELECT_PROMPTS",
    "Criteria",
    "SweepConfig",
    "clean_prompts",
    "default_grid",
    "parse_numbers",
    "quick_sweep_setup",
    "read_prompts",
]


def parse_numbers(text: str, what: str, integer: bool = False) -> tuple[float, ...]:
    """``"8,12, 15"`` -> (8.0, 12.0, 15.0); duplicates dropped, order kept. Raises InputError
    for anything that is not a finite number (or an integer, with ``integer``)."""
    out: list[float] = []
    for part in str(text).replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise InputError(f"{what}: {part[:40]!r} is not a number.") from None
        if not math.isfinite(value):
            raise InputError(f"{what}: {part[:40]!r} is not a finite number.")
        if integer and value != int(value):
            raise InputError(f"{what}: {part[:40]!r} is not a whole number.")
        if value not in out:
            out.append(value)
    if not out:
        raise InputError(f"{what}: give at least one number, separated by commas.")
    if len(out) > MAX_SWEEP_GRID_AXIS:
        raise InputError(f"{what}: at most {MAX_SWEEP_GRID_AXIS} values, got {len(out)}.")
    return tuple(out)


def clean_prompts(prompts: Iterable[object]) -> tuple[str, ...]:
    """The prompts stripped, empty ones dropped; each checked, and their number."""
    out = []
    for i, p in enumerate(prompts, start=1):
        if not isinstance(p, str):
            raise InputError(f"Prompt {i} is not text.")
        p = p.strip()
        if not p:
            continue
        if len(p) > MAX_SWEEP_PROMPT_CHARS:
            raise InputError(
                f"Prompt {i} has {len(p)} characters; at most {MAX_SWEEP_PROMPT_CHARS}."
            )
        out.append(p)
        if len(out) > MAX_SWEEP_PROMPTS:
            raise InputError(f"At most {MAX_SWEEP_PROMPTS} prompts in one sweep.")
    if not out:
        raise InputError("No prompts: give at least one, one per line.")
    return tuple(out)


def read_prompts(path: str | Path) -> tuple[str, ...]:
    """Prompts from a text file (one per line), a JSON list of strings, or JSONL (a string or
    an object with ``prompt`` per line). The size is checked before reading."""
    p = Path(path)
    size = p.stat().st_size
    if size > MAX_SWEEP_PROMPTS_FILE_BYTES:
        raise InputError(
            f"{p.name} is {size / 2**20:.1f} MB; a prompts file is limited to "
            f"{MAX_SWEEP_PROMPTS_FILE_BYTES // 2**20} MB."
        )
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{p.name} is not UTF-8 text.") from None
    stripped = text.lstrip()
    if p.suffix.lower() == ".json" or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p.name}: not a JSON list of prompts ({exc.msg}).") from None
        if not isinstance(data, list):
            raise InputError(f"{p.name}: expected a JSON list of prompts.")
        return clean_prompts(data)
    if p.suffix.lower() == ".jsonl":
        items: list[object] = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(f"{p.name} line {n}: not JSON.") from None
            if isinstance(item, dict):
                item = item.get("prompt")
            if not isinstance(item, str):
                raise InputError(f"{p.name} line {n}: expected a string or {{'prompt': ...}}.")
            items.append(item)
        return clean_prompts(items)
    return clean_prompts(text.splitlines())


@dataclass(frozen=True)
class Criteria:
    """What a recommended cell must show, relative to the baseline."""

    margin: float = 0.25  # trait rise, in units of the vector's length at the read-out layer
    # baseline perplexity / cell perplexity: a persona's style alone reads 2-4x as surprising to
    # the plain model (pirate talk: ~4x); broken text reads 10-50x (measured on SmolLM2-135M).
    min_coherence: float = 0.25
    max_repetition_rise: float = 0.1  # share of repeated 3-grams above the baseline's
    # No answer may loop: the worst answer's repeated word 3-grams (sweep_result.word_repetition).
    max_worst_repetition: float = 0.3

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"{name} must be a finite number.")
        if not 0 < self.min_coherence <= 1:
            raise InputError("min_coherence must be in (0, 1].")
        if self.margin <= 0:
            raise InputError("margin must be positive.")
        if self.max_repetition_rise < 0:
            raise InputError("max_repetition_rise must not be negative.")
        if not 0 <= self.max_worst_repetition <= 1:
            raise InputError("max_worst_repetition must be in [0, 1].")


@dataclass(frozen=True)
class SweepConfig:
    layers: tuple[int, ...]
    strengths: tuple[float, ...]
    max_new_tokens: int = 48
    positions: Positions = "all"
    system: str | None = None
    read_layer: int | None = None  # None: the vector's recorded layer, else its best layer
    batch_size: int = 16
    max_prompt_tokens: int | None = None
    criteria: Criteria = field(default_factory=Criteria)
    # The app's decoding defaults, so a sweep measures what a visitor will see.
    temperature: float = DEFAULT_TEMPERATURE
    frequency_penalty: float = DEFAULT_FREQUENCY_PENALTY
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.layers or not self.strengths:
            raise InputError("A sweep needs at least one layer and one strength.")
        if len(self.layers) > MAX_SWEEP_GRID_AXIS or len(self.strengths) > MAX_SWEEP_GRID_AXIS:
            raise InputError(
                f"At most {MAX_SWEEP_GRID_AXIS} layers and {MAX_SWEEP_GRID_AXIS} strengths."
            )
        for s in self.strengths:
            if not isinstance(s, (int, float)) or not math.isfinite(s):
                raise InputError(f"Strength {s!r} is not a finite number.")
        check_max_new_tokens(self.max_new_tokens)
        check_int(self.batch_size, "batch_size", 1)
        check_temperature(self.temperature)
        check_penalty(self.frequency_penalty)
        check_seed(self.seed)
        object.__setattr__(self, "positions", check_positions(self.positions))
        object.__setattr__(self, "layers", tuple(int(x) for x in dict.fromkeys(self.layers)))
        object.__setattr__(
            self, "strengths", tuple(float(x) for x in dict.fromkeys(self.strengths))
        )


# The default grid's strengths, in units of the vector's recorded strength. An extraction's
# strength is set on the strong side (personas.extract.recommend_strength: the built-ins' sweeps
# kept 0.4x-0.9x of it), and text loops past about 2x; with 0.5x-4x, 6 of the 8 built-ins got
# the grid's weakest strength and a freshly extracted knight rose only where it looped. So the
# grid reaches down to 0.25x and stops at 2x: still four steered strengths (strength 0 is the
# baseline, generated once), so the quick sweep costs what it did.
DEFAULT_MULTIPLES = (0.0, 0.25, 0.5, 1.0, 2.0)
SELECT_PROMPTS = Path(__file__).resolve().parents[2] / "assets" / "sweep" / "select_prompts.txt"


def default_grid(
    vec: PersonaVector, n_layers: int, fallback_strength: float = 4.0, n_layer_steps: int = 4
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """A first grid around what the vector records: ``n_layer_steps`` layers a tenth of the
    model apart around its layer (14 of 30: 8, 11, 14, 17), and :data:`DEFAULT_MULTIPLES` of its
    strength (0, 0.25x, 0.5x, 1x, 2x; ``fallback_strength`` when it records none)."""
    centre = vec.layer if vec.layer is not None else vec.best_layer
    if centre is None or not 0 <= centre < n_layers:
        centre = (2 * n_layers) // 3
    step = max(1, n_layers // 10)
    half = n_layer_steps // 2
    layers = sorted(
        {min(n_layers - 1, max(0, centre + k * step)) for k in range(-half, n_layer_steps - half)}
    )
    unit = vec.strength if vec.strength else fallback_strength
    return tuple(layers), tuple(round(m * unit, 4) for m in DEFAULT_MULTIPLES)


QUICK_PROMPTS = 4
QUICK_MAX_NEW_TOKENS = 32


def quick_sweep_setup(
    vec: PersonaVector, n_layers: int, max_prompt_tokens: int | None = None
) -> tuple[tuple[str, ...], SweepConfig]:
    """The small sweep offered after an extraction: the first :data:`QUICK_PROMPTS` shipped
    selection prompts, :func:`default_grid`, :data:`QUICK_MAX_NEW_TOKENS` new tokens (about a
    minute for the embedded model on 2 cores)."""
    layers, strengths = default_grid(vec, n_layers)
    prompts = read_prompts(SELECT_PROMPTS)[:QUICK_PROMPTS]
    cfg = SweepConfig(
        layers=layers,
        strengths=strengths,
        max_new_tokens=QUICK_MAX_NEW_TOKENS,
        max_prompt_tokens=max_prompt_tokens,
    )
    return prompts, cfg
