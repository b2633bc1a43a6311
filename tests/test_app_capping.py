"""Activation capping in the running app: the ``/steer_capped`` API (gradio_client) and the
Steer tab's capping panel in a real browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from playwright.sync_api import Page, expect

from persona_explorer.dev.devserver import STRONG, shared_server
from tests.browser_support import TIMEOUT_MS, screenshot

pytestmark = pytest.mark.e2e

ROLE_PLAY = "You are a pirate captain. Speak only like a pirate."
PROMPT = "Tell me about your ship."


@pytest.fixture(scope="module")
def client() -> Client:
    return Client(shared_server().url, verbose=False)


def steer_capped(client: Client, **overrides: object) -> tuple:
    args: dict = {
        "prompt": PROMPT,
        "system_prompt": ROLE_PLAY,
        "cap_percentile": 90,
        "max_new_tokens": 10,
    }
    args.update(overrides)
    return client.predict(**args, api_name="/steer_capped")


def test_steer_capped_returns_both_answers_and_the_numbers(client: Client) -> None:
    base, capped, steered, both, plot, token_plot, status, numbers = steer_capped(client)
    assert base.strip() and capped.strip() and base != capped
    assert steered == "" and both == ""  # not combined
    assert plot is not None and token_plot is not None
    assert "lifted" in status
    assert numbers["cap"]["layers"] == [15, 16, 17, 18]
    assert numbers["cap"]["percentile"] == 90 and len(numbers["cap"]["floors"]) == 4
    rows = {r["key"]: r for r in numbers["rows"]}
    assert set(rows) == {"baseline", "capped"}
    assert rows["baseline"]["text"] == base and rows["capped"]["text"] == capped
    assert rows["baseline"]["cap_fired"] is None and len(rows["capped"]["cap_fired"]) == 4
    assert all(len(r["axis_projection"]) == 30 for r in rows.values())
    at = numbers["readout_layer"]
    assert at == 18
    # The cap raises the answer's projection where it acts.
    assert rows["capped"]["axis_projection"][at] > rows["baseline"]["axis_projection"][at]


def test_steer_capped_combined_with_a_persona(client: Client) -> None:
    base, capped, steered, both, *_, numbers = steer_capped(
        client, combine=True, persona=STRONG, layer=12, strength=4.0, cap_layers="16-17",
        cap_percentile=25, system_prompt="",
    )  # fmt: skip
    assert all(t.strip() for t in (base, capped, steered, both))
    assert steered != base
    assert [r["key"] for r in numbers["rows"]] == [
        "baseline", "capped", "steered", "steered_capped",
    ]  # fmt: skip
    assert numbers["cap"]["layers"] == [16, 17] and numbers["steer_layers"] == [12]
    assert numbers["persona"] == STRONG


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"prompt": ""}, "empty"),
        ({"cap_layers": "40-45"}, "out of range"),
        ({"cap_layers": "fifteen"}, "Cannot read"),
        ({"cap_percentile": 150}, "maximum"),
        ({"combine": True, "persona": ""}, "No persona selected"),
        ({"combine": True, "persona": "no-such-persona", "layer": 12}, "Unknown persona"),
        ({"max_new_tokens": 0}, "minimum"),
    ],
)
def test_bad_inputs_are_clear_errors_and_the_server_keeps_serving(
    client: Client, overrides: dict, expected: str
) -> None:
    with pytest.raises(AppError) as info:
        steer_capped(client, **overrides)
    assert expected.lower() in str(info.value).lower()
    base, capped, *_ = steer_capped(client, max_new_tokens=3)
    assert base.strip() and capped.strip()


# --------------------------------------------------------------------------- in the browser


def test_the_capping_panel_shows_both_answers_and_the_plots(page: Page) -> None:
    pg = page
    pg.goto(shared_server().url)
    pg.get_by_role("tab", name="Steer", exact=True).click()  # the app opens on its Tour
    expect(pg.locator("#pe-generate")).to_be_visible()
    pg.locator("#pe-prompt textarea").fill(PROMPT)
    pg.get_by_text("System prompt").first.click()
    pg.locator("#pe-system textarea").fill(ROLE_PLAY)
    pg.get_by_text("Hold the Assistant: activation capping").click()
    tokens = pg.locator("#pe-cap-max-new-tokens input[type=number]")
    tokens.fill("12")
    tokens.press("Enter")
    percentile = pg.locator("#pe-cap-percentile input[type=number]")
    percentile.fill("90")
    percentile.press("Enter")
    expect(pg.locator("#pe-cap-steered")).to_be_hidden()
    pg.locator("#pe-cap-run").click()

    status = pg.locator("#pe-cap-status")
    expect(status).to_contain_text("lifted", timeout=TIMEOUT_MS)
    base = pg.locator("#pe-cap-baseline textarea").input_value()
    capped = pg.locator("#pe-cap-capped textarea").input_value()
    assert base.strip() and capped.strip() and base != capped
    plot = pg.locator("#pe-cap-plot")
    expect(plot.locator(".js-plotly-plot")).to_be_visible()
    expect(plot).to_contain_text("capped at 15–18")
    expect(pg.locator("#pe-cap-token-plot .js-plotly-plot")).to_be_visible()

    # Combined with the persona: the steered answers appear too.
    pg.locator("#pe-cap-combine input").check()
    expect(pg.locator("#pe-cap-steered")).to_be_visible()
    pg.locator("#pe-cap-run").click()
    expect(status).to_contain_text("steered + capped", timeout=TIMEOUT_MS)
    both = pg.locator("#pe-cap-steered-capped textarea")
    assert both.input_value().strip()
    pg.locator("#pe-cap-plot").scroll_into_view_if_needed()
    screenshot(pg, "steer-capping")
