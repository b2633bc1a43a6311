"""What every generating form shares: its prompt and sampling fields checked into typed values
(with the rules of :mod:`persona_explorer.core.limits`), and Stop for the session's running job.

Used by the Steer, Compare, capping, Drift and Persona space forms, so that no tab imports
another for them. Imports: gradio, ``core.limits``, ``steering.generation`` and the context.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from persona_explorer.core.limits import (
    DEFAULT_FREQUENCY_PENALTY,
    Limits,
    check_max_new_tokens,
    check_penalty,
    check_seed,
    check_temperature,
    check_text,
)
from persona_explorer.steering.generation import SamplingConfig
from persona_explorer.ui.shared.context import AppContext

DEFAULT_MAX_NEW_TOKENS = 48
AUTO_READOUT = -1  # the read-out layer box's "right after the injection"


def prompt_and_system(limits: Limits, prompt: Any, system: Any) -> tuple[str, str | None]:
    """A form's prompt (required) and system prompt (None when empty), checked."""
    text = check_text(prompt, "prompt", limits.max_prompt_chars, required=True)
    system_text = check_text(system, "system prompt", limits.max_prompt_chars, required=False)
    return text, system_text or None


def sampling(
    limits: Limits,
    max_new_tokens: Any,
    temperature: Any,
    seed: Any,
    frequency_penalty: Any = DEFAULT_FREQUENCY_PENALTY,
) -> SamplingConfig:
    """The sampling settings of a form, checked against the limits in force."""
    return SamplingConfig(
        max_new_tokens=check_max_new_tokens(max_new_tokens, limits),
        temperature=check_temperature(temperature, limits),
        seed=check_seed(seed),
        frequency_penalty=check_penalty(frequency_penalty),
        max_prompt_tokens=limits.max_prompt_tokens,
    )


def stop_runs(ctx: AppContext, request: gr.Request | None) -> str:
    """Ask this session's running steer or sweep to stop after the current step."""
    asked = ctx.jobs.stop(request.session_hash if request is not None else None)
    return "Stopping…" if asked else "Nothing is running."
