"""Persona drift: where each assistant turn of a conversation sits on the Assistant Axis.

Two ways in:

* :func:`replay` — teacher-forced: each assistant turn of a stored conversation is fed to the
  loaded model after the conversation before it (the model reads the text, it does not write
  it), and the mean residual over that turn's tokens is projected onto the axis at every
  layer. One forward pass per group of turns, no generation.
* :func:`chat_turn_stream` — live: the model answers a new user message after the history
  (optionally steered by a persona vector and/or held by activation capping), and its
  response-mean residual is projected the same way.

A conversation longer than the window (default :data:`DEFAULT_WINDOW_TOKENS`, the prototype's
2,048) is read through a window of its most recent turns: whole earlier turns are dropped,
never part of a message, and each result says how many were. Only an assistant turn that alone
overflows the window is cut, to its first tokens, and the result says so too.

Projections come raw (activation units, which grow ~25x with depth) and normalised: 0 = the
roles' mean, 1 = the default Assistant (:func:`.axis.normalised_projection`), the scale on
which layers and models compare.

A replay's cost is all in the per-turn span means; everything else is computed from them. Given
a :class:`.replay_cache.ReplayStore`, :func:`replay` takes the means from a shipped replay or the
cache when one fits (seconds instead of minutes; ``ReplayResult.source`` says which) and caches
what it reads. :func:`shipped_replay` makes the shipped ones (``axis replays``).

Imports: torch, the engine (:func:`.engine.decoder_for`), :mod:`.generation`, :mod:`.axis`,
:mod:`.conversation`, :mod:`.projection`, :mod:`.steering`, :mod:`.limits`,
:mod:`.replay_cache` (stored replays: the span means of a finished replay, read once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from persona_explorer.axis.assistant_axis import AxisData, normalised_projection, project
from persona_explorer.axis.conversation import Conversation
from persona_explorer.axis.replays import (
    SOURCE_READ,
    ReplayKey,
    ReplayStore,
    StoredReplay,
    StoredTurn,
)
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import check_int
from persona_explorer.engine import EMBED_LAYER, decoder_for
from persona_explorer.engine.model import ChatMessage, LoadedModel
from persona_explorer.steering.generation import PREFILL_CHUNK, SamplingConfig, generate_stream
from persona_explorer.steering.ops import LayerEdit, RowPlan, compile_plan
from persona_explorer.steering.projection import layer_projections

__all__ = [
    "DEFAULT_WINDOW_TOKENS",
    "MAX_REPLAY_TURNS",
    "MAX_WINDOW_TOKENS",
    "MIN_TURN_TOKENS",
    "MIN_WINDOW_TOKENS",
    "ChatTurn",
    "ReplayResult",
    "TurnProjection",
    "TurnWindow",
    "axis_scale",
    "chat_turn_stream",
    "replay",
    "replay_windows",
    "shipped_replay",
    "window_start",
]

ProgressFn = Callable[[float, str], None]

DEFAULT_WINDOW_TOKENS = 2048
MIN_WINDOW_TOKENS = 128
MAX_WINDOW_TOKENS = 32_768
# The fewest tokens of an assistant turn worth a mean: fewer and the turn is refused (its user
# message leaves no room in the window) rather than measured on a handful of tokens.
MIN_TURN_TOKENS = 16
# Assistant turns one replay measures (the first ones; the result says when more were left).
# Every turn past the window costs one pass over up to the whole window: the therapy transcript
# (15 turns) reads 23.6k tokens in 13 passes at 2,048 tokens, the longest shipped one (31 turns)
# 42k. 40 turns bound one request to about twice that; the app's job time limit still applies.
MAX_REPLAY_TURNS = 40
_PREVIEW_WORDS = 12


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class TurnWindow:
    """The tokens one assistant turn is read in: ``ids[span[0]:span[1]]`` are the turn's own."""

    turn: int  # 1-based number of the assistant turn
    message_index: int  # its position in the conversation's messages
    first_message: int  # the first (non-system) message inside the window
    ids: list[int]
    span: tuple[int, int]
    dropped_messages: int  # earlier messages left out of the window
    truncated: bool  # the turn itself was cut to fit

    @property
    def tokens(self) -> int:
        return self.span[1]

    @property
    def response_tokens(self) -> int:
        return self.span[1] - self.span[0]


def _content_ids(model: LoadedModel, text: str) -> list[int]:
    """A message's own tokens, as the model would have written them after the generation
    prompt (no BOS, no template)."""
    return [int(i) for i in model.tokenizer(text, add_special_tokens=False).input_ids]


def _turn_starts(messages: Sequence[ChatMessage]) -> list[int]:
    """Where a window may begin: the first non-system message, and each user message that
    follows an assistant one (a window never starts inside a user-assistant exchange)."""
    first = 1 if messages and messages[0].role == "system" else 0
    starts = [first] if first < len(messages) else []
    for i in range(first + 1, len(messages)):
        if messages[i].role == "user" and messages[i - 1].role == "assistant":
            starts.append(i)
    return starts


def window_start(
    model: LoadedModel,
    messages: Sequence[ChatMessage],
    end: int,
    budget: int,
    extra_tokens: int = 0,
    lowest: int = 0,
) -> tuple[int, list[int]]:
    """The earliest turn start ``s >= lowest`` such that the chat ids of ``messages[s:end]``
    (with the system message, if any, and the generation prompt) plus ``extra_tokens`` fit in
    ``budget``; returns ``(s, ids)``. When even the last turn alone does not fit, that turn
    start and its ids are returned: the caller decides what to cut."""
    system = list(messages[:1]) if messages and messages[0].role == "system" else []
    starts = [s for s in _turn_starts(messages[:end]) if s < end] or [len(system)]
    candidates = [s for s in starts if s >= lowest] or starts[-1:]
    ids: list[int] = []
    for s in candidates:
        ids = model.chat_ids(system + list(messages[s:end]))
        if len(ids) + extra_tokens <= budget:
            return s, ids
    return candidates[-1], ids


def replay_windows(
    model: LoadedModel,
    conv: Conversation,
    window_tokens: int = DEFAULT_WINDOW_TOKENS,
    max_turns: int = MAX_REPLAY_TURNS,
) -> list[TurnWindow]:
    """The window of each of the first ``max_turns`` assistant turns (see the module notes)."""
    budget = _budget(model, window_tokens)
    messages = conv.messages
    out: list[TurnWindow] = []
    lowest = 0
    for turn, i in enumerate(conv.assistant_indices[:max_turns], start=1):
        content = _content_ids(model, messages[i].content)
        # Windows only move forward: a later turn never fits more history than an earlier one.
        start, prefix = window_start(model, messages, i, budget, len(content), lowest)
        lowest = start
        room = budget - len(prefix)
        truncated = len(content) > room
        if truncated:
            if room < MIN_TURN_TOKENS:
                raise InputError(
                    f"Assistant turn {turn}: the message before it takes {len(prefix):,} of the "
                    f"{budget:,}-token window, leaving no room for the turn; use a larger window."
                )
            content = content[:room]
        ids = prefix + content
        system = 1 if messages[0].role == "system" else 0
        out.append(
            TurnWindow(
                turn=turn,
                message_index=i,
                first_message=start,
                ids=ids,
                span=(len(prefix), len(ids)),
                dropped_messages=start - system,
                truncated=truncated,
            )
        )
    return out


def _budget(model: LoadedModel, window_tokens: int) -> int:
    budget = check_int(window_tokens, "Window", MIN_WINDOW_TOKENS, MAX_WINDOW_TOKENS)
    if model.context_length is not None:
        budget = min(budget, model.context_length)
    return budget


def _groups(windows: Sequence[TurnWindow]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Turns read in one forward: consecutive turns with the same window start whose ids extend
    each other, so the longest sequence holds every shorter one's span (causal attention makes
    the span's residuals the same as in a pass of its own). Checked token by token: a template
    that renders an earlier turn differently from how it was read gets passes of its own.
    Returns (ids, spans) per forward."""
    groups: list[tuple[list[int], list[tuple[int, int]]]] = []
    members: list[TurnWindow] = []
    for w in windows:
        if members:
            last = members[-1]
            extends = (
                w.first_message == last.first_message
                and not last.truncated
                and w.ids[: last.span[1]] == last.ids
            )
            if not extends:
                groups.append((members[-1].ids, [m.span for m in members]))
                members = []
        members.append(w)
    if members:
        groups.append((members[-1].ids, [m.span for m in members]))
    return groups


# --------------------------------------------------------------------------- forward


class _SpanMeans:
    """The residual callback of a teacher-forced pass: applies the steering edits (at every
    position: the whole text is read, none of it is generated), then sums each span's
    residuals per layer."""

    def __init__(
        self,
        model: LoadedModel,
        spans: Sequence[tuple[int, int]],
        edits: Mapping[int, LayerEdit] | None = None,
    ) -> None:
        self.spans = list(spans)
        self.edits = dict(edits or {})
        self.sums = torch.zeros(len(spans), model.n_layers, model.d_model, device=model.device)
        self.offset = 0  # position of the current chunk's first token

    def __call__(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        edit = self.edits.get(layer)
        if edit is not None:
            # prompt_pass=False: "response" operations act on every position too.
            h = edit.apply(h, prompt_pass=False)
        if layer == EMBED_LAYER:
            return h
        width = h.shape[1]
        for k, (lo, hi) in enumerate(self.spans):
            a, b = max(lo, self.offset), min(hi, self.offset + width)
            if a < b:
                self.sums[k, layer] += h[0, a - self.offset : b - self.offset].float().sum(0)
        return h

    def means(self) -> torch.Tensor:
        counts = torch.tensor([hi - lo for lo, hi in self.spans], device=self.sums.device)
        return (self.sums / counts.clamp(min=1)[:, None, None]).cpu()


def _span_means(
    model: LoadedModel,
    ids: list[int],
    spans: Sequence[tuple[int, int]],
    should_stop: Callable[[], bool] | None,
    plan: RowPlan = (),
) -> torch.Tensor | None:
    """Mean residual over each span at every layer -> [n_spans, n_layers, d]; None if stopped.

    The pass runs in chunks of :data:`.generation.PREFILL_CHUNK`, each under the model's
    lock, so other visitors' requests take turns with a long replay (as generation does).
    """
    decoder = decoder_for(model)
    input_ids = torch.tensor([ids], dtype=torch.long)
    mask = torch.ones_like(input_ids)
    session = decoder.session(input_ids, mask, 0, row_invariant=False)
    edits = compile_plan([plan], model.n_layers, model.d_model, model.device, model.dtype)
    reader = _SpanMeans(model, spans, edits)
    width = len(ids)
    try:
        for start in range(0, width, PREFILL_CHUNK):
            if should_stop is not None and should_stop():
                return None
            end = min(start + PREFILL_CHUNK, width)
            reader.offset = start
            with model.compute_lock, torch.inference_mode():
                session.prefill(reader, start=start, end=end)
    finally:
        session.close()
    return reader.means()


# --------------------------------------------------------------------------- results


def axis_scale(axis: AxisData) -> tuple[torch.Tensor, torch.Tensor]:
    """The projections of the roles' mean and of the default Assistant, per layer: the 0 and
    1 of the normalised scale."""
    return project(axis.role_vectors.mean(0), axis.axis), project(axis.default_vector, axis.axis)


def _preview(text: str) -> str:
    words = text.split()
    head = " ".join(words[:_PREVIEW_WORDS])
    return head + (" …" if len(words) > _PREVIEW_WORDS else "")


@dataclass(frozen=True)
class TurnProjection:
    """One assistant turn on the axis (and on each persona vector), at every layer."""

    turn: int  # 1-based assistant turn number
    projection: list[float]  # raw ⟨mean residual, unit axis⟩ per layer
    normalised: list[float]  # 0 = roles' mean, 1 = default Assistant, per layer
    personas: dict[str, list[float]]  # name -> projection on the vector's unit rows, per layer
    preview: str  # the turn's first words
    response_tokens: int
    tokens: int  # tokens read for this turn (window included)
    window_turns: int  # user-assistant exchanges inside the window
    dropped_messages: int = 0  # earlier messages outside the window
    truncated: bool = False  # the turn itself was cut to its first tokens

    def as_json(self, layer: int) -> dict:
        """The turn at ``layer`` plus every layer's values (the CLI's and the API's shape)."""
        return {
            "turn": self.turn,
            "layer": layer,
            "projection": self.projection[layer],
            "normalised": self.normalised[layer],
            "response_tokens": self.response_tokens,
            "tokens": self.tokens,
            "window_turns": self.window_turns,
            "dropped_messages": self.dropped_messages,
            "windowed": self.dropped_messages > 0,
            "truncated": self.truncated,
            "preview": self.preview,
            "personas": {k: v[layer] for k, v in self.personas.items()},
            "projection_by_layer": self.projection,
            "normalised_by_layer": self.normalised,
        }


@dataclass(frozen=True)
class ReplayResult:
    label: str
    turns: list[TurnProjection]
    n_layers: int
    window_tokens: int
    total_turns: int  # assistant turns in the conversation (more than measured if capped)
    seconds: float
    stopped: bool = False
    meta: dict[str, str] = field(default_factory=dict)
    # Where the span means came from: read now, from the cache or from a shipped replay.
    source: str = SOURCE_READ

    @property
    def windowed(self) -> bool:
        return any(t.dropped_messages > 0 for t in self.turns)

    @property
    def truncated(self) -> list[int]:
        return [t.turn for t in self.turns if t.truncated]

    @property
    def skipped_turns(self) -> int:
        return self.total_turns - len(self.turns)

    def notes(self) -> list[str]:
        """What a reader must know to trust the numbers: windows, cuts, caps, a stop."""
        out = []
        if self.windowed:
            first = next(t.turn for t in self.turns if t.dropped_messages > 0)
            out.append(
                f"from turn {first} on, only the most recent turns that fit in "
                f"{self.window_tokens:,} tokens were read (earlier ones dropped whole)"
            )
        if self.truncated:
            out.append(
                f"turn(s) {', '.join(map(str, self.truncated))} were longer than the window "
                "and were read up to its end"
            )
        if self.stopped:
            out.append(f"stopped after {len(self.turns)} of {self.total_turns} turns")
        elif self.skipped_turns:
            out.append(
                f"only the first {len(self.turns)} of {self.total_turns} assistant turns "
                f"were replayed (at most {MAX_REPLAY_TURNS} per replay)"
            )
        return out

    def as_json(self, layer: int) -> dict:
        return {
            "label": self.label,
            "layer": layer,
            "n_layers": self.n_layers,
            "window_tokens": self.window_tokens,
            "total_turns": self.total_turns,
            "windowed": self.windowed,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 2),
            "source": self.source,
            "notes": self.notes(),
            "meta": self.meta,
            "turns": [t.as_json(layer) for t in self.turns],
        }


def _projections(
    acts: torch.Tensor,
    axis: AxisData,
    scale: tuple[torch.Tensor, torch.Tensor],
    personas: Mapping[str, torch.Tensor],
) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """``acts`` [n_layers, d] -> raw and normalised axis projections, persona projections."""
    raw = project(acts, axis.axis)
    norm = normalised_projection(raw, *scale)
    per = {name: layer_projections(acts, v).tolist() for name, v in personas.items()}
    return raw.tolist(), norm.tolist(), per


def _check_personas(model: LoadedModel, personas: Mapping[str, torch.Tensor]) -> None:
    for name, v in personas.items():
        if tuple(v.shape) != (model.n_layers, model.d_model):
            raise InputError(
                f"{name}: a vector of shape {tuple(v.shape)} does not fit this model "
                f"({model.n_layers} layers x {model.d_model})."
            )


def _turn_projection(
    conv: Conversation,
    turn: StoredTurn,
    acts: torch.Tensor,
    axis: AxisData,
    scale: tuple[torch.Tensor, torch.Tensor],
    personas: Mapping[str, torch.Tensor],
) -> TurnProjection:
    raw, norm, per = _projections(acts, axis, scale, personas)
    return TurnProjection(
        turn=turn.turn,
        projection=raw,
        normalised=norm,
        personas=per,
        preview=_preview(conv.messages[turn.message_index].content),
        response_tokens=turn.span[1] - turn.span[0],
        tokens=turn.span[1],
        window_turns=_exchanges(conv.messages, turn.first_message, turn.message_index),
        dropped_messages=turn.dropped_messages,
        truncated=turn.truncated,
    )


def _stored_turn(w: TurnWindow) -> StoredTurn:
    return StoredTurn(
        w.turn, w.message_index, w.first_message, w.span, w.dropped_messages, w.truncated
    )


def replay(
    model: LoadedModel,
    axis: AxisData,
    conv: Conversation,
    *,
    window_tokens: int = DEFAULT_WINDOW_TOKENS,
    personas: Mapping[str, torch.Tensor] | None = None,
    plan: RowPlan = (),
    max_turns: int = MAX_REPLAY_TURNS,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    store: ReplayStore | None = None,
) -> ReplayResult:
    """Teacher-forced replay: one :class:`TurnProjection` per assistant turn, in order (the
    first ``max_turns``). Stopped, it returns the turns measured so far (``stopped=True``).

    ``plan`` (steering and/or capping operations) edits the residual stream at every position
    while the conversation is read, so the projections are those of the edited model.

    With a ``store`` (:class:`.replay_cache.ReplayStore`), the span means are taken from a
    shipped replay or the cache when one fits (no forward pass: ``source`` says which), and a
    finished replay read now is cached. Projections are always computed here, from the means,
    so the axis, the personas and the layer may differ from those of the stored run."""
    started = time.perf_counter()
    if (axis.n_layers, axis.d_model) != (model.n_layers, model.d_model):
        raise InputError("The axis was made for another model shape; rebuild it for this model.")
    personas = dict(personas or {})
    _check_personas(model, personas)
    max_turns = check_int(max_turns, "Turns", 1)
    budget = _budget(model, window_tokens)
    scale = axis_scale(axis)
    key: ReplayKey | None = None
    found: tuple[StoredReplay, str] | None = None
    if store is not None:
        key = ReplayKey.for_replay(model, conv, budget, plan)
        found = store.lookup(key, conv, min(max_turns, conv.n_assistant_turns))
    if found is not None:
        stored, source = found
        turns = [
            _turn_projection(conv, t, acts, axis, scale, personas)
            for t, acts in zip(stored.turns, stored.means, strict=True)
        ]
        if progress is not None:
            progress(1.0, f"{conv.label}: {len(turns)} turns ({source})")
        return _result(conv, model, budget, turns, started, stopped=False, source=source)
    windows = replay_windows(model, conv, budget, max_turns)
    means = _read_means(model, conv, windows, plan, progress, should_stop)
    stopped = len(means) < len(windows)
    turns = [
        _turn_projection(conv, _stored_turn(w), acts, axis, scale, personas)
        for w, acts in zip(windows, means, strict=False)
    ]
    if store is not None and key is not None and not stopped:
        # Only a finished replay: a stopped one would be served later as if it were whole.
        store.save(StoredReplay(key, tuple(map(_stored_turn, windows)), torch.stack(means)))
    return _result(conv, model, budget, turns, started, stopped=stopped, source=SOURCE_READ)


def _read_means(
    model: LoadedModel,
    conv: Conversation,
    windows: Sequence[TurnWindow],
    plan: RowPlan,
    progress: ProgressFn | None,
    should_stop: Callable[[], bool] | None,
) -> list[torch.Tensor]:
    """Each window's span means [n_layers, d], in order; fewer than the windows if stopped."""
    groups = _groups(windows)
    total_tokens = sum(len(ids) for ids, _ in groups)
    done_tokens = 0
    out: list[torch.Tensor] = []
    for ids, spans in groups:
        if progress is not None:
            progress(
                done_tokens / max(1, total_tokens),
                f"{conv.label}: turn {len(out) + 1} of {len(windows)}",
            )
        means = _span_means(model, ids, spans, should_stop, plan)
        if means is None:
            return out
        done_tokens += len(ids)
        out.extend(means)
    if progress is not None:
        progress(1.0, f"{conv.label}: {len(out)} turns")
    return out


def shipped_replay(
    model: LoadedModel,
    conv: Conversation,
    window_tokens: int = DEFAULT_WINDOW_TOKENS,
    progress: ProgressFn | None = None,
) -> StoredReplay:
    """A replay read now, unsteered, every turn (up to :data:`MAX_REPLAY_TURNS`), keyed to be
    shipped: matched later on the model identity, the conversation and the window only (see
    :mod:`.replay_cache`). What ``axis replays`` writes to ``assets/transcripts/replays``."""
    budget = _budget(model, window_tokens)
    windows = replay_windows(model, conv, budget)
    means = _read_means(model, conv, windows, (), progress, None)
    key = ReplayKey.for_replay(model, conv, budget, ()).shipped()
    return StoredReplay(key, tuple(map(_stored_turn, windows)), torch.stack(means))


def _result(
    conv: Conversation,
    model: LoadedModel,
    budget: int,
    turns: list[TurnProjection],
    started: float,
    *,
    stopped: bool,
    source: str,
) -> ReplayResult:
    return ReplayResult(
        label=conv.label,
        turns=turns,
        n_layers=model.n_layers,
        window_tokens=budget,
        total_turns=conv.n_assistant_turns,
        seconds=time.perf_counter() - started,
        stopped=stopped,
        meta=dict(conv.meta),
        source=source,
    )


def _exchanges(messages: Sequence[ChatMessage], first: int, last: int) -> int:
    """Assistant turns among ``messages[first:last + 1]``."""
    return sum(1 for m in messages[first : last + 1] if m.role == "assistant")


# --------------------------------------------------------------------------- live chat


@dataclass(frozen=True)
class ChatTurn:
    """The model's answer to one chat message, and where it sits on the axis."""

    reply: str
    projection: list[float]  # per layer, read after any steering or capping ([] if no tokens)
    normalised: list[float]
    personas: dict[str, list[float]]
    response_tokens: int
    prompt_tokens: int
    dropped_messages: int  # history messages left out of the window
    stopped: bool
    seconds: float


def chat_turn_stream(
    model: LoadedModel,
    axis: AxisData,
    history: Sequence[ChatMessage],
    message: str,
    cfg: SamplingConfig,
    *,
    plan: RowPlan = (),
    personas: Mapping[str, torch.Tensor] | None = None,
    window_tokens: int = DEFAULT_WINDOW_TOKENS,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[str, ChatTurn | None]]:
    """Answer ``message`` after ``history``: yields ``(text so far, None)`` per token, then
    ``(reply, ChatTurn)``. ``plan`` steers and/or caps (:class:`.steering.Add` /
    :class:`.steering.Cap` operations). History longer than the window (less the new tokens)
    is cut to its most recent whole turns."""
    started = time.perf_counter()
    personas = dict(personas or {})
    _check_personas(model, personas)
    messages = [*history, ChatMessage(role="user", content=message)]
    budget = _budget(model, window_tokens) - cfg.max_new_tokens
    if cfg.max_prompt_tokens is not None:
        budget = min(budget, cfg.max_prompt_tokens)
    start, ids = window_start(model, messages, len(messages), max(1, budget))
    system = 1 if messages[0].role == "system" else 0
    result = None
    for update in generate_stream(
        model, [ids], [plan], cfg, keep_tokens=False, should_stop=should_stop
    ):
        if update.result is None:
            yield model.decode(update.tokens[0]), None
        result = update.result
    assert result is not None
    reply = model.decode(result.tokens[0])
    n = len(result.tokens[0])
    raw: list[float] = []
    norm: list[float] = []
    per: dict[str, list[float]] = {k: [] for k in personas}
    if n > 0:  # an empty reply (EOS at once, or stopped) has no mean to project
        acts = result.capture.response_mean[0].float().cpu()
        raw, norm, per = _projections(acts, axis, axis_scale(axis), personas)
    stopped = should_stop is not None and should_stop()
    yield (
        reply,
        ChatTurn(
            reply=reply,
            projection=raw,
            normalised=norm,
            personas=per,
            response_tokens=n,
            prompt_tokens=len(ids),
            dropped_messages=start - system,
            stopped=bool(stopped),
            seconds=time.perf_counter() - started,
        ),
    )
