"""The Sweep tab end to end: the ``/sweep`` API through gradio_client (a small grid, resuming,
bad input), the Extract tab's "sweep after extracting" option, and the tab in a real browser
(Debian's chromium driven by Playwright) as a person uses it: sweep, read the heat maps, click
a cell, read its answers, use the recommendation in Steer.

Runs are kept small (2 prompts, a few cells, a few tokens). Properties only, never the text the
model wrote. A sweep run again with the same inputs comes from its checkpoint, so these tests
never assume answers were generated in this run.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from playwright.sync_api import Page, expect

from persona_explorer.dev.devserver import FOREIGN, shared_server
from tests.browser_support import set_number

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 300_000
PROMPTS = "How do I make a good cup of tea?\nWhat should I pack for a day at the beach?"
OUTPUTS = ("summary", "status", "trait_plot", "coherence_plot", "use_note")
CELL_KEYS = {"layer", "strength", "trait", "projection", "perplexity", "coherence", "repetition",
             "texts", "judge"}  # fmt: skip


@pytest.fixture(scope="module")
def client() -> Client:
    return Client(shared_server().url, verbose=False)


def sweep(client: Client, **overrides: object) -> dict:
    args: dict = {
        "persona": "pirate",
        "prompts": PROMPTS,
        "layers": "14, 20",
        "strengths": "0, 6",
        "max_new_tokens": 10,
        "positions": "all",
    }
    args.update(overrides)
    out = client.predict(**args, api_name="/sweep")
    assert len(out) == len(OUTPUTS)
    return dict(zip(OUTPUTS, out, strict=True))


def test_a_small_sweep_returns_the_grid_and_a_recommendation_or_a_reason(client: Client) -> None:
    out = sweep(client)
    result = out["summary"]
    assert result["vector"] == "pirate"
    assert result["layers"] == [14, 20] and result["strengths"] == [0.0, 6.0]
    assert result["prompts"] == PROMPTS.splitlines()
    grid = result["grid"]
    assert len(grid) == 4  # 2 layers x 2 strengths
    assert {(c["layer"], c["strength"]) for c in grid} == {
        (14, 0.0),
        (14, 6.0),
        (20, 0.0),
        (20, 6.0),
    }
    for cell in grid:
        assert set(cell) >= CELL_KEYS
        assert len(cell["texts"]) == 2 and all(isinstance(t, str) for t in cell["texts"])
        assert 0.0 <= cell["repetition"] <= 1.0
        assert cell["coherence"] is not None and cell["coherence"] > 0
    # Strength 0 is the baseline itself, at every layer.
    zero = [c for c in grid if c["strength"] == 0]
    assert all(c["trait"] == 0 and c["texts"] == result["baseline"]["texts"] for c in zero)
    rec = result["recommended"]
    if rec is None:
        assert "No cell" in result["reason"]
        assert "No recommendation" in out["status"]
    else:
        assert (rec["layer"], rec["strength"]) in {(c["layer"], c["strength"]) for c in grid}
        assert rec["strength"] != 0
        crit = result["criteria"]
        assert rec["trait"] >= crit["margin"] and rec["coherence"] >= crit["min_coherence"]
        assert f"layer {rec['layer']}" in out["status"]
    assert result["stopped"] is False and result["rows_total"] == 2 * 3
    assert out["trait_plot"] is not None and out["coherence_plot"] is not None


def test_the_same_sweep_again_comes_from_its_checkpoint(client: Client) -> None:
    first = sweep(client)["summary"]
    again = sweep(client)["summary"]
    assert again["rows_generated"] == 0 and again["rows_total"] == first["rows_total"]
    assert [c["texts"] for c in again["grid"]] == [c["texts"] for c in first["grid"]]


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"strengths": "abc"}, r"Strengths: 'abc' is not a number"),
        ({"layers": "99"}, r"Layer 99 is out of range"),
        ({"prompts": "\n".join(f"Question {i}?" for i in range(100))}, r"at most 12"),
        ({"layers": "1,2,3,4,5,6,7"}, r"at most 6"),
        ({"max_new_tokens": 500}, r"from 1 to|maximum value 96"),
        ({"positions": "prompt"}, r"all or response|not in the list of choices"),
        ({"persona": FOREIGN}, r"(?i)cannot steer|other model"),
        ({"persona": "no-such-vector"}, r"Unknown persona"),
        ({"min_coherence": 3}, r"min_coherence"),
        (
            {
                "layers": "10,11,12,13,14,15",
                "strengths": "0,1,2,3,4,5,6,7",
                "prompts": "\n".join(f"Question {i}?" for i in range(12)),
            },
            r"limit is 300",
        ),
    ],
)
def test_bad_input_is_a_clear_error_and_the_server_keeps_serving(
    client: Client, overrides: dict, pattern: str
) -> None:
    with pytest.raises(AppError, match=pattern):
        sweep(client, **overrides)
    assert sweep(client)["summary"]["vector"] == "pirate"


def test_extract_can_sweep_afterwards_and_records_the_result(client: Client) -> None:
    out = client.predict(
        source="trait",
        trait_name="evil",
        role_name="pirate",
        name="",
        pos_prompts="",
        neg_prompts="",
        question_lines="",
        n_questions=1,
        max_new_tokens=8,
        variant="response",
        sweep=True,
        api_name="/extract",
    )
    summary = next(x for x in out if isinstance(x, str) and "answers with the persona" in x)
    assert "Sweep" in summary and "layers" in summary
    assert "recommended **layer" in summary or "no recommendation" in summary


def test_the_endpoint_has_named_parameters_and_outputs(client: Client) -> None:
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/sweep"]
    names = [p["parameter_name"] for p in endpoint["parameters"]]
    assert names == [
        "persona", "prompts", "layers", "strengths", "max_new_tokens", "positions", "margin",
        "min_coherence", "max_repetition_rise",
    ]  # fmt: skip
    assert [r["label"] for r in endpoint["returns"]] == [
        "Result", "Status", "Trait rise", "Coherence", "Recorded",
    ]  # fmt: skip


# --------------------------------------------------------------------------- the browser


def test_the_tab_sweeps_shows_a_cell_and_uses_the_recommendation(
    page: Page, tmp_path: Path
) -> None:
    page.goto(shared_server().url)
    page.get_by_role("tab", name="Steer", exact=True).click()  # the app opens on its Tour
    expect(page.locator("#pe-generate")).to_be_visible()
    page.get_by_role("tab", name="Sweep").click()
    expect(page.locator("#pe-sweep-prompts textarea")).not_to_be_empty()  # the shipped prompts
    page.locator("#pe-sweep-persona input").click()
    page.get_by_role("option", name="pirate · built-in").click()
    layers = page.locator("#pe-sweep-layers input")
    expect(layers).not_to_have_value("")  # filled around the vector's recorded layer
    page.locator("#pe-sweep-prompts textarea").fill(PROMPTS)
    layers.fill("14, 20")
    page.locator("#pe-sweep-strengths input").fill("0, 3, 6")
    set_number(page, "#pe-sweep-tokens", "10")
    # A loose tolerance, so that this short sweep has a cell to recommend.
    page.get_by_text("What a recommendation must show").click()
    set_number(page, "#pe-sweep-margin", "0.01")
    set_number(page, "#pe-sweep-min-coherence", "0.01")
    set_number(page, "#pe-sweep-max-repetition", "1")
    page.locator("#pe-sweep-run").click()

    status = page.locator("#pe-sweep-status")
    expect(status).to_contain_text("Swept pirate", timeout=TIMEOUT_MS)
    for plot in ("#pe-sweep-trait", "#pe-sweep-coherence"):
        expect(page.locator(f"{plot} .js-plotly-plot")).to_be_visible()
    expect(page.locator("#pe-sweep-trait")).to_contain_text("Trait rise")
    expect(page.locator("#pe-sweep-coherence")).to_contain_text("Coherence")

    # The grid table is the click target: a steered cell shows its answers and the baseline's.
    grid = page.locator("#pe-sweep-grid")
    expect(grid.locator("[role=gridcell][data-col='0']")).to_have_count(2)
    grid.locator("[role=gridcell][data-col='2']").first.click()
    cell = page.locator("#pe-sweep-cell")
    expect(cell).to_contain_text("Layer 14, strength 3")
    expect(cell).to_contain_text("Baseline:")
    expect(cell).to_contain_text("Steered:")
    expect(cell).to_contain_text("cup of tea")
    columns = page.locator("#pe-sweep-columns")
    expect(columns).to_contain_text("strength 6")
    expect(columns).to_contain_text("baseline")
    expect(columns.locator("[role=gridcell][data-col='0']")).to_have_count(2)
    # Another layer side by side: the steered columns change, the baseline's do not.
    steered = columns.locator("[role=gridcell][data-col='3']").first
    before = steered.inner_text()
    page.locator("#pe-sweep-column-layer input").click()
    page.get_by_role("option", name="layer 20").click()
    expect(steered).not_to_have_text(before)

    recommended = re.search(r"Recommended: layer (\d+), strength ([\d.]+)", status.inner_text())
    if recommended:
        page.locator("#pe-sweep-use").click()
        expect(page.locator("#pe-sweep-use-note")).to_contain_text("a copy in this session")
        # The Steer tab now starts from the copy, at the recommended layer and strength.
        page.get_by_role("tab", name="Steer").click()
        expect(page.locator("#pe-persona input")).to_have_value("pirate · session")
        layer, strength = recommended.groups()
        expect(page.locator("#pe-layer input[type=number]")).to_have_value(layer)
        expect(page.locator("#pe-strength input")).to_have_value(strength)
        page.get_by_role("tab", name="Sweep").click()
    page.locator("#pe-sweep-trait").scroll_into_view_if_needed()
    shot = tmp_path / "sweep.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_stop_keeps_what_finished_and_the_same_sweep_resumes(page: Page) -> None:
    page.goto(shared_server().url)
    page.get_by_role("tab", name="Steer", exact=True).click()  # the app opens on its Tour
    expect(page.locator("#pe-generate")).to_be_visible()
    page.get_by_role("tab", name="Sweep").click()
    # Prompts no earlier run used: nothing of this sweep is in a checkpoint yet.
    fresh = uuid.uuid4().hex[:8]
    prompts = "\n".join(f"Tell me about {topic} ({fresh})." for topic in ("tea", "rain", "maps"))
    page.locator("#pe-sweep-prompts textarea").fill(prompts)
    page.locator("#pe-sweep-layers input").fill("10, 14, 18")
    page.locator("#pe-sweep-strengths input").fill("0, 1, 2, 3, 4, 5, 6")
    set_number(page, "#pe-sweep-tokens", "8")
    page.locator("#pe-sweep-run").click()
    status = page.locator("#pe-sweep-status")
    # Stop once a batch (16 answers) has finished: a Stop drops the batch under way.
    expect(status).to_contain_text("16 of 57 answers", timeout=TIMEOUT_MS)
    page.locator("#pe-sweep-stop").click()
    expect(status).to_contain_text("was stopped after", timeout=TIMEOUT_MS)
    expect(status).to_contain_text("resume")
    page.locator("#pe-sweep-run").click()
    expect(status).to_contain_text("came from an earlier run", timeout=TIMEOUT_MS)
    expect(status).not_to_contain_text("was stopped")
