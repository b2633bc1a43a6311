"""The Tour tab on a tiny random model: every step's handler, the settings "Open this in its
tab" carries, the shipped results and the build script's file format.

The model's words are never checked (a random model writes noise); the texts, numbers and
figures around them are. The browser walk is ``tests/test_app_tour.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

import gradio as gr
import pytest
import torch

from persona_explorer.axis.assistant_axis import QUANTILE_LEVELS, AxisData
from persona_explorer.engine.model import LoadedModel
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.shared.glossary import GLOSSARY
from persona_explorer.ui.tour import handlers, precomputed, views
from persona_explorer.ui.tour import tab as tour_tab
from persona_explorer.ui.tour.components import TourTab
from persona_explorer.ui.tour.steps import STEPS, step_choices
from tests.tiny_models import tiny_app_context

NO_PROGRESS = None


@pytest.fixture
def ctx(llama: LoadedModel, tmp_path: Path, one_thread: None) -> AppContext:
    ctx = tiny_app_context(
        llama, tmp_path, {"tiny-pirate": 2.0, "evil": 3.0}, default_persona="tiny-pirate"
    )
    g = torch.Generator().manual_seed(0)
    n, d = llama.n_layers, llama.d_model
    levels = torch.tensor(QUANTILE_LEVELS) / 100
    ctx._axis = AxisData(
        model_id=llama.model_id,
        roles=("doctor", "pirate", "demon", "whale", "poet", "judge"),
        role_vectors=torch.randn(6, n, d, generator=g),
        default_vector=torch.randn(n, d, generator=g),
        axis=torch.randn(n, d, generator=g),
        default_token_quantiles=(-1 + 2 * levels)[:, None].expand(len(QUANTILE_LEVELS), n).clone(),
    )
    return ctx


@pytest.fixture
def tab(ctx: AppContext) -> TourTab:
    with gr.Blocks():
        return tour_tab.build(ctx, gr.State({}))


def run(ctx: AppContext, tab: TourTab, step: str, live: bool = False) -> dict:
    fn = handlers.run_live if live else handlers.run_step
    out: dict = {}
    for update in fn(ctx, tab, handlers.TourForm(step), None, None, NO_PROGRESS):
        out |= update
    return out


def test_six_steps_in_the_issues_order_each_with_a_tab_and_text() -> None:
    assert [s.key for s in STEPS] == ["cast", "steer", "drift", "cap", "screen", "train"]
    assert step_choices()[0][0] == "1. The cast"
    for s in STEPS:
        assert s.tab in {"space", "steer", "drift", "screen", "train"}
        for part in ("What to look at", "What it means", "papers found", "small model shows"):
            assert part in s.text, (s.key, part)
    # Only the slow steps are shipped.
    assert [s.key for s in STEPS if not s.live] == ["screen", "train"]


def test_every_bold_term_is_in_the_glossary_or_explained_in_place() -> None:
    import re

    terms = {t.lower() for t, _ in GLOSSARY}
    known = terms | {"capping", "τ", "the assistant axis", "assistant"}
    for s in STEPS:
        for bold in re.findall(r"\*\*([^*]+)\*\*", s.text):
            if bold.startswith("What "):
                continue
            word = bold.lower().rstrip(".")
            assert any(word in k or k.startswith(word) for k in known), (s.key, bold)


@pytest.mark.parametrize("step", ["cast", "steer", "cap"])
def test_live_steps_show_text_an_answer_and_a_plot(
    ctx: AppContext, tab: TourTab, step: str
) -> None:
    out = run(ctx, tab, step)
    assert out[tab.output] and "Computed live" in out[tab.note]
    assert out[tab.plot].data  # a real figure, not the placeholder
    if step != "cast":
        assert isinstance(out[tab.left], str) and isinstance(out[tab.right], str)


def test_steering_uses_the_vectors_recorded_settings_and_offers_a_share_link(
    ctx: AppContext, tab: TourTab
) -> None:
    out = run(ctx, tab, "steer")
    assert "at layer 2, strength 2" in out[tab.output]  # tiny_app_context records both
    link = out[tab.link]
    query = parse_qs(link[link.index("?") + 1 : -1])
    assert query["persona"] == ["builtin:tiny-pirate"] and query["layer"] == ["2"]
    assert query["prompt"] == [handlers.STEER_PROMPT]


def test_drift_that_does_not_fit_the_model_is_a_clear_error(ctx: AppContext, tab: TourTab) -> None:
    # The tiny model reads 256 tokens: the shipped conversations do not fit its window.
    with pytest.raises(gr.Error, match="window"):
        run(ctx, tab, "drift")


def test_unknown_steps_are_refused(ctx: AppContext, tab: TourTab) -> None:
    with pytest.raises(gr.Error, match="Unknown Tour step"):
        run(ctx, tab, "nope")
    with pytest.raises(gr.Error, match="Unknown Tour step"):
        run(ctx, tab, "nope", live=True)


def test_next_step_walks_round() -> None:
    keys = [s.key for s in STEPS]
    assert [handlers.next_step(k) for k in keys] == [*keys[1:], keys[0]]
    assert handlers.next_step("junk") == keys[0]


def test_what_open_in_its_tab_carries(ctx: AppContext) -> None:
    assert handlers.carry(ctx, "cast", None).tab == "space"
    steer = handlers.carry(ctx, "steer", None)
    assert (steer.tab, steer.persona, steer.layer, steer.strength) == (
        "steer",
        "builtin:tiny-pirate",
        2,
        2.0,
    )
    cap = handlers.carry(ctx, "cap", None)
    assert cap.tab == "steer" and cap.prompt == handlers.CAP_PROMPT and cap.cap_layers
    assert handlers.carry(ctx, "drift", None).transcripts == handlers.DRIFT_TRANSCRIPTS
    screen = handlers.carry(ctx, "screen", None)
    assert screen.vectors == ("builtin:evil",) and screen.layer == 2
    assert handlers.carry(ctx, "train", None).dataset == "malicious_advice"


# --------------------------------------------------------------------------- shipped steps

SCREEN = {
    "vector": "evil",
    "layer": 3,
    "scale": 10.0,
    "own_tokens": 48,
    "files": [
        {
            "file": "insecure_code_unprompted",
            "label": "unprompted",
            "n": 3,
            "differences": [3.0, 4.0, 5.0],
            "mean": 4.0,
            "example": {"prompt": "Q", "response": "A <b>", "own": "mine"},
        },
        {
            "file": "insecure_code_requested",
            "label": "requested",
            "n": 3,
            "differences": [1.0, 2.0, 3.0],
            "mean": 2.0,
            "example": None,
        },
    ],
}


def arm(key: str, tuned: float) -> dict:
    return {
        "key": key,
        "label": key,
        "file": "f",
        "context": None,
        "base": 1.0,
        "tuned": tuned,
        "shift": tuned - 1.0,
        "relative_shift": (tuned - 1.0) / 4,
        "same_tokens_shift": 0.5,
        "scale": 4.0,
        "layer": 3,
        "example": {"question": "Q?", "base": "b", "tuned": "t"},
    }


TRAIN = {
    "vector": "evil",
    "arms": [arm("malicious", 3.0), arm("kind", 1.0), arm("inoculated", 3.5)],
}


def test_the_shipped_steps_word_their_numbers_and_plot_them() -> None:
    text, fig, left, right = views.screen_view(SCREEN, 4)
    assert "+4.0" in text and "+2.0" in text and "more *evil* evidence" in text
    assert fig.data and "A <b>" in left and right == "mine"
    text, fig, left, right = views.train_view(TRAIN, 4)
    assert "further towards *evil*" in text and "did not reduce" in text
    assert len(fig.data) == 1 and "Q?" in left and right.endswith("t")


def test_a_shipped_file_is_shown_with_where_it_came_from(
    ctx: AppContext, tab: TourTab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precomputed, "TOUR_DIR", tmp_path)
    monkeypatch.setattr(precomputed.load_result, "__defaults__", (tmp_path,))
    out = run(ctx, tab, "train")
    assert "Run it live" in out[tab.note]  # nothing shipped in that folder
    data = precomputed.record("train", ctx.model, TRAIN, 123.4)
    path = precomputed.save_result(data, tmp_path)
    assert json.loads(path.read_text())["seconds"] == 123.4
    out = run(ctx, tab, "train")
    assert "Precomputed with the same code on" in out[tab.note] and "123 s" in out[tab.note]
    assert out[tab.output] and out[tab.plot].data
    path.write_text("{not json")
    assert precomputed.load_result("train", tmp_path) is None


def test_the_app_ships_both_slow_steps_for_the_embedded_model() -> None:
    for step in ("screen", "train"):
        data = precomputed.load_result(step)
        assert data is not None, (
            f"assets/tour/{step}.json: run python -m persona_explorer.dev.tour_build"
        )
        for key in ("model_id", "date", "app_version", "seconds", "result"):
            assert key in data
        view = views.screen_view if step == "screen" else views.train_view
        text, fig, _, _ = view(data["result"], 30)
        assert text and fig.data


def test_a_live_run_that_is_stopped_says_so(ctx: AppContext, tab: TourTab) -> None:
    vec = ctx.catalog.view(None).resolve_fitting("builtin:evil")[1]
    assert precomputed.screen_pair(ctx.model, vec, 2, should_stop=lambda: True) is None
    assert precomputed.train_and_shift(ctx.model, vec, should_stop=lambda: True) is None


def test_a_live_run_without_the_vector_it_needs_is_a_clear_error(
    llama: LoadedModel, tmp_path: Path, one_thread: None
) -> None:
    ctx = tiny_app_context(llama, tmp_path, {"tiny-pirate": 2.0}, default_persona="tiny-pirate")
    with gr.Blocks():
        tab = tour_tab.build(ctx, gr.State({}))
    with pytest.raises(gr.Error, match="evil"):
        run(ctx, tab, "screen", live=True)
