"""The Drift tab: where each assistant turn sits on the Assistant Axis (issue 10, item 3).

Two parts share one layer slider and one list of persona vectors to project onto:

* **Chat** (public ``/chat``): a multi-turn chat; each answer's response-mean activation is
  projected onto the axis (and the chosen persona vectors) and plotted turn by turn. Steering
  with a persona vector and activation capping can be switched on for any turn. The
  conversation so far lives in a JSON component (``{"conversation": [...], "turns": [...]}``,
  the transcripts' format): it is the ``history`` the API takes and returns, and a file of it
  can be replayed.
* **Replay** (public ``/replay``): shipped transcripts and/or one uploaded JSON file are fed
  through the model teacher-forced (:func:`persona_explorer.axis.drift.replay`) and plotted
  side by side. A shipped replay (the ``persona_drift`` transcripts on the embedded model) or
  one this server cached is used when it fits, so those come back in seconds; the summary says
  which.

Moving the layer re-draws both plots from what the tab keeps (the chat's turns, the replays in
a ``gr.State``): nothing is computed again.

Both series download as JSON and CSV (:mod:`.downloads`), written after each answer, replay or
move of the layer from what the tab keeps.

``build`` lays the tab out and wires its events; the widgets are :class:`.components.DriftTab`,
the actions :mod:`.handlers` (the forms and the handlers) and what they show :mod:`.views`.

Imports: gradio, ``core.limits`` (the tab's bounds), ``axis`` (defaults, the shipped
transcripts), ``plots``, ``ui.shared`` (context, forms, markup, teaching) and this tab's
components, handlers and views.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from persona_explorer.axis.assistant_axis import default_axis_layer, default_cap_layers
from persona_explorer.axis.conversation import shipped_transcripts
from persona_explorer.axis.windows import DEFAULT_WINDOW_TOKENS
from persona_explorer.core.limits import (
    APP_DRIFT_MAX_PROJECTED,
    APP_DRIFT_MAX_REPLAYS,
    DEFAULT_FREQUENCY_PENALTY,
    DEFAULT_TEMPERATURE,
    MAX_PENALTY,
)
from persona_explorer.plots.common import empty_figure
from persona_explorer.ui.drift.components import DriftTab
from persona_explorer.ui.drift.downloads import chat_downloads, replay_downloads
from persona_explorer.ui.drift.handlers import (
    DEFAULT_CHAT_TOKENS,
    WINDOW_CHOICES,
    ChatForm,
    ReplayForm,
    refresh_vectors,
    replot,
    run_chat,
    run_replay,
    stop_jobs,
)
from persona_explorer.ui.drift.views import NO_CHAT, NO_REPLAY
from persona_explorer.ui.shared import teaching
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.shared.forms import form_endpoint
from persona_explorer.ui.shared.markup import md

# --------------------------------------------------------------------------- layout


def build(ctx: AppContext, state: gr.State) -> DriftTab:
    n = ctx.model.n_layers
    limits = ctx.settings.limits
    default_layer = default_axis_layer(n)
    cap_default = default_cap_layers(n)
    choices = ctx.catalog.view(None).fitting_choices()
    teaching.panel(teaching.DRIFT)
    with gr.Row():
        plot_layer_slider = gr.Slider(
            0,
            n - 1,
            value=default_layer,
            step=1,
            label="Layer plotted",
            info="Where each turn is read. The middle of the stack by default.",
            elem_id="pe-drift-layer",
            scale=1,
        )
        projections = gr.Dropdown(
            choices,
            value=[],
            multiselect=True,
            max_choices=APP_DRIFT_MAX_PROJECTED,
            label="Also project onto persona vectors",
            elem_id="pe-drift-projections",
            allow_custom_value=True,  # names from the API; the handler resolves each
            scale=2,
        )
    with gr.Tabs():
        with gr.Tab("Chat", id="drift-chat"), gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=300):
                chatbot = gr.Chatbot([], label="Chat", height=420, elem_id="pe-drift-chatbot")
                message = gr.Textbox(
                    "",
                    label="Your message",
                    lines=2,
                    max_lines=8,
                    placeholder="e.g. Let's play a game: you are a pirate captain. Who are you?",
                    elem_id="pe-drift-message",
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="pe-drift-send")
                    stop_chat = gr.Button("Stop", elem_id="pe-drift-stop-chat")
                    clear = gr.Button("New chat", elem_id="pe-drift-clear")
                with gr.Accordion("Steering and capping", open=False):
                    persona = gr.Dropdown(
                        [("none (no steering)", ""), *choices],
                        value="",
                        label="Steer with",
                        elem_id="pe-drift-persona",
                        allow_custom_value=True,
                    )
                    layer = gr.Slider(
                        0, n - 1, value=(2 * n) // 3, step=1, label="Steering layer",
                        elem_id="pe-drift-steer-layer",
                    )  # fmt: skip
                    strength = gr.Slider(
                        -limits.max_abs_strength,
                        limits.max_abs_strength,
                        value=0.0,
                        step=0.5,
                        label="Strength (0: no steering)",
                        elem_id="pe-drift-strength",
                    )
                    cap = gr.Checkbox(
                        False,
                        label="Activation capping (hold the answer near the Assistant)",
                        elem_id="pe-drift-cap",
                    )
                    cap_percentile = gr.Slider(
                        0, 100, value=25, step=5, label="Cap floor: percentile",
                        elem_id="pe-drift-cap-percentile",
                    )  # fmt: skip
                    cap_layers = gr.Textbox(
                        f"{cap_default[0]}-{cap_default[-1]}",
                        label="Capped layers",
                        elem_id="pe-drift-cap-layers",
                    )
                with gr.Accordion("Generation", open=False):
                    max_new_tokens = gr.Slider(
                        4, limits.max_new_tokens, value=DEFAULT_CHAT_TOKENS, step=1,
                        label="Max new tokens", elem_id="pe-drift-tokens",
                    )  # fmt: skip
                    temperature = gr.Slider(
                        0, limits.max_temperature, value=DEFAULT_TEMPERATURE, step=0.05,
                        label="Temperature (0 = greedy)", elem_id="pe-drift-temperature",
                    )  # fmt: skip
                    seed = gr.Number(0, label="Seed", precision=0, elem_id="pe-drift-seed")
                    frequency_penalty = gr.Slider(
                        0, MAX_PENALTY, value=DEFAULT_FREQUENCY_PENALTY, step=0.1,
                        label="Frequency penalty (0 = off)",
                        info="Lowers a word's chance each time the answer repeats it.",
                        elem_id="pe-drift-frequency-penalty",
                    )  # fmt: skip
            with gr.Column(scale=6, min_width=320):
                chat_status = gr.Markdown(
                    md(NO_CHAT),
                    label="Chat status",
                    elem_id="pe-drift-chat-status",
                    elem_classes="pe-status",
                )
                chat_plot = gr.Plot(
                    empty_figure(NO_CHAT),
                    label="Chat turns on the axis",
                    show_label=False,
                    elem_id="pe-drift-chat-plot",
                )
                with gr.Accordion("Conversation so far (JSON: replayable)", open=False):
                    history = gr.JSON({}, label="Conversation", elem_id="pe-drift-history")
                with gr.Row():
                    chat_file_json = gr.DownloadButton(
                        "Download the chat's series (JSON)", elem_id="pe-drift-chat-json"
                    )
                    chat_file_csv = gr.DownloadButton(
                        "Download the chat's series (CSV)", elem_id="pe-drift-chat-csv"
                    )
        with gr.Tab("Replay", id="drift-replay"), gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=300):
                transcripts = gr.Dropdown(
                    shipped_transcripts(),
                    value=[],
                    multiselect=True,
                    max_choices=APP_DRIFT_MAX_REPLAYS,
                    label="Transcripts",
                    info="Long conversations from the paper (other models' answers, read "
                    "by this model).",
                    elem_id="pe-drift-transcripts",
                )
                upload = gr.File(
                    label="…or upload a conversation (JSON)",
                    file_types=[".json"],
                    type="filepath",
                    elem_id="pe-drift-upload",
                )
                window = gr.Dropdown(
                    [c for c in WINDOW_CHOICES if c <= limits.max_prompt_tokens]
                    or [limits.max_prompt_tokens],
                    value=min(DEFAULT_WINDOW_TOKENS, limits.max_prompt_tokens),
                    label="Window (tokens)",
                    info="Longer conversations are read through their most recent turns "
                    "that fit. Smaller is faster; the Drift transcripts at 2048 are stored "
                    "replays, back in seconds.",
                    elem_id="pe-drift-window",
                )
                replay_cap = gr.Checkbox(
                    False,
                    label="Read with activation capping (25th percentile, layers "
                    f"{cap_default[0]}–{cap_default[-1]})",
                    elem_id="pe-drift-replay-cap",
                )
                with gr.Row():
                    run_btn = gr.Button("Replay", variant="primary", elem_id="pe-drift-run")
                    stop_replay = gr.Button("Stop", elem_id="pe-drift-stop-replay")
            with gr.Column(scale=8, min_width=320):
                replay_status = gr.Markdown(
                    md(NO_REPLAY),
                    label="Replay summary",
                    elem_id="pe-drift-replay-status",
                    elem_classes="pe-status",
                )
                replay_plot = gr.Plot(
                    empty_figure(NO_REPLAY),
                    label="Replayed turns on the axis",
                    show_label=False,
                    elem_id="pe-drift-replay-plot",
                )
                with gr.Accordion("Per-turn numbers (JSON)", open=False):
                    replay_json = gr.JSON(
                        None, label="Per-turn numbers", elem_id="pe-drift-replay-json"
                    )
                with gr.Row():
                    replay_file_json = gr.DownloadButton(
                        "Download the replays' series (JSON)", elem_id="pe-drift-replay-file-json"
                    )
                    replay_file_csv = gr.DownloadButton(
                        "Download the replays' series (CSV)", elem_id="pe-drift-replay-file-csv"
                    )
    replays = gr.State([])
    tab = DriftTab(
        plot_layer=plot_layer_slider, projections=projections, chatbot=chatbot, message=message,
        send=send, stop_chat=stop_chat, clear=clear, persona=persona, layer=layer,
        strength=strength, cap=cap, cap_percentile=cap_percentile, cap_layers=cap_layers,
        max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, chat_plot=chat_plot,
        frequency_penalty=frequency_penalty,
        chat_status=chat_status, history=history, transcripts=transcripts, upload=upload,
        window=window, replay_cap=replay_cap, run_replay=run_btn, stop_replay=stop_replay,
        replay_plot=replay_plot, replay_status=replay_status, replay_json=replay_json,
        replays=replays, chat_file_json=chat_file_json, chat_file_csv=chat_file_csv,
        replay_file_json=replay_file_json, replay_file_csv=replay_file_csv,
    )  # fmt: skip
    _wire(ctx, tab, state)
    return tab


CHAT_DOC = """One turn of the Drift chat: the model answers `message` after `history` (a list of
{role, content} messages, or the object this endpoint returned last time), optionally steered by
a persona vector and/or held by activation capping. Streams the answer.

Returns the chat (messages), the conversation with every answer's projections
({"conversation": [...], "turns": [{"turn", "projection", "normalised", "personas", ...}]}:
per layer, normalised 0 = roles' mean, 1 = default Assistant), the plot and a status line."""

REPLAY_DOC = """Teacher-forced replay of shipped transcripts (keys such as
"persona_drift/therapy", or their labels) and/or one uploaded conversation JSON file: each
assistant turn's mean activation projected onto the Assistant Axis.

Returns the plot, a summary, and {"layer", "replays": [{"label", "turns": [{"turn",
"projection", "normalised", "windowed", ...}], "notes", ...}]}."""


def _wire(ctx: AppContext, tab: DriftTab, state: gr.State) -> None:
    chat_inputs = [
        tab.message, tab.history, tab.persona, tab.layer, tab.strength, tab.cap,
        tab.cap_percentile, tab.cap_layers, tab.projections, tab.plot_layer, tab.max_new_tokens,
        tab.temperature, tab.seed, tab.frequency_penalty,
    ]  # fmt: skip
    chat = form_endpoint(
        ChatForm,
        lambda form, session, request: run_chat(ctx, tab, form, session, request=request),
        name="chat",
        doc=CHAT_DOC,
        request=True,
    )
    chatted = gr.on(
        [tab.send.click, tab.message.submit],
        chat,
        inputs=[*chat_inputs, state],
        outputs=[tab.chatbot, tab.history, tab.chat_plot, tab.chat_status, tab.message],
        api_name="chat",
        show_progress_on=[tab.chat_plot],
        concurrency_limit=ctx.settings.steer_concurrency,
        concurrency_id="generation",
    )

    replay = form_endpoint(
        ReplayForm,
        lambda form, session, kept, request, progress: run_replay(
            ctx, tab, form, session, kept=kept, request=request, progress=progress
        ),
        name="replay",
        doc=REPLAY_DOC,
        states=("kept",),  # the replays this session keeps for re-plotting
        request=True,
        progress=True,
    )
    replayed = tab.run_replay.click(
        replay,
        inputs=[
            tab.transcripts,
            tab.upload,
            tab.window,
            tab.projections,
            tab.plot_layer,
            tab.replay_cap,
            state,
            tab.replays,
        ],
        outputs=[tab.replay_plot, tab.replay_status, tab.replay_json, tab.replays],
        api_name="replay",
        show_progress_on=[tab.replay_plot],
        concurrency_limit=ctx.settings.steer_concurrency,
        concurrency_id="generation",
    )

    def stop(request: gr.Request) -> None:
        stop_jobs(ctx, request)

    for button in (tab.stop_chat, tab.stop_replay):
        button.click(
            stop,
            None,
            None,
            queue=False,
            api_visibility="private",
        )
    replotted = tab.plot_layer.change(
        lambda layer, history, kept: replot(ctx, tab, layer, history, kept=kept),
        inputs=[tab.plot_layer, tab.history, tab.replays],
        outputs=[tab.chat_plot, tab.replay_plot, tab.replay_status, tab.replay_json],
        trigger_mode="always_last",
        show_progress="hidden",
        api_visibility="private",
    )
    tab.clear.click(
        lambda: ({}, [], empty_figure(NO_CHAT), md(NO_CHAT), None, None),
        None,
        [
            tab.history,
            tab.chatbot,
            tab.chat_plot,
            tab.chat_status,
            tab.chat_file_json,
            tab.chat_file_csv,
        ],
        queue=False,
        api_visibility="private",
    )

    # The series as files, written from what the tab keeps once an event has drawn it.
    chat_files = [tab.chat_file_json, tab.chat_file_csv]
    replay_files = [tab.replay_file_json, tab.replay_file_csv]
    for event in (chatted, replotted):
        event.success(
            lambda history, layer: chat_downloads(ctx, history, layer),
            [tab.history, tab.plot_layer],
            chat_files,
            show_progress="hidden",
            api_visibility="private",
        )
    for event in (replayed, replotted):
        event.success(
            lambda kept, layer: replay_downloads(ctx, kept, layer),
            [tab.replays, tab.plot_layer],
            replay_files,
            show_progress="hidden",
            api_visibility="private",
        )

    def refresh(session: dict | None, persona: Any, current: Any) -> dict:
        updates = refresh_vectors(ctx, session, persona, current)
        return {tab.persona: updates["persona"], tab.projections: updates["projections"]}

    # The lists follow the session's vectors (an extraction or upload in another tab) whenever
    # the visitor opens the controls.
    tab.projections.focus(
        refresh,
        [state, tab.persona, tab.projections],
        [tab.persona, tab.projections],
        queue=False,
        api_visibility="private",
    )
