"""Fair use of the model: how many heavy jobs one visitor may have queued or running.

Gradio's queue is first come, first served with one global size: a script that submits fifty
steering jobs would make every other visitor wait behind all of them, or find the queue full.
:func:`limit_jobs_per_visitor` wraps the queue's ``push`` (where a job enters the queue) and
refuses a heavy job (steering, sweeps, extraction: the events with the concurrency ids below)
from a visitor who already has ``max_pending`` of them waiting or running. The refusal is
Gradio's own "queue full" answer with our message, shown to the visitor as an error.

A visitor is a browser session; since a script can invent a new session for every call, the
jobs from one network address are capped too (at a multiple of the per-session cap, so that a
few people behind one address still get in). Behind Hugging Face's proxy the address is the
first ``X-Forwarded-For`` hop, trusted only in public mode (on a Space).

This reads two attributes of Gradio's queue (``push`` and ``event_ids_to_events``, present in
Gradio 5 and 6); :func:`limit_jobs_per_visitor` checks them at start and a test pins them, so an
upgrade that changes them fails loudly instead of silently dropping the limit.

Imports: gradio only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import gradio as gr

__all__ = ["HEAVY", "PER_ADDRESS_FACTOR", "limit_jobs_per_visitor"]

HEAVY = frozenset({"generation", "extraction"})  # the concurrency ids of model-bound events
PER_ADDRESS_FACTOR = 4


def _address(request: Any, trust_forwarded: bool) -> str:
    if request is None:
        return "?"
    headers = getattr(request, "headers", None) or {}
    if trust_forwarded:
        forwarded = headers.get("x-forwarded-for", "")
        if forwarded:
            return forwarded.split(",")[0].strip()
    client = getattr(request, "client", None)
    return str(getattr(client, "host", "?"))


def refusal(
    session: str | None,
    address: str,
    pending: Iterable[tuple[str | None, str]],
    max_pending: int,
) -> str | None:
    """Why a new heavy job from (``session``, ``address``) is refused, or None.

    ``pending``: (session, address) of every heavy job already waiting or running.
    """
    mine = same_address = 0
    for other_session, other_address in pending:
        mine += session is not None and other_session == session
        same_address += other_address == address
    if mine >= max_pending:
        return (
            f"You already have {mine} jobs waiting or running (the limit is {max_pending}): "
            "wait for one to finish, or press Stop."
        )
    if same_address >= max_pending * PER_ADDRESS_FACTOR:
        return (
            f"Your network address already has {same_address} jobs waiting or running: wait "
            "for some to finish."
        )
    return None


def limit_jobs_per_visitor(demo: gr.Blocks, max_pending: int, trust_forwarded: bool) -> None:
    """Install the per-visitor limit on ``demo``'s queue (call after ``demo.queue()``)."""
    queue = demo._queue
    if not hasattr(queue, "push") or not hasattr(queue, "event_ids_to_events"):
        raise RuntimeError("This Gradio version's queue has no push/event_ids_to_events")
    original: Callable[..., Any] = queue.push

    def heavy_jobs() -> list[tuple[str | None, str]]:
        return [
            (e.session_hash, _address(e.request, trust_forwarded))
            for e in list(queue.event_ids_to_events.values())
            if getattr(e.fn, "concurrency_id", None) in HEAVY
        ]

    @functools.wraps(original)
    async def push(body: Any, request: Any, username: Any) -> Any:
        fn_index = getattr(body, "fn_index", None)
        fn = demo.fns.get(fn_index) if fn_index is not None else None
        if fn is not None and fn.concurrency_id in HEAVY:
            why = refusal(
                getattr(body, "session_hash", None),
                _address(request, trust_forwarded),
                heavy_jobs(),
                max_pending,
            )
            if why is not None:
                return False, why, "queue_full"
        return await original(body, request, username)

    queue.push = push
