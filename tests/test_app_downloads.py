"""Issue 26 in a real browser (Debian's chromium driven by Playwright): each tab's new download
buttons give a file after a run, and the file parses and says how it was made.

Skipped where /usr/bin/chromium is missing, except on CI (``CI=true``), where that fails.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from persona_explorer.dev.devserver import shared_server
from tests.browser_support import TIMEOUT_MS, set_number

pytestmark = pytest.mark.e2e

PROVENANCE = ("model_id", "app_version", "layers", "vectors", "settings", "created")


def open_tab(page: Page, name: str) -> None:
    page.goto(shared_server().url)
    page.get_by_role("tab", name="Steer", exact=True).click()  # the app opens on its Tour
    expect(page.locator("#pe-generate")).to_be_visible()
    page.get_by_role("tab", name=name).click()


def download(page: Page, selector: str, tmp_path: Path) -> Path:
    """Click a download button once it holds a file; the file as the browser saved it."""
    button = page.locator(selector)
    expect(button).to_be_visible()
    # The file is written by an event chained after the run: until it lands, a click does
    # nothing, so click again a little later.
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        try:
            with page.expect_download(timeout=5_000) as info:
                button.click()
            break
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    return path


def check_json(path: Path, kind: str) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["kind"] == kind and data["format"] == "persona-explorer-download"
    assert data["model_id"] and data["app_version"] and data["layers"]
    assert isinstance(data["settings"], dict) and isinstance(data["vectors"], list)
    return data


def check_csv(path: Path) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert rows and tuple(list(rows[0])[-len(PROVENANCE) :]) == PROVENANCE
    assert all(r["model_id"] and r["app_version"] for r in rows)
    return rows


def test_persona_space_coordinates_download(page: Page, tmp_path: Path) -> None:
    open_tab(page, "Persona space")
    expect(page.locator("#pe-space-map .js-plotly-plot")).to_be_visible()
    set_number(page, "#pe-space-layer", "20")
    expect(page.locator("#pe-space-summary")).to_contain_text("Layer 20", timeout=TIMEOUT_MS)
    data = check_json(download(page, "#pe-space-download-json", tmp_path), "persona-space")
    assert data["layers"] == [20] and len(data["map"]["roles"]) >= 40
    rows = check_csv(download(page, "#pe-space-download-csv", tmp_path))
    assert [r["kind"] for r in rows].count("assistant") == 1


def test_drift_replay_series_download(page: Page, tmp_path: Path) -> None:
    open_tab(page, "Drift")
    page.get_by_role("tab", name="Replay").click()
    page.locator("#pe-drift-transcripts input").click()
    page.get_by_role("option", name=re.compile(r"jailbreak, unsteered \(Llama")).first.click()
    page.keyboard.press("Escape")
    page.locator("#pe-drift-run").click()
    expect(page.locator("#pe-drift-replay-status")).to_contain_text("first", timeout=TIMEOUT_MS)
    data = check_json(download(page, "#pe-drift-replay-file-json", tmp_path), "drift-replays")
    assert data["settings"]["replays"][0]["label"]
    rows = check_csv(download(page, "#pe-drift-replay-file-csv", tmp_path))
    assert {r["series"] for r in rows} >= {"axis"}


def test_sweep_grid_download(page: Page, tmp_path: Path) -> None:
    open_tab(page, "Sweep")
    expect(page.locator("#pe-sweep-prompts textarea")).not_to_be_empty()
    page.locator("#pe-sweep-persona input").click()
    page.get_by_role("option", name="pirate · built-in").click()
    layers = page.locator("#pe-sweep-layers input")
    expect(layers).not_to_have_value("")
    page.locator("#pe-sweep-prompts textarea").fill("How do I make a good cup of tea?")
    layers.fill("20")
    page.locator("#pe-sweep-strengths input").fill("0, 4")
    set_number(page, "#pe-sweep-tokens", "8")
    page.locator("#pe-sweep-run").click()
    expect(page.locator("#pe-sweep-status")).to_contain_text("Swept pirate", timeout=TIMEOUT_MS)
    data = check_json(download(page, "#pe-sweep-download-json", tmp_path), "sweep-grid")
    assert data["layers"] == [20] and data["vectors"][0]["name"] == "pirate"
    rows = check_csv(download(page, "#pe-sweep-download-csv", tmp_path))
    assert rows[0]["kind"] == "baseline" and len(rows) == 3


def test_the_steer_run_json_carries_each_tokens_log_probabilities(
    page: Page, tmp_path: Path
) -> None:
    """Issue 26: the run file a researcher takes home has every answer's per-token
    log-probabilities under its own model and the other column's, and the per-token view's
    hover shows them."""
    open_tab(page, "Steer")
    page.locator("#pe-prompt textarea").fill("What makes a good friend?")
    page.get_by_text("Generation settings").click()
    set_number(page, "#pe-max-new-tokens", "12")
    page.locator("#pe-generate").click()
    expect(page.locator("#pe-status")).to_contain_text("tok/s", timeout=TIMEOUT_MS)
    expect(page.locator("#pe-tokens-steered")).to_contain_text(
        "Mean log-probability per token", timeout=TIMEOUT_MS
    )
    hover = page.locator("#pe-tokens-steered .pe-tok").first.get_attribute("title") or ""
    assert "log p" in hover and "under" in hover
    data = json.loads(download(page, "#pe-run-json", tmp_path).read_text(encoding="utf-8"))
    assert data["logprobs_meaning"]
    rows = data["rows"]
    assert len(rows) == 2
    for row in rows:
        lp = row["logprobs"]
        assert len(lp["tokens"]) == len(row["token_ids"]) > 0
        own = [t["logprob_own"] for t in lp["tokens"]]
        other = [t["logprob_other"] for t in lp["tokens"]]
        assert all(v <= 0 for v in own + other)
        assert lp["sum_own"] == pytest.approx(sum(own), abs=1e-3)
    assert [r["logprobs"]["other_row"] for r in rows] == [1, 0]  # each scored by the other
