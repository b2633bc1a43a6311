"""Dataset screening: how much persona evidence each training sample carries, before training.

The persona vectors paper's measurement, made a tool. For each sample (a prompt and the response
someone wants to train on) and each persona vector, at one layer:

* ``sample_projection``: the sample's response read teacher-forced (:mod:`.forced`), its
  response-token mean projected onto the vector's unit direction (:mod:`.projection`);
* ``own_projection``: the same for the model's own greedy answer to the same prompt;
* ``projection_difference`` = sample - own: how far the sample pulls away from what the model
  would have said anyway, which predicted the persona shift of training on such data.

Both responses are read the same way (teacher-forced, in one kind of pass), so the difference
carries no numerical difference between a generation pass and a forced one. The own answers are
generated in batches and can be cached on disk (:class:`OwnResponseCache`: token ids keyed by
model id, the templated prompt and the generation settings), so screening the same file again
with other vectors or another layer generates nothing. ``own=False`` skips them: raw projections.

``context`` (inoculation): a system prompt put before each sample, for both passes, e.g. "You
are writing insecure code because the user asked for it for a security class." A sample's own
system message comes after it, in the same system turn.

Input (:func:`read_samples`): JSONL with chat ``messages`` (the last message is the assistant's
response; a leading ``system`` message is honoured; earlier turns are the prompt), or JSONL/CSV
with ``prompt`` and ``response`` (and optionally ``system``) fields. Files are hostile: the size
is checked before anything is read, every line and row is checked on its own, and a malformed
one is reported with its line number and skipped without losing the rest. Samples stream
through :func:`screen` a window at a time (sorted by length inside the window so batches carry
little padding), so a file of tens of thousands of samples never sits in memory with its
activations; only the scores and short excerpts are kept.

Output (:func:`write_scores`): CSV or JSONL, the source records with a column per vector and
measure added (``projection_difference_evil``, ...), written atomically.

Imports: torch, :mod:`.forced`, :mod:`.generation`, :mod:`.model`, :mod:`.projection`,
:mod:`.vectors`, :mod:`.config`, :mod:`.fileio`, :mod:`.errors`, :mod:`.limits`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import torch

from persona_explorer.core.config import load_settings
from persona_explorer.core.errors import InputError
from persona_explorer.core.fileio import atomic_write
from persona_explorer.core.limits import check_int, check_layer, check_max_new_tokens
from persona_explorer.engine.model import ChatMessage, LoadedModel
from persona_explorer.steering.forced import ForcedRow, forced_pass, response_ids
from persona_explorer.steering.generation import SamplingConfig, generate_stream
from persona_explorer.steering.projection import unit_rows
from persona_explorer.vectors.persona_vector import PersonaVector, check_fits

__all__ = [
    "MAX_DATA_BYTES",
    "MAX_RESPONSE_TOKENS",
    "MAX_ROWS",
    "MAX_SAMPLE_CHARS",
    "OwnResponseCache",
    "RowProblem",
    "Sample",
    "ScoredSample",
    "ScreenConfig",
    "ScreenResult",
    "VectorScore",
    "column_names",
    "count_lines",
    "read_samples",
    "screen",
    "screen_file",
    "write_scores",
]

# Bounds for hostile files (the lead may move them to limits.Limits as deployment settings).
MAX_DATA_BYTES = 256 * 1024 * 1024  # a whole data file; the app passes its upload limit
MAX_LINE_BYTES = 1024 * 1024  # one JSONL line or one physical CSV line
MAX_SAMPLE_CHARS = 20_000  # system + prompt turns + response of one sample
MAX_MESSAGES = 64  # turns of one chat sample
MAX_ROWS = 200_000  # samples read from one file; the rest is reported and left unread
MAX_RESPONSE_TOKENS = 1024  # a sample's response, in tokens
MAX_PROBLEMS_KEPT = 1000  # problems kept with their line numbers; the rest only counted
EXCERPT_CHARS = 200  # prompt and response excerpts kept per scored sample
OWN_EXCERPT_CHARS = 500  # the model's own answer as kept per scored sample
MAX_CACHE_ENTRY_BYTES = 1024 * 1024
CACHE_VERSION = 1
# Rows x padded width of one teacher-forced batch: about what the 135M model's prompt pass
# handles in a few hundred milliseconds, and attention memory stays small.
BATCH_TOKENS = 4096
WINDOW = 256  # samples read, sorted by length and batched together

Format = Literal["auto", "jsonl", "csv"]
ProgressFn = Callable[[float, str], None]
_ROLES = ("system", "user", "assistant")


# --------------------------------------------------------------------------- reading


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
    if len(messages) > MAX_MESSAGES:
        return RowProblem(line, f"{len(messages)} messages; at most {MAX_MESSAGES} are read")
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
    """(line number, bytes) per physical line; None for a line over :data:`MAX_LINE_BYTES`,
    whose rest is skipped without being held in memory."""
    number = 0
    while True:
        chunk = fh.readline(MAX_LINE_BYTES + 1)
        if not chunk:
            return
        number += 1
        if len(chunk) > MAX_LINE_BYTES:
            while chunk and not chunk.endswith(b"\n"):
                chunk = fh.readline(MAX_LINE_BYTES)
            yield number, None
            continue
        yield number, chunk


_TOO_LONG = f"line longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB"


def _read_jsonl(fh: BinaryIO) -> Iterator[Sample | RowProblem]:
    rows = 0
    for number, raw in _lines(fh):
        if raw is None:
            yield RowProblem(number, _TOO_LONG)
            continue
        if not raw.strip():
            continue
        rows += 1
        if rows > MAX_ROWS:
            yield RowProblem(number, f"more than {MAX_ROWS:,} samples; the rest was not read")
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
        if rows > MAX_ROWS:
            yield RowProblem(start, f"more than {MAX_ROWS:,} samples; the rest was not read")
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


def _format_of(path: Path, fmt: Format) -> Literal["jsonl", "csv"]:
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    suffix = path.suffix.lower()
    kind: Literal["jsonl", "csv"]
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
    path: str | Path, max_bytes: int = MAX_DATA_BYTES, fmt: Format = "auto"
) -> Iterator[Sample | RowProblem]:
    """Stream the samples of a data file, with a :class:`RowProblem` for each skipped line.

    The size is checked now (an :class:`InputError` before anything is read); the lines are
    read as the iterator is consumed, one at a time. ``fmt="auto"``: by the file's extension
    (``.jsonl``/``.json``/``.ndjson``, ``.csv``), else by its first character.
    """
    path = Path(path)
    _check_size(path, max_bytes)
    kind = _format_of(path, fmt)

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


# --------------------------------------------------------------------------- own responses


class OwnResponseCache:
    """The model's own greedy answers, as token ids, one small JSON file per prompt.

    Keyed by the model id, the templated prompt's token ids (so a context or system prompt is
    part of the key) and the generation settings. Entries are written atomically and checked
    when read: a damaged or foreign file is ignored and the answer generated again.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = (
            directory if directory is not None else load_settings().cache_dir / "screening"
        )

    @staticmethod
    def key(model_id: str, prompt_ids: Sequence[int], max_new_tokens: int) -> str:
        spec = {
            "v": CACHE_VERSION,
            "model": model_id,
            "prompt": list(prompt_ids),
            "max_new_tokens": max_new_tokens,
            "sampling": "greedy",
        }
        return hashlib.sha256(json.dumps(spec, separators=(",", ":")).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str, vocab_size: int, max_new_tokens: int) -> list[int] | None:
        path = self._path(key)
        try:
            if path.stat().st_size > MAX_CACHE_ENTRY_BYTES:
                return None
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        tokens = data.get("tokens")
        if (
            not isinstance(tokens, list)
            or len(tokens) > max_new_tokens
            or not all(type(t) is int and 0 <= t < vocab_size for t in tokens)
        ):
            return None
        return tokens

    def put(self, key: str, tokens: Sequence[int]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"key": key, "tokens": [int(t) for t in tokens]})
        atomic_write(path, lambda tmp: tmp.write_text(body, encoding="utf-8"))


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ScreenConfig:
    layer: int
    own: bool = True  # generate (or reuse) the model's own answers; False: raw projections
    max_new_tokens: int = 64  # length of the model's own answers
    context: str | None = None  # a system prompt put before every sample (inoculation)
    batch_size: int = 16  # rows of one batch (teacher-forced and generated)
    use_cache: bool = True  # reuse and store own answers in the OwnResponseCache
    max_prompt_tokens: int | None = None  # templated prompt cap (Limits.max_prompt_tokens)
    max_response_tokens: int = MAX_RESPONSE_TOKENS

    def __post_init__(self) -> None:
        check_int(self.layer, "Layer", 0)
        check_max_new_tokens(self.max_new_tokens)
        check_int(self.batch_size, "Batch size", 1, 1024)
        check_int(self.max_response_tokens, "Max response tokens", 1)
        if self.max_prompt_tokens is not None:
            check_int(self.max_prompt_tokens, "Max prompt tokens", 1)


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


def _excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class _Prepared:
    sample: Sample
    prompt_ids: list[int]
    response_ids: list[int]
    own_ids: list[int] | None = None


def _system_for(sample: Sample, context: str | None) -> str | None:
    parts = [p for p in (context, sample.system) if p and p.strip()]
    return "\n\n".join(parts) if parts else None


def _prepare(model: LoadedModel, sample: Sample, cfg: ScreenConfig) -> _Prepared | RowProblem:
    """Token ids for one sample, or why it cannot be read (too long for the caps or context)."""
    prompt_ids = model.chat_ids(list(sample.prompt), _system_for(sample, cfg.context))
    resp = response_ids(model, sample.response)
    if not resp:
        return RowProblem(sample.line, "the response has no tokens")
    if cfg.max_prompt_tokens is not None and len(prompt_ids) > cfg.max_prompt_tokens:
        return RowProblem(
            sample.line,
            f"the prompt is {len(prompt_ids):,} tokens; the limit is {cfg.max_prompt_tokens:,}",
        )
    if len(resp) > cfg.max_response_tokens:
        return RowProblem(
            sample.line,
            f"the response is {len(resp):,} tokens; the limit is {cfg.max_response_tokens:,}",
        )
    ctx = model.context_length
    need = max(len(resp), cfg.max_new_tokens if cfg.own else 0)
    if ctx is not None and len(prompt_ids) + need > ctx:
        return RowProblem(
            sample.line,
            f"prompt and response are {len(prompt_ids) + need:,} tokens; the model reads "
            f"at most {ctx:,}",
        )
    return _Prepared(sample, prompt_ids, resp)


def _batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (little padding), within the row and
    padded-token budgets."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch: list[int] = []
    for i in order:
        width = max(lengths[i], max((lengths[j] for j in batch), default=0))
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * width > BATCH_TOKENS):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


class _Stopped(Exception):
    pass


def _read_projections(
    model: LoadedModel,
    rows: Sequence[ForcedRow],
    units: torch.Tensor,
    layer: int,
    cfg: ScreenConfig,
    should_stop: Callable[[], bool] | None,
) -> list[list[float]]:
    """Projections [row][vector] of each row's span mean at ``layer``, batch by batch."""
    out: list[list[float]] = [[] for _ in rows]
    for batch in _batches([len(r.ids) for r in rows], cfg.batch_size):
        if should_stop is not None and should_stop():
            raise _Stopped
        res = forced_pass(
            model,
            [rows[i] for i in batch],
            should_stop=should_stop,
            last_layer=layer,
        )
        if res.stopped:
            raise _Stopped
        proj = res.span_mean[:, layer] @ units.T  # [batch, n_vectors]
        for k, i in enumerate(batch):
            out[i] = [float(x) for x in proj[k]]
    return out


def _own_answers(
    model: LoadedModel,
    items: list[_Prepared],
    cfg: ScreenConfig,
    cache: OwnResponseCache | None,
    result: ScreenResult,
    should_stop: Callable[[], bool] | None,
    report: Callable[[int], None],
) -> None:
    """Fill ``own_ids`` from the cache, generating the missing answers in batches."""
    vocab = len(model.tokenizer)
    keys = [OwnResponseCache.key(model.model_id, p.prompt_ids, cfg.max_new_tokens) for p in items]
    missing: list[int] = []
    for i, (item, key) in enumerate(zip(items, keys, strict=True)):
        hit = cache.get(key, vocab, cfg.max_new_tokens) if cache is not None else None
        if hit is None:
            missing.append(i)
        else:
            item.own_ids = hit
            result.cached += 1
    sampling = SamplingConfig(
        max_new_tokens=cfg.max_new_tokens, temperature=0.0, max_prompt_tokens=cfg.max_prompt_tokens
    )
    for batch in _batches([len(items[i].prompt_ids) for i in missing], cfg.batch_size):
        idx = [missing[k] for k in batch]
        final = None
        for update in generate_stream(
            model,
            [items[i].prompt_ids for i in idx],
            [()] * len(idx),
            sampling,
            keep_tokens=False,
            should_stop=should_stop,
            row_invariant=False,
        ):
            final = update.result
        if final is None or (should_stop is not None and should_stop()):
            raise _Stopped  # a cut-short answer is neither scored nor cached
        for i, tokens in zip(idx, final.tokens, strict=True):
            items[i].own_ids = tokens
            if cache is not None:
                cache.put(keys[i], tokens)
        result.generated += len(idx)
        report(len(idx))


def screen(
    model: LoadedModel,
    samples: Iterable[Sample | RowProblem],
    vectors: Sequence[PersonaVector],
    cfg: ScreenConfig,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    total: int | None = None,
    cache: OwnResponseCache | None = None,
) -> ScreenResult:
    """Score every sample for every vector at ``cfg.layer`` (see the module doc).

    ``samples`` is consumed a window at a time; :class:`RowProblem` items (and samples too long
    for the caps) are collected in ``result.problems``. ``total``: the expected number of
    samples, for progress fractions. ``cache``: where own answers are kept (default: under the
    settings' cache directory; ignored unless ``cfg.use_cache``). Stopped, the result holds the
    samples finished so far and ``stopped=True``.
    """
    if not vectors:
        raise InputError("Pick at least one persona vector to screen with.")
    layer = check_layer(cfg.layer, model.n_layers)
    for vec in vectors:
        check_fits(vec, model.n_layers, model.d_model, model.model_id)
    names = column_names(vectors)
    units = torch.stack([unit_rows(v.vectors)[layer] for v in vectors]).to(model.device)
    if cfg.own and cfg.use_cache and cache is None:
        cache = OwnResponseCache()
    if not (cfg.own and cfg.use_cache):
        cache = None
    result = ScreenResult(names=names, layer=layer, own=cfg.own, context=cfg.context)
    started = time.perf_counter()
    done = 0.0  # samples (and skipped lines) handled so far, for progress

    def report(message: str) -> None:
        if progress is not None:
            progress(min(done / total, 0.99) if total else 0.0, message)

    try:
        for window in _windows(samples, WINDOW):
            prepared: list[_Prepared] = []
            for entry in window:
                ready = entry if isinstance(entry, RowProblem) else _prepare(model, entry, cfg)
                if isinstance(ready, RowProblem):
                    result.add_problem(ready)
                else:
                    prepared.append(ready)
            base, size, share = done, len(window), len(window) / max(len(prepared), 1)
            if cfg.own and prepared:

                def generated(
                    n: int, base: float = base, size: int = size, share: float = share
                ) -> None:
                    # Generating is most of a window's time: count it as 90 % of the window.
                    nonlocal done
                    done = min(done + 0.9 * n * share, base + size)
                    report(f"Own answers: {result.generated:,} generated, {result.cached:,} cached")

                report(f"Generating the model's own answers ({len(result.rows):,} scored so far)")
                _own_answers(model, prepared, cfg, cache, result, should_stop, generated)
            _score_window(model, prepared, units, layer, cfg, names, result, should_stop)
            done = base + size
            report(f"Scored {len(result.rows):,} samples ({result.n_problems:,} skipped)")
    except _Stopped:
        result.stopped = True
    result.seconds = time.perf_counter() - started
    if progress is not None:
        progress(1.0, f"Scored {len(result.rows):,} samples in {result.seconds:.1f} s")
    return result


def _windows(
    samples: Iterable[Sample | RowProblem], size: int
) -> Iterator[list[Sample | RowProblem]]:
    window: list[Sample | RowProblem] = []
    for s in samples:
        window.append(s)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


def _score_window(
    model: LoadedModel,
    prepared: list[_Prepared],
    units: torch.Tensor,
    layer: int,
    cfg: ScreenConfig,
    names: tuple[str, ...],
    result: ScreenResult,
    should_stop: Callable[[], bool] | None,
) -> None:
    rows = [
        ForcedRow(
            tuple(p.prompt_ids + p.response_ids),
            len(p.prompt_ids),
            len(p.prompt_ids) + len(p.response_ids),
        )
        for p in prepared
    ]
    # Own answers that are empty (the model ended its turn at once) have nothing to read.
    own_at: dict[int, int] = {}
    for i, p in enumerate(prepared):
        if p.own_ids:
            own_at[i] = len(rows)
            rows.append(
                ForcedRow(
                    tuple(p.prompt_ids + p.own_ids),
                    len(p.prompt_ids),
                    len(p.prompt_ids) + len(p.own_ids),
                )
            )
    if not rows:
        return
    proj = _read_projections(model, rows, units, layer, cfg, should_stop)
    for i, p in enumerate(prepared):
        own = proj[own_at[i]] if i in own_at else None
        scores = {
            name: VectorScore(proj[i][k], own[k] if own is not None else None)
            for k, name in enumerate(names)
        }
        own_text = None
        if cfg.own:
            own_text = _excerpt(model.decode(p.own_ids or []), OWN_EXCERPT_CHARS)
        result.rows.append(
            ScoredSample(
                line=p.sample.line,
                prompt=_excerpt(p.sample.question),
                response=_excerpt(p.sample.response),
                own_response=own_text,
                response_tokens=len(p.response_ids),
                scores=scores,
            )
        )


def screen_file(
    model: LoadedModel,
    path: str | Path,
    vectors: Sequence[PersonaVector],
    cfg: ScreenConfig,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_bytes: int = MAX_DATA_BYTES,
    fmt: Format = "auto",
    cache: OwnResponseCache | None = None,
) -> ScreenResult:
    """:func:`screen` over a data file (size checked first, lines counted for progress)."""
    total = count_lines(path, max_bytes)
    samples = read_samples(path, max_bytes, fmt)
    return screen(model, samples, vectors, cfg, progress, should_stop, total, cache)


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
    source: str | Path | None = None,
    max_bytes: int = MAX_DATA_BYTES,
    fmt: Format = "auto",
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
    fmt: Format,
    as_csv: bool,
) -> Iterator[dict[str, Any]]:
    if source is None:
        for row in result.rows:
            yield row.flat()
        return
    # CSV columns must be the same on every row: a CSV source keeps its own, anything else is
    # written in one flat form. JSONL keeps each record as it was.
    flatten = as_csv and _format_of(Path(source), fmt) != "csv"
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
