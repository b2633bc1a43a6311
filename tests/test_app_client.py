"""The running app through its API, as a script or another app would use it (gradio_client).

The app is started once (``python app.py`` with the embedded model and synthetic test vectors,
see ``tests/app_server.py``); every bad input must come back as a clear error while the server
keeps serving the next request.
"""

from __future__ import annotations

import json
import os
import pickle
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from persona_explorer.dev.devserver import FOREIGN, MILD, STRONG, shared_server

pytestmark = pytest.mark.e2e

PROMPT = "What is your favourite season, and why?"
TOKENS = 10


@pytest.fixture(scope="module")
def client() -> Client:
    return Client(shared_server().url, verbose=False)


def steer(client: Client, **overrides: object) -> tuple:
    args: dict = {
        "prompt": PROMPT,
        "persona": STRONG,
        "layer": 12,
        "strength": 4.0,
        "max_new_tokens": TOKENS,
        "system_prompt": "",
    }
    args.update(overrides)
    return client.predict(**args, api_name="/steer")


def assert_still_serving(client: Client) -> None:
    baseline, steered, *_ = steer(client, persona=MILD, layer=20, strength=2.0, max_new_tokens=4)
    assert baseline.strip() and steered.strip()


def test_steer_returns_baseline_and_a_different_steered_text(client: Client) -> None:
    baseline, steered, plot, tokens_baseline, tokens_steered, status, *_files = steer(client)
    assert baseline.strip() and steered.strip()
    assert baseline != steered
    assert plot is not None  # the per-layer projection figure
    assert "pe-tok" in tokens_baseline and "pe-tok" in tokens_steered
    assert "tok/s" in status


def test_steer_streams_partial_texts(client: Client) -> None:
    job = client.submit(
        prompt=PROMPT,
        persona=STRONG,
        layer=12,
        strength=4.0,
        max_new_tokens=TOKENS,
        system_prompt="",
        api_name="/steer",
    )
    final = job.result(timeout=120)
    updates = job.outputs()
    assert len(updates) > 2, "expected one update per generated token"
    assert len(updates[0][0]) <= len(final[0])
    assert updates[-1][0] == final[0]


def test_strength_zero_matches_the_baseline(client: Client) -> None:
    baseline, steered, *_ = steer(client, strength=0.0)
    assert baseline == steered


def test_plain_names_and_dropdown_keys_both_work(client: Client) -> None:
    a = steer(client, persona=STRONG)[1]
    b = steer(client, persona=f"builtin:{STRONG}")[1]
    assert a == b


def test_strength_sweep_runs_several_strengths_in_one_call(client: Client) -> None:
    _plot, table = client.predict(
        prompt=PROMPT,
        persona=MILD,
        layer=20,
        strength=1.0,
        max_new_tokens=6,
        system_prompt="",
        api_name="/sweep_strengths",
    )
    strengths = [row[0] for row in table["data"]]
    assert strengths == [-2.0, 0.0, 1.0, 2.0, 4.0]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"prompt": ""}, "empty"),
        ({"prompt": "   \n "}, "empty"),
        ({"prompt": "x" * 4001}, "limit is 4,000"),
        ({"system_prompt": "y" * 5000}, "limit is 4,000"),
        ({"strength": 1e9}, "maximum"),
        ({"layer": 30}, "maximum"),
        ({"layer": -1}, "minimum"),
        ({"persona": "no-such-persona"}, "Unknown persona"),
        ({"persona": ""}, "No persona selected"),
        ({"persona": FOREIGN}, "Llama-3.1-8B-Instruct"),
        ({"max_new_tokens": 100000}, "maximum"),
        ({"max_new_tokens": 0}, "minimum"),
    ],
)
def test_bad_inputs_raise_clear_errors_and_the_server_keeps_serving(
    client: Client, overrides: dict, expected: str
) -> None:
    with pytest.raises(AppError) as info:
        steer(client, **overrides)
    assert expected.lower() in str(info.value).lower()
    assert_still_serving(client)


def raw_call(url: str, api_name: str, body: str) -> tuple[str, str]:
    """POST hand-written JSON (gradio_client cannot send NaN) and read the SSE reply."""
    req = urllib.request.Request(
        f"{url}gradio_api/call/{api_name}",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        event_id = json.loads(resp.read())["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{api_name}/{event_id}", timeout=120) as r:
        text = r.read().decode()
    events = [
        line.removeprefix("event: ") for line in text.splitlines() if line.startswith("event:")
    ]
    return events[-1], text


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_strength_sent_as_raw_json_is_refused(client: Client, value: str) -> None:
    body = (
        '{"data": ["Hello", "%s", 12, %s, 4, "", "all", 0, 0, -1, 1.0]}' % (STRONG, value)  # noqa: UP031
    )
    event, text = raw_call(shared_server().url, "steer", body)
    assert event == "error"
    assert "finite" in text or "imum" in text
    assert_still_serving(client)


# --------------------------------------------------------------------------- uploads


def upload(client: Client, path: Path, layout: str = "auto") -> str:
    _selected, status = client.predict(
        file=handle_file(str(path)), layout=layout, api_name="/upload_vector"
    )
    return status


def test_upload_a_persona_vectors_file(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "calm_response_avg_diff.pt"
    torch.save(torch.randn(31, 576), path)  # embedding row + 30 layers
    assert "Added **calm**" in upload(client, path)


def test_upload_an_assistant_axis_file_with_an_explicit_layout(
    client: Client, tmp_path: Path
) -> None:
    path = tmp_path / "axis.pt"
    torch.save(torch.randn(30, 576), path)
    assert "Added **axis**" in upload(client, path, layout="assistant_axis")


def test_upload_for_another_model_is_listed_but_flagged(client: Client, tmp_path: Path) -> None:
    from persona_explorer.vectors.files import save
    from persona_explorer.vectors.persona_vector import PersonaVector

    path = tmp_path / "bigger.safetensors"
    save(PersonaVector("bigger", torch.randn(32, 4096), model_id="other/Model-8B"), path)
    status = upload(client, path).replace("\\", "")  # user text arrives Markdown-escaped
    assert "Added" in status and "cannot steer" in status and "other/Model-8B" in status


def test_upload_a_gguf_control_vector(client: Client, tmp_path: Path) -> None:
    from persona_explorer.vectors.files import save
    from persona_explorer.vectors.persona_vector import PersonaVector

    vecs = torch.randn(30, 576)
    vecs[0] = 0  # GGUF control vectors cannot hold layer 0
    path = tmp_path / "lantern.gguf"
    save(PersonaVector("lantern", vecs), path)
    assert "Added **lantern**" in upload(client, path)


class _Hostile:
    """Unpickling this runs a shell command: the upload must never unpickle it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_pickle_is_refused_and_never_executed(client: Client, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"vectors": _Hostile(marker)}, fh)
    with pytest.raises(AppError, match=r"never executed|safely"):
        upload(client, path)
    torch_path = tmp_path / "evil2.pt"
    torch.save({"vectors": _Hostile(marker)}, torch_path)
    with pytest.raises(AppError):
        upload(client, torch_path)
    assert not marker.exists()
    assert_still_serving(client)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("corrupt.safetensors", b"\x00" * 64, "safetensors header"),
        ("corrupt.gguf", b"GGUF" + b"\xff" * 60, "gguf"),
        ("garbage.pt", b"definitely not a zip or pickle", "safely"),
    ],
)
def test_corrupt_files_are_refused(
    client: Client, tmp_path: Path, name: str, content: bytes, expected: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AppError) as info:
        upload(client, path)
    assert expected.lower() in str(info.value).lower()
    assert_still_serving(client)


def test_a_file_of_the_wrong_shape_is_refused(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "wrong.pt"
    torch.save(torch.randn(7, 576), path)
    with pytest.raises(AppError, match="rows"):
        upload(client, path)


def test_a_huge_upload_is_refused(client: Client, tmp_path: Path) -> None:
    # The test server allows 2 MB (PERSONA_EXPLORER_MAX_UPLOAD_MB in tests/app_server.py).
    path = tmp_path / "huge.safetensors"
    with open(path, "wb") as fh:
        fh.truncate(3 * 1024 * 1024)
    # gradio_client reads the limit from the app and refuses before sending...
    with pytest.raises(ValueError, match="maximum file size"):
        upload(client, path)
    # ...and a client that ignores it is stopped by the server while the body streams in.
    boundary = "persona-explorer-test"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="huge.safetensors"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        shared_server().url + "gradio_api/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=60)
    assert info.value.code == 413
    assert_still_serving(client)
