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
from ..generation import SamplingConfig
from ..plots import (
    empty_figure,
    layer_projection_figure,
    strength_strip_figure,
    token_projection_html,
)
from ..steering import POSITIONS
from ..vectors import PersonaVector
from . import teaching
from .common import (
    AppContext,
    InputError,
    VectorItem,
    check_int,
    check_number,
    check_text,
    default_persona_key,
    persona_choices,
    source_label,
    user_errors,
)

DEFAULT_PROMPT = "I just adopted a puppy. What should I do in the first week?"
DEFAULT_MAX_NEW_TOKENS = 48
SWEEP_MULTIPLIERS = (-2.0, 1.0, 2.0, 4.0)  # x the chosen strength; the baseline row adds 0
MAX_SEED = 2**31 - 1
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
        layer: int | None = None,
        strength: float | None = None,
    ) -> dict[Any, Any]:
        """Layer, strength (and its slider range) and the info line for a newly picked persona.

        Explicit ``layer``/``strength`` (a share link) win over the vector's recommendations.
        """
        if item is None or item.vector is None:
            return {self.persona_info: NO_PERSONA_INFO}
        vec = item.vector
        s = ctx.default_strength(vec) if strength is None else strength
        half = max(ctx.strength_range(ctx.default_strength(vec)), abs(s))
        return {
            self.layer: gr.update(value=ctx.default_layer(vec) if layer is None else layer),
            self.strength: gr.update(value=s, minimum=-half, maximum=half),
            self.persona_info: persona_info(ctx, item),
        }


NO_PERSONA_INFO = (
    "No persona vectors yet: extract one in the **Extract** tab or upload one in the "
    "**Library** tab."
)


def persona_info(ctx: AppContext, item: VectorItem) -> str:
    vec = item.vector
    assert vec is not None
    problem = ctx.fit_problem(vec)
    if problem:
        return f"⚠️ **{vec.name}** cannot steer this model. {problem}"
    strength = (
        f"strength {vec.strength:g}"
        if vec.strength is not None
        else f"strength {ctx.default_strength(vec):g} (default)"
    )
    about = vec.metadata.get("description")
    return (
        f"**{vec.name}** · {item.where} · {source_label(vec)} · recommended layer "
        f"{ctx.default_layer(vec)}, {strength}" + (f"  \n{about}" if about else "")
    )


def _request(
    ctx: AppContext,
    prompt: Any,
    persona: Any,
    layer: Any,
    strengths: tuple[float, ...],
    max_new_tokens: Any,
    system_prompt: Any,
    positions: Any,
    temperature: Any,
    seed: Any,
    session: Mapping[str, PersonaVector] | None,
) -> SteerRequest:
    """Check every widget value and build the engine request (raises InputError & co.)."""
    limit = ctx.settings.max_prompt_chars
    text = check_text(prompt, "prompt", limit, required=True)
    system = check_text(system_prompt, "system prompt", limit, required=False)
    item = ctx.resolve(persona, session)
    problem = ctx.fit_problem(item.vector)  # type: ignore[arg-type]
    if problem:
        raise InputError(f"{item.name!r} cannot steer this model. {problem}")
    if positions not in POSITIONS:
        raise InputError(f"positions must be 'all' or 'response', not {positions!r}.")
    temp = check_number(temperature, "Temperature")
    if not 0.0 <= temp <= 2.0:
        raise InputError(f"Temperature must be between 0 and 2, not {temp:g}.")
    return SteerRequest(
        prompt=text,
        vector=item.vector,  # type: ignore[arg-type]
        layers=(ctx.check_layer(layer),),
        strengths=tuple(ctx.check_strength(s) for s in strengths),
        system=system or None,
        positions=positions,
        sampling=SamplingConfig(
            max_new_tokens=ctx.check_max_new_tokens(max_new_tokens),
            temperature=temp,
            seed=check_int(seed, "Seed", 0, MAX_SEED),
        ),
    )


def _status(out: SteerOutput, strength: float) -> str:
    base, steered = out.baseline, out.steered[0]
    line = (
        f"{out.new_tokens} tokens in {out.seconds:.1f} s ({out.tokens_per_second:.1f} tok/s for "
        f"both columns) · layer {out.layers[0]}, strength {strength:g}"
    )
    if strength == 0:
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


def build(ctx: AppContext, state: gr.State) -> SteerTab:
    n_layers = ctx.model.n_layers
    key = default_persona_key(ctx, None)
    item = ctx.resolve(key) if key else None
    vec = item.vector if item else None
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
                choices=persona_choices(ctx, None),
                value=key,
                allow_custom_value=True,  # unknown names get a clear error from the handler
                filterable=True,
                elem_id="pe-persona",
            )
            info = gr.Markdown(
                persona_info(ctx, item) if item else NO_PERSONA_INFO, elem_classes="pe-info"
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
                    ctx.settings.max_new_tokens,
                    value=min(DEFAULT_MAX_NEW_TOKENS, ctx.settings.max_new_tokens),
                    step=1,
                    label="Max new tokens",
                    elem_id="pe-max-new-tokens",
                )
                temperature = gr.Slider(
                    0.0, 2.0, value=0.0, step=0.05, label="Temperature", info="0 = greedy"
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

    # ---------------------------------------------------------------- handlers

    def steer(
        prompt: str,
        persona: str,
        layer: float,
        strength: float,
        max_new_tokens: float,
        system_prompt: str = "",
        positions: str = "all",
        temperature: float = 0.0,
        seed: float = 0,
        session: dict | None = None,
    ) -> Iterator[dict]:
        """Generate the baseline and the steered answer to one prompt, side by side.

        Streams both texts token by token; the last update adds the per-layer projection plot
        and the per-token views. Outputs: baseline text, steered text, plot, token views, status.
        """
        with user_errors():
            req = _request(
                ctx, prompt, persona, layer, (strength,), max_new_tokens, system_prompt,
                positions, temperature, seed, session,
            )  # fmt: skip
            first = True
            for texts, out in steer_stream(ctx.model, req):
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
                    tab.status: _status(out, req.strengths[0]),
                }

    def sweep_strengths(
        prompt: str,
        persona: str,
        layer: float,
        strength: float,
        max_new_tokens: float,
        system_prompt: str = "",
        positions: str = "all",
        temperature: float = 0.0,
        seed: float = 0,
        session: dict | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's injection idiom)
    ) -> dict:
        """One batch at -2, 1, 2 and 4 x the strength (plus the baseline at 0)."""
        with user_errors():
            unit = ctx.check_strength(strength)
            if unit == 0:
                unit = ctx.default_strength(ctx.resolve(persona, session).vector)  # type: ignore[arg-type]
            limit = ctx.settings.max_abs_strength
            strengths = tuple(m * unit for m in SWEEP_MULTIPLIERS if abs(m * unit) <= limit)
            req = _request(
                ctx, prompt, persona, layer, strengths, max_new_tokens, system_prompt,
                positions, temperature, seed, session,
            )  # fmt: skip
            total = req.sampling.max_new_tokens
            out = None
            for step, (_, update) in enumerate(steer_stream(ctx.model, req), start=1):
                progress((min(step, total), total), desc="Generating", unit="tokens")
                out = update
            assert out is not None
            at = req.layers[0]
            rows = sorted(out.rows, key=lambda r: r.strength)
            return {
                tab.sweep_plot: strength_strip_figure(
                    [r.strength for r in rows], [r.layer_projection[at] for r in rows], at
                ),
                tab.sweep_table: [
                    [round(r.strength, 3), round(r.layer_projection[at], 3), r.text] for r in rows
                ],
            }

    def pick_persona(persona: str, session: dict | None) -> dict:
        try:
            item = ctx.resolve(persona, session)
        except InputError as exc:
            return {tab.persona_info: f"⚠️ {exc}"}
        return tab.controls_for(ctx, item)

    # ---------------------------------------------------------------- wiring

    inputs = [
        prompt, persona, layer, strength, max_new_tokens, system, positions, temperature, seed,
        state,
    ]  # fmt: skip
    outputs = [baseline, steered, plot, tokens_baseline, tokens_steered, status]
    run = gr.on(
        [generate.click, prompt.submit],
        steer,
        inputs=inputs,
        outputs=outputs,
        api_name="steer",
        concurrency_limit=ctx.settings.steer_concurrency,
        concurrency_id="generation",
    )
    run_sweep = sweep.click(
        sweep_strengths,
        inputs=inputs,
        outputs=[sweep_plot, sweep_table],
        api_name="sweep_strengths",
        concurrency_id="generation",
        concurrency_limit=ctx.settings.steer_concurrency,
    )
    stop.click(None, cancels=[run, run_sweep])
    persona.input(
        pick_persona,
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
