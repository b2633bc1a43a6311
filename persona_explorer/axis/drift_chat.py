"""The live half of persona drift: the model answers a new message, and its answer is placed
on the Assistant Axis the way a replayed turn is (:mod:`.drift`).

:func:`chat_turn_stream` answers one message after the history (optionally steered by a persona
vector and/or held by activation capping), streaming the text; its response-mean residual, read
from the same passes that generated it, is projected raw and normalised at every layer. History
longer than the window is cut to its most recent whole turns (:func:`.windows.window_start`).

Imports: torch, ``engine.model``, ``steering`` (generation, plans), :mod:`.assistant_axis`,
:mod:`.windows` and :mod:`.drift` (the projections a replayed turn gets).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from persona_explorer.axis.assistant_axis import AxisData
from persona_explorer.axis.drift import axis_projections, axis_scale, check_personas
from persona_explorer.axis.windows import DEFAULT_WINDOW_TOKENS, window_budget, window_start
from persona_explorer.engine.model import ChatMessage, LoadedModel
from persona_explorer.steering.generation import SamplingConfig, generate_stream
from persona_explorer.steering.ops import RowPlan

__all__ = ["ChatTurn", "chat_turn_stream"]


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
    *,
    cfg: SamplingConfig,
    plan: RowPlan = (),
    personas: Mapping[str, torch.Tensor] | None = None,
    window_tokens: int = DEFAULT_WINDOW_TOKENS,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[str, ChatTurn | None]]:
    """Answer ``message`` after ``history``: yields ``(text so far, None)`` per token, then
    ``(reply, ChatTurn)``. ``plan`` steers and/or caps (:class:`..steering.ops.Add` /
    :class:`..steering.ops.Cap` operations). History longer than the window (less the new tokens)
    is cut to its most recent whole turns."""
    started = time.perf_counter()
    personas = dict(personas or {})
    check_personas(model, personas)
    messages = [*history, ChatMessage(role="user", content=message)]
    budget = window_budget(model, window_tokens) - cfg.max_new_tokens
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
        raw, norm, per = axis_projections(acts, axis, axis_scale(axis), personas)
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
