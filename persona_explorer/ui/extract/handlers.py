"""The Extract tab's actions: the form and the handlers.

:class:`ExtractForm` is the tab's inputs (and the public ``/extract`` API's parameters, in
order). :func:`run_extract` builds a persona vector from contrastive rollouts and adds it to this
session's vectors; with ``sweep``, a small layer x strength sweep follows
(:func:`persona_explorer.ui.shared.sweeping.sweep_after_extraction`) and its recommendation is
recorded in the vector before it is listed; with ``remove_axis``, the vector's component along
the Assistant Axis is removed first (:mod:`..vectors.axis_component`), so the sweep, the session
and the library all get the copy without it. :func:`save_extracted` puts the vector in the
library in place of its session copy. The wording is :mod:`.views`.

A new extraction first withdraws the previous one's results and buttons, so a failed or stopped
run leaves none of them behind; errors are toasts.

Imports: gradio, ``core``, ``axis`` (the axis on disk), ``personas`` (definitions, built-ins,
extraction), ``vectors`` (the axis component), ``plots``, ``ui.shared`` (context, catalog,
markup, sweeping) and this tab's components and views; never the layout (:mod:`.tab`) and never
another tab.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import Limits, check_int, check_text
from persona_explorer.personas.data import load_builtin
from persona_explorer.personas.definitions import PersonaDefinition, custom_persona
from persona_explorer.personas.extract import (
    VARIANTS,
    ExtractionConfig,
    ExtractionResult,
    extract_persona,
)
from persona_explorer.plots import empty_figure, separation_figure
from persona_explorer.ui.extract.components import ExtractTab
from persona_explorer.ui.extract.views import axis_line, examples, preview, summary
from persona_explorer.ui.shared.catalog import add_to_session
from persona_explorer.ui.shared.context import AppContext, user_errors
from persona_explorer.ui.shared.markup import plain
from persona_explorer.ui.shared.sweeping import sweep_after_extraction
from persona_explorer.vectors.axis_component import (
    AxisComponent,
    component_at,
    remove_axis_component,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


def _lines(text: Any, what: str, limits: Limits) -> list[str]:
    body = check_text(text, what, limits.max_field_chars, required=False)
    return [line.strip() for line in body.splitlines() if line.strip()]


@dataclass(frozen=True)
class ExtractForm:
    """The Extract tab's inputs (and the ``/extract`` API's parameters)."""

    source: str
    trait_name: str
    role_name: str
    name: str
    pos_prompts: str
    neg_prompts: str
    question_lines: str
    n_questions: float = 4
    max_new_tokens: float = 32
    variant: str = "response"
    sweep: bool = False  # then find the layer and strength with a small sweep
    remove_axis: bool = False  # remove the vector's component along the Assistant Axis

    def persona(self, limits: Limits, data_dir: Path) -> PersonaDefinition:
        """The persona asked for: a shipped trait or role (from ``data_dir``, the
        ``persona_data_dir`` setting) or the custom one written in the form."""
        if self.source == "trait":
            if not self.trait_name:
                raise InputError("Pick a trait from the list.")
            return load_builtin(self.trait_name, "trait", data_dir=data_dir)
        if self.source == "role":
            if not self.role_name:
                raise InputError("Pick a role from the list.")
            return load_builtin(self.role_name, "role", data_dir=data_dir)
        if self.source != "custom":
            raise InputError(f"Unknown source {self.source!r}: use trait, role or custom.")
        qs = _lines(self.question_lines, "question list", limits)
        if not qs:
            raise InputError("Write at least one question (one per line) for the model to answer.")
        return custom_persona(
            self.name,
            _lines(self.pos_prompts, "positive prompts", limits),
            _lines(self.neg_prompts, "negative prompts", limits),
            qs,
        )

    def config(self, persona: PersonaDefinition, limits: Limits) -> ExtractionConfig:
        n_q = check_int(self.n_questions, "Questions", 1, limits.max_extract_questions)
        tokens = check_int(self.max_new_tokens, "Max new tokens", 1, extract_token_limit(limits))
        if self.variant not in VARIANTS:
            raise InputError(f"variant must be one of {', '.join(VARIANTS)}.")
        rows = 2 * len(persona.pairs) * len(persona.extraction_questions(n_q))
        if rows > limits.max_extract_rollouts:
            raise InputError(
                f"That is {rows} answers to generate; the limit is "
                f"{limits.max_extract_rollouts}. Use fewer questions or fewer prompt lines."
            )
        return ExtractionConfig(
            variant=self.variant,  # type: ignore[arg-type]
            n_questions=n_q,
            max_new_tokens=tokens,
            max_prompt_tokens=limits.max_prompt_tokens,
        )


def extract_token_limit(limits: Limits) -> int:
    return min(limits.max_extract_tokens, limits.max_new_tokens)


def choose_source(tab: ExtractTab, src: str) -> dict:
    return {
        tab.trait: gr.update(visible=src == "trait"),
        tab.role: gr.update(visible=src == "role"),
        tab.custom_box: gr.update(visible=src == "custom"),
        tab.about: gr.update(visible=src != "custom"),
    }


def show_builtin(ctx: AppContext, src: str, trait_name: str, role_name: str) -> str:
    if src not in ("trait", "role"):
        return ""
    with user_errors():
        chosen = trait_name if src == "trait" else role_name
        data_dir = ctx.settings.persona_data_dir
        return preview(load_builtin(chosen, src, data_dir=data_dir)) if chosen else ""


STOPPED = "Extraction stopped. Press **Extract** to start again."
FAILED = "The extraction did not finish (the message says why). Press **Extract** to try again."
STARTING = "Starting the extraction…"


def reset_results(tab: ExtractTab) -> dict:
    """No results, and no buttons acting on the previous extraction's vector."""
    return {
        tab.summary: STARTING,
        tab.plot: empty_figure("The separation per layer appears here"),
        tab.examples: None,
        tab.try_it: gr.update(visible=False),
        tab.save: gr.update(visible=False),
        tab.download: gr.update(value=None, visible=False),
    }


def _check_flag(value: object, name: str = "sweep") -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false.")
    return value


def without_axis(ctx: AppContext, result: ExtractionResult, progress: Any) -> ExtractionResult:
    """``result`` with its vector's Assistant-Axis component removed at every layer (the axis
    is built first where none exists yet: the visitor asked for it)."""
    axis = ctx.axis(lambda f, msg: progress(f, desc=f"Assistant Axis: {msg}"))
    vec = remove_axis_component(result.vector, axis.axis, axis_model_id=axis.model_id)
    return replace(result, vector=vec)


def axis_component_of(ctx: AppContext, result: ExtractionResult) -> AxisComponent | None:
    """The extracted vector's component along the axis at its recommended layer (None: no
    axis on disk, or a zero vector there)."""
    axis = ctx.axis_if_ready()
    vec = result.vector
    if axis is None or vec.layer is None:
        return None
    try:
        return component_at(vec, axis.axis, vec.layer)
    except InputError:  # a zero vector has no direction; the summary says so already
        return None


EXTRACTION_SHARE = 0.6  # of the progress bar, when a sweep follows


def run_extract(
    ctx: AppContext,
    tab: ExtractTab,
    form: ExtractForm,
    session: Mapping | None,
    *,
    request: gr.Request | None,
    progress: Any,
) -> Iterator[dict]:
    """Extract a persona vector and add it to this session's vectors (then, with ``sweep``,
    record a small sweep's recommendation in it).

    The first update withdraws the previous results, so a failure or a stop leaves none behind.
    """
    yield reset_results(tab)
    with user_errors():
        limits = ctx.settings.limits
        persona = form.persona(limits, ctx.settings.persona_data_dir)
        cfg = form.config(persona, limits)
        sweep = _check_flag(form.sweep)
        remove_axis = _check_flag(form.remove_axis, "remove_axis")
        share = EXTRACTION_SHARE if sweep else 1.0
        progress(0.0, desc="Starting")
        with ctx.job(request) as job:
            try:
                result = extract_persona(
                    ctx.model,
                    persona,
                    cfg,
                    progress=lambda f, msg: progress(share * f, desc=msg),
                    should_stop=job,
                )
            except InterruptedError:
                if job.timed_out():
                    raise InputError(
                        f"The extraction ran past the time limit for one job "
                        f"({limits.job_timeout_s} s): use fewer questions or fewer tokens."
                    ) from None
                gr.Info("Extraction stopped.")
                yield {tab.summary: STOPPED}
                return
            if remove_axis:
                # Before the sweep: its layer and strength must be chosen for the vector kept.
                result = without_axis(ctx, result, progress)
            out = extracted(ctx, tab, result, session)
            if not sweep:
                yield out
                return
            # Listed before the sweep starts: a Stop during the sweep keeps the vector.
            yield out | {tab.summary: summary(result) + "\n\nSweeping layers and strengths…"}
            vec, note = sweep_after_extraction(
                ctx,
                result.vector,
                job,
                lambda done, total, msg: progress(
                    share + (1 - share) * done / max(total, 1), desc=msg
                ),
            )
        yield extracted(ctx, tab, replace(result, vector=vec), session, note=note)


def extracted(
    ctx: AppContext,
    tab: ExtractTab,
    result: ExtractionResult,
    session: Mapping | None,
    *,
    note: str = "",
) -> dict:
    """The finished extraction in this session's vectors and on screen (``note``: a line
    after the summary)."""
    vec = result.vector
    new_session, key = add_to_session(session, vec, ctx.settings.limits.max_session_vectors)
    # One file per finished extraction, which is itself an explicit, heavy action.
    path, _ = ctx.exports.write(vec, "safetensors")
    along = axis_line(vec, axis_component_of(ctx, result))
    return {
        tab.state: new_session,
        tab.last: key,
        tab.summary: summary(result) + f"\n\n{along}" + (f"\n\n{note}" if note else ""),
        tab.plot: separation_figure(vec.separation, vec.layer, norms=vec.layer_norms),
        tab.examples: examples(result),
        tab.try_it: gr.update(visible=True),
        tab.save: gr.update(visible=not ctx.library.read_only),
        tab.download: gr.update(value=str(path), visible=True),
    }


def save_extracted(
    ctx: AppContext, tab: ExtractTab, key: str | None, session: Mapping | None, *, owner: object
) -> dict:
    """Save the extracted vector to the library in place of its session copy (listed twice,
    they would look like two vectors); "Try it in Steer" then uses the saved one."""
    with user_errors():
        view = ctx.catalog.view(session)
        item = view.resolve(key)
        entry = ctx.save_to_library(view.load(item), owner)
        gr.Info(f"Saved {plain(entry.name)} to the library.")
        return {
            tab.state: {k: v for k, v in (session or {}).items() if k != item.key},
            tab.last: f"library:{entry.id}",
            tab.save: gr.update(visible=False),
        }


def stop_extraction(ctx: AppContext, request: gr.Request) -> str:
    ctx.jobs.stop(request.session_hash)
    return STOPPED
