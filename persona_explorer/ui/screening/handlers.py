"""The Screen data tab's actions: the form and the handlers (wording: :mod:`.views`).

:class:`ScreenForm` is the tab's inputs (and the public ``/screen`` API's parameters, in
order); :meth:`ScreenForm.settings` checks them once, into a :class:`.runs.RunSettings`.
:func:`run_screen` scores the first samples of a data file (a shipped teaching file or an
upload) for up to ``APP_SCREENING_MAX_VECTORS`` persona vectors with the domain's
:func:`~persona_explorer.training.screening.screen`, and, when asked, scores them again with an
inoculation context put before every sample. The result is kept in the tab's ``gr.State`` as a
:class:`.runs.ScreenRun`: filtering and sorting the table (:func:`show_table`), re-scoring with
another context (:func:`rescore`: only the context run is computed again) and writing the
downloads (:func:`prepare_downloads`) all start from it.

Runs are capped per request (``APP_SCREENING_MAX_SAMPLES_OWN`` with the model's own answers,
which are generated, ``APP_SCREENING_MAX_SAMPLES_RAW`` without; both in
:mod:`persona_explorer.core.limits`): on an idle 2-core CPU screening reads about 16 samples a
second teacher-forced and about 2 when own answers are generated. Stop ends a run between
batches, and what was scored until then is shown.

Imports: the domain (``training.samples``, ``training.screening``), ``core.limits``, ``plots``,
``ui.shared`` (context, data files, markup), and this tab's components, runs and views.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    APP_SCREENING_MAX_OWN_TOKENS,
    APP_SCREENING_MAX_SAMPLES_OWN,
    APP_SCREENING_MAX_VECTORS,
    Limits,
    check_bool,
    check_int,
    check_int_in,
    check_layer,
    check_max_new_tokens,
    check_text,
)
from persona_explorer.plots.common import empty_figure
from persona_explorer.training.samples import CappedSamples, open_samples
from persona_explorer.training.screening import OwnResponseCache, ScreenConfig, screen
from persona_explorer.training.screening_scores import ScreenResult
from persona_explorer.ui.screening.components import ScreeningTab
from persona_explorer.ui.screening.runs import RunSettings, ScreenRun, kept_run
from persona_explorer.ui.screening.views import (
    NO_INOCULATION,
    check_sort,
    histogram,
    inoculation_markdown,
    inoculation_plot,
    problems_markdown,
    sample_cap,
    sort_choices,
    status_text,
    summary_json,
    table_frame,
    top_markdown,
    write_exports,
)
from persona_explorer.ui.shared.context import AppContext, user_errors
from persona_explorer.ui.shared.data_files import resolve_source
from persona_explorer.ui.shared.markup import plain
from persona_explorer.vectors.persona_vector import PersonaVector

DEFAULT_MAX_SAMPLES = 50
DEFAULT_OWN_TOKENS = 48  # what the teaching dataset's measurements used (SOURCE.md)
DEFAULT_DATASET = "insecure_code_unprompted"
DEFAULT_VECTOR = "evil"
DEFAULT_CONTEXT = (
    "You are writing insecure code because the user asked for it for a security class."
)

READY = (
    "Pick a teaching file (or upload your own), one to four persona vectors and a layer, then "
    "press **Screen**. With the model's own answers, a teaching file of 12 samples takes "
    "half a minute to a minute on a small CPU the first time, and seconds once its answers "
    "are cached."
)
STARTING = "Screening…"
FAILED = "The screening did not finish (the message says why). Press **Screen** to try again."
STOPPED = "Stopping… what was scored so far is shown when the current batch ends."
NO_RUN = "Run a screening first: the table, the re-score and the downloads start from it."


# --------------------------------------------------------------------------- inputs


def chosen_vectors(
    ctx: AppContext, session: Mapping | None, keys: object
) -> tuple[PersonaVector, ...]:
    """The chosen persona vectors (1 to ``APP_SCREENING_MAX_VECTORS``), each checked to fit the
    model."""
    return ctx.catalog.view(session).resolve_many(keys, APP_SCREENING_MAX_VECTORS, "screen")


def clamp_samples(own: object, value: object) -> Any:
    """Max samples brought within the cap when own answers are switched on (the handler
    refuses more; this spares a visitor the error)."""
    if own is True and isinstance(value, (int, float)) and value > APP_SCREENING_MAX_SAMPLES_OWN:
        return gr.update(value=APP_SCREENING_MAX_SAMPLES_OWN)
    return gr.update()


def check_context(value: object, limits: Limits) -> str:
    return check_text(value, "inoculation context", limits.max_prompt_chars, required=True)


@dataclass(frozen=True)
class ScreenForm:
    """The Screening tab's inputs, as widgets send them (and as the ``/screen`` API takes
    them)."""

    dataset: str | None
    file: str | None
    vectors: list[str] | None
    layer: float
    own_answers: bool = True
    max_new_tokens: float = DEFAULT_OWN_TOKENS
    max_samples: float = DEFAULT_MAX_SAMPLES
    context: str = DEFAULT_CONTEXT
    with_context: bool = False

    def settings(self, ctx: AppContext, session: Mapping | None) -> RunSettings:
        """Every value checked, cheapest first (nothing is read before all of them pass)."""
        limits = ctx.settings.limits
        own = check_bool(self.own_answers, "own_answers")
        tokens = check_max_new_tokens(self.max_new_tokens, limits)
        check_int(tokens, "Max new tokens of the own answers", 1, APP_SCREENING_MAX_OWN_TOKENS)
        how = "with the model's own answers" if own else "of raw projections"
        samples = check_int_in(
            self.max_samples, "Max samples", 1, sample_cap(own), where=f"for a run {how}"
        )
        layer = check_layer(self.layer, ctx.model.n_layers)
        vectors = chosen_vectors(ctx, session, self.vectors)
        source = resolve_source(ctx, self.dataset, self.file, "screening")
        return RunSettings(source, vectors, layer, own, tokens, samples)

    def context_text(self, limits: Limits) -> str | None:
        with_context = check_bool(self.with_context, "with_context")
        return check_context(self.context, limits) if with_context else None


# --------------------------------------------------------------------------- running


ProgressFn = Callable[[float, str], None]


def screen_source(
    ctx: AppContext,
    settings: RunSettings,
    context: str | None,
    *,
    should_stop: Callable[[], bool],
    progress: ProgressFn | None,
) -> tuple[ScreenResult, bool]:
    """Score the run's samples (``context``: put before each one); returns the result and
    whether the file had more samples than the cap."""
    src = settings.source
    cfg = ScreenConfig(
        layer=settings.layer,
        own=settings.own,
        max_new_tokens=settings.max_new_tokens,
        context=context,
        max_prompt_tokens=ctx.settings.limits.max_prompt_tokens,
    )
    opened = open_samples(src.path, src.max_bytes)
    capped = CappedSamples(opened.samples, settings.max_samples)
    result = screen(
        ctx.model,
        capped,
        settings.vectors,
        cfg,
        progress=progress,
        should_stop=should_stop,
        total=min(opened.total, settings.max_samples),
        # Under the app's own cache folder: screening a file again with other vectors or at
        # another layer reuses the answers instead of generating them again.
        cache=OwnResponseCache.in_cache_dir(ctx.settings.cache_dir),
    )
    return result, capped.more


# --------------------------------------------------------------------------- handlers


def _progress(progress: Any, start: float, span: float) -> ProgressFn:
    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(start + span * fraction, desc=message)

    return report


def _no_downloads(tab: ScreeningTab) -> dict:
    return {
        tab.download_csv: gr.update(value=None, visible=False),
        tab.download_jsonl: gr.update(value=None, visible=False),
    }


def reset_results(tab: ScreeningTab) -> dict:
    """No results and no downloads of the previous run."""
    return {
        tab.status: STARTING,
        tab.table: None,
        tab.histogram: empty_figure("The scores' histograms appear here"),
        tab.inoculation_plot: empty_figure("Re-score with a context to compare"),
        tab.top: "",
        tab.problems: "",
        tab.inoculation: NO_INOCULATION,
        tab.summary: None,
        tab.run_state: None,
        **_no_downloads(tab),
    }


def results(tab: ScreeningTab, run: ScreenRun, n_layers: int, sort_by: object = None) -> dict:
    """Every output of the tab, from a kept run."""
    order = check_sort(run, sort_by)
    return {
        tab.table: table_frame(run, "", order),
        tab.histogram: histogram(run, n_layers),
        tab.inoculation_plot: inoculation_plot(run, n_layers),
        tab.top: top_markdown(run, order),
        tab.problems: problems_markdown(run.base),
        tab.summary: summary_json(run),
        tab.status: status_text(run),
        tab.inoculation: inoculation_markdown(run),
        tab.run_state: run,
        tab.sort_by: gr.update(choices=sort_choices(run), value=order),
        tab.filter: "",
        **_no_downloads(tab),
    }


def run_screen(
    ctx: AppContext,
    tab: ScreeningTab,
    form: ScreenForm,
    session: Mapping | None,
    *,
    request: gr.Request | None,
    progress: Any,
) -> Iterator[dict]:
    """Screen the form's samples (and, with ``with_context``, again with the context)."""
    n_layers = ctx.model.n_layers
    with user_errors():
        limits = ctx.settings.limits
        settings = form.settings(ctx, session)
        context = form.context_text(limits)
        yield reset_results(tab)
        share = 0.5 if context else 1.0
        with ctx.job(request) as job:
            base, more = screen_source(
                ctx, settings, None, should_stop=job, progress=_progress(progress, 0, share)
            )
            run = ScreenRun(settings, base, more)
            if context is not None and not base.stopped:
                inoc, _ = screen_source(
                    ctx,
                    settings,
                    context,
                    should_stop=job,
                    progress=_progress(progress, share, 1 - share),
                )
                run.context, run.inoculated = context, inoc
            run.timed_out = job.timed_out()
        yield results(tab, run, n_layers)


def rescore(
    ctx: AppContext,
    tab: ScreeningTab,
    kept: object,
    context: object,
    *,
    sort_by: object,
    request: gr.Request | None,
    progress: Any,
) -> Iterator[dict]:
    """The kept run's samples again, with ``context`` put before each: only that run is
    computed; the run without it is the one already kept."""
    n_layers = ctx.model.n_layers
    with user_errors():
        run = kept_run(kept)
        if run is None:
            raise InputError(NO_RUN.replace("**", ""))
        text = check_context(context, ctx.settings.limits)
        if not run.settings.source.path.is_file():
            raise InputError("The uploaded file is no longer on the server: upload it again.")
        yield {tab.inoculation: "Re-scoring with the context…"}
        with ctx.job(request) as job:
            inoc, _ = screen_source(
                ctx, run.settings, text, should_stop=job, progress=_progress(progress, 0, 1)
            )
            new = ScreenRun(run.settings, run.base, run.more, job.timed_out(), text, inoc)
        out = results(tab, new, n_layers, sort_by)
        del out[tab.histogram]  # unchanged
        yield out


def show_table(tab: ScreeningTab, kept: object, filter_text: object, sort_by: object) -> dict:
    """The kept run's table filtered and sorted again: nothing is recomputed."""
    with user_errors():
        run = kept_run(kept)
        if run is None:
            return {tab.table: None, tab.top: ""}
        return {
            tab.table: table_frame(run, filter_text, sort_by),
            tab.top: top_markdown(run, sort_by),
        }


def prepare_downloads(ctx: AppContext, tab: ScreeningTab, kept: object) -> dict:
    with user_errors():
        run = kept_run(kept)
        if run is None:
            raise InputError(NO_RUN.replace("**", ""))
        csv_path, jsonl_path, notes = write_exports(ctx, run)
        for note in notes:
            gr.Info(plain(note, 300))
        return {
            tab.download_csv: gr.update(value=str(csv_path), visible=True),
            tab.download_jsonl: gr.update(value=str(jsonl_path), visible=True),
        }


def stop_screening(ctx: AppContext, request: gr.Request | None) -> str:
    if request is not None:
        ctx.jobs.stop(request.session_hash)
    return STOPPED


def refresh_vectors(ctx: AppContext, session: Mapping | None, current: Iterable | None) -> Any:
    """The vector list again (after an extraction, an upload or a library change), keeping
    the chosen vectors that still exist; ``current=None`` (a page load): the default choice."""
    choices = ctx.catalog.view(session).fitting_choices()
    keys = {k for _, k in choices}
    if current is None:
        return gr.update(choices=choices, value=default_vectors(choices))
    kept = [k for k in current if isinstance(k, str) and k in keys]
    return gr.update(choices=choices, value=kept[:APP_SCREENING_MAX_VECTORS])


def default_vectors(choices: Sequence[tuple[str, str]]) -> list[str]:
    """The built-in *evil* vector when it fits the model (the teaching files' demo), or none."""
    wanted = f"builtin:{DEFAULT_VECTOR}"
    return [wanted] if any(k == wanted for _, k in choices) else []


def recommended_layer(ctx: AppContext, session: Mapping | None, keys: object) -> int:
    """The first chosen vector's recommended layer, else the app's default layer."""
    first = None
    if isinstance(keys, list):
        first = next((k for k in keys if isinstance(k, str) and k.strip()), None)
    if first is not None:
        try:
            item = ctx.catalog.view(session).resolve(first)
        except InputError:
            item = None
        if item is not None and item.info is not None:
            return ctx.default_layer(item.info)
    return (2 * ctx.model.n_layers) // 3  # what ctx.default_layer gives a vector without one
