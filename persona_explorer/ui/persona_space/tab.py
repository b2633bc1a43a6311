"""The Persona space tab: a PCA map of the role vectors at one layer, with the Assistant, the
user's own prompt and answer, and persona vectors placed in it (issue 10, item 2).

Two actions draw the map. :func:`run_map` is the public ``/persona_map`` endpoint (and the
"Place my prompt" button): with a prompt it generates a short greedy answer and places the
prompt's and the answer's mean activations; without one it draws the roles alone. Moving the
layer, the view, the arrows or their length re-draws through :func:`replot`, from the points
kept in the tab's ``gr.State``: nothing is generated again. The math is in
:mod:`..persona_space`, the figures in :mod:`..plots.persona_map`.

Imports: the engine (``..persona_space``, ``..generation``, ``..axis``), ``..plots``,
``..limits``, and this package's context, forms, markup and teaching.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from persona_explorer.axis.assistant_axis import AxisData, default_axis_layer
from persona_explorer.axis.build import axis_path, shipped_axis_path
from persona_explorer.axis.persona_space import (
    LayerMap,
    PersonaArrow,
    PersonaSpace,
    PlacedText,
    check_arrow_scale,
    map_summary,
    space_for,
)
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import check_int, check_layer, check_max_new_tokens
from persona_explorer.plots.common import empty_figure, fmt
from persona_explorer.plots.persona_map import (
    MapArrow,
    MapPoint,
    pc1_layers_figure,
    persona_map_figure,
    variance_figure,
)
from persona_explorer.steering.generation import SamplingConfig, generate_stream
from persona_explorer.ui.shared import teaching
from persona_explorer.ui.shared.context import AppContext, user_errors
from persona_explorer.ui.shared.forms import form_endpoint
from persona_explorer.ui.shared.markup import md
from persona_explorer.ui.shared.requests import prompt_and_system
from persona_explorer.vectors.persona_vector import PersonaVector

VIEWS = ("2-D", "3-D")
# Gradio injects a live progress tracker where a parameter defaults to a gr.Progress.
PROGRESS = gr.Progress()
ARROW_CHOICES = [("as extracted", "extracted"), ("same length for all", "spread")]
MAX_MAP_PERSONAS = 6  # more arrows than this tangle the map
MAX_PLACE_TOKENS = 64  # a short answer places well; the map is not for reading long ones
DEFAULT_PLACE_TOKENS = 32
NO_AXIS_MESSAGE = (
    "Press “Draw the map”. The first time, this model's Assistant Axis is built: every role "
    "answers a few questions, which takes minutes on a CPU, and is cached after that."
)


@dataclass(frozen=True)
class PersonaMapForm:
    """The map's inputs, as widgets send them (and as the ``/persona_map`` API takes them)."""

    layer: float
    view: str = "2-D"
    personas: list[str] | None = None
    arrow_length: str = "extracted"
    prompt: str = ""
    system_prompt: str = ""
    max_new_tokens: float = DEFAULT_PLACE_TOKENS


@dataclass
class PersonaSpaceTab:
    layer: gr.Slider
    view: gr.Radio
    personas: gr.Dropdown
    refresh: gr.Button
    arrow_length: gr.Radio
    prompt: gr.Textbox
    system: gr.Textbox
    max_new_tokens: gr.Slider
    place: gr.Button
    clear: gr.Button
    draw: gr.Button
    answer: gr.Textbox
    summary: gr.Markdown
    plot: gr.Plot
    variance: gr.Plot
    layers: gr.Plot
    coords: gr.JSON
    placed: gr.State


# --------------------------------------------------------------------------- building blocks


def check_view(value: object) -> bool:
    """True for the 3-D view."""
    if value not in VIEWS:
        raise InputError(f"View must be {' or '.join(VIEWS)}, not {value!r}.")
    return value == "3-D"


def chosen_vectors(
    ctx: AppContext, session: Mapping | None, keys: Sequence[str] | None
) -> list[tuple[str, PersonaVector]]:
    """The chosen persona vectors (name, vector), each checked to fit the loaded model."""
    if keys is not None and (isinstance(keys, str) or not isinstance(keys, Sequence)):
        raise InputError("Persona vectors must be a list of names or keys.")
    picked = list(dict.fromkeys(k.strip() for k in keys or [] if isinstance(k, str) and k.strip()))
    if len(picked) > MAX_MAP_PERSONAS:
        raise InputError(
            f"{len(picked)} persona vectors chosen: the map shows at most {MAX_MAP_PERSONAS}."
        )
    view = ctx.catalog.view(session)
    out = []
    for key in picked:
        item, vec = view.resolve_fitting(key)
        out.append((item.name, vec))
    return out


def map_figures(
    space: PersonaSpace,
    m: LayerMap,
    placed: PlacedText | None,
    arrows: Sequence[PersonaArrow],
    three_d: bool,
) -> tuple[go.Figure, go.Figure, go.Figure]:
    """The map, the variance chart and the per-layer chart."""
    points = []
    if placed is not None:
        points.append(MapPoint("your prompt", m.place(placed.prompt_mean), "prompt", placed.prompt))
        if placed.answer_mean is not None:
            points.append(
                MapPoint("its answer", m.place(placed.answer_mean), "answer", placed.answer)
            )
    fig = persona_map_figure(
        list(m.roles),
        m.role_coords.tolist(),
        m.role_axis.tolist(),
        m.assistant.tolist(),
        layer=m.layer,
        variance=m.variance.tolist(),
        points=points,
        arrows=[MapArrow(a.name, a.start, a.end, a.axis_cosine) for a in arrows],
        three_d=three_d,
    )
    return (
        fig,
        variance_figure(m.variance.tolist(), m.layer),
        pc1_layers_figure(space.pc1_axis_cosine, space.pc1_variance, m.layer),
    )


def summary_text(
    m: LayerMap, placed: PlacedText | None, arrows: Sequence[PersonaArrow], three_d: bool
) -> str:
    """The numbers under the map, in words (every name escaped)."""
    var = m.variance.tolist()
    order = m.role_axis.argsort(descending=True).tolist()
    near = ", ".join(md(m.roles[i]) for i in order[:3])
    far = ", ".join(md(m.roles[i]) for i in order[-3:][::-1])
    lines = [
        f"**Layer {m.layer}** · PC1 explains **{100 * var[0]:.0f} %** of the role vectors' "
        f"variance (the {'three' if three_d else 'two'} components shown: "
        f"{100 * sum(var[: 3 if three_d else 2]):.0f} %) · |cos(PC1, axis)| = "
        f"**{m.pc1_axis_cosine:.2f}** (the paper's large models: above 0.6 at every layer) · "
        f"the Assistant is **{m.assistant_sd:.1f} SD** above the roles' mean on the axis.",
        f"Nearest the Assistant on the axis: {near}. Farthest: {far}.",
    ]
    if placed is not None:
        if placed.answer_mean is not None:
            pos = m.axis_position(placed.answer_mean)
            nearest = m.nearest_roles(placed.answer_mean)
            names = ", ".join(md(n) for n, _ in nearest)
            lines.append(
                f"**Its answer** sits at **{fmt(pos)}** on the axis (0 = the roles' mean, "
                f"1 = the Assistant). Nearest roles in the full residual space: {names}, the "
                f"nearest {nearest[0][1] / max(m.spread, 1e-12):.1f}× the roles' spread away. "
                "One answer is far noisier than a role's average of many, so it lies apart "
                "from all of them; its place on the axis says more than its neighbours."
            )
        else:
            lines.append("The model gave an empty answer: only your prompt is placed.")
        lines.append(
            f"**Your prompt** sits at **{fmt(m.axis_position(placed.prompt_mean))}** on the "
            "axis. It is the mean over the prompt's tokens (the chat template and any system "
            "prompt included), not an answer like the roles' points, so it often lies apart."
        )
    for a in arrows:
        lines.append(
            f"**{md(a.name)}**: cos with the axis **{fmt(a.axis_cosine, sign=True)}** at this "
            f"layer; {100 * (a.space_share if three_d else a.plane_share):.0f} % of its length "
            f"lies in the {'space' if three_d else 'plane'} shown."
        )
    if placed is None:
        lines.append("Type a prompt and press *Place my prompt* to see where its answer lands.")
    return "\n\n".join(lines)


def place_prompt(
    ctx: AppContext, form: PersonaMapForm, should_stop: Callable[[], bool]
) -> Iterator[tuple[str, int, int] | PlacedText]:
    """Generate a short greedy answer to the form's prompt, yielding (answer so far, step,
    max steps) after each token, and last the prompt's and the answer's mean activations."""
    limits = ctx.settings.limits
    text, system = prompt_and_system(limits, form.prompt, form.system_prompt)
    n = check_max_new_tokens(form.max_new_tokens, limits)
    check_int(n, "Max new tokens", 1, MAX_PLACE_TOKENS)
    model = ctx.model
    ids = model.chat_ids(text, system)
    # Greedy, like the roles' answers the map is made of.
    cfg = SamplingConfig(
        max_new_tokens=n, temperature=0.0, max_prompt_tokens=limits.max_prompt_tokens
    )
    result = None
    for update in generate_stream(
        model, [ids], [()], cfg, keep_tokens=False, should_stop=should_stop
    ):
        result = update.result
        if result is None:
            yield model.decode(update.tokens[0]), update.step, n
    assert result is not None
    tokens = result.tokens[0]
    answer = model.decode(tokens)
    cap = result.capture
    yield PlacedText(
        prompt=text,
        answer=answer,
        prompt_mean=cap.prompt_mean[0].float().cpu(),
        answer_mean=cap.response_mean[0].float().cpu() if tokens and answer.strip() else None,
    )


def _axis(ctx: AppContext, progress: Any) -> AxisData:
    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, desc=message)

    return ctx.axis(report)


def _draw(
    ctx: AppContext,
    tab: PersonaSpaceTab,
    form: PersonaMapForm,
    session: Mapping | None,
    placed: PlacedText | None,
    progress: Any,
    vectors: list[tuple[str, PersonaVector]] | None = None,
) -> dict:
    """Every figure and number of the map for ``form`` (``vectors``: already resolved)."""
    if vectors is None:
        vectors = chosen_vectors(ctx, session, form.personas)
    three_d = check_view(form.view)
    scale = check_arrow_scale(form.arrow_length)
    data = _axis(ctx, progress)
    space = space_for(data)
    m = space.layer(check_layer(form.layer, data.n_layers))
    arrows = [m.arrow(name, vec.vectors, scale) for name, vec in vectors]
    fig, var_fig, layers_fig = map_figures(space, m, placed, arrows, three_d)
    return {
        tab.plot: fig,
        tab.variance: var_fig,
        tab.layers: layers_fig,
        tab.summary: summary_text(m, placed, arrows, three_d),
        tab.coords: map_summary(space, m, placed, arrows),
    }


# --------------------------------------------------------------------------- handlers


def run_map(
    ctx: AppContext,
    tab: PersonaSpaceTab,
    form: PersonaMapForm,
    session: Mapping | None,
    request: gr.Request | None,
    progress: Any,
) -> Iterator[dict]:
    """The map at a layer; with a prompt, its answer is generated and both are placed."""
    with user_errors():
        # Checked before any generation: a bad layer or view should not cost an answer.
        check_view(form.view)
        check_arrow_scale(form.arrow_length)
        check_layer(form.layer, ctx.model.n_layers)
        vectors = chosen_vectors(ctx, session, form.personas)
        placed = None
        if isinstance(form.prompt, str) and form.prompt.strip():
            with ctx.job(request) as job:
                for update in place_prompt(ctx, form, job):
                    if isinstance(update, PlacedText):
                        placed = update
                        continue
                    text, step, total = update
                    progress((step, total), desc="Generating the answer", unit="tokens")
                    yield {tab.answer: text}
        out = _draw(ctx, tab, form, session, placed, progress, vectors)
        yield out | {tab.answer: placed.answer if placed else "", tab.placed: placed}


def replot(
    ctx: AppContext,
    tab: PersonaSpaceTab,
    form: PersonaMapForm,
    session: Mapping | None,
    placed: PlacedText | None,
    progress: Any,
) -> dict:
    """The map again (another layer, view or set of arrows), with the points already placed:
    nothing is generated."""
    with user_errors():
        return _draw(ctx, tab, form, session, _placed(placed), progress)


def clear_points(
    ctx: AppContext,
    tab: PersonaSpaceTab,
    form: PersonaMapForm,
    session: Mapping | None,
    progress: Any,
) -> dict:
    with user_errors():
        out = _draw(ctx, tab, form, session, None, progress)
        return out | {tab.answer: "", tab.placed: None}


def refresh_personas(ctx: AppContext, session: Mapping | None, current: list | None) -> Any:
    """The persona list again (after an extraction, an upload or a library change)."""
    choices = ctx.catalog.view(session).fitting_choices()
    keys = {k for _, k in choices}
    return gr.update(choices=choices, value=[k for k in current or [] if k in keys])


def _placed(value: object) -> PlacedText | None:
    # The state only ever holds what run_map put there; anything else is treated as nothing.
    return value if isinstance(value, PlacedText) else None


def _axis_is_ready(ctx: AppContext) -> bool:
    """True when :meth:`AppContext.axis` would read a file that fits the model (the shipped
    axis, or one cached earlier) instead of spending minutes building one."""
    model = ctx.model
    for path in (shipped_axis_path(model.model_id), axis_path(model.model_id)):
        if path.is_file():
            try:
                data = AxisData.load(path)
            except InputError:
                continue
            if (data.n_layers, data.d_model) == (model.n_layers, model.d_model):
                return True
    return False


def _initial(ctx: AppContext, layer: int) -> tuple[Any, Any, Any, str, Any]:
    """What the tab shows before any event: the map at the default layer when the axis is at
    hand, else placeholders asking for "Draw the map" (building an axis at start-up would
    hold the server for minutes)."""
    if _axis_is_ready(ctx):
        space = space_for(ctx.axis())
        m = space.layer(layer)
        fig, var_fig, layers_fig = map_figures(space, m, None, [], False)
        return fig, var_fig, layers_fig, summary_text(m, None, [], False), map_summary(space, m)
    blank = empty_figure(NO_AXIS_MESSAGE)
    return blank, empty_figure(""), empty_figure(""), md(NO_AXIS_MESSAGE, 400), None


# --------------------------------------------------------------------------- layout


def build(ctx: AppContext, state: gr.State) -> PersonaSpaceTab:
    n = ctx.model.n_layers
    default_layer = default_axis_layer(n)
    fig, var_fig, layers_fig, summary, coords = _initial(ctx, default_layer)
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
                max_choices=MAX_MAP_PERSONAS,
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
                    MAX_PLACE_TOKENS,
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
    placed = gr.State(None)
    tab = PersonaSpaceTab(
        layer=layer, view=view, personas=personas, refresh=refresh, arrow_length=arrow_length,
        prompt=prompt, system=system, max_new_tokens=max_new_tokens, place=place, clear=clear,
        draw=draw, answer=answer, summary=summary_md, plot=plot, variance=variance,
        layers=layers, coords=coords_json, placed=placed,
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
            ctx, tab, form, session, request, progress
        ),
        name="persona_map",
        doc=PERSONA_MAP_DOC,
        request=True,
        progress=True,
    )
    gr.on(
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
        return replot(ctx, tab, form, session, _placed(placed), progress)

    redraw_inputs = [tab.layer, tab.view, tab.personas, tab.arrow_length, state, tab.placed]
    gr.on(
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
        return clear_points(ctx, tab, form, session, progress)

    tab.clear.click(
        clear,
        inputs=redraw_inputs[:-1],
        outputs=[*figures, tab.answer, tab.placed],
        show_progress_on=[tab.plot],
        api_visibility="private",
    )
    tab.refresh.click(
        lambda session, current: refresh_personas(ctx, session, current),
        inputs=[state, tab.personas],
        outputs=tab.personas,
        queue=False,
        api_visibility="private",
    )
