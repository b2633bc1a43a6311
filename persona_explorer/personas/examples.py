"""Persona vectors from written example texts: contrastive pairs read teacher-forced.

Extraction from rollouts (:mod:`.extract`) needs the model to act out a system prompt. A 135M
model barely does for some traits, so the two sides of its rollouts differ little and the vector
is weak. Here the two sides are written instead: for each everyday question, one answer that
speaks unmistakably in the persona's voice (``trait``) and one that says the same thing plainly
(``neutral``). The model reads both, teacher-forced (:mod:`.forced`), and the vector at each
layer is the mean over trait answers of their answer-token mean residual minus the same over
neutral answers: the persona_vectors recipe applied to written texts, i.e. contrastive activation
addition with paired examples as repeng's datasets build them. Because both texts of a pair
answer the same question with similar content and length, what differs is how they speak.

Example files are JSON Lines, one ``{"question": ..., "trait": ..., "neutral": ...}`` object a
line (extra fields are ignored), or CSV with those three columns. Files are treated as hostile:
the size is checked before reading, the number of pairs and each text's length are capped, a
malformed line is reported with its number and skipped, and a file with nothing usable left is
refused. The project ships a file per built-in persona in ``assets/personas/examples``.

Imports: torch, :mod:`.errors`, :mod:`.extract` (the math, the layer and strength rules),
:mod:`.forced`, :mod:`.limits`, :mod:`.model`, :mod:`.projection`, :mod:`.vectors`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.fileio import DataFormat
from persona_explorer.core.limits import (
    DEFAULT_LIMITS,
    MAX_BATCH_SIZE,
    MAX_EXAMPLE_FILE_BYTES,
    MAX_EXAMPLE_PAIRS,
    check_int,
    check_prompt_tokens,
)
from persona_explorer.engine.model import LoadedModel
from persona_explorer.personas.extract import (
    ProgressFn,
    mean_difference,
    residual_norms,
    separation_scores,
    strength_metadata,
    suggest_layer,
)
from persona_explorer.steering.forced import ForcedRow, chat_row, forced_pass
from persona_explorer.vectors.persona_vector import PersonaVector

__all__ = [
    "FIELDS",
    "MAX_EXAMPLE_CHARS",
    "ExamplePair",
    "ExampleSet",
    "ExamplesResult",
    "builtin_example_names",
    "builtin_examples",
    "examples_dir",
    "extract_from_examples",
    "pair_activations",
    "parse_examples",
    "read_examples",
]

FIELDS = ("question", "trait", "neutral")
MAX_EXAMPLE_CHARS = DEFAULT_LIMITS.max_prompt_chars
# Problems kept for the report (an implementation cap, not a limit on input): a file of a
# million bad lines should not make a million messages.
_PROBLEMS_KEPT = 50

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class ExamplePair:
    """One question answered twice: in the persona's voice and plainly."""

    question: str
    trait: str
    neutral: str

    def __post_init__(self) -> None:
        for name in FIELDS:
            problem = _text_problem(getattr(self, name), name)
            if problem:
                raise InputError(f"Example pair: {problem}.")


@dataclass
class ExampleSet:
    """The usable pairs of an example file and what was wrong with the rest."""

    name: str  # the file's stem, or "inline"
    pairs: tuple[ExamplePair, ...]
    # (line number, message) for each skipped line, at most _PROBLEMS_KEPT of them
    problems: list[tuple[int, str]] = field(default_factory=list)
    skipped: int = 0  # skipped lines in all, including those beyond _PROBLEMS_KEPT
    source: str = "inline"  # the file name (no directories), for a vector's metadata


@dataclass
class ExamplesResult:
    vector: PersonaVector
    seconds: float
    n_pairs: int
    # R(L) per layer over the neutral answers, the scale the strength is set against.
    residual_norms: tuple[float, ...] = ()


# ---------------------------------------------------------------------------------------------
# Reading example files


def _describe(value: object) -> str:
    return "null" if value is None else type(value).__name__.replace("dict", "object")


def _text_problem(value: object, name: str, max_chars: int = MAX_EXAMPLE_CHARS) -> str | None:
    if not isinstance(value, str):
        return f"'{name}' must be a string, got {_describe(value)}"
    if not value.strip():
        return f"'{name}' is empty"
    if len(value) > max_chars:
        return f"'{name}' is {len(value):,} characters long; the limit is {max_chars:,}"
    return None


def _pair_from(record: dict[str, Any]) -> tuple[ExamplePair | None, str | None]:
    missing = [f for f in FIELDS if f not in record]
    if missing:
        return None, "missing " + ", ".join(f"'{f}'" for f in missing)
    for name in FIELDS:
        problem = _text_problem(record[name], name)
        if problem:
            return None, problem
    return ExamplePair(*(record[f].strip() for f in FIELDS)), None


class _Collector:
    def __init__(self, max_pairs: int, what: str) -> None:
        self.max_pairs = max_pairs
        self.what = what
        self.pairs: list[ExamplePair] = []
        self.problems: list[tuple[int, str]] = []
        self.skipped = 0

    def add(self, line_no: int, pair: ExamplePair | None, problem: str | None) -> None:
        if pair is None:
            self.skipped += 1
            if len(self.problems) < _PROBLEMS_KEPT:
                self.problems.append((line_no, problem or "unusable"))
            return
        if len(self.pairs) >= self.max_pairs:
            raise InputError(
                f"{self.what} has more than {self.max_pairs:,} example pairs (line {line_no}); "
                f"the limit is {self.max_pairs:,}. Use fewer pairs."
            )
        self.pairs.append(pair)


def _parse_jsonl(text: str, out: _Collector) -> None:
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:  # deep nesting raises RecursionError
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            out.add(line_no, None, f"not valid JSON ({msg})")
            continue
        if not isinstance(record, dict):
            out.add(line_no, None, f"expected a JSON object, got {_describe(record)}")
            continue
        out.add(line_no, *_pair_from(record))


def _parse_csv(text: str, out: _Collector) -> None:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise InputError(f"{out.what}: the CSV header cannot be read ({exc}).") from exc
    names = [h.strip().lower() for h in header or []]
    missing = [f for f in FIELDS if f not in names]
    if missing:
        raise InputError(
            f"{out.what}: the CSV header needs the columns question, trait and neutral; "
            f"missing {', '.join(missing)}."
        )
    column = {f: names.index(f) for f in FIELDS}
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # The reader cannot resynchronise inside a broken quoted field: keep what came before.
            out.add(reader.line_num, None, f"CSV error ({exc}); the rest of the file is skipped")
            break
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(names):
            out.add(reader.line_num, None, f"{len(row)} columns; the header has {len(names)}")
            continue
        out.add(reader.line_num, *_pair_from({f: row[i] for f, i in column.items()}))


def parse_examples(
    text: str,
    fmt: DataFormat = "jsonl",
    *,
    name: str = "inline",
    max_pairs: int = MAX_EXAMPLE_PAIRS,
) -> ExampleSet:
    """Example pairs from ``text`` (JSON Lines or CSV); see the module doc for the rules.

    Malformed lines are skipped and listed in ``problems``; raises :class:`InputError` when no
    pair is usable or there are more than ``max_pairs``."""
    if fmt not in ("jsonl", "csv"):
        raise InputError(f"Example format must be 'jsonl' or 'csv', got {fmt!r}.")
    max_pairs = check_int(max_pairs, "max_pairs", 1)
    what = "The examples" if name == "inline" else f"Example file {name!r}"
    out = _Collector(max_pairs, what)
    (_parse_csv if fmt == "csv" else _parse_jsonl)(text, out)
    if not out.pairs:
        shown = "; ".join(f"line {n}: {m}" for n, m in out.problems[:3])
        raise InputError(
            f"{what} holds no usable example pair"
            + (f" ({shown})" if shown else " (it is empty)")
            + '. Each line needs {"question": ..., "trait": ..., "neutral": ...} with '
            "non-empty strings."
        )
    return ExampleSet(name, tuple(out.pairs), out.problems, out.skipped)


def _sniff_format(path: Path, text: str) -> DataFormat:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    return "jsonl" if text.lstrip().startswith("{") else "csv"


def read_examples(
    path: str | os.PathLike[str],
    max_bytes: int = MAX_EXAMPLE_FILE_BYTES,
    max_pairs: int = MAX_EXAMPLE_PAIRS,
) -> ExampleSet:
    """Read an example file (``.jsonl`` or ``.csv``; other names are sniffed by content).

    The size is checked before anything is read, and at most ``max_bytes + 1`` bytes are ever
    read (the file may grow in between)."""
    p = Path(path)
    label = p.name
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise InputError(
                f"Example file {label!r} is {size:,} bytes; the limit is {max_bytes:,}. "
                "Use fewer or shorter examples."
            )
        with p.open("rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(f"Cannot read example file {label!r}: {exc.strerror or exc}.") from exc
    if len(raw) > max_bytes:
        raise InputError(f"Example file {label!r} is over the limit of {max_bytes:,} bytes.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"Example file {label!r} is not UTF-8 text (bad byte at offset {exc.start:,}). "
            "Save it as UTF-8."
        ) from exc
    result = parse_examples(text, _sniff_format(p, text), name=p.stem, max_pairs=max_pairs)
    result.source = label
    return result


def examples_dir() -> Path:
    """``assets/personas/examples`` of this checkout: the shipped example files."""
    return Path(__file__).resolve().parents[2] / "assets" / "personas" / "examples"


def builtin_example_names() -> list[str]:
    """The personas with a shipped example file, sorted."""
    d = examples_dir()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.jsonl") if _SAFE_NAME.match(p.stem))


def builtin_examples(name: str) -> Path | None:
    """The shipped example file of persona ``name``, or None. Only names from
    :func:`builtin_example_names` resolve, so no name reaches outside the directory."""
    if not isinstance(name, str) or name not in builtin_example_names():
        return None
    return examples_dir() / f"{name}.jsonl"


# ---------------------------------------------------------------------------------------------
# Extraction


def _rows(
    model: LoadedModel,
    pairs: Sequence[ExamplePair],
    system: str | None,
    max_prompt_tokens: int | None,
) -> list[ForcedRow]:
    """Rows 2i (trait) and 2i + 1 (neutral) for pair i, each checked against the limits."""
    rows = []
    for i, pair in enumerate(pairs, start=1):
        for side, text in (("trait", pair.trait), ("neutral", pair.neutral)):
            row = chat_row(model, pair.question, text, system)
            check_prompt_tokens(
                len(row.ids),
                0,
                model.context_length,
                max_prompt_tokens,
                what=f"{side} text of example {i} with its question",
            )
            rows.append(row)
    return rows


def pair_activations(
    model: LoadedModel,
    pairs: Sequence[ExamplePair],
    *,
    system: str | None = None,
    batch_size: int = 16,
    last_layer: int | None = None,
    max_prompt_tokens: int | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The answer-token mean residual of every trait and every neutral text, read teacher-forced
    after its question (and ``system``; None: the template's default system prompt).

    Returns (trait, neutral), each [n_pairs, layers, d_model] float32 on the CPU, layers =
    ``n_layers`` or ``last_layer + 1``. Rows run in batches of similar length (less padding);
    ``should_stop`` is honoured between and within batches and raises :class:`InterruptedError`.
    """
    if not pairs:
        raise InputError("No example pairs to read.")
    batch_size = check_int(batch_size, "batch_size", 1, MAX_BATCH_SIZE)
    rows = _rows(model, pairs, system, max_prompt_tokens)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
    n_read = model.n_layers if last_layer is None else last_layer + 1
    acts = torch.zeros(len(rows), n_read, model.d_model)
    n_batches = math.ceil(len(rows) / batch_size)
    for b in range(n_batches):
        if should_stop is not None and should_stop():
            raise InterruptedError("Extraction stopped.")
        idx = order[b * batch_size : (b + 1) * batch_size]
        if progress:
            done = b * batch_size
            progress(b / n_batches, f"Reading texts {done + 1}-{done + len(idx)} of {len(rows)}")
        res = forced_pass(
            model,
            [rows[i] for i in idx],
            should_stop=should_stop,
            max_tokens=max_prompt_tokens,
            last_layer=last_layer,
        )
        if res.stopped:
            raise InterruptedError("Extraction stopped.")
        acts[torch.tensor(idx)] = res.span_mean.cpu()
    if progress:
        progress(1.0, "Computing the vector")
    return acts[0::2], acts[1::2]


def extract_from_examples(
    model: LoadedModel,
    name: str,
    pairs: Sequence[ExamplePair],
    *,
    system: str | None = None,
    source: str = "inline",
    description: str | None = None,
    batch_size: int = 16,
    max_prompt_tokens: int | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ExamplesResult:
    """The persona vector of ``pairs`` at every layer (see the module doc).

    Like :func:`.extract.extract_persona`, it records the best-separating layer
    (:func:`.extract.suggest_layer`, on cross-validated separation) and the strength the
    built-ins' rule gives there (:func:`.extract.recommend_strength`, against the neutral
    answers' residual norm). ``source``: the example file's name for the metadata."""
    started = time.perf_counter()
    trait, neutral = pair_activations(
        model,
        pairs,
        system=system,
        batch_size=batch_size,
        max_prompt_tokens=max_prompt_tokens,
        progress=progress,
        should_stop=should_stop,
    )
    vectors = mean_difference(trait, neutral)
    separation, cross_validated = separation_scores(trait, neutral)
    sep = tuple(float(x) for x in separation)
    layer = suggest_layer(sep)
    norms = residual_norms(neutral)
    strength, strength_rule = strength_metadata(vectors, layer, norms)
    seconds = time.perf_counter() - started
    n = len(pairs)
    vector = PersonaVector(
        name=name,
        vectors=vectors,
        model_id=model.model_id,
        variant="custom",
        layer=layer,
        strength=strength,
        separation=sep,
        metadata={
            "method": "examples",
            "examples": source,
            "n_pairs": n,
            "description": description
            or (
                f"Mean difference of {n} written answers in the persona's voice vs {n} plain "
                "answers to the same questions, read teacher-forced (answer-token means)."
            ),
            "system_prompt": system or "(the model's default)",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "separation_cross_validated": cross_validated,
            "strength_rule": strength_rule,
            "seconds": round(seconds, 2),
        },
    )
    return ExamplesResult(vector, seconds, n, tuple(norms.tolist()))
