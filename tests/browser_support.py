"""What every browser test shares: Debian's chromium driven by Playwright, and screenshots.

The ``browser`` and ``page`` fixtures (``tests/conftest.py``) come from here. Without
/usr/bin/chromium the browser tests are skipped, except on CI (``CI=true``), where that fails:
``.ci/run`` installs it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from persona_explorer.dev.devserver import REPO

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "test-output"
TIMEOUT_MS = 120_000


def require_chromium(module_level: bool = False) -> None:
    """Skip (or, on CI, fail) the calling test, or the whole module at import with
    ``module_level``, when the browser is missing."""
    if CHROMIUM.exists():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{CHROMIUM} is missing on CI: apt-get install -y chromium", pytrace=False)
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=module_level)


@contextlib.contextmanager
def launched_browser() -> Iterator[Browser]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def checked_page(browser: Browser) -> Iterator[Page]:
    """A fresh page (1440x1000); the test fails if any JavaScript error happened on it."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield pg
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def screenshot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def set_number(page: Page, selector: str, value: str) -> None:
    """Type ``value`` into the number box of the component ``selector`` (as a person does)."""
    box = page.locator(f"{selector} input[type=number]")
    box.fill(value)
    box.press("Enter")
