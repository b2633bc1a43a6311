"""The app's ``gr.Blocks``: Gradio's own, minus one cost of streaming.

When a handler's update names only some of its event's outputs (``{component: value}``, as every
streamed update here does: the two texts grow while the plot, views, status and files wait for the
end), Gradio 6 fills each output left out with a bare ``{"__type__": "update"}`` and then treats
that as a property update: it builds a new instance of the component from its constructor
arguments and rewrites the session's copy of its config, only to send "no change" to the browser.
That is about 0.5 ms per output left out, 4 ms per update of the Steer tab, on the interpreter
lock the decoding engine and every other visitor's page share; with a class streaming at once it
was most of the web layer's work.

:class:`LeanBlocks` sends the outputs an update leaves out as the same "no change" without
building anything: Gradio postprocesses only the outputs the update names (unchanged code path),
and the others are put back in their places. An explicit ``gr.skip()`` or ``gr.update(...)`` for
a component still goes through Gradio's own path. ``tests/test_ui_blocks.py`` checks the result
against Gradio's for the pinned version.

Imports: gradio.
"""

from __future__ import annotations

import copy
from typing import Any

import gradio as gr
from gradio.blocks import Block

__all__ = ["NO_CHANGE", "LeanBlocks"]

NO_CHANGE: dict[str, str] = {"__type__": "update"}


class LeanBlocks(gr.Blocks):
    """``gr.Blocks`` whose partial updates cost only the outputs they name (module docstring)."""

    async def postprocess_data(self, block_fn: Any, predictions: Any, state: Any) -> list[Any]:
        if (
            isinstance(predictions, dict)
            and predictions
            and all(isinstance(key, Block) for key in predictions)
        ):
            named = {key._id for key in predictions}
            outputs = list(block_fn.outputs)
            if named < {block._id for block in outputs}:
                narrowed = copy.copy(block_fn)
                narrowed.outputs = [block for block in outputs if block._id in named]
                done = iter(await super().postprocess_data(narrowed, predictions, state))
                return [next(done) if block._id in named else dict(NO_CHANGE) for block in outputs]
        return await super().postprocess_data(block_fn, predictions, state)
