"""Forms: the widget values of one action as a small dataclass, and the endpoint made from it.

A form dataclass lists an action's inputs once: their names (which are also the public API's
parameter names), types and defaults. :func:`form_endpoint` turns a module-level handler that
takes ``(form, session, ...)`` into the function Gradio calls, whose signature is the form's
fields plus ``session`` (and ``progress`` when asked): Gradio reads that signature for the API
page and for ``gradio_client``'s keyword arguments, so the two cannot drift apart, and two
actions on the same widgets (Steer and the strength sweep) share one form instead of repeating
ten positional arguments.

Imports: gradio and the standard library only.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import gradio as gr

__all__ = ["form_endpoint"]

F = TypeVar("F")
_KIND = inspect.Parameter.POSITIONAL_OR_KEYWORD


def _parameters(form: type) -> list[inspect.Parameter]:
    params = []
    for f in dataclasses.fields(form):
        default = f.default if f.default is not dataclasses.MISSING else inspect.Parameter.empty
        params.append(inspect.Parameter(f.name, _KIND, default=default, annotation=f.type))
    return params


def form_endpoint(
    form: type[F],
    run: Callable[..., Iterator[Any]],
    *,
    name: str,
    doc: str,
    progress: bool = False,
    request: bool = False,
    states: tuple[str, ...] = (),
) -> Callable[..., Iterator[Any]]:
    """A streaming Gradio handler ``name(<form fields>..., session=None[, <states>...]
    [, request][, progress])`` that builds ``form`` from its arguments and yields from
    ``run(form, session[, <states>...][, request][, progress])``. ``states``: the names of
    further ``gr.State`` inputs after the session (what a tab keeps between events; not part of
    the API)."""
    params = _parameters(form)
    params.append(inspect.Parameter("session", _KIND, default=None, annotation="dict | None"))
    for state in states:
        params.append(inspect.Parameter(state, _KIND, default=None, annotation="Any"))
    if request:
        # Gradio passes the caller's request (its session hash) to a parameter typed gr.Request.
        params.append(inspect.Parameter("request", _KIND, default=None, annotation=gr.Request))
    if progress:
        # Gradio injects a live progress tracker where a parameter defaults to gr.Progress().
        params.append(
            inspect.Parameter("progress", _KIND, default=gr.Progress(), annotation=gr.Progress)
        )
    signature = inspect.Signature(params)

    def handler(*args: Any, **kwargs: Any) -> Iterator[Any]:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        session = values.pop("session")
        kept = [values.pop(k) for k in states]
        extra = [values.pop(k) for k in ("request", "progress") if k in values]
        yield from run(form(**values), session, *kept, *extra)

    handler.__signature__ = signature  # type: ignore[attr-defined]
    handler.__annotations__ = {p.name: p.annotation for p in params}
    handler.__name__ = handler.__qualname__ = name
    handler.__doc__ = doc
    return handler
