"""A screening's scores: the result types, their summary, and the scored file written out.

:class:`ScreenResult` holds one :class:`ScoredSample` per sample read (excerpts and a
:class:`VectorScore` per vector: the sample's projection, the model's own answer's, and their
difference), the skipped lines, and the run's counts; :meth:`ScreenResult.summary` ranks the
samples per vector. :func:`column_names` gives each vector a column-safe name.

:func:`write_scores`: CSV or JSONL, the source records with a column per vector and measure
added (``projection_difference_evil``, ...), written atomically; text cells of a CSV are
protected against spreadsheet formulas.

Imports: :mod:`persona_explorer.core` (errors, fileio), :mod:`.samples`, and the
``PersonaVector`` type.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_explorer.core.errors import InputError
from persona_explorer.core.fileio import atomic_write
from persona_explorer.core.limits import MAX_DATA_BYTES
from persona_explorer.training.samples import (
    MAX_PROBLEMS_KEPT,
    DataFormatChoice,
    RowProblem,
    Sample,
    data_format,
    read_samples,
)

if TYPE_CHECKING:
    from persona_explorer.vectors.persona_vector import PersonaVector

__all__ = [
    "ScoredSample",
    "ScreenResult",
    "VectorScore",
    "column_names",
    "score_columns",
    "write_scores",
]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class VectorScore:
    sample_projection: float
    own_projection: float | None  # None: own answers skipped, or the model answered nothing

    @property
    def projection_difference(self) -> float | None:
        if self.own_projection is None:
            return None
        return self.sample_projection - self.own_projection


@dataclass(frozen=True)
class ScoredSample:
    line: int
    prompt: str  # excerpt of the user turn answered
    response: str  # excerpt of the sample's response
    own_response: str | None  # excerpt of the model's own answer (None: skipped)
    response_tokens: int
    scores: dict[str, VectorScore]  # by column name (see column_names)

    def flat(self) -> dict[str, Any]:
        """One table row: the excerpts, then three columns per vector."""
        row: dict[str, Any] = {
            "line": self.line,
            "prompt": self.prompt,
            "response": self.response,
            "own_response": self.own_response,
        }
        row.update(score_columns(self.scores))
        return row


def score_columns(scores: dict[str, VectorScore]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, s in scores.items():
        out[f"sample_projection_{name}"] = s.sample_projection
        out[f"own_projection_{name}"] = s.own_projection
        out[f"projection_difference_{name}"] = s.projection_difference
    return out


@dataclass
class ScreenResult:
    names: tuple[str, ...]  # column names of the vectors, in order
    layer: int
    own: bool
    context: str | None
    rows: list[ScoredSample] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)  # the first MAX_PROBLEMS_KEPT
    n_problems: int = 0
    generated: int = 0  # own answers generated in this run
    cached: int = 0  # own answers taken from the cache
    stopped: bool = False
    seconds: float = 0.0
    # Each vector's length at ``layer`` (for an extracted vector, the distance between its
    # persona's positive and negative answers there): scores divided by it compare across
    # vectors and layers.
    scales: dict[str, float] = field(default_factory=dict)

    def add_problem(self, problem: RowProblem) -> None:
        self.n_problems += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(problem)

    @property
    def score_key(self) -> str:
        """The score that ranks samples: the difference, or the raw projection without own
        answers."""
        return "projection_difference" if self.own else "sample_projection"

    def summary(self, top: int = 5) -> dict[str, dict[str, Any]]:
        """Per vector: the score's count, mean and range, and the ``top`` highest samples."""
        key = self.score_key
        out: dict[str, dict[str, Any]] = {}
        for name in self.names:
            scored = [
                (value, row)
                for row in self.rows
                if (value := getattr(row.scores[name], key)) is not None
            ]
            values = [v for v, _ in scored]
            scored.sort(key=lambda item: item[0], reverse=True)
            out[name] = {
                "score": key,
                "count": len(values),
                "mean": sum(values) / len(values) if values else None,
                "min": min(values, default=None),
                "max": max(values, default=None),
                "top": [
                    {"line": row.line, key: value, "prompt": row.prompt, "response": row.response}
                    for value, row in scored[:top]
                ],
            }
        return out


def column_names(vectors: Sequence[PersonaVector]) -> tuple[str, ...]:
    """A column-safe, unique name per vector (``evil``, ``evil_2``, ``my_trait``)."""
    names: list[str] = []
    for vec in vectors:
        base = re.sub(r"[^A-Za-z0-9_]+", "_", vec.name).strip("_").lower()[:40] or "vector"
        name, n = base, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return tuple(names)


# --------------------------------------------------------------------------- writing


def _csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet will not run as a formula (OWASP's CSV-injection advice):
    text starting with = + - @ or a tab/CR gets a leading apostrophe. Numbers stay numbers."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def _prompt_text(sample: Sample) -> str:
    if len(sample.prompt) == 1:
        return sample.prompt[0].content
    return "\n\n".join(f"{m.role}: {m.content}" for m in sample.prompt)


def write_scores(
    out: str | Path,
    result: ScreenResult,
    *,
    source: str | Path | None = None,
    max_bytes: int = MAX_DATA_BYTES,
    fmt: DataFormatChoice = "auto",
) -> Path:
    """Write the scores as CSV or JSONL (by ``out``'s extension), atomically.

    With ``source`` (the file that was screened), each scored record is written in full with
    the score columns added: a JSONL record keeps its fields, a CSV row its columns; a chat
    record written as CSV becomes ``line, system, prompt, response``. Without it, the kept
    excerpts are written. Skipped lines are not written. Text cells of a CSV are protected
    against spreadsheet formulas (a leading apostrophe, see :func:`_csv_cell`).
    """
    out = Path(out)
    kind = out.suffix.lower()
    if kind not in (".csv", ".jsonl"):
        raise InputError(f"Cannot write {out.name}: the scores file must end in .csv or .jsonl.")
    by_line = {row.line: row for row in result.rows}
    records = _records(result, by_line, source, max_bytes, fmt, as_csv=kind == ".csv")

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            if kind == ".jsonl":
                for rec in records:
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                return
            writer: csv.DictWriter[str] | None = None
            for rec in records:
                if writer is None:
                    writer = csv.DictWriter(fh, fieldnames=list(rec), extrasaction="ignore")
                    writer.writeheader()
                writer.writerow({k: _csv_cell(v) for k, v in rec.items()})

    return atomic_write(out, write)


def _records(
    result: ScreenResult,
    by_line: dict[int, ScoredSample],
    source: str | Path | None,
    max_bytes: int,
    fmt: DataFormatChoice,
    as_csv: bool,
) -> Iterator[dict[str, Any]]:
    if source is None:
        for row in result.rows:
            yield row.flat()
        return
    # CSV columns must be the same on every row: a CSV source keeps its own, anything else is
    # written in one flat form. JSONL keeps each record as it was.
    flatten = as_csv and data_format(Path(source), fmt) != "csv"
    for sample in read_samples(source, max_bytes, fmt):
        if isinstance(sample, RowProblem) or sample.line not in by_line:
            continue
        row = by_line[sample.line]
        added: dict[str, Any] = {}
        if result.own:
            added["own_response"] = row.own_response
        added.update(score_columns(row.scores))
        if flatten:
            base: dict[str, Any] = {
                "line": sample.line,
                "system": sample.system or "",
                "prompt": _prompt_text(sample),
                "response": sample.response,
            }
            yield {**base, **added}
        else:
            yield {**sample.record, **added}
