"""Streamed text, sent at a pace the web layer can carry: at most one update every ~75 ms.

Every update a handler yields costs Gradio several milliseconds on the server (it rebuilds the
config of each output the update leaves alone, diffs, serializes and sends it) and the browser
a re-render, on the same few cores the model decodes on. Sent after every token, 48 updates
made one visitor's run about twice the engine's time; sent every ~75 ms, the text still flows
(a dozen updates a second) and the engine keeps its speed.

:func:`coalesce` thins a ``texts_then_result`` stream (``(texts, None)`` after every step, then
``(texts, result)``): the first texts at once (the first token is not delayed), then the latest
texts once ``every_s`` has passed since the last one sent, and always the final item. Nothing
upstream waits on it: the engine still checks Stop after every step, so Stop ends a run at its
next step as before; only what is *shown* between steps is thinned, and each update holds the
whole text so far, so nothing is lost.

Imports: the standard library only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Seconds between two streamed updates: well above a decoding step of the embedded model on two
# cores (12-20 ms), well below what reads as stutter.
STREAM_EVERY_S = 0.075


def coalesce(
    stream: Iterable[tuple[T, R | None]],
    every_s: float = STREAM_EVERY_S,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[tuple[T, R | None]]:
    """``stream``'s items with a result always, and partial ones at most once per ``every_s``
    (the first one at once). ``every_s <= 0`` passes every item through. (In the shared batch
    the engine already hands a reader updates further apart as more visitors decode:
    ``shared_batch.SharedBatch.reading_pace``.)"""
    last: float | None = None
    for texts, result in stream:
        if result is not None or every_s <= 0:
            yield texts, result
            continue
        now = clock()
        if last is None or now - last >= every_s:
            last = now
            yield texts, None
