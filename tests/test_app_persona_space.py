"""The Persona space tab end to end: the ``/persona_map`` API through gradio_client, and the tab
in a real browser (Debian's chromium driven by Playwright) as a person uses it.

The browser tests are skipped where /usr/bin/chromium is missing, except on CI (``CI=true``),
where that fails. A screenshot of the tab goes to ``test-output/``.
"""

from __future__ import annotations

import re

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from playwright.sync_api import Page, expect

from persona_explorer.axis.assistant_axis import default_axis_layer
from persona_explorer.dev.devserver import FOREIGN, MILD, STRONG, shared_server
from tests.browser_support import TIMEOUT_MS, screenshot, set_number

pytestmark = pytest.mark.e2e

N_LAYERS = 30  # the embedded model, which the test server runs
PROMPT = "What is your favourite season, and why?"


@pytest.fixture(scope="module")
def client() -> Client:
    return Client(shared_server().url, verbose=False)


def persona_map(client: Client, **overrides: object) -> tuple:
    args: dict = {"layer": 15, "view": "2-D", "personas": [], "arrow_length": "extracted"}
    args.update(overrides)
    return client.predict(**args, api_name="/persona_map")


def test_the_map_comes_back_as_figures_and_coordinates(client: Client) -> None:
    fig, var_fig, layers_fig, summary, coords, answer = persona_map(client, personas=[STRONG])
    assert fig is not None and var_fig is not None and layers_fig is not None
    assert coords["layer"] == 15 and len(coords["roles"]) >= 40
    assert coords["assistant"]["coords"][0] > 0  # the sign convention
    assert all(0 <= c <= 1 for c in coords["per_layer"]["pc1_axis_cosine"])
    assert sum(coords["variance_explained"]) <= 1 + 1e-6
    assert [a["name"] for a in coords["arrows"]] == [STRONG]
    assert coords["points"] == [] and answer == ""
    assert "PC1 explains" in summary


def test_a_prompt_is_answered_and_placed(client: Client) -> None:
    *_, summary, coords, answer = persona_map(
        client, layer=20, view="3-D", prompt=PROMPT, max_new_tokens=12
    )
    assert answer.strip()
    kinds = [p["kind"] for p in coords["points"]]
    assert kinds == ["prompt", "answer"]
    for p in coords["points"]:
        assert len(p["coords"]) == 3 and len(p["nearest_roles"]) == 3
    assert "Its answer" in summary


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"layer": 99}, r"(?i)layer|maximum|range"),
        ({"view": "4-D"}, r"(?i)view|4-D|choices"),
        ({"personas": [FOREIGN]}, r"(?i)cannot steer|other model|model|choices"),
        ({"prompt": "hi", "max_new_tokens": 500}, r"(?i)tokens|maximum"),
    ],
)
def test_bad_input_is_a_clear_error_and_the_server_keeps_serving(
    client: Client, overrides: dict, pattern: str
) -> None:
    with pytest.raises(AppError, match=pattern):
        persona_map(client, **overrides)
    *_, coords, _ = persona_map(client, layer=3, personas=[MILD])
    assert coords["layer"] == 3


# --------------------------------------------------------------------------- the browser


def open_space_tab(page: Page) -> None:
    page.goto(shared_server().url)
    page.get_by_role("tab", name="Steer", exact=True).click()  # the app opens on its Tour
    expect(page.locator("#pe-generate")).to_be_visible()
    page.get_by_role("tab", name="Persona space").click()
    expect(page.locator("#pe-space-map .js-plotly-plot")).to_be_visible()


def test_the_tab_shows_the_map_moves_layers_and_places_a_prompt(page: Page) -> None:
    open_space_tab(page)
    layer = default_axis_layer(N_LAYERS)
    summary = page.locator("#pe-space-summary")
    expect(summary).to_contain_text(f"Layer {layer}", timeout=TIMEOUT_MS)
    expect(page.locator("#pe-space-map")).to_contain_text("Assistant", timeout=TIMEOUT_MS)
    expect(page.locator("#pe-space-map")).to_contain_text("pirate")  # a role's label
    expect(page.locator("#pe-space-variance .js-plotly-plot")).to_be_visible()
    expect(page.locator("#pe-space-layers .js-plotly-plot")).to_be_visible()

    set_number(page, "#pe-space-layer", "20")
    expect(summary).to_contain_text("Layer 20", timeout=TIMEOUT_MS)
    expect(page.locator("#pe-space-map")).to_contain_text("layer 20", timeout=TIMEOUT_MS)

    page.locator("#pe-space-prompt textarea").fill(PROMPT)
    page.get_by_text("Options").click()
    set_number(page, "#pe-space-tokens", "12")
    page.locator("#pe-space-place").click()
    expect(summary).to_contain_text("Its answer", timeout=TIMEOUT_MS)
    answer = page.locator("#pe-space-answer textarea").input_value()
    assert answer.strip()
    expect(page.locator("#pe-space-map")).to_contain_text("your prompt", timeout=TIMEOUT_MS)
    expect(page.locator("#pe-space-map")).to_contain_text("its answer", timeout=TIMEOUT_MS)

    # Another layer keeps the placed points (no new answer is generated).
    set_number(page, "#pe-space-layer", "10")
    expect(summary).to_contain_text("Layer 10", timeout=TIMEOUT_MS)
    expect(summary).to_contain_text("Its answer", timeout=TIMEOUT_MS)
    expect(page.locator("#pe-space-map")).to_contain_text("your prompt", timeout=TIMEOUT_MS)
    assert page.locator("#pe-space-answer textarea").input_value() == answer
    page.locator("#pe-space-map").scroll_into_view_if_needed()
    screenshot(page, "persona-space")


def test_arrows_and_the_3d_view(page: Page) -> None:
    open_space_tab(page)
    page.locator("#pe-space-personas input").click()
    page.get_by_role("option", name=re.compile(re.escape(f"{STRONG} · built-in"))).first.click()
    page.keyboard.press("Escape")
    summary = page.locator("#pe-space-summary")
    expect(summary).to_contain_text(f"{STRONG}: cos with the axis", timeout=TIMEOUT_MS)
    expect(page.locator("#pe-space-map")).to_contain_text(STRONG, timeout=TIMEOUT_MS)
    page.locator("#pe-space-view").get_by_text("3-D").click()
    expect(summary).to_contain_text("of its length lies in the space shown", timeout=TIMEOUT_MS)
    expect(page.locator("#pe-space-map .js-plotly-plot")).to_be_visible()
