"""Log-probabilities of each answer under its own model and the other column's (issue 26).

The math on the tiny random models: teacher forcing reproduces generation's own distribution
(greedy tokens are the argmax of their position under their own plan), a strength-0 plan scores
exactly like the baseline, and every (answer, plan) pair runs in one forced batch. Then where
the numbers show: the run JSON, the per-token view's hover and summary line, the Steer handler.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pytest
import torch

from persona_explorer.engine.model import LoadedModel
from persona_explorer.evaluate.compare import CompareRequest, SteerOutput, SteerRow, compare
from persona_explorer.evaluate.run_export import run_json, run_record
from persona_explorer.plots.tokens import (
    LOGPROB_NOTE,
    LogprobHover,
    logprob_summary,
    token_panels_html,
    token_projection_html,
)
from persona_explorer.steering import forced, logprobs
from persona_explorer.steering.generation import SamplingConfig
from persona_explorer.steering.logprobs import (
    LOGPROB_MEANING,
    AnswerLogprobs,
    answer_logprobs,
    other_row,
    own_and_other,
    run_logprobs,
)
from persona_explorer.steering.ops import Positions, RowPlan, add_plan
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.steer import handlers
from persona_explorer.ui.steer import tab as steer_tab
from persona_explorer.vectors.persona_vector import PersonaVector
from tests.tiny_models import tiny_app_context

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT, SYSTEM = "Tell me about the sea.", "Be brief."


def persona(model: LoadedModel, seed: int = 1) -> PersonaVector:
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(model.n_layers, model.d_model, generator=gen)
    return PersonaVector(name="pirate", vectors=rows, model_id=model.model_id)


def greedy_run(
    model: LoadedModel,
    strengths: tuple[float, ...] = (4.0,),
    positions: Positions = "all",
    tokens: int = 8,
) -> tuple[SteerOutput, list[RowPlan]]:
    """A greedy run with no frequency penalty (so the tokens are the raw argmax), and the
    plans generation used for its rows."""
    vec = persona(model)
    rows = tuple(SteerRow(vec, (1,), s) for s in strengths)
    cfg = SamplingConfig(max_new_tokens=tokens, stop_at_eos=False, frequency_penalty=0.0)
    out = compare(model, CompareRequest(PROMPT, rows, SYSTEM, positions, cfg))
    plans: list[RowPlan] = [()]
    plans += [add_plan(vec.vectors, (1,), s, positions) for s in strengths]
    return out, plans


def prompt_ids(model: LoadedModel) -> list[int]:
    return model.chat_ids(PROMPT, system=SYSTEM)


# --------------------------------------------------------------------------- the math


@pytest.mark.parametrize("positions", ["all", "response"])
def test_greedy_tokens_are_the_argmax_under_their_own_plan(
    decoded_model: LoadedModel, positions: Positions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Teacher forcing gives back generation's own distribution: at every position the token
    greedy decoding chose has the largest log-probability under the plan that chose it, and
    the number returned is that maximum."""
    model = decoded_model
    out, plans = greedy_run(model, positions=positions)
    answers = [row.tokens for row in out.rows]
    assert all(len(a) == 8 for a in answers)
    assert answers[0] != answers[1], "the vector should change the tiny model's answer"

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = forced._token_logprobs

    def spy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        seen.append((logits.float().cpu().clone(), targets.cpu().clone()))
        return real(logits, targets)

    monkeypatch.setattr(forced, "_token_logprobs", spy)
    scores = answer_logprobs(model, prompt_ids(model), answers, plans, [(0, 0), (1, 1)])
    assert scores is not None
    full = torch.log_softmax(torch.cat([lg for lg, _ in seen], dim=1), dim=-1)  # [2, width, V]
    targets = torch.cat([t for _, t in seen], dim=1)
    width = full.shape[1]
    for b, answer in enumerate(answers):
        # Row b is left-padded to the batch width; its answer fills the last len(answer)
        # columns, each predicted by the column before.
        cols = range(width - len(answer) - 1, width - 1)
        for t, col in enumerate(cols):
            assert int(targets[b, col]) == answer[t]
            assert int(full[b, col].argmax()) == answer[t], (b, t)
            assert scores[(b, b)][t] == pytest.approx(float(full[b, col].max()), abs=1e-5)
            assert scores[(b, b)][t] <= 0.0


def test_strength_zero_scores_exactly_like_the_baseline(llama: LoadedModel) -> None:
    out, plans = greedy_run(llama)
    vec = persona(llama)
    zero = add_plan(vec.vectors, (1,), 0.0, "all")
    answers = [row.tokens for row in out.rows]
    scores = answer_logprobs(llama, prompt_ids(llama), answers, [(), zero, plans[1]])
    assert scores is not None
    for a in range(2):
        assert scores[(a, 1)] == scores[(a, 0)]  # bit for bit
        assert scores[(a, 2)] != scores[(a, 0)]  # a real vector does change them
    # The steered answer is likelier under the model that wrote it, on average.
    assert sum(scores[(1, 2)]) > sum(scores[(1, 0)])


def test_every_pair_runs_in_one_forced_batch(
    llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, plans = greedy_run(llama, strengths=(4.0, -3.0))
    calls: list[int] = []
    real = logprobs.forced_pass

    def counting(model: LoadedModel, rows: list, *args: object, **kwargs: object) -> object:
        calls.append(len(rows))
        return real(model, rows, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(logprobs, "forced_pass", counting)
    scored = run_logprobs(llama, prompt_ids(llama), [r.tokens for r in out.rows], plans)
    assert scored is not None
    assert calls == [6]  # each of 3 answers under its own plan and the other column's
    assert [(s.row, s.other_row) for s in scored] == [(0, 1), (1, 0), (2, 0)]
    # The same numbers as scoring each pair on its own.
    alone = answer_logprobs(llama, prompt_ids(llama), [out.rows[2].tokens], [plans[2]])
    assert alone is not None
    assert scored[2].own == pytest.approx(tuple(alone[(0, 0)]), abs=1e-5)
    for s in scored:
        assert len(s.own) == len(s.other) == 8
        assert all(math.isfinite(v) and v <= 0 for v in (*s.own, *s.other))
        assert s.sum_own == pytest.approx(sum(s.own))
        assert s.mean_own == pytest.approx(sum(s.own) / 8)
        assert s.mean_other == pytest.approx(sum(s.other) / 8)


def test_other_column_pairs() -> None:
    assert [other_row(i, 3) for i in range(3)] == [1, 0, 0]
    assert other_row(0, 1) == 0  # a baseline alone compares with itself
    assert own_and_other(1) == [(0, 0)]
    assert own_and_other(2) == [(0, 0), (0, 1), (1, 1), (1, 0)]
    with pytest.raises(ValueError):
        other_row(3, 3)


def test_empty_answers_get_empty_lists_and_no_pass(
    llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = prompt_ids(llama)
    plans: list[RowPlan] = [(), add_plan(persona(llama).vectors, (1,), 3.0)]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing to score: no pass should run")

    with monkeypatch.context() as m:
        m.setattr(logprobs, "forced_pass", refuse)
        scored = run_logprobs(llama, ids, [[], []], plans)
    assert scored is not None
    for s in scored:
        assert s.own == s.other == () and s.sum_own == 0.0
        assert s.mean_own is None and s.mean_other is None
    # One empty answer beside a real one: only the real one is run.
    mixed = run_logprobs(llama, ids, [[], [5, 6, 7]], plans)
    assert mixed is not None
    assert mixed[0].own == () and len(mixed[1].own) == 3
    assert all(math.isfinite(v) for v in (*mixed[1].own, *mixed[1].other))


def test_bad_input_is_refused(llama: LoadedModel) -> None:
    with pytest.raises(ValueError, match="one plan per answer"):
        run_logprobs(llama, prompt_ids(llama), [[5]], [(), ()])
    with pytest.raises(ValueError, match="outside"):
        answer_logprobs(llama, prompt_ids(llama), [[5]], [()], [(1, 0)])
    with pytest.raises(ValueError, match="prompt"):
        answer_logprobs(llama, [], [[5]], [()])
    with pytest.raises(ValueError):
        AnswerLogprobs(row=0, other_row=1, own=(-1.0,), other=())


def test_a_stop_before_the_pass_ends_gives_none(
    llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, plans = greedy_run(llama, tokens=6)
    answers = [r.tokens for r in out.rows]
    ids = prompt_ids(llama)
    # The usual run fits one chunk of the pass: nothing to stop between.
    assert answer_logprobs(llama, ids, answers, plans, should_stop=lambda: True) is not None
    # In several chunks, Stop ends it between them, and no partial numbers come back.
    monkeypatch.setattr(forced, "PREFILL_CHUNK", 4)
    assert answer_logprobs(llama, ids, answers, plans, should_stop=lambda: True) is None


# --------------------------------------------------------------------------- the run JSON


def test_the_run_json_has_each_answers_logprobs(llama: LoadedModel) -> None:
    out, plans = greedy_run(llama, strengths=(4.0, -3.0))
    scored = run_logprobs(llama, prompt_ids(llama), [r.tokens for r in out.rows], plans)
    assert scored is not None
    record = json.loads(run_json(out, {"frequency_penalty": 1.0}, scored))
    assert record["logprobs_meaning"] == LOGPROB_MEANING
    assert "frequency" in record["logprobs_meaning"] and "raw" in record["logprobs_meaning"]
    for i, (row, s) in enumerate(zip(record["rows"], scored, strict=True)):
        lp = row["logprobs"]
        assert lp["own_row"] == i and lp["other_row"] == (1 if i == 0 else 0)
        assert lp["own_label"] == row["label"]
        assert lp["other_label"] == record["rows"][lp["other_row"]]["label"]
        assert [t["token"] for t in lp["tokens"]] == row["tokens"]
        assert [t["token_id"] for t in lp["tokens"]] == row["token_ids"]
        assert [t["logprob_own"] for t in lp["tokens"]] == pytest.approx(list(s.own))
        assert [t["logprob_other"] for t in lp["tokens"]] == pytest.approx(list(s.other))
        assert lp["sum_own"] == pytest.approx(s.sum_own)
        assert lp["mean_other"] == pytest.approx(s.mean_other)
    # Without logprobs the keys are there, empty.
    plain = run_record(out)
    assert plain["logprobs_meaning"] is None
    assert all(row["logprobs"] is None for row in plain["rows"])


def test_the_run_json_stays_strict_with_odd_logprobs(llama: LoadedModel) -> None:
    out, _ = greedy_run(llama, tokens=3)
    odd = [
        AnswerLogprobs(0, 1, (-1.0, float("nan"), float("-inf")), (-2.0, -3.0, -4.0)),
        AnswerLogprobs(1, 0, (-0.5, -0.25, -0.125), (float("inf"), -1.0, -1.0)),
    ]
    text = run_json(out, None, odd)
    record = json.loads(text)  # strict: allow_nan=False would have raised
    first = record["rows"][0]["logprobs"]
    assert [t["logprob_own"] for t in first["tokens"]] == [-1.0, None, None]
    assert first["sum_own"] is None and first["mean_other"] == pytest.approx(-3.0)
    with pytest.raises(ValueError, match="logprob"):
        run_record(out, None, odd[:1])
    with pytest.raises(ValueError, match="logprobs"):
        run_record(out, None, [odd[0], replace(odd[1], own=(-1.0,), other=(-1.0,))])


# --------------------------------------------------------------------------- the hover


def titles(html_text: str) -> list[str]:
    return re.findall(r'class="pe-tok" title="([^"]*)"', html_text)


def test_the_hover_gives_both_logprobs_and_says_what_they_are() -> None:
    hover = LogprobHover((-0.1234, -2.5), (-3.25, -0.75), "the steered model", "the baseline model")
    out = token_projection_html(["Ahoy", " matey"], [0.5, -0.25], logprobs=hover)
    first, second = titles(out)
    assert first.startswith("projection +0.500")
    assert "log p −0.123 under the steered model (this answer&#x27;s model)" in first
    assert "log p −3.250 under the baseline model" in first
    assert "log p −2.500" in second and "log p −0.750" in second
    assert LOGPROB_NOTE in first and "frequency penalty" in LOGPROB_NOTE
    summary = re.search(r'class="pe-logprob-summary"[^>]*>([^<]*)<', out)
    assert summary is not None
    assert "−1.31 under the model that wrote it (the steered model)" in summary.group(1)
    assert "−2.00 under the other column's (the baseline model)" in summary.group(1)
    assert "hover a token for its value and log-probabilities" in out
    # Without logprobs nothing changes.
    assert titles(token_projection_html(["a"], [0.5])) == ["+0.500"]


def test_hostile_hover_input() -> None:
    # Labels are escaped; non-finite numbers show as n/a (never NaN) and leave the mean.
    hover = LogprobHover(
        (float("nan"), -1.0), (float("-inf"), -2.0), '<b onclick="x">m</b>', "base"
    )
    out = token_projection_html(["a", "b"], [0.0, 1.0], logprobs=hover)
    assert "<b onclick" not in out and "nan" not in out.lower().replace("pe-", "")
    assert "log p n/a under &lt;b onclick" in titles(out)[0]
    assert "−1.00 under the model that wrote it" in logprob_summary(hover)
    # An empty answer: the panel says so, the summary too.
    empty = token_projection_html([], [], logprobs=LogprobHover((), (), "m", "n"))
    assert "No tokens to show" in empty and "no tokens to score" in empty
    for bad in (
        LogprobHover((-1.0,), (-1.0, -2.0), "m", "n"),  # lengths differ from the tokens
        LogprobHover(("-1",), (-1.0,), "m", "n"),  # type: ignore[arg-type]
        LogprobHover((True,), (-1.0,), "m", "n"),
        LogprobHover((-1.0,), (-1.0,), 3, "n"),  # type: ignore[arg-type]
        "not a hover",
    ):
        with pytest.raises(ValueError):
            token_projection_html(["a"], [1.0], logprobs=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="logprobs has 1"):
        token_panels_html([(["a"], [1.0], 0.0)] * 2, 1, logprobs=[None])


def test_panels_carry_each_rows_hover() -> None:
    rows = [(["a", "b"], [1.0, 2.0], 0.0), (["c"], [3.0], 0.5)]
    hovers = [
        LogprobHover((-1.0, -2.0), (-3.0, -4.0), "the baseline model", "the steered model"),
        None,
    ]
    base, steered = token_panels_html(rows, 2, shared_scale=True, logprobs=hovers)
    assert "under the baseline model (this answer" in titles(base)[0]
    assert "log p" not in steered and "pe-logprob-summary" not in steered


# --------------------------------------------------------------------------- the Steer tab


@pytest.fixture
def ctx(llama: LoadedModel, tmp_path: Path) -> AppContext:
    return tiny_app_context(llama, tmp_path, {"tiny-pirate": 2.0}, default_persona="tiny-pirate")


def test_generate_writes_logprobs_to_the_json_and_the_hovers(ctx: AppContext) -> None:
    with gr.Blocks():
        tab = steer_tab.build(ctx, gr.State({}))
    form = handlers.SteerForm("Hi!", "tiny-pirate", layer=1, strength=4.0, max_new_tokens=6)
    last = list(handlers.run_steer(ctx, tab, form, None, None))[-1]
    record = json.loads(Path(last[tab.run_json]).read_text())
    assert "penalt" in record["logprobs_meaning"]
    assert record["settings"]["frequency_penalty"] == 1.0
    for i, row in enumerate(record["rows"]):
        lp = row["logprobs"]
        assert lp["own_row"] == i and lp["other_row"] == 1 - i
        assert len(lp["tokens"]) == len(row["tokens"])
        assert all(t["logprob_own"] <= 0 and t["logprob_other"] <= 0 for t in lp["tokens"])
        assert lp["mean_own"] == pytest.approx(lp["sum_own"] / len(lp["tokens"]))
    for key, i in ((tab.tokens_baseline, 0), (tab.tokens_steered, 1)):
        hovers = titles(last[key])
        first = record["rows"][i]["logprobs"]["tokens"][0]
        assert f"log p {first['logprob_own']:.3f}".replace("-", "−") in hovers[0]
        assert "pe-logprob-summary" in last[key]
    assert "under the baseline model (this answer" in titles(last[tab.tokens_baseline])[0]
    assert "under the steered model (strength 4)" in titles(last[tab.tokens_baseline])[0]
    # The numbers are those of a direct call on the same run.
    req = form.request(ctx, None)
    direct = run_logprobs(
        ctx.model,
        ctx.model.chat_ids(req.prompt, system=req.system or None),
        [row["token_ids"] for row in record["rows"]],
        [(), add_plan(req.vector.vectors, req.layers, 4.0, req.positions)],
    )
    assert direct is not None
    got = [t["logprob_other"] for t in record["rows"][1]["logprobs"]["tokens"]]
    assert got == pytest.approx(list(direct[1].other), abs=1e-5)
