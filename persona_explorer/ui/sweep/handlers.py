"""The Sweep tab's actions: the form, the handlers and how their results are worded.

:class:`SweepForm` is the tab's inputs (and the public ``/sweep`` API's parameters, in order).
:func:`run_sweep_form` runs :func:`..sweep.run_sweep` for one persona vector over a layer x
strength grid and shows the two heat maps (trait rise, coherence), the grid as a table whose
cells can be clicked (:func:`show_cell`: that cell's answers beside the baseline's), the
answers of one layer at every strength side by side (:func:`show_columns`), the recommendation
and the result as JSON. The result is kept in the tab's ``gr.State`` as a :class:`SweepRun`.

:func:`use_settings` records the recommendation in the vector (``with_recommendation``), so the
Steer tab starts there: a vector of this session is updated in place, a library vector in the
library when this browser saved it, and a built-in (read-only) or someone else's library
vector as a copy in this session.

Sizes are bounded here for the web app (:data:`MAX_PROMPTS`, :data:`MAX_LAYERS`,
:data:`MAX_STRENGTHS`, :data:`MAX_TOKENS`, :data:`MAX_ANSWERS`), tighter than the command
line's. Stop ends a sweep at its next step; every batch that finished is kept in a checkpoint
under the cache folder, so the same sweep run again resumes where it stopped.

:func:`sweep_after_extraction` is the small sweep the Extract tab offers after an extraction.

Imports: the engine (``..sweep``), ``..plots.sweep``, ``..limits``, and this package's context,
catalog and markup.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    Limits,
    check_finite,
    check_layer,
    check_strength,
    check_text,
)
from persona_explorer.evaluate.sweep import (
    SELECT_PROMPTS,
    Cell,
    Criteria,
    SweepConfig,
    SweepResult,
    default_grid,
    parse_numbers,
    quick_sweep_setup,
    read_prompts,
    run_sweep,
    with_recommendation,
)
from persona_explorer.plots.common import empty_figure
from persona_explorer.plots.sweep import (
    SweepGrid,
    coherence_heatmap_figure,
    grid_caption,
    strength_label,
    sweep_grid,
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
from persona_explorer.vectors.persona_vector import PersonaVector

if TYPE_CHECKING:
    from persona_explorer.evaluate.judge import Judge
    from persona_explorer.ui.sweep.tab import SweepTab

log = logging.getLogger(__name__)

# Bounds for one sweep in the web app (the command line allows more).
MAX_PROMPTS = 12
MAX_LAYERS = 6
MAX_STRENGTHS = 8
MAX_TOKENS = 96
MAX_ANSWERS = 300  # prompts x (layers x non-zero strengths + 1): about 5 min on a small CPU
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
    """The layers and strengths fields for ``vec``: around what it records (the engine's
    :func:`..sweep.default_grid`); empty without a vector that fits."""
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


@contextlib.contextmanager
def optional_judge() -> Iterator[Judge | None]:
    """The judge the operator configured (by environment variables), or None: without one, or
    with a misconfigured one (the info line says why), a sweep runs on its two measures."""
    try:
        from persona_explorer.evaluate.judge import Judge, JudgeConfig
    except ImportError:
        yield None
        return
    try:
        cfg = JudgeConfig.from_env()
    except InputError as exc:
        log.warning("judge off: %s", exc)
        cfg = None
    if cfg is None:
        yield None
        return
    with Judge(cfg) as judge:
        yield judge


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


def _prompts(value: object, limits: Limits) -> tuple[str, ...]:
    # The whole field is bounded before it is split: a script may send megabytes.
    body = check_text(value, "prompt list", MAX_PROMPTS * limits.max_prompt_chars, required=False)
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    if not lines:
        raise InputError("Write at least one prompt (one per line).")
    if len(lines) > MAX_PROMPTS:
        raise InputError(f"{len(lines)} prompts: a sweep here takes at most {MAX_PROMPTS}.")
    for i, line in enumerate(lines, start=1):
        check_text(line, f"prompt {i}", limits.max_prompt_chars, required=True)
    return tuple(lines)


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
        if tokens != int(tokens) or not 1 <= tokens <= min(MAX_TOKENS, limits.max_new_tokens):
            raise InputError(
                f"Max new tokens must be a whole number from 1 to "
                f"{min(MAX_TOKENS, limits.max_new_tokens)} in a sweep."
            )
        positions = check_positions(self.positions)
        if positions not in ("all", "response"):
            raise InputError("Steer at must be all or response.")
        layers = parse_numbers(str(self.layers)[:400], "Layers", integer=True)
        if len(layers) > MAX_LAYERS:
            raise InputError(f"{len(layers)} layers: a sweep here takes at most {MAX_LAYERS}.")
        checked_layers = tuple(check_layer(x, n) for x in layers)
        strengths = parse_numbers(str(self.strengths)[:400], "Strengths")
        if len(strengths) > MAX_STRENGTHS:
            raise InputError(
                f"{len(strengths)} strengths: a sweep here takes at most {MAX_STRENGTHS}."
            )
        for s in strengths:
            check_strength(s, limits)
        criteria = Criteria(
            margin=check_finite(self.margin, "Margin"),
            min_coherence=check_finite(self.min_coherence, "Min coherence"),
            max_repetition_rise=check_finite(self.max_repetition_rise, "Max repetition rise"),
        )
        prompts = _prompts(self.prompts, limits)
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


@dataclass(frozen=True)
class SweepRun:
    """What the tab keeps of a sweep (in ``gr.State``): everything shown is made from it."""

    key: str  # the catalog key of the vector swept
    vector: PersonaVector  # as swept: "Use these settings" refuses a vector changed since
    result: SweepResult
    timed_out: bool = False


def _kept(value: object) -> SweepRun | None:
    # The state only ever holds what the handlers put there; anything else is no run.
    return value if isinstance(value, SweepRun) else None


def grid_of(result: SweepResult) -> SweepGrid:
    rec = result.recommended
    return sweep_grid(
        [(c.layer, c.strength, c.trait, c.coherence, c.repetition) for c in result.grid],
        recommended=None if rec is None else (rec.layer, rec.strength),
        baseline_repetition=result.baseline.repetition,
    )


def _is_recommended(result: SweepResult, cell: Cell) -> bool:
    rec = result.recommended
    return rec is not None and (rec.layer, rec.strength) == (cell.layer, cell.strength)


def _strength_header(strength: float, unit: float | None) -> str:
    if strength == 0:
        return "baseline (strength 0)"
    head = f"strength {strength_label(strength)}"
    if unit:
        head += f" ({strength / unit:.3g}×)"
    return head


def _cell_summary(cell: Cell, recommended: bool) -> str:
    if cell.trait is None and cell.coherence is None:
        return "not run"
    trait = "—" if cell.trait is None else f"{cell.trait:+.2f}"
    coh = "—" if cell.coherence is None else f"{cell.coherence:.2f}"
    star = "★ " if recommended else ""
    judge = "" if cell.judge is None else f" · judge {cell.judge:.0f}"
    return f"{star}trait {trait} · coherence {coh} · repeats {cell.repetition:.2f}{judge}"


def grid_frame(run: SweepRun) -> dict[str, Any]:
    """The grid as a table laid out like the heat maps (rows: layers; columns: strengths)."""
    result = run.result
    strengths = sorted(result.config.strengths)
    unit = run.vector.strength
    rows = []
    for layer in sorted(result.config.layers):
        row: list[str] = [f"layer {layer}"]
        for s in strengths:
            cell = result.cell(layer, s)
            row.append(_cell_summary(cell, _is_recommended(result, cell)))
        rows.append(row)
    return {"headers": ["Layer", *(_strength_header(s, unit) for s in strengths)], "data": rows}


def table(frame: dict[str, Any], first: float) -> Any:
    """A frame for a results table: its first column ``first`` percent wide, the rest sharing
    the remainder (unset, the grid sizes columns to unwrapped text and scrolls sideways)."""
    rest = len(frame["headers"]) - 1
    widths = [f"{first:g}%"] + [f"{(100 - first) / max(rest, 1):.2f}%"] * rest
    return gr.update(value=frame, column_widths=widths)


GRID_FIRST = 11.0  # percent: "layer 12"
COLUMNS_FIRST = 18.0  # percent: a prompt


def columns_frame(run: SweepRun, layer: int) -> dict[str, Any]:
    """One row per prompt, one column per strength: the answers steered at ``layer``."""
    result = run.result
    strengths = sorted(result.config.strengths)
    cells = [result.cell(layer, s) for s in strengths]
    rows = []
    for p, prompt in enumerate(result.prompts):
        row = [prompt]
        for cell in cells:
            row.append(cell.texts[p] if p < len(cell.texts) else "(not run)")
        rows.append(row)
    heads = [_strength_header(s, run.vector.strength) for s in strengths]
    return {"headers": ["Prompt", *heads], "data": rows}


def cell_markdown(run: SweepRun, layer: int, strength: float) -> str:
    """A cell's numbers and its answers, each beside the baseline's (all text escaped)."""
    result = run.result
    cell = result.cell(layer, strength)
    head = f"#### Layer {layer}, strength {strength_label(strength)}"
    if strength == 0:
        head += " (the baseline: nothing added)"
    if _is_recommended(result, cell):
        head += " ★ recommended"
    lines = [head, _cell_summary(cell, False)]
    if not cell.texts:
        return "\n\n".join([*lines, "This cell was not run: the sweep stopped first."])
    base = result.baseline.texts
    for p, prompt in enumerate(result.prompts):
        answer = cell.texts[p] if p < len(cell.texts) else ""
        lines.append(f"**Prompt {p + 1}:** {md(prompt, 600)}")
        if strength != 0:
            lines.append(f"> *Baseline:* {md(base[p] if p < len(base) else '', 1500)}")
        lines.append(f"> *Steered:* {md(answer, 1500)}")
    return "\n\n".join(lines)


def status_text(run: SweepRun) -> str:
    result = run.result
    name = md(result.vector)
    done = (
        f"Swept **{name}**: {len(result.prompts)} prompts × {len(result.grid)} cells, trait "
        f"read at layer {result.read_layer}, in {result.seconds:.0f} s"
    )
    resumed = result.rows_total - result.rows_generated
    if resumed and not result.stopped:
        done += f" ({resumed} of {result.rows_total} answers came from an earlier run)"
    done += ". "
    if result.stopped:
        why = "ran past the time limit for one job" if run.timed_out else "was stopped"
        done += (
            f"The sweep {why} after {result.rows_total - _missing(result)} of "
            f"{result.rows_total} answers; press **Sweep** again with the same settings to "
            "resume from there. "
        )
    rec = result.recommended
    if rec is None:
        return done + f"**No recommendation.** {md(result.reason, 800)}"
    return (
        done
        + f"**Recommended: layer {rec.layer}, strength {strength_label(rec.strength)}** (★). "
        + md(result.reason, 800)
        + " Press **Use these settings** to make them the vector's defaults in Steer."
    )


def _missing(result: SweepResult) -> int:
    n = len(result.prompts)
    missing = sum(n for c in result.grid if c.strength != 0 and not c.texts)
    return missing + (0 if result.baseline.texts else n)


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
                max_rows=MAX_ANSWERS,
                judge=judge,
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
    ctx: AppContext, tab: SweepTab, kept: object, session: Mapping | None, owner: object
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


# --------------------------------------------------------------------------- after extraction


def sweep_after_extraction(
    ctx: AppContext,
    vec: PersonaVector,
    should_stop: Callable[[], bool],
    progress: Callable[[int, int, str], None] | None,
) -> tuple[PersonaVector, str]:
    """``vec`` with a quick sweep's recommendation recorded, and a Markdown line saying what
    the sweep found (the vector unchanged when it found nothing or was stopped)."""
    prompts, cfg = quick_sweep_setup(vec, ctx.model.n_layers, ctx.settings.limits.max_prompt_tokens)
    with optional_judge() as judge:
        result = run_sweep(
            ctx.model,
            vec,
            prompts,
            cfg,
            checkpoint_dir=ctx.settings.cache_dir / "sweeps",
            progress=progress,
            should_stop=should_stop,
            max_rows=MAX_ANSWERS,
            judge=judge,
        )
    grid = (
        f"{len(prompts)} prompts, layers {', '.join(map(str, cfg.layers))}, strengths "
        f"{', '.join(strength_label(s) for s in cfg.strengths if s)}"
    )
    if result.stopped:
        return vec, (
            f"The sweep ({grid}) stopped before it finished: the vector keeps the extraction's "
            "layer and strength. Sweep it in the **Sweep** tab."
        )
    rec = result.recommended
    if rec is None:
        return vec, (
            f"**Sweep** ({grid}): no recommendation, so the extraction's layer and strength "
            f"stay. {md(result.reason, 600)}"
        )
    return with_recommendation(vec, result), (
        f"**Sweep** ({grid}): recommended **layer {rec.layer}, strength "
        f"{strength_label(rec.strength)}** (trait rise {rec.trait or 0:+.2f}, coherence "
        f"{rec.coherence or 0:.2f}); recorded in the vector, so Try it in Steer starts there."
    )
