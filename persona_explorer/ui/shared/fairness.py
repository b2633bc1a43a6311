"""Fair use of the model: whose heavy job runs next, and how many one visitor may have waiting.

Gradio's queue is first come, first served: a script that submits fifty steering jobs would
make every other visitor wait behind all of them. :func:`limit_jobs_per_visitor` wraps the
queue's ``push`` (where a job enters the queue) for the heavy events (steering, sweeps,
extraction: the concurrency ids in :data:`HEAVY`) and does three things:

* **Caps.** A visitor is a browser session: it may have ``max_pending`` heavy jobs waiting or
  running. A script can invent a session per call, so one network address may have
  ``max_per_address`` of them: far more than one visitor's (a class of thirty behind one
  school address still gets in), but a bound on what one machine can pile up.
* **Fair order.** Each heavy queue is kept sorted by :func:`fair_order`: a job's place is the
  number of jobs its session already has ahead of it, or its address's count divided by
  :data:`ADDRESS_SHARE`, whichever is larger; ties go by arrival. So everybody's first job
  comes before anybody's second, and fifty sessions from one address advance only
  ``ADDRESS_SHARE`` jobs per round: another visitor waits behind a few jobs, never fifty.
* **A message that arrives.** Gradio answers a refused ``push`` with HTTP 503, which its page
  shows as "This application is currently busy" and gradio_client as "Queue is full!": our
  text never reached either. A refused job is therefore accepted and completed at once with
  the refusal as its error (:func:`_finish_with_error`), exactly as a ``gr.Error`` raised by
  the handler would be: the page shows it in a toast, gradio_client raises it as ``AppError``.

The address is the connection's peer unless ``trusted_hops`` proxies stand in front of the app:
each appends the address it saw to ``X-Forwarded-For``, so the client's address is the
``trusted_hops``-th entry **from the right**. Entries further left were written by the client
and are never read (:func:`client_address`).

This reads attributes of Gradio's queue (``push``, ``event_ids_to_events``,
``event_queue_per_concurrency_id``, ``send_message``, ``broadcast_estimations``, present in
Gradio 5 and 6); :func:`limit_jobs_per_visitor` checks them at start and a test pins them, so an
upgrade that changes them fails loudly instead of silently dropping the limit.

Imports: gradio only.
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, TypeVar

import gradio as gr
from gradio.server_messages import ProcessCompletedMessage
from gradio.utils import error_payload

__all__ = [
    "ADDRESS_SHARE",
    "HEAVY",
    "client_address",
    "fair_order",
    "limit_jobs_per_visitor",
    "refusal",
]

HEAVY = frozenset({"generation", "extraction"})  # the concurrency ids of model-bound events
ADDRESS_SHARE = 4  # one address advances as fast as this many separate visitors
_QUEUE_ATTRIBUTES = (
    "push",
    "event_ids_to_events",
    "event_queue_per_concurrency_id",
    "send_message",
    "broadcast_estimations",
)

T = TypeVar("T")


def _forwarded_for(headers: Any) -> list[str]:
    """Every ``X-Forwarded-For`` entry, left to right (a request may carry the header twice)."""
    getlist = getattr(headers, "getlist", None)
    values = getlist("x-forwarded-for") if callable(getlist) else [headers.get("x-forwarded-for")]
    entries = [e.strip() for v in values if v for e in str(v).split(",")]
    return [e for e in entries if e]


def client_address(request: Any, trusted_hops: int) -> str:
    """The address a job is counted against: the connection's peer, or with ``trusted_hops``
    proxies in front, the entry the outermost of them added to ``X-Forwarded-For`` (the
    ``trusted_hops``-th from the right). What the client wrote itself is further left and
    ignored; a header shorter than expected gives its leftmost entry, which a proxy wrote."""
    if request is None:
        return "?"
    if trusted_hops > 0:
        entries = _forwarded_for(getattr(request, "headers", None) or {})
        if entries:
            return entries[-min(trusted_hops, len(entries))][:64]
    client = getattr(request, "client", None)
    return str(getattr(client, "host", "?"))


def refusal(
    session: str | None,
    address: str,
    pending: Iterable[tuple[str | None, str]],
    max_pending: int,
    max_per_address: int,
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
    if same_address >= max_per_address:
        return (
            f"Your network address already has {same_address} jobs waiting or running (the "
            f"limit is {max_per_address}): wait for some to finish."
        )
    return None


def fair_order(
    waiting: Sequence[T],
    running: Iterable[T],
    visitor: Callable[[T], tuple[Hashable, Hashable]],
    share: int = ADDRESS_SHARE,
) -> list[T]:
    """``waiting`` (in arrival order) in the order to run them.

    ``visitor(job)`` is its (session, address). A job's rank is how many jobs its session has
    running or ahead of it, or its address's count divided by ``share`` if that is larger;
    the sort is stable, so equal ranks keep their arrival order.
    """
    sessions: Counter = Counter()
    addresses: Counter = Counter()
    for job in running:
        session, address = visitor(job)
        sessions[session] += 1
        addresses[address] += 1
    ranked = []
    for job in waiting:
        session, address = visitor(job)
        ranked.append((max(sessions[session], addresses[address] / share), job))
        sessions[session] += 1
        addresses[address] += 1
    return [job for _, job in sorted(ranked, key=lambda pair: pair[0])]


def _finish_with_error(queue: Any, event_id: str, message: str) -> None:
    """Take the just-queued event out again and complete it with ``message`` as its error:
    what Gradio does when a handler raises ``gr.Error``, so the page and clients show it."""
    event = queue.event_ids_to_events.pop(event_id, None)
    if event is None:
        return
    waiting = queue.event_queue_per_concurrency_id[event.concurrency_id].queue
    if event in waiting:
        waiting.remove(event)
    output = error_payload(gr.Error(message, title="Please wait"), True)
    queue.send_message(event, ProcessCompletedMessage(output=output, success=False))


def limit_jobs_per_visitor(
    demo: gr.Blocks,
    max_pending: int,
    max_per_address: int,
    trusted_hops: int = 0,
    share: int = ADDRESS_SHARE,
) -> None:
    """Install the caps and the fair order on ``demo``'s queue (call after ``demo.queue()``)."""
    queue = demo._queue
    missing = [name for name in _QUEUE_ATTRIBUTES if not hasattr(queue, name)]
    if missing:
        raise RuntimeError(f"This Gradio version's queue has no {', '.join(missing)}")
    original: Callable[..., Any] = queue.push
    arrival: dict[str, int] = {}  # event id -> arrival number, for heavy events
    counter = itertools.count()

    def visitor(event: Any) -> tuple[str | None, str]:
        return event.session_hash, client_address(event.request, trusted_hops)

    def heavy_events() -> list[Any]:
        return [
            e
            for e in list(queue.event_ids_to_events.values())
            if getattr(e.fn, "concurrency_id", None) in HEAVY
        ]

    def reorder(concurrency_id: str) -> None:
        live = set(queue.event_ids_to_events)
        for stale in [k for k in arrival if k not in live]:
            del arrival[stale]
        waiting = queue.event_queue_per_concurrency_id[concurrency_id].queue
        ids = {id(e) for e in waiting}
        running = [
            e for e in heavy_events() if e.concurrency_id == concurrency_id and id(e) not in ids
        ]
        in_arrival = sorted(waiting, key=lambda e: arrival.get(e._id, -1))
        # No await since the push: the queue cannot have changed under us.
        waiting[:] = fair_order(in_arrival, running, visitor, share)
        queue.broadcast_estimations(concurrency_id)

    @functools.wraps(original)
    async def push(body: Any, request: Any, username: Any) -> Any:
        fn_index = getattr(body, "fn_index", None)
        fn = demo.fns.get(fn_index) if fn_index is not None else None
        if fn is None or fn.concurrency_id not in HEAVY:
            return await original(body, request, username)
        why = refusal(
            getattr(body, "session_hash", None),
            client_address(request, trusted_hops),
            [visitor(e) for e in heavy_events()],
            max_pending,
            max_per_address,
        )
        ok, event_id, state = await original(body, request, username)
        if not ok or not isinstance(event_id, str) or event_id not in queue.event_ids_to_events:
            return ok, event_id, state
        if why is not None:
            _finish_with_error(queue, event_id, why)
        else:
            arrival[event_id] = next(counter)
            reorder(fn.concurrency_id)
        return ok, event_id, state

    queue.push = push
