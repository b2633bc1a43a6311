"""Persona drift: where each assistant turn of a conversation sits on the Assistant Axis.

:func:`replay` reads a stored conversation teacher-forced: each assistant turn is fed to the
loaded model after the conversation before it (the model reads the text, it does not write
it), through the window :mod:`.windows` gives it, and the mean residual over that turn's tokens
is projected onto the axis at every layer. Turns whose windows extend each other are read in
one pass (:func:`..steering.forced.forced_pass`, several spans of one row), no generation. The
live chat, where the model writes the turn, is :mod:`.drift_chat`.

Projections come raw (activation units, which grow ~25x with depth) and normalised: 0 = the
roles' mean, 1 = the default Assistant (:func:`.assistant_axis.normalised_projection`), the
scale on which layers and models compare.

A replay's cost is all in the per-turn span means; everything else is computed from them. Given
a :class:`.replays.ReplayStore`, :func:`replay` takes the means from a shipped replay or the
cache when one fits (seconds instead of minutes; ``ReplayResult.source`` says which) and caches
what it reads. :func:`shipped_replay` makes the shipped ones (``axis replays``).

Imports: torch, ``core``, ``engine.model``, ``steering`` (the teacher-forced pass, projections,
plans), :mod:`.assistant_axis`, :mod:`.conversation`, :mod:`.windows` and :mod:`.replays`
(stored replays: the span means of a finished replay, read once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
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
from persona_explorer.axis.windows import (
    DEFAULT_WINDOW_TOKENS,
    TurnWindow,
    replay_windows,
    turn_groups,
    window_budget,
)
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import MAX_REPLAY_TURNS, check_int
from persona_explorer.engine.model import ChatMessage, LoadedModel
from persona_explorer.steering.forced import ForcedRow, forced_pass
from persona_explorer.steering.ops import RowPlan
from persona_explorer.steering.projection import layer_projections

__all__ = [
    "ReplayResult",
    "TurnProjection",
    "axis_projections",
    "axis_scale",
    "check_personas",
    "replay",
    "shipped_replay",
]

ProgressFn = Callable[[float, str], None]

_PREVIEW_WORDS = 12


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


def axis_projections(
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


def check_personas(model: LoadedModel, personas: Mapping[str, torch.Tensor]) -> None:
    """Refuse a persona vector that does not fit the model's shape."""
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
    raw, norm, per = axis_projections(acts, axis, scale, personas)
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

    With a ``store`` (:class:`.replays.ReplayStore`), the span means are taken from a
    shipped replay or the cache when one fits (no forward pass: ``source`` says which), and a
    finished replay read now is cached. Projections are always computed here, from the means,
    so the axis, the personas and the layer may differ from those of the stored run."""
    started = time.perf_counter()
    if (axis.n_layers, axis.d_model) != (model.n_layers, model.d_model):
        raise InputError("The axis was made for another model shape; rebuild it for this model.")
    personas = dict(personas or {})
    check_personas(model, personas)
    max_turns = check_int(max_turns, "Turns", 1)
    budget = window_budget(model, window_tokens)
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
    """Each window's span means [n_layers, d], in order; fewer than the windows if stopped.

    Each group of turns is one teacher-forced pass, in chunks under the model's lock (other
    visitors' requests take turns with a long replay, as with generation); ``should_stop`` is
    asked before each pass and between its chunks."""
    groups = turn_groups(windows)
    total_tokens = sum(len(ids) for ids, _ in groups)
    done_tokens = 0
    out: list[torch.Tensor] = []
    for ids, spans in groups:
        if progress is not None:
            progress(
                done_tokens / max(1, total_tokens),
                f"{conv.label}: turn {len(out) + 1} of {len(windows)}",
            )
        if should_stop is not None and should_stop():
            return out
        # The whole text is read, none of it generated: the plan edits every position.
        row = ForcedRow(tuple(ids), *spans[0], more_spans=tuple(spans[1:]), steer_from=0)
        read = forced_pass(model, [row], [plan], should_stop=should_stop)
        if read.stopped:
            return out
        done_tokens += len(ids)
        out.extend(read.span_mean.cpu())
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
    :mod:`.replays`). What ``axis replays`` writes to ``assets/transcripts/replays``."""
    budget = window_budget(model, window_tokens)
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
