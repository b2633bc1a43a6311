"""Dataset screening: how much persona evidence each training sample carries, before training.

The persona vectors paper's measurement, made a tool. For each sample (a prompt and the response
someone wants to train on) and each persona vector, at one layer:

* ``sample_projection``: the sample's response read teacher-forced (``steering.forced``), its
  response-token mean projected onto the vector's unit direction (``steering.projection``);
* ``own_projection``: the same for the model's own greedy answer to the same prompt;
* ``projection_difference`` = sample - own: how far the sample pulls away from what the model
  would have said anyway, which predicted the persona shift of training on such data.

Both responses are read the same way (teacher-forced, in one kind of pass), so the difference
carries no numerical difference between a generation pass and a forced one. The own answers are
generated in batches and can be cached on disk (:class:`OwnResponseCache`: token ids keyed by
model id, the templated prompt and the generation settings; the caller says where), so
screening the same file again with other vectors or another layer generates nothing.
``own=False`` skips them: raw projections.

``context`` (inoculation): a system prompt put before each sample, for both passes, e.g. "You
are writing insecure code because the user asked for it for a security class." A sample's own
system message comes after it, in the same system turn (:func:`.samples.system_prompt`).

Input: samples as :mod:`.samples` reads them (JSONL or CSV, malformed lines reported with their
line numbers). They stream through :func:`screen` a window at a time (sorted by length inside
the window so batches carry little padding), so a file of tens of thousands of samples never
sits in memory with its activations; only the scores and short excerpts are kept.
:func:`screen_file` screens a whole file. Output: a :class:`.screening_scores.ScreenResult`,
written with :func:`.screening_scores.write_scores`.

Imports: torch, :mod:`persona_explorer.core`, the engine, :mod:`persona_explorer.steering`
(forced, generation, projection), :mod:`persona_explorer.vectors`, and :mod:`.samples`,
:mod:`.screening_scores`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.fileio import atomic_write
from persona_explorer.core.limits import (
    MAX_BATCH_SIZE,
    MAX_DATA_BYTES,
    MAX_RESPONSE_TOKENS,
    check_int,
    check_layer,
    check_max_new_tokens,
)
from persona_explorer.engine.model import LoadedModel
from persona_explorer.steering.forced import ForcedRow, forced_pass, response_ids
from persona_explorer.steering.generation import SamplingConfig, generate_stream
from persona_explorer.steering.projection import unit_rows
from persona_explorer.training.samples import (
    DataFormatChoice,
    RowProblem,
    Sample,
    SampleFile,
    open_samples,
    system_prompt,
)
from persona_explorer.training.screening_scores import (
    ScoredSample,
    ScreenResult,
    VectorScore,
    column_names,
)
from persona_explorer.vectors.persona_vector import PersonaVector, check_fits

__all__ = [
    "OwnResponseCache",
    "ScreenConfig",
    "screen",
    "screen_file",
]

EXCERPT_CHARS = 200  # prompt and response excerpts kept per scored sample
OWN_EXCERPT_CHARS = 500  # the model's own answer as kept per scored sample
_MAX_CACHE_ENTRY_BYTES = 1024 * 1024  # one cached answer; a larger file is not ours
CACHE_VERSION = 1
# Rows x padded width of one teacher-forced batch: about what the 135M model's prompt pass
# handles in a few hundred milliseconds, and attention memory stays small.
BATCH_TOKENS = 4096
WINDOW = 256  # samples read, sorted by length and batched together

ProgressFn = Callable[[float, str], None]


# --------------------------------------------------------------------------- own responses


class OwnResponseCache:
    """The model's own greedy answers, as token ids, one small JSON file per prompt.

    Keyed by the model id, the templated prompt's token ids (so a context or system prompt is
    part of the key) and the generation settings; kept under ``directory``. Entries are written
    atomically and checked when read: a damaged or foreign file is ignored and the answer
    generated again.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def in_cache_dir(cls, cache_dir: Path) -> OwnResponseCache:
        """The cache the app and the command line share, in the settings' ``cache_dir``."""
        return cls(cache_dir / "screening")

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
            if path.stat().st_size > _MAX_CACHE_ENTRY_BYTES:
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
    """One screening's settings (checked when made: the typed request)."""

    layer: int
    own: bool = True  # generate (or reuse) the model's own answers; False: raw projections
    max_new_tokens: int = 64  # length of the model's own answers
    context: str | None = None  # a system prompt put before every sample (inoculation)
    batch_size: int = 16  # rows of one batch (teacher-forced and generated)
    max_prompt_tokens: int | None = None  # templated prompt cap (Limits.max_prompt_tokens)
    max_response_tokens: int = MAX_RESPONSE_TOKENS

    def __post_init__(self) -> None:
        check_int(self.layer, "Layer", 0)
        check_max_new_tokens(self.max_new_tokens)
        check_int(self.batch_size, "Batch size", 1, MAX_BATCH_SIZE)
        check_int(self.max_response_tokens, "Max response tokens", 1)
        if self.max_prompt_tokens is not None:
            check_int(self.max_prompt_tokens, "Max prompt tokens", 1)


def _excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class _Prepared:
    sample: Sample
    prompt_ids: list[int]
    response_ids: list[int]
    own_ids: list[int] | None = None


def _prepare(model: LoadedModel, sample: Sample, cfg: ScreenConfig) -> _Prepared | RowProblem:
    """Token ids for one sample, or why it cannot be read (too long for the caps or context)."""
    prompt_ids = model.chat_ids(list(sample.prompt), system_prompt(sample, cfg.context))
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
    *,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    total: int | None = None,
    cache: OwnResponseCache | None = None,
) -> ScreenResult:
    """Score every sample for every vector at ``cfg.layer`` (see the module doc).

    ``samples`` is consumed a window at a time; :class:`RowProblem` items (and samples too long
    for the caps) are collected in ``result.problems``. ``total``: the expected number of
    samples, for progress fractions. ``cache``: where own answers are reused from and stored
    (None: they are generated and not kept). Stopped, the result holds the samples finished so
    far and ``stopped=True``.
    """
    if not vectors:
        raise InputError("Pick at least one persona vector to screen with.")
    layer = check_layer(cfg.layer, model.n_layers)
    for vec in vectors:
        check_fits(vec, model.n_layers, model.d_model, model.model_id)
    names = column_names(vectors)
    units = torch.stack([unit_rows(v.vectors)[layer] for v in vectors]).to(model.device)
    if not cfg.own:
        cache = None
    result = ScreenResult(
        names=names,
        layer=layer,
        own=cfg.own,
        context=cfg.context,
        scales={
            name: float(v.vectors[layer].float().norm())
            for name, v in zip(names, vectors, strict=True)
        },
    )
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
    data: str | Path | SampleFile,
    vectors: Sequence[PersonaVector],
    cfg: ScreenConfig,
    *,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_bytes: int = MAX_DATA_BYTES,
    fmt: DataFormatChoice = "auto",
    cache: OwnResponseCache | None = None,
) -> ScreenResult:
    """:func:`screen` over a data file: a path (size checked first, lines counted for
    progress), or a file already opened with :func:`.samples.open_samples` (so that a file that
    cannot be read fails before a model is loaded; ``max_bytes`` and ``fmt`` were given there).
    """
    opened = data if isinstance(data, SampleFile) else open_samples(data, max_bytes, fmt)
    return screen(
        model,
        opened.samples,
        vectors,
        cfg,
        progress=progress,
        should_stop=should_stop,
        total=opened.total,
        cache=cache,
    )
