"""Activation capping, inside the Steer tab: uncapped and capped answers side by side.

Uses the Steer tab's prompt, system prompt, persona, layer and strength. The cap keeps the
projection on the Assistant Axis at or above τ (a percentile of the default Assistant's
per-token projections) on a window of layers (:mod:`..capping`). With "combine with the persona
vector", the persona is added too, alone and with the cap: steered vs steered + capped. Every
answer comes from one batch. Also the public ``/steer_capped`` API.

Imports: ``..capping``, ``..axis``, ``..plots.capping``, ``..limits``, and this package's
context, forms, markup, teaching and steer_run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from persona_explorer.axis.assistant_axis import (
    DEFAULT_CAP_PERCENTILE,
    check_percentile,
    default_cap_layers,
)
from persona_explorer.axis.capping import CapOutput, CapRequest, cap_stream, parse_cap_layers
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    DEFAULT_FREQUENCY_PENALTY,
    DEFAULT_TEMPERATURE,
    check_layer,
    check_strength,
)
from persona_explorer.plots import empty_figure
from persona_explorer.plots.capping import TokenSeries, cap_layer_figure, cap_token_figure
from persona_explorer.steering.ops import check_positions
from persona_explorer.ui.shared import teaching
from persona_explorer.ui.shared.context import AppContext, user_errors
from persona_explorer.ui.shared.forms import form_endpoint
from persona_explorer.ui.shared.markup import md
from persona_explorer.ui.shared.requests import (
    DEFAULT_MAX_NEW_TOKENS,
    prompt_and_system,
    sampling,
    stop_runs,
)
from persona_explorer.ui.shared.streaming import coalesce

__all__ = ["CapForm", "CapPanel", "build", "run_capped", "wire"]


@dataclass
class CapPanel:
    combine: gr.Checkbox
    percentile: gr.Slider
    layers: gr.Textbox
    max_new_tokens: gr.Slider
    run: gr.Button
    stop: gr.Button
    status: gr.Markdown
    baseline: gr.Textbox
    capped: gr.Textbox
    steered_row: gr.Row
    steered: gr.Textbox
    steered_capped: gr.Textbox
    plot: gr.Plot
    token_plot: gr.Plot
    numbers: gr.JSON


@dataclass(frozen=True)
class CapForm:
    """The ``/steer_capped`` API's parameters. ``persona``, ``layer`` and ``strength`` are used
    only with ``combine``; ``cap_layers`` as typed ("15-18", "15,17"; empty: the default)."""

    prompt: str
    combine: bool = False
    persona: str = ""
    layer: float = 0
    strength: float = 0.0
    cap_percentile: float = DEFAULT_CAP_PERCENTILE
    cap_layers: str = ""
    max_new_tokens: float = DEFAULT_MAX_NEW_TOKENS
    system_prompt: str = ""
    positions: str = "all"
    temperature: float = DEFAULT_TEMPERATURE
    seed: float = 0
    frequency_penalty: float = DEFAULT_FREQUENCY_PENALTY

    def request(self, ctx: AppContext, session: Mapping | None) -> CapRequest:
        limits = ctx.settings.limits
        n_layers = ctx.model.n_layers
        prompt, system = prompt_and_system(limits, self.prompt, self.system_prompt)
        if not isinstance(self.combine, bool):
            raise InputError(f"combine must be true or false, not {self.combine!r}.")
        if self.cap_layers is not None and not isinstance(self.cap_layers, str):
            raise InputError("Cap layers must be text such as 15-18 or 15,17.")
        vec, layers, strength = None, (), 0.0
        if self.combine:
            _, vec = ctx.catalog.view(session).resolve_fitting(self.persona)
            layers = (check_layer(self.layer, n_layers),)
            strength = check_strength(self.strength, limits)
        return CapRequest(
            prompt=prompt,
            system=system,
            vector=vec,
            layers=layers,
            strength=strength,
            cap_layers=parse_cap_layers(self.cap_layers, n_layers),
            percentile=check_percentile(self.cap_percentile),
            positions=check_positions(self.positions),
            sampling=sampling(
                limits, self.max_new_tokens, self.temperature, self.seed, self.frequency_penalty
            ),
        )


# --------------------------------------------------------------------------- wording


def _layers_text(layers: tuple[int, ...]) -> str:
    if len(layers) > 1 and layers == tuple(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}–{layers[-1]}"
    return ", ".join(str(x) for x in layers)


SCALE = "0 = the roles' mean, 1 = the Assistant"
# τ this close to 0 on the plot's scale is worded as "at the roles' mean".
NEAR_ROLES = 0.35


def status_text(out: CapOutput, timed_out: bool) -> str:
    """What the cap did, in numbers: where, τ (on the plot's scale, raw in brackets), how often
    it lifted, and each answer's position at the read-out layer before and after."""
    info = out.cap
    at = out.readout_layer
    taus = out.normalised(info.floors, info.layers)
    floors = ", ".join(f"{t:.2f}" for t in taus)
    raw = ", ".join(f"{f:.2f}" for f in info.floors)
    lines = [
        f"Cap at layer{'s' if len(info.layers) > 1 else ''} {_layers_text(info.layers)}, "
        f"τ = percentile {info.percentile:g} of the Assistant's own tokens: {floors} on the "
        f"plot's scale ({SCALE}; raw projections {raw}, which do not compare across layers)."
    ]
    if all(abs(t) < NEAR_ROLES for t in taus):
        lines.append(
            "τ lies near the roles' mean, not near the Assistant: the Assistant's own tokens "
            f"spread widely along the axis, and {info.percentile:g} % of them fall that low "
            "(see *What am I looking at?*). Such a floor lifts only tokens below the average role."
        )
    for before, after in out.pairs():
        shares = [
            f"{share:.0%} at {layer}"
            for share, layer in zip(after.cap_fired or [], info.layers, strict=True)
        ]
        lifted = shares[0].replace(" at ", " of the tokens at layer ", 1)
        if len(shares) > 1:
            lifted += f" ({', '.join(shares[1:])})"
        if not after.tokens:
            change = "no tokens"
        elif after.text == before.text:
            change = f"same text as {before.label}"
        else:
            change = "the text changed"
        b, a = out.normalised([before.axis_projection[at], after.axis_projection[at]], [at, at])
        lines.append(
            f"**{md(after.label)}**: the cap lifted {lifted}; the answer's mean position on "
            f"the axis at layer {at}: {b:.2f} {before.label} → {a:.2f} {after.label} ({change})."
        )
    if out.combined and min(out.steer_layers) > info.layers[-1]:
        lines.append(
            f"The persona is added at layer {_layers_text(out.steer_layers)}, after the last "
            f"capped layer ({info.layers[-1]}): the cap cannot hold back what is added later. "
            "Cap later layers, or steer earlier, to see the two meet."
        )
    done = f"{out.new_tokens} tokens in {out.seconds:.1f} s"
    if timed_out:
        done = f"Stopped at the time limit for one job after {out.new_tokens} tokens"
    elif out.stopped:
        done = f"Stopped after {out.new_tokens} tokens; the numbers are for what was made"
    lines.append(f"{done}, all answers in one batch.")
    return "  \n".join(lines)


def figures(out: CapOutput) -> tuple[Any, Any]:
    """The per-layer figure and the per-token one at the read-out (the last cap) layer, both
    on one scale (0 = the roles' mean, 1 = the Assistant, at each layer), τ included: raw
    projections differ from layer to layer in size and offset, so only this scale compares
    layers, and τ reads the same on both plots and in the status."""
    steered = f"; steered = {out.vector_name} at strength {out.strength:g}" if out.combined else ""
    pairs = out.pairs()
    norm = out.normalised
    at = out.readout_layer
    landmarks = {"the Assistant": 1.0, "the roles' mean": 0.0}
    layer_fig = cap_layer_figure(
        {b.label: norm(b.axis_projection) for b, _ in pairs},
        {a.label: norm(a.axis_projection) for _, a in pairs},
        out.cap.layers,
        norm(out.cap.floors, out.cap.layers),
        readout_layer=at,
        title=f"Position on the Assistant Axis, layer by layer ({SCALE}){steered}",
        y_title="Position on the axis",
        landmarks=landmarks,
    )
    series = [
        TokenSeries(
            r.label,
            r.token_strings,
            norm(r.token_projection, [at] * len(r.token_projection)),
            r.capped,
            k,
        )
        for k, pair in enumerate(pairs)
        for r in pair
    ]
    floor = dict(zip(out.cap.layers, out.cap.floors, strict=True)).get(at)
    token_fig = cap_token_figure(
        series,
        at,
        None if floor is None else norm([floor], [at])[0],
        f"Each token's position on the axis at layer {at} ({SCALE}){steered}",
        y_title=f"Position on the axis, layer {at}",
        landmarks=landmarks,
    )
    return layer_fig, token_fig


# --------------------------------------------------------------------------- handler


def run_capped(
    ctx: AppContext,
    panel: CapPanel,
    form: CapForm,
    session: Mapping | None,
    request: gr.Request | None,
    progress: Any,
) -> Iterator[dict]:
    """Stream the answers token by token; the last update adds the plots and the numbers."""
    yield {panel.status: ""}  # the last run's message must not stand beside a new error
    with user_errors():
        req = form.request(ctx, session)
        # Shipped for the embedded model; built once (minutes) for any other, with progress.
        axis = ctx.axis(lambda fraction, message: progress(fraction, desc=message))
        combined = req.vector is not None
        boxes = [panel.baseline, panel.capped]
        if combined:
            boxes += [panel.steered, panel.steered_capped]
        total = req.sampling.max_new_tokens
        first = True
        with ctx.job(request) as job:
            stream = cap_stream(ctx.model, axis, req, should_stop=job)
            counted = (((step, t), o) for step, (t, o) in enumerate(stream, start=1))
            for (step, texts), out in coalesce(counted):
                if out is None:
                    progress((min(step, total), total), desc="Generating", unit="tokens")
                    update = dict(zip(boxes, texts, strict=True))
                    if first:  # clear the previous run's answers and figures once
                        update |= {
                            panel.plot: empty_figure("Generating…"),
                            panel.token_plot: empty_figure("Generating…"),
                            panel.numbers: None,
                        }
                        if not combined:
                            update |= {panel.steered: "", panel.steered_capped: ""}
                        first = False
                    yield update
                    continue
                layer_fig, token_fig = figures(out)
                update = {box: row.text for box, row in zip(boxes, out.rows, strict=True)}
                if not combined:
                    update |= {panel.steered: "", panel.steered_capped: ""}
                yield update | {
                    panel.plot: layer_fig,
                    panel.token_plot: token_fig,
                    panel.status: status_text(out, job.timed_out()),
                    panel.numbers: out.as_dict(),
                }


CAP_DOC = """Uncapped and capped answers to one prompt (activation capping on the Assistant Axis),
and with combine=True also the persona-steered answer alone and with the cap, in one batch.

Outputs: the uncapped, capped, steered and steered + capped texts (the last two empty without
combine), the per-layer and per-token projection plots, a status line and the numbers as JSON
(cap layers, floors and percentile; each row's projection at every layer and per token; the
share of tokens the cap lifted at each cap layer)."""


# --------------------------------------------------------------------------- layout


def build(ctx: AppContext) -> CapPanel:
    n_layers = ctx.model.n_layers
    limits = ctx.settings.limits
    window = default_cap_layers(n_layers)
    with gr.Accordion(
        "Hold the Assistant: activation capping", open=False, elem_id="pe-cap-accordion"
    ):
        teaching.panel(teaching.CAPPING, glossary=False)
        gr.Markdown(
            "Keeps the projection on the Assistant Axis at or above a floor τ on a window of "
            "layers. Uses the prompt and system prompt above; tick *combine* to add the persona "
            "vector too, at the layer and strength above (steered vs steered + capped)."
        )
        with gr.Row(equal_height=True):
            combine = gr.Checkbox(
                False, label="Combine with the persona vector", elem_id="pe-cap-combine"
            )
            percentile = gr.Slider(
                0, 100, value=DEFAULT_CAP_PERCENTILE, step=1, label="Cap percentile",
                info="τ = this percentile of the Assistant's own projections; higher is stricter.",
                elem_id="pe-cap-percentile",
            )  # fmt: skip
            layers = gr.Textbox(
                _layers_text(window).replace("–", "-"), label="Cap layers",
                info=f"e.g. 15-18 or 15,17 (0-{n_layers - 1}).", max_lines=1,
                elem_id="pe-cap-layers",
            )  # fmt: skip
            max_new_tokens = gr.Slider(
                1, limits.max_new_tokens,
                value=min(DEFAULT_MAX_NEW_TOKENS, limits.max_new_tokens), step=1,
                label="Max new tokens", elem_id="pe-cap-max-new-tokens",
            )  # fmt: skip
        with gr.Row():
            run = gr.Button("Generate uncapped and capped", variant="primary", elem_id="pe-cap-run")
            stop = gr.Button("Stop", variant="secondary", elem_id="pe-cap-stop")
        status = gr.Markdown(elem_id="pe-cap-status", label="Capping status")
        with gr.Row(equal_height=True):
            baseline = gr.Textbox(
                label="Uncapped", lines=7, max_lines=14, interactive=False, buttons=["copy"],
                elem_id="pe-cap-baseline", elem_classes="pe-out pe-out-baseline",
            )  # fmt: skip
            capped = gr.Textbox(
                label="Capped", lines=7, max_lines=14, interactive=False, buttons=["copy"],
                elem_id="pe-cap-capped", elem_classes="pe-out",
            )  # fmt: skip
        with gr.Row(equal_height=True, visible=False) as steered_row:
            steered = gr.Textbox(
                label="Steered", lines=7, max_lines=14, interactive=False,
                buttons=["copy"], elem_id="pe-cap-steered", elem_classes="pe-out pe-out-steered",
            )  # fmt: skip
            steered_capped = gr.Textbox(
                label="Steered + capped", lines=7, max_lines=14, interactive=False,
                buttons=["copy"], elem_id="pe-cap-steered-capped", elem_classes="pe-out",
            )  # fmt: skip
        plot = gr.Plot(
            empty_figure("Generate to see the projection on the axis at every layer"),
            label="Projection on the Assistant Axis by layer", show_label=False,
            elem_id="pe-cap-plot",
        )  # fmt: skip
        token_plot = gr.Plot(
            empty_figure("…and every token's projection at the last capped layer"),
            label="Projection per token", show_label=False, elem_id="pe-cap-token-plot",
        )  # fmt: skip
        with gr.Accordion("Numbers (JSON)", open=False):
            numbers = gr.JSON(label="Capping numbers", elem_id="pe-cap-json")
    return CapPanel(
        combine, percentile, layers, max_new_tokens, run, stop, status, baseline, capped,
        steered_row, steered, steered_capped, plot, token_plot, numbers,
    )  # fmt: skip


def wire(ctx: AppContext, panel: CapPanel, tab: Any, state: gr.State) -> None:
    steer_capped = form_endpoint(
        CapForm,
        lambda form, session, request, progress: run_capped(
            ctx, panel, form, session, request, progress
        ),
        name="steer_capped",
        doc=CAP_DOC,
        request=True,
        progress=True,
    )
    panel.run.click(
        steer_capped,
        inputs=[
            tab.prompt,
            panel.combine,
            tab.persona,
            tab.layer,
            tab.strength,
            panel.percentile,
            panel.layers,
            panel.max_new_tokens,
            tab.system,
            tab.positions,
            tab.temperature,
            tab.seed,
            tab.frequency_penalty,
            state,
        ],
        outputs=[
            panel.baseline,
            panel.capped,
            panel.steered,
            panel.steered_capped,
            panel.plot,
            panel.token_plot,
            panel.status,
            panel.numbers,
        ],
        api_name="steer_capped",
        show_progress_on=[panel.status],
        concurrency_limit=ctx.settings.steer_concurrency,
        concurrency_id="generation",
    )

    def stop(request: gr.Request) -> str:
        return stop_runs(ctx, request)

    # A flag, not `cancels=`: the run ends at its next step and still reports what it made.
    panel.stop.click(stop, None, panel.status, queue=False, api_visibility="private")
    panel.combine.change(
        lambda on: gr.Row(visible=bool(on)),
        panel.combine,
        panel.steered_row,
        queue=False,
        api_visibility="private",
    )
