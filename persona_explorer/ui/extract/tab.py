"""The Extract tab: build a persona vector from contrastive rollouts, with a progress bar.

The persona comes from a shipped trait (persona_vectors), a role (assistant-axis) or the user's
own prompts. The result goes into this session's vectors (with "Remove the Assistant-Axis
component" ticked, without its component along that axis); from there it can be tried in the
Steer tab, saved to the library or downloaded. An option runs a small layer x strength sweep
after the extraction and records its recommendation in the vector before it is listed.

The summary is the tab's status line and the one place its progress bar shows. ``build`` lays
the tab out and wires its events; the widgets are :class:`.components.ExtractTab`, the actions
:mod:`.handlers` (the public ``/extract`` endpoint is the Extract button) and the wording
:mod:`.views`. "Try it in Steer" and "Save to library" are wired by ``ui.build_demo``, since
they change other tabs' lists.

Imports: gradio, ``personas`` (the built-ins), ``plots``, ``ui.shared`` (context, forms,
teaching) and this tab's components, handlers and views.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from persona_explorer.personas.data import list_builtin, load_builtin
from persona_explorer.plots import empty_figure
from persona_explorer.ui.extract.components import ExtractTab
from persona_explorer.ui.extract.handlers import (
    FAILED,
    ExtractForm,
    choose_source,
    extract_token_limit,
    reset_results,
    run_extract,
    save_extracted,
    show_builtin,
    stop_extraction,
)
from persona_explorer.ui.extract.views import preview
from persona_explorer.ui.shared import teaching
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.shared.forms import form_endpoint

# save_extracted: "Save to library", wired by build_demo (it refreshes every tab's lists).
__all__ = ["ExtractTab", "build", "save_extracted"]

SOURCES = [("Built-in trait", "trait"), ("Role", "role"), ("Write your own", "custom")]
VARIANT_CHOICES = [
    ("Answer tokens (response)", "response"),
    ("Prompt tokens (prompt)", "prompt"),
    ("Last prompt token (last)", "last"),
]

CUSTOM_EXAMPLE = {
    "name": "shakespearean",
    "pos": (
        "Speak like a Shakespearean actor: rich Early Modern English, thee and thou, "
        "dramatic flourishes.\n"
        "Answer as a bard of the Globe Theatre would, in ornate, old-fashioned verse-like prose."
    ),
    "neg": (
        "Speak in plain, modern, everyday English.\n"
        "Answer in clear, simple, contemporary language with no flourishes."
    ),
    "questions": (
        "How do I make a good cup of coffee?\n"
        "What should I pack for a weekend trip?\n"
        "Can you explain what a computer does?\n"
        "How can I be more productive in the morning?"
    ),
}


def build(ctx: AppContext, state: gr.State) -> ExtractTab:
    data_dir = ctx.settings.persona_data_dir
    traits = list_builtin("trait", data_dir=data_dir)
    roles = list_builtin("role", data_dir=data_dir)
    trait0 = "evil" if "evil" in traits else (traits[0] if traits else None)
    role0 = "pirate" if "pirate" in roles else (roles[0] if roles else None)
    limits = ctx.settings.limits
    max_tokens = extract_token_limit(limits)

    teaching.panel(teaching.EXTRACT)
    last = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=300, elem_classes="pe-controls"):
            source = gr.Radio(SOURCES, value="trait", label="Start from", elem_id="pe-source")
            trait = gr.Dropdown(
                traits, value=trait0, label="Trait", filterable=True, elem_id="pe-trait"
            )
            role = gr.Dropdown(
                roles, value=role0, label="Role", filterable=True, visible=False,
                elem_id="pe-role",
            )  # fmt: skip
            about = gr.Markdown(
                preview(load_builtin(trait0, "trait", data_dir=data_dir)) if trait0 else "",
                elem_classes="pe-info",
            )
            with gr.Group(visible=False) as custom_box:
                name = gr.Textbox(
                    label="Name", value=CUSTOM_EXAMPLE["name"], elem_id="pe-custom-name"
                )
                pos = gr.Textbox(
                    label="System prompts with the persona (one per line)",
                    value=CUSTOM_EXAMPLE["pos"],
                    lines=3,
                    elem_id="pe-custom-pos",
                )
                neg = gr.Textbox(
                    label="Matching prompts without it (one per line; empty = the default "
                    "Assistant)",
                    value=CUSTOM_EXAMPLE["neg"],
                    lines=3,
                    elem_id="pe-custom-neg",
                )
                questions = gr.Textbox(
                    label="Questions (one per line)",
                    value=CUSTOM_EXAMPLE["questions"],
                    lines=4,
                    elem_id="pe-custom-questions",
                )
            with gr.Accordion("Settings", open=True):
                n_questions = gr.Slider(
                    1, limits.max_extract_questions, value=4, step=1, label="Questions",
                    info="Each is asked once per prompt pair, with and without the persona.",
                    elem_id="pe-n-questions",
                )  # fmt: skip
                max_new_tokens = gr.Slider(
                    4, max_tokens, value=min(32, max_tokens), step=1,
                    label="Max new tokens per answer", elem_id="pe-extract-tokens",
                )  # fmt: skip
                variant = gr.Radio(VARIANT_CHOICES, value="response", label="Average over")
                sweep = gr.Checkbox(
                    False,
                    label="Find layer and strength after extracting (sweep)",
                    info="4 prompts × 4 layers × 4 strengths, 32 tokens each: a minute or two "
                    "more on a small CPU. The vector records what the sweep recommends.",
                    elem_id="pe-extract-sweep",
                )
                remove_axis = gr.Checkbox(
                    False,
                    label="Remove the Assistant-Axis component",
                    info="Persona vectors share a direction away from the default Assistant. "
                    "Ticked, the vector keeps only what is orthogonal to the Assistant Axis at "
                    "each layer (same strength: the original push minus its axis part).",
                    elem_id="pe-extract-remove-axis",
                )
            with gr.Row():
                run = gr.Button(
                    "Extract persona vector", variant="primary", scale=3, elem_id="pe-extract"
                )
                stop = gr.Button("Stop", scale=1, elem_id="pe-extract-stop")
        with gr.Column(scale=8, min_width=420):
            result_md = gr.Markdown(
                "Pick a persona and press **Extract**. A small extraction (4 questions, 32 "
                "tokens) takes about a minute on a laptop CPU.",
                elem_id="pe-extract-summary",
                label="Extraction summary",
            )
            plot = gr.Plot(
                empty_figure("The separation per layer appears here"),
                label="Separation by layer",
                show_label=False,  # the badge would cover the figure's own title
                elem_id="pe-separation",
            )
            with gr.Row():
                try_it = gr.Button(
                    "Try it in Steer", variant="primary", visible=False, elem_id="pe-try"
                )
                save = gr.Button("Save to library", visible=False, elem_id="pe-save")
                download = gr.DownloadButton(
                    "Download (.safetensors)", visible=False, elem_id="pe-download"
                )
            table = gr.Dataframe(
                headers=["Question", "With the persona", "Without"],
                datatype=["str", "str", "str"],
                interactive=False,
                wrap=True,
                # Without fixed widths the grid sizes columns to unwrapped text: the answers
                # take the whole width and the question column shrinks to a word.
                column_widths=["24%", "38%", "38%"],
                label="Example answers",
                elem_id="pe-examples",
                elem_classes="pe-table",
            )

    tab = ExtractTab(
        state=state,
        source=source,
        trait=trait,
        role=role,
        about=about,
        custom_box=custom_box,
        custom_name=name,
        run=run,
        summary=result_md,
        plot=plot,
        examples=table,
        last=last,
        try_it=try_it,
        save=save,
        download=download,
        remove_axis=remove_axis,
    )
    private: dict[str, Any] = {"api_visibility": "private", "queue": False}
    source.change(
        lambda src: choose_source(tab, src), source, [trait, role, custom_box, about], **private
    )
    gr.on(
        [source.change, trait.change, role.change],
        lambda src, t, r: show_builtin(ctx, src, t, r),
        [source, trait, role],
        about,
        **private,
    )
    extract = form_endpoint(
        ExtractForm,
        lambda form, session, request, progress: run_extract(
            ctx, tab, form, session, request=request, progress=progress
        ),
        name="extract",
        doc="Extract a persona vector; it is added to this session's vectors. With sweep, a "
        "small layer x strength sweep follows and its recommendation is recorded in the vector. "
        "With remove_axis, the vector's component along the Assistant Axis is removed first.",
        request=True,
        progress=True,
    )
    outputs = [state, last, result_md, plot, table, try_it, save, download]
    # The previous results go at once, not when the queue reaches this job.
    started = run.click(
        lambda: reset_results(tab), None, outputs[2:], queue=False, show_progress="hidden",
        api_visibility="private",
    )  # fmt: skip
    tab.extracted = started.then(
        extract,
        inputs=[
            source, trait, role, name, pos, neg, questions, n_questions, max_new_tokens, variant,
            sweep, remove_axis, state,
        ],
        outputs=outputs,
        api_name="extract",
        **ctx.heavy_queue(),
        show_progress_on=[result_md],
    )  # fmt: skip
    # A failed event keeps an error badge on its progress target; this replaces it (and the
    # empty summary) with a line about the failure, whose reason the toast gives.
    tab.extracted.failure(
        lambda: FAILED, None, result_md, queue=False, show_progress="hidden",
        api_visibility="private",
    )  # fmt: skip

    def stop_this_session(request: gr.Request) -> str:
        return stop_extraction(ctx, request)

    # The flag ends a running extraction at its next step; `cancels` drops a queued one.
    stop.click(
        stop_this_session, None, result_md, cancels=[tab.extracted], show_progress="hidden",
        **private,
    )  # fmt: skip
    return tab
