"""What a new user sees, in the real app: settings that travel, clear states, real API names,
the compare view, run downloads, and a phone-sized window.

The API checks use ``gradio_client``; the page checks drive Debian's chromium (skipped where it
is missing, except on CI). Screenshots go to ``test-output/`` to be looked at.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client

from persona_explorer.dev.devserver import MILD, REPO, STRONG, shared_server

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "test-output"
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def client() -> Client:
    return Client(shared_server().url, verbose=False)


# --------------------------------------------------------------------------- the API


def test_every_endpoint_has_real_parameter_and_output_names(client: Client) -> None:
    api = client.view_api(return_format="dict", print_info=False)
    generic = re.compile(r"^(value_\d+|param_\d+|output_\d+)$")
    for name in ("/steer", "/sweep_strengths", "/compare", "/extract", "/upload_vector"):
        endpoint = api["named_endpoints"][name]
        for item in endpoint["parameters"] + endpoint["returns"]:
            label = item.get("label") or item.get("parameter_name") or ""
            assert label and not generic.match(label), (name, item)


def test_a_large_strength_is_not_capped_by_one_personas_slider(client: Client) -> None:
    out = client.predict(
        prompt="Hi!", persona=MILD, layer=20, strength=40.0, max_new_tokens=4, api_name="/steer"
    )
    assert "strength 40" in out[5]


def test_a_run_downloads_as_json_and_csv(client: Client) -> None:
    out = client.predict(
        prompt="Hi!", persona=STRONG, layer=12, strength=4.0, max_new_tokens=6, api_name="/steer"
    )
    json_file, csv_file = out[6], out[7]
    record = json.loads(Path(json_file).read_text())
    assert record["rows"][0]["text"] == out[0]
    csv_text = Path(csv_file).read_text()
    assert csv_text.splitlines()[0].startswith("kind,")


def test_compare_runs_three_rows_in_one_batch(client: Client) -> None:
    table, _plot, status = client.predict(
        prompt="Hi!",
        persona_1=MILD,
        layer_1=20,
        strength_1=2.0,
        persona_2=STRONG,
        layer_2=12,
        strength_2=4.0,
        persona_3=MILD,
        layer_3=20,
        strength_3=0.0,
        max_new_tokens=6,
        api_name="/compare",
    )
    rows = table["data"]
    assert len(rows) == 4 and rows[0][0] == "baseline"
    assert rows[3][4] == rows[0][4]  # strength 0 is the baseline, bit for bit
    assert "one batch" in status


# --------------------------------------------------------------------------- in the browser

if CHROMIUM.exists():
    from playwright.sync_api import Browser, Page, expect, sync_playwright
elif os.environ.get("CI", "").lower() == "true":
    pytest.fail(f"{CHROMIUM} is missing on CI: apt-get install -y chromium", pytrace=False)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


def new_page(browser: Browser, width: int = 1440, height: int = 1000) -> Page:
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page


def open_app(page: Page, query: str = "") -> None:
    page.goto(shared_server().url + query)
    page.get_by_role("tab", name="Steer", exact=True).click()  # the app opens on its Tour
    expect(page.locator("#pe-generate")).to_be_visible()
    expect(page.locator("#pe-share textarea")).to_have_value(re.compile(r"\?prompt="))


def generate_and_wait(page: Page) -> tuple[str, str]:
    page.locator("#pe-generate").click()
    expect(page.locator("#pe-status")).to_contain_text("tokens in", timeout=TIMEOUT_MS)
    return (
        page.locator("#pe-baseline textarea").input_value(),
        page.locator("#pe-steered textarea").input_value(),
    )


def fill_number(page: Page, selector: str, value: str) -> None:
    box = page.locator(f"{selector} input[type=number]").first
    expect(box).to_be_visible()
    # A slider's number box commits on change and on blur; an accordion that has just opened
    # may still re-render it, so try again until the value sticks.
    for _attempt in range(5):
        box.click()
        box.fill(value)
        box.press("Enter")
        box.blur()
        page.wait_for_timeout(300)
        if box.input_value() == value:
            return
    expect(box).to_have_value(value)


def test_a_share_link_reproduces_the_run_in_a_fresh_browser(browser: Browser) -> None:
    page = new_page(browser)
    open_app(page)
    page.locator("#pe-prompt textarea").fill("Describe the sea in one sentence.")
    page.get_by_role("button", name="System prompt").click()
    page.locator("#pe-system textarea").fill("You are terse.")
    page.get_by_role("button", name="Generation settings").click()
    fill_number(page, "#pe-max-new-tokens", "10")
    fill_number(page, "#pe-temperature", "0.8")
    fill_number(page, "#pe-seed", "7")
    page.get_by_label("Answer only").check()
    share = page.locator("#pe-share textarea")
    for key in ("system=", "temperature=0.8", "seed=7", "positions=response", "max_new_tokens=10"):
        # The link follows each change through the server: give a busy machine time.
        expect(share).to_have_value(re.compile(re.escape(key)), timeout=TIMEOUT_MS)
    texts = generate_and_wait(page)
    link = share.input_value()
    fresh = new_page(browser)
    fresh.goto(link)
    expect(fresh.locator("#pe-prompt textarea")).to_have_value("Describe the sea in one sentence.")
    assert generate_and_wait(fresh) == texts


def test_stop_says_what_happened_and_plots_what_was_made(browser: Browser) -> None:
    page = new_page(browser)
    open_app(page)
    page.get_by_role("button", name="Generation settings").click()
    fill_number(page, "#pe-max-new-tokens", "200")
    page.locator("#pe-generate").click()
    expect(page.locator("#pe-baseline textarea")).not_to_have_value("", timeout=TIMEOUT_MS)
    page.locator("#pe-stop").click()
    expect(page.locator("#pe-status")).to_contain_text("Stopped after", timeout=TIMEOUT_MS)
    expect(page.locator("#pe-plot .js-plotly-plot")).to_be_visible()


def test_the_relative_strength_follows_the_recorded_one(browser: Browser) -> None:
    page = new_page(browser)
    open_app(page)
    page.locator("#pe-persona input").click()
    page.get_by_role("option", name=re.compile(re.escape(f"{STRONG} · built-in"))).first.click()
    expect(page.locator("#pe-strength input[type=number]")).to_have_value("4")
    expect(page.locator("#pe-multiple input[type=number]")).to_have_value("1")
    fill_number(page, "#pe-multiple", "2")
    expect(page.locator("#pe-strength input[type=number]")).to_have_value("8")


def test_errors_show_as_a_message_not_as_badges(browser: Browser) -> None:
    page = new_page(browser)
    open_app(page)
    page.locator("#pe-prompt textarea").fill("")
    page.locator("#pe-generate").click()
    expect(page.locator("[data-testid=toast-text]").first).to_contain_text("empty")
    assert page.locator("#pe-baseline .error, #pe-plot .error, #pe-steered .error").count() == 0


def test_a_phone_sized_window_fits_and_reads(browser: Browser) -> None:
    page = new_page(browser, width=390, height=844)
    open_app(page)
    generate_and_wait(page)
    expect(page.locator("#pe-plot .js-plotly-plot")).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1
    # No two labels of the plot (ticks, axis titles, legend, annotations) overlap.
    boxes = page.evaluate(
        """() => [...document.querySelectorAll('#pe-plot svg text')]
               .filter(e => e.textContent.trim())
               .map(e => e.getBoundingClientRect())
               .filter(r => r.width > 0)
               .map(r => [r.left, r.top, r.right, r.bottom])"""
    )
    assert boxes
    overlaps = [
        (a, b)
        for i, a in enumerate(boxes)
        for b in boxes[i + 1 :]
        if a[0] < b[2] - 1 and b[0] < a[2] - 1 and a[1] < b[3] - 1 and b[1] < a[3] - 1
    ]
    assert not overlaps, overlaps[:3]
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "phone-steer.png"), full_page=True)


TABS = ("Steer", "Extract", "Library", "Persona space", "Drift", "Screen data", "Sweep", "Train")


def test_the_glossary_opens_from_every_tab(browser: Browser) -> None:
    """Plain words for every term, one click from any tab, and each tab's "What am I looking
    at?" opens with a plain sentence."""
    page = new_page(browser)
    open_app(page)
    for name in TABS:
        page.get_by_role("tab", name=name, exact=True).click()
        glossary = page.locator(".pe-glossary:visible")
        expect(glossary).to_have_count(1)
        glossary.get_by_text("Glossary: the words used here").click()
        for term in ("Residual stream", "Cohen's d", "Teacher-forced", "LoRA", "τ"):
            expect(glossary.get_by_text(term, exact=False).first).to_be_visible()
        teach = page.locator(".pe-teach:not(.pe-glossary):visible").first
        teach.get_by_text("What am I looking at?").click()
        expect(teach).to_contain_text("Here" if name != "Persona space" else "This map")
