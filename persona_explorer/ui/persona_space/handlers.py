"""The Persona space tab's actions: the form and the handlers.

Two actions draw the map. :func:`run_map` is the public ``/persona_map`` endpoint (and the
"Place my prompt" button): with a prompt it generates a short greedy answer and places the
prompt's and the answer's mean activations; without one it draws the roles alone. Moving the
layer, the view, the arrows or their length re-draws through :func:`replot`, from the points
kept in the tab's ``gr.State``: nothing is generated again. The math is in
:mod:`persona_explorer.axis.persona_space`, the figures and words in :mod:`.views`.

The tab's bounds are ``core.limits``' ``APP_MAP_*``.

Imports: gradio, ``core``, ``axis`` (the axis, its file, the persona space), ``steering``
(generation), ``vectors``, ``plots``, ``ui.shared`` (context, markup, requests) and this tab's
components and views; never the layout (:mod:`.tab`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from persona_explorer.axis.assistant_axis import AxisData
from persona_explorer.axis.build import axis_path, shipped_axis_path
from persona_explorer.axis.persona_space import (
    PlacedText,
    check_arrow_scale,
    map_summary,
    space_for,
)
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    APP_MAP_MAX_PERSONAS,
    APP_MAP_MAX_TOKENS,
    check_int,
    check_layer,
    check_max_new_tokens,
)
from persona_explorer.plots.common import empty_figure
from persona_explorer.steering.generation import SamplingConfig, generate_stream
from persona_explorer.ui.persona_space.components import PersonaSpaceTab
from persona_explorer.ui.persona_space.views import map_figures, summary_text
from persona_explorer.ui.shared.context import AppContext, user_errors
from persona_explorer.ui.shared.markup import md
from persona_explorer.ui.shared.requests import prompt_and_system
from persona_explorer.vectors.persona_vector import PersonaVector

VIEWS = ("2-D", "3-D")
ARROW_CHOICES = [("as extracted", "extracted"), ("same length for all", "spread")]
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
    if len(picked) > APP_MAP_MAX_PERSONAS:
        raise InputError(
            f"{len(picked)} persona vectors chosen: the map shows at most {APP_MAP_MAX_PERSONAS}."
        )
    view = ctx.catalog.view(session)
    out = []
    for key in picked:
        item, vec = view.resolve_fitting(key)
        out.append((item.name, vec))
    return out


def place_prompt(
    ctx: AppContext, form: PersonaMapForm, should_stop: Callable[[], bool]
) -> Iterator[tuple[str, int, int] | PlacedText]:
    """Generate a short greedy answer to the form's prompt, yielding (answer so far, step,
    max steps) after each token, and last the prompt's and the answer's mean activations."""
    limits = ctx.settings.limits
    text, system = prompt_and_system(limits, form.prompt, form.system_prompt)
    n = check_max_new_tokens(form.max_new_tokens, limits)
    check_int(n, "Max new tokens", 1, APP_MAP_MAX_TOKENS)
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
    fig, var_fig, layers_fig = map_figures(space, m, placed, arrows, three_d=three_d)
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
    *,
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
    *,
    placed: object,
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
    *,
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
    cached = axis_path(model.model_id, ctx.settings.cache_dir)
    for path in (shipped_axis_path(model.model_id), cached):
        if path.is_file():
            try:
                data = AxisData.load(path)
            except InputError:
                continue
            if (data.n_layers, data.d_model) == (model.n_layers, model.d_model):
                return True
    return False


def initial_figures(ctx: AppContext, layer: int) -> tuple[Any, Any, Any, str, Any]:
    """What the tab shows before any event: the map at the default layer when the axis is at
    hand, else placeholders asking for "Draw the map" (building an axis at start-up would
    hold the server for minutes)."""
    if _axis_is_ready(ctx):
        space = space_for(ctx.axis())
        m = space.layer(layer)
        fig, var_fig, layers_fig = map_figures(space, m, None, [], three_d=False)
        return fig, var_fig, layers_fig, summary_text(m, None, [], False), map_summary(space, m)
    blank = empty_figure(NO_AXIS_MESSAGE)
    return blank, empty_figure(""), empty_figure(""), md(NO_AXIS_MESSAGE, 400), None
