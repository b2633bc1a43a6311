"""Conversation windows: the tokens each assistant turn of a conversation is read in.

A conversation longer than the window (default :data:`DEFAULT_WINDOW_TOKENS`, the prototype's
2,048) is read through a window of its most recent turns: whole earlier turns are dropped,
never part of a message, and each window says how many were. Only an assistant turn that alone
overflows the window is cut, to its first tokens, and its window says so too.

* :func:`replay_windows` — one :class:`TurnWindow` per assistant turn (a replay reads these);
* :func:`window_start` — where the most recent whole turns that fit begin (a live chat's
  history is cut there too);
* :func:`turn_groups` — consecutive windows that one forward pass can read together.

The window's bounds and the turns one replay reads are ``core.limits``' (``MIN_WINDOW_TOKENS``,
``MAX_WINDOW_TOKENS``, ``MAX_REPLAY_TURNS``).

Imports: ``core`` (errors, limits), ``engine.model`` (the chat template),
``steering.forced`` (a response's own tokens) and :mod:`.conversation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from persona_explorer.axis.conversation import Conversation
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    MAX_REPLAY_TURNS,
    MAX_WINDOW_TOKENS,
    MIN_WINDOW_TOKENS,
    check_int,
)
from persona_explorer.engine.model import ChatMessage, LoadedModel
from persona_explorer.steering.forced import response_ids

__all__ = [
    "DEFAULT_WINDOW_TOKENS",
    "MIN_TURN_TOKENS",
    "TurnWindow",
    "replay_windows",
    "turn_groups",
    "window_budget",
    "window_start",
]

DEFAULT_WINDOW_TOKENS = 2048
# The fewest tokens of an assistant turn worth a mean: fewer and the turn is refused (its user
# message leaves no room in the window) rather than measured on a handful of tokens.
MIN_TURN_TOKENS = 16


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
    *,
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
    """The window of each of the first ``max_turns`` assistant turns (see the module doc)."""
    budget = window_budget(model, window_tokens)
    messages = conv.messages
    out: list[TurnWindow] = []
    lowest = 0
    for turn, i in enumerate(conv.assistant_indices[:max_turns], start=1):
        content = response_ids(model, messages[i].content)
        # Windows only move forward: a later turn never fits more history than an earlier one.
        start, prefix = window_start(
            model, messages, i, budget, extra_tokens=len(content), lowest=lowest
        )
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


def window_budget(model: LoadedModel, window_tokens: int) -> int:
    """``window_tokens`` checked, and no more than the model's context length."""
    budget = check_int(window_tokens, "Window", MIN_WINDOW_TOKENS, MAX_WINDOW_TOKENS)
    if model.context_length is not None:
        budget = min(budget, model.context_length)
    return budget


def turn_groups(windows: Sequence[TurnWindow]) -> list[tuple[list[int], list[tuple[int, int]]]]:
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
