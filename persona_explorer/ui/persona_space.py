"""Placeholder while the tab is built (issue 10); replaced by the real tab."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .context import AppContext


@dataclass
class Tab:
    pass


def build(ctx: AppContext, state: gr.State) -> Tab:
    gr.Markdown("Coming in this issue.")
    return Tab()
