"""Streamed updates are coalesced in time (``ui.shared.streaming``), and the Steer handler uses
it: fewer updates than tokens, the first at once, the final complete result always sent."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from persona_explorer.engine.model import LoadedModel
from persona_explorer.ui.shared import streaming
from persona_explorer.ui.shared.streaming import coalesce
from persona_explorer.ui.steer import handlers
from persona_explorer.ui.steer import tab as steer
from tests.tiny_models import tiny_app_context


class FakeClock:
    """Advances ``step`` seconds each time it is read (one read per partial item)."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def partials(n: int) -> list[tuple[list[str], str | None]]:
    return [([f"t{i}"], None) for i in range(n)] + [([f"t{n}"], "done")]


def test_coalesce_sends_the_first_then_one_per_interval_and_always_the_last() -> None:
    # 20 ms per step, 75 ms between updates: every 4th partial goes out (80 ms >= 75 ms).
    out = list(coalesce(partials(12), every_s=0.075, clock=FakeClock(0.020)))
    assert out[0] == (["t0"], None)  # the first token is not held back
    assert [t[0] for t, _ in out[:-1]] == ["t0", "t4", "t8"]
    assert out[-1] == (["t12"], "done")  # the final item, with its result, always
    # Slow steps (over the interval): nothing is dropped.
    assert list(coalesce(partials(5), every_s=0.075, clock=FakeClock(0.1))) == partials(5)
    # every_s <= 0 passes every item through; a stream of only the result still ends with it.
    assert list(coalesce(partials(5), every_s=0)) == partials(5)
    assert list(coalesce([(["x"], 1)], clock=FakeClock(0.001))) == [(["x"], 1)]


def test_the_steer_handler_coalesces_and_ends_with_the_full_result(
    llama: LoadedModel, tmp_path: Path, one_thread: None, monkeypatch
) -> None:
    ctx = tiny_app_context(llama, tmp_path, {"tiny-pirate": 2.0}, default_persona="tiny-pirate")
    with gr.Blocks():
        tab = steer.build(ctx, gr.State({}))
    form = steer.SteerForm("Hi!", "tiny-pirate", layer=2, strength=2.0, max_new_tokens=12)
    reference_run = list(steer.run_steer(ctx, tab, form, None, None))

    # A clock that never moves: only the first partial and the final update go out.
    monkeypatch.setattr(streaming.time, "monotonic", lambda: 0.0)
    thinned = list(handlers.run_steer(ctx, tab, form, None, None))
    # The cleared status, the first texts, the result on screen, then the same with the
    # log-probabilities (hovers and files) from the teacher-forced pass after it (issue 26).
    assert len(thinned) == 4
    assert tab.run_json not in thinned[2] and "scoring log" in thinned[2][tab.status]
    first = thinned[1]
    assert first[tab.plot] is handlers.generating_figure() and first[tab.status] == "Generating…"
    assert len(thinned) <= len(reference_run)
    final, reference = thinned[-1], reference_run[-1]
    assert tab.status in final and final[tab.run_json] and final[tab.run_csv]
    # Greedy: the same answers as when every update is sent, complete in the final update.
    assert final[tab.baseline] == reference[tab.baseline]
    assert final[tab.steered] == reference[tab.steered]
    assert final[tab.tokens_steered] == reference[tab.tokens_steered]
