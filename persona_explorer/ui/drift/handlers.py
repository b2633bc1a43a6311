"""The Drift tab's actions: the forms and the handlers.

:class:`ChatForm` and :class:`ReplayForm` are the tab's inputs (and the public ``/chat`` and
``/replay`` APIs' parameters, in order). :func:`run_chat` streams one answer and places it on the
axis; :func:`run_replay` replays transcripts teacher-forced (a shipped replay or a cached one
is used when it fits, so a demo's transcripts come back in seconds; the summary says where each
came from) and plots them side by side; :func:`replot` redraws both at another layer from what
the tab keeps. The figures and the wording are :mod:`.views`.

The tab's bounds are ``core.limits``' ``APP_DRIFT_*``.

Imports: gradio, torch, ``core``, ``engine.model``, ``axis`` (the axis, conversations, windows,
replays, the live chat turn), ``steering.ops``, ``ui.shared`` (context, requests) and this tab's
components and views; never the layout (:mod:`.tab`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
import torch

from persona_explorer.axis.assistant_axis import (
    AxisData,
    check_percentile,
    default_axis_layer,
    default_cap_layers,
)
from persona_explorer.axis.conversation import (
    Conversation,
    ConversationError,
    load_conversation,
    parse_conversation,
    shipped_transcript,
    shipped_transcripts,
)
from persona_explorer.axis.drift import replay
from persona_explorer.axis.drift_chat import chat_turn_stream
from persona_explorer.axis.replays import ReplayStore
from persona_explorer.axis.windows import DEFAULT_WINDOW_TOKENS
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    APP_DRIFT_MAX_PROJECTED,
    APP_DRIFT_MAX_REPLAYS,
    DEFAULT_FREQUENCY_PENALTY,
    DEFAULT_TEMPERATURE,
    MAX_CONVERSATION_MESSAGES,
    MAX_WINDOW_TOKENS,
    MIN_WINDOW_TOKENS,
    check_int,
    check_layer,
    check_strength,
    check_text,
    parse_layers,
)
from persona_explorer.engine.model import ChatMessage
from persona_explorer.steering.ops import RowPlan, add_plan
from persona_explorer.ui.drift.components import DriftTab
from persona_explorer.ui.drift.views import (
    chat_figure,
    public_replays,
    replay_figure,
    replay_record,
    replay_summary,
    turn_status,
)
from persona_explorer.ui.shared.context import AppContext, user_errors
from persona_explorer.ui.shared.markup import chat_text
from persona_explorer.ui.shared.requests import sampling
from persona_explorer.ui.shared.streaming import coalesce
from persona_explorer.ui.shared.uploads import held

MAX_KEPT_REPLAYS = 8  # replays kept in a session for re-plotting; the oldest go first
DEFAULT_CHAT_TOKENS = 64
WINDOW_CHOICES = (512, 1024, 2048)


@dataclass(frozen=True)
class ChatForm:
    """One chat turn's inputs, as widgets send them (and as the ``/chat`` API takes them).

    ``history``: the conversation so far, a list of ``{"role", "content"}`` messages or the
    object this endpoint returns (``{"conversation": [...], "turns": [...]}``)."""

    message: str
    history: Any = None
    persona: str | None = None  # steer with this vector; empty: no steering
    layer: float = 12
    strength: float = 0.0
    cap: bool = False
    cap_percentile: float = 25.0
    cap_layers: str = ""  # e.g. "15-18"; empty: the default window
    projections: list[str] | None = None  # persona vectors to project each answer onto
    plot_layer: float = -1  # the layer plotted; -1: the default axis layer
    max_new_tokens: float = DEFAULT_CHAT_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    seed: float = 0
    frequency_penalty: float = DEFAULT_FREQUENCY_PENALTY


@dataclass(frozen=True)
class ReplayForm:
    """A replay's inputs (and the ``/replay`` API's parameters)."""

    transcripts: list[str] | None = None  # shipped transcript keys (or labels)
    upload: str | None = None  # a conversation JSON file
    window_tokens: float = DEFAULT_WINDOW_TOKENS
    projections: list[str] | None = None
    plot_layer: float = -1
    cap: bool = False  # read with activation capping at the default floor and layers


# --------------------------------------------------------------------------- checks


def plot_layer(ctx: AppContext, value: object) -> int:
    n = ctx.model.n_layers
    if value is None or (isinstance(value, (int, float)) and value == -1):
        return default_axis_layer(n)
    return check_layer(value, n, "Plot layer")


def projected_vectors(
    ctx: AppContext, session: Mapping | None, keys: object
) -> dict[str, torch.Tensor]:
    """The persona vectors to project onto, by display name (each checked to fit)."""
    if keys is None:
        return {}
    if isinstance(keys, str) or not isinstance(keys, Sequence):
        raise InputError("Persona vectors to project onto must be a list of names or keys.")
    picked = list(dict.fromkeys(k.strip() for k in keys if isinstance(k, str) and k.strip()))
    if len(picked) > APP_DRIFT_MAX_PROJECTED:
        raise InputError(
            f"{len(picked)} persona vectors chosen: at most {APP_DRIFT_MAX_PROJECTED}."
        )
    view = ctx.catalog.view(session)  # type: ignore[arg-type]
    out: dict[str, torch.Tensor] = {}
    for key in picked:
        item, vec = view.resolve_fitting(key)
        out[item.name] = vec.vectors
    return out


def _history_messages(value: object) -> tuple[list[ChatMessage], list[dict]]:
    """The chat so far from the ``history`` field: messages and the per-turn records kept
    beside them (records are only for the plot; anything malformed there is refused)."""
    if value is None or value == "" or value == [] or value == {}:
        return [], []
    records: object = []
    data = value
    if isinstance(value, dict):
        records = value.get("turns") or []
        data = {"conversation": value.get("conversation", [])}
        if not data["conversation"]:
            return [], []
    try:
        conv = parse_conversation(data, "chat")
    except ConversationError as exc:
        raise InputError(f"The chat history: {exc}") from None
    if conv.messages[-1].role != "assistant":
        raise InputError("The chat history must end with an assistant message.")
    if not isinstance(records, list) or len(records) > conv.n_assistant_turns:
        raise InputError('The chat history\'s "turns" must be a list, one per answer at most.')
    return list(conv.messages), records


def _check_record(rec: object, n_layers: int) -> dict:
    if not isinstance(rec, dict):
        raise InputError("Each of the chat history's turns must be an object.")
    out: dict[str, Any] = {}
    turn = rec.get("turn")
    out["turn"] = check_int(turn, "A turn's number", 1, MAX_CONVERSATION_MESSAGES)
    for key in ("projection", "normalised"):
        values = rec.get(key)
        if not isinstance(values, list) or len(values) not in (0, n_layers):
            raise InputError(f"A turn's {key} must list one number per layer ({n_layers}).")
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        ):
            raise InputError(f"A turn's {key} must hold finite numbers.")
        out[key] = [float(v) for v in values]
    personas = rec.get("personas") or {}
    if not isinstance(personas, dict) or len(personas) > APP_DRIFT_MAX_PROJECTED:
        raise InputError("A turn's personas must map at most a few names to projections.")
    out["personas"] = {}
    for name, values in personas.items():
        ok = isinstance(values, list) and len(values) in (0, n_layers)
        if not ok or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        ):
            raise InputError("A turn's persona projections must be one number per layer.")
        out["personas"][str(name)[:100]] = [float(v) for v in values]
    for key in ("preview", "settings"):
        out[key] = str(rec.get(key, ""))[:300]
    out["windowed"] = bool(rec.get("windowed", False))
    return out


# --------------------------------------------------------------------------- chat


def _chat_plan(ctx: AppContext, form: ChatForm, session: Mapping | None) -> tuple[RowPlan, str]:
    """The chat turn's steering and capping operations, and a few words saying which."""
    limits = ctx.settings.limits
    n = ctx.model.n_layers
    plan: list = []
    words = []
    persona = form.persona.strip() if isinstance(form.persona, str) else ""
    strength = check_strength(form.strength, limits)
    if persona and strength != 0:
        item, vec = ctx.catalog.view(session).resolve_fitting(persona)  # type: ignore[arg-type]
        layer = check_layer(form.layer, n)
        plan += add_plan(vec.vectors, (layer,), strength)
        words.append(f"steered: {item.name}, strength {strength:g} at layer {layer}")
    if form.cap:
        percentile = check_percentile(form.cap_percentile)
        text = form.cap_layers.strip() if isinstance(form.cap_layers, str) else ""
        layers = parse_layers(text, n) if text else default_cap_layers(n)
        plan += ctx.axis().cap_plan(layers, percentile)
        span = f"{layers[0]}–{layers[-1]}" if len(layers) > 1 else str(layers[0])
        words.append(f"capped: {percentile:g}th percentile at layers {span}")
    return tuple(plan), "; ".join(words)


def _chat_view(messages: Sequence[ChatMessage]) -> list[dict]:
    """The chat as the chatbot shows it: every message as text (it renders Markdown and HTML;
    the raw text is in the history)."""
    return [
        {"role": m.role, "content": chat_text(m.content)} for m in messages if m.role != "system"
    ]


def _history_value(messages: Sequence[ChatMessage], records: Sequence[dict]) -> dict:
    return {
        "conversation": [{"role": m.role, "content": m.content} for m in messages],
        "turns": list(records),
    }


def run_chat(
    ctx: AppContext,
    tab: DriftTab,
    form: ChatForm,
    session: Mapping | None,
    *,
    request: gr.Request | None,
) -> Iterator[dict]:
    """Answer one message, streaming the text; the last update adds the turn's projections."""
    with user_errors():
        limits = ctx.settings.limits
        n = ctx.model.n_layers
        message = check_text(form.message, "message", limits.max_prompt_chars, required=True)
        layer = plot_layer(ctx, form.plot_layer)
        messages, raw_records = _history_messages(form.history)
        records = [_check_record(r, n) for r in raw_records]
        personas = projected_vectors(ctx, session, form.projections)
        plan, settings = _chat_plan(ctx, form, session)
        cfg = sampling(
            limits, form.max_new_tokens, form.temperature, form.seed, form.frequency_penalty
        )
        axis = ctx.axis()
        shown = [*_chat_view(messages), {"role": "user", "content": chat_text(message)}]
        yield {tab.chatbot: shown, tab.message: "", tab.chat_status: "Generating…"}
        turn = None
        with ctx.job(request) as job:
            for text, out in coalesce(
                chat_turn_stream(
                    ctx.model,
                    axis,
                    messages,
                    message,
                    cfg=cfg,
                    plan=plan,
                    personas=personas,
                    # The history may take the whole prompt limit; the answer comes on top of it.
                    window_tokens=min(
                        MAX_WINDOW_TOKENS,
                        max(MIN_WINDOW_TOKENS, limits.max_prompt_tokens + cfg.max_new_tokens),
                    ),
                    should_stop=job,
                )
            ):
                if out is None:
                    yield {tab.chatbot: [*shown, {"role": "assistant", "content": chat_text(text)}]}
                else:
                    turn = out
            timed_out = job.timed_out()
        assert turn is not None
        reply = turn.reply if turn.reply.strip() else "(empty answer)"
        messages += [
            ChatMessage(role="user", content=message),
            ChatMessage(role="assistant", content=reply),
        ]
        number = sum(1 for m in messages if m.role == "assistant")
        records.append(
            {
                "turn": number,
                "projection": turn.projection,
                "normalised": turn.normalised,
                "personas": turn.personas,
                "preview": " ".join(reply.split()[:12]),
                "settings": settings,
                "windowed": turn.dropped_messages > 0,
            }
        )
        yield {
            tab.chatbot: _chat_view(messages),
            tab.history: _history_value(messages, records),
            tab.chat_plot: chat_figure(records, layer, n),
            tab.chat_status: turn_status(turn, layer, settings, timed_out),
        }


# --------------------------------------------------------------------------- replay


def _conversations(ctx: AppContext, form: ReplayForm) -> list[Conversation]:
    keys = form.transcripts or []
    if isinstance(keys, str) or not isinstance(keys, Sequence):
        raise InputError("Transcripts must be a list of names.")
    by_label = {label: key for label, key in shipped_transcripts()}
    wanted = list(dict.fromkeys(k for k in keys if isinstance(k, str) and k.strip()))
    convs = [shipped_transcript(by_label.get(k, k)) for k in wanted]
    if form.upload:
        with held(str(form.upload)) as path:  # read again by a replay; deleted when unused
            convs.append(load_conversation(path, label=f"upload: {path.stem[:60]}"))
    if not convs:
        raise InputError("Choose at least one transcript or upload a conversation file.")
    if len(convs) > APP_DRIFT_MAX_REPLAYS:
        raise InputError(
            f"{len(convs)} conversations chosen: replay at most {APP_DRIFT_MAX_REPLAYS} at once."
        )
    return convs


def _window(ctx: AppContext, value: object) -> int:
    top = max(MIN_WINDOW_TOKENS, ctx.settings.limits.max_prompt_tokens)
    return check_int(value, "Window (tokens)", MIN_WINDOW_TOKENS, top)


def _kept(value: object) -> list[dict]:
    # The state only ever holds what run_replay put there.
    return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []


def run_replay(
    ctx: AppContext,
    tab: DriftTab,
    form: ReplayForm,
    session: Mapping | None,
    *,
    kept: object,
    request: gr.Request | None,
    progress: Any,
) -> Iterator[dict]:
    """Replay each chosen conversation through the model and plot them side by side."""
    with user_errors():
        n = ctx.model.n_layers
        layer = plot_layer(ctx, form.plot_layer)
        window = _window(ctx, form.window_tokens)
        personas = projected_vectors(ctx, session, form.projections)
        convs = _conversations(ctx, form)
        axis: AxisData = ctx.axis(lambda f, m: progress(f, desc=m))
        plan = axis.cap_plan() if form.cap else ()
        # Shipped replays first, then this server's cache: a demo's transcripts come back in
        # seconds, and any visitor's second replay of a conversation too.
        store = ReplayStore(ctx.settings.cache_dir / "replays")
        done: list[dict] = []
        with ctx.job(request) as job:
            for k, conv in enumerate(convs):

                def report(fraction: float, message: str, k: int = k) -> None:
                    progress((k + fraction) / len(convs), desc=message)

                result = replay(
                    ctx.model,
                    axis,
                    conv,
                    window_tokens=window,
                    personas=personas,
                    plan=plan,
                    progress=report,
                    should_stop=job,
                    store=store,
                )
                record = replay_record(result, layer)
                if plan:
                    record["label"] += " · capped here"
                done.append(record)
                yield {tab.replay_status: replay_summary(done, layer) + "\n\nReplaying…"}
                if result.stopped:
                    break
            timed_out = job.timed_out()
        fresh = {r["label"] for r in done}
        records = ([r for r in _kept(kept) if r["label"] not in fresh] + done)[-MAX_KEPT_REPLAYS:]
        summary = replay_summary(records, layer)
        if timed_out:
            limit = ctx.settings.limits.job_timeout_s
            summary += (
                f"\n\nStopped at the time limit for one job ({limit} s): a smaller window "
                "or fewer transcripts at once go faster."
            )
        yield {
            tab.replay_plot: replay_figure(records, layer, n),
            tab.replay_status: summary,
            tab.replay_json: public_replays(done, layer),
            tab.replays: records,
        }


def replot(ctx: AppContext, tab: DriftTab, layer: object, history: object, *, kept: object) -> dict:
    """Both plots at another layer, from what is kept: nothing is computed again."""
    with user_errors():
        n = ctx.model.n_layers
        at = plot_layer(ctx, layer)
        out: dict = {}
        try:
            _, raw = _history_messages(history)
            records = [_check_record(r, n) for r in raw]
        except InputError:
            records = []
        out[tab.chat_plot] = chat_figure(records, at, n)
        replays = _kept(kept)
        out[tab.replay_plot] = replay_figure(replays, at, n)
        if replays:
            out[tab.replay_status] = replay_summary(replays, at)
            out[tab.replay_json] = public_replays(replays, at)
        return out


def stop_jobs(ctx: AppContext, request: gr.Request | None) -> None:
    """Ask this session's running chat answer or replay to stop after the current step."""
    ctx.jobs.stop(request.session_hash if request is not None else None)


def refresh_vectors(ctx: AppContext, session: Mapping | None, persona: Any, current: Any) -> dict:
    view = ctx.catalog.view(session)  # type: ignore[arg-type]
    choices = view.fitting_choices()
    keys = {k for _, k in choices}
    kept = [k for k in current or [] if k in keys]
    return {
        "persona": gr.update(
            choices=[("none (no steering)", ""), *choices],
            value=persona if persona in keys else "",
        ),
        "projections": gr.update(choices=choices, value=kept),
    }
