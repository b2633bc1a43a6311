"""The Tour in a real browser: every step clicked on a desktop window and on a phone-sized one
(390×844), each showing its output in words and a plotly plot; the page never scrolls
sideways on the phone; "Open this in its tab" carries the steering step's settings to Steer.

The shared test server has its own built-in vectors (no *evil*): steps 5 and 6 show the
results shipped in ``assets/tour``, which need none. Generated words are never checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from persona_explorer.dev.devserver import shared_server
from persona_explorer.ui.tour.handlers import STEER_PROMPT
from persona_explorer.ui.tour.steps import STEPS, step_choices
from tests.browser_support import TIMEOUT_MS, screenshot

pytestmark = pytest.mark.e2e

VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}
DONE = re.compile(r"Computed live|Precomputed with the same code|Read from the replays shipped")


@pytest.fixture(params=list(VIEWPORTS))
def sized_page(request: pytest.FixtureRequest, browser: Browser) -> Iterator[tuple[str, Page]]:
    width, height = VIEWPORTS[request.param]
    phone = request.param == "phone"
    context = browser.new_context(
        viewport={"width": width, "height": height}, is_mobile=phone, has_touch=phone
    )
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield request.param, page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def no_sideways_scroll(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert width <= 1, f"the page is {width} px wider than the window"


def test_every_tour_step_shows_its_output_and_plot(sized_page: tuple[str, Page]) -> None:
    name, page = sized_page
    page.goto(shared_server().url)
    # The Tour is the tab a plain page load opens, on step 1 with its map already drawn.
    expect(page.locator("#pe-tour-steps")).to_be_visible()
    expect(page.locator("#pe-tour-output")).to_contain_text("characters")
    expect(page.locator("#pe-tour-plot .js-plotly-plot")).to_be_visible()
    for i, (label, key) in enumerate(step_choices(), start=1):
        note = page.locator("#pe-tour-note")
        if i > 1:
            page.locator("#pe-tour-steps label", has_text=label).click()
        # The step's own text (its first plain words) arrives with the start of its run.
        opening = STEPS[i - 1].text.split("** ", 1)[1][:30]
        expect(page.locator("#pe-tour-text")).to_contain_text(opening)
        expect(note).to_contain_text(DONE, timeout=TIMEOUT_MS)
        expect(page.locator("#pe-tour-output")).to_contain_text(re.compile(r"\d"))
        expect(page.locator("#pe-tour-plot .js-plotly-plot")).to_be_visible()
        if key in ("screen", "train", "drift"):  # shipped: said so, with "Run it live"
            expect(note).to_contain_text(re.compile("Precomputed|shipped"))
            expect(page.locator("#pe-tour-live")).to_be_visible()
        if name == "phone":
            no_sideways_scroll(page)
        screenshot(page, f"tour-{name}-{i}-{key}")


def test_open_the_steering_step_in_steer(page: Page) -> None:
    page.goto(shared_server().url)
    page.locator("#pe-tour-steps label", has_text=step_choices()[1][0]).click()
    expect(page.locator("#pe-tour-note")).to_contain_text("Computed live", timeout=TIMEOUT_MS)
    expect(page.locator("#pe-tour-link a")).to_have_attribute("href", re.compile(r"\?prompt="))
    page.locator("#pe-tour-open").click()
    expect(page.locator("#pe-prompt textarea")).to_have_value(STEER_PROMPT)
    expect(page.locator("#pe-generate")).to_be_visible()
