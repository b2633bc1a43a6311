"""Chat samples from JSONL and CSV files: the one reader behind screening and fine-tuning.

Input (:func:`read_samples`): JSONL with chat ``messages`` (the last message is the assistant's
response; a leading ``system`` message is honoured; earlier turns are the prompt), or JSONL/CSV
with ``prompt`` and ``response`` (and optionally ``system``) fields. Files are hostile: the size
is checked before anything is read, every line and row is checked on its own, and a malformed
one is reported (a :class:`RowProblem` with its line number) and skipped without losing the
rest. The bounds are :mod:`persona_explorer.core.limits`' ``MAX_DATA_*`` and ``MAX_SAMPLE_*``.

Samples stream: :func:`read_samples` reads a line at a time as it is consumed,
:class:`CappedSamples` stops after the first ``limit`` samples, :func:`open_samples` checks a
file and counts its lines before a long run (so its errors come first), and
:func:`first_samples` keeps the first samples of a file in memory. :func:`system_prompt` is how
a sample's system turn is joined with a context put before every sample (inoculation), the same
for screening and for training.

Imports: :mod:`persona_explorer.core` (errors, limits) and the engine's ``ChatMessage``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from persona_explorer.core.errors import InputError
from persona_explorer.core.fileio import DataFormat
from persona_explorer.core.limits import (
    MAX_DATA_BYTES,
    MAX_DATA_LINE_BYTES,
    MAX_DATA_ROWS,
    MAX_SAMPLE_CHARS,
    MAX_SAMPLE_MESSAGES,
)
from persona_explorer.engine.model import ChatMessage

__all__ = [
    "MAX_PROBLEMS_KEPT",
    "CappedSamples",
    "DataFormatChoice",
    "FirstSamples",
    "RowProblem",
    "Sample",
    "SampleFile",
    "count_lines",
    "data_format",
    "first_samples",
    "open_samples",
    "read_samples",
    "system_prompt",
]

# Not a limit on input: how many skipped lines a result keeps with their line numbers (memory);
# the rest are only counted.
MAX_PROBLEMS_KEPT = 1000

# A data file's format as asked for: one of the two, or "auto" (by the file name, then sniffed).
DataFormatChoice = DataFormat | Literal["auto"]
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Sample:
    """One training sample; ``line`` is where it starts in its file (1-based)."""

    line: int
    prompt: tuple[ChatMessage, ...]  # the turns before the response (user/assistant, no system)
    response: str
    system: str | None = None
    # The record as read, for exports: a JSON object (JSONL) or the row by column (CSV).
    record: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def question(self) -> str:
        """The user turn the response answers."""
        users = [m.content for m in self.prompt if m.role == "user"]
        return users[-1] if users else ""


@dataclass(frozen=True)
class RowProblem:
    """A line or row that was skipped, and why (in words a user can act on)."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def _text_of(content: Any) -> str | None:
    """A message's text: a string, or OpenAI-style text parts; None if it is neither."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    return None


def _chat_sample(line: int, messages: Any, record: dict[str, Any]) -> Sample | RowProblem:
    if not isinstance(messages, list) or not messages:
        return RowProblem(line, "'messages' must be a non-empty list of {role, content} objects")
    if len(messages) > MAX_SAMPLE_MESSAGES:
        return RowProblem(line, f"{len(messages)} messages; at most {MAX_SAMPLE_MESSAGES} are read")
    turns: list[ChatMessage] = []
    for i, msg in enumerate(messages, 1):
        if not isinstance(msg, dict) or msg.get("role") not in _ROLES:
            return RowProblem(
                line, f"message {i} needs a 'role' of system, user or assistant and a 'content'"
            )
        text = _text_of(msg.get("content"))
        if text is None:
            return RowProblem(line, f"message {i}'s 'content' is not text")
        turns.append(ChatMessage(role=msg["role"], content=text))
    system = None
    if turns[0].role == "system":
        system, turns = turns[0].content, turns[1:]
    if any(t.role == "system" for t in turns):
        return RowProblem(line, "a system message may only come first")
    if not turns or turns[-1].role != "assistant":
        return RowProblem(line, "the last message must be the assistant's response")
    if not any(t.role == "user" for t in turns[:-1]):
        return RowProblem(line, "no user message before the assistant's response")
    return Sample(line, tuple(turns[:-1]), turns[-1].content, system or None, record)


def _flat_sample(line: int, record: dict[str, Any]) -> Sample | RowProblem:
    prompt, response, system = (record.get(k) for k in ("prompt", "response", "system"))
    if not isinstance(prompt, str) or not isinstance(response, str):
        return RowProblem(line, "'prompt' and 'response' must both be text")
    if system is not None and not isinstance(system, str):
        return RowProblem(line, "'system' must be text")
    if not prompt.strip():
        return RowProblem(line, "the prompt is empty")
    return Sample(line, (ChatMessage("user", prompt),), response, system or None, record)


def _checked(sample: Sample | RowProblem) -> Sample | RowProblem:
    if isinstance(sample, RowProblem):
        return sample
    if not sample.response.strip():
        return RowProblem(sample.line, "the response is empty")
    chars = (
        len(sample.response) + len(sample.system or "") + sum(len(m.content) for m in sample.prompt)
    )
    if chars > MAX_SAMPLE_CHARS:
        return RowProblem(
            sample.line, f"{chars:,} characters; a sample may have at most {MAX_SAMPLE_CHARS:,}"
        )
    return sample


def _record_sample(line: int, record: Any) -> Sample | RowProblem:
    if not isinstance(record, dict):
        return RowProblem(line, "expected a JSON object")
    if "messages" in record:
        return _checked(_chat_sample(line, record["messages"], record))
    if "prompt" in record or "response" in record:
        return _checked(_flat_sample(line, record))
    return RowProblem(line, "needs 'messages', or 'prompt' and 'response'")


def _lines(fh: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) per physical line; None for a line over :data:`MAX_DATA_LINE_BYTES`,
    whose rest is skipped without being held in memory."""
    number = 0
    while True:
        chunk = fh.readline(MAX_DATA_LINE_BYTES + 1)
        if not chunk:
            return
        number += 1
        if len(chunk) > MAX_DATA_LINE_BYTES:
            while chunk and not chunk.endswith(b"\n"):
                chunk = fh.readline(MAX_DATA_LINE_BYTES)
            yield number, None
            continue
        yield number, chunk


_TOO_LONG = f"line longer than {MAX_DATA_LINE_BYTES // (1024 * 1024)} MiB"


def _read_jsonl(fh: BinaryIO) -> Iterator[Sample | RowProblem]:
    rows = 0
    for number, raw in _lines(fh):
        if raw is None:
            yield RowProblem(number, _TOO_LONG)
            continue
        if not raw.strip():
            continue
        rows += 1
        if rows > MAX_DATA_ROWS:
            yield RowProblem(number, f"more than {MAX_DATA_ROWS:,} samples; the rest was not read")
            return
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            yield RowProblem(number, "not UTF-8 text")
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield RowProblem(number, f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        except RecursionError:
            yield RowProblem(number, "not valid JSON (nested too deeply)")
            continue
        yield _record_sample(number, record)


class _DecodedLines:
    """Physical lines as text for the csv module, remembering which could not be decoded."""

    def __init__(self, fh: BinaryIO) -> None:
        self._lines = _lines(fh)
        self.bad: dict[int, str] = {}  # line number -> reason
        self.number = 0

    def __iter__(self) -> Iterator[str]:
        for number, raw in self._lines:
            self.number = number
            if raw is None:
                self.bad[number] = _TOO_LONG
                yield "\n"
                continue
            try:
                yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                self.bad[number] = "not UTF-8 text"
                yield raw.decode("utf-8", errors="replace")


def _read_csv(fh: BinaryIO) -> Iterator[Sample | RowProblem]:
    lines = _DecodedLines(fh)
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(
            "The CSV file is empty: it needs a header row with prompt and response."
        ) from None
    except csv.Error as exc:
        raise InputError(f"Cannot read the CSV header: {exc}.") from None
    names = [h.strip().lower() for h in header]
    if "prompt" not in names or "response" not in names or lines.bad:
        shown = ", ".join(repr(h[:30]) for h in header[:8])
        raise InputError(
            "A CSV file needs a header row with 'prompt' and 'response' columns (and optionally "
            f"'system'); its first row is {shown or 'empty'}."
        )
    rows = 0
    while True:
        start = lines.number + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield RowProblem(start, f"malformed CSV ({exc})")
            continue
        if not row or not any(cell.strip() for cell in row):
            continue
        rows += 1
        if rows > MAX_DATA_ROWS:
            yield RowProblem(start, f"more than {MAX_DATA_ROWS:,} samples; the rest was not read")
            return
        bad = [reason for n, reason in lines.bad.items() if start <= n <= lines.number]
        lines.bad.clear()
        if bad:
            yield RowProblem(start, bad[0])
        elif len(row) != len(names):
            yield RowProblem(start, f"{len(row)} fields; the header has {len(names)}")
        else:
            record = dict(zip(header, row, strict=True))
            flat = dict(zip(names, row, strict=True))
            flat["system"] = flat.get("system") or None
            sample = _flat_sample(start, flat)
            if isinstance(sample, Sample):
                sample = Sample(sample.line, sample.prompt, sample.response, sample.system, record)
            yield _checked(sample)


def data_format(path: Path, fmt: DataFormatChoice) -> DataFormat:
    """How ``path`` is read: ``fmt`` unless "auto"; else by its extension (``.jsonl``, ``.json``,
    ``.ndjson``; ``.csv``), else by its first character. A JSON array is refused."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    suffix = path.suffix.lower()
    kind: DataFormat
    if fmt != "auto":
        kind = fmt
    elif suffix in (".jsonl", ".json", ".ndjson"):
        kind = "jsonl"
    elif suffix == ".csv":
        kind = "csv"
    else:
        kind = "jsonl" if head.startswith(b"{") else "csv"
    if kind == "jsonl" and head.startswith(b"["):
        # One JSON array would be one enormous, unreadable line: say what is expected instead.
        raise InputError(
            f"{path.name} holds a JSON array; screening reads JSONL: one JSON object per line."
        )
    return kind


def _check_size(path: Path, max_bytes: int) -> None:
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(
            f"{path.name} is {size / 2**20:,.1f} MiB; the limit is {max_bytes / 2**20:,.0f} MiB. "
            "Split the file and screen the parts."
        )


def read_samples(
    path: str | Path, max_bytes: int = MAX_DATA_BYTES, fmt: DataFormatChoice = "auto"
) -> Iterator[Sample | RowProblem]:
    """Stream the samples of a data file, with a :class:`RowProblem` for each skipped line.

    The size is checked now (an :class:`InputError` before anything is read); the lines are
    read as the iterator is consumed, one at a time. ``fmt="auto"``: by the file's extension
    (``.jsonl``/``.json``/``.ndjson``, ``.csv``), else by its first character.
    """
    path = Path(path)
    _check_size(path, max_bytes)
    kind = data_format(path, fmt)

    def stream() -> Iterator[Sample | RowProblem]:
        with open(path, "rb") as fh:
            yield from (_read_jsonl(fh) if kind == "jsonl" else _read_csv(fh))

    it = stream()
    if kind == "csv":
        # Read the header now, so a file that is not a dataset fails at once, not mid-run.
        first = next(it, None)
        return iter(()) if first is None else _chain(first, it)
    return it


def _chain(
    first: Sample | RowProblem, rest: Iterator[Sample | RowProblem]
) -> Iterator[Sample | RowProblem]:
    yield first
    yield from rest


def count_lines(path: str | Path, max_bytes: int = MAX_DATA_BYTES) -> int:
    """Non-blank lines of a file (an upper bound on its samples), for progress."""
    path = Path(path)
    _check_size(path, max_bytes)
    count = 0
    with open(path, "rb") as fh:
        for _number, raw in _lines(fh):
            count += raw is None or bool(raw.strip())
    return count


def system_prompt(sample: Sample, context: str | None) -> str | None:
    """The system turn ``sample`` is read with: ``context`` (inoculation) first, the sample's
    own system prompt after it, in one turn; None when neither has text."""
    parts = [p for p in (context, sample.system) if p and p.strip()]
    return "\n\n".join(parts) if parts else None


@dataclass
class SampleFile:
    """A data file ready to stream: its size checked, its lines counted (an upper bound on its
    samples, for progress) and, for CSV, its header read."""

    path: Path
    total: int
    samples: Iterator[Sample | RowProblem]


def open_samples(
    path: str | Path, max_bytes: int = MAX_DATA_BYTES, fmt: DataFormatChoice = "auto"
) -> SampleFile:
    """Check and open a data file before a long run, so a file that cannot be read fails first
    (see :func:`read_samples`)."""
    total = count_lines(path, max_bytes)
    return SampleFile(Path(path), total, read_samples(path, max_bytes, fmt))


class CappedSamples:
    """The first ``limit`` samples of a stream (skipped lines among them pass through);
    ``more`` turns true when the stream had another sample after them. The stream's file is
    closed when the iteration ends."""

    def __init__(self, items: Iterator[Sample | RowProblem], limit: int) -> None:
        self._items = items
        self.limit = limit
        self.more = False

    def __iter__(self) -> Iterator[Sample | RowProblem]:
        taken = 0
        try:
            for item in self._items:
                if isinstance(item, Sample):
                    if taken >= self.limit:
                        self.more = True
                        return
                    taken += 1
                yield item
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()  # the file is closed now, not when the generator is collected


@dataclass(frozen=True)
class FirstSamples:
    """The first samples of a file, the lines skipped among those read, and whether the file
    had more samples than were taken."""

    samples: list[Sample]
    problems: list[RowProblem]
    more: bool


def first_samples(
    path: str | Path,
    limit: int,
    max_bytes: int = MAX_DATA_BYTES,
    max_problems: int | None = None,
) -> FirstSamples:
    """The first ``limit`` samples of a data file in memory (``max_problems``: skipped lines
    kept, the rest dropped; None: all)."""
    capped = CappedSamples(read_samples(path, max_bytes), limit)
    samples: list[Sample] = []
    problems: list[RowProblem] = []
    for item in capped:
        if isinstance(item, Sample):
            samples.append(item)
        elif max_problems is None or len(problems) < max_problems:
            problems.append(item)
    return FirstSamples(samples, problems, capped.more)
