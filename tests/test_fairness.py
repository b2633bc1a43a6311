"""Fair use (issue 25): caps per visitor and per address, fair order, the refusal's own message,
X-Forwarded-For read only from trusted hops, and upload quotas.

The queue tests run a tiny Gradio app (no model) with a slow "generation" event, driven by
gradio_client as a script would.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from gradio_client import Client
from starlette.requests import Request

from persona_explorer.ui.shared.fairness import (
    ADDRESS_SHARE,
    client_address,
    fair_order,
    limit_jobs_per_visitor,
    refusal,
)
from persona_explorer.ui.shared.uploads import UploadQuota, discard, folder_bytes


def _request(xff: list[str] | None = None, peer: str = "10.16.3.80") -> Request:
    headers = [(b"x-forwarded-for", v.encode()) for v in xff or []]
    return Request({"type": "http", "headers": headers, "client": (peer, 1234), "method": "GET"})


def test_only_the_entries_trusted_proxies_added_are_read() -> None:
    # The client wrote "6.6.6.6"; the one proxy in front (a Space's) appended 1.2.3.4.
    req = _request(["6.6.6.6, 1.2.3.4"])
    assert client_address(req, 1) == "1.2.3.4"
    assert client_address(req, 0) == "10.16.3.80"  # no proxy trusted: the peer
    assert client_address(_request(["6.6.6.6", "1.2.3.4, 10.0.0.9"]), 2) == "1.2.3.4"
    assert client_address(_request(["1.2.3.4"]), 2) == "1.2.3.4"  # shorter: its leftmost
    assert client_address(_request(), 1) == "10.16.3.80"


def test_a_class_behind_one_address_is_not_refused() -> None:
    pending = [(f"student{i}", "school") for i in range(30)]
    assert refusal("student30", "school", pending, 3, 48) is None
    assert refusal("student0", "school", pending + [("student0", "school")] * 2, 3, 48)
    why = refusal("new", "script", [(f"s{i}", "script") for i in range(48)], 3, 48)
    assert why is not None and "address" in why


def test_fair_order_puts_everybodys_first_job_first() -> None:
    script = [(f"s{i}", "A") for i in range(50)]
    order = fair_order([*script, ("victim", "B")], [], lambda job: job)
    assert order.index(("victim", "B")) <= 1
    # One session's second job waits for everybody's first.
    order = fair_order([("a", "A"), ("a", "A"), ("b", "B")], [], lambda job: job)
    assert order == [("a", "A"), ("b", "B"), ("a", "A")]
    # Running jobs count: a session with one running goes after one with none.
    assert fair_order([("a", "A"), ("b", "B")], [("a", "A")], lambda j: j)[0] == ("b", "B")
    # An address advances ADDRESS_SHARE jobs per round.
    mixed = fair_order([*script[:20], ("v1", "B"), ("v1", "B")], [], lambda j: j)
    assert mixed.index(("v1", "B"), mixed.index(("v1", "B")) + 1) <= 2 * ADDRESS_SHARE + 2


# --------------------------------------------------------------------------- a real queue


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app() -> Iterator[SimpleNamespace]:
    done: list[str] = []
    lock = threading.Lock()
    # Jobs wait for the gate: every job a test submits is pending at once, however slowly a
    # loaded machine lets the test submit them (a job that finished early would free a place).
    gate = threading.Event()
    gate.set()

    def slow(x: str) -> str:
        gate.wait(timeout=30)
        time.sleep(0.15)
        with lock:
            done.append(x)
        return x

    with gr.Blocks() as demo:
        box = gr.Textbox()
        out = gr.Textbox()
        box.submit(slow, box, out, api_name="steer", concurrency_id="generation",
                   concurrency_limit=1)  # fmt: skip
    demo.queue(max_size=256)
    limit_jobs_per_visitor(demo, max_pending=3, max_per_address=12, trusted_hops=1)
    port = _free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", done=done, gate=gate)
    finally:
        demo.close()


def _client(app: SimpleNamespace, xff: str) -> Client:
    return Client(app.url, verbose=False, headers={"X-Forwarded-For": xff})


def test_the_refusal_reaches_gradio_client_with_its_own_words(app: SimpleNamespace) -> None:
    greedy = _client(app, "1.1.1.1")
    app.gate.clear()
    jobs = [greedy.submit(f"g{i}", api_name="/steer") for i in range(5)]
    time.sleep(1.0)
    app.gate.set()
    errors = []
    for job in jobs:
        try:
            job.result(timeout=60)
        except Exception as exc:  # gradio_client's AppError
            errors.append(str(exc))
    assert len(errors) == 2
    assert all("jobs waiting or running" in e for e in errors), errors
    assert not any("Queue is full" in e for e in errors)


def test_invented_sessions_and_addresses_cannot_make_others_wait(app: SimpleNamespace) -> None:
    app.done.clear()
    # A script: 20 sessions, each claiming a new address in the entry it writes; the proxy
    # (simulated) appends the real one.
    script = [_client(app, f"9.9.9.{i}, 2.2.2.2") for i in range(20)]
    victim = _client(app, "3.3.3.3")
    app.gate.clear()
    jobs = [c.submit(f"s{i}", api_name="/steer") for i, c in enumerate(script)]
    time.sleep(1.0)
    waiting = victim.submit("victim", api_name="/steer")
    time.sleep(1.0)
    app.gate.set()
    assert waiting.result(timeout=60) == "victim"
    # Behind every script job it would be 13th (12 admitted); fairly, it is among the first.
    assert app.done.index("victim") <= ADDRESS_SHARE + 2, app.done
    refused = 0
    for job in jobs:
        try:
            job.result(timeout=60)
        except Exception as exc:
            refused += "network address" in str(exc)
    assert refused == 8  # the address holds at most 12


# --------------------------------------------------------------------------- uploads


def _upload(size: int | None, xff: str = "1.2.3.4") -> Request:
    headers = [(b"x-forwarded-for", xff.encode())]
    if size is not None:
        headers.append((b"content-length", str(size).encode()))
    scope = {"type": "http", "headers": headers, "client": ("10.0.0.1", 1), "method": "POST"}
    return Request(scope)


def test_uploads_have_a_quota_per_address_and_in_total(tmp_path: Path) -> None:
    now = [0.0]
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "old.bin").write_bytes(b"x" * 100)
    quota = UploadQuota(None, per_address=1000, total=2000, trusted_hops=1,
                        folder=lambda app: tmp_path, clock=lambda: now[0])  # fmt: skip
    assert quota.refusal(_upload(None))[0] == 411
    assert quota.refusal(_upload(600)) is None
    status, message = quota.refusal(_upload(600))
    assert status == 429 and "uploaded 0 MB in the last hour" in message
    assert quota.refusal(_upload(600, xff="5.6.7.8")) is None  # another visitor
    assert quota.refusal(_upload(900, xff="9.9.9.9"))[0] == 507  # the folder is full
    now[0] = 3601.0  # an hour later the address may upload again
    quota._folder_size = None
    (tmp_path / "h" / "old.bin").unlink()
    assert quota.refusal(_upload(600)) is None
    assert folder_bytes(tmp_path) == 0


def test_an_upload_that_was_read_is_deleted_and_nothing_else(tmp_path: Path) -> None:
    upload = tmp_path / "abc123" / "v.safetensors"
    upload.parent.mkdir()
    upload.write_bytes(b"v")
    outside = tmp_path.parent / f"{tmp_path.name}-keep.txt"
    outside.write_text("keep")
    discard(str(outside), folder=tmp_path)
    discard(str(tmp_path / ".." / outside.name), folder=tmp_path)
    assert outside.exists()
    discard(str(upload), folder=tmp_path)
    assert not upload.exists() and not upload.parent.exists()
    discard({"path": "x"}, folder=tmp_path)  # not a path: ignored
    outside.unlink()
