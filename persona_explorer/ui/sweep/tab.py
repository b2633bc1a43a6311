"""The Sweep tab: which layer, which strength? (issue 12)

For one persona vector, every cell of a layer x strength grid answers every prompt; each answer
is read back by the unsteered model for its trait rise and its coherence (and repetition). Two
heat maps show the grid with the recommended cell starred and boxed; the table below them is
laid out the same way and is the click target (Gradio's ``gr.Plot`` has no click or select
event: only ``change``), and clicking a cell shows its answers beside the baseline's. The
answers of one layer at every strength are shown side by side. "Use these settings" records the
recommendation in the vector, which the Steer tab then starts from.

``build`` lays the tab out and wires its events; the widgets are :class:`.components.SweepTab`,
the actions :mod:`.handlers` (the public ``/sweep`` endpoint is the Sweep button) and what they
show :mod:`.views`.

Imports: gradio, ``core.limits`` (the app's bounds on a sweep), ``evaluate`` (the criteria's
defaults), ``plots``, ``ui.shared`` (context, forms, teaching) and this tab's components and
handlers.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from persona_explorer.core.limits import (
    APP_SWEEP_MAX_ANSWERS,
    APP_SWEEP_MAX_LAYERS,
    APP_SWEEP_MAX_PROMPTS,
    APP_SWEEP_MAX_STRENGTHS,
    APP_SWEEP_MAX_TOKENS,
)
from persona_explorer.evaluate.sweep_config import Criteria
from persona_explorer.plots.common import empty_figure
from persona_explorer.ui.shared import teaching
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.shared.forms import form_endpoint
from persona_explorer.ui.sweep.components import SweepTab
from persona_explorer.ui.sweep.downloads import sweep_downloads
from persona_explorer.ui.sweep.handlers import (
    DEFAULT_TOKENS,
    FAILED,
    PICK_CELL,
    POSITIONS,
    READY,
    SweepForm,
    clear_tables,
    default_grid_text,
    default_prompts,
    load_fitting,
    pick_vector,
    refresh_vectors,
    run_sweep_form,
    show_cell,
    show_columns,
    show_tables,
    stop_sweep,
    use_settings,
    vector_info,
)

__all__ = ["SweepTab", "build", "refresh_vectors"]

# The bounds the API's doc states (core.limits' APP_SWEEP_*) and the criteria's defaults.
_DOC_VALUES = {
    "prompts": APP_SWEEP_MAX_PROMPTS,
    "layers": APP_SWEEP_MAX_LAYERS,
    "strengths": APP_SWEEP_MAX_STRENGTHS,
    "tokens": APP_SWEEP_MAX_TOKENS,
    "answers": APP_SWEEP_MAX_ANSWERS,
    "criteria": Criteria,
}
SWEEP_DOC = """Sweep a persona vector over layers x strengths (issue 12): every cell answers every
prompt (greedy), and each answer is read back by the unsteered model.

persona: a vector's name or key (e.g. "pirate"); prompts: newline-separated, at most
{prompts}; layers: e.g. "9, 12, 15, 18" (at most {layers}); strengths: e.g.
"0, 1, 2, 4" (at most {strengths}; 0 is the baseline); max_new_tokens: at most
{tokens}; positions: all or response. margin, min_coherence and max_repetition_rise set
what a recommended cell must show (defaults {criteria.margin:g}, {criteria.min_coherence:g},
{criteria.max_repetition_rise:g}). At most {answers} answers in one sweep.

Returns the result as JSON: vector, read_layer, prompts, layers, strengths, positions,
max_new_tokens, criteria, baseline, grid (one cell per layer x strength with layer, strength,
trait, projection, perplexity, coherence, repetition, texts in prompt order, judge), recommended
(a cell or null), reason, stopped, seconds, rows_generated, rows_total; then the status line,
the two heat maps (plotly) and a note. A stopped sweep run
again with the same inputs resumes where it stopped.""".format(**_DOC_VALUES)


def build(ctx: AppContext, state: gr.State, owner: gr.BrowserState) -> SweepTab:
    view = ctx.catalog.view(None)
    choices = view.fitting_choices()
    key0 = view.default_key(ctx.settings.default_persona)
    item0 = view.by_key.get(key0) if key0 else None
    layers0, strengths0 = default_grid_text(ctx, load_fitting(view, item0))
    max_tokens = min(APP_SWEEP_MAX_TOKENS, ctx.settings.limits.max_new_tokens)
    teaching.panel(teaching.SWEEP)
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=300, elem_classes="pe-controls"):
            persona = gr.Dropdown(
                choices,
                value=key0 if any(k == key0 for _, k in choices) else None,
                label="Persona vector",
                filterable=True,
                # Plain names from the API: the handler resolves them and refuses a misfit.
                allow_custom_value=True,
                elem_id="pe-sweep-persona",
            )
            info = gr.Markdown(
                vector_info(ctx, view, item0), elem_classes="pe-info", elem_id="pe-sweep-info"
            )
            prompts = gr.Textbox(
                "\n".join(default_prompts()),
                label=f"Prompts (one per line, at most {APP_SWEEP_MAX_PROMPTS})",
                info="Everyday prompts, unlike the ones the vector was made from.",
                lines=6,
                max_lines=14,
                elem_id="pe-sweep-prompts",
            )
            layers = gr.Textbox(
                layers0,
                label=f"Layers to steer (at most {APP_SWEEP_MAX_LAYERS})",
                info="Commas between them; the default is around the vector's recorded layer.",
                max_lines=1,
                elem_id="pe-sweep-layers",
            )
            strengths = gr.Textbox(
                strengths0,
                label=f"Strengths (at most {APP_SWEEP_MAX_STRENGTHS}; 0 is the baseline)",
                info=(
                    "The default is 0, ¼, ½, 1 and 2 times the vector's recorded strength; "
                    "without a recommendation, the status says what to try next."
                ),
                max_lines=1,
                elem_id="pe-sweep-strengths",
            )
            max_new_tokens = gr.Slider(
                8,
                max_tokens,
                value=min(DEFAULT_TOKENS, max_tokens),
                step=1,
                label="Max new tokens per answer",
                elem_id="pe-sweep-tokens",
            )
            positions = gr.Radio(
                POSITIONS, value="all", label="Steer at", elem_id="pe-sweep-positions"
            )
            with gr.Accordion("What a recommendation must show", open=False):
                margin = gr.Number(
                    Criteria.margin,
                    label="Trait rise at least (× the vector's length)",
                    elem_id="pe-sweep-margin",
                )
                min_coherence = gr.Number(
                    Criteria.min_coherence,
                    label="Coherence at least (1 = as fluent as the baseline)",
                    elem_id="pe-sweep-min-coherence",
                )
                max_repetition_rise = gr.Number(
                    Criteria.max_repetition_rise,
                    label="Repetition at most the baseline's plus",
                    elem_id="pe-sweep-max-repetition",
                )
            with gr.Row():
                run = gr.Button("Sweep", variant="primary", scale=3, elem_id="pe-sweep-run")
                stop = gr.Button("Stop", scale=1, elem_id="pe-sweep-stop")
        with gr.Column(scale=8, min_width=420):
            status = gr.Markdown(
                READY, label="Status", elem_id="pe-sweep-status", elem_classes="pe-status"
            )
            with gr.Row():
                use = gr.Button(
                    "Use these settings",
                    variant="primary",
                    interactive=False,
                    scale=1,
                    elem_id="pe-sweep-use",
                )
                use_note = gr.Markdown("", label="Recorded", elem_id="pe-sweep-use-note")
            with gr.Row(equal_height=False):
                trait_plot = gr.Plot(
                    empty_figure("The trait heat map appears here"),
                    label="Trait rise",
                    show_label=False,
                    min_width=300,
                    elem_id="pe-sweep-trait",
                )
                coherence_plot = gr.Plot(
                    empty_figure("The coherence heat map appears here"),
                    label="Coherence",
                    show_label=False,
                    min_width=300,
                    elem_id="pe-sweep-coherence",
                )
            grid = gr.Dataframe(
                headers=["Layer"],
                interactive=False,
                wrap=True,
                label="The grid: click a cell to read its answers",
                elem_id="pe-sweep-grid",
                elem_classes="pe-table",
            )
            cell = gr.Markdown(PICK_CELL, label="Clicked cell", elem_id="pe-sweep-cell")
            column_layer = gr.Dropdown(
                [],
                value=None,
                label="Answers side by side at layer",
                elem_id="pe-sweep-column-layer",
            )
            columns = gr.Dataframe(
                headers=["Prompt"],
                interactive=False,
                wrap=True,
                max_height=560,
                label="One column per strength",
                elem_id="pe-sweep-columns",
                elem_classes="pe-table",
            )
            with gr.Accordion("Result (JSON)", open=False):
                summary = gr.JSON(None, label="Result", elem_id="pe-sweep-json")
            with gr.Row():
                grid_json = gr.DownloadButton(
                    "Download the grid (JSON)", elem_id="pe-sweep-download-json"
                )
                grid_csv = gr.DownloadButton(
                    "Download the grid (CSV)", elem_id="pe-sweep-download-csv"
                )
    tab = SweepTab(
        state=state, persona=persona, info=info, prompts=prompts, layers=layers,
        strengths=strengths, max_new_tokens=max_new_tokens, positions=positions, margin=margin,
        min_coherence=min_coherence, max_repetition_rise=max_repetition_rise, run=run, stop=stop,
        status=status, trait_plot=trait_plot, coherence_plot=coherence_plot, grid=grid,
        cell=cell, column_layer=column_layer, columns=columns, use=use, use_note=use_note,
        summary=summary, run_state=gr.State(None), used_key=gr.State(None),
    )  # fmt: skip
    _wire(ctx, tab, owner)
    _wire_downloads(ctx, tab, grid_json, grid_csv)
    return tab


def _wire(ctx: AppContext, tab: SweepTab, owner: gr.BrowserState) -> None:
    private: dict[str, Any] = {"api_visibility": "private"}
    sweep = form_endpoint(
        SweepForm,
        lambda form, session, request, progress: run_sweep_form(
            ctx, tab, form, session, request=request, progress=progress
        ),
        name="sweep",
        doc=SWEEP_DOC,
        request=True,
        progress=True,
    )
    outputs = [
        tab.summary, tab.status, tab.trait_plot, tab.coherence_plot, tab.use, tab.use_note,
        tab.run_state,
    ]  # fmt: skip
    started = tab.run.click(
        lambda: clear_tables(tab),
        None,
        [tab.grid, tab.cell, tab.column_layer, tab.columns],
        queue=False,
        show_progress="hidden",
        **private,
    )
    tab.swept = started.then(
        sweep,
        inputs=[
            tab.persona, tab.prompts, tab.layers, tab.strengths, tab.max_new_tokens,
            tab.positions, tab.margin, tab.min_coherence, tab.max_repetition_rise, tab.state,
        ],
        outputs=outputs,
        api_name="sweep",
        show_progress_on=[tab.status],
        **ctx.heavy_queue(),  # a sweep is a long job like an extraction
    )  # fmt: skip
    # A failed run keeps an error badge on its progress target; a line about it replaces it.
    tab.swept.failure(
        lambda: FAILED, None, tab.status, queue=False, show_progress="hidden", **private
    )
    # The tables come after, outside the API: its callers have every number in the JSON.
    tab.swept.success(
        lambda kept: show_tables(tab, kept),
        [tab.run_state],
        [tab.grid, tab.cell, tab.column_layer, tab.columns],
        show_progress="hidden",
        **private,
    )

    def stop_this_session(request: gr.Request) -> str:
        return stop_sweep(ctx, request)

    # A flag, not `cancels=`: the sweep ends at its next step and reports the batches that
    # finished (kept in the checkpoint), instead of being killed mid-way.
    tab.stop.click(
        stop_this_session, None, tab.status, queue=False, show_progress="hidden", **private
    )

    def on_select(kept: object, evt: gr.SelectData) -> dict:
        return show_cell(tab, kept, evt)

    tab.grid.select(
        on_select,
        [tab.run_state],
        [tab.cell, tab.column_layer, tab.columns],
        show_progress="hidden",
        **private,
    )
    tab.column_layer.input(
        lambda kept, layer: show_columns(ctx, tab, kept, layer),
        [tab.run_state, tab.column_layer],
        [tab.columns],
        show_progress="hidden",
        **private,
    )
    tab.persona.input(
        lambda key, session: pick_vector(ctx, tab, key, session),
        [tab.persona, tab.state],
        [tab.layers, tab.strengths, tab.info],
        queue=False,
        show_progress="hidden",
        **private,
    )
    tab.used = tab.use.click(
        lambda kept, session, token: use_settings(ctx, tab, kept, session, owner=token),
        [tab.run_state, tab.state, owner],
        [tab.state, tab.persona, tab.used_key, tab.use_note, tab.run_state, tab.info],
        show_progress="hidden",
        **private,
    )


def _wire_downloads(
    ctx: AppContext, tab: SweepTab, grid_json: gr.DownloadButton, grid_csv: gr.DownloadButton
) -> None:
    """The grid as files (issue 26), written after each sweep from what the tab keeps."""
    private: dict[str, Any] = {"api_visibility": "private"}
    tab.run.click(lambda: (None, None), None, [grid_json, grid_csv], queue=False, **private)
    tab.swept.success(
        lambda kept: sweep_downloads(ctx, kept),
        [tab.run_state],
        [grid_json, grid_csv],
        show_progress="hidden",
        **private,
    )
