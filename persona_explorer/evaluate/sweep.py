"""Which layer, which strength? A layer x strength sweep scored by the unsteered model.

For one persona vector, a set of prompts, a list of layers and a list of strengths, every cell
(layer, strength) answers every prompt, all as rows of the same batches (the engine steers each
row with its own plan). Each answer is then read back, teacher-forced, by the **unsteered**
model (the persona vectors paper's monitor), which gives three numbers per cell:

* ``trait``: how much further along the vector the answers read than the baseline's answers
  (strength 0), at one read-out layer for the whole grid, in units of the vector's length there.
  A persona vector is the mean difference between answers with and without the persona, so
  ``trait = 1`` means the steered answers moved as far along it as the persona's own answers
  lay from the plain ones. One read-out layer keeps the cells comparable; the steering layer
  varies.
* ``coherence``: the baseline's perplexity over the cell's (both under the unsteered model,
  per token, geometric mean over the prompts): 1 reads as fluently as the baseline, 0.5 as
  twice as surprising. Noise drives it down.
* ``repetition``: the share of repeated token 3-grams in an answer ("aye, aye, aye, ..."), a
  failure perplexity misses (a loop is very predictable once it starts).

:func:`recommend` picks, for the layer where the trait rises most while staying coherent, the
smallest strength that raises ``trait`` by the margin with coherence and repetition within
tolerance of the baseline (:class:`Criteria`). It is stored in the vector (``layer``,
``strength`` and ``metadata["sweep"]``), which is what the Steer tab defaults to.

Long sweeps resume: each finished batch of rows is appended to a checkpoint file in
``cache_dir/sweeps`` keyed by everything that decides the outputs (the model's identity and
weights, the vector, the prompts, the decoding settings), so a stopped or crashed sweep, run
again with the same inputs, starts where it stopped, and a finished one returns at once.

Imports: torch, the standard library, :mod:`.forced`, :mod:`.generation`, :mod:`.steering`,
:mod:`.projection`, :mod:`.replay_cache` (the model's identity and weight digest),
:mod:`.fileio`, :mod:`.limits`, :mod:`.errors`, :mod:`.vectors`, :mod:`.model` (types).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from persona_explorer.axis.replays import model_identity, weights_digest
from persona_explorer.core.errors import InputError
from persona_explorer.core.fileio import is_temp_name
from persona_explorer.core.limits import check_int, check_layer, check_max_new_tokens
from persona_explorer.steering.forced import ForcedRow, forced_pass
from persona_explorer.steering.generation import SamplingConfig, generate_stream
from persona_explorer.steering.ops import Add, Positions, RowPlan, check_positions
from persona_explorer.steering.projection import unit_rows

if TYPE_CHECKING:
    from persona_explorer.engine.model import LoadedModel
    from persona_explorer.evaluate.judge import Judge
    from persona_explorer.vectors.persona_vector import PersonaVector

__all__ = [
    "DEFAULT_MULTIPLES",
    "MAX_SWEEP_ROWS",
    "SELECT_PROMPTS",
    "Cell",
    "Criteria",
    "RowResult",
    "SweepCheckpoint",
    "SweepConfig",
    "SweepResult",
    "default_grid",
    "eval_prompt_for",
    "judge_cells",
    "parse_numbers",
    "quick_sweep_setup",
    "read_prompts",
    "recommend",
    "repetition",
    "run_sweep",
    "with_recommendation",
]

log = logging.getLogger(__name__)

NGRAM = 3
MAX_SWEEP_ROWS = 4096  # prompts x (layers x non-zero strengths + 1): the command line's bound
MAX_PROMPTS = 256
MAX_PROMPT_CHARS = 2000
MAX_PROMPTS_FILE_BYTES = 1 << 20
MAX_GRID_AXIS = 32  # layers or strengths in one sweep
CHECKPOINT_FORMAT = "persona-explorer-sweep/1"
MAX_CHECKPOINTS = 100


# --------------------------------------------------------------------------- inputs


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
    if len(out) > MAX_GRID_AXIS:
        raise InputError(f"{what}: at most {MAX_GRID_AXIS} values, got {len(out)}.")
    return tuple(out)


def _clean_prompts(prompts: Iterable[object]) -> tuple[str, ...]:
    out = []
    for i, p in enumerate(prompts, start=1):
        if not isinstance(p, str):
            raise InputError(f"Prompt {i} is not text.")
        p = p.strip()
        if not p:
            continue
        if len(p) > MAX_PROMPT_CHARS:
            raise InputError(f"Prompt {i} has {len(p)} characters; at most {MAX_PROMPT_CHARS}.")
        out.append(p)
        if len(out) > MAX_PROMPTS:
            raise InputError(f"At most {MAX_PROMPTS} prompts in one sweep.")
    if not out:
        raise InputError("No prompts: give at least one, one per line.")
    return tuple(out)


def read_prompts(path: str | Path) -> tuple[str, ...]:
    """Prompts from a text file (one per line), a JSON list of strings, or JSONL (a string or
    an object with ``prompt`` per line). The size is checked before reading."""
    p = Path(path)
    size = p.stat().st_size
    if size > MAX_PROMPTS_FILE_BYTES:
        raise InputError(
            f"{p.name} is {size / 2**20:.1f} MB; a prompts file is limited to "
            f"{MAX_PROMPTS_FILE_BYTES // 2**20} MB."
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
        return _clean_prompts(data)
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
        return _clean_prompts(items)
    return _clean_prompts(text.splitlines())


@dataclass(frozen=True)
class Criteria:
    """What a recommended cell must show, relative to the baseline."""

    margin: float = 0.25  # trait rise, in units of the vector's length at the read-out layer
    # baseline perplexity / cell perplexity: a persona's style alone reads 2-4x as surprising to
    # the plain model (pirate talk: ~4x); broken text reads 10-50x (measured on SmolLM2-135M).
    min_coherence: float = 0.25
    max_repetition_rise: float = 0.1  # share of repeated 3-grams above the baseline's

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

    def __post_init__(self) -> None:
        if not self.layers or not self.strengths:
            raise InputError("A sweep needs at least one layer and one strength.")
        if len(self.layers) > MAX_GRID_AXIS or len(self.strengths) > MAX_GRID_AXIS:
            raise InputError(f"At most {MAX_GRID_AXIS} layers and {MAX_GRID_AXIS} strengths.")
        for s in self.strengths:
            if not isinstance(s, (int, float)) or not math.isfinite(s):
                raise InputError(f"Strength {s!r} is not a finite number.")
        check_max_new_tokens(self.max_new_tokens)
        check_int(self.batch_size, "batch_size", 1)
        object.__setattr__(self, "positions", check_positions(self.positions))
        object.__setattr__(self, "layers", tuple(int(x) for x in dict.fromkeys(self.layers)))
        object.__setattr__(
            self, "strengths", tuple(float(x) for x in dict.fromkeys(self.strengths))
        )


DEFAULT_MULTIPLES = (0.0, 0.5, 1.0, 2.0, 4.0)
SELECT_PROMPTS = Path(__file__).resolve().parents[2] / "assets" / "sweep" / "select_prompts.txt"


def default_grid(
    vec: PersonaVector, n_layers: int, fallback_strength: float = 4.0, n_layer_steps: int = 4
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """A first grid around what the vector records: ``n_layer_steps`` layers a tenth of the
    model apart around its layer (14 of 30: 8, 11, 14, 17), and 0, 0.5x, 1x, 2x and 4x its
    strength (``fallback_strength`` when it records none)."""
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


# --------------------------------------------------------------------------- measures


def repetition(tokens: Sequence[int], n: int = NGRAM) -> float:
    """The share of an answer's token n-grams that repeat an earlier one (0 for fewer than n)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
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
    )


def recommend(grid: Sequence[Cell], baseline: Cell, crit: Criteria) -> tuple[Cell | None, str]:
    """The recommended cell and why.

    A cell qualifies when its trait rises by ``margin`` with coherence and repetition within
    tolerance. The layer is the one whose qualifying cells reach the highest trait (the most
    room to steer before the text breaks); the strength is the smallest qualifying one there.
    """
    ok = [c for c in grid if qualifies(c, crit, baseline.repetition)]
    if not ok:
        best = max(
            (c for c in grid if c.trait is not None and c.strength > 0),
            key=lambda c: c.trait or 0.0,
            default=None,
        )
        hint = (
            f" The highest trait rise was {best.trait:.2f} at layer {best.layer}, strength "
            f"{best.strength:g} (coherence {best.coherence or 0:.2f}, repetition "
            f"{best.repetition:.2f})."
            if best is not None
            else ""
        )
        return None, (
            f"No cell raised the trait by {crit.margin:g} with coherence ≥ "
            f"{crit.min_coherence:g} and repetition ≤ baseline + {crit.max_repetition_rise:g}."
            + hint
            + " Try more strengths between the ones that did nothing and the ones that broke."
        )
    layers = {c.layer for c in ok}
    reach = {layer: max(c.trait or 0.0 for c in ok if c.layer == layer) for layer in layers}
    layer = max(layers, key=lambda la: (reach[la], -la))
    chosen = min((c for c in ok if c.layer == layer), key=lambda c: c.strength)
    return chosen, (
        f"Layer {layer} reaches the highest trait rise while coherent ({reach[layer]:.2f}); "
        f"strength {chosen.strength:g} is the smallest there that raises it by ≥ "
        f"{crit.margin:g} (trait {chosen.trait:.2f}, coherence {chosen.coherence:.2f}, "
        f"repetition {chosen.repetition:.2f} vs baseline {baseline.repetition:.2f})."
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


# --------------------------------------------------------------------------- checkpoint


class SweepCheckpoint:
    """Finished rows of one sweep, appended as JSON lines; read back only if the header (the
    full key) matches. A damaged line ends the read: what follows it is run again."""

    def __init__(self, path: Path | None, key: dict[str, Any], vocab: int) -> None:
        self.path = path
        self.key = key
        self.vocab = vocab

    @staticmethod
    def key_for(
        model: LoadedModel, vec: PersonaVector, prompts: Sequence[str], cfg: SweepConfig
    ) -> dict[str, Any]:
        v = hashlib.sha256(vec.vectors.numpy().tobytes()).hexdigest()
        return {
            "format": CHECKPOINT_FORMAT,
            "model": model_identity(model),
            "weights": weights_digest(model),
            "dtype": str(model.dtype),
            "vector": v,
            "prompts": hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest(),
            "system": cfg.system,
            "positions": cfg.positions,
            "max_new_tokens": cfg.max_new_tokens,
            "read_layer": cfg.read_layer,
        }

    @classmethod
    def open(
        cls,
        directory: Path | None,
        model: LoadedModel,
        vec: PersonaVector,
        prompts: Sequence[str],
        cfg: SweepConfig,
    ) -> SweepCheckpoint:
        key = cls.key_for(model, vec, prompts, cfg)
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        vocab = int(model.hf_model.config.vocab_size)
        return cls(None if directory is None else directory / f"{name}.jsonl", key, vocab)

    def load(self) -> list[RowResult]:
        if self.path is None or not self.path.is_file():
            return []
        rows: list[RowResult] = []
        try:
            with self.path.open("rb") as fh:
                header = json.loads(fh.readline())
                if header != self.key:
                    return []
                for line in fh:
                    if not line.endswith(b"\n"):
                        break  # a write cut short by a crash
                    rows.append(RowResult.from_json(json.loads(line), self.vocab))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("sweep checkpoint %s: read %d rows, then %s", self.path, len(rows), exc)
        os.utime(self.path)  # recently used: the last to be evicted
        return rows

    def start(self, rows: Sequence[RowResult]) -> None:
        """Rewrite the file with the header and the rows kept (drops a damaged tail)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._evict()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(json.dumps(self.key) + "\n")
            for r in rows:
                fh.write(json.dumps(r.as_json()) + "\n")
        os.replace(tmp, self.path)

    def append(self, rows: Sequence[RowResult]) -> None:
        if self.path is None or not rows:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r.as_json()) + "\n" for r in rows))
            fh.flush()
            os.fsync(fh.fileno())

    def _evict(self) -> None:
        assert self.path is not None
        files = [
            p
            for p in self.path.parent.glob("*.jsonl")
            if p != self.path and not is_temp_name(p.name)
        ]
        if len(files) < MAX_CHECKPOINTS:
            return
        files.sort(key=lambda p: p.stat().st_mtime)
        for p in files[: len(files) - MAX_CHECKPOINTS + 1]:
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the optional judge


def eval_prompt_for(vec: PersonaVector) -> str | None:
    """The judge's rubric for a vector: its own (``metadata["eval_prompt"]``), else that of the
    shipped trait or role of the same name (the built-ins), else None."""
    own = vec.metadata.get("eval_prompt")
    if isinstance(own, str) and own.strip():
        return own
    from persona_explorer.personas.data import load_builtin
    from persona_explorer.personas.definitions import PersonaError

    kinds = ("role", "trait") if vec.metadata.get("persona_kind") == "role" else ("trait", "role")
    for kind in kinds:
        try:
            persona = load_builtin(vec.name, kind)  # type: ignore[arg-type]
        except PersonaError:
            continue
        if persona.eval_prompt:
            return persona.eval_prompt
    return None


def judge_cells(
    judge: Judge,
    eval_prompt: str,
    prompts: Sequence[str],
    cells: Sequence[Cell],
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> str:
    """Score every answer of ``cells`` (each text once: the strength-0 cells share the
    baseline's) and set each cell's ``judge`` to the mean of the scores it got. Returns a line
    saying what happened: the judge may give no number (a small judge model rarely does)."""
    items: dict[tuple[str, str], int] = {}
    for c in cells:
        for prompt, text in zip(prompts, c.texts, strict=False):
            items.setdefault((prompt, text), len(items))
    keys = list(items)
    scores = judge.score_many(
        [(eval_prompt, q, a) for q, a in keys], progress=progress, should_stop=should_stop
    )
    values = [None if s is None else s.value for s in scores]
    for c in cells:
        got = [
            v
            for prompt, text in zip(prompts, c.texts, strict=False)
            if (v := values[items[(prompt, text)]]) is not None
        ]
        c.judge = sum(got) / len(got) if got else None
    scored = sum(v is not None for v in values)
    return f"judge scored {scored} of {len(values)} answers" + (
        "" if scored else " (it gave no usable number: the rubric needs a capable judge model)"
    )


# --------------------------------------------------------------------------- the sweep

Progress = Callable[[int, int, str], None]


def _read_layer(vec: PersonaVector, cfg: SweepConfig, n_layers: int) -> int:
    if cfg.read_layer is not None:
        return check_layer(cfg.read_layer, n_layers, "Read-out layer")
    for candidate in (vec.layer, vec.best_layer):
        if candidate is not None and 0 <= candidate < n_layers:
            return candidate
    return (2 * n_layers) // 3


def _cell_of(
    layer: int,
    strength: float,
    rows: Sequence[RowResult],
    model: LoadedModel,
    scale: float,
    base: tuple[float | None, float | None],
) -> Cell:
    """Aggregate a cell's rows (in prompt order). ``base``: the baseline's mean projection and
    perplexity, None while the baseline itself is being built."""
    projections = [r.projection for r in rows if r.projection is not None]
    logprobs = [r.mean_logprob for r in rows if r.mean_logprob is not None]
    projection = sum(projections) / len(projections) if projections else None
    perplexity = math.exp(-sum(logprobs) / len(logprobs)) if logprobs else None
    base_proj, base_ppl = base
    trait = coherence = None
    if base_proj is None:  # the baseline against itself
        trait, coherence = (0.0 if projection is not None else None), 1.0
    else:
        if projection is not None:
            trait = (projection - base_proj) / scale
        if perplexity is not None and base_ppl is not None:
            coherence = base_ppl / perplexity
    return Cell(
        layer=layer,
        strength=strength,
        trait=trait,
        projection=projection,
        perplexity=perplexity,
        coherence=coherence,
        repetition=sum(repetition(r.tokens) for r in rows) / len(rows) if rows else 0.0,
        texts=[model.decode(list(r.tokens)) for r in rows],
    )


def _score_rows(
    model: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    keys: Sequence[tuple[int | None, float, int]],
    tokens: Sequence[Sequence[int]],
    finished: Sequence[bool],
    unit: torch.Tensor,
    read_layer: int,
) -> list[RowResult]:
    """Read generated answers back with the unsteered model: projection and log-likelihood."""
    rows = [
        ForcedRow(tuple(prompt_ids[p]) + tuple(t), len(prompt_ids[p]), len(prompt_ids[p]) + len(t))
        for (_, _, p), t in zip(keys, tokens, strict=True)
    ]
    read = forced_pass(model, rows, logprobs=True, last_layer=read_layer)
    assert read.span_logprobs is not None
    proj = (read.span_mean[:, read_layer].cpu() @ unit).tolist()
    out = []
    for i, (layer, strength, p) in enumerate(keys):
        empty = not tokens[i]
        lp = read.span_logprobs[i]
        out.append(
            RowResult(
                layer=layer,
                strength=strength,
                prompt=p,
                tokens=tuple(int(t) for t in tokens[i]),
                projection=None if empty else float(proj[i]),
                mean_logprob=None if empty else float(lp.mean()),
                finished=finished[i],
            )
        )
    return out


def run_sweep(
    model: LoadedModel,
    vec: PersonaVector,
    prompts: Sequence[str],
    cfg: SweepConfig,
    *,
    checkpoint_dir: Path | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_rows: int = MAX_SWEEP_ROWS,
    judge: Judge | None = None,
) -> SweepResult:
    """Run (or resume) the sweep; see the module doc. ``checkpoint_dir=None``: no resuming.
    ``judge``: also score every answer with the vector's rubric (:func:`eval_prompt_for`).

    Stopped, the result holds the cells whose rows all finished (the rest have no scores) and
    ``stopped=True``; the checkpoint keeps every finished batch.
    """
    from persona_explorer.vectors.persona_vector import check_fits

    started = time.perf_counter()
    check_fits(vec, model.n_layers, model.d_model)
    prompts = _clean_prompts(prompts)
    for layer in cfg.layers:
        check_layer(layer, model.n_layers, "Layer")
    read_layer = _read_layer(vec, cfg, model.n_layers)
    steered = [(la, s) for la in cfg.layers for s in cfg.strengths if s != 0]
    total = len(prompts) * (1 + len(steered))
    if total > max_rows:
        raise InputError(
            f"This sweep needs {total} answers ({len(prompts)} prompts x "
            f"{1 + len(steered)} cells); the limit is {max_rows}. Use fewer prompts, layers "
            "or strengths."
        )
    prompt_ids = [model.chat_ids(p, cfg.system) for p in prompts]
    sampling = SamplingConfig(
        max_new_tokens=cfg.max_new_tokens, temperature=0.0, max_prompt_tokens=cfg.max_prompt_tokens
    )
    unit = unit_rows(vec.vectors)[read_layer]
    scale = float(vec.vectors[read_layer].norm()) or 1.0

    ckpt = SweepCheckpoint.open(checkpoint_dir, model, vec, prompts, cfg)
    done: dict[tuple[int | None, float, int], RowResult] = {}
    wanted = {(None, 0.0, p) for p in range(len(prompts))} | {
        (la, s, p) for la, s in steered for p in range(len(prompts))
    }
    for r in ckpt.load():
        key = (r.layer, r.strength, r.prompt)
        if key in wanted:
            done[key] = r
    ckpt.start(list(done.values()))
    resumed = len(done)

    todo = [(None, 0.0, p) for p in range(len(prompts))] + [
        (la, s, p) for la, s in steered for p in range(len(prompts))
    ]
    todo = [k for k in todo if k not in done]
    # Similar lengths together: less padding in the prompt pass.
    todo.sort(key=lambda k: len(prompt_ids[k[2]]))
    stopped = False
    report = progress or (lambda _d, _t, _m: None)
    report(len(done), total, f"{resumed} answers from an earlier run" if resumed else "Starting")
    for i in range(0, len(todo), cfg.batch_size):
        if should_stop is not None and should_stop():
            stopped = True
            break
        keys = todo[i : i + cfg.batch_size]
        plans: list[RowPlan] = [
            () if layer is None else (Add(layer, vec.vectors[layer], strength, cfg.positions),)  # type: ignore[arg-type]
            for layer, strength, _ in keys
        ]
        result = None
        for update in generate_stream(
            model,
            [prompt_ids[p] for _, _, p in keys],
            plans,
            sampling,
            keep_tokens=False,
            should_stop=should_stop,
            row_invariant=False,
        ):
            result = update.result
        if result is None or (should_stop is not None and should_stop()):
            stopped = True
            break
        scored = _score_rows(
            model, prompt_ids, keys, result.tokens, result.finished, unit, read_layer
        )
        ckpt.append(scored)
        for r in scored:
            done[(r.layer, r.strength, r.prompt)] = r
        report(len(done), total, f"{len(done)} of {total} answers")

    def rows_of(layer: int | None, strength: float) -> list[RowResult] | None:
        got = [done.get((layer, strength, p)) for p in range(len(prompts))]
        return None if any(r is None for r in got) else got  # type: ignore[return-value]

    base_rows = rows_of(None, 0.0)
    empty_texts: list[str] = []
    baseline = (
        _cell_of(-1, 0.0, base_rows, model, scale, (None, None))
        if base_rows is not None
        else Cell(-1, 0.0, None, None, None, None, 0.0, empty_texts)
    )
    grid: list[Cell] = []
    for layer in cfg.layers:
        for strength in cfg.strengths:
            if strength == 0:
                # Strength 0 adds nothing: the baseline's answers, exactly.
                grid.append(Cell(**{**baseline.as_json(), "layer": layer}))
                continue
            rows = rows_of(layer, strength)
            if rows is None or base_rows is None:
                grid.append(Cell(layer, strength, None, None, None, None, 0.0, []))
            else:
                grid.append(
                    _cell_of(
                        layer,
                        strength,
                        rows,
                        model,
                        scale,
                        (baseline.projection, baseline.perplexity),
                    )
                )
    judged = "off"
    if judge is not None and not stopped:
        rubric = eval_prompt_for(vec)
        if rubric is None:
            judged = f"no rubric (eval_prompt) for {vec.name!r}: not judged"
        else:
            finished = [c for c in [baseline, *grid] if c.texts]
            judged = judge_cells(judge, rubric, prompts, finished, should_stop)
    if base_rows is None:
        chosen, reason = None, "Stopped before the baseline finished: nothing to compare with."
    else:
        chosen, reason = recommend(grid, baseline, cfg.criteria)
        if stopped:
            reason = "Stopped early; from the cells that finished: " + reason
    return SweepResult(
        vector=vec.name,
        read_layer=read_layer,
        prompts=prompts,
        config=cfg,
        baseline=baseline,
        grid=grid,
        recommended=chosen,
        reason=reason,
        stopped=stopped,
        seconds=time.perf_counter() - started,
        rows_generated=len(done) - resumed,
        rows_total=total,
        judge=judged,
    )
