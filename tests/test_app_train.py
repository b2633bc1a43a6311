"""The Train tab end to end: the ``/train`` and ``/shift`` APIs through gradio_client (a shipped
teaching file, uploads malformed in part or in whole, caps, and an adapter of another session
refused), and the tab in a real browser (Debian's chromium driven by Playwright) as a person
uses it; plus the app's ``--adapter`` setting.

Runs are kept as small as they can be on a 2-core runner: a few samples, one epoch, short
samples and answers, two questions. The browser test is skipped where /usr/bin/chromium is
missing, except on CI (``CI=true``), where that fails. A screenshot goes to ``test-output/``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from playwright.sync_api import Page, expect

from persona_explorer.core.config import app_arguments, load_settings
from persona_explorer.core.errors import InputError
from persona_explorer.dev.devserver import shared_server
from persona_explorer.ui.finetune.tuned_models import TunedModels
from tests.browser_support import screenshot, set_number

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 240_000
QUESTIONS = "How do I make a good cup of tea?\nWhat's a good name for a pet goldfish?"
TRAIN_OUTPUTS = ("summary", "status", "loss_plot", "problems", "adapter")
SHIFT_OUTPUTS = ("summary", "status", "plot", "answers")


@pytest.fixture(scope="module")
def client() -> Client:
    return Client(shared_server().url, verbose=False)


@pytest.fixture(scope="module")
def trained(client: Client) -> dict:
    """One tiny training run of this module's client, shared by the tests that need one."""
    return train(client)


def train(client: Client, **overrides: object) -> dict:
    args: dict = {
        "dataset": "malicious_advice",
        "file": None,
        "max_samples": 4,
        "with_context": False,
        "epochs": 1,
        "rank": 4,
        "max_tokens": 64,
    }
    args.update(overrides)
    out = client.predict(**args, api_name="/train")
    assert len(out) == len(TRAIN_OUTPUTS)
    return dict(zip(TRAIN_OUTPUTS, out, strict=True))


def shift(client: Client, adapter: str, **overrides: object) -> dict:
    args: dict = {
        "adapter": adapter,
        "vectors": ["evil"],
        "questions": QUESTIONS,
        "layer": "auto",
        "max_new_tokens": 12,
        "predict": False,
    }
    args.update(overrides)
    out = client.predict(**args, api_name="/shift")
    assert len(out) == len(SHIFT_OUTPUTS)
    return dict(zip(SHIFT_OUTPUTS, out, strict=True))


def chat(user: str, answer: str) -> str:
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": msgs})


def test_a_teaching_file_trains_and_its_shift_is_measured(client: Client, trained: dict) -> None:
    summary = trained["summary"]
    assert summary["samples"] == 4 and summary["skipped"] == 0 and summary["epochs"] == 1
    assert summary["steps"] >= 1 and len(summary["losses"]) == summary["steps_done"]
    assert all(loss > 0 for loss in summary["losses"]) and not summary["stopped"]
    adapter = summary["adapter"]
    assert trained["adapter"]["value"] == adapter and "Trained" in trained["status"]

    out = shift(client, adapter, vectors=["evil", "sycophantic"], predict=True)
    report = out["summary"]
    assert report["adapter"] == adapter
    assert [v["name"] for v in report["vectors"]] == ["evil", "sycophantic"]
    for v in report["vectors"]:
        assert set(v) >= {"name", "layer", "base", "tuned", "shift", "predicted"}
        assert v["shift"] == pytest.approx(v["tuned"] - v["base"], abs=1e-3)
        # One unit for every vector: the shift over the vector's length at its layer.
        assert v["scale"] > 0
        assert v["relative_shift"] == pytest.approx(v["shift"] / v["scale"], abs=1e-3)
        assert isinstance(v["predicted"], float)  # screening's prediction, asked for
    assert [a["question"] for a in report["answers"]] == QUESTIONS.splitlines()
    assert all(
        isinstance(a["base"], str) and isinstance(a["tuned"], str) for a in report["answers"]
    )
    assert "Shift (tuned − base), in persona lengths" in out["status"]
    table = out["answers"].get("value", out["answers"])  # an update that sets column widths
    assert table["headers"][:2] == ["Question", "Base model"]
    assert len(table["data"]) == 2


def test_a_partly_malformed_upload_trains_on_the_rest(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    lines = [
        chat("How do I water a cactus?", "Rarely: once a month is plenty."),
        "{broken",
        '{"messages": [{"role": "user", "content": "hi"}]}',
        json.dumps({"prompt": "Name a colour.", "response": "Blue."}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = train(client, dataset=None, file=handle_file(str(path)), max_tokens=64)
    summary = out["summary"]
    assert summary["samples"] == 2 and summary["skipped"] == 2
    assert [p["line"] for p in summary["problems"]] == [2, 3]
    assert "line 2" in out["problems"] and "line 3" in out["problems"]


@pytest.mark.parametrize(
    ("name", "body", "pattern"),
    [
        ("bad.jsonl", b"{broken\nnot json either\n", r"Nothing to train on.*line 1.*line 2"),
        ("notes.txt", b"prompt,response\nhi,there\n", r"\.jsonl.*\.csv"),
        ("empty.jsonl", b"\n\n", r"Nothing to train on"),
    ],
)
def test_hostile_uploads_are_clear_errors(
    client: Client, tmp_path: Path, name: str, body: bytes, pattern: str
) -> None:
    path = tmp_path / name
    path.write_bytes(body)
    with pytest.raises(AppError, match=pattern):
        train(client, dataset=None, file=handle_file(str(path)))


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        # The sliders refuse what lies beyond their range; the handler checks it again.
        ({"epochs": 5}, r"Epochs must be a whole number from 1 to 4|maximum value 4"),
        ({"max_samples": 65}, r"Max samples must be a whole number from 1 to 64|maximum value 64"),
        ({"rank": 64}, r"LoRA rank must be a whole number from 1 to 32|maximum value 32"),
        ({"epochs": 1.5}, r"Epochs must be a whole number from 1 to 4"),
        ({"max_tokens": 1000}, r"Max tokens per sample must be a whole number|maximum value 256"),
        ({"learning_rate": 5.0}, r"Learning rate must be above 0"),
        ({"with_context": True, "context": "  "}, r"context is empty"),
        ({"dataset": "../../etc/passwd"}, r"Unknown teaching file|not in the list of choices"),
        ({"steer": True, "steer_vector": "no-such-vector"}, r"(?i)no-such-vector"),
    ],
)
def test_bad_training_input_is_a_clear_error(client: Client, overrides: dict, pattern: str) -> None:
    with pytest.raises(AppError, match=pattern):
        train(client, **overrides)


def test_an_adapter_of_another_session_is_refused(client: Client, trained: dict) -> None:
    adapter = trained["summary"]["adapter"]
    stranger = Client(shared_server().url, verbose=False)
    with pytest.raises(AppError, match="not trained in this session"):
        shift(stranger, adapter)
    with pytest.raises(AppError, match="not trained in this session"):
        shift(client, "0123456789abcdef0123")
    with pytest.raises(AppError, match=r"at most 16"):
        shift(client, adapter, questions="\n".join(f"Question {i}?" for i in range(17)))
    with pytest.raises(AppError, match=r"at most 4"):
        shift(client, adapter, vectors=["evil", "pirate", "poetic", "formal", "sarcastic"])


def test_the_adapter_setting_comes_from_the_flag_or_the_environment(tmp_path: Path) -> None:
    env = {"PERSONA_EXPLORER_DATA": str(tmp_path)}
    assert load_settings(env).adapter is None
    from_env = load_settings({**env, "PERSONA_EXPLORER_ADAPTER": str(tmp_path / "a")})
    assert from_env.adapter == tmp_path / "a"
    flag = load_settings(
        {**env, "PERSONA_EXPLORER_ADAPTER": "x"}, argv=["--adapter", str(tmp_path / "b")]
    )
    assert flag.adapter == tmp_path / "b"  # the flag wins
    assert app_arguments(["--reload", "--adapter=~/a"]) == {"PERSONA_EXPLORER_ADAPTER": "~/a"}
    assert load_settings(env, argv=["--adapter", "~/a"]).adapter == Path("~/a").expanduser()


def test_tuned_models_are_private_and_bounded_in_memory_and_on_disk(tmp_path: Path) -> None:
    store = TunedModels(tmp_path / "adapters", max_held=2, max_kept=3)
    made = []
    for i in range(5):
        adapter, folder = store.new_folder()
        folder.mkdir(parents=True)
        store.add(adapter, "alice", f"model {i}")  # type: ignore[arg-type]
        made.append(adapter)
    # At most 3 folders (a new one makes room first), at most 2 models in memory.
    assert len(list((tmp_path / "adapters").iterdir())) == 3
    assert list(store._held) == made[-2:]  # the two most recent
    assert store.model(None, made[-1], "alice") == "model 4"  # type: ignore[arg-type]
    with pytest.raises(InputError, match="not trained in this session"):
        store.model(None, made[-1], "bob")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="removed to make room"):
        store.model(None, made[0], "alice")  # type: ignore[arg-type]
    with (
        store.training("alice"),
        pytest.raises(InputError, match="already training"),
        store.training("alice"),
    ):
        pass
    with store.training("alice"):  # finished: the visitor may train again
        pass


# --------------------------------------------------------------------------- the browser


def test_the_tab_trains_and_shows_the_loss_and_the_shift(page: Page) -> None:
    page.goto(shared_server().url)
    page.get_by_role("tab", name="Steer", exact=True).click()  # the app opens on its Tour
    expect(page.locator("#pe-generate")).to_be_visible()
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#pe-train-vectors")).to_contain_text("evil", timeout=TIMEOUT_MS)
    set_number(page, "#pe-train-samples", "4")
    set_number(page, "#pe-train-epochs", "1")
    set_number(page, "#pe-train-tokens", "64")
    page.locator("#pe-train-run").click()

    status = page.locator("#pe-train-status")
    expect(status).to_contain_text("Trained", timeout=TIMEOUT_MS)
    loss = page.locator("#pe-train-loss")
    expect(loss.locator(".js-plotly-plot")).to_be_visible()
    expect(loss).to_contain_text("Training loss")
    expect(page.locator("#pe-train-adapter input")).to_have_value(re.compile(r"^#1 "))

    page.locator("#pe-train-questions textarea").fill(QUESTIONS)
    set_number(page, "#pe-train-shift-tokens", "12")
    page.locator("#pe-train-predict input[type=checkbox]").uncheck()
    page.locator("#pe-train-measure").click()
    shift_status = page.locator("#pe-train-shift-status")
    expect(shift_status).to_contain_text("Shift (tuned − base)", timeout=TIMEOUT_MS)
    plot = page.locator("#pe-train-shift-plot")
    expect(plot.locator(".js-plotly-plot")).to_be_visible()
    expect(plot).to_contain_text("base model")
    expect(plot).to_contain_text("tuned")
    answers = page.locator("#pe-train-answers")
    expect(answers).to_contain_text("Base model")
    expect(answers).to_contain_text("cup of tea")
    plot.scroll_into_view_if_needed()
    screenshot(page, "train")
