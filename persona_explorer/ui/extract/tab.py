"""The Extract tab: build a persona vector from contrastive rollouts, with a progress bar.

The persona comes from a shipped trait (persona_vectors), a role (assistant-axis) or the user's
own prompts. The result goes into this session's vectors; from there it can be tried in the Steer
tab, saved to the library or downloaded. An option runs a small layer x strength sweep after the
extraction (:func:`.sweep_run.sweep_after_extraction`) and records its recommendation in the
vector before it is listed.

The summary is the tab's status line and the one place its progress bar shows. A new extraction
first withdraws the previous one's results and buttons, so a failed or stopped run leaves none of
them behind; errors are toasts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import Limits, check_int, check_text
from persona_explorer.personas.data import list_builtin, load_builtin
from persona_explorer.personas.definitions import PersonaDefinition, custom_persona
from persona_explorer.personas.extract import (
    VARIANTS,
    ExtractionConfig,
    ExtractionResult,
    extract_persona,
)
from persona_explorer.plots import empty_figure, separation_figure
from persona_explorer.ui.shared import teaching
from persona_explorer.ui.shared.catalog import add_to_session, fmt_strength
from persona_explorer.ui.shared.context import AppContext, user_errors
from persona_explorer.ui.shared.forms import form_endpoint
from persona_explorer.ui.shared.markup import md, plain
from persona_explorer.ui.sweep.handlers import sweep_after_extraction

SOURCES = [("Built-in trait", "trait"), ("Role", "role"), ("Write your own", "custom")]
VARIANT_CHOICES = [
    ("Answer tokens (response)", "response"),
    ("Prompt tokens (prompt)", "prompt"),
    ("Last prompt token (last)", "last"),
]
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
    state: gr.State  # this session's vectors (shared with the other tabs)
    source: gr.Radio
    trait: gr.Dropdown
    role: gr.Dropdown
    about: gr.Markdown
    custom_box: gr.Group
    custom_name: gr.Textbox
    run: gr.Button
    summary: gr.Markdown
    plot: gr.Plot
    examples: gr.Dataframe
    last: gr.State  # session key of the last extracted vector
    try_it: gr.Button
    save: gr.Button
    download: gr.DownloadButton
    extracted: Any = None  # the extraction event, for chaining list refreshes


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

    def persona(self, limits: Limits) -> PersonaDefinition:
        if self.source == "trait":
            if not self.trait_name:
                raise InputError("Pick a trait from the list.")
            return load_builtin(self.trait_name, "trait")
        if self.source == "role":
            if not self.role_name:
                raise InputError("Pick a role from the list.")
            return load_builtin(self.role_name, "role")
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


def preview(persona: PersonaDefinition) -> str:
    pair = persona.pairs[0]
    neg = pair.neg if pair.neg is not None else "(the default Assistant's own prompts)"
    return (
        f"**{md(persona.name)}** · {len(persona.pairs)} prompt pairs · "
        f"{len(persona.questions)} questions to draw from (the Questions slider picks how many "
        f"are asked)\n\n*With the persona:* {md(pair.pos, 600)}\n\n"
        f"*Without:* {md(neg, 600)}"
    )


def summary(result: ExtractionResult) -> str:
    vec = result.vector
    counts = vec.metadata.get("counts", {})
    best = vec.layer if vec.layer is not None else 0
    sep = vec.separation[best] if vec.separation else float("nan")
    text = (
        f"**{md(vec.name)}**: {counts.get('pos', '?')} answers with the persona and "
        f"{counts.get('neg', '?')} without, in {result.seconds:.0f} s. Recommended layer "
        f"**{best}** (separation d = {sep:.2f}) and strength **{fmt_strength(vec.strength)}**"
    )
    if vec.strength is not None:
        text += (
            ", which adds as large a share of that layer's activations as the built-in "
            "personas do (Try it in Steer starts there)."
        )
    else:
        text += " (the vector is zero there: nothing to scale a strength to)."
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
    limits = ctx.settings.limits
    max_tokens = extract_token_limit(limits)

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
                    1, limits.max_extract_questions, value=4, step=1, label="Questions",
                    info="Each is asked once per prompt pair, with and without the persona.",
                    elem_id="pe-n-questions",
                )  # fmt: skip
                max_new_tokens = gr.Slider(
                    4, max_tokens, value=min(32, max_tokens), step=1,
                    label="Max new tokens per answer", elem_id="pe-extract-tokens",
                )  # fmt: skip
                variant = gr.Radio(VARIANT_CHOICES, value="response", label="Average over")
                sweep = gr.Checkbox(
                    False,
                    label="Find layer and strength after extracting (sweep)",
                    info="4 prompts × 4 layers × 4 strengths, 32 tokens each: a minute or two "
                    "more on a small CPU. The vector records what the sweep recommends.",
                    elem_id="pe-extract-sweep",
                )
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
                label="Extraction summary",
            )
            plot = gr.Plot(
                empty_figure("The separation per layer appears here"),
                label="Separation by layer",
                show_label=False,  # the badge would cover the figure's own title
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
                # Without fixed widths the grid sizes columns to unwrapped text: the answers
                # take the whole width and the question column shrinks to a word.
                column_widths=["24%", "38%", "38%"],
                label="Example answers",
                elem_id="pe-examples",
                elem_classes="pe-table",
            )

    tab = ExtractTab(
        state=state,
        source=source,
        trait=trait,
        role=role,
        about=about,
        custom_box=custom_box,
        custom_name=name,
        run=run,
        summary=result_md,
        plot=plot,
        examples=table,
        last=last,
        try_it=try_it,
        save=save,
        download=download,
    )
    private: dict[str, Any] = {"api_visibility": "private", "queue": False}
    source.change(
        lambda src: choose_source(tab, src), source, [trait, role, custom_box, about], **private
    )
    gr.on(
        [source.change, trait.change, role.change], show_builtin, [source, trait, role], about,
        **private,
    )  # fmt: skip
    extract = form_endpoint(
        ExtractForm,
        lambda form, session, request, progress: run_extract(
            ctx, tab, form, session, request, progress
        ),
        name="extract",
        doc="Extract a persona vector; it is added to this session's vectors. With sweep, a "
        "small layer x strength sweep follows and its recommendation is recorded in the vector.",
        request=True,
        progress=True,
    )
    outputs = [state, last, result_md, plot, table, try_it, save, download]
    # The previous results go at once, not when the queue reaches this job.
    started = run.click(
        lambda: reset_results(tab), None, outputs[2:], queue=False, show_progress="hidden",
        api_visibility="private",
    )  # fmt: skip
    tab.extracted = started.then(
        extract,
        inputs=[
            source, trait, role, name, pos, neg, questions, n_questions, max_new_tokens, variant,
            sweep, state,
        ],
        outputs=outputs,
        api_name="extract",
        **ctx.heavy_queue(),
        show_progress_on=[result_md],
    )  # fmt: skip
    # A failed event keeps an error badge on its progress target; this replaces it (and the
    # empty summary) with a line about the failure, whose reason the toast gives.
    tab.extracted.failure(
        lambda: FAILED, None, result_md, queue=False, show_progress="hidden",
        api_visibility="private",
    )  # fmt: skip

    def stop_this_session(request: gr.Request) -> str:
        return stop_extraction(ctx, request)

    # The flag ends a running extraction at its next step; `cancels` drops a queued one.
    stop.click(
        stop_this_session, None, result_md, cancels=[tab.extracted], show_progress="hidden",
        **private,
    )  # fmt: skip
    return tab


# --------------------------------------------------------------------------- handlers


def choose_source(tab: ExtractTab, src: str) -> dict:
    return {
        tab.trait: gr.update(visible=src == "trait"),
        tab.role: gr.update(visible=src == "role"),
        tab.custom_box: gr.update(visible=src == "custom"),
        tab.about: gr.update(visible=src != "custom"),
    }


def show_builtin(src: str, trait_name: str, role_name: str) -> str:
    if src not in ("trait", "role"):
        return ""
    with user_errors():
        chosen = trait_name if src == "trait" else role_name
        return preview(load_builtin(chosen, src)) if chosen else ""


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


def _check_sweep(value: object) -> bool:
    if not isinstance(value, bool):
        raise InputError("sweep must be true or false.")
    return value


EXTRACTION_SHARE = 0.6  # of the progress bar, when a sweep follows


def run_extract(
    ctx: AppContext,
    tab: ExtractTab,
    form: ExtractForm,
    session: Mapping | None,
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
        persona = form.persona(limits)
        cfg = form.config(persona, limits)
        sweep = _check_sweep(form.sweep)
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
        yield extracted(ctx, tab, replace(result, vector=vec), session, note)


def extracted(
    ctx: AppContext,
    tab: ExtractTab,
    result: ExtractionResult,
    session: Mapping | None,
    note: str = "",
) -> dict:
    """The finished extraction in this session's vectors and on screen (``note``: a line
    after the summary)."""
    vec = result.vector
    new_session, key = add_to_session(session, vec, ctx.settings.limits.max_session_vectors)
    # One file per finished extraction, which is itself an explicit, heavy action.
    path, _ = ctx.exports.write(vec, "safetensors")
    return {
        tab.state: new_session,
        tab.last: key,
        tab.summary: summary(result) + (f"\n\n{note}" if note else ""),
        tab.plot: separation_figure(vec.separation, vec.layer, norms=vec.layer_norms),
        tab.examples: examples(result),
        tab.try_it: gr.update(visible=True),
        tab.save: gr.update(visible=not ctx.library.read_only),
        tab.download: gr.update(value=str(path), visible=True),
    }


def save_extracted(
    ctx: AppContext, tab: ExtractTab, key: str | None, session: Mapping | None, owner: object
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
