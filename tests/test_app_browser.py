"""The app in a real browser (Debian's chromium driven by Playwright), as a person uses it.

Skipped where /usr/bin/chromium is missing, except on CI (``CI=true``), where that fails.
Screenshots of each tab go to ``test-output/``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
import torch

from persona_explorer.dev.devserver import MILD, STRONG, shared_server
from tests.browser_support import TIMEOUT_MS, require_chromium, screenshot, set_number

pytestmark = pytest.mark.e2e

require_chromium(module_level=True)  # the whole module needs Playwright and the browser

from playwright.sync_api import Page, expect  # noqa: E402


def open_app(page: Page, query: str = "") -> None:
    page.goto(shared_server().url + query)
    page.get_by_role("tab", name="Steer", exact=True).click()  # the app opens on its Tour
    expect(page.locator("#pe-generate")).to_be_visible()
    # demo.load has run once the share link is filled in.
    expect(page.locator("#pe-share textarea")).to_have_value(re.compile(r"\?prompt="))


def choose(page: Page, dropdown: str, label: str) -> None:
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=re.compile(re.escape(label))).first.click()


# Gradio's status trackers stay in the page when idle, made transparent: what counts is what
# a person can see (no transparent ancestor, a size on screen).
SEEN_TRACKERS_JS = """(selector) => Array.from(document.querySelectorAll(selector)).filter(el => {
  const box = el.getBoundingClientRect();
  if (!box.width || !box.height) return false;
  for (let e = el; e; e = e.parentElement) {
    const style = getComputedStyle(e);
    if (style.opacity === "0" || style.visibility === "hidden" || style.display === "none")
      return false;
  }
  return true;
}).map(el => (el.closest("[id^=pe-]") || {}).id || "?")"""


def seen(page: Page, selector: str) -> list[str]:
    """The elem_ids of the blocks holding visible elements that match ``selector``."""
    return page.evaluate(SEEN_TRACKERS_JS, selector)


def error_badges(page: Page) -> list[str]:
    return seen(page, "[data-testid='status-tracker'] .error")


def progress_indicators(page: Page) -> list[str]:
    """Where progress shows, once it does (trackers fade in)."""
    deadline = time.monotonic() + 10
    while not (found := _progress_indicators(page)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def _progress_indicators(page: Page) -> list[str]:
    return seen(
        page,
        "[data-testid='status-tracker'] .progress-text, [data-testid='status-tracker'] .eta-bar",
    )


def options(page: Page, dropdown: str, label: str) -> int:
    """How many of a dropdown's choices match ``label``."""
    page.locator(f"{dropdown} input").click()
    count = page.get_by_role("option", name=re.compile(re.escape(label))).count()
    page.keyboard.press("Escape")
    return count


def test_steer_shows_both_answers_and_the_plot(page: Page) -> None:
    open_app(page)
    page.locator("#pe-prompt textarea").fill("What would you do with a free afternoon?")
    choose(page, "#pe-persona", f"{STRONG} · built-in")
    # Picking a persona loads its recommended layer and strength.
    expect(page.locator("#pe-layer input[type=number]")).to_have_value("12")
    expect(page.locator("#pe-strength input[type=number]")).to_have_value("4")
    page.get_by_text("Generation settings").click()
    set_number(page, "#pe-max-new-tokens", "16")
    page.locator("#pe-generate").click()

    expect(page.locator("#pe-status")).to_contain_text("tok/s", timeout=TIMEOUT_MS)
    baseline = page.locator("#pe-baseline textarea").input_value()
    steered = page.locator("#pe-steered textarea").input_value()
    assert baseline.strip() and steered.strip() and baseline != steered
    expect(page.locator("#pe-plot .js-plotly-plot")).to_be_visible()
    expect(page.locator("#pe-plot")).to_contain_text("injected at 12")
    expect(page.locator("#pe-tokens-steered .pe-tok").first).to_be_visible()

    share = page.locator("#pe-share textarea").input_value()
    params = parse_qs(urlparse(share).query)
    assert params["persona"] == [f"builtin:{STRONG}"]
    assert params["layer"] == ["12"] and params["strength"] == ["4"]
    page.locator("#pe-plot").scroll_into_view_if_needed()
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "steer")


def test_share_link_reopens_the_same_settings(page: Page) -> None:
    query = "?" + urlencode(
        {"prompt": "Shared question", "persona": f"builtin:{MILD}", "layer": 7, "strength": -1.5}
    )
    open_app(page, query)
    expect(page.locator("#pe-prompt textarea")).to_have_value("Shared question")
    expect(page.locator("#pe-layer input[type=number]")).to_have_value("7")
    expect(page.locator("#pe-strength input[type=number]")).to_have_value("-1.5")
    expect(page.locator("#pe-persona input")).to_have_value(re.compile(MILD))


def test_extract_a_small_custom_persona_with_progress(page: Page) -> None:
    open_app(page)
    page.get_by_role("tab", name="Extract").click()
    page.get_by_label("Write your own").check()
    expect(page.locator("#pe-custom-name textarea, #pe-custom-name input")).to_be_visible()
    page.locator("#pe-custom-name input, #pe-custom-name textarea").first.fill("shanty")
    for selector, value in (("#pe-n-questions", "2"), ("#pe-extract-tokens", "6")):
        box = page.locator(f"{selector} input[type=number]")
        box.fill(value)
        box.press("Enter")
    page.locator("#pe-extract").click()

    # One progress bar (Gradio's status tracker with our description), on the summary.
    progress = page.locator("#pe-extract-summary .progress-text")
    expect(progress.first).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#pe-extract-summary")).to_contain_text(
        "Recommended layer", timeout=TIMEOUT_MS
    )
    expect(page.locator("#pe-extract-summary")).to_contain_text("strength")
    expect(page.locator("#pe-separation .js-plotly-plot")).to_be_visible()
    expect(page.locator("#pe-examples")).to_contain_text("coffee")
    expect(page.locator("#pe-download")).to_be_visible()
    # Long answers wrap inside columns that share the width (no column squeezed to a word).
    cell = page.locator("#pe-examples [role=gridcell] span").first
    assert cell.evaluate("e => getComputedStyle(e).whiteSpace") not in ("nowrap", "pre")
    grid = page.locator("#pe-examples [role=grid]")
    widths = [
        page.locator(f"#pe-examples [role=gridcell][data-col='{c}']").first.bounding_box()["width"]
        for c in range(3)
    ]
    assert min(widths) > 0.15 * sum(widths)
    assert grid.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
    screenshot(page, "extract")

    page.locator("#pe-try").click()
    expect(page.get_by_role("tab", name="Steer")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#pe-persona input")).to_have_value(re.compile("shanty"))


def test_upload_a_vector_and_compare_it(page: Page, tmp_path: Path) -> None:
    path = tmp_path / "seafarer_response_avg_diff.pt"
    torch.save(torch.randn(31, 576), path)  # persona_vectors layout for a 30-layer model
    open_app(page)
    page.get_by_role("tab", name="Library").click()
    expect(page.locator("#pe-library-table")).to_contain_text(MILD)
    page.locator("#pe-upload input[type=file]").set_input_files(str(path))
    expect(page.locator("#pe-library-status")).to_contain_text("Added seafarer")
    expect(page.locator("#pe-library-table")).to_contain_text("seafarer")
    expect(page.locator("#pe-library-selected input")).to_have_value(re.compile("seafarer"))
    # A file is written only when asked for; GGUF says in its label that it drops layer 0.
    expect(page.locator("#pe-library-download")).not_to_contain_text("seafarer")
    page.locator("#pe-library-export").click()
    expect(page.locator("#pe-library-download")).to_contain_text("seafarer.safetensors")
    page.get_by_label("llama.cpp control vector (.gguf)").check()
    expect(page.locator("#pe-library-download")).not_to_contain_text("seafarer")
    page.locator("#pe-library-export").click()
    expect(page.locator("#pe-library-download")).to_contain_text("seafarer.gguf (without layer 0)")
    expect(page.locator("#pe-heatmap")).to_contain_text("seafarer")
    time.sleep(0.5)  # let the heatmap finish its transition before the screenshot
    screenshot(page, "library")


def test_save_rename_and_delete_in_the_library(page: Page, tmp_path: Path) -> None:
    path = tmp_path / "lighthouse.pt"
    torch.save(torch.randn(30, 576), path)
    open_app(page)
    page.get_by_role("tab", name="Library").click()
    page.locator("#pe-layout").get_by_label("assistant-axis").check()
    page.locator("#pe-upload input[type=file]").set_input_files(str(path))
    status = page.locator("#pe-library-status")
    expect(status).to_contain_text("Added lighthouse")

    page.locator("#pe-library-save").click()
    expect(status).to_contain_text("Saved lighthouse to the library")
    expect(page.locator("#pe-library-selected input")).to_have_value("lighthouse · library")
    # The saved copy replaces the session one: listed once.
    assert options(page, "#pe-library-selected", "lighthouse") == 1

    page.locator("#pe-new-name textarea, #pe-new-name input").first.fill("Beacon")
    page.locator("#pe-rename").click()
    expect(status).to_contain_text("Renamed lighthouse to Beacon")
    expect(page.locator("#pe-library-table")).to_contain_text("Beacon")

    page.locator("#pe-delete").click()
    page.locator("#pe-confirm-delete").click()
    expect(status).to_contain_text("Deleted Beacon")
    expect(page.locator("#pe-library-table")).not_to_contain_text("Beacon")
    expect(page.locator("#pe-library-table")).not_to_contain_text("lighthouse")
    # Nothing is selected after a delete, and the actions wait for a new selection.
    expect(page.locator("#pe-library-selected input")).to_have_value("")
    for button in ("#pe-rename", "#pe-delete", "#pe-library-save", "#pe-library-export"):
        expect(page.locator(button)).to_be_disabled()
    choose(page, "#pe-library-selected", f"{MILD} · built-in")
    expect(page.locator("#pe-rename")).to_be_enabled()


def test_a_failed_library_action_shows_a_toast_and_no_error_badge(
    page: Page, tmp_path: Path
) -> None:
    path = tmp_path / "anchor_response_avg_diff.pt"
    torch.save(torch.randn(31, 576), path)
    open_app(page)
    page.get_by_role("tab", name="Library").click()
    page.locator("#pe-upload input[type=file]").set_input_files(str(path))
    status = page.locator("#pe-library-status")
    expect(status).to_contain_text("Added anchor")
    choose(page, "#pe-library-selected", f"{MILD} · built-in")
    page.locator("#pe-new-name textarea, #pe-new-name input").first.fill("renamed")
    page.locator("#pe-rename").click()
    expect(page.locator(".toast-body.error")).to_contain_text("read-only")
    time.sleep(0.5)  # a badge, if any, is drawn with the toast
    assert error_badges(page) == []
    expect(status.get_by_test_id("markdown")).to_have_text(
        ""
    )  # the upload's message was not this one's


def test_a_failed_extraction_leaves_no_badge_and_no_stale_buttons(page: Page) -> None:
    open_app(page)
    page.get_by_role("tab", name="Extract").click()
    page.get_by_label("Write your own").check()
    page.locator("#pe-custom-questions textarea").fill("")
    page.locator("#pe-extract").click()
    expect(page.locator(".toast-body.error")).to_contain_text("at least one question")
    expect(page.locator("#pe-extract-summary")).to_contain_text("did not finish")
    assert error_badges(page) == []
    expect(page.locator("#pe-try")).to_be_hidden()
    expect(page.locator("#pe-save")).to_be_hidden()


def test_a_running_extraction_can_be_stopped(page: Page) -> None:
    open_app(page)
    page.get_by_role("tab", name="Extract").click()
    page.locator("#pe-extract").click()  # the default: a built-in trait, 40 answers
    progress = page.locator("#pe-extract-summary .progress-text")
    expect(progress.first).to_be_visible(timeout=TIMEOUT_MS)
    # One progress bar for one job: the summary's, none on the plot or the table.
    assert progress_indicators(page) == ["pe-extract-summary"]
    started = time.monotonic()
    page.locator("#pe-extract-stop").click()
    expect(page.locator("#pe-extract-summary")).to_contain_text("stopped")
    expect(progress.first).to_be_hidden(timeout=30_000)
    assert time.monotonic() - started < 30
    # The server is free again: a steer request goes through at once.
    page.get_by_role("tab", name="Steer").click()
    page.locator("#pe-generate").click()
    expect(page.locator("#pe-status")).to_contain_text("tok/s", timeout=TIMEOUT_MS)


def test_a_vector_copied_without_its_assistant_axis_component(page: Page) -> None:
    """Issue 26: the Library shows a vector's component along the Assistant Axis and makes a
    copy without it, which then steers like any other vector."""
    open_app(page)
    page.get_by_role("tab", name="Library").click()
    choose(page, "#pe-library-selected", "pirate · built-in")
    expect(page.locator("#pe-library-axis-info")).to_contain_text("cos", timeout=TIMEOUT_MS)
    page.locator("#pe-remove-axis").click()
    status = page.locator("#pe-library-status")
    expect(status).to_contain_text("(axis removed)", timeout=TIMEOUT_MS)
    expect(page.locator("#pe-library-selected input")).to_have_value(
        re.compile(r"^pirate \(axis removed\)")
    )
    page.get_by_role("tab", name="Steer", exact=True).click()
    assert options(page, "#pe-persona", "pirate (axis removed)") == 1
