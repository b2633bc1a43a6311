"""``build_app`` builds on a thread that ends (so the server's main thread owns no OpenMP pool)
and hands back what was built, or the error, on the caller's thread."""

from __future__ import annotations

import threading

import pytest

import persona_explorer.ui as ui
from persona_explorer.core.config import Settings


def test_the_app_is_built_on_a_thread_that_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[threading.Thread] = []

    def fake_build(settings: Settings) -> str:
        seen.append(threading.current_thread())
        return "demo"

    monkeypatch.setattr(ui, "build_demo", fake_build)
    monkeypatch.setattr(ui, "configure_queue", lambda demo, settings: f"queued {demo}")
    assert ui.build_app(Settings()) == "queued demo"
    assert seen and seen[0] is not threading.main_thread() and not seen[0].is_alive()


def test_a_failed_build_raises_on_the_callers_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(settings: Settings) -> None:
        raise RuntimeError("no model here")

    monkeypatch.setattr(ui, "build_demo", broken)
    with pytest.raises(RuntimeError, match="no model here"):
        ui.build_app(Settings())
