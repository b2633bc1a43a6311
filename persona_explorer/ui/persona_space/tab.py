"""The Persona space tab: a PCA map of the role vectors at one layer, with the Assistant, the
user's own prompt and answer, and persona vectors placed in it (issue 10, item 2).

``build`` lays the tab out and wires its events; the widgets are
:class:`.components.PersonaSpaceTab`, the actions :mod:`.handlers` (the public
``/persona_map`` endpoint is "Place my prompt") and the figures and words :mod:`.views`.
The coordinates on screen download as JSON and CSV (:mod:`.downloads`), written after each
draw.

Imports: gradio, ``core.limits`` (the tab's bounds), ``axis`` (the default layer),
``ui.shared`` (context, forms, teaching) and this tab's components and handlers.
"""

from __future__ import annotations

import gradio as gr

from persona_explorer.axis.assistant_axis import default_axis_layer
from persona_explorer.core.limits import APP_MAP_MAX_PERSONAS, APP_MAP_MAX_TOKENS
from persona_explorer.ui.persona_space.components import PersonaSpaceTab
from persona_explorer.ui.persona_space.downloads import map_downloads
from persona_explorer.ui.persona_space.handlers import (
    ARROW_CHOICES,
    DEFAULT_PLACE_TOKENS,
    VIEWS,
    PersonaMapForm,
    clear_points,
    initial_figures,
    refresh_personas,
    replot,
    run_map,
)
from persona_explorer.ui.shared import teaching
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.shared.forms import form_endpoint

__all__ = ["PersonaSpaceTab", "build", "refresh_personas"]

# Gradio injects a live progress tracker where a parameter defaults to a gr.Progress.
PROGRESS = gr.Progress()


# --------------------------------------------------------------------------- layout


def build(ctx: AppContext, state: gr.State) -> PersonaSpaceTab:
    n = ctx.model.n_layers
    default_layer = default_axis_layer(n)
    fig, var_fig, layers_fig, summary, coords = initial_figures(ctx, default_layer)
    choices = ctx.catalog.view(None).fitting_choices()
    teaching.panel(teaching.PERSONA_SPACE)
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=300, elem_classes="pe-controls"):
            layer = gr.Slider(
                0,
                n - 1,
                value=default_layer,
                step=1,
                label="Layer",
                info="Where the role vectors are read. The middle of the stack by default.",
                elem_id="pe-space-layer",
            )
            view = gr.Radio(list(VIEWS), value="2-D", label="View", elem_id="pe-space-view")
            personas = gr.Dropdown(
                choices,
                value=[],
                multiselect=True,
                max_choices=APP_MAP_MAX_PERSONAS,
                label="Persona vectors (drawn as arrows from the Assistant)",
                elem_id="pe-space-personas",
                # Plain names from the API, and vectors added after the page was built:
                # the handler resolves each one and refuses what it cannot use.
                allow_custom_value=True,
            )
            refresh = gr.Button("Refresh the list", size="sm", elem_id="pe-space-refresh")
            arrow_length = gr.Radio(
                ARROW_CHOICES,
                value="extracted",
                label="Arrow length",
                info="As extracted: the shift from plain answers to the persona's answers. "
                "Same length: every direction scaled to the roles' spread.",
                elem_id="pe-space-arrows",
            )
            prompt = gr.Textbox(
                "",
                label="Your prompt",
                lines=2,
                max_lines=8,
                elem_id="pe-space-prompt",
                placeholder="e.g. Pretend you are a pirate and tell me about the sea.",
            )
            with gr.Accordion("Options", open=False):
                system = gr.Textbox(
                    "", label="System prompt (optional)", lines=2, elem_id="pe-space-system"
                )
                max_new_tokens = gr.Slider(
                    4,
                    APP_MAP_MAX_TOKENS,
                    value=DEFAULT_PLACE_TOKENS,
                    step=1,
                    label="Max new tokens of the answer",
                    elem_id="pe-space-tokens",
                )
            with gr.Row():
                place = gr.Button("Place my prompt", variant="primary", elem_id="pe-space-place")
                clear = gr.Button("Clear my points", elem_id="pe-space-clear")
            answer = gr.Textbox(
                label="The model's answer (greedy)",
                lines=3,
                interactive=False,
                elem_id="pe-space-answer",
            )
            draw = gr.Button("Draw the map", size="sm", elem_id="pe-space-draw")
        with gr.Column(scale=8, min_width=320):
            summary_md = gr.Markdown(
                summary, label="Summary", elem_id="pe-space-summary", elem_classes="pe-status"
            )
            plot = gr.Plot(fig, label="Persona space", show_label=False, elem_id="pe-space-map")
            with gr.Row(equal_height=False):
                variance = gr.Plot(
                    var_fig,
                    label="Variance explained",
                    show_label=False,
                    elem_id="pe-space-variance",
                )
                layers = gr.Plot(
                    layers_fig,
                    label="PC1 and the axis",
                    show_label=False,
                    elem_id="pe-space-layers",
                )
            with gr.Accordion("Coordinates (JSON)", open=False):
                coords_json = gr.JSON(coords, label="Coordinates", elem_id="pe-space-json")
            with gr.Row():
                file_json = gr.DownloadButton(
                    "Download the coordinates (JSON)", elem_id="pe-space-download-json"
                )
                file_csv = gr.DownloadButton(
                    "Download the coordinates (CSV)", elem_id="pe-space-download-csv"
                )
    placed = gr.State(None)
    tab = PersonaSpaceTab(
        layer=layer, view=view, personas=personas, refresh=refresh, arrow_length=arrow_length,
        prompt=prompt, system=system, max_new_tokens=max_new_tokens, place=place, clear=clear,
        draw=draw, answer=answer, summary=summary_md, plot=plot, variance=variance,
        layers=layers, coords=coords_json, placed=placed, file_json=file_json,
        file_csv=file_csv,
    )  # fmt: skip
    _wire(ctx, tab, state)
    return tab


PERSONA_MAP_DOC = """The Persona space map at one layer: PCA of the role vectors, the Assistant,
the chosen persona vectors as arrows and, with a prompt, its greedy answer's and the prompt's
mean activations as points.

Returns the map, the variance-explained chart, the per-layer |cos(PC1, axis)| chart, a summary
in words, every coordinate as JSON, and the answer. Signs: each PC is oriented so the default
Assistant is on its positive side."""


def _wire(ctx: AppContext, tab: PersonaSpaceTab, state: gr.State) -> None:
    form_inputs = [
        tab.layer, tab.view, tab.personas, tab.arrow_length, tab.prompt, tab.system,
        tab.max_new_tokens,
    ]  # fmt: skip
    figures = [tab.plot, tab.variance, tab.layers, tab.summary, tab.coords]
    persona_map = form_endpoint(
        PersonaMapForm,
        lambda form, session, request, progress: run_map(
            ctx, tab, form, session, request=request, progress=progress
        ),
        name="persona_map",
        doc=PERSONA_MAP_DOC,
        request=True,
        progress=True,
    )
    mapped = gr.on(
        [tab.place.click, tab.prompt.submit],
        persona_map,
        inputs=[*form_inputs, state],
        outputs=[*figures, tab.answer, tab.placed],
        api_name="persona_map",
        show_progress_on=[tab.answer, tab.plot],
        concurrency_limit=ctx.settings.steer_concurrency,
        concurrency_id="generation",
    )

    def redraw(
        layer: float,
        view: str,
        personas: list[str] | None,
        arrow_length: str,
        session: dict | None,
        placed: object,
        progress: gr.Progress = PROGRESS,
    ) -> dict:
        form = PersonaMapForm(layer, view, personas, arrow_length)
        return replot(ctx, tab, form, session, placed=placed, progress=progress)

    redraw_inputs = [tab.layer, tab.view, tab.personas, tab.arrow_length, state, tab.placed]
    redrawn = gr.on(
        [
            tab.layer.change,
            tab.view.change,
            tab.personas.change,
            tab.arrow_length.change,
            tab.draw.click,
        ],
        redraw,
        inputs=redraw_inputs,
        outputs=figures,
        trigger_mode="always_last",
        show_progress_on=[tab.plot],
        api_visibility="private",
    )

    def clear(
        layer: float,
        view: str,
        personas: list[str] | None,
        arrow_length: str,
        session: dict | None,
        progress: gr.Progress = PROGRESS,
    ) -> dict:
        form = PersonaMapForm(layer, view, personas, arrow_length)
        return clear_points(ctx, tab, form, session, progress=progress)

    cleared = tab.clear.click(
        clear,
        inputs=redraw_inputs[:-1],
        outputs=[*figures, tab.answer, tab.placed],
        show_progress_on=[tab.plot],
        api_visibility="private",
    )

    def files(
        layer: float,
        view: str,
        personas: list[str] | None,
        arrow_length: str,
        system: str,
        max_new_tokens: float,
        session: dict | None,
        placed: object,
    ) -> tuple[str, str]:
        form = PersonaMapForm(
            layer, view, personas, arrow_length, system_prompt=system,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip
        return map_downloads(ctx, form, session, placed)

    # The coordinates as files, written from the same inputs once the map is drawn.
    for event in (mapped, redrawn, cleared):
        event.success(
            files,
            [*redraw_inputs[:4], tab.system, tab.max_new_tokens, state, tab.placed],
            [tab.file_json, tab.file_csv],
            show_progress="hidden",
            api_visibility="private",
        )
    tab.refresh.click(
        lambda session, current: refresh_personas(ctx, session, current),
        inputs=[state, tab.personas],
        outputs=tab.personas,
        queue=False,
        api_visibility="private",
    )
