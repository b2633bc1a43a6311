"""Upload refusals end to end (issue 25, item 5): the real app in public mode with small limits,
uploads sent as a browser, gradio_client and a script (httpx) send them.

* over an address's hourly quota: 429 with the app's own message, shown in the page's toast
  and carried by the response gradio_client raises on; other addresses are not affected, and
  an entry the client wrote in ``X-Forwarded-For`` does not escape the quota;
* while the upload folder is full: 507 with the app's message; once space is freed, uploads
  are received again;
* an upload the Library has read is deleted from the upload folder;
* the server keeps serving throughout (a generation after the refusals).

One app of its own (Gradio's upload folder a temporary one, one trusted proxy hop so that the
tests can speak for several addresses); the browser test drives Debian's chromium (skipped
where it is missing, except on CI).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from gradio_client import Client, handle_file

from persona_explorer.dev.devserver import MILD, AppServer, make_test_vectors
from persona_explorer.engine.model import EMBEDDED_MODEL_ID
from persona_explorer.ui.shared.uploads import folder_bytes
from persona_explorer.vectors.files import save
from persona_explorer.vectors.persona_vector import PersonaVector
from tests.browser_support import TIMEOUT_MS, checked_page, launched_browser, screenshot

pytestmark = pytest.mark.e2e

MB = 1024 * 1024
QUOTA_MB = 2  # per address and hour
TOTAL_MB = 12  # the whole upload folder
CHUNK = int(0.9 * MB)  # two fit in the quota, a third does not
FOLDER_CACHE_S = 5.0  # how long the middleware trusts its last measure of the folder
QUOTA_MESSAGE = "Upload refused: your network address has uploaded"
FULL_MESSAGE = "Upload refused: the server's upload space is full"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    root = tmp_path_factory.mktemp("upload-limits")
    uploads = root / "gradio-uploads"
    uploads.mkdir()
    srv = AppServer(
        data_dir=root / "data",
        builtin_dir=make_test_vectors(root / "builtin"),
        env={
            "PERSONA_EXPLORER_DEFAULT_PERSONA": MILD,
            "PERSONA_EXPLORER_PUBLIC": "1",
            "PERSONA_EXPLORER_MAX_UPLOAD_MB": "1",
            "PERSONA_EXPLORER_UPLOAD_QUOTA_MB": str(QUOTA_MB),
            "PERSONA_EXPLORER_UPLOAD_TOTAL_MB": str(TOTAL_MB),
            "PERSONA_EXPLORER_TRUSTED_PROXY_HOPS": "1",
            "GRADIO_TEMP_DIR": str(uploads),
        },
        log_path=root / "app.log",
    )
    with srv:
        yield srv


def uploads_dir(server: AppServer) -> Path:
    return Path(server.env["GRADIO_TEMP_DIR"])


def post(server: AppServer, address: str, size: int = CHUNK, name: str = "a.bin") -> httpx.Response:
    """An upload as a script sends it; ``address`` is what the (simulated) proxy appended."""
    return httpx.post(
        f"{server.url}gradio_api/upload",
        files=[("files", (name, b"\0" * size))],
        headers={"X-Forwarded-For": address},
        timeout=60,
    )


def use_up_quota(server: AppServer, address: str) -> None:
    """Uploads from ``address`` until a few KB of its hourly quota are left."""
    for size in (CHUNK, CHUNK, QUOTA_MB * MB - 2 * CHUNK - 4096):
        r = post(server, address, size=size)
        assert r.status_code == 200, r.text


def vector_file(folder: Path) -> Path:
    """A small, valid vector file for the embedded model (30 layers, d_model 576)."""
    folder.mkdir(parents=True, exist_ok=True)
    vec = PersonaVector(
        name="uploaded-one",
        vectors=torch.randn(30, 576),
        model_id=EMBEDDED_MODEL_ID,
        layer=20,
        strength=2.0,
    )
    return save(vec, folder / "uploaded-one.safetensors")


def still_serves(server: AppServer) -> None:
    assert httpx.get(f"{server.url}config", timeout=30).status_code == 200
    out = Client(server.url, verbose=False).predict(
        prompt="Hi!", persona=MILD, layer=20, strength=2.0, max_new_tokens=4, api_name="/steer"
    )
    assert out[0].strip()


# --------------------------------------------------------------------------- a script


def test_over_the_hourly_quota_a_script_gets_429_with_the_apps_message(server: AppServer) -> None:
    use_up_quota(server, "1.1.1.1")
    refused = post(server, "1.1.1.1")
    assert refused.status_code == 429
    assert refused.text.startswith(QUOTA_MESSAGE) and "Try again later" in refused.text
    assert f"the limit is {QUOTA_MB} MB" in refused.text
    # What the client wrote in front of the proxy's entry changes nothing.
    assert post(server, "9.9.9.9, 1.1.1.1").status_code == 429
    # Another address is not affected.
    assert post(server, "2.2.2.2").status_code == 200
    # A file over the size limit is Gradio's 413 (max_file_size), not a crash.
    too_big = post(server, "6.6.6.6", size=int(1.5 * MB))
    assert too_big.status_code == 413, too_big.text
    still_serves(server)


def test_a_full_upload_folder_refuses_with_507_until_space_is_freed(
    server: AppServer, tmp_path: Path
) -> None:
    folder = uploads_dir(server)
    filler = folder / "filler" / "filler.bin"
    filler.parent.mkdir(exist_ok=True)
    room = TOTAL_MB * MB - folder_bytes(folder)
    filler.write_bytes(b"\0" * max(0, room - CHUNK // 2))  # less room than one upload
    try:
        time.sleep(FOLDER_CACHE_S + 1)  # the middleware measures the folder again
        refused = post(server, "3.3.3.3")
        assert refused.status_code == 507
        assert refused.text.startswith(FULL_MESSAGE)
    finally:
        filler.unlink()
        filler.parent.rmdir()
    time.sleep(FOLDER_CACHE_S + 1)
    assert post(server, "3.3.3.3").status_code == 200  # space again; nothing was counted
    still_serves(server)


# --------------------------------------------------------------------------- gradio_client


def test_gradio_client_gets_the_429_with_the_message_and_a_read_upload_is_deleted(
    server: AppServer, tmp_path: Path
) -> None:
    vec = vector_file(tmp_path / "vec")
    use_up_quota(server, "4.4.4.4")
    over = Client(server.url, verbose=False, headers={"X-Forwarded-For": "4.4.4.4"})
    with pytest.raises(httpx.HTTPStatusError) as refused:
        over.predict(file=handle_file(str(vec)), layout="auto", api_name="/upload_vector")
    assert refused.value.response.status_code == 429
    assert refused.value.response.text.startswith(QUOTA_MESSAGE)
    # Another address uploads the same file; the Library reads it, and the upload is gone.
    before = {p for p in uploads_dir(server).rglob("*.safetensors")}
    fine = Client(server.url, verbose=False, headers={"X-Forwarded-For": "5.5.5.5"})
    out = fine.predict(file=handle_file(str(vec)), layout="auto", api_name="/upload_vector")
    assert "Added" in str(out)
    left = {p for p in uploads_dir(server).rglob("*.safetensors")} - before
    assert not left, f"uploads left after the Library read them: {left}"
    still_serves(server)


# --------------------------------------------------------------------------- the browser


def test_the_browser_shows_the_apps_refusal_and_keeps_working(
    server: AppServer, tmp_path: Path
) -> None:
    vec = vector_file(tmp_path / "vec")
    use_up_quota(server, "7.7.7.7")
    from playwright.sync_api import expect

    with launched_browser() as browser:
        # This browser's requests arrive as from 7.7.7.7 (what the proxy would append).
        with checked_page(browser) as page:
            page.context.set_extra_http_headers({"X-Forwarded-For": "7.7.7.7"})
            page.goto(server.url)
            page.get_by_role("tab", name="Library", exact=True).click()
            page.locator("#pe-upload input[type=file]").set_input_files(str(vec))
            toast = page.locator(".toast-body")
            expect(toast.first).to_contain_text("Upload refused", timeout=TIMEOUT_MS)
            expect(toast.first).to_contain_text("network address")
            assert "currently busy" not in toast.first.inner_text()
            screenshot(page, "upload-refused-429")
        # A visitor at another address uploads the same file: it is read, then deleted.
        with checked_page(browser) as page:
            page.context.set_extra_http_headers({"X-Forwarded-For": "8.8.8.8"})
            before = {p for p in uploads_dir(server).rglob("*.safetensors")}
            page.goto(server.url)
            page.get_by_role("tab", name="Library", exact=True).click()
            page.locator("#pe-upload input[type=file]").set_input_files(str(vec))
            expect(page.locator("#pe-library-status")).to_contain_text("Added", timeout=TIMEOUT_MS)
            left = {p for p in uploads_dir(server).rglob("*.safetensors")} - before
            assert not left, f"uploads left after the Library read them: {left}"
    still_serves(server)
