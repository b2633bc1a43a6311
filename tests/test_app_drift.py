"""The Drift tab end to end: ``/chat`` and ``/replay`` through gradio_client (hostile uploads
too), and in a real browser: a chat turn and a replay, each with its plot."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from playwright.sync_api import Page, expect

from persona_explorer.dev.devserver import MILD, shared_server
from tests.browser_support import screenshot

pytestmark = pytest.mark.e2e

SHORT = "case_studies/llama-3.3-70b/jailbreak_unsteered"  # 5 turns: one pass of the model
TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def client() -> Client:
    return Client(shared_server().url, verbose=False)


def chat(client: Client, message: str, history: object = None, **options: object) -> tuple:
    return client.predict(
        message=message, history=history, max_new_tokens=8, api_name="/chat", **options
    )


def test_chat_and_replay_have_named_parameters_and_outputs(client: Client) -> None:
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    generic = re.compile(r"^(value_\d+|param_\d+|output_\d+)$")
    assert [p["parameter_name"] for p in api["/chat"]["parameters"]][:3] == [
        "message",
        "history",
        "persona",
    ]
    assert [p["parameter_name"] for p in api["/replay"]["parameters"]] == [
        "transcripts",
        "upload",
        "window_tokens",
        "projections",
        "plot_layer",
        "cap",
    ]
    for name in ("/chat", "/replay"):
        for item in api[name]["parameters"] + api[name]["returns"]:
            label = item.get("label") or item.get("parameter_name") or ""
            assert label and not generic.match(label), (name, item)


def test_chat_answers_and_places_each_turn_on_the_axis(client: Client) -> None:
    shown, history, plot, status, _ = chat(client, "Hello! Who are you?")
    assert [m["role"] for m in shown] == ["user", "assistant"]
    assert plot is not None and "on the axis" in status
    (turn,) = history["turns"]
    assert turn["turn"] == 1 and len(turn["normalised"]) == 30 and len(turn["projection"]) == 30
    # The returned history goes back in as is; a second answer, capped, is turn 2.
    shown, history, _, status, _ = chat(
        client, "Tell me about the sea.", history, cap=True, projections=[MILD]
    )
    assert [t["turn"] for t in history["turns"]] == [1, 2]
    assert len(history["conversation"]) == 4 and "capped" in status
    assert list(history["turns"][1]["personas"]) and len(shown) == 4


def test_chat_accepts_a_bare_list_history_and_steering(client: Client) -> None:
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
    ]
    _, out, _, status, _ = chat(client, "Tell me a joke.", history, persona=MILD, strength=2.0)
    assert "steered" in status and out["turns"][-1]["turn"] == 2


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"history": [{"role": "wizard", "content": "x"}]}, "role"),
        ({"history": [{"role": "user", "content": "only a question"}]}, "assistant"),
        ({"history": {"conversation": "nope"}}, "list"),
        ({"cap": True, "cap_layers": "99"}, "layer"),
        ({"projections": ["no-such-vector"]}, "no-such-vector"),
        ({"message": "   "}, "empty"),
    ],
)
def test_bad_chat_input_is_a_clear_error(client: Client, options: dict, words: str) -> None:
    args = {"message": "Hi", "max_new_tokens": 4, **options}
    with pytest.raises(AppError, match=words):
        client.predict(**args, api_name="/chat")


def test_replay_a_shipped_transcript(client: Client) -> None:
    plot, summary, numbers = client.predict(transcripts=[SHORT], api_name="/replay")
    assert plot is not None and "first" in summary
    (rep,) = numbers["replays"]
    assert [t["turn"] for t in rep["turns"]] == [1, 2, 3, 4, 5]
    assert all(isinstance(t["normalised"], float) for t in rep["turns"])
    assert numbers["layer"] == 15


def test_the_four_drift_transcripts_come_back_at_once_from_the_shipped_replays(
    client: Client,
) -> None:
    # Read now, these take minutes on a CPU (23.6k tokens for therapy alone); a demo needs
    # them in seconds, so the embedded model's replays are shipped.
    keys = [f"persona_drift/{d}" for d in ("coding", "philosophy", "therapy", "writing")]
    started = time.perf_counter()
    _, summary, numbers = client.predict(transcripts=keys, api_name="/replay")
    seconds = time.perf_counter() - started
    assert seconds < 60, seconds
    assert summary.count("from the shipped replay") == 4, summary
    reps = numbers["replays"]
    assert [len(r["turns"]) for r in reps] == [15, 14, 15, 14]
    assert all(r["source"] == "from the shipped replay" for r in reps)
    assert all(isinstance(t["normalised"], float) for r in reps for t in r["turns"])


def test_replay_an_uploaded_conversation(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "my-chat.json"
    path.write_text(
        json.dumps(
            [
                {"role": "user", "content": "What is a river?"},
                {"role": "assistant", "content": "A river is a natural stream of water."},
                {"role": "user", "content": "And a lake?"},
                {"role": "assistant", "content": "A lake is a body of water surrounded by land."},
            ]
        )
    )
    _, summary, numbers = client.predict(
        upload=handle_file(str(path)), window_tokens=512, plot_layer=20, api_name="/replay"
    )
    (rep,) = numbers["replays"]
    assert rep["label"] == "upload: my-chat" and len(rep["turns"]) == 2
    assert numbers["layer"] == 20 and "my" in summary


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\x80\x03cbuiltins\neval\n", "UTF-8"),  # a pickle: never unpickled, refused as text
        (b'{"conversation": [{"role": "tool", "content": "x"}]}', "role"),
        (b"[" * 50_000 + b"]" * 50_000, "nested"),
        (b"{}", "conversation"),
    ],
)
def test_hostile_uploads_are_refused_and_the_server_keeps_serving(
    client: Client, tmp_path: Path, content: bytes, words: str
) -> None:
    path = tmp_path / "evil.json"
    path.write_bytes(content)
    with pytest.raises(AppError, match=words):
        client.predict(upload=handle_file(str(path)), api_name="/replay")
    shown, *_ = chat(client, "Still there?")
    assert shown[-1]["role"] == "assistant"


def test_replay_refuses_unknown_transcripts_and_bad_windows(client: Client) -> None:
    # The dropdowns refuse what is not one of their choices before the handler runs.
    with pytest.raises(AppError, match="not in the list of choices"):
        client.predict(transcripts=["../../secrets"], api_name="/replay")
    with pytest.raises(AppError, match="not in the list of choices"):
        client.predict(transcripts=[SHORT], window_tokens=10, api_name="/replay")
    with pytest.raises(AppError, match="at least one"):
        client.predict(api_name="/replay")


# --------------------------------------------------------------------------- browser


def open_drift(page: Page) -> None:
    page.goto(shared_server().url)
    page.get_by_role("tab", name="Steer", exact=True).click()  # the app opens on its Tour
    expect(page.locator("#pe-generate")).to_be_visible()
    page.get_by_role("tab", name="Drift").click()
    expect(page.locator("#pe-drift-message")).to_be_visible()


def test_browser_chat_turn_shows_the_reply_and_the_plot(page: Page) -> None:
    open_drift(page)
    page.locator("#pe-drift-message textarea").fill("Hello! What can you do?")
    page.locator("#pe-drift-send").click()
    bot = page.locator("#pe-drift-chatbot")
    expect(bot).to_contain_text("Hello! What can you do?")
    # The reply is generated first: on a busy 2-core machine that takes longer than 5 s.
    expect(page.locator("#pe-drift-chat-status")).to_contain_text("on the axis", timeout=90_000)
    expect(page.locator("#pe-drift-chat-plot .js-plotly-plot")).to_be_visible()
    expect(page.locator("#pe-drift-chat-plot")).to_contain_text("this chat")
    screenshot(page, "drift-chat")


def test_browser_replay_of_a_shipped_transcript(page: Page) -> None:
    open_drift(page)
    page.get_by_role("tab", name="Replay").click()
    page.locator("#pe-drift-transcripts input").click()
    page.get_by_role("option", name=re.compile(r"jailbreak, unsteered \(Llama")).first.click()
    page.locator("#pe-drift-run").click()
    expect(page.locator("#pe-drift-replay-status")).to_contain_text("first", timeout=TIMEOUT_MS)
    expect(page.locator("#pe-drift-replay-plot .js-plotly-plot")).to_be_visible()
    expect(page.locator("#pe-drift-replay-plot")).to_contain_text("jailbreak")
    # Another layer re-draws from what was kept: the title says the new layer.
    slider = page.locator("#pe-drift-layer input[type=number]")
    slider.fill("20")
    slider.press("Enter")
    expect(page.locator("#pe-drift-replay-plot")).to_contain_text("layer 20")
    screenshot(page, "drift-replay")
