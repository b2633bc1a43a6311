"""The Steer tab's actions: the form, the handlers and how their results are worded.

:class:`SteerForm` is the tab's inputs (and the public ``/steer`` API's parameters, in order).
:func:`run_steer` streams both answers, then the plots, the per-token views, the status line and,
after a teacher-forced pass scoring each answer's log-probabilities under both columns' models,
the views' hovers with them and the run's download files; :func:`run_strength_sweep` runs one
batch at several strengths. Stop ends a run between decoding steps through the session's stop
flag, so the run still reports what it made ("Stopped after N tokens") instead of being killed
mid-way. The texts stream at most once every ~75 ms (``shared.streaming``): Gradio's cost per
update, paid on the cores the model decodes on, would otherwise halve the visitor's speed.

Imports: the domain (``evaluate.compare``, ``evaluate.run_export``, ``steering``), ``plots``,
``core.limits``, and ``ui.shared`` (context, markup, requests, streaming).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import gradio as gr

from persona_explorer.core.limits import (
    DEFAULT_FREQUENCY_PENALTY,
    DEFAULT_TEMPERATURE,
    check_layer,
    check_strength,
)
from persona_explorer.evaluate.compare import SteerOutput, SteerRequest, steer_stream
from persona_explorer.evaluate.run_export import projections_csv, run_json
from persona_explorer.plots import (
    empty_figure,
    layer_projection_figure,
    strength_strip_figure,
    token_panels_html,
)
from persona_explorer.plots.tokens import LogprobHover
from persona_explorer.steering.logprobs import AnswerLogprobs, run_logprobs
from persona_explorer.steering.ops import RowPlan, add_plan, check_positions
from persona_explorer.ui.shared.context import AppContext, user_errors
from persona_explorer.ui.shared.markup import md
from persona_explorer.ui.shared.requests import (
    AUTO_READOUT,
    DEFAULT_MAX_NEW_TOKENS,
    prompt_and_system,
    sampling,
)
from persona_explorer.ui.shared.streaming import coalesce
from persona_explorer.vectors.persona_vector import PersonaVector

SWEEP_MULTIPLIERS = (-2.0, 1.0, 2.0, 4.0)  # x the chosen strength; the baseline row adds 0


@dataclass(frozen=True)
class SteerForm:
    """The Steer tab's inputs, as widgets send them (and as the ``/steer`` API takes them)."""

    prompt: str
    persona: str
    layer: float
    strength: float
    max_new_tokens: float = DEFAULT_MAX_NEW_TOKENS
    system_prompt: str = ""
    positions: str = "all"
    temperature: float = DEFAULT_TEMPERATURE
    seed: float = 0
    readout_layer: float = AUTO_READOUT  # -1: the layer right after the injected one
    frequency_penalty: float = DEFAULT_FREQUENCY_PENALTY

    def request(
        self,
        ctx: AppContext,
        session: Mapping[str, PersonaVector] | None,
        strengths: tuple[float, ...] | None = None,
    ) -> SteerRequest:
        """Check every value and build the engine request (``strengths``: several rows)."""
        limits = ctx.settings.limits
        n_layers = ctx.model.n_layers
        text, system = prompt_and_system(limits, self.prompt, self.system_prompt)
        _, vec = ctx.catalog.view(session).resolve_fitting(self.persona)
        readout = None
        if self.readout_layer not in (None, AUTO_READOUT, float(AUTO_READOUT)):
            readout = check_layer(self.readout_layer, n_layers, "Read-out layer")
        rows = strengths if strengths is not None else (self.strength,)
        return SteerRequest(
            prompt=text,
            vector=vec,
            layers=(check_layer(self.layer, n_layers),),
            strengths=tuple(check_strength(s, limits) for s in rows),
            system=system,
            positions=check_positions(self.positions),
            sampling=sampling(
                limits, self.max_new_tokens, self.temperature, self.seed, self.frequency_penalty
            ),
            projection_layer=readout,
        )

    def settings(self, req: SteerRequest) -> dict[str, Any]:
        """What a downloaded run records about how it was made."""
        return {
            "persona": req.vector.name,
            "vector_model_id": req.vector.model_id,
            "layers": list(req.layers),
            "strengths": list(req.strengths),
            "positions": req.positions,
            "system_prompt": req.system or "",
            "max_new_tokens": req.sampling.max_new_tokens,
            "temperature": req.sampling.temperature,
            "frequency_penalty": req.sampling.frequency_penalty,
            "seed": req.sampling.seed,
        }


# --------------------------------------------------------------------------- wording


def status_line(out: SteerOutput, strength: float, recorded: float | None, timed_out: bool) -> str:
    base, steered = out.baseline, out.steered[0]
    used = f"layer {out.layers[0]}, strength {strength:g}"
    if recorded:
        used += f" ({strength / recorded:.2g}× the recorded {recorded:g})"
    line = (
        f"{out.new_tokens} tokens in {out.seconds:.1f} s ({out.tokens_per_second:.1f} tok/s for "
        f"both columns) · {used} · per-token view read at layer {out.readout_layer}"
    )
    if timed_out:
        return f"Stopped at the time limit for one job after {out.new_tokens} tokens · {used}."
    if out.stopped:
        return f"Stopped after {out.new_tokens} tokens · {used}. The plots show what was made."
    if strength == 0:
        line += " · strength 0 means no steering: both columns are the same."
    elif steered.text == base.text:
        line += (
            " · The steered answer matches the baseline: try a larger strength or a layer "
            "nearer the recommended one."
        )
    return line


def answer_logprobs(
    ctx: AppContext, req: SteerRequest, out: SteerOutput, job: Any = None
) -> list[AnswerLogprobs] | None:
    """Every answer of the run under its own model and the other column's, by teacher forcing
    after generation (the plans generation used; ``steering.logprobs``). None when Stop ended
    the scoring pass or the run (then nothing runs)."""
    if job is not None and job():
        return None
    plans: list[RowPlan] = [()]
    plans += [add_plan(req.vector.vectors, req.layers, s, req.positions) for s in req.strengths]
    prompt_ids = ctx.model.chat_ids(req.prompt, system=req.system or None)
    answers = [row.tokens for row in out.rows]
    return run_logprobs(ctx.model, prompt_ids, answers, plans, should_stop=job)


def _model_name(out: SteerOutput, row: int) -> str:
    return (
        "the baseline model"
        if row == 0
        else f"the steered model (strength {out.rows[row].strength:g})"
    )


def token_views(out: SteerOutput, logprobs: list[AnswerLogprobs] | None = None) -> tuple[str, str]:
    """Both per-token views: the model's own part (the added vector's direct component taken
    out of the steered side), coloured relative to the baseline answer's mean at the read-out
    layer on one scale for both panels, as their captions say. Raw projections of any text sit
    far from 0 there (about −21 at layer 11 for the pirate), so colours around 0 painted both
    answers blue (issue 26); relative to the plain Assistant, red means "more like the persona".
    With ``logprobs`` each token's hover also gives its log-probability under both columns'
    models, and a line under each caption their means."""
    base, steered = out.baseline, out.steered[0]
    hovers = None
    if logprobs is not None:
        hovers = [
            LogprobHover(lp.own, lp.other, _model_name(out, i), _model_name(out, lp.other_row))
            for i, lp in enumerate(logprobs[:2])
        ]
    views = token_panels_html(
        [
            (base.token_strings, base.token_projection, 0.0),
            (steered.token_strings, steered.token_projection, steered.token_injected),
        ],
        out.readout_layer,
        shared_scale=True,
        centre_on_baseline=True,
        logprobs=hovers,
    )
    return views[0], views[1]


def layer_figure(out: SteerOutput, req: SteerRequest) -> Any:
    return layer_projection_figure(
        out.baseline.layer_projection,
        {f"steered, strength {req.strengths[0]:g}": out.steered[0].layer_projection},
        steered_layers=req.layers,
        title=f"Projection onto “{req.vector.name}” at every layer",
        readout_layer=out.readout_layer,
    )


@cache
def generating_figure() -> Any:
    """The plot's placeholder while a run streams: built once (plotly takes 20-80 ms to build
    even an empty figure, which the first token would wait for); Gradio only reads it."""
    return empty_figure("Generating…")


# --------------------------------------------------------------------------- handlers


def run_steer(
    ctx: AppContext,
    tab: Any,
    form: SteerForm,
    session: Mapping | None,
    request: gr.Request | None,
) -> Iterator[dict]:
    """Stream both texts as they grow (the first token at once, then at most one update per
    ~75 ms); the last update adds the plots, views and status."""
    yield {tab.status: ""}  # the last run's message must not stand beside a new error
    with user_errors():
        req = form.request(ctx, session)
        first = True
        with ctx.job(request) as job:
            for texts, out in coalesce(steer_stream(ctx.model, req, should_stop=job)):
                if out is None:
                    update = {tab.baseline: texts[0], tab.steered: texts[1]}
                    if first:  # clear the previous answer's figures and files once
                        update |= {
                            tab.plot: generating_figure(),
                            tab.tokens_baseline: "",
                            tab.tokens_steered: "",
                            tab.status: "Generating…",
                            tab.run_json: None,
                            tab.run_csv: None,
                        }
                        first = False
                    yield update
                    continue
                base_html, steered_html = token_views(out)
                recorded = req.vector.strength
                line = status_line(out, req.strengths[0], recorded, job.timed_out())
                shown = {
                    tab.baseline: out.baseline.text,
                    tab.steered: out.steered[0].text,
                    tab.plot: layer_figure(out, req),
                    tab.tokens_baseline: base_html,
                    tab.tokens_steered: steered_html,
                    tab.status: md(line, 600),
                }
                # Everything on screen at once; the log-probabilities' teacher-forced pass
                # (30-45 % of the generation's compute) then adds the hovers and the files.
                scoring = ctx.settings.score_logprobs and not job()
                hint = " · scoring log-probabilities…" if scoring else ""
                yield shown | {tab.status: md(line + hint, 600)}
                logprobs = answer_logprobs(ctx, req, out, job) if scoring else None
                if logprobs is not None:
                    base_html, steered_html = token_views(out, logprobs)
                json_path, csv_path = ctx.exports.write_run(
                    run_json(out, form.settings(req), logprobs), projections_csv(out)
                )
                yield shown | {
                    tab.tokens_baseline: base_html,
                    tab.tokens_steered: steered_html,
                    # Plain paths, so an API client receives the files themselves.
                    tab.run_json: str(json_path),
                    tab.run_csv: str(csv_path),
                }


def run_strength_sweep(
    ctx: AppContext,
    tab: Any,
    form: SteerForm,
    session: Mapping | None,
    request: gr.Request | None,
    progress: Any,
) -> Iterator[dict]:
    """One batch at -2, 1, 2 and 4 x the strength (plus the baseline at 0)."""
    with user_errors():
        limits = ctx.settings.limits
        unit = check_strength(form.strength, limits)
        if unit == 0:
            _, vec = ctx.catalog.view(session).resolve_fitting(form.persona)
            unit = ctx.default_strength(vec)
        strengths = tuple(
            m * unit for m in SWEEP_MULTIPLIERS if abs(m * unit) <= limits.max_abs_strength
        )
        req = form.request(ctx, session, strengths)
        total = req.sampling.max_new_tokens
        out = None
        with ctx.job(request) as job:
            stream = steer_stream(ctx.model, req, should_stop=job)
            for step, (_, update) in enumerate(stream, start=1):
                progress((min(step, total), total), desc="Generating", unit="tokens")
                out = update
                if out is None:
                    yield {tab.sweep_plot: gr.skip()}  # a chance for Stop to end the sweep
        assert out is not None
        at = req.layers[0]
        rows = sorted(out.rows, key=lambda r: r.strength)
        yield {
            tab.sweep_plot: strength_strip_figure(
                [r.strength for r in rows], [r.layer_projection[at] for r in rows], at
            ),
            tab.sweep_table: [
                [round(r.strength, 3), round(r.layer_projection[at], 3), r.text] for r in rows
            ],
        }


STEER_DOC = """Generate the baseline and the steered answer to one prompt, side by side.

Streams both texts as they grow (at most one update per ~75 ms); the last update adds the
per-layer projection plot, the per-token views, the status line and the run's JSON and CSV
files."""

SWEEP_DOC = """The same prompt at -2, 1, 2 and 4 x the strength (plus the baseline), in one
batch: the projection at the steered layer and each answer."""
