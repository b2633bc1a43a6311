"""engine.threads' priorities and names: the web layer yields the CPU to the engine thread."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from persona_explorer.engine import threads as omp

T = TypeVar("T")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread nice and names are Linux's"
)


def _on_thread(fn: Callable[[], T]) -> T:
    """``fn()`` run on a fresh thread."""
    out: dict[str, T] = {}

    def body() -> None:
        out["value"] = fn()

    t = threading.Thread(target=body)
    t.start()
    t.join(30)
    return out["value"]


def test_a_thread_that_yields_lowers_only_itself_and_the_threads_it_starts() -> None:
    main_before = omp.nice_of(threading.get_native_id())

    def serving() -> tuple[int, int, int]:
        mine = omp.yield_cpu(3)
        child = _on_thread(lambda: omp.nice_of(threading.get_native_id()))
        return mine, child, omp.nice_of(threading.get_native_id())

    mine, child, again = _on_thread(serving)
    assert mine == min(19, main_before + 3) == child == again
    assert omp.nice_of(threading.get_native_id()) == main_before  # the caller's is untouched
    assert omp.yield_cpu(0) == main_before  # 0: no change


def test_a_named_thread_shows_its_name_in_proc() -> None:
    def named() -> str:
        omp.name_thread("pe-test-a-very-long-name")
        tid = threading.get_native_id()
        return Path(f"/proc/{os.getpid()}/task/{tid}/comm").read_text().strip()

    assert _on_thread(named) == "pe-test-a-very-"  # Linux keeps 15 bytes
