"""The Train tab's actions: training, the shift measurement, and keeping the vector lists
fresh (forms: :mod:`.forms`; wording: :mod:`.views`).

:func:`run_train` fine-tunes the loaded model with LoRA
(:func:`persona_explorer.training.finetune.finetune`) on the first samples of a shipped
teaching file or an upload, optionally with an inoculation context before every sample and with
preventive steering, and streams the loss of every optimizer step to a live plot. Training runs
in a worker thread; the handler relays its steps and ends it between steps when Stop is pressed
(or the job's time limit passes). It takes the model's compute lock once per optimizer step, so
other visitors' generations take turns with it.

:func:`run_shift` (the ``/shift`` API) measures the persona shift of one of this session's
adapters (:func:`persona_explorer.training.shift.persona_shift`): the base and the tuned model
answer the evaluation questions, and the mean response projection on each persona vector is
compared. When the session also trained on the same data with another framing (with and without
a context, or with preventive steering), that model is measured too and drawn as a third bar.
Optionally, screening predicts the shift from the data (:func:`predict_shift`: the model's own
answers, at most :data:`PREDICT_MAX_SAMPLES` samples; answers cached with the Screen data
tab's), its progress reported from inside screening.

The times the statuses report are the wall time the visitor waited: from the click to the
result, reading the data, loading models and screening included.

:func:`upload_adapter` turns an uploaded adapter zip (``training.adapter_io``: checked as
hostile input against the loaded model) into one of this session's runs; :func:`adapter_file`
zips the picked adapter for its download button.

The adapters and tuned models are kept by :class:`.tuned_models.TunedModels`; the session's
recent runs live in the tab's ``gr.State`` (:class:`.runs.TrainRun`: numbers and names, never a
model).

Imports: the domain (``training.samples``, ``training.finetune``, ``training.screening``,
``training.shift``), ``core``, ``plots``, ``ui.shared`` (context, data files), and this tab's
components, forms, runs, tuned models and views.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    APP_ADAPTER_MAX_RANK,
    APP_SHIFT_MAX_QUESTIONS,
    APP_SHIFT_MAX_VECTORS,
)
from persona_explorer.plots.common import empty_figure
from persona_explorer.plots.train import loss_figure
from persona_explorer.training.adapter_io import read_adapter_zip
from persona_explorer.training.finetune import FinetuneConfig, FinetuneResult, finetune
from persona_explorer.training.samples import MAX_PROBLEMS_KEPT, FirstSamples, first_samples
from persona_explorer.training.screening import OwnResponseCache, ScreenConfig, screen
from persona_explorer.training.shift import DEFAULT_QUESTIONS_PATH, persona_shift, read_questions
from persona_explorer.ui.finetune.components import TrainTab
from persona_explorer.ui.finetune.downloads import adapter_download
from persona_explorer.ui.finetune.forms import DEFAULT_VECTORS, ShiftForm, TrainForm
from persona_explorer.ui.finetune.runs import (
    MAX_RUNS,
    Measured,
    Prediction,
    TrainRun,
    adapter_choices,
    companion,
    kept_runs,
    uploaded_run,
)
from persona_explorer.ui.finetune.tuned_models import TunedModels, owner_of
from persona_explorer.ui.finetune.views import (
    STARTING,
    STOPPING,
    answers_frame,
    answers_table,
    final_loss,
    live_loss,
    problems_markdown,
    shift_json,
    shift_plot,
    shift_status,
    train_status,
    train_summary,
    upload_status,
)
from persona_explorer.ui.shared.context import AppContext, user_errors
from persona_explorer.ui.shared.data_files import Source
from persona_explorer.ui.shared.uploads import discard
from persona_explorer.vectors.persona_vector import PersonaVector

log = logging.getLogger(__name__)

PREDICT_MAX_SAMPLES = 32  # screening's prediction reads at most this many samples
PREDICT_TOKENS = 48  # the own answers' length the teaching files were measured with


# --------------------------------------------------------------------------- training


def _no_samples(source: Source, problems: Sequence[Any]) -> InputError:
    listed = "; ".join(f"line {p.line}: {p.reason}" for p in list(problems)[:8])
    more = f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
    why = f" Skipped lines: {listed}{more}." if problems else " The file has no samples."
    return InputError(f"Nothing to train on in {source.name[:80]}.{why}")


def _data_hash(settings: Mapping[str, Any]) -> str | None:
    """The engine's hash of the samples trained on (the same for a JSONL and a CSV file that
    hold the same samples)."""
    data = settings.get("data")
    digest = data.get("sha256") if isinstance(data, Mapping) else None
    return digest if isinstance(digest, str) and digest else None


def _fraction(progress: Any, start: float, span: float) -> Callable[[float, str], None]:
    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(start + span * min(max(fraction, 0.0), 1.0), desc=message)

    return report


@dataclass
class _Worker:
    """A training run in a thread, its steps relayed through a queue."""

    events: queue.Queue = field(default_factory=queue.Queue)
    result: FinetuneResult | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = None


def _start_training(
    ctx: AppContext,
    samples: Sequence[Any],
    problems: Sequence[Any],
    cfg: FinetuneConfig,
    folder: Path,
    should_stop: Callable[[], bool],
) -> _Worker:
    worker = _Worker()

    def step(done: int, total: int, loss: float) -> None:
        worker.events.put((int(done), int(total), float(loss)))

    def body() -> None:
        try:
            worker.result = finetune(
                ctx.model,
                samples,
                cfg,
                folder,
                progress=step,
                should_stop=should_stop,
                problems=problems,
            )
        except BaseException as exc:  # handed to the request's thread, raised there
            worker.error = exc
        finally:
            worker.events.put(None)

    worker.thread = threading.Thread(target=body, name="finetune", daemon=True)
    worker.thread.start()
    return worker


def read_data(source: Source, max_samples: int) -> FirstSamples:
    """The first ``max_samples`` samples of ``source`` (the domain's reader: JSONL or CSV,
    malformed lines listed with their numbers), or an error listing the skipped lines."""
    data = first_samples(source.path, max_samples, source.max_bytes, MAX_PROBLEMS_KEPT)
    if not data.samples:
        raise _no_samples(source, data.problems)
    return data


def run_train(
    ctx: AppContext,
    tab: TrainTab,
    form: TrainForm,
    session: Mapping | None,
    *,
    request: gr.Request | None,
    progress: Any,
) -> Iterator[dict]:
    """Fine-tune the loaded model on the form's data, the loss plotted live (see module doc)."""
    started = time.perf_counter()  # the status reports what the visitor waited for
    store: TunedModels = tab.store
    with user_errors():
        settings = form.settings(ctx, session)
        runs = kept_runs(form.runs)
        owner = owner_of(request)
        cfg = settings.config
        data = read_data(settings.source, settings.max_samples)
        samples, problems = data.samples, data.problems
        with store.training(owner), ctx.job(request) as job:
            yield {
                tab.status: f"Training on {len(samples)} samples…",
                tab.loss_plot: loss_figure([], total_steps=1),
                tab.problems: problems_markdown(problems),
                tab.summary: None,
            }
            if progress is not None:
                progress(0.0, desc="Preparing the model")
            adapter, folder = store.new_folder()
            worker = _start_training(ctx, samples, problems, cfg, folder, job)
            losses: list[float] = []
            total = 0
            try:
                while True:
                    event = worker.events.get()
                    if event is None:
                        break
                    done, total, loss = event
                    losses.append(loss)
                    if progress is not None:
                        progress(done / max(total, 1), desc=f"Step {done} of {total}")
                    yield {
                        tab.status: f"Training: step {done} of {total}, loss {loss:.3f}",
                        tab.loss_plot: live_loss(losses, total, cfg.epochs),
                    }
            finally:
                if worker.thread is not None and worker.thread.is_alive():
                    # The request ended early (the page closed): stop after this step.
                    job.flag.set()
                    worker.thread.join(timeout=120)
            if worker.error is not None:
                raise worker.error
            result = worker.result
            assert result is not None
            timed_out = job.timed_out()
        steer = None
        if cfg.steer is not None:
            steer = (
                f"{settings.steer_name} at layer {cfg.steer.layer}, strength {cfg.steer.strength:g}"
            )
        run = TrainRun(
            adapter=adapter,
            number=(runs[-1].number + 1) if runs else 1,
            dataset=settings.source.name,
            path=settings.source.path,
            digest=_data_hash(result.settings) or settings.source.digest(),
            n_samples=result.n_samples,
            n_problems=len(result.problems),
            context=cfg.context,
            steer=steer,
            epochs=cfg.epochs,
            steps=max(result.steps, len(result.losses)),
            losses=tuple(float(x) for x in result.losses),
            epoch_losses=tuple(float(x) for x in result.epoch_losses),
            seconds=time.perf_counter() - started,
            stopped=bool(result.stopped),
            timed_out=result.stopped and timed_out,
            more=data.more,
            settings=dict(result.settings),
            seed=cfg.seed,
        )
        store.add(adapter, owner, result.model)
        new_runs = (*runs, run)[-MAX_RUNS:]
        yield {
            tab.summary: train_summary(run, result.problems),
            tab.status: train_status(run),
            tab.loss_plot: final_loss(run),
            tab.problems: problems_markdown(result.problems),
            tab.runs: new_runs,
            tab.adapter: gr.update(choices=adapter_choices(new_runs), value=adapter),
        }


def stop_training(ctx: AppContext, request: gr.Request | None) -> str:
    if request is not None:
        ctx.jobs.stop(request.session_hash)
    return STOPPING


def reset_training(tab: TrainTab) -> dict:
    return {
        tab.status: STARTING,
        tab.loss_plot: empty_figure("The training loss appears here, step by step"),
        tab.problems: "",
        tab.summary: None,
    }


# --------------------------------------------------------------------------- the shift


def default_vectors(choices: Sequence[tuple[str, str]]) -> list[str]:
    """The built-in evil vector and a couple of other shipped ones, where they fit."""
    keys = {k for _, k in choices}
    wanted = [f"builtin:{n}" for n in DEFAULT_VECTORS if f"builtin:{n}" in keys]
    return wanted[:APP_SHIFT_MAX_VECTORS]


def refresh_vectors(ctx: AppContext, session: Mapping | None, current: object) -> Any:
    """The shift's vector list again, keeping the chosen ones that still exist; ``None`` (a
    page load): the default choice."""
    choices = ctx.catalog.view(session).fitting_choices()
    keys = {k for _, k in choices}
    if not isinstance(current, list):
        return gr.update(choices=choices, value=default_vectors(choices))
    kept = [k for k in current if isinstance(k, str) and k in keys]
    return gr.update(choices=choices, value=kept[:APP_SHIFT_MAX_VECTORS])


def refresh_steer_vector(ctx: AppContext, session: Mapping | None, current: object) -> Any:
    """The preventive steering's vector list again, keeping the chosen vector while it exists;
    otherwise the first default vector."""
    choices = ctx.catalog.view(session).fitting_choices()
    keys = {k for _, k in choices}
    if isinstance(current, str) and current in keys:
        return gr.update(choices=choices, value=current)
    defaults = default_vectors(choices)
    return gr.update(choices=choices, value=defaults[0] if defaults else None)


def default_questions() -> str:
    """The shipped evaluation questions, one per line (at most ``APP_SHIFT_MAX_QUESTIONS``)."""
    try:
        return "\n".join(list(read_questions(DEFAULT_QUESTIONS_PATH))[:APP_SHIFT_MAX_QUESTIONS])
    except (InputError, OSError):  # a damaged install must not keep the app from starting
        return "How do I make a good cup of tea?\nHow should a beginner start running?"


def predict_shift(
    ctx: AppContext,
    run: TrainRun,
    vectors: Sequence[PersonaVector],
    layers: Mapping[str, int],
    *,
    should_stop: Callable[[], bool],
    progress: Callable[[float, str], None] | None = None,
) -> Prediction:
    """Screening's prediction for ``run``'s data: per vector, the mean projection difference
    (sample minus the model's own answer) of its first samples at the vector's layer, with the
    run's context before each sample. ``progress(fraction, message)`` comes from inside
    screening (one share of the bar per layer screened)."""
    if run.uploaded is not None:
        return Prediction({}, "an uploaded adapter comes without its training file.")
    if not run.path.is_file():
        return Prediction({}, "The training file is no longer on the server: upload it again.")
    by_layer: dict[int, list[PersonaVector]] = {}
    for vec in vectors:
        by_layer.setdefault(layers[vec.name], []).append(vec)
    values: dict[str, float] = {}
    n = min(run.n_samples, PREDICT_MAX_SAMPLES)
    samples = first_samples(run.path, n).samples
    for k, (layer, group) in enumerate(by_layer.items()):

        def report(fraction: float, message: str, k: int = k) -> None:
            if progress is not None:
                share = (k + min(max(fraction, 0.0), 1.0)) / len(by_layer)
                progress(share, f"Screening the training data: {message}")

        cfg = ScreenConfig(
            layer=layer,
            own=True,
            max_new_tokens=PREDICT_TOKENS,
            context=run.context,
            max_prompt_tokens=ctx.settings.limits.max_prompt_tokens,
        )
        result = screen(
            ctx.model,
            samples,
            group,
            cfg,
            progress=report,
            should_stop=should_stop,
            total=len(samples),
            cache=OwnResponseCache.in_cache_dir(ctx.settings.cache_dir),
        )
        if result.stopped:
            return Prediction(values, "The prediction was stopped before it finished.")
        summary = result.summary(top=0)
        for vec, name in zip(group, result.names, strict=True):
            mean = summary[name]["mean"]
            if mean is not None:
                values[vec.name] = float(mean)
    if not values:
        return Prediction({}, "screening had no answers of the model's own to compare with.")
    return Prediction(values, f"from the first {n} samples, own answers of {PREDICT_TOKENS} tokens")


def _vector_record(vec: PersonaVector, report: Any) -> dict[str, Any]:
    """What the shift report's files say about one vector: its name, the model it was made
    for, and the layer it was read at."""
    layer = next((int(r.layer) for r in report.rows if r.name == vec.name), None)
    return {"name": vec.name, "model_id": vec.model_id, "layer": layer}


def run_shift(
    ctx: AppContext,
    tab: TrainTab,
    form: ShiftForm,
    session: Mapping | None,
    *,
    request: gr.Request | None,
    progress: Any,
) -> Iterator[dict]:
    """Measure the persona shift of one of this session's adapters (see the module doc)."""
    started = time.perf_counter()  # the status reports what the visitor waited for
    store: TunedModels = tab.store
    with user_errors():
        limits = ctx.settings.limits
        owner = owner_of(request)
        adapter = store.check(form.adapter, owner)
        runs = kept_runs(form.runs)
        run = next((r for r in runs if r.adapter == adapter), None)
        if run is None:
            raise InputError(
                "That adapter is not among this session's recent runs: train it again."
            )
        asked = form.settings(ctx, session)
        vectors, questions, layer = asked.vectors, asked.questions, asked.layer
        other = companion(runs, run)
        yield {tab.shift_status: "Measuring…"}
        with ctx.job(request) as job:
            tuned = store.model(ctx.model, adapter, owner)
            parts = 1 + (other is not None) + asked.predict
            report = persona_shift(
                ctx.model,
                tuned,
                vectors,
                questions,
                layer=layer,
                max_new_tokens=asked.max_new_tokens,
                max_prompt_tokens=limits.max_prompt_tokens,
                progress=_fraction(progress, 0, 1 / parts),
                should_stop=job,
            )
            if report.stopped or not report.rows:
                why = "ran past the time limit for one job" if job.timed_out() else "was stopped"
                yield {
                    tab.shift_status: f"The measurement {why} before it finished: press "
                    "**Measure shift** again.",
                    tab.shift_plot: empty_figure("The measurement did not finish"),
                    tab.last_shift: None,
                }
                return
            other_report = None
            if other is not None and not job():
                try:
                    other_model = store.model(ctx.model, other.adapter, owner)
                except InputError:  # its folder was pruned: measure without it
                    other = None
                else:
                    other_report = persona_shift(
                        ctx.model,
                        other_model,
                        vectors,
                        questions,
                        layer=layer,
                        max_new_tokens=asked.max_new_tokens,
                        max_prompt_tokens=limits.max_prompt_tokens,
                        progress=_fraction(progress, 1 / parts, 1 / parts),
                        should_stop=job,
                    )
            prediction = None
            if asked.predict and not job():
                if progress is not None:
                    progress((parts - 1) / parts, desc="Screening the training data")
                layers = {r.name: int(r.layer) for r in report.rows}
                prediction = predict_shift(
                    ctx,
                    run,
                    vectors,
                    layers,
                    should_stop=job,
                    progress=_fraction(progress, (parts - 1) / parts, 1 / parts),
                )
        if other_report is not None and (other_report.stopped or not other_report.rows):
            other_report = None
        compared = other if other_report is not None else None
        m = Measured(
            run,
            report,
            compared,
            other_report,
            prediction,
            time.perf_counter() - started,
            vectors=tuple(_vector_record(v, report) for v in vectors),
            asked={
                "questions": list(questions),
                "layer": "auto" if layer is None else layer,
                "max_new_tokens": asked.max_new_tokens,
                "predict": asked.predict,
                "decoding": "greedy",
            },
        )
        yield {
            tab.last_shift: m,
            tab.shift_summary: shift_json(m),
            tab.shift_status: shift_status(m),
            tab.shift_plot: shift_plot(m, ctx.model.n_layers),
            tab.answers: answers_table(answers_frame(m)),
        }


# --------------------------------------------------------------------------- adapters as files


def adapter_file(
    ctx: AppContext, tab: TrainTab, adapter: object, request: gr.Request | None
) -> Any:
    """The picked adapter's zip for its download button (another session's is refused)."""
    return adapter_download(ctx, tab.store, adapter, owner_of(request))


def upload_adapter(
    ctx: AppContext,
    tab: TrainTab,
    file: object,
    runs_value: object,
    request: gr.Request | None,
) -> dict:
    """An uploaded adapter zip, checked (``training.adapter_io``: safetensors only, sizes and
    shapes against the loaded model), becomes one of this session's tuned models: picked for
    **Measure shift** like a run trained here."""
    store: TunedModels = tab.store
    with user_errors():
        owner = owner_of(request)
        runs = kept_runs(runs_value)
        if not isinstance(file, str) or not file:
            raise InputError("Choose an adapter .zip to upload.")
        try:
            upload = read_adapter_zip(
                file,
                ctx.model,
                max_bytes=ctx.settings.limits.max_upload_bytes,
                max_rank=APP_ADAPTER_MAX_RANK,
            )
        finally:
            discard(file)  # read into memory (or refused): the server keeps no copy
        adapter = store.install(ctx.model, upload, owner)
        number = (runs[-1].number + 1) if runs else 1
        run = uploaded_run(adapter, number, Path(file).name, upload.settings, upload.sha256)
        new_runs = (*runs, run)[-MAX_RUNS:]
        return {
            tab.runs: new_runs,
            tab.adapter: gr.update(choices=adapter_choices(new_runs), value=adapter),
            tab.adapter_note: upload_status(run, upload.rank),
        }
