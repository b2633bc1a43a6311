"""The app held in one hand: a 390×844 phone window, touch input, Debian's chromium.

Four things a phone user met (issue 24): the model badge widened the page, most tabs hid
behind Gradio's "…" menu, the plot toolbar covered plot titles after a touch, and Steer's
answers came only after the share link. Each has a check here, and one check at 1280×800 that
the desktop layout (controls left, answers right) stays as it was. Screenshots go to
``test-output/``.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from persona_explorer.dev.devserver import shared_server
from tests.browser_support import TIMEOUT_MS, require_chromium, screenshot

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.e2e
require_chromium(module_level=True)

from playwright.sync_api import expect  # noqa: E402 (only where chromium is installed)

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
# The app's own tab bar (the Drift tab holds a tab bar of its own).
TAB_BUTTONS = "#pe-tabs > .tab-wrapper [role=tab]"
OVERFLOW_MENU = "#pe-tabs > .tab-wrapper .overflow-menu"

# Elements whose right edge passes the window's, leaving out those inside something that
# scrolls or clips within the window (a wide table in its own scroller is fine).
STICKING_OUT_JS = """() => {
  const W = window.innerWidth, root = document.querySelector('.gradio-container');
  const out = [];
  for (const e of root.querySelectorAll('*')) {
    const r = e.getBoundingClientRect();
    if (!(r.width > 0 && r.height > 0 && r.right > W + 1)) continue;
    let held = false;
    for (let a = e.parentElement; a && a !== root; a = a.parentElement) {
      if (getComputedStyle(a).overflowX !== 'visible' && a.getBoundingClientRect().right <= W + 1) {
        held = true;
        break;
      }
    }
    const name = `${e.tagName.toLowerCase()}.${e.getAttribute('class') || ''}`;
    if (!held) out.push(`${name} → ${Math.round(r.right)} px`);
  }
  return out;
}"""


def tab_labels(url: str) -> list[str]:
    """The labels of the app's top-level tabs, in order, from the server's config (the page
    shows only the selected tab's panel, so the page alone cannot say how many there are)."""
    with urllib.request.urlopen(url + "config", timeout=30) as resp:
        config = json.load(resp)
    components = {c["id"]: c for c in config["components"]}

    def find(node: dict) -> dict | None:
        comp = components.get(node["id"], {})
        if comp.get("type") == "tabs" and comp.get("props", {}).get("elem_id") == "pe-tabs":
            return node
        for child in node.get("children", []):
            found = find(child)
            if found is not None:
                return found
        return None

    tabs = find(config["layout"])
    assert tabs is not None, "no #pe-tabs in the app's layout"
    items = [components[child["id"]] for child in tabs.get("children", [])]
    return [
        c["props"]["label"]
        for c in items
        if c.get("type") == "tabitem" and c["props"].get("visible", True) not in (False, "hidden")
    ]


@contextlib.contextmanager
def app_window(browser: Browser, viewport: dict[str, int], *, touch: bool) -> Iterator[Page]:
    """The app in a fresh window of ``viewport``; fails if any JavaScript error happened."""
    context = browser.new_context(viewport=viewport, has_touch=touch)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(shared_server().url)
        page.get_by_role("tab", name="Steer", exact=True).click()  # the app opens on its tour
        expect(page.locator("#pe-generate")).to_be_visible()
        expect(page.locator("#pe-share textarea")).to_have_value(re.compile(r"\?prompt="))
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def generate(page: Page) -> None:
    page.locator("#pe-generate").click()
    expect(page.locator("#pe-status")).to_contain_text("tokens in", timeout=TIMEOUT_MS)
    expect(page.locator("#pe-plot .js-plotly-plot .gtitle")).to_be_visible()


def box(page: Page, selector: str) -> dict[str, float]:
    found = page.locator(selector).first.bounding_box()
    assert found is not None, f"{selector} is not on the page"
    return {
        "left": found["x"],
        "top": found["y"],
        "right": found["x"] + found["width"],
        "bottom": found["y"] + found["height"],
    }


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    across = a["left"] < b["right"] and b["left"] < a["right"]
    return across and a["top"] < b["bottom"] and b["top"] < a["bottom"]


@pytest.fixture(scope="module")
def phone(browser: Browser) -> Iterator[Page]:
    """One phone window for the module, after one generation on the Steer tab."""
    with app_window(browser, PHONE, touch=True) as page:
        generate(page)
        yield page


@pytest.fixture(scope="module")
def labels() -> list[str]:
    return tab_labels(shared_server().url)


# --------------------------------------------------------------------------- the phone


def test_every_tab_is_on_the_bar_not_in_a_menu(phone: Page, labels: list[str]) -> None:
    assert len(labels) >= 8, labels
    buttons = phone.locator(TAB_BUTTONS)
    expect(buttons).to_have_count(len(labels))
    assert [b.strip() for b in buttons.all_inner_texts()] == labels
    expect(phone.locator(OVERFLOW_MENU)).to_be_hidden()
    width = PHONE["width"]
    for i, label in enumerate(labels):
        button = buttons.nth(i)
        expect(button).to_be_visible()
        where = box(phone, f"{TAB_BUTTONS} >> nth={i}")
        # Whole, on screen, and not squeezed into an ellipsis.
        assert where["left"] >= 0 and where["right"] <= width, (label, where)
        assert button.evaluate("b => b.scrollWidth <= b.clientWidth + 1"), label
    # The bar stays within the first screen: the tabs are what a visitor reads first.
    assert box(phone, f"{TAB_BUTTONS} >> nth=-1")["bottom"] < PHONE["height"] / 2


def test_no_tab_is_wider_than_the_phone(phone: Page, labels: list[str]) -> None:
    width = PHONE["width"]
    header = box(phone, ".pe-model")
    assert header["right"] <= width, f"the model badge ends at {header['right']:.0f} px"
    try:
        for label in labels:
            phone.get_by_role("tab", name=label, exact=True).click()
            expect(phone.get_by_role("tab", name=label, exact=True)).to_have_attribute(
                "aria-selected", "true"
            )
            phone.wait_for_timeout(300)  # plots size themselves after the tab shows
            scroll = phone.evaluate("document.scrollingElement.scrollWidth")
            assert scroll <= width, f"{label}: the page is {scroll} px wide"
            wide = phone.evaluate(STICKING_OUT_JS)
            assert not wide, f"{label}: past the right edge: {wide[:5]}"
    finally:
        phone.get_by_role("tab", name="Steer", exact=True).click()


def test_the_answers_follow_generate_before_the_share_link(phone: Page) -> None:
    generate_button = box(phone, "#pe-generate")
    baseline = box(phone, "#pe-baseline")
    steered = box(phone, "#pe-steered")
    share = box(phone, "#pe-share")
    settings = box(phone, "#pe-generation-settings")
    assert generate_button["bottom"] <= baseline["top"], (generate_button, baseline)
    # Right after it: no more than the Stop button and a gap or two in between.
    assert baseline["top"] - generate_button["bottom"] < 150, (generate_button, baseline)
    for later, name in ((share, "share link"), (settings, "generation settings")):
        assert baseline["bottom"] <= later["top"], f"the {name} comes before the answers"
        assert steered["bottom"] <= later["top"], f"the {name} comes before the answers"
    # One above the other, each the screen's width, rather than two narrow columns.
    assert steered["top"] >= baseline["bottom"] - 1
    screenshot(phone, "phone-steer-after-generate")


def test_the_plot_toolbar_leaves_the_title_free(phone: Page) -> None:
    plot = phone.locator("#pe-plot .js-plotly-plot")
    plot.scroll_into_view_if_needed()
    # A touch on the plot area brings plotly's toolbar up (as a hover does with a mouse).
    drag = phone.locator("#pe-plot .nsewdrag").first
    drag.tap()
    group = phone.locator("#pe-plot .modebar-group").first
    expect(group).to_have_css("opacity", "1")
    toolbar = box(phone, "#pe-plot .modebar")
    assert toolbar["right"] - toolbar["left"] > 50, toolbar
    texts = phone.locator("#pe-plot .gtitle, #pe-plot .legendtext")
    assert texts.count() >= 1
    for i in range(texts.count()):
        text = texts.nth(i)
        where = box(phone, f"#pe-plot .gtitle, #pe-plot .legendtext >> nth={i}")
        assert not overlap(toolbar, where), (text.text_content(), toolbar, where)
    # And the figure is not cut off below to make room for the toolbar.
    figure = box(phone, "#pe-plot .svg-container")
    assert figure["bottom"] <= box(phone, "#pe-plot")["bottom"] + 1


# --------------------------------------------------------------------------- the desktop


def test_the_desktop_keeps_the_answers_beside_the_controls(browser: Browser) -> None:
    with app_window(browser, DESKTOP, touch=False) as page:
        prompt = box(page, "#pe-prompt")
        generate_button = box(page, "#pe-generate")
        baseline = box(page, "#pe-baseline")
        steered = box(page, "#pe-steered")
        # Answers on the right, side by side, level with the top of the controls.
        assert baseline["left"] >= prompt["right"], (prompt, baseline)
        assert steered["left"] >= baseline["right"] - 1, (baseline, steered)
        assert abs(baseline["top"] - prompt["top"]) < 40, (prompt, baseline)
        # The generation settings and the share link right under Generate, in the left column.
        for selector in ("#pe-generation-settings", "#pe-share"):
            below = box(page, selector)
            assert below["top"] >= generate_button["bottom"], selector
            assert below["right"] <= baseline["left"], selector
            assert below["top"] - generate_button["bottom"] < 300, (selector, below)
        # One row of tabs, no "…" menu, and nothing wider than the window.
        count = page.locator(TAB_BUTTONS).count()
        tops = {round(box(page, f"{TAB_BUTTONS} >> nth={i}")["top"]) for i in range(count)}
        assert len(tops) == 1, tops
        expect(page.locator(OVERFLOW_MENU)).to_be_hidden()
        assert page.evaluate("document.scrollingElement.scrollWidth") <= DESKTOP["width"]
        screenshot(page, "desktop-steer")
