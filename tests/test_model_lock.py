"""The model's FIFO lock: concurrent requests take turns per forward pass."""

from __future__ import annotations

import threading
import time

from persona_explorer.engine.model import FairLock


def test_waiters_get_the_lock_in_arrival_order() -> None:
    lock = FairLock()
    order: list[int] = []
    lock.__enter__()  # hold it while the waiters line up
    threads = []
    for i in range(5):
        t = threading.Thread(target=lambda i=i: _take(lock, order, i))
        t.start()
        threads.append(t)
        time.sleep(0.05)  # arrival order 0, 1, 2, ...
    lock.__exit__(None, None, None)
    for t in threads:
        t.join(timeout=5)
    assert order == [0, 1, 2, 3, 4]


def test_a_releasing_thread_cannot_jump_the_queue() -> None:
    lock = FairLock()
    log: list[str] = []
    started = threading.Event()

    def greedy() -> None:
        for _ in range(3):
            with lock:
                log.append("greedy")
                started.set()
                time.sleep(0.05)

    def polite() -> None:
        started.wait()
        with lock:
            log.append("polite")

    threads = [threading.Thread(target=greedy), threading.Thread(target=polite)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    # The waiting thread is served before the greedy one's second and third turns.
    assert log.index("polite") < 3


def _take(lock: FairLock, order: list[int], i: int) -> None:
    with lock:
        order.append(i)


def test_the_holder_may_take_it_again_and_others_still_wait() -> None:
    lock = FairLock()
    log: list[str] = []
    with lock:
        with lock:  # re-entry by the same thread does not deadlock
            log.append("inner")
        t = threading.Thread(target=lambda: _take_and_log(lock, log))
        t.start()
        time.sleep(0.1)
        assert log == ["inner"]  # one exit of two: still held
    t.join(timeout=5)
    assert log == ["inner", "other"]


def _take_and_log(lock: FairLock, log: list[str]) -> None:
    with lock:
        log.append("other")
