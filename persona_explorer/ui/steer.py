"""The Steer tab: one prompt, answered with and without a persona vector, side by side.

``steer`` (also the public ``/steer`` API) streams both answers from one batched pass of
:func:`compare.steer_stream`, then draws the per-layer projections and the per-token view from
the same pass. ``sweep_strengths`` runs one batch at several strengths for the strength strip.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..compare import SteerOutput, SteerRequest, steer_stream
from ..errors import InputError
from ..generation import SamplingConfig
from ..limits import (
    check_layer,
    check_max_new_tokens,
    check_seed,
    check_strength,
    check_temperature,
    check_text,
)
from ..plots import (
    empty_figure,
    layer_projection_figure,
    strength_strip_figure,
    token_projection_html,
)
from ..steering import POSITIONS
from ..vectors import PersonaVector
from . import teaching
from .catalog import CatalogView, VectorItem, source_label
from .context import AppContext, user_errors
from .forms import form_endpoint
from .markup import md

DEFAULT_PROMPT = "I just adopted a puppy. What should I do in the first week?"
DEFAULT_MAX_NEW_TOKENS = 48
SWEEP_MULTIPLIERS = (-2.0, 1.0, 2.0, 4.0)  # x the chosen strength; the baseline row adds 0
POSITION_CHOICES = [("Every token", "all"), ("Answer only", "response")]

SHARE_LINK_JS = """
(prompt, persona, layer, strength) => {
  const params = new URLSearchParams();
  if (prompt) params.set("prompt", prompt);
  if (persona) params.set("persona", persona);
  if (layer !== null && layer !== undefined && layer !== "") params.set("layer", String(layer));
  if (strength !== null && strength !== undefined && strength !== "")
    params.set("strength", String(strength));
  return window.location.origin + window.location.pathname + "?" + params.toString();
}
"""


@dataclass
class SteerTab:
    prompt: gr.Textbox
    system: gr.Textbox
    persona: gr.Dropdown
    persona_info: gr.Markdown
    layer: gr.Slider
    strength: gr.Slider
    positions: gr.Radio
    max_new_tokens: gr.Slider
    temperature: gr.Slider
    seed: gr.Number
    generate: gr.Button
    stop: gr.Button
    share: gr.Textbox
    baseline: gr.Textbox
    steered: gr.Textbox
    status: gr.Markdown
    plot: gr.Plot
    tokens_baseline: gr.HTML
    tokens_steered: gr.HTML
    sweep: gr.Button
    sweep_plot: gr.Plot
    sweep_table: gr.Dataframe

    def controls_for(
        self,
        ctx: AppContext,
        item: VectorItem | None,
        view: CatalogView,
        layer: int | None = None,
        strength: float | None = None,
    ) -> dict[Any, Any]:
        """Layer, strength (and its slider range) and the info line for a newly picked persona.

        Explicit ``layer``/``strength`` (a share link) win over the vector's recommendations.
        """
        if item is None or item.info is None:
            return {self.persona_info: NO_PERSONA_INFO}
        vec = item.info
        s = ctx.default_strength(vec) if strength is None else strength
        half = max(ctx.strength_range(ctx.default_strength(vec)), abs(s))
        return {
            self.layer: gr.update(value=ctx.default_layer(vec) if layer is None else layer),
            self.strength: gr.update(value=s, minimum=-half, maximum=half),
            self.persona_info: persona_info(ctx, item, view),
        }


NO_PERSONA_INFO = (
    "No persona vectors yet: extract one in the **Extract** tab or upload one in the "
    "**Library** tab."
)


def persona_info(ctx: AppContext, item: VectorItem, view: CatalogView) -> str:
    vec = item.info
    assert vec is not None
    problem = view.fit_problem(item.key)
    if problem:
        return f"⚠️ **{md(vec.name)}** cannot steer this model. {md(problem, 400)}"
    strength = (
        f"strength {vec.strength:g}"
        if vec.strength is not None
        else f"strength {ctx.default_strength(vec):g} (default)"
    )
    about = vec.metadata.get("description")
    return (
        f"**{md(vec.name)}** · {item.where} · {md(source_label(vec))} · recommended layer "
        f"{ctx.default_layer(vec)}, {strength}" + (f"  \n{md(about, 500)}" if about else "")
    )


@dataclass(frozen=True)
class SteerForm:
    """The Steer tab's inputs, as widgets send them (and as the ``/steer`` API takes them)."""

    prompt: str
    persona: str
    layer: float
    strength: float
    max_new_tokens: float = DEFAULT_MAX_NEW_TOKENS
    system_prompt: str = ""
    positions: str = "all"
    temperature: float = 0.0
    seed: float = 0

    def request(
        self,
        ctx: AppContext,
        session: Mapping[str, PersonaVector] | None,
        strengths: tuple[float, ...] | None = None,
    ) -> SteerRequest:
        """Check every value and build the engine request (``strengths``: several rows)."""
        limits = ctx.settings.limits
        text = check_text(self.prompt, "prompt", limits.max_prompt_chars, required=True)
        system = check_text(
            self.system_prompt, "system prompt", limits.max_prompt_chars, required=False
        )
        _, vec = ctx.catalog.view(session).resolve_fitting(self.persona)
        if self.positions not in POSITIONS:
            raise InputError(f"positions must be 'all' or 'response', not {self.positions!r}.")
        rows = strengths if strengths is not None else (self.strength,)
        return SteerRequest(
            prompt=text,
            vector=vec,
            layers=(check_layer(self.layer, ctx.model.n_layers),),
            strengths=tuple(check_strength(s, limits) for s in rows),
            system=system or None,
            positions=self.positions,  # type: ignore[arg-type]
            sampling=SamplingConfig(
                max_new_tokens=check_max_new_tokens(self.max_new_tokens, limits),
                temperature=check_temperature(self.temperature, limits),
                seed=check_seed(self.seed),
                max_prompt_tokens=limits.max_prompt_tokens,
            ),
        )


def _status(out: SteerOutput, strength: float, timed_out: bool = False) -> str:
    base, steered = out.baseline, out.steered[0]
    line = (
        f"{out.new_tokens} tokens in {out.seconds:.1f} s ({out.tokens_per_second:.1f} tok/s for "
        f"both columns) · layer {out.layers[0]}, strength {strength:g}"
    )
    if timed_out:
        line += " · stopped at the time limit for one job: ask for fewer tokens."
    elif strength == 0:
        line += " · strength 0 means no steering: both columns are the same."
    elif steered.text == base.text:
        line += (
            " · The steered answer matches the baseline: try a larger strength or a layer "
            "nearer the recommended one."
        )
    return line


def _token_views(out: SteerOutput) -> tuple[str, str]:
    base, steered = out.baseline, out.steered[0]
    values = [abs(v) for v in base.token_projection + steered.token_projection]
    scale = max(values) if values and max(values) > 0 else None  # one scale: comparable colours
    return (
        token_projection_html(base.token_strings, base.token_projection, scale),
        token_projection_html(steered.token_strings, steered.token_projection, scale),
    )


# --------------------------------------------------------------------------- handlers


def run_steer(
    ctx: AppContext, tab: SteerTab, form: SteerForm, session: Mapping | None
) -> Iterator[dict]:
    """Stream both texts token by token; the last update adds the plots and the status."""
    with user_errors():
        req = form.request(ctx, session)
        first = True
        timer = ctx.job_timer()
        for texts, out in steer_stream(ctx.model, req, should_stop=timer.expired):
            if out is None:
                update = {tab.baseline: texts[0], tab.steered: texts[1]}
                if first:  # clear the previous answer's figures once
                    update |= {
                        tab.plot: empty_figure("Generating…"),
                        tab.tokens_baseline: "",
                        tab.tokens_steered: "",
                        tab.status: "Generating…",
                    }
                    first = False
                yield update
                continue
            base_html, steered_html = _token_views(out)
            yield {
                tab.baseline: out.baseline.text,
                tab.steered: out.steered[0].text,
                tab.plot: layer_projection_figure(
                    out.baseline.layer_projection,
                    {f"steered ×{req.strengths[0]:g}": out.steered[0].layer_projection},
                    steered_layers=req.layers,
                    title=f"Projection onto “{req.vector.name}” at every layer",
                ),
                tab.tokens_baseline: base_html,
                tab.tokens_steered: steered_html,
                tab.status: _status(out, req.strengths[0], timer.expired()),
            }


def run_sweep(
    ctx: AppContext, tab: SteerTab, form: SteerForm, session: Mapping | None, progress: Any
) -> Iterator[dict]:
    """One batch at -2, 1, 2 and 4 x the strength (plus the baseline at 0).

    A generator, so that Stop (``cancels=``) ends it between decoding steps.
    """
    with user_errors():
        limits = ctx.settings.limits
        unit = check_strength(form.strength, limits)
        if unit == 0:
            _, vec = ctx.catalog.view(session).resolve_fitting(form.persona)
            unit = ctx.default_strength(vec)
        strengths = tuple(
            m * unit for m in SWEEP_MULTIPLIERS if abs(m * unit) <= limits.max_abs_strength
        )
        req = form.request(ctx, session, strengths)
        total = req.sampling.max_new_tokens
        out = None
        timer = ctx.job_timer()
        stream = steer_stream(ctx.model, req, should_stop=timer.expired)
        for step, (_, update) in enumerate(stream, start=1):
            progress((min(step, total), total), desc="Generating", unit="tokens")
            out = update
            if out is None:
                yield {tab.sweep_plot: gr.skip()}  # a chance for Stop to end the sweep
        assert out is not None
        at = req.layers[0]
        rows = sorted(out.rows, key=lambda r: r.strength)
        yield {
            tab.sweep_plot: strength_strip_figure(
                [r.strength for r in rows], [r.layer_projection[at] for r in rows], at
            ),
            tab.sweep_table: [
                [round(r.strength, 3), round(r.layer_projection[at], 3), r.text] for r in rows
            ],
        }


def pick_persona(ctx: AppContext, tab: SteerTab, persona: str, session: Mapping | None) -> dict:
    view = ctx.catalog.view(session)
    try:
        item = view.resolve(persona)
    except InputError as exc:
        return {tab.persona_info: f"⚠️ {md(exc, 400)}"}
    return tab.controls_for(ctx, item, view)


STEER_DOC = """Generate the baseline and the steered answer to one prompt, side by side.

Streams both texts token by token; the last update adds the per-layer projection plot and the
per-token views. Outputs: baseline text, steered text, plot, token views, status."""

SWEEP_DOC = """The same prompt at -2, 1, 2 and 4 x the strength (plus the baseline), in one
batch: the projection at the steered layer and each answer."""


def build(ctx: AppContext, state: gr.State) -> SteerTab:
    n_layers = ctx.model.n_layers
    view = ctx.catalog.view(None)
    key = view.default_key(ctx.settings.default_persona)
    item = view.resolve(key) if key else None
    vec = item.info if item else None
    start_strength = ctx.default_strength(vec) if vec else 2.0
    half = ctx.strength_range(start_strength)

    teaching.panel(teaching.STEER)
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=300, elem_classes="pe-controls"):
            prompt = gr.Textbox(
                label="Prompt",
                value=DEFAULT_PROMPT,
                lines=3,
                max_lines=12,
                placeholder="Ask the model something…",
                elem_id="pe-prompt",
            )
            with gr.Accordion("System prompt", open=False):
                system = gr.Textbox(
                    "",
                    label="System prompt",
                    show_label=False,
                    lines=2,
                    placeholder="Optional, e.g. “You are a helpful assistant.”",
                    elem_id="pe-system",
                )
            persona = gr.Dropdown(
                label="Persona",
                choices=view.persona_choices(),
                value=key,
                allow_custom_value=True,  # unknown names get a clear error from the handler
                filterable=True,
                elem_id="pe-persona",
            )
            info = gr.Markdown(
                persona_info(ctx, item, view) if item else NO_PERSONA_INFO, elem_classes="pe-info"
            )
            layer = gr.Slider(
                0,
                n_layers - 1,
                value=ctx.default_layer(vec) if vec else (2 * n_layers) // 3,
                step=1,
                label="Layer",
                info="Where the vector is added (0 = first block).",
                elem_id="pe-layer",
            )
            strength = gr.Slider(
                -half,
                half,
                value=start_strength,
                step=0.25,
                label="Strength",
                info="Negative values push away from the persona.",
                elem_id="pe-strength",
            )
            positions = gr.Radio(
                POSITION_CHOICES, value="all", label="Steer at", elem_id="pe-positions"
            )
            with gr.Accordion("Generation settings", open=False, elem_id="pe-generation-settings"):
                max_new_tokens = gr.Slider(
                    1,
                    ctx.settings.limits.max_new_tokens,
                    value=min(DEFAULT_MAX_NEW_TOKENS, ctx.settings.limits.max_new_tokens),
                    step=1,
                    label="Max new tokens",
                    elem_id="pe-max-new-tokens",
                )
                temperature = gr.Slider(
                    0.0,
                    ctx.settings.limits.max_temperature,
                    value=0.0,
                    step=0.05,
                    label="Temperature",
                    info="0 = greedy",
                )
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="pe-generate")
                stop = gr.Button("Stop", variant="secondary", elem_id="pe-stop")
            share = gr.Textbox(
                label="Share link",
                info="Opens this tab with the same prompt, persona, layer and strength "
                "(vectors from this session only once saved to the library).",
                buttons=["copy"],
                interactive=False,
                elem_id="pe-share",
            )
        with gr.Column(scale=8, min_width=420):
            with gr.Row(equal_height=True):
                baseline = gr.Textbox(
                    label="Baseline · no steering",
                    lines=9,
                    max_lines=18,
                    interactive=False,
                    buttons=["copy"],
                    elem_id="pe-baseline",
                    elem_classes="pe-out pe-out-baseline",
                )
                steered = gr.Textbox(
                    label="Steered",
                    lines=9,
                    max_lines=18,
                    interactive=False,
                    buttons=["copy"],
                    elem_id="pe-steered",
                    elem_classes="pe-out pe-out-steered",
                )
            status = gr.Markdown(elem_classes="pe-status", elem_id="pe-status")
            plot = gr.Plot(
                empty_figure("Generate to see the projection at every layer"),
                label="Projection by layer",
                elem_id="pe-plot",
            )
            with gr.Accordion("Per-token view", open=True), gr.Row(equal_height=False):
                with gr.Column(min_width=200):
                    gr.Markdown("**Baseline**", elem_classes="pe-subhead")
                    tokens_baseline = gr.HTML(elem_id="pe-tokens-baseline")
                with gr.Column(min_width=200):
                    gr.Markdown("**Steered**", elem_classes="pe-subhead")
                    tokens_steered = gr.HTML(elem_id="pe-tokens-steered")
            with gr.Accordion("Strength sweep", open=False):
                gr.Markdown(
                    "The same prompt at −2, 0, 1, 2 and 4 × the strength above, in one batch."
                )
                sweep = gr.Button("Run strength sweep", elem_id="pe-sweep")
                sweep_plot = gr.Plot(
                    empty_figure("Run the sweep to compare strengths"),
                    show_label=False,
                    elem_id="pe-sweep-plot",
                )
                sweep_table = gr.Dataframe(
                    headers=["Strength", "Projection", "Answer"],
                    datatype=["number", "number", "str"],
                    interactive=False,
                    wrap=True,
                    column_widths=["12%", "14%", "74%"],
                    elem_id="pe-sweep-table",
                    elem_classes="pe-table",
                )

    tab = SteerTab(
        prompt=prompt,
        system=system,
        persona=persona,
        persona_info=info,
        layer=layer,
        strength=strength,
        positions=positions,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        generate=generate,
        stop=stop,
        share=share,
        baseline=baseline,
        steered=steered,
        status=status,
        plot=plot,
        tokens_baseline=tokens_baseline,
        tokens_steered=tokens_steered,
        sweep=sweep,
        sweep_plot=sweep_plot,
        sweep_table=sweep_table,
    )

    # ---------------------------------------------------------------- wiring

    inputs = [
        prompt, persona, layer, strength, max_new_tokens, system, positions, temperature, seed,
        state,
    ]  # fmt: skip
    outputs = [baseline, steered, plot, tokens_baseline, tokens_steered, status]
    steer = form_endpoint(
        SteerForm, lambda form, session: run_steer(ctx, tab, form, session),
        name="steer", doc=STEER_DOC,
    )  # fmt: skip
    sweep_strengths = form_endpoint(
        SteerForm,
        lambda form, session, progress: run_sweep(ctx, tab, form, session, progress),
        name="sweep_strengths",
        doc=SWEEP_DOC,
        progress=True,
    )
    steer_event = gr.on(
        [generate.click, prompt.submit],
        steer,
        inputs=inputs,
        outputs=outputs,
        api_name="steer",
        concurrency_limit=ctx.settings.steer_concurrency,
        concurrency_id="generation",
    )
    sweep_event = sweep.click(
        sweep_strengths,
        inputs=inputs,
        outputs=[sweep_plot, sweep_table],
        api_name="sweep_strengths",
        concurrency_id="generation",
        concurrency_limit=ctx.settings.steer_concurrency,
    )
    stop.click(None, cancels=[steer_event, sweep_event])
    persona.input(
        lambda persona, session: pick_persona(ctx, tab, persona, session),
        inputs=[persona, state],
        outputs=[layer, strength, info],
        api_visibility="private",
        queue=False,
    )
    gr.on(
        [prompt.change, persona.change, layer.change, strength.change],
        None,
        inputs=[prompt, persona, layer, strength],
        outputs=[share],
        js=SHARE_LINK_JS,
    )
    return tab
