"""The Extract tab: build a persona vector from contrastive rollouts, with a progress bar.

The persona comes from a shipped trait (persona_vectors), a role (assistant-axis) or the user's
own prompts. The result goes into this session's vectors; from there it can be tried in the Steer
tab, saved to the library or downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..extract import VARIANTS, ExtractionConfig, ExtractionResult, extract_persona
from ..personas import (
    PersonaDefinition,
    custom_persona,
    list_builtin,
    load_builtin,
)
from ..plots import empty_figure, separation_figure
from . import teaching
from .common import AppContext, InputError, add_to_session, check_int, check_text, user_errors

SOURCES = [("Built-in trait", "trait"), ("Role", "role"), ("Write your own", "custom")]
VARIANT_CHOICES = [
    ("Answer tokens (response)", "response"),
    ("Prompt tokens (prompt)", "prompt"),
    ("Last prompt token (last)", "last"),
]
MAX_QUESTIONS = 20
MAX_ROLLOUTS = 200  # a full persona_vectors trait: 5 pairs x 20 questions x pos/neg
MAX_EXTRACT_TOKENS = 128
MAX_FIELD_CHARS = 20_000
N_EXAMPLES = 3

CUSTOM_EXAMPLE = {
    "name": "shakespearean",
    "pos": (
        "Speak like a Shakespearean actor: rich Early Modern English, thee and thou, "
        "dramatic flourishes.\n"
        "Answer as a bard of the Globe Theatre would, in ornate, old-fashioned verse-like prose."
    ),
    "neg": (
        "Speak in plain, modern, everyday English.\n"
        "Answer in clear, simple, contemporary language with no flourishes."
    ),
    "questions": (
        "How do I make a good cup of coffee?\n"
        "What should I pack for a weekend trip?\n"
        "Can you explain what a computer does?\n"
        "How can I be more productive in the morning?"
    ),
}


@dataclass
class ExtractTab:
    source: gr.Radio
    trait: gr.Dropdown
    role: gr.Dropdown
    custom_name: gr.Textbox
    run: gr.Button
    summary: gr.Markdown
    plot: gr.Plot
    examples: gr.Dataframe
    last: gr.State  # session key of the last extracted vector
    try_it: gr.Button
    save: gr.Button
    download: gr.DownloadButton
    extracted: Any  # the extraction event, for chaining list refreshes


def _lines(text: Any, what: str) -> list[str]:
    body = check_text(text, what, MAX_FIELD_CHARS, required=False)
    return [line.strip() for line in body.splitlines() if line.strip()]


def make_persona(
    source: str, trait: str, role: str, name: str, pos: str, neg: str, questions: str
) -> PersonaDefinition:
    if source == "trait":
        if not trait:
            raise InputError("Pick a trait from the list.")
        return load_builtin(trait, "trait")
    if source == "role":
        if not role:
            raise InputError("Pick a role from the list.")
        return load_builtin(role, "role")
    if source != "custom":
        raise InputError(f"Unknown source {source!r}: use trait, role or custom.")
    qs = _lines(questions, "question list")
    if not qs:
        raise InputError("Write at least one question (one per line) for the model to answer.")
    return custom_persona(
        name, _lines(pos, "positive prompts"), _lines(neg, "negative prompts"), qs
    )


def preview(persona: PersonaDefinition) -> str:
    pair = persona.pairs[0]
    neg = pair.neg if pair.neg is not None else "(the default Assistant's own prompts)"
    return (
        f"**{persona.name}** · {len(persona.pairs)} prompt pairs · {len(persona.questions)} "
        f"questions\n\n*With the persona:* {pair.pos}\n\n*Without:* {neg}"
    )


def summary(result: ExtractionResult) -> str:
    vec = result.vector
    counts = vec.metadata.get("counts", {})
    best = vec.layer if vec.layer is not None else 0
    sep = vec.separation[best] if vec.separation else float("nan")
    text = (
        f"**{vec.name}**: {counts.get('pos', '?')} answers with the persona and "
        f"{counts.get('neg', '?')} without, in {result.seconds:.0f} s. Suggested layer "
        f"**{best}** (separation d = {sep:.2f})."
    )
    if not result.cross_validated:
        text += (
            " With so few answers the separation is measured on the same answers that built "
            "the vector, so it looks better than it is: use more questions for a steadier vector."
        )
    return text


def examples(result: ExtractionResult) -> list[list[str]]:
    """A few (question, with persona, without) answer pairs, one per question."""

    def short(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= 280 else text[:277] + "…"

    rows: list[list[str]] = []
    seen: set[str] = set()
    roll = result.rollouts  # pos and neg rows alternate, same question and prompt pair
    for pos, neg in zip(roll[0::2], roll[1::2], strict=False):
        if pos.question in seen:
            continue
        seen.add(pos.question)
        rows.append([pos.question, short(pos.response), short(neg.response)])
        if len(rows) == N_EXAMPLES:
            break
    return rows


def build(ctx: AppContext, state: gr.State) -> ExtractTab:
    traits = list_builtin("trait")
    roles = list_builtin("role")
    trait0 = "evil" if "evil" in traits else (traits[0] if traits else None)
    role0 = "pirate" if "pirate" in roles else (roles[0] if roles else None)
    max_tokens = min(MAX_EXTRACT_TOKENS, ctx.settings.max_new_tokens)

    teaching.panel(teaching.EXTRACT)
    last = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=300, elem_classes="pe-controls"):
            source = gr.Radio(SOURCES, value="trait", label="Start from", elem_id="pe-source")
            trait = gr.Dropdown(
                traits, value=trait0, label="Trait", filterable=True, elem_id="pe-trait"
            )
            role = gr.Dropdown(
                roles, value=role0, label="Role", filterable=True, visible=False,
                elem_id="pe-role",
            )  # fmt: skip
            about = gr.Markdown(
                preview(load_builtin(trait0, "trait")) if trait0 else "", elem_classes="pe-info"
            )
            with gr.Group(visible=False) as custom_box:
                name = gr.Textbox(
                    label="Name", value=CUSTOM_EXAMPLE["name"], elem_id="pe-custom-name"
                )
                pos = gr.Textbox(
                    label="System prompts with the persona (one per line)",
                    value=CUSTOM_EXAMPLE["pos"],
                    lines=3,
                    elem_id="pe-custom-pos",
                )
                neg = gr.Textbox(
                    label="Matching prompts without it (one per line; empty = the default "
                    "Assistant)",
                    value=CUSTOM_EXAMPLE["neg"],
                    lines=3,
                    elem_id="pe-custom-neg",
                )
                questions = gr.Textbox(
                    label="Questions (one per line)",
                    value=CUSTOM_EXAMPLE["questions"],
                    lines=4,
                    elem_id="pe-custom-questions",
                )
            with gr.Accordion("Settings", open=True):
                n_questions = gr.Slider(
                    1, MAX_QUESTIONS, value=4, step=1, label="Questions",
                    info="Each is asked once per prompt pair, with and without the persona.",
                    elem_id="pe-n-questions",
                )  # fmt: skip
                max_new_tokens = gr.Slider(
                    4, max_tokens, value=min(32, max_tokens), step=1,
                    label="Max new tokens per answer", elem_id="pe-extract-tokens",
                )  # fmt: skip
                variant = gr.Radio(VARIANT_CHOICES, value="response", label="Average over")
            with gr.Row():
                run = gr.Button(
                    "Extract persona vector", variant="primary", scale=3, elem_id="pe-extract"
                )
                stop = gr.Button("Stop", scale=1, elem_id="pe-extract-stop")
        with gr.Column(scale=8, min_width=420):
            result_md = gr.Markdown(
                "Pick a persona and press **Extract**. A small extraction (4 questions, 32 "
                "tokens) takes about a minute on a laptop CPU.",
                elem_id="pe-extract-summary",
            )
            plot = gr.Plot(
                empty_figure("The separation per layer appears here"),
                label="Separation by layer",
                elem_id="pe-separation",
            )
            with gr.Row():
                try_it = gr.Button(
                    "Try it in Steer", variant="primary", visible=False, elem_id="pe-try"
                )
                save = gr.Button("Save to library", visible=False, elem_id="pe-save")
                download = gr.DownloadButton(
                    "Download (.safetensors)", visible=False, elem_id="pe-download"
                )
            table = gr.Dataframe(
                headers=["Question", "With the persona", "Without"],
                datatype=["str", "str", "str"],
                interactive=False,
                wrap=True,
                label="Example answers",
                elem_id="pe-examples",
                elem_classes="pe-table",
            )

    # ---------------------------------------------------------------- handlers

    def choose_source(src: str) -> dict:
        return {
            trait: gr.update(visible=src == "trait"),
            role: gr.update(visible=src == "role"),
            custom_box: gr.update(visible=src == "custom"),
            about: gr.update(visible=src != "custom"),
        }

    def show_builtin(src: str, trait_name: str, role_name: str) -> str:
        if src not in ("trait", "role"):
            return ""
        with user_errors():
            chosen = trait_name if src == "trait" else role_name
            return preview(load_builtin(chosen, src)) if chosen else ""

    def extract(
        source: str,
        trait_name: str,
        role_name: str,
        name: str,
        pos_prompts: str,
        neg_prompts: str,
        question_lines: str,
        n_questions: float,
        max_new_tokens: float,
        variant: str,
        session: dict | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's injection idiom)
    ) -> dict:
        """Extract a persona vector; it is added to this session's vectors."""
        with user_errors():
            persona = make_persona(
                source, trait_name, role_name, name, pos_prompts, neg_prompts, question_lines
            )
            n_q = check_int(n_questions, "Questions", 1, MAX_QUESTIONS)
            tokens = check_int(max_new_tokens, "Max new tokens", 1, max_tokens)
            if variant not in VARIANTS:
                raise InputError(f"variant must be one of {', '.join(VARIANTS)}.")
            rows = 2 * len(persona.pairs) * len(persona.extraction_questions(n_q))
            if rows > MAX_ROLLOUTS:
                raise InputError(
                    f"That is {rows} answers to generate; the limit is {MAX_ROLLOUTS}. "
                    "Use fewer questions or fewer prompt lines."
                )
            cfg = ExtractionConfig(variant=variant, n_questions=n_q, max_new_tokens=tokens)
            progress(0.0, desc="Starting")
            who = request.session_hash or "api"
            stop_flag = ctx.stop_flag(who)
            try:
                result = extract_persona(
                    ctx.model,
                    persona,
                    cfg,
                    progress=lambda f, msg: progress(f, desc=msg),
                    should_stop=stop_flag.is_set,
                )
            except InterruptedError:
                gr.Info("Extraction stopped.")
                return {result_md: "Extraction stopped. Press **Extract** to start again."}
            finally:
                ctx.release_stop_flag(who, stop_flag)
            vec = result.vector
            new_session, key = add_to_session(session, vec)
            return {
                state: new_session,
                last: key,
                result_md: summary(result),
                plot: separation_figure(vec.separation, vec.layer, norms=vec.layer_norms),
                table: examples(result),
                try_it: gr.update(visible=True),
                save: gr.update(visible=True),
                download: gr.update(value=ctx.export(vec, "safetensors"), visible=True),
            }

    source.change(
        choose_source, source, [trait, role, custom_box, about], api_visibility="private",
        queue=False,
    )  # fmt: skip
    gr.on(
        [source.change, trait.change, role.change],
        show_builtin,
        [source, trait, role],
        about,
        api_visibility="private",
        queue=False,
    )
    extracted = run.click(
        extract,
        inputs=[
            source,
            trait,
            role,
            name,
            pos,
            neg,
            questions,
            n_questions,
            max_new_tokens,
            variant,
            state,
        ],
        outputs=[state, last, result_md, plot, table, try_it, save, download],
        api_name="extract",
        concurrency_limit=ctx.settings.extract_concurrency,
        concurrency_id="extraction",
    )

    def stop_extraction(request: gr.Request) -> str:
        ctx.request_stop(request.session_hash or "api")
        return "Extraction stopped. Press **Extract** to start again."

    # The flag ends a running extraction at its next step; `cancels` drops a queued one.
    stop.click(
        stop_extraction, None, result_md, cancels=[extracted], queue=False,
        api_visibility="private",
    )  # fmt: skip
    return ExtractTab(
        source=source,
        trait=trait,
        role=role,
        custom_name=name,
        run=run,
        summary=result_md,
        plot=plot,
        examples=table,
        last=last,
        try_it=try_it,
        save=save,
        download=download,
        extracted=extracted,
    )
