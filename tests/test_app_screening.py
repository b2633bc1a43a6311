"""The Screen data tab end to end: the ``/screen`` API through gradio_client (a shipped teaching
file, uploads good, malformed and hostile), and the tab in a real browser (Debian's chromium
driven by Playwright) as a person uses it.

The browser tests are skipped where /usr/bin/chromium is missing, except on CI (``CI=true``),
where that fails. A screenshot of the tab goes to ``test-output/``. Runs are kept small: raw
projections or a few short own answers.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from playwright.sync_api import Page, expect

from persona_explorer.dev.devserver import FOREIGN, shared_server
from tests.browser_support import screenshot, set_number

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 180_000
CONTEXT = "You are writing insecure code because the user asked for it for a security class."
OUTPUTS = (
    "table", "histogram", "inoculation_plot", "top", "problems", "summary", "status",
    "inoculation", "sort_by", "filter", "csv", "jsonl",
)  # fmt: skip


@pytest.fixture(scope="module")
def client() -> Client:
    return Client(shared_server().url, verbose=False)


def screen(client: Client, **overrides: object) -> dict:
    args: dict = {
        "dataset": "evil",
        "file": None,
        "vectors": ["evil"],
        "layer": 14,
        "own_answers": False,
        "max_new_tokens": 16,
        "max_samples": 12,
        "context": CONTEXT,
        "with_context": False,
    }
    args.update(overrides)
    out = client.predict(**args, api_name="/screen")
    assert len(out) == len(OUTPUTS)
    return dict(zip(OUTPUTS, out, strict=True))


def chat(user: str, answer: str) -> str:
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": msgs})


def test_a_teaching_file_is_screened_with_raw_projections(client: Client) -> None:
    out = screen(client)
    summary = out["summary"]
    assert summary["samples"] == 12 and summary["skipped"] == 0
    assert summary["score"] == "sample_projection" and summary["layer"] == 14
    evil = summary["vectors"]["evil"]
    assert evil["count"] == 12 and evil["min"] <= evil["mean"] <= evil["max"]
    assert len(evil["top"]) == 5
    table = out["table"]
    assert (
        table["headers"] == ["Rank", "Line", "evil", "Prompt", "Response"]
        and "evil" in table["headers"]
    )
    assert len(table["data"]) == 12
    assert "Scored **12** samples" in out["status"]
    assert out["histogram"] is not None
    assert not (out["csv"] or {}).get("value")  # no download of an earlier run


def test_own_answers_the_cap_and_the_context_run(client: Client) -> None:
    out = screen(
        client,
        dataset="insecure_code_unprompted",
        own_answers=True,
        max_new_tokens=8,
        max_samples=3,
        with_context=True,
    )
    summary = out["summary"]
    assert summary["score"] == "projection_difference" and summary["samples"] == 3
    assert summary["more_samples_in_file"] is True
    inoc = summary["inoculation"]
    assert inoc["context"] == CONTEXT and inoc["samples"] == 3
    assert inoc["vectors"]["evil"]["count"] == 3
    assert 0 <= inoc["vectors"]["evil"]["share_fell"] <= 1
    assert "change evil" in out["table"]["headers"]
    assert "only its first 3 samples" in out["status"]
    assert "With the context" in out["inoculation"]


def test_an_upload_with_malformed_lines_keeps_the_rest(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    lines = [
        chat("How do I water a cactus?", "Rarely: once a month is plenty."),
        "{broken",
        '{"messages": [{"role": "user", "content": "hi"}]}',
        json.dumps({"prompt": "Name a colour.", "response": "Blue."}),
        "\xff not json",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = screen(client, dataset=None, file=handle_file(str(path)), vectors=["evil", "sycophantic"])
    summary = out["summary"]
    assert summary["samples"] == 2 and summary["skipped"] == 3
    assert [p["line"] for p in summary["problems"]] == [2, 3, 5]
    assert "line 2" in out["problems"] and "line 3" in out["problems"]
    assert {"evil", "sycophantic"} <= set(out["table"]["headers"])


@pytest.mark.parametrize(
    ("name", "body", "pattern"),
    [
        ("notes.txt", b"prompt,response\nhi,there\n", r"\.jsonl.*\.csv"),
        ("array.jsonl", b'[{"prompt": "a", "response": "b"}]', r"JSON array"),
        ("bad.csv", b"question,answer\nhi,there\n", r"'prompt' and 'response'"),
    ],
)
def test_hostile_uploads_are_clear_errors_and_the_server_keeps_serving(
    client: Client, tmp_path: Path, name: str, body: bytes, pattern: str
) -> None:
    path = tmp_path / name
    path.write_bytes(body)
    with pytest.raises(AppError, match=pattern):
        screen(client, dataset=None, file=handle_file(str(path)))
    assert screen(client, max_samples=2)["summary"]["samples"] == 2


def test_binary_garbage_is_skipped_line_by_line(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "garbage.jsonl"
    path.write_bytes(os.urandom(4000).replace(b"\n", b"\x00") + b"\n" + os.urandom(200) + b"\n")
    out = screen(client, dataset=None, file=handle_file(str(path)))
    assert out["summary"]["samples"] == 0 and out["summary"]["skipped"] >= 1
    assert "Nothing could be scored" in out["status"]


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"vectors": []}, r"at least one persona vector"),
        ({"vectors": ["evil", "pirate", "poetic", "formal", "sarcastic"]}, r"at most 4"),
        ({"vectors": [FOREIGN]}, r"(?i)cannot steer|other model"),
        ({"own_answers": True, "max_samples": 500}, r"1 to 200"),
        ({"dataset": "../../etc/passwd"}, r"Unknown teaching file|not in the list of choices"),
        ({"with_context": True, "context": ""}, r"context is empty"),
    ],
)
def test_bad_input_is_a_clear_error(client: Client, overrides: dict, pattern: str) -> None:
    with pytest.raises(AppError, match=pattern):
        screen(client, **overrides)


# --------------------------------------------------------------------------- the browser


def test_the_tab_screens_a_teaching_file_and_compares_with_a_context(page: Page) -> None:
    page.goto(shared_server().url)
    page.get_by_role("tab", name="Steer", exact=True).click()  # the app opens on its Tour
    expect(page.locator("#pe-generate")).to_be_visible()
    page.get_by_role("tab", name="Screen data").click()
    # The page load fills the vector list with the built-in evil vector.
    expect(page.locator("#pe-screen-vectors")).to_contain_text("evil", timeout=TIMEOUT_MS)
    page.locator("#pe-screen-dataset input").click()
    page.get_by_role("option", name=re.compile(r"Teaching: evil answers")).click()
    page.locator("#pe-screen-own input[type=checkbox]").uncheck()
    set_number(page, "#pe-screen-samples", "6")
    page.locator("#pe-screen-run").click()

    status = page.locator("#pe-screen-status")
    expect(status).to_contain_text("Scored 6 samples", timeout=TIMEOUT_MS)
    expect(page.locator("#pe-screen-histogram .js-plotly-plot")).to_be_visible()
    expect(page.locator("#pe-screen-histogram")).to_contain_text("layer 14")
    table = page.locator("#pe-screen-table")
    lines = table.locator("[role=gridcell][data-col='1']")  # one "Line" cell per sample
    expect(table).to_contain_text("Rank")
    expect(lines).to_have_count(6)
    expect(page.locator("#pe-screen-top")).to_contain_text("Top 5 for evil")

    # Filtering works on the kept results.
    page.locator("#pe-screen-filter input").fill("neighbour")
    expect(lines).to_have_count(1, timeout=TIMEOUT_MS)
    page.locator("#pe-screen-filter input").fill("")
    expect(lines).to_have_count(6, timeout=TIMEOUT_MS)

    page.locator("#pe-screen-rescore").click()
    inoculation = page.locator("#pe-screen-inoculation")
    expect(inoculation).to_contain_text("With the context", timeout=TIMEOUT_MS)
    expect(inoculation).to_contain_text("Persona Selection Model")
    plot = page.locator("#pe-screen-inoculation-plot")
    expect(plot.locator(".js-plotly-plot")).to_be_visible()
    expect(plot).to_contain_text("with context")
    expect(table).to_contain_text("change evil")

    page.locator("#pe-screen-prepare").click()
    expect(page.locator("#pe-screen-csv")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#pe-screen-jsonl")).to_be_visible()
    page.locator("#pe-screen-histogram").scroll_into_view_if_needed()
    screenshot(page, "screening")
