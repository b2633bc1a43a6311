"""Uploads are deleted once a handler has read them (issue 25, item 5), and nothing else is.

Every handler that reads an upload goes through ``ui.shared.uploads``: a vector file (Library)
is deleted as soon as it has been read, accepted or refused; a data file (Screen data, Train)
or a conversation (Drift) is deleted at once when refused, and otherwise held for the visitor's
next runs and deleted when none has read it for ``HOLD_S`` (or when too many are held). A path
outside Gradio's upload folder is never deleted, whatever a client sends. The total disk cap
counts the bytes freed at once; the hourly quota per address does not give them back.

The handlers run on a tiny model; Gradio's upload folder is a temporary one (``GRADIO_TEMP_DIR``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import pytest
import torch
from starlette.requests import Request

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import Limits
from persona_explorer.engine.model import LoadedModel
from persona_explorer.ui.drift.handlers import ReplayForm, _conversations
from persona_explorer.ui.library import tab as library_tab
from persona_explorer.ui.shared import uploads
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.shared.data_files import resolve_source
from persona_explorer.ui.shared.uploads import (
    HOLD_MAX_FILES,
    HOLD_S,
    UploadQuota,
    consumed,
    discard,
    held,
    hold,
    prune_held,
)
from persona_explorer.vectors.files import save
from persona_explorer.vectors.persona_vector import PersonaVector
from tests.tiny_models import tiny_app_context


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Gradio's upload folder for this test; nothing is left held after it."""
    root = tmp_path / "gradio"
    root.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(root))
    yield root
    prune_held(float("inf"))  # everything held is past its time


def upload(folder: Path, name: str, data: bytes | str, where: str = "0a1b2c") -> Path:
    """A file as Gradio stores an upload: in a folder of its own inside the upload folder."""
    path = folder / where / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def outside_file(tmp_path: Path, name: str, data: str) -> Path:
    path = tmp_path / "elsewhere" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data, encoding="utf-8")
    return path


def chat_lines(n: int = 3) -> str:
    line = {
        "messages": [
            {"role": "user", "content": "How do I bake bread?"},
            {"role": "assistant", "content": "Mix flour, water, salt and yeast, then bake."},
        ]
    }
    return "\n".join(json.dumps(line) for _ in range(n)) + "\n"


CONVERSATION = json.dumps(
    [
        {"role": "user", "content": "Hello there."},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me about the sea."},
        {"role": "assistant", "content": "The sea is wide and deep."},
    ]
)


# --------------------------------------------------------------------------- the helper


def test_discard_deletes_an_upload_and_its_folder(folder: Path) -> None:
    path = upload(folder, "v.safetensors", b"x" * 10)
    assert discard(str(path)) == 10
    assert not path.exists() and not path.parent.exists()
    assert folder.is_dir()  # never the upload folder itself
    assert discard(str(path)) == 0  # already gone: nothing happens


def test_nothing_outside_the_upload_folder_is_ever_deleted(folder: Path, tmp_path: Path) -> None:
    keep = outside_file(tmp_path, "keep.txt", "keep")
    sneaky = folder / "0a1b2c" / ".." / ".." / "elsewhere" / "keep.txt"  # climbs out
    link = folder / "1d2e3f" / "link.jsonl"
    link.parent.mkdir()
    link.symlink_to(keep)  # inside the folder, pointing out of it
    top = folder / "top.bin"  # directly in the folder: not how Gradio stores an upload
    top.write_bytes(b"t")
    adir = folder / "4a5b6c" / "dir"
    adir.mkdir(parents=True)
    for path in (keep, sneaky, link, folder, top, adir, folder / "4a5b6c"):
        assert discard(str(path)) == 0
        assert discard(path) == 0
    for bad in (None, 3, {"path": str(keep)}, "", "a\x00b", b"/etc/passwd"):
        assert discard(bad) == 0
    assert keep.read_text() == "keep" and link.is_symlink() and top.exists() and adir.is_dir()
    with consumed(str(keep)):
        pass
    hold(str(keep), now=0.0)
    prune_held(float("inf"))
    assert keep.read_text() == "keep"


def test_consumed_deletes_after_the_read_even_when_it_fails(folder: Path) -> None:
    good = upload(folder, "a.json", "{}", where="aa")
    with consumed(str(good)) as p:
        assert Path(str(p)).read_text() == "{}"
    assert not good.exists()
    bad = upload(folder, "b.json", "{", where="bb")
    with pytest.raises(ValueError), consumed(str(bad)):
        raise ValueError("refused")
    assert not bad.exists()


def test_held_files_go_after_their_time_or_beyond_the_count(folder: Path) -> None:
    first = upload(folder, "first.jsonl", "x", where="f0")
    hold(str(first), now=0.0)
    hold(str(first), now=HOLD_S / 2)  # read again by a second run: its time starts again
    prune_held(HOLD_S)
    assert first.exists()
    prune_held(HOLD_S / 2 + HOLD_S + 1)
    assert not first.exists()
    many = [upload(folder, f"{i}.jsonl", "x", where=f"m{i}") for i in range(HOLD_MAX_FILES + 2)]
    for i, path in enumerate(many):
        hold(str(path), now=1e6 + i)
    assert [p.exists() for p in many[:3]] == [False, False, True]  # least recently used first
    assert all(p.exists() for p in many[2:])


def test_held_refuses_a_file_that_is_gone_and_deletes_a_refused_one(folder: Path) -> None:
    with pytest.raises(InputError, match="no longer on the server"), held(str(folder / "x" / "y")):
        pass
    bad = upload(folder, "bad.jsonl", "x")
    with pytest.raises(InputError), held(str(bad)):
        raise InputError("not a data file")
    assert not bad.exists()


# --------------------------------------------------------------------------- accounting


def _post(size: int, address: str) -> Request:
    headers = [(b"x-forwarded-for", address.encode()), (b"content-length", str(size).encode())]
    return Request(
        {"type": "http", "headers": headers, "client": ("10.0.0.1", 1), "method": "POST"}
    )


def test_the_total_counts_deletions_at_once_the_hourly_quota_does_not(folder: Path) -> None:
    quota = UploadQuota(
        None, per_address=1500, total=1000, trusted_hops=1, folder=lambda app: folder
    )
    assert quota.refusal(_post(800, "1.1.1.1")) is None
    path = upload(folder, "v.safetensors", b"v" * 800)  # what Gradio stored
    refused = quota.refusal(_post(800, "2.2.2.2"))
    assert refused is not None and refused[0] == 507  # the folder is full
    assert discard(str(path)) == 800  # the handler read it
    # At once (not after the folder is measured again): the disk is free for anybody...
    assert quota.refusal(_post(800, "2.2.2.2")) is None
    # ...but the first address sent 800 bytes this hour, deleted or not.
    status, message = quota.refusal(_post(800, "1.1.1.1"))
    assert status == 429 and "in the last hour" in message


# --------------------------------------------------------------------------- the handlers


@pytest.fixture
def ctx(llama: LoadedModel, tmp_path: Path, one_thread: None) -> AppContext:
    return tiny_app_context(
        llama, tmp_path, {"tiny-evil": 2.0}, default_persona="tiny-evil",
        limits=Limits(max_upload_mb=1),
    )  # fmt: skip


def _vector_bytes(ctx: AppContext, tmp_path: Path) -> bytes:
    vec = PersonaVector(
        name="uploaded",
        vectors=torch.randn(ctx.model.n_layers, ctx.model.d_model),
        model_id=ctx.model.model_id,
        layer=1,
        strength=1.0,
    )
    (tmp_path / "made").mkdir(exist_ok=True)
    return save(vec, tmp_path / "made" / "uploaded.safetensors").read_bytes()


def _library(ctx: AppContext) -> library_tab.LibraryTab:
    with gr.Blocks():
        return library_tab.build(ctx, gr.State({}), gr.BrowserState(None))


def test_a_vector_upload_is_gone_once_the_library_has_read_it(
    ctx: AppContext, folder: Path, tmp_path: Path
) -> None:
    tab = _library(ctx)
    good = upload(folder, "uploaded.safetensors", _vector_bytes(ctx, tmp_path), where="g1")
    out = library_tab.add_upload(ctx, tab, str(good), "auto", {})
    assert "Added" in out[tab.status]
    assert not good.exists() and not good.parent.exists()
    bad = upload(folder, "broken.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{bad", "b1")
    with pytest.raises(gr.Error):
        library_tab.add_upload(ctx, tab, str(bad), "auto", {})
    assert not bad.exists()
    # A path outside the upload folder (a script may send any string): read, never deleted.
    elsewhere = tmp_path / "elsewhere" / "mine.safetensors"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(_vector_bytes(ctx, tmp_path))
    library_tab.add_upload(ctx, tab, str(elsewhere), "auto", {})
    assert elsewhere.exists()


def test_a_data_upload_is_held_for_the_next_run_then_deleted(
    ctx: AppContext, folder: Path, tmp_path: Path
) -> None:
    data = upload(folder, "samples.jsonl", chat_lines(), where="d1")
    source = resolve_source(ctx, None, str(data), "screening")
    assert source.uploaded and source.path == data
    assert resolve_source(ctx, None, str(data), "training").path == data  # a second run
    assert data.exists()
    prune_held(float("inf"))  # no run has read it for HOLD_S
    assert not data.exists() and not data.parent.exists()
    with pytest.raises(InputError, match="no longer on the server"):
        resolve_source(ctx, None, str(data), "screening")


def test_a_refused_data_upload_is_deleted_at_once(
    ctx: AppContext, folder: Path, tmp_path: Path
) -> None:
    wrong = upload(folder, "notes.txt", "hello", where="w1")
    with pytest.raises(InputError, match="not a data file"):
        resolve_source(ctx, None, str(wrong), "screening")
    assert not wrong.exists()
    big = upload(folder, "big.jsonl", b" " * (1024 * 1024 + 10), where="w2")  # over 1 MB
    with pytest.raises(InputError, match="limited to"):
        resolve_source(ctx, None, str(big), "training")
    assert not big.exists()
    # Outside the upload folder: read (refused here), never deleted, never held.
    mine = outside_file(tmp_path, "mine.txt", "hello")
    with pytest.raises(InputError):
        resolve_source(ctx, None, str(mine), "screening")
    ok = outside_file(tmp_path, "ok.jsonl", chat_lines())
    resolve_source(ctx, None, str(ok), "screening")
    prune_held(float("inf"))
    assert mine.exists() and ok.exists()


def test_a_conversation_upload_is_held_for_a_replay_and_a_bad_one_deleted(
    ctx: AppContext, folder: Path, tmp_path: Path
) -> None:
    conv = upload(folder, "chat.json", CONVERSATION, where="c1")
    convs = _conversations(ctx, ReplayForm(upload=str(conv)))
    assert len(convs) == 1 and conv.exists()
    _conversations(ctx, ReplayForm(upload=str(conv)))  # replayed again (another window)
    prune_held(float("inf"))
    assert not conv.exists()
    bad = upload(folder, "bad.json", "{not json", where="c2")
    with pytest.raises(InputError, match="not valid JSON"):
        _conversations(ctx, ReplayForm(upload=str(bad)))
    assert not bad.exists()
    mine = outside_file(tmp_path, "mine.json", CONVERSATION)
    _conversations(ctx, ReplayForm(upload=str(mine)))
    prune_held(float("inf"))
    assert mine.exists()


def test_every_handler_that_takes_an_upload_goes_through_the_helper() -> None:
    """A new gr.File or UploadButton must come with a handler that deletes what it reads: each
    file that builds one is listed here with the module whose handler calls the helper."""
    root = Path(uploads.__file__).resolve().parents[1]
    handled_by = {
        "drift/tab.py": ("drift/handlers.py", "held("),
        "library/tab.py": ("library/tab.py", "discard("),
        "shared/data_files.py": ("shared/data_files.py", "held("),
        "finetune/tab.py": ("finetune/handlers.py", "discard("),  # an adapter .zip
    }
    builders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if any(k in p.read_text(encoding="utf-8") for k in ("gr.File(", "gr.UploadButton("))
    ]
    assert builders, "no upload widget found: has the layout changed?"
    for name in builders:
        assert name in handled_by, f"{name} takes uploads: delete them with shared.uploads"
        module, call = handled_by[name]
        assert call in (root / module).read_text(encoding="utf-8"), module
