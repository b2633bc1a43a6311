"""The Tour tab's layout and events (see the package docstring; steps: :mod:`.steps`).

Made for a phone held in one hand as much as for a projector: the numbered step buttons at the
top, then the text, the answers, the result in words and the plot, one column, nothing wider than
the screen. The public ``/tour_step`` shows a step; ``/tour_live`` runs one live (steps 5 and 6:
minutes, with a progress bar; Stop ends it between steps).

Imports: gradio, ``ui.shared`` (context, forms, glossary, requests) and this package's
components, handlers and steps.
"""

from __future__ import annotations

import gradio as gr

from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.shared.forms import form_endpoint
from persona_explorer.ui.shared.glossary import glossary_markdown
from persona_explorer.ui.shared.requests import stop_runs
from persona_explorer.ui.tour.components import TourTab
from persona_explorer.ui.tour.handlers import TourForm, first_view, next_step, run_live, run_step
from persona_explorer.ui.tour.steps import INTRO, STEPS, step_choices

__all__ = ["TourTab", "build"]

STEP_DOC = """One step of the Tour (step: cast, steer, drift, cap, screen or train): its text, the
answers where it has two, the result in words, the plot, and whether it was live or shipped."""
LIVE_DOC = """One step of the Tour computed now (steps screen and train: the same code that made
the shipped result; minutes on a small CPU)."""


def build(ctx: AppContext, state: gr.State) -> TourTab:
    first = STEPS[0]
    output, fig, note = first_view(ctx)
    steps = gr.Radio(
        step_choices(),
        value=first.key,
        label="Step",
        show_label=False,
        elem_id="pe-tour-steps",
        elem_classes="pe-tour-steps",
    )
    # Under the step buttons: on a phone the steps are the first thing in reach.
    gr.Markdown(INTRO, elem_classes="pe-tour-intro")
    text = gr.Markdown(first.text, elem_id="pe-tour-text", elem_classes="pe-tour-text")
    note_md = gr.Markdown(note, elem_id="pe-tour-note", elem_classes="pe-status")
    with gr.Row(equal_height=True, visible=False) as answers:
        left = gr.Textbox(
            label="Left", lines=6, max_lines=14, interactive=False, min_width=160,
            elem_id="pe-tour-left", elem_classes="pe-out pe-out-baseline",
        )  # fmt: skip
        right = gr.Textbox(
            label="Right", lines=6, max_lines=14, interactive=False, min_width=160,
            elem_id="pe-tour-right", elem_classes="pe-out pe-out-steered",
        )  # fmt: skip
    output_md = gr.Markdown(output, elem_id="pe-tour-output", elem_classes="pe-status")
    plot = gr.Plot(fig, label="The step's plot", show_label=False, elem_id="pe-tour-plot")
    with gr.Row():
        live = gr.Button(
            "Run it live", variant="primary", visible=not first.live, elem_id="pe-tour-live"
        )
        stop = gr.Button("Stop", variant="secondary", elem_id="pe-tour-stop")
        open_tab = gr.Button(
            f"Open this in {first.tab_label}", variant="secondary", elem_id="pe-tour-open"
        )
        next_button = gr.Button("Next step →", variant="secondary", elem_id="pe-tour-next")
    link = gr.Markdown("", elem_id="pe-tour-link")
    with gr.Accordion(
        "Glossary: the words in bold", open=False, elem_classes="pe-teach pe-glossary"
    ):
        gr.Markdown(glossary_markdown())
    tab = TourTab(
        steps=steps, text=text, note=note_md, answers=answers, left=left, right=right,
        output=output_md, plot=plot, live=live, stop=stop, open=open_tab, next=next_button,
        link=link,
    )  # fmt: skip
    _wire(ctx, tab, state)
    return tab


def _wire(ctx: AppContext, tab: TourTab, state: gr.State) -> None:
    outputs = [
        tab.text, tab.note, tab.answers, tab.left, tab.right, tab.output, tab.plot, tab.live,
        tab.open, tab.link,
    ]  # fmt: skip
    show = form_endpoint(
        TourForm,
        lambda form, session, request, progress: run_step(
            ctx, tab, form, session, request, progress
        ),
        name="tour_step",
        doc=STEP_DOC,
        request=True,
        progress=True,
    )
    live = form_endpoint(
        TourForm,
        lambda form, session, request, progress: run_live(
            ctx, tab, form, session, request, progress
        ),
        name="tour_live",
        doc=LIVE_DOC,
        request=True,
        progress=True,
    )
    tab.steps.change(
        show,
        inputs=[tab.steps, state],
        outputs=outputs,
        api_name="tour_step",
        show_progress_on=[tab.note],
        trigger_mode="always_last",
        concurrency_limit=ctx.settings.steer_concurrency,
        concurrency_id="generation",
    )
    tab.live.click(
        live,
        inputs=[tab.steps, state],
        outputs=outputs,
        api_name="tour_live",
        show_progress_on=[tab.plot],
        **ctx.heavy_queue(),
    )

    def stop(request: gr.Request) -> str:
        return stop_runs(ctx, request)

    # A flag, not `cancels=`: the run ends at its next step and still reports what it made.
    tab.stop.click(stop, None, tab.note, queue=False, api_visibility="private")
    tab.next.click(next_step, tab.steps, tab.steps, queue=False, api_visibility="private")
