"""The Steer tab: one prompt, answered with and without a persona vector, side by side.

``build`` lays the tab out and wires it; the actions live in :mod:`.steer_run` (the form, the
``/steer`` and ``/sweep_strengths`` handlers), :mod:`.compare_panel` (``/compare``: up to three
personas, layers or strengths in one batch) and :mod:`.cap_panel` (``/steer_capped``: activation
capping on the Assistant Axis, uncapped vs capped, optionally with the persona).

Strength is shown twice: as a multiple of the vector's recorded strength (1× = what it was made
for; the slider's range is the same for every vector) and as the absolute number the engine
adds, which the API takes and which is limited only by ``PERSONA_EXPLORER_MAX_STRENGTH``, never
by one persona's slider.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import DEFAULT_FREQUENCY_PENALTY, DEFAULT_TEMPERATURE, MAX_PENALTY
from persona_explorer.plots import empty_figure
from persona_explorer.ui.shared import teaching
from persona_explorer.ui.shared.catalog import CatalogView, VectorItem, source_label
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.shared.forms import form_endpoint
from persona_explorer.ui.shared.markup import md
from persona_explorer.ui.shared.requests import AUTO_READOUT, DEFAULT_MAX_NEW_TOKENS, stop_runs
from persona_explorer.ui.steer import capping as cap_panel
from persona_explorer.ui.steer import compare as compare_panel
from persona_explorer.ui.steer.handlers import (
    STEER_DOC,
    SWEEP_DOC,
    SteerForm,
    run_steer,
    run_strength_sweep,
)

DEFAULT_PROMPT = "I just adopted a puppy. What should I do in the first week?"
POSITION_CHOICES = [("Every token", "all"), ("Answer only", "response")]
MULTIPLE_RANGE = 4.0  # the relative slider spans ±4× the recorded strength

# Every setting of the run travels in the link; "readout" is the read-out layer.
SHARE_KEYS = (
    "prompt", "system", "persona", "layer", "strength", "positions", "max_new_tokens",
    "temperature", "seed", "readout", "frequency_penalty",
)  # fmt: skip
SHARE_LINK_JS = (
    "(" + ", ".join(f"v{i}" for i in range(len(SHARE_KEYS))) + ") => {\n"
    "  const keys = " + str(list(SHARE_KEYS)).replace("'", '"') + ";\n"
    "  const values = [" + ", ".join(f"v{i}" for i in range(len(SHARE_KEYS))) + "];\n"
    "  const params = new URLSearchParams();\n"
    "  keys.forEach((k, i) => {\n"
    '    const v = values[i];\n    if (v !== null && v !== undefined && v !== "") '
    "params.set(k, String(v));\n  });\n"
    '  return window.location.origin + window.location.pathname + "?" + params.toString();\n'
    "}"
)
TO_ABSOLUTE_JS = "(x, unit) => Math.round(x * unit * 1000) / 1000"
TO_MULTIPLE_JS = (
    f"(s, unit) => unit ? Math.max(-{MULTIPLE_RANGE}, Math.min({MULTIPLE_RANGE}, "
    "Math.round(s / unit * 100) / 100)) : 1"
)


@dataclass
class SteerTab:
    prompt: gr.Textbox
    system: gr.Textbox
    persona: gr.Dropdown
    persona_info: gr.Markdown
    layer: gr.Slider
    strength: gr.Number
    multiple: gr.Slider
    unit: gr.Number  # the selected vector's recorded strength (hidden): 1× on the slider
    positions: gr.Radio
    max_new_tokens: gr.Slider
    temperature: gr.Slider
    seed: gr.Number
    readout: gr.Slider
    frequency_penalty: gr.Slider
    generate: gr.Button
    stop: gr.Button
    share: gr.Textbox
    baseline: gr.Textbox
    steered: gr.Textbox
    status: gr.Markdown
    plot: gr.Plot
    tokens_baseline: gr.HTML
    tokens_steered: gr.HTML
    run_json: gr.DownloadButton
    run_csv: gr.DownloadButton
    sweep: gr.Button
    sweep_plot: gr.Plot
    sweep_table: gr.Dataframe
    compare: compare_panel.ComparePanel | None = None
    capping: cap_panel.CapPanel | None = None

    @property
    def share_inputs(self) -> list[Any]:
        return [
            self.prompt, self.system, self.persona, self.layer, self.strength, self.positions,
            self.max_new_tokens, self.temperature, self.seed, self.readout,
            self.frequency_penalty,
        ]  # fmt: skip

    def controls_for(
        self,
        ctx: AppContext,
        item: VectorItem | None,
        view: CatalogView,
        layer: int | None = None,
        strength: float | None = None,
    ) -> dict[Any, Any]:
        """Layer, strength (absolute and ×) and the info line for a newly picked persona.

        Explicit ``layer``/``strength`` (a share link) win over the vector's recommendations.
        """
        if item is None or item.info is None:
            return {self.persona_info: NO_PERSONA_INFO}
        vec = item.info
        unit = ctx.default_strength(vec)
        s = unit if strength is None else strength
        return {
            self.layer: gr.update(value=ctx.default_layer(vec) if layer is None else layer),
            self.strength: gr.update(value=s),
            self.multiple: gr.update(value=_multiple(s, unit)),
            self.unit: gr.update(value=unit),
            self.persona_info: persona_info(ctx, item, view),
        }


def _multiple(strength: float, unit: float) -> float:
    if not unit:
        return 1.0
    return max(-MULTIPLE_RANGE, min(MULTIPLE_RANGE, round(strength / unit, 2)))


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
        f"{ctx.default_layer(vec)}, {strength}{_swept(vec.metadata)}"
        + (f"  \n{md(about, 500)}" if about else "")
        + _tested(vec.metadata)
    )


def _tested(meta: dict) -> str:
    """What the built-in check found on prompts used for nothing else (builtin_check): said
    plainly where the persona does not hold up, so a class is not shown it as if it worked."""
    test = meta.get("test")
    if not isinstance(test, dict) or not isinstance(test.get("holds"), bool):
        return ""
    trait, worst = test.get("trait"), test.get("worst_repetition")
    if not isinstance(trait, (int, float)) or not isinstance(worst, (int, float)):
        return ""
    numbers = f"trait +{trait:.2f}, the most repetitive answer {worst:.0%} repeated word triples"
    if test["holds"]:
        return f"  \nOn {test.get('prompts', 'the')} unseen test prompts: {numbers}."
    return (
        f"  \n⚠️ On this model it does not hold up on unseen prompts ({numbers}): expect "
        "answers that barely show the trait or that repeat themselves."
    )


def _swept(meta: dict) -> str:
    """Where a sweep chose the layer and strength, what it measured (see the Sweep tab)."""
    sweep = meta.get("sweep")
    if not isinstance(sweep, dict):
        return ""
    trait, coherence = sweep.get("trait"), sweep.get("coherence")
    if not isinstance(trait, (int, float)) or not isinstance(coherence, (int, float)):
        return " (chosen by a sweep)"
    return f" (chosen by a sweep: trait +{trait:.2f}, coherence {coherence:.2f})"


def pick_persona(ctx: AppContext, tab: SteerTab, persona: str, session: Any) -> dict:
    view = ctx.catalog.view(session)
    try:
        item = view.resolve(persona)
    except InputError as exc:
        return {tab.persona_info: f"⚠️ {md(exc, 400)}"}
    return tab.controls_for(ctx, item, view)


def build(ctx: AppContext, state: gr.State) -> SteerTab:
    n_layers = ctx.model.n_layers
    limits = ctx.settings.limits
    view = ctx.catalog.view(None)
    key = view.default_key(ctx.settings.default_persona)
    item = view.resolve(key) if key else None
    vec = item.info if item else None
    unit = ctx.default_strength(vec) if vec else 2.0

    teaching.panel(teaching.STEER)
    with gr.Row(equal_height=False, elem_classes="pe-steer"):
        with gr.Column(scale=4, min_width=300, elem_classes="pe-controls"):
            prompt = gr.Textbox(
                label="Prompt", value=DEFAULT_PROMPT, lines=3, max_lines=12,
                placeholder="Ask the model something…", elem_id="pe-prompt",
            )  # fmt: skip
            with gr.Accordion("System prompt", open=False):
                system = gr.Textbox(
                    "", label="System prompt", show_label=False, lines=2,
                    placeholder="Optional, e.g. “You are a helpful assistant.”",
                    elem_id="pe-system",
                )  # fmt: skip
            persona = gr.Dropdown(
                label="Persona",
                choices=view.persona_choices(),
                value=key,
                allow_custom_value=True,  # unknown names get a clear error from the handler
                filterable=True,
                elem_id="pe-persona",
            )
            info = gr.Markdown(
                persona_info(ctx, item, view) if item else NO_PERSONA_INFO,
                elem_classes="pe-info",
                label="About this persona",
            )
            layer = gr.Slider(
                0, n_layers - 1, value=ctx.default_layer(vec) if vec else (2 * n_layers) // 3,
                step=1, label="Layer", info="Where the vector is added (0 = first block).",
                elem_id="pe-layer",
            )  # fmt: skip
            multiple = gr.Slider(
                -MULTIPLE_RANGE, MULTIPLE_RANGE, value=1.0, step=0.25,
                label="Strength (× recommended)",
                info="1× = the strength this vector was made for; negative pushes away.",
                elem_id="pe-multiple",
            )  # fmt: skip
            strength = gr.Number(
                value=unit, step=0.25, minimum=-limits.max_abs_strength,
                maximum=limits.max_abs_strength, label="Strength (absolute)",
                info="What is added: strength × vector.", elem_id="pe-strength",
            )  # fmt: skip
            unit_box = gr.Number(value=unit, visible=False, label="Recorded strength")
            positions = gr.Radio(
                POSITION_CHOICES, value="all", label="Steer at", elem_id="pe-positions"
            )
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="pe-generate")
                stop = gr.Button("Stop", variant="secondary", elem_id="pe-stop")
        # The answers right after Generate: on a phone the columns stack in this order
        # (controls, answers, then settings and the share link); on a wide screen the
        # stylesheet puts the third column under the first (assets/style.css, .pe-steer).
        with gr.Column(scale=8, min_width=320, elem_classes="pe-results"):
            with gr.Row(equal_height=True):
                baseline = gr.Textbox(
                    label="Baseline · no steering", lines=9, max_lines=18, interactive=False,
                    buttons=["copy"], elem_id="pe-baseline",
                    elem_classes="pe-out pe-out-baseline",
                )  # fmt: skip
                steered = gr.Textbox(
                    label="Steered", lines=9, max_lines=18, interactive=False, buttons=["copy"],
                    elem_id="pe-steered", elem_classes="pe-out pe-out-steered",
                )  # fmt: skip
            status = gr.Markdown(elem_classes="pe-status", elem_id="pe-status", label="Status")
            plot = gr.Plot(
                empty_figure("Generate to see the projection at every layer"),
                label="Projection by layer", show_label=False, elem_id="pe-plot",
            )  # fmt: skip
            with gr.Accordion("Per-token view", open=True), gr.Row(equal_height=False):
                with gr.Column(min_width=200):
                    gr.Markdown("**Baseline**", elem_classes="pe-subhead")
                    tokens_baseline = gr.HTML(
                        label="Per-token view, baseline", elem_id="pe-tokens-baseline"
                    )
                with gr.Column(min_width=200):
                    gr.Markdown("**Steered**", elem_classes="pe-subhead")
                    tokens_steered = gr.HTML(
                        label="Per-token view, steered", elem_id="pe-tokens-steered"
                    )
            with gr.Row():
                run_json = gr.DownloadButton("Download run (JSON)", elem_id="pe-run-json")
                run_csv = gr.DownloadButton("Projections (CSV)", elem_id="pe-run-csv")
            with gr.Accordion("Strength sweep", open=False):
                gr.Markdown(
                    "The same prompt at −2, 0, 1, 2 and 4 × the strength above, in one batch."
                )
                sweep = gr.Button("Run strength sweep", elem_id="pe-sweep")
                sweep_plot = gr.Plot(
                    empty_figure("Run the sweep to compare strengths"),
                    label="Projection by strength", show_label=False, elem_id="pe-sweep-plot",
                )  # fmt: skip
                sweep_table = gr.Dataframe(
                    headers=["Strength", "Projection", "Answer"],
                    datatype=["number", "number", "str"], interactive=False, wrap=True,
                    column_widths=["12%", "14%", "74%"], label="Answers by strength",
                    elem_id="pe-sweep-table", elem_classes="pe-table",
                )  # fmt: skip
            compare = compare_panel.build(ctx, state, persona, layer, strength)
            capping = cap_panel.build(ctx)
        with gr.Column(scale=4, min_width=300, elem_classes="pe-secondary"):
            with gr.Accordion("Generation settings", open=False, elem_id="pe-generation-settings"):
                max_new_tokens = gr.Slider(
                    1, limits.max_new_tokens,
                    value=min(DEFAULT_MAX_NEW_TOKENS, limits.max_new_tokens), step=1,
                    label="Max new tokens", elem_id="pe-max-new-tokens",
                )  # fmt: skip
                temperature = gr.Slider(
                    0.0, limits.max_temperature, value=DEFAULT_TEMPERATURE, step=0.05,
                    label="Temperature", info="0 = greedy", elem_id="pe-temperature",
                )  # fmt: skip
                frequency_penalty = gr.Slider(
                    0.0, MAX_PENALTY, value=DEFAULT_FREQUENCY_PENALTY, step=0.1,
                    label="Frequency penalty",
                    info="Lowers a word's chance each time the answer repeats it; steered "
                    "small models loop without it. 0 = off.",
                    elem_id="pe-frequency-penalty",
                )  # fmt: skip
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="pe-seed")
                readout = gr.Slider(
                    AUTO_READOUT, n_layers - 1, value=AUTO_READOUT, step=1,
                    label="Read-out layer of the per-token view",
                    info="−1 = the layer right after the injected one.", elem_id="pe-readout",
                )  # fmt: skip
            share = gr.Textbox(
                label="Share link",
                info="Opens this tab with every setting above (vectors from this session only "
                "once saved to the library).",
                buttons=["copy"], interactive=False, elem_id="pe-share",
            )  # fmt: skip

    tab = SteerTab(
        prompt=prompt, system=system, persona=persona, persona_info=info, layer=layer,
        strength=strength, multiple=multiple, unit=unit_box, positions=positions,
        max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, readout=readout,
        frequency_penalty=frequency_penalty,
        generate=generate, stop=stop, share=share, baseline=baseline, steered=steered,
        status=status, plot=plot, tokens_baseline=tokens_baseline, tokens_steered=tokens_steered,
        run_json=run_json, run_csv=run_csv, sweep=sweep, sweep_plot=sweep_plot,
        sweep_table=sweep_table,
    )  # fmt: skip
    tab.compare = compare
    tab.capping = capping
    _wire(ctx, tab, state)
    compare_panel.wire(ctx, compare, tab, state)
    cap_panel.wire(ctx, capping, tab, state)
    return tab


def _wire(ctx: AppContext, tab: SteerTab, state: gr.State) -> None:
    inputs = [
        tab.prompt, tab.persona, tab.layer, tab.strength, tab.max_new_tokens, tab.system,
        tab.positions, tab.temperature, tab.seed, tab.readout, tab.frequency_penalty, state,
    ]  # fmt: skip
    outputs = [
        tab.baseline, tab.steered, tab.plot, tab.tokens_baseline, tab.tokens_steered,
        tab.status, tab.run_json, tab.run_csv,
    ]  # fmt: skip
    steer = form_endpoint(
        SteerForm,
        lambda form, session, request: run_steer(ctx, tab, form, session, request),
        name="steer",
        doc=STEER_DOC,
        request=True,
    )
    sweep_strengths = form_endpoint(
        SteerForm,
        lambda form, session, request, progress: run_strength_sweep(
            ctx, tab, form, session, request, progress
        ),
        name="sweep_strengths",
        doc=SWEEP_DOC,
        request=True,
        progress=True,
    )
    generation = {
        "concurrency_limit": ctx.settings.steer_concurrency,
        "concurrency_id": "generation",
    }
    gr.on(
        [tab.generate.click, tab.prompt.submit],
        steer,
        inputs=inputs,
        outputs=outputs,
        api_name="steer",
        show_progress_on=[tab.status],
        **generation,
    )
    tab.sweep.click(
        sweep_strengths,
        inputs=inputs,
        outputs=[tab.sweep_plot, tab.sweep_table],
        api_name="sweep_strengths",
        **generation,
    )

    def stop(request: gr.Request) -> str:
        return stop_runs(ctx, request)

    # A flag, not `cancels=`: the run ends at its next step and still reports what it made.
    tab.stop.click(stop, None, tab.status, queue=False, api_visibility="private")
    tab.persona.input(
        lambda persona, session: pick_persona(ctx, tab, persona, session),
        inputs=[tab.persona, state],
        outputs=[tab.layer, tab.strength, tab.multiple, tab.unit, tab.persona_info],
        api_visibility="private",
        queue=False,
    )
    tab.multiple.input(None, [tab.multiple, tab.unit], tab.strength, js=TO_ABSOLUTE_JS)
    tab.strength.input(None, [tab.strength, tab.unit], tab.multiple, js=TO_MULTIPLE_JS)
    gr.on(
        [c.change for c in tab.share_inputs],
        None,
        inputs=tab.share_inputs,
        outputs=[tab.share],
        js=SHARE_LINK_JS,
    )


__all__ = ["SHARE_KEYS", "SteerForm", "SteerTab", "build", "pick_persona"]
