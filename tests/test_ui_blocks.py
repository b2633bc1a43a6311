"""LeanBlocks (ui.shared.blocks) against Gradio's own postprocessing, for the pinned Gradio."""

from __future__ import annotations

import asyncio

import gradio as gr
from gradio.state_holder import SessionState

from persona_explorer.ui.shared.blocks import NO_CHANGE, LeanBlocks


def _app(cls: type[gr.Blocks]) -> tuple[gr.Blocks, list, object]:
    with cls() as demo:
        outs = [
            gr.Textbox(),
            gr.Textbox(),
            gr.Plot(),
            gr.HTML(),
            gr.Markdown(),
            gr.DownloadButton("file"),
        ]
        gr.Button().click(lambda: None, None, outs)
    return demo, outs, demo.fns[0]


def _post(cls: type[gr.Blocks], update: dict[int, object]) -> tuple[list, dict]:
    demo, outs, fn = _app(cls)
    state = SessionState(demo)
    before = {b._id: state[b._id].constructor_args for b in outs}
    got = asyncio.run(demo.postprocess_data(fn, {outs[i]: v for i, v in update.items()}, state))
    after = {b._id: state[b._id].constructor_args for b in outs}
    return got, {"before": before, "after": after}


def test_a_partial_update_sends_the_named_outputs_as_gradio_does_and_no_change_for_the_rest():
    update = {0: "hello", 1: "<b>world</b>"}
    lean, lean_state = _post(LeanBlocks, update)
    plain, _ = _post(gr.Blocks, update)
    assert lean[:2] == plain[:2] == ["hello", "<b>world</b>"]
    assert lean[2:] == [NO_CHANGE] * 4
    # Gradio's own answer for a left-out output is also a property update with nothing in it.
    for sent in plain[2:]:
        assert sent["__type__"] == "update"
        assert not {k: v for k, v in sent.items() if k not in ("__type__", "props")}
        assert not {k: v for k, v in sent.get("props", {}).items() if k != "__type__"}
    assert lean_state["before"] == lean_state["after"]  # nothing rebuilt, nothing changed


def test_a_whole_update_and_an_explicit_skip_take_gradios_own_path():
    whole = {0: "a", 1: "b", 2: None, 3: "<i>x</i>", 4: "**y**", 5: None}
    assert _post(LeanBlocks, whole)[0] == _post(gr.Blocks, whole)[0]
    with_skip = {0: "a", 3: gr.skip(), 4: gr.update(value="z")}
    assert _post(LeanBlocks, with_skip)[0][:1] == _post(gr.Blocks, with_skip)[0][:1]
    lean, plain = _post(LeanBlocks, with_skip)[0], _post(gr.Blocks, with_skip)[0]
    assert lean[3] == plain[3] and lean[4] == plain[4]
