"""The Sweep tab's actions: the form, the handlers and what they show.

:class:`SweepForm` is the tab's inputs (and the public ``/sweep`` API's parameters, in order).
:func:`run_sweep_form` runs :func:`persona_explorer.evaluate.sweep.run_sweep` for one persona
vector over a layer x strength grid and shows the two heat maps (trait rise, coherence), the
grid as a table whose cells can be clicked (:func:`show_cell`: that cell's answers beside the
baseline's), the answers of one layer at every strength side by side (:func:`show_columns`),
the recommendation and the result as JSON. The result is kept in the tab's ``gr.State`` as a
:class:`.views.SweepRun`; the tables and the status line are made in :mod:`.views`.

:func:`use_settings` records the recommendation in the vector (``with_recommendation``), so the
Steer tab starts there: a vector of this session is updated in place, a library vector in the
library when this browser saved it, and a built-in (read-only) or someone else's library
vector as a copy in this session.

Sizes are bounded for the web app by ``core.limits``' ``APP_SWEEP_*``, tighter than the
command line's. Stop ends a sweep at its next step; every batch that finished is kept
in a checkpoint under the cache folder, so the same sweep run again resumes where it stopped.

Imports: gradio, torch, ``core``, ``evaluate`` (the sweep, the judge's status), ``plots``,
``steering.ops``, ``vectors``, ``ui.shared`` (context, catalog, markup, sweeping) and this
tab's components and views; never the layout (:mod:`.tab`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr
import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    APP_SWEEP_MAX_ANSWERS,
    APP_SWEEP_MAX_LAYERS,
    APP_SWEEP_MAX_PROMPTS,
    APP_SWEEP_MAX_STRENGTHS,
    APP_SWEEP_MAX_TOKENS,
    check_finite,
    check_layer,
    check_lines,
    check_strength,
)
from persona_explorer.evaluate.sweep import run_sweep
from persona_explorer.evaluate.sweep_config import (
    SELECT_PROMPTS,
    Criteria,
    SweepConfig,
    default_grid,
    parse_numbers,
    read_prompts,
)
from persona_explorer.evaluate.sweep_result import with_recommendation
from persona_explorer.plots.common import empty_figure
from persona_explorer.plots.sweep import (
    coherence_heatmap_figure,
    grid_caption,
    strength_label,
    trait_heatmap_figure,
)
from persona_explorer.steering.ops import check_positions
from persona_explorer.ui.shared.catalog import CatalogView, VectorItem, add_to_session
from persona_explorer.ui.shared.context import (
    DEFAULT_STRENGTH,
    AppContext,
    check_owner,
    user_errors,
)
from persona_explorer.ui.shared.markup import md
from persona_explorer.ui.shared.sweeping import optional_judge
from persona_explorer.ui.sweep.components import SweepTab
from persona_explorer.ui.sweep.views import (
    COLUMNS_FIRST,
    GRID_FIRST,
    SweepRun,
    cell_markdown,
    columns_frame,
    grid_frame,
    grid_of,
    status_text,
    table,
)
from persona_explorer.vectors.persona_vector import PersonaVector

DEFAULT_TOKENS = 40
DEFAULT_PROMPTS = 6  # of the shipped selection prompts: a first sweep in a minute or two
# Everyday prompts, for an install whose shipped prompts file is missing or damaged: a sweep
# needs prompts unlike the ones a vector was extracted from.
FALLBACK_PROMPTS = (
    "How do I make a good cup of tea?",
    "What should I pack for a day at the beach?",
    "Can you explain how a bicycle stays upright?",
    "Give me a tip for keeping houseplants alive.",
)
POSITIONS = [("Every token (all)", "all"), ("Only new answer tokens (response)", "response")]

READY = (
    "Pick a persona vector, then press **Sweep**. Every cell of the grid answers every prompt: "
    "the defaults (6 prompts, 4 layers, 4 strengths and the baseline) take one to two minutes "
    "on a small CPU."
)
STARTING = "Sweeping…"
FAILED = "The sweep did not finish (the message says why). Press **Sweep** to try again."
STOPPING = (
    "Stopping… the answers finished so far are kept: press **Sweep** again with the same "
    "settings to resume from there."
)
NO_RUN = "Run a sweep first."
PICK_CELL = "Click a cell of the grid to read its answers beside the baseline's."


# --------------------------------------------------------------------------- defaults


def default_prompts() -> tuple[str, ...]:
    """The first :data:`DEFAULT_PROMPTS` shipped selection prompts (or everyday ones)."""
    try:
        return read_prompts(SELECT_PROMPTS)[:DEFAULT_PROMPTS]
    except (InputError, OSError):  # a damaged install must not keep the app from starting
        return FALLBACK_PROMPTS


def default_grid_text(ctx: AppContext, vec: PersonaVector | None) -> tuple[str, str]:
    """The layers and strengths fields for ``vec``: around what it records
    (:func:`persona_explorer.evaluate.sweep_config.default_grid`); empty without a vector that
    fits."""
    if vec is None:
        return "", ""
    layers, strengths = default_grid(vec, ctx.model.n_layers, fallback_strength=DEFAULT_STRENGTH)
    return ", ".join(map(str, layers)), ", ".join(f"{s:g}" for s in strengths)


def load_fitting(view: CatalogView, item: VectorItem | None) -> PersonaVector | None:
    """``item``'s vector when it can steer the loaded model (its defaults are then usable)."""
    if item is None or item.info is None or view.fit_problem(item.key):
        return None
    try:
        return view.load(item)
    except InputError:
        return None


def judge_line() -> str:
    """ "Judge: on/off" where the optional judge module is there; nothing where it is not."""
    try:
        from persona_explorer.evaluate.judge import JudgeConfig, judge_status
    except ImportError:
        return ""
    try:
        return md(judge_status(JudgeConfig.from_env()), 400)
    except InputError as exc:  # a misconfigured judge: say what is wrong, keep the tab
        return f"Judge off: {md(exc, 400)}"


def vector_info(ctx: AppContext, view: CatalogView, item: VectorItem | None) -> str:
    """What the chosen vector records now (and an earlier sweep's result), plus the judge."""
    judge = judge_line()
    tail = f"  \n{judge}" if judge else ""
    if item is None or item.info is None:
        return "No persona vector chosen." + tail
    info = item.info
    problem = view.fit_problem(item.key)
    if problem:
        return f"⚠️ **{md(info.name)}** cannot steer this model. {md(problem, 400)}" + tail
    text = (
        f"**{md(info.name)}** · {item.where} · records layer {ctx.default_layer(info)}, "
        f"strength {ctx.default_strength(info):g}"
    )
    swept = info.metadata.get("sweep")
    if isinstance(swept, dict) and "n_prompts" in swept:
        text += f" (from a sweep over {md(swept['n_prompts'])} prompts)"
    return text + tail


def pick_vector(ctx: AppContext, tab: SweepTab, key: object, session: Mapping | None) -> dict:
    """A newly picked vector's default grid and info line."""
    view = ctx.catalog.view(session)
    try:
        item = view.resolve(key)
    except InputError as exc:
        return {tab.info: f"⚠️ {md(exc, 400)}"}
    layers, strengths = default_grid_text(ctx, load_fitting(view, item))
    return {tab.layers: layers, tab.strengths: strengths, tab.info: vector_info(ctx, view, item)}


def refresh_vectors(ctx: AppContext, session: Mapping | None, current: object) -> Any:
    """The vector list again (after an extraction, an upload or a library change), keeping the
    chosen vector while it exists; otherwise the app's default persona."""
    view = ctx.catalog.view(session)
    choices = view.fitting_choices()
    keys = {k for _, k in choices}
    value = current if isinstance(current, str) and current in keys else None
    if value is None:
        value = view.default_key(ctx.settings.default_persona)
    return gr.update(choices=choices, value=value if value in keys else None)


# --------------------------------------------------------------------------- the form


@dataclass(frozen=True)
class SweepForm:
    """The Sweep tab's inputs, as widgets send them (and as the ``/sweep`` API takes them)."""

    persona: str
    prompts: str
    layers: str
    strengths: str
    max_new_tokens: float = DEFAULT_TOKENS
    positions: str = "all"
    margin: float = Criteria.margin
    min_coherence: float = Criteria.min_coherence
    max_repetition_rise: float = Criteria.max_repetition_rise

    def config(self, ctx: AppContext) -> tuple[tuple[str, ...], SweepConfig]:
        """Every value checked, cheapest first; the prompts and the engine's config."""
        limits = ctx.settings.limits
        n = ctx.model.n_layers
        tokens = check_finite(self.max_new_tokens, "Max new tokens")
        top = min(APP_SWEEP_MAX_TOKENS, limits.max_new_tokens)
        if tokens != int(tokens) or not 1 <= tokens <= top:
            raise InputError(f"Max new tokens must be a whole number from 1 to {top} in a sweep.")
        positions = check_positions(self.positions)
        if positions not in ("all", "response"):
            raise InputError("Steer at must be all or response.")
        layers = parse_numbers(str(self.layers)[:400], "Layers", integer=True)
        if len(layers) > APP_SWEEP_MAX_LAYERS:
            raise InputError(
                f"{len(layers)} layers: a sweep here takes at most {APP_SWEEP_MAX_LAYERS}."
            )
        checked_layers = tuple(check_layer(x, n) for x in layers)
        strengths = parse_numbers(str(self.strengths)[:400], "Strengths")
        if len(strengths) > APP_SWEEP_MAX_STRENGTHS:
            raise InputError(
                f"{len(strengths)} strengths: a sweep here takes at most {APP_SWEEP_MAX_STRENGTHS}."
            )
        for s in strengths:
            check_strength(s, limits)
        criteria = Criteria(
            margin=check_finite(self.margin, "Margin"),
            min_coherence=check_finite(self.min_coherence, "Min coherence"),
            max_repetition_rise=check_finite(self.max_repetition_rise, "Max repetition rise"),
        )
        prompts = check_lines(
            self.prompts, "prompt", APP_SWEEP_MAX_PROMPTS, limits.max_prompt_chars, holder="a sweep"
        )
        cfg = SweepConfig(
            layers=checked_layers,
            strengths=tuple(sorted(strengths)),
            max_new_tokens=int(tokens),
            positions=positions,
            max_prompt_tokens=limits.max_prompt_tokens,
            criteria=criteria,
        )
        return prompts, cfg


# --------------------------------------------------------------------------- running


def _kept(value: object) -> SweepRun | None:
    # The state only ever holds what the handlers put there; anything else is no run.
    return value if isinstance(value, SweepRun) else None


def clear_tables(tab: SweepTab) -> dict:
    """The previous sweep's tables go at once, not when the queue reaches the new one."""
    return {
        tab.grid: None,
        tab.cell: PICK_CELL,
        tab.column_layer: gr.update(choices=[], value=None),
        tab.columns: None,
    }


def reset_results(tab: SweepTab) -> dict:
    return {
        tab.summary: None,
        tab.status: STARTING,
        tab.trait_plot: empty_figure("The trait heat map appears here"),
        tab.coherence_plot: empty_figure("The coherence heat map appears here"),
        tab.run_state: None,
        tab.use: gr.update(interactive=False),
        tab.use_note: "",
    }


def _first_layer(run: SweepRun) -> int:
    """The side-by-side table's layer: the recommended one, else the first."""
    rec = run.result.recommended
    return rec.layer if rec is not None else min(run.result.config.layers)


def results(tab: SweepTab, run: SweepRun) -> dict:
    """The sweep's outputs (and the API's); the tables follow (:func:`show_tables`)."""
    result = run.result
    grid = grid_of(result)
    crit = result.config.criteria
    return {
        tab.summary: result.as_json(),
        tab.status: status_text(run) + f"  \n{grid_caption(grid)}",
        tab.trait_plot: trait_heatmap_figure(grid, crit.margin, result.vector),
        tab.coherence_plot: coherence_heatmap_figure(
            grid, crit.min_coherence, crit.max_repetition_rise
        ),
        tab.run_state: run,
        tab.use: gr.update(interactive=result.recommended is not None),
        tab.use_note: "",
    }


def show_tables(tab: SweepTab, kept: object) -> dict:
    """The kept sweep's grid (the click target) and its side-by-side answers."""
    with user_errors():
        run = _kept(kept)
        if run is None:
            return clear_tables(tab)
        layer = _first_layer(run)
        layers = sorted(run.result.config.layers)
        return {
            tab.grid: table(grid_frame(run), GRID_FIRST),
            tab.cell: PICK_CELL,
            tab.column_layer: gr.update(choices=[(f"layer {x}", x) for x in layers], value=layer),
            tab.columns: table(columns_frame(run, layer), COLUMNS_FIRST),
        }


def _progress(progress: Any, start: float = 0.0, span: float = 1.0) -> Callable:
    def report(done: int, total: int, message: str) -> None:
        if progress is not None:
            progress(start + span * done / max(total, 1), desc=message)

    return report


def run_sweep_form(
    ctx: AppContext,
    tab: SweepTab,
    form: SweepForm,
    session: Mapping | None,
    *,
    request: gr.Request | None,
    progress: Any,
) -> Iterator[dict]:
    """Sweep the form's vector over its grid (resuming a stopped run of the same sweep)."""
    with user_errors():
        prompts, cfg = form.config(ctx)
        item, vec = ctx.catalog.view(session).resolve_fitting(form.persona)
        yield reset_results(tab)
        with ctx.job(request) as job, optional_judge() as judge:
            result = run_sweep(
                ctx.model,
                vec,
                prompts,
                cfg,
                checkpoint_dir=ctx.settings.cache_dir / "sweeps",
                progress=_progress(progress),
                should_stop=job,
                max_rows=APP_SWEEP_MAX_ANSWERS,
                judge=judge,
                persona_data_dir=ctx.settings.persona_data_dir,
            )
            run = SweepRun(item.key, vec, result, timed_out=result.stopped and job.timed_out())
        yield results(tab, run)


def show_cell(tab: SweepTab, kept: object, evt: gr.SelectData) -> dict:
    """The clicked cell's answers; its layer also becomes the side-by-side one."""
    with user_errors():
        run = _kept(kept)
        if run is None:
            return {tab.cell: NO_RUN}
        index = evt.index if isinstance(evt.index, (list, tuple)) else (evt.index, 0)
        row, col = (int(x) for x in index[:2])
        layers = sorted(run.result.config.layers)
        strengths = sorted(run.result.config.strengths)
        if not 0 <= row < len(layers):
            return {}
        layer = layers[row]
        out: dict = {
            tab.column_layer: layer,
            tab.columns: table(columns_frame(run, layer), COLUMNS_FIRST),
        }
        if 1 <= col <= len(strengths):  # column 0 names the layer
            out[tab.cell] = cell_markdown(run, layer, strengths[col - 1])
        return out


def show_columns(ctx: AppContext, tab: SweepTab, kept: object, layer: object) -> dict:
    """The answers at another layer, side by side."""
    with user_errors():
        run = _kept(kept)
        if run is None:
            return {tab.columns: None}
        at = check_layer(layer, ctx.model.n_layers)
        if at not in run.result.config.layers:
            raise InputError(f"Layer {at} was not part of this sweep.")
        return {tab.columns: table(columns_frame(run, at), COLUMNS_FIRST)}


def stop_sweep(ctx: AppContext, request: gr.Request | None) -> str:
    if request is not None:
        ctx.jobs.stop(request.session_hash)
    return STOPPING


# --------------------------------------------------------------------------- using the result


def _session_copy(
    ctx: AppContext, session: Mapping | None, vec: PersonaVector, source: str
) -> tuple[dict, str]:
    """``vec`` in this session as the copy of ``source`` (an earlier copy is replaced)."""
    copy = vec.with_(metadata={**vec.metadata, "copied_from": source})
    kept = {k: v for k, v in (session or {}).items() if v.metadata.get("copied_from") != source}
    return add_to_session(kept, copy, ctx.settings.limits.max_session_vectors)


def use_settings(
    ctx: AppContext, tab: SweepTab, kept: object, session: Mapping | None, *, owner: object
) -> dict:
    """Record the kept sweep's recommendation in its vector (see the module doc)."""
    with user_errors():
        run = _kept(kept)
        if run is None:
            raise InputError(NO_RUN)
        result = run.result
        rec = result.recommended
        if rec is None:
            raise InputError(
                "This sweep found no cell to recommend, so there is nothing to record: try "
                "other strengths or a looser tolerance."
            )
        view = ctx.catalog.view(session)
        item = view.by_key.get(run.key)
        if item is None:
            raise InputError("The swept vector is gone (deleted or renamed): sweep it again.")
        current = view.load(item)
        if current.vectors.shape != run.vector.vectors.shape or not torch.equal(
            current.vectors, run.vector.vectors
        ):
            raise InputError("The vector changed since this sweep: sweep it again.")
        tuned = with_recommendation(current, result)
        new_session = dict(session or {})
        where = ""
        if item.where == "session":
            new_session[item.key] = tuned
            key, where = item.key, "this session's copy"
        elif item.where == "library" and _may_modify(ctx, item, owner):
            token = check_owner(owner)
            entry = ctx.save_to_library(tuned, token)
            ctx.library.delete(item.id, owner=token)
            key, where = f"library:{entry.id}", "the library"
        else:
            new_session, key = _session_copy(ctx, session, tuned, item.key)
            why = "built-in vectors are read-only" if item.where == "built-in" else (
                "only the browser that saved it to the library may change it"
            )  # fmt: skip
            where = f"a copy in this session ({why})"
        new_view = ctx.catalog.view(new_session)
        note = (
            f"Recorded layer **{rec.layer}**, strength **{strength_label(rec.strength)}** in "
            f"**{md(tuned.name)}**, {where}. The Steer tab now starts there."
        )
        return {
            tab.state: new_session,
            tab.persona: gr.update(choices=new_view.fitting_choices(), value=key),
            tab.used_key: key,
            tab.use_note: note,
            tab.run_state: SweepRun(key, tuned, result, run.timed_out),
            tab.info: vector_info(ctx, new_view, new_view.by_key.get(key)),
        }


def _may_modify(ctx: AppContext, item: VectorItem, owner: object) -> bool:
    if ctx.library.read_only:
        return False
    try:
        token = check_owner(owner)
        return ctx.library.can_modify(ctx.library.entry(item.id), token)
    except InputError:
        return False
