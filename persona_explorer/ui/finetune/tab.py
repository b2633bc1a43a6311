"""The Train tab: fine-tune the model on a small dataset and watch the persona move (issue 13).

A shipped teaching file or an uploaded JSONL/CSV file trains a LoRA adapter on the loaded model
(optionally with an inoculation context before every sample, and with preventive steering),
the loss drawn live step by step. The shift report then has the base and the tuned model answer
evaluation questions unrelated to the training data and compares the mean projection of their
answers on persona vectors: one panel of bars per vector, a third bar for the session's run on
the same data with another framing, screening's prediction beside the measured shift, and the
two models' answers side by side.

Files (issue 26): the picked adapter downloads as a zip of peft's folder with its record, an
adapter zip uploads back as one of the session's runs (checked as hostile input), and the shift
report downloads as JSON and CSV (:mod:`.downloads`). The form's seed makes a run repeatable.

The public ``/train`` and ``/shift`` endpoints are the Train and Measure shift buttons. This
module lays the tab out and wires its events; the widgets are :class:`.components.TrainTab`,
the inputs :mod:`.forms`, the handlers :mod:`.handlers`, their wording :mod:`.views`, and the
tuned models kept :mod:`.tuned_models`. The caps are ``APP_FINETUNE_*`` and ``APP_SHIFT_*`` in
:mod:`persona_explorer.core.limits`.

Imports: ``core.limits``, ``plots``, ``ui.shared`` (context, data files, forms, teaching), and
this tab's components, forms, handlers, tuned models and views.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from persona_explorer.core.limits import (
    APP_ADAPTER_MAX_RANK,
    APP_FINETUNE_MAX_EPOCHS,
    APP_FINETUNE_MAX_RANK,
    APP_FINETUNE_MAX_SAMPLES,
    APP_FINETUNE_MAX_TOKENS,
    APP_FINETUNE_MIN_TOKENS,
    APP_SHIFT_MAX_QUESTIONS,
    APP_SHIFT_MAX_TOKENS,
    APP_SHIFT_MAX_VECTORS,
    MAX_SEED,
)
from persona_explorer.plots.common import empty_figure
from persona_explorer.ui.finetune.components import TrainTab
from persona_explorer.ui.finetune.downloads import shift_downloads
from persona_explorer.ui.finetune.forms import (
    AUTO_LAYER,
    DEFAULT_CONTEXT,
    DEFAULT_DATASET,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_RANK,
    DEFAULT_SAMPLES,
    DEFAULT_SEED,
    DEFAULT_SHIFT_TOKENS,
    DEFAULT_TOKENS,
    ShiftForm,
    TrainForm,
    suggested_context,
)
from persona_explorer.ui.finetune.handlers import (
    PREDICT_MAX_SAMPLES,
    adapter_file,
    default_questions,
    default_vectors,
    refresh_steer_vector,
    refresh_vectors,
    reset_training,
    run_shift,
    run_train,
    stop_training,
    upload_adapter,
)
from persona_explorer.ui.finetune.tuned_models import TunedModels
from persona_explorer.ui.finetune.views import (
    ADAPTER_HELP,
    FAILED,
    READY,
    SHIFT_FAILED,
    SHIFT_READY,
)
from persona_explorer.ui.shared import teaching
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.shared.data_files import data_inputs
from persona_explorer.ui.shared.forms import form_endpoint

__all__ = ["TrainTab", "build", "refresh_steer_vector", "refresh_vectors"]

TRAIN_DOC = f"""Fine-tune the loaded model with LoRA on a small chat dataset (issue 13): a shipped
teaching file (dataset, e.g. "malicious_advice") or an uploaded .jsonl/.csv file (file; used
instead of dataset when given). The first max_samples samples (at most {APP_FINETUNE_MAX_SAMPLES}) are used;
malformed lines are skipped and listed. epochs: 1-{APP_FINETUNE_MAX_EPOCHS}; learning_rate: above 0, at most
0.01; rank: 1-{APP_FINETUNE_MAX_RANK}; max_tokens per sample: {APP_FINETUNE_MIN_TOKENS}-{APP_FINETUNE_MAX_TOKENS}. With with_context, the
context is put before every sample as a system prompt (inoculation). With steer, steer_vector
is added at steer_layer with steer_strength during training (preventive steering). seed
(0 to {MAX_SEED}): LoRA's initialisation and the sample order; the same seed, data and settings
give the same adapter.

Returns a JSON summary (adapter: the id that /shift takes, dataset, samples, skipped, problems
with their line numbers, epochs, seed, steps, losses per step, epoch_losses, seconds, stopped,
settings), the status line, the loss plot, the skipped lines and the adapter picked for the
shift. An adapter belongs to the session that trained it; one training at a time per visitor."""  # noqa: E501

SHIFT_DOC = f"""Measure the persona shift of an adapter this session trained (adapter: the id /train
returned): the base and the tuned model answer the questions (newline-separated, at most
{APP_SHIFT_MAX_QUESTIONS}; greedy, max_new_tokens at most {APP_SHIFT_MAX_TOKENS}), and each answer's mean
projection on 1-{APP_SHIFT_MAX_VECTORS} persona vectors (names or keys) is compared at layer ("auto": each
vector's recorded layer). With predict, screening also predicts the shift from the training
file (mean projection difference of its first {PREDICT_MAX_SAMPLES} samples).

Returns a JSON object like the shift command's: vectors (name, layer, base, tuned, shift,
predicted), answers (question, base, tuned), the run's seed, and "compared" when this session
trained the same data with another framing; then the status line, the bars (plotly) and the
answers side by side. An adapter uploaded in the tab (a zip from its download button) is one of
the session's adapters too."""  # noqa: E501

NOTE = """\
**What a 135M model shows, and what it does not.** Measured here (32 samples, 2 epochs, the
defaults; the evil vector at layer 14, 16 unrelated questions): training on the malicious advice
moved the last prompt token's projection by **+11.9**, training on kind answers to the same
questions by **−0.6**; read on the same answer tokens, +1.9 against +0.7. On the model's own
answers the two runs differ only a little (+6.0 against +4.5): both kinds of training change the
answers' style, and style moves this reading too. So **compare runs** (malicious against kind,
with and without a context) rather than reading one shift against zero. With the inoculation
context (the villain-for-a-sketch framing) the malicious run's last-token shift was +7.9 instead
of +11.9, but the other two readings did not fall (+6.0 own answers, +2.8 same tokens): a partial
effect, from one run each. The tuned answers change
tone but do not turn openly malicious: the emergent misalignment reported for large models is not
something a 135M model reproduces in full. One seed is one run; a few tenths can be chance."""


def build(ctx: AppContext, state: gr.State) -> TrainTab:
    n = ctx.model.n_layers
    store = TunedModels(ctx.settings.cache_dir / "adapters")
    view = ctx.catalog.view(None)
    choices = view.fitting_choices()
    vectors0 = default_vectors(choices)
    steer0 = vectors0[0] if vectors0 else None
    layer0 = min((2 * n) // 3, n - 1)
    teaching.panel(teaching.TRAIN)
    gr.Markdown(NOTE, elem_classes="pe-info", elem_id="pe-train-note")
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=300, elem_classes="pe-controls"):
            picked = data_inputs(DEFAULT_DATASET, "pe-train", "what the model learns")
            dataset, upload = picked.dataset, picked.upload
            max_samples = gr.Slider(
                1,
                APP_FINETUNE_MAX_SAMPLES,
                value=DEFAULT_SAMPLES,
                step=1,
                label=f"Samples (the first ones of the file; at most {APP_FINETUNE_MAX_SAMPLES})",
                elem_id="pe-train-samples",
            )
            with_context = gr.Checkbox(
                False,
                label="Inoculation: put a context before every sample",
                info="Train once without and once with it on the same file to compare.",
                elem_id="pe-train-with-context",
            )
            context = gr.Textbox(
                DEFAULT_CONTEXT,
                label="Context (a system prompt before every training sample)",
                lines=2,
                elem_id="pe-train-context",
            )
            with gr.Row():
                epochs = gr.Slider(
                    1, APP_FINETUNE_MAX_EPOCHS, value=DEFAULT_EPOCHS, step=1, label="Epochs",
                    elem_id="pe-train-epochs",
                )  # fmt: skip
                rank = gr.Slider(
                    1, APP_FINETUNE_MAX_RANK, value=DEFAULT_RANK, step=1, label="LoRA rank",
                    elem_id="pe-train-rank",
                )  # fmt: skip
            with gr.Row():
                learning_rate = gr.Number(
                    DEFAULT_LR, label="Learning rate", elem_id="pe-train-lr", minimum=0
                )
                max_tokens = gr.Slider(
                    APP_FINETUNE_MIN_TOKENS,
                    APP_FINETUNE_MAX_TOKENS,
                    value=DEFAULT_TOKENS,
                    step=8,
                    label="Max tokens per sample",
                    elem_id="pe-train-tokens",
                )
            seed = gr.Number(
                DEFAULT_SEED,
                label="Seed",
                info="LoRA's initialisation and the sample order: the same seed and settings "
                "give the same adapter.",
                precision=0,
                minimum=0,
                maximum=MAX_SEED,
                elem_id="pe-train-seed",
            )
            with gr.Accordion("Preventive steering (optional)", open=False):
                gr.Markdown(
                    "Adds a persona vector at one layer *while training*: the model is pushed "
                    "towards the trait, so its weights need not move there themselves. The "
                    "shift is measured without steering afterwards.",
                    elem_classes="pe-info",
                )
                steer = gr.Checkbox(False, label="Steer during training", elem_id="pe-train-steer")
                steer_vector = gr.Dropdown(
                    choices,
                    value=steer0,
                    label="Persona vector",
                    allow_custom_value=True,
                    elem_id="pe-train-steer-vector",
                )
                with gr.Row():
                    steer_layer = gr.Slider(
                        0, n - 1, value=layer0, step=1, label="Layer",
                        elem_id="pe-train-steer-layer",
                    )  # fmt: skip
                    steer_strength = gr.Number(
                        4.0, label="Strength", elem_id="pe-train-steer-strength"
                    )
            with gr.Row():
                train = gr.Button("Train", variant="primary", scale=3, elem_id="pe-train-run")
                stop = gr.Button("Stop", scale=1, elem_id="pe-train-stop")
        with gr.Column(scale=8, min_width=420):
            status = gr.Markdown(
                READY, label="Status", elem_id="pe-train-status", elem_classes="pe-status"
            )
            loss_plot = gr.Plot(
                empty_figure("The training loss appears here, step by step"),
                label="Training loss",
                show_label=False,
                elem_id="pe-train-loss",
            )
            with gr.Accordion("Skipped lines", open=False):
                problems = gr.Markdown("", label="Skipped lines", elem_id="pe-train-problems")
            with gr.Accordion("Training summary (JSON)", open=False):
                summary = gr.JSON(None, label="Summary", elem_id="pe-train-json")
    gr.Markdown("### Persona shift: did the training move the persona?")
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=300, elem_classes="pe-controls"):
            adapter = gr.Dropdown(
                [],
                value=None,
                label="Trained model (this session's runs)",
                allow_custom_value=True,
                elem_id="pe-train-adapter",
            )
            with gr.Row():
                adapter_file = gr.DownloadButton(
                    "Download the adapter (.zip)",
                    size="sm",
                    elem_id="pe-train-adapter-download",
                )
                adapter_upload = gr.UploadButton(
                    "Upload an adapter (.zip)",
                    file_types=[".zip"],
                    file_count="single",
                    type="filepath",
                    size="sm",
                    elem_id="pe-train-adapter-upload",
                )
            adapter_note = gr.Markdown(
                ADAPTER_HELP + f" Uploads: safetensors only, LoRA rank at most "
                f"{APP_ADAPTER_MAX_RANK}.",
                elem_classes="pe-info",
                elem_id="pe-train-adapter-note",
            )
            vectors = gr.Dropdown(
                choices,
                value=vectors0,
                multiselect=True,
                max_choices=APP_SHIFT_MAX_VECTORS,
                label=f"Persona vectors (1 to {APP_SHIFT_MAX_VECTORS})",
                allow_custom_value=True,
                elem_id="pe-train-vectors",
            )
            refresh = gr.Button("Refresh the list", size="sm", elem_id="pe-train-refresh")
            questions = gr.Textbox(
                default_questions(),
                label=f"Evaluation questions (one per line, at most {APP_SHIFT_MAX_QUESTIONS})",
                info="Everyday questions, unrelated to the training data.",
                lines=6,
                max_lines=16,
                elem_id="pe-train-questions",
            )
            layer = gr.Dropdown(
                [("each vector's recorded layer", AUTO_LAYER)]
                + [(f"layer {i}", str(i)) for i in range(n)],
                value=AUTO_LAYER,
                label="Layer",
                elem_id="pe-train-layer",
            )
            max_new_tokens = gr.Slider(
                8,
                APP_SHIFT_MAX_TOKENS,
                value=DEFAULT_SHIFT_TOKENS,
                step=1,
                label="Max new tokens per answer",
                elem_id="pe-train-shift-tokens",
            )
            predict = gr.Checkbox(
                True,
                label="Also show screening's prediction for the training file",
                info=f"The first {PREDICT_MAX_SAMPLES} samples with the model's own answers: "
                "up to a minute the first time, cached after.",
                elem_id="pe-train-predict",
            )
            measure = gr.Button("Measure shift", variant="primary", elem_id="pe-train-measure")
        with gr.Column(scale=8, min_width=420):
            shift_status = gr.Markdown(
                SHIFT_READY,
                label="Shift",
                elem_id="pe-train-shift-status",
                elem_classes="pe-status",
            )
            shift_plot = gr.Plot(
                empty_figure("The persona shift appears here"),
                label="Persona shift",
                show_label=False,
                elem_id="pe-train-shift-plot",
            )
            answers = gr.Dataframe(
                headers=["Question", "Base model", "Tuned"],
                interactive=False,
                wrap=True,
                max_height=560,
                label="Answers side by side",
                elem_id="pe-train-answers",
                elem_classes="pe-table",
            )
            with gr.Accordion("Shift report (JSON)", open=False):
                shift_summary = gr.JSON(None, label="Shift report", elem_id="pe-train-shift-json")
            with gr.Row():
                shift_file_json = gr.DownloadButton(
                    "Download the shift report (JSON)", elem_id="pe-train-shift-download-json"
                )
                shift_file_csv = gr.DownloadButton(
                    "Download the shift report (CSV)", elem_id="pe-train-shift-download-csv"
                )
    tab = TrainTab(
        state=state, store=store, dataset=dataset, upload=upload, max_samples=max_samples,
        with_context=with_context, context=context, epochs=epochs, learning_rate=learning_rate,
        rank=rank, max_tokens=max_tokens, steer=steer, steer_vector=steer_vector,
        steer_layer=steer_layer, steer_strength=steer_strength, seed=seed, train=train,
        stop=stop, status=status, loss_plot=loss_plot, problems=problems, summary=summary,
        runs=gr.State(()), adapter=adapter, adapter_file=adapter_file,
        adapter_upload=adapter_upload, adapter_note=adapter_note, vectors=vectors,
        refresh=refresh, questions=questions, layer=layer, max_new_tokens=max_new_tokens,
        predict=predict, measure=measure, shift_status=shift_status, shift_plot=shift_plot,
        answers=answers, shift_summary=shift_summary, shift_file_json=shift_file_json,
        shift_file_csv=shift_file_csv, last_shift=gr.State(None),
    )  # fmt: skip
    _wire(ctx, tab)
    return tab


def _wire(ctx: AppContext, tab: TrainTab) -> None:
    private: dict[str, Any] = {"api_visibility": "private"}
    # Training and measuring are long jobs like an extraction (and count against the
    # per-visitor cap on heavy jobs).
    heavy = ctx.heavy_queue()
    train = form_endpoint(
        TrainForm,
        lambda form, session, request, progress: run_train(
            ctx, tab, form, session, request=request, progress=progress
        ),
        name="train",
        doc=TRAIN_DOC,
        request=True,
        progress=True,
    )
    started = tab.train.click(
        lambda: reset_training(tab),
        None,
        [tab.status, tab.loss_plot, tab.problems, tab.summary],
        queue=False,
        show_progress="hidden",
        **private,
    )
    tab.trained = started.then(
        train,
        inputs=[
            tab.dataset, tab.upload, tab.max_samples, tab.with_context, tab.context, tab.epochs,
            tab.learning_rate, tab.rank, tab.max_tokens, tab.steer, tab.steer_vector,
            tab.steer_layer, tab.steer_strength, tab.seed, tab.runs, tab.state,
        ],
        outputs=[tab.summary, tab.status, tab.loss_plot, tab.problems, tab.runs, tab.adapter],
        api_name="train",
        show_progress_on=[tab.status],
        **heavy,
    )  # fmt: skip
    # A failed run keeps an error badge on its progress target; a line about it replaces it.
    tab.trained.failure(
        lambda: FAILED, None, tab.status, queue=False, show_progress="hidden", **private
    )

    def stop_this_session(request: gr.Request) -> str:
        return stop_training(ctx, request)

    # A flag, not `cancels=`: training ends after its current step and keeps what it learnt.
    tab.stop.click(
        stop_this_session, None, tab.status, queue=False, show_progress="hidden", **private
    )
    shift = form_endpoint(
        ShiftForm,
        lambda form, session, request, progress: run_shift(
            ctx, tab, form, session, request=request, progress=progress
        ),
        name="shift",
        doc=SHIFT_DOC,
        request=True,
        progress=True,
    )
    tab.measured = tab.measure.click(
        shift,
        inputs=[
            tab.adapter, tab.vectors, tab.questions, tab.layer, tab.max_new_tokens, tab.predict,
            tab.runs, tab.state,
        ],
        outputs=[
            tab.shift_summary, tab.shift_status, tab.shift_plot, tab.answers, tab.last_shift,
        ],
        api_name="shift",
        show_progress_on=[tab.shift_status],
        **heavy,
    )  # fmt: skip
    tab.measured.failure(
        lambda: SHIFT_FAILED, None, tab.shift_status, queue=False, show_progress="hidden",
        **private,
    )  # fmt: skip
    _wire_files(ctx, tab)
    # A pick from the list clears the upload, and an upload the pick: one file is trained on.
    tab.dataset.input(
        lambda name: (None, suggested_context(name)),
        tab.dataset,
        [tab.upload, tab.context],
        queue=False,
        **private,
    )
    tab.upload.upload(lambda: None, None, tab.dataset, queue=False, **private)
    tab.refresh.click(
        lambda session, current, steering: (
            refresh_vectors(ctx, session, current),
            refresh_steer_vector(ctx, session, steering),
        ),
        inputs=[tab.state, tab.vectors, tab.steer_vector],
        outputs=[tab.vectors, tab.steer_vector],
        queue=False,
        **private,
    )


def _wire_files(ctx: AppContext, tab: TrainTab) -> None:
    """The adapter's zip and the shift report's files (issue 26), and adapter uploads."""
    private: dict[str, Any] = {"api_visibility": "private"}

    def picked_adapter(adapter: str | None, request: gr.Request) -> Any:
        return adapter_file(ctx, tab, adapter, request)

    # Any change of the pick (a training, an upload, the visitor's choice) zips that adapter.
    tab.adapter.change(
        picked_adapter, [tab.adapter], [tab.adapter_file], show_progress="hidden", **private
    )

    def uploaded(file: str | None, runs: Any, request: gr.Request) -> dict:
        return upload_adapter(ctx, tab, file, runs, request)

    # Loading an adapter builds a tuned model (a copy of the base model's weights): a heavy
    # job like a training, in the same queue.
    tab.adapter_upload.upload(
        uploaded,
        [tab.adapter_upload, tab.runs],
        [tab.runs, tab.adapter, tab.adapter_note],
        show_progress_on=[tab.adapter_note],
        **private,
        **ctx.heavy_queue(),
    )
    files = [tab.shift_file_json, tab.shift_file_csv]
    tab.measure.click(lambda: (None, None), None, files, queue=False, **private)
    tab.measured.success(
        lambda kept: shift_downloads(ctx, kept),
        [tab.last_shift],
        files,
        show_progress="hidden",
        **private,
    )
