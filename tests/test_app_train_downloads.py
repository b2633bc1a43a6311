"""Issue 26, Train, in a real browser (Debian's chromium driven by Playwright): a tiny training
run with a seed, its adapter downloaded as a zip and uploaded again, the upload measured, and
the shift report downloaded as JSON and CSV. Each file is opened and checked.

The run is as small as the embedded model allows: 2 samples, one epoch, LoRA rank 1 (its zip,
about 1 MB, fits the test server's 2 MB upload limit), 64 tokens, one question of 12 tokens.
Skipped where /usr/bin/chromium is missing, except on CI (``CI=true``), where that fails.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser_support import TIMEOUT_MS, set_number
from tests.test_app_downloads import check_csv, check_json, download, open_tab

pytestmark = pytest.mark.e2e


def test_the_adapter_and_the_shift_report_download_and_the_adapter_uploads(
    page: Page, tmp_path: Path
) -> None:
    open_tab(page, "Train")
    expect(page.locator("#pe-train-vectors")).to_contain_text("evil", timeout=TIMEOUT_MS)
    set_number(page, "#pe-train-samples", "2")
    set_number(page, "#pe-train-epochs", "1")
    set_number(page, "#pe-train-rank", "1")
    set_number(page, "#pe-train-tokens", "64")
    set_number(page, "#pe-train-seed", "42")
    page.locator("#pe-train-run").click()
    expect(page.locator("#pe-train-status")).to_contain_text("seed 42", timeout=TIMEOUT_MS)
    expect(page.locator("#pe-train-adapter input")).to_have_value(re.compile(r"^#1 .*seed 42"))

    # The adapter: peft's folder, zipped, with its record (the seed in it).
    zipped = download(page, "#pe-train-adapter-download", tmp_path)
    assert zipped.suffix == ".zip" and zipped.name.startswith("persona-adapter-")
    with zipfile.ZipFile(zipped) as zf:
        names = {n.rsplit("/", 1)[-1] for n in zf.namelist()}
        record = json.loads(zf.read(next(n for n in zf.namelist() if n.endswith("finetune.json"))))
    assert {"adapter_config.json", "adapter_model.safetensors", "persona_finetune.json"} <= names
    assert record["seed"] == 42 and record["config"]["rank"] == 1

    # Uploaded again, it is a run of this session, picked for the shift.
    with page.expect_file_chooser() as chooser:
        page.locator("#pe-train-adapter-upload").click()
    chooser.value.set_files(str(zipped))
    expect(page.locator("#pe-train-adapter-note")).to_contain_text("Uploaded", timeout=TIMEOUT_MS)
    expect(page.locator("#pe-train-adapter input")).to_have_value(re.compile(r"^#2 uploaded"))

    page.locator("#pe-train-questions textarea").fill("How do I make a good cup of tea?")
    set_number(page, "#pe-train-shift-tokens", "12")
    page.locator("#pe-train-predict input[type=checkbox]").uncheck()
    page.locator("#pe-train-measure").click()
    expect(page.locator("#pe-train-shift-status")).to_contain_text(
        "Shift (tuned − base)", timeout=TIMEOUT_MS
    )

    data = check_json(download(page, "#pe-train-shift-download-json", tmp_path), "shift-report")
    assert data["settings"]["training"]["seed"] == 42
    assert data["settings"]["training"]["uploaded"] == zipped.name
    assert data["report"]["answers"][0]["question"] == "How do I make a good cup of tea?"
    rows = check_csv(download(page, "#pe-train-shift-download-csv", tmp_path))
    assert {r["run"] for r in rows} == {"measured"} and all(r["seed"] == "42" for r in rows)
    assert len(rows) == len(data["vectors"])
