"""Compare, inside the Steer tab: the baseline and up to three steered rows in one batch.

Each row is a persona with its own layer and strength: three personas, or one persona at three
layers or strengths. Choosing a row's persona fills in that vector's recommended layer and
strength (:func:`pick_row`); the strength is absolute ("strength 1.9"), as × is kept for the
Steer slider's multiples of the recommended strength. Every answer comes from the same batched
pass with the same random numbers, so the rows differ only by their steering; the plot shows
each row's projection onto its own vector beside the baseline's projection onto that vector.
Also the public ``/compare`` API.

Imports: ``..compare``, ``..plots``, ``..limits``, and this package's context, forms, markup.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    DEFAULT_FREQUENCY_PENALTY,
    DEFAULT_TEMPERATURE,
    MAX_COMPARE_ROWS,
    check_layer,
    check_strength,
)
from persona_explorer.evaluate.compare import CompareRequest, SteerRow, compare_stream
from persona_explorer.plots import empty_figure, layer_projection_figure
from persona_explorer.steering.ops import check_positions
from persona_explorer.ui.shared.catalog import CatalogView
from persona_explorer.ui.shared.context import AppContext, user_errors
from persona_explorer.ui.shared.forms import form_endpoint
from persona_explorer.ui.shared.markup import md
from persona_explorer.ui.shared.requests import prompt_and_system, sampling
from persona_explorer.ui.shared.streaming import coalesce

TABLE_HEADERS = ["Row", "Persona", "Layer", "Strength", "Answer"]


@dataclass
class ComparePanel:
    personas: list[gr.Dropdown]
    layers: list[gr.Number]
    strengths: list[gr.Number]
    run: gr.Button
    status: gr.Markdown
    table: gr.Dataframe
    plot: gr.Plot


@dataclass(frozen=True)
class CompareForm:
    """The ``/compare`` API's parameters: a prompt and up to three (persona, layer, strength)."""

    prompt: str
    persona_1: str
    layer_1: float
    strength_1: float
    persona_2: str = ""
    layer_2: float = 0
    strength_2: float = 0.0
    persona_3: str = ""
    layer_3: float = 0
    strength_3: float = 0.0
    max_new_tokens: float = 48
    system_prompt: str = ""
    positions: str = "all"
    temperature: float = DEFAULT_TEMPERATURE
    seed: float = 0
    frequency_penalty: float = DEFAULT_FREQUENCY_PENALTY

    def slots(self) -> list[tuple[Any, Any, Any]]:
        return [
            (self.persona_1, self.layer_1, self.strength_1),
            (self.persona_2, self.layer_2, self.strength_2),
            (self.persona_3, self.layer_3, self.strength_3),
        ]

    def request(self, ctx: AppContext, session: Mapping | None) -> CompareRequest:
        limits = ctx.settings.limits
        n_layers = ctx.model.n_layers
        view = ctx.catalog.view(session)
        rows = []
        for i, (persona, layer, strength) in enumerate(self.slots(), start=1):
            if not isinstance(persona, str) or not persona.strip():
                continue
            item, vec = view.resolve_fitting(persona)
            lay = check_layer(layer, n_layers, f"Layer of row {i}")
            st = check_strength(strength, limits)
            # An absolute strength: "×" is kept for multiples of the recommended one (Steer).
            label = f"{item.name} · L{lay}, strength {st:g}"
            rows.append(SteerRow(vec, (lay,), st, label=label))
        if not rows:
            raise InputError("Pick at least one persona to compare with the baseline.")
        prompt, system = prompt_and_system(limits, self.prompt, self.system_prompt)
        return CompareRequest(
            prompt=prompt,
            rows=tuple(rows),
            system=system,
            positions=check_positions(self.positions),
            sampling=sampling(
                limits, self.max_new_tokens, self.temperature, self.seed, self.frequency_penalty
            ),
        )


def run_compare(
    ctx: AppContext,
    panel: ComparePanel,
    form: CompareForm,
    session: Mapping | None,
    request: gr.Request | None,
) -> Iterator[dict]:
    yield {panel.status: ""}  # the last comparison's message must not stand beside an error
    with user_errors():
        req = form.request(ctx, session)
        with ctx.job(request) as job:
            for texts, out in coalesce(compare_stream(ctx.model, req, should_stop=job)):
                if out is None:
                    yield {panel.status: f"Generating… {max(len(t) for t in texts)} characters"}
                    continue
                rows = [["baseline", "—", "—", "0", out.baseline.text]]
                for k, row in enumerate(out.steered, start=1):
                    layers = ",".join(str(x) for x in row.layers)
                    rows.append(
                        [f"row {k}", row.vector_name, layers, f"{row.strength:g}", row.text]
                    )
                layers = sorted({x for row in out.steered for x in row.layers})
                figure = layer_projection_figure(
                    None,  # each row has its own baseline, onto its own vector
                    {r.label: r.layer_projection for r in out.steered},
                    steered_layers=layers,
                    title="Each row's projection onto its own vector",
                    baselines={r.label: r.baseline_layer_projection for r in out.steered},
                )
                stopped = " (stopped)" if out.stopped else ""
                yield {
                    panel.table: rows,
                    panel.plot: figure,
                    panel.status: md(
                        f"{len(out.steered)} steered rows and the baseline in one batch: "
                        f"{out.new_tokens} tokens in {out.seconds:.1f} s{stopped}.",
                        400,
                    ),
                }


COMPARE_DOC = """The baseline and up to three steered rows (persona, layer, strength) in one batch.

Outputs: a table of the answers, the per-layer projection plot (each row onto its own vector,
beside the baseline onto the same vector) and a status line."""


def row_choices(view: CatalogView) -> list[tuple[str, str]]:
    """A row's persona choices: none, or any vector that can steer (as in the Steer tab)."""
    return [("(none)", ""), *view.persona_choices()]


def pick_row(
    ctx: AppContext, panel: ComparePanel, index: int, persona: object, session: Mapping | None
) -> dict:
    """A row's persona was chosen: its layer and strength become that vector's recommended
    ones (as the Steer tab's controls do). (none) or an unknown name leaves them as they are:
    Compare names the unknown one when it runs."""
    if not isinstance(persona, str) or not persona.strip():
        return {}
    view = ctx.catalog.view(session)
    try:
        item = view.resolve(persona)
    except InputError:
        return {}
    if item.info is None:
        return {}
    return {
        panel.layers[index]: gr.update(value=ctx.default_layer(item.info)),
        panel.strengths[index]: gr.update(value=ctx.default_strength(item.info)),
    }


def list_updates(panel: ComparePanel, view: CatalogView, current: list[str | None]) -> dict:
    """New choices after the vectors changed; a row keeps its persona while it still exists."""
    choices = row_choices(view)
    keys = {k for _, k in choices}
    return {
        dropdown: gr.update(choices=choices, value=value if value in keys else "")
        for dropdown, value in zip(panel.personas, current, strict=True)
    }


def build(
    ctx: AppContext, state: gr.State, persona: gr.Dropdown, layer: gr.Slider, strength: gr.Number
) -> ComparePanel:
    choices = row_choices(ctx.catalog.view(None))
    n_layers = ctx.model.n_layers
    personas, layers, strengths = [], [], []
    with gr.Accordion("Compare: up to three personas, layers or strengths", open=False):
        gr.Markdown(
            "Each row is steered its own way; all rows and the baseline come from one batch "
            "with the same random numbers, so they differ only by their steering. Choosing a "
            "persona fills in its recommended layer and strength (an absolute strength, not a "
            "multiple)."
        )
        for i in range(1, MAX_COMPARE_ROWS + 1):
            with gr.Row(equal_height=True):
                personas.append(
                    gr.Dropdown(
                        choices,
                        value="",
                        label=f"Persona {i}",
                        filterable=True,
                        allow_custom_value=True,
                        scale=3,
                        elem_id=f"pe-compare-persona-{i}",
                    )
                )
                layers.append(
                    gr.Number(
                        value=layer.value,
                        minimum=0,
                        maximum=n_layers - 1,
                        precision=0,
                        label=f"Layer {i}",
                        scale=1,
                        elem_id=f"pe-compare-layer-{i}",
                    )
                )
                strengths.append(
                    gr.Number(
                        value=strength.value,
                        step=0.25,
                        label=f"Strength {i}",
                        scale=1,
                        elem_id=f"pe-compare-strength-{i}",
                    )
                )
        run = gr.Button("Compare side by side", elem_id="pe-compare-run")
        status = gr.Markdown(label="Compare status", elem_id="pe-compare-status")
        table = gr.Dataframe(
            headers=TABLE_HEADERS, datatype=["str", "str", "str", "str", "str"],
            interactive=False, wrap=True, column_widths=["9%", "17%", "9%", "10%", "55%"],
            label="Answers side by side", elem_id="pe-compare-table", elem_classes="pe-table",
        )  # fmt: skip
        plot = gr.Plot(  # the figure's title is its label: gradio's would cover it
            empty_figure("Compare to see each row's projection"),
            label="Projection by layer, per row", show_label=False, elem_id="pe-compare-plot",
        )  # fmt: skip
    return ComparePanel(personas, layers, strengths, run, status, table, plot)


def wire(ctx: AppContext, panel: ComparePanel, tab: Any, state: gr.State) -> None:
    compare = form_endpoint(
        CompareForm,
        lambda form, session, request: run_compare(ctx, panel, form, session, request),
        name="compare",
        doc=COMPARE_DOC,
        request=True,
    )
    slots = [
        c
        for i in range(MAX_COMPARE_ROWS)
        for c in (panel.personas[i], panel.layers[i], panel.strengths[i])
    ]
    for i, dropdown in enumerate(panel.personas):
        # .input: a person's choice only (a refreshed list keeps the row's own numbers).
        dropdown.input(
            lambda persona, session, i=i: pick_row(ctx, panel, i, persona, session),
            inputs=[dropdown, state],
            outputs=[panel.layers[i], panel.strengths[i]],
            queue=False,
            show_progress="hidden",
            api_visibility="private",
        )
    panel.run.click(
        compare,
        inputs=[
            tab.prompt,
            *slots,
            tab.max_new_tokens,
            tab.system,
            tab.positions,
            tab.temperature,
            tab.seed,
            tab.frequency_penalty,
            state,
        ],
        outputs=[panel.table, panel.plot, panel.status],
        api_name="compare",
        show_progress_on=[panel.status],
        concurrency_limit=ctx.settings.steer_concurrency,
        concurrency_id="generation",
    )
