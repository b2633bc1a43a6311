"""The Screen data tab: score training samples for persona evidence before training on them
(issue 11), and see whether an inoculation context changes the scores.

A shipped teaching file or an uploaded JSONL/CSV file is read; each sample's response is
projected onto up to four persona vectors at one layer, minus the projection of the model's own
answer to the same prompt (or raw, without own answers). The results land in a ranked,
filterable table, a histogram per vector, the top samples and a list of skipped lines; the
inoculation view scores the same samples again with a context put before each one and shows
both distributions and the per-sample change. Downloads: the scored file as CSV and JSONL.

The public ``/screen`` endpoint is the Screen button; everything else (filtering, sorting,
re-scoring, downloads) starts from the run kept in ``gr.State``. This module lays the tab out
and wires its events; the widgets are :class:`.components.ScreeningTab`, the handlers live in
:mod:`.handlers` and the wording in :mod:`.views`.

Imports: ``core.limits``, ``plots``, ``ui.shared`` (context, data files, forms, teaching), and
this tab's components, handlers and views.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from persona_explorer.core.limits import (
    APP_SCREENING_MAX_OWN_TOKENS,
    APP_SCREENING_MAX_SAMPLES_OWN,
    APP_SCREENING_MAX_SAMPLES_RAW,
    APP_SCREENING_MAX_VECTORS,
)
from persona_explorer.plots.common import empty_figure
from persona_explorer.ui.screening.components import ScreeningTab
from persona_explorer.ui.screening.handlers import (
    DEFAULT_CONTEXT,
    DEFAULT_DATASET,
    DEFAULT_MAX_SAMPLES,
    DEFAULT_OWN_TOKENS,
    FAILED,
    READY,
    ScreenForm,
    clamp_samples,
    default_vectors,
    prepare_downloads,
    recommended_layer,
    refresh_vectors,
    rescore,
    run_screen,
    show_table,
    stop_screening,
)
from persona_explorer.ui.screening.views import NO_INOCULATION
from persona_explorer.ui.shared import teaching
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.shared.data_files import data_inputs
from persona_explorer.ui.shared.forms import form_endpoint

__all__ = ["ScreeningTab", "build", "refresh_vectors"]

# Gradio injects a live progress tracker where a parameter defaults to a gr.Progress.
PROGRESS = gr.Progress()

SCREEN_DOC = """Screen a data file for persona evidence: a shipped teaching file (dataset, e.g.
"insecure_code_unprompted") or an uploaded .jsonl/.csv file (file; used instead of dataset
when given), scored for 1-4 persona vectors (names or keys) at one layer.

With own_answers, each score is the sample's projection minus the projection of the model's own
greedy answer (max_new_tokens long) to the same prompt; without, the raw projection. At most
200 samples with own answers, 2,000 without (max_samples). With with_context, the samples are
scored again with context put before each one (inoculation) and the change is reported.

Returns the ranked table, the histograms, the with/without-context figure, the top samples,
the skipped lines, a JSON summary (counts, per vector mean/min/max and top samples, the
inoculation change) and a status line."""

INOCULATION_INTRO = """\
**Inoculation.** The same samples are scored again with a context put before each one, as a
system prompt, in both readings (the sample's and the model's own answer). The Persona
Selection Model predicts that a sample framed as explicitly requested carries less persona
evidence. What this 135M model showed on the teaching files (*evil* vector, own answers): the
context below did **not** lower the score of the unprompted insecure-code samples in any
meaningful way (layer 14: +3.1 → +3.0; layer 20: +11.5 → +12.9), while asking for the same code
explicitly in the prompt (*insecure code, requested for a class*) lowered it at layer 20 only
(+11.5 → +8.2). See what it shows for your data."""


def build(ctx: AppContext, state: gr.State) -> ScreeningTab:
    n = ctx.model.n_layers
    choices = ctx.catalog.view(None).fitting_choices()
    vectors0 = default_vectors(choices)
    max_tokens = min(APP_SCREENING_MAX_OWN_TOKENS, ctx.settings.limits.max_new_tokens)
    teaching.panel(teaching.SCREENING)
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=300, elem_classes="pe-controls"):
            picked = data_inputs(DEFAULT_DATASET, "pe-screen", "the sample")
            dataset, upload = picked.dataset, picked.upload
            vectors = gr.Dropdown(
                choices,
                value=vectors0,
                multiselect=True,
                max_choices=APP_SCREENING_MAX_VECTORS,
                label=f"Persona vectors (1 to {APP_SCREENING_MAX_VECTORS})",
                elem_id="pe-screen-vectors",
                # Plain names from the API, and vectors added after the page was built:
                # the handler resolves each one and refuses what it cannot use.
                allow_custom_value=True,
            )
            refresh = gr.Button("Refresh the list", size="sm", elem_id="pe-screen-refresh")
            layer = gr.Slider(
                0,
                n - 1,
                value=recommended_layer(ctx, None, vectors0),
                step=1,
                label="Layer",
                info="Set to the first vector's recommended layer when you pick it.",
                elem_id="pe-screen-layer",
            )
            own = gr.Checkbox(
                True,
                label="Compare with the model's own answer",
                info="Off: raw projections, about 8× faster, but not the paper's measure.",
                elem_id="pe-screen-own",
            )
            max_new_tokens = gr.Slider(
                8,
                max_tokens,
                value=min(DEFAULT_OWN_TOKENS, max_tokens),
                step=1,
                label="Max new tokens of the model's own answers",
                elem_id="pe-screen-tokens",
            )
            max_samples = gr.Slider(
                1,
                APP_SCREENING_MAX_SAMPLES_RAW,
                value=DEFAULT_MAX_SAMPLES,
                step=1,
                label="Max samples (the first ones of the file)",
                info=f"At most {APP_SCREENING_MAX_SAMPLES_OWN} with own answers (generating one "
                f"takes 0.5-4 s on a small CPU; cached after), {APP_SCREENING_MAX_SAMPLES_RAW:,} "
                "without (several samples a second).",
                elem_id="pe-screen-samples",
            )
            with gr.Row():
                run = gr.Button("Screen", variant="primary", scale=3, elem_id="pe-screen-run")
                stop = gr.Button("Stop", scale=1, elem_id="pe-screen-stop")
        with gr.Column(scale=8, min_width=420):
            status = gr.Markdown(
                READY, label="Status", elem_id="pe-screen-status", elem_classes="pe-status"
            )
            histogram = gr.Plot(
                empty_figure("The scores' histograms appear here"),
                label="Scores per vector",
                show_label=False,
                elem_id="pe-screen-histogram",
            )
            top = gr.Markdown("", label="Top samples", elem_id="pe-screen-top")
            with gr.Row():
                filter_box = gr.Textbox(
                    "",
                    label="Filter (text in the prompt or answers, or a line number)",
                    max_lines=1,
                    scale=3,
                    elem_id="pe-screen-filter",
                )
                sort_by = gr.Dropdown(
                    [], value=None, label="Sort by", scale=2, elem_id="pe-screen-sort"
                )
            table = gr.Dataframe(
                headers=["Rank", "Line", "Score", "Prompt", "Response"],
                interactive=False,
                wrap=True,
                max_height=520,
                # Rank and line stay narrow; the scores (their number changes with the
                # vectors chosen) and the excerpts share the rest.
                column_widths=["64px", "64px"],
                label="Scored samples",
                elem_id="pe-screen-table",
                elem_classes="pe-table",
            )
            with gr.Accordion("Skipped lines", open=False):
                problems = gr.Markdown("", label="Skipped lines", elem_id="pe-screen-problems")
            with gr.Accordion("Inoculation: score again with a context", open=True):
                gr.Markdown(INOCULATION_INTRO)
                context = gr.Textbox(
                    DEFAULT_CONTEXT,
                    label="Context (put before every sample as a system prompt)",
                    lines=2,
                    elem_id="pe-screen-context",
                )
                with gr.Row():
                    rescore_btn = gr.Button(
                        "Re-score with this context", variant="primary", elem_id="pe-screen-rescore"
                    )
                    with_context = gr.Checkbox(
                        False,
                        label="Also score with the context when I press Screen",
                        elem_id="pe-screen-with-context",
                    )
                inoculation = gr.Markdown(
                    NO_INOCULATION, label="Inoculation", elem_id="pe-screen-inoculation"
                )
                inoculation_plot = gr.Plot(
                    empty_figure("Re-score with a context to compare"),
                    label="With and without the context",
                    show_label=False,
                    elem_id="pe-screen-inoculation-plot",
                )
            with gr.Row():
                prepare = gr.Button("Prepare download", elem_id="pe-screen-prepare")
                download_csv = gr.DownloadButton(
                    "Scores (CSV)", visible=False, elem_id="pe-screen-csv"
                )
                download_jsonl = gr.DownloadButton(
                    "Scores (JSONL)", visible=False, elem_id="pe-screen-jsonl"
                )
            with gr.Accordion("Summary (JSON)", open=False):
                summary = gr.JSON(None, label="Summary", elem_id="pe-screen-json")
    run_state = gr.State(None)
    tab = ScreeningTab(
        dataset=dataset, upload=upload, vectors=vectors, refresh=refresh, layer=layer, own=own,
        max_new_tokens=max_new_tokens, max_samples=max_samples, run=run, stop=stop,
        status=status, histogram=histogram, top=top, filter=filter_box, sort_by=sort_by,
        table=table, problems=problems, context=context, with_context=with_context,
        rescore=rescore_btn, inoculation=inoculation, inoculation_plot=inoculation_plot,
        prepare=prepare, download_csv=download_csv, download_jsonl=download_jsonl,
        summary=summary, run_state=run_state,
    )  # fmt: skip
    _wire(ctx, tab, state)
    return tab


def _wire(ctx: AppContext, tab: ScreeningTab, state: gr.State) -> None:
    private: dict[str, Any] = {"api_visibility": "private"}
    heavy = ctx.heavy_queue()  # screening is a long job like an extraction
    screen = form_endpoint(
        ScreenForm,
        lambda form, session, request, progress: run_screen(
            ctx, tab, form, session, request=request, progress=progress
        ),
        name="screen",
        doc=SCREEN_DOC,
        request=True,
        progress=True,
    )
    outputs = [
        tab.table, tab.histogram, tab.inoculation_plot, tab.top, tab.problems, tab.summary,
        tab.status, tab.inoculation, tab.run_state, tab.sort_by, tab.filter, tab.download_csv,
        tab.download_jsonl,
    ]  # fmt: skip
    tab.screened = tab.run.click(
        screen,
        inputs=[
            tab.dataset, tab.upload, tab.vectors, tab.layer, tab.own, tab.max_new_tokens,
            tab.max_samples, tab.context, tab.with_context, state,
        ],
        outputs=outputs,
        api_name="screen",
        show_progress_on=[tab.status],
        **heavy,
    )  # fmt: skip
    # A failed run keeps an error badge on its progress target; a line about it replaces it.
    tab.screened.failure(
        lambda: FAILED, None, tab.status, queue=False, show_progress="hidden", **private
    )

    def rescore_handler(
        kept: object,
        context: str,
        sort_by: str | None,
        request: gr.Request,
        progress: gr.Progress = PROGRESS,
    ) -> Iterator[dict]:
        yield from rescore(
            ctx, tab, kept, context, sort_by=sort_by, request=request, progress=progress
        )

    tab.rescore.click(
        rescore_handler,
        inputs=[tab.run_state, tab.context, tab.sort_by],
        outputs=outputs,
        show_progress_on=[tab.inoculation],
        **heavy,
        **private,
    )

    def stop_this_session(request: gr.Request) -> str:
        return stop_screening(ctx, request)

    # The flag ends a running screening at its next batch; what was scored is still shown.
    tab.stop.click(
        stop_this_session, None, tab.status, queue=False, show_progress="hidden", **private
    )
    gr.on(
        [tab.filter.change, tab.sort_by.input],
        lambda kept, text, sort_by: show_table(tab, kept, text, sort_by),
        inputs=[tab.run_state, tab.filter, tab.sort_by],
        outputs=[tab.table, tab.top],
        trigger_mode="always_last",
        show_progress="hidden",
        **private,
    )
    tab.prepare.click(
        lambda kept: prepare_downloads(ctx, tab, kept),
        inputs=[tab.run_state],
        outputs=[tab.download_csv, tab.download_jsonl],
        **private,
    )
    # A pick from the list clears the upload, and an upload the pick: one file is screened.
    tab.dataset.input(lambda: None, None, tab.upload, queue=False, **private)
    tab.upload.upload(lambda: None, None, tab.dataset, queue=False, **private)
    tab.vectors.input(
        lambda session, keys: recommended_layer(ctx, session, keys),
        inputs=[state, tab.vectors],
        outputs=tab.layer,
        queue=False,
        show_progress="hidden",
        **private,
    )
    tab.own.input(
        clamp_samples,
        inputs=[tab.own, tab.max_samples],
        outputs=tab.max_samples,
        queue=False,
        show_progress="hidden",
        **private,
    )
    tab.refresh.click(
        lambda session, current: refresh_vectors(ctx, session, current),
        inputs=[state, tab.vectors],
        outputs=tab.vectors,
        queue=False,
        **private,
    )
