"""The web app's plumbing on a tiny random model: forms, errors, jobs, the catalog, handlers.

No server and no browser: the tabs are built inside a ``gr.Blocks`` and their module-level
handlers are called directly, as the pattern in ``persona_explorer/ui/__init__.py`` intends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import pytest
import torch

from persona_explorer.core.config import Settings
from persona_explorer.core.errors import InputError
from persona_explorer.engine.model import LoadedModel
from persona_explorer.ui import build_demo, list_updates
from persona_explorer.ui.extract import handlers as extract_handlers
from persona_explorer.ui.extract import tab as extract
from persona_explorer.ui.library import tab as library_tab
from persona_explorer.ui.shared.context import BUG_MESSAGE, AppContext, Jobs, user_errors
from persona_explorer.ui.shared.forms import form_endpoint
from persona_explorer.ui.steer import tab as steer
from persona_explorer.vectors.library import Library
from persona_explorer.vectors.persona_vector import PersonaVector
from tests.tiny_models import D_MODEL, N_LAYERS, tiny_app_context


@pytest.fixture
def ctx(llama: LoadedModel, tmp_path: Path, one_thread: None) -> AppContext:
    return tiny_app_context(
        llama, tmp_path, {"tiny-pirate": 2.0, "tiny-evil": 3.0}, default_persona="tiny-pirate"
    )


def test_form_endpoint_takes_the_forms_fields_as_named_parameters() -> None:
    @dataclasses.dataclass(frozen=True)
    class Form:
        prompt: str
        layer: float = 3

    seen = []

    def run(form: Form, session: dict | None) -> object:
        seen.append((form, session))
        yield form.prompt

    fn = form_endpoint(Form, run, name="ask", doc="Ask.")
    assert list(inspect.signature(fn).parameters) == ["prompt", "layer", "session"]
    assert inspect.isgeneratorfunction(fn) and fn.__name__ == "ask" and fn.__doc__ == "Ask."
    assert list(fn("hi", session={"a": 1})) == ["hi"]
    assert seen == [(Form("hi", 3), {"a": 1})]
    with_progress = form_endpoint(Form, run, name="ask", doc="", progress=True, request=True)
    params = inspect.signature(with_progress).parameters
    assert list(params) == ["prompt", "layer", "session", "request", "progress"]
    assert isinstance(params["progress"].default, gr.Progress)


def test_user_errors_shows_user_errors_and_hides_bugs(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(gr.Error, match="Layer 9 is out of range"), user_errors():
        raise InputError("Layer 9 is out of range")
    # A plain ValueError is a bug, not the user's mistake: generic message, logged traceback.
    with caplog.at_level(logging.ERROR), pytest.raises(gr.Error) as info, user_errors():
        raise ValueError("internal detail")
    assert info.value.message == BUG_MESSAGE
    assert "internal detail" not in info.value.message
    assert any("bug in a request handler" in r.message for r in caplog.records)


def test_stop_reaches_only_the_jobs_of_the_same_session() -> None:
    jobs = Jobs()
    with (
        jobs.track("alice") as a,
        jobs.track("bob") as b,
        jobs.track(None) as anon,
        jobs.track(None) as anon2,
    ):
        assert jobs.stop("bob") == 1
        assert jobs.stop(None) == 0  # an API caller without a session stops nobody
        assert b.is_set() and not a.is_set()
        assert not anon.is_set() and not anon2.is_set()
    assert jobs.stop("alice") == 0  # finished jobs are forgotten

    # Many threads tracking and stopping at once leave the registry consistent.
    def worker(i: int) -> None:
        for _ in range(200):
            with jobs.track(f"user{i % 3}"):
                jobs.stop(f"user{(i + 1) % 3}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert jobs._flags == {}


def test_one_refresh_scans_the_library_once(
    ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    original = Library.entries

    def counting(self: Library) -> list:
        calls.append(self.root)
        return original(self)

    monkeypatch.setattr(Library, "entries", counting)
    with gr.Blocks():
        state = gr.State({})
        st = steer.build(ctx, state)
        lib = library_tab.build(ctx, state, gr.BrowserState(None))
    calls.clear()
    updates = list_updates(ctx, st, lib, ctx.catalog.view(None), None, None, None)
    assert len(calls) == 2  # the built-ins and the library, once each
    assert updates[st.persona]["value"] == "builtin:tiny-pirate"
    assert [row[0] for row in updates[lib.table]] == ["tiny-evil", "tiny-pirate"]


def test_steer_handler_streams_and_checks_input(ctx: AppContext) -> None:
    with gr.Blocks():
        tab = steer.build(ctx, gr.State({}))
    form = steer.SteerForm("Hi!", "tiny-pirate", layer=2, strength=2.0, max_new_tokens=4)
    updates = list(steer.run_steer(ctx, tab, form, None, None))
    assert len(updates) >= 2 and tab.status in updates[-1]
    for bad, message in (
        (dataclasses.replace(form, prompt="  "), "empty"),
        (dataclasses.replace(form, layer=N_LAYERS), "out of range"),
        (dataclasses.replace(form, strength=float("nan")), "finite"),
        (dataclasses.replace(form, strength=1e6), "too large"),
        (dataclasses.replace(form, temperature=5), "Temperature"),
        (dataclasses.replace(form, frequency_penalty=-1), "Frequency penalty"),
        (dataclasses.replace(form, frequency_penalty=float("nan")), "Frequency penalty"),
        (dataclasses.replace(form, max_new_tokens=10_000), "Max new tokens"),
        (dataclasses.replace(form, persona="nobody"), "Unknown persona"),
    ):
        with pytest.raises(gr.Error, match=message):
            list(steer.run_steer(ctx, tab, bad, None, None))


def test_the_strength_sweep_is_a_stream_that_stop_can_end(ctx: AppContext) -> None:
    """``cancels=`` only acts between yields: the sweep must yield while it generates."""
    with gr.Blocks():
        tab = steer.build(ctx, gr.State({}))
    form = steer.SteerForm("Hi!", "tiny-pirate", layer=2, strength=1.0, max_new_tokens=6)
    steps = []
    sweep = steer.run_strength_sweep(ctx, tab, form, None, None, lambda *a, **k: steps.append(a))
    next(sweep)
    next(sweep)
    sweep.close()  # what a cancel does: the generation stops here, its session closed
    assert 1 <= len(steps) < 6


def test_demo_builds_with_named_api_parameters(ctx: AppContext) -> None:
    demo = build_demo(ctx.settings, ctx.model)
    info = demo.get_api_info()
    named = info["named_endpoints"]
    assert [p["parameter_name"] for p in named["/steer"]["parameters"]] == [
        "prompt", "persona", "layer", "strength", "max_new_tokens", "system_prompt",
        "positions", "temperature", "seed", "readout_layer", "frequency_penalty",
    ]  # fmt: skip
    assert [p["parameter_name"] for p in named["/sweep_strengths"]["parameters"]][:4] == [
        "prompt", "persona", "layer", "strength",
    ]  # fmt: skip
    assert "/extract" in named and "/upload_vector" in named and "/compare" in named


def test_the_wired_endpoints_run_through_the_demo(ctx: AppContext) -> None:
    """Call the functions Gradio itself calls (what the API reaches), not just the handlers."""
    demo = build_demo(ctx.settings, ctx.model)
    fns = {f.api_name: f.fn for f in demo.fns.values() if f.api_name}
    args = ("Hi!", "tiny-pirate", 2, 1.0, 3)
    steer_out = list(fns["steer"](*args))
    assert len(steer_out) >= 2
    sweep_out = list(fns["sweep_strengths"](*args, progress=lambda *a, **k: None))
    assert sweep_out and any(sweep_out[-1].values())


# --------------------------------------------------------------------------- public safety


def test_user_text_is_never_markup() -> None:
    from persona_explorer.ui.shared.markup import md

    hostile = "<img src=x onerror=alert(1)> [link](javascript:x) **bold** `code` # head"
    out = md(hostile)
    assert "<img" not in out and "](" not in out and " # " not in out
    assert re.search(r"(?<!\\)[`*\[\]]", out) is None  # every markup character escaped
    assert "&lt;img" in out and "onerror=alert" in out  # still readable, as text
    assert len(md("x" * 10_000)) < 300
    assert "\n" not in md("line\n# heading")


def test_an_error_message_is_text_in_the_page_and_in_the_api() -> None:
    """The toast renders HTML, gradio_client reads text: neither may see &lt; or a tag."""
    from persona_explorer.ui.shared.markup import plain

    out = plain("Unknown persona '<b>x</b>' & <img src=x onerror=alert(1)>")
    assert re.search(r"<[A-Za-z/!?]", out) is None  # no tag can start
    assert re.search(r"&[A-Za-z#]", out) is None  # no entity either
    assert "&lt;" not in out
    assert out.replace("\u2060", "") == "Unknown persona '<b>x</b>' & <img src=x onerror=alert(1)>"


def test_direction_overrides_are_dropped_from_user_text() -> None:
    """A right-to-left override in a file name would make the status line read backwards."""
    from persona_explorer.ui.shared.markup import chat_text, md, plain

    name = "evil\u202egnp.safetensors\u2066x\u2069"
    for shown in (md(name), plain(name), chat_text(name)):
        assert not any(c in shown for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def test_chat_messages_are_text() -> None:
    """The Drift chat renders Markdown and HTML: a message is shown as typed, lines kept."""
    from persona_explorer.ui.shared.markup import chat_text

    out = chat_text("<b>bold</b>\n[x](javascript:alert(1)) **y**\n    code")
    assert "<b>" not in out and "&lt;b&gt;" in out
    assert "](" not in out and "**" not in out
    assert out.count("\n") == 2 and "\n    " not in out


def test_one_visitor_may_hold_only_a_few_jobs() -> None:
    from persona_explorer.ui.shared.fairness import refusal

    pending = [("alice", "1.1.1.1")] * 3 + [("bob", "2.2.2.2")]
    assert refusal("alice", "1.1.1.1", pending, 3, 12) is not None
    assert refusal("bob", "2.2.2.2", pending, 3, 12) is None
    assert refusal("carol", "1.1.1.1", pending, 3, 12) is None  # same address, fresh session
    # A script inventing sessions is capped per address.
    many = [(f"s{i}", "3.3.3.3") for i in range(12)]
    assert "address" in (refusal("new", "3.3.3.3", many, 3, 12) or "")


def test_the_queue_limit_is_installed_on_gradios_queue(ctx: AppContext) -> None:
    """Pins the two Gradio internals fairness.py relies on."""
    from persona_explorer.ui import configure_queue

    demo = configure_queue(build_demo(ctx.settings, ctx.model), ctx.settings)
    assert demo._queue.push.__name__ == "push"
    assert isinstance(demo._queue.event_ids_to_events, dict)
    for name in ("event_queue_per_concurrency_id", "send_message", "broadcast_estimations"):
        assert hasattr(demo._queue, name)
    heavy = {f.concurrency_id for f in demo.fns.values() if f.api_name in ("steer", "extract")}
    assert heavy == {"generation", "extraction"}


def test_heatmap_input_is_capped_and_deduplicated() -> None:
    assert library_tab.heatmap_keys(["a", "b", "a", 3, "b"], 24) == ["a", "b"]
    assert library_tab.heatmap_keys(None, 24) == []
    with pytest.raises(InputError, match="at most 24"):
        library_tab.heatmap_keys(["k"] * 1600, 24)
    with pytest.raises(InputError, match="at most 2"):
        library_tab.heatmap_keys(["a", "b", "c"], 2)


def test_a_session_holds_a_bounded_number_of_vectors() -> None:
    from persona_explorer.ui.shared.catalog import add_to_session

    vec = PersonaVector(name="v", vectors=torch.ones(2, 4))
    session: dict = {}
    for _ in range(3):
        session, _key = add_to_session(session, vec, limit=3)
    assert len(session) == 3
    with pytest.raises(InputError, match="already holds 3 vectors"):
        add_to_session(session, vec, limit=3)


def test_share_links_are_bounded_like_form_input(ctx: AppContext) -> None:
    from persona_explorer.ui import apply_share_params

    with gr.Blocks():
        st = steer.build(ctx, gr.State({}))
    view = ctx.catalog.view(None)
    hostile = {
        "prompt": "x" * 100_000,
        "persona": "<img src=x onerror=alert(1)>",
        "layer": "999",
        "strength": "1e308",
    }
    updates, key = apply_share_params(ctx, st, view, hostile)
    assert key == "builtin:tiny-pirate"  # fell back to the default persona
    assert st.prompt not in updates  # too long: left as it was
    assert updates[st.strength]["value"] == 2.0 and updates[st.layer]["value"] == 2


def test_share_links_carry_the_frequency_penalty(ctx: AppContext) -> None:
    from persona_explorer.core.limits import DEFAULT_FREQUENCY_PENALTY
    from persona_explorer.ui import apply_share_params

    with gr.Blocks():
        st = steer.build(ctx, gr.State({}))
    assert "frequency_penalty" in steer.SHARE_KEYS and st.frequency_penalty in st.share_inputs
    assert st.frequency_penalty.value == DEFAULT_FREQUENCY_PENALTY
    view = ctx.catalog.view(None)
    updates, _ = apply_share_params(ctx, st, view, {"frequency_penalty": "0"})
    assert updates[st.frequency_penalty] == 0.0  # 0 (off) is a value, not "missing"
    updates, _ = apply_share_params(ctx, st, view, {"frequency_penalty": "7"})
    assert st.frequency_penalty not in updates  # out of range: the default stays


def test_download_files_are_capped(ctx: AppContext) -> None:
    vec = ctx.catalog.view(None).load(ctx.catalog.view(None).resolve("tiny-pirate"))
    ctx.exports.MAX_EXPORTS = 3
    for _ in range(6):
        path, notes = ctx.exports.write(vec, "gguf")
        assert path.exists()
    assert len(list(ctx.exports.root.iterdir())) <= 3
    assert any("layer 0" in n for n in notes)


def test_owner_tokens_and_the_browser_secret(tmp_path: Path) -> None:
    from persona_explorer.ui.shared.context import browser_secret, check_owner, new_owner_token

    token = new_owner_token()
    assert check_owner(token) == token
    for bad in (None, "", "short", "x" * 65, "a b c d e f g h i j k l m n o", 42):
        with pytest.raises(InputError, match="owner token"):
            check_owner(bad)
    first = browser_secret(tmp_path)
    assert browser_secret(tmp_path) == first  # kept across restarts
    assert (tmp_path / ".browser-secret").stat().st_mode & 0o077 == 0


def test_session_names_are_cleaned_and_bounded() -> None:
    from persona_explorer.ui.shared.catalog import add_to_session

    vec = PersonaVector(name="evil\u202egnp.exe\u200b" + "x" * 500, vectors=torch.ones(2, 4))
    session, key = add_to_session({}, vec, limit=3)
    name = session[key].name
    assert "\u202e" not in name and "\u200b" not in name and len(name) <= 80


def test_only_the_browser_that_saved_a_vector_may_change_it(ctx: AppContext) -> None:
    with gr.Blocks():
        state = gr.State({})
        lib = library_tab.build(ctx, state, gr.BrowserState(None))
    alice, mallory = "a" * 24, "m" * 24
    vec = ctx.catalog.view(None).load(ctx.catalog.view(None).resolve("tiny-pirate"))
    session, key = catalog_add(vec)
    library_tab.save_vector(ctx, lib, key, session, alice)
    saved = next(i for i in ctx.catalog.view(None).items if i.where == "library")
    for handler, args in (
        (library_tab.rename_vector, (saved.key, "stolen", None, mallory)),
        (library_tab.delete_vector, (saved.key, None, mallory)),
    ):
        with pytest.raises(gr.Error, match="Only the browser"):
            handler(ctx, lib, *args)
    with pytest.raises(gr.Error, match="owner token"):  # a script without a token
        library_tab.delete_vector(ctx, lib, saved.key, None, None)
    library_tab.rename_vector(ctx, lib, saved.key, "mine", None, alice)
    renamed = next(i for i in ctx.catalog.view(None).items if i.where == "library")
    library_tab.delete_vector(ctx, lib, renamed.key, None, alice)
    assert not [i for i in ctx.catalog.view(None).items if i.where == "library"]
    with pytest.raises(gr.Error, match="cannot be deleted"):
        library_tab.delete_vector(ctx, lib, "builtin:tiny-pirate", None, alice)


def catalog_add(vec: PersonaVector) -> tuple[dict, str]:
    from persona_explorer.ui.shared.catalog import add_to_session

    return add_to_session({}, vec, limit=4)


def test_public_mode_makes_the_shared_library_read_only(
    llama: LoadedModel, tmp_path: Path, one_thread: None
) -> None:
    settings = Settings(data_dir=tmp_path, cache_dir=tmp_path / "c", public=True)
    ctx = AppContext.create(settings, llama)
    with gr.Blocks():
        lib = library_tab.build(ctx, gr.State({}), gr.BrowserState(None))
    vec = PersonaVector(name="v", vectors=torch.ones(N_LAYERS, D_MODEL), model_id=llama.model_id)
    session, key = catalog_add(vec)
    with pytest.raises(gr.Error, match="read-only"):
        library_tab.save_vector(ctx, lib, key, session, "a" * 24)


# --------------------------------------------------------------------------- status and actions


def library(ctx: AppContext) -> library_tab.LibraryTab:
    with gr.Blocks():
        return library_tab.build(ctx, gr.State({}), gr.BrowserState(None))


def session_copy(ctx: AppContext, name: str = "tiny-copy") -> tuple[dict, str]:
    view = ctx.catalog.view(None)
    return catalog_add(view.load(view.resolve("tiny-pirate")).with_(name=name))


def test_saving_a_session_vector_replaces_its_session_copy(ctx: AppContext) -> None:
    lib = library(ctx)
    session, key = session_copy(ctx)
    out = library_tab.save_vector(ctx, lib, key, session, "a" * 24)
    assert key not in out[lib.state]
    view = ctx.catalog.view(out[lib.state])
    assert [i.where for i in view.items if i.name == "tiny-copy"] == ["library"]
    saved = next(i for i in view.items if i.where == "library")
    assert out[lib.selected]["value"] == saved.key
    assert out[lib.selected]["choices"] == view.item_choices()


def test_saving_from_the_extract_tab_replaces_the_session_copy(ctx: AppContext) -> None:
    with gr.Blocks():
        ex = extract.build(ctx, gr.State({}))
    session, key = session_copy(ctx)
    out = extract_handlers.save_extracted(ctx, ex, key, session, owner="a" * 24)
    assert out[ex.state] == {}
    assert out[ex.last].startswith("library:") and out[ex.save]["visible"] is False
    assert ctx.catalog.view(out[ex.state]).resolve(out[ex.last]).name == "tiny-copy"


def test_after_a_delete_nothing_is_selected_and_the_actions_are_disabled(ctx: AppContext) -> None:
    lib = library(ctx)
    actions = (lib.rename, lib.save, lib.delete, lib.export)
    session, key = session_copy(ctx)
    out = library_tab.delete_vector(ctx, lib, key, session, "a" * 24)
    assert out[lib.selected]["value"] is None and key not in out[lib.state]
    assert all(out[button]["interactive"] is False for button in actions)
    assert out[lib.confirm]["visible"] is False and out[lib.download]["value"] is None
    # They come back with a selection, and nothing is selected (nor enabled) at first.
    chosen = library_tab.selection_updates(lib, "builtin:tiny-pirate")
    assert all(chosen[button]["interactive"] is True for button in actions)
    assert lib.selected.value is None and all(not b.interactive for b in actions)


# An extraction handler's request and progress bar when called directly: none.
QUIET: dict = {"request": None, "progress": lambda *a, **k: None}


def extract_form(**kw: object) -> extract_handlers.ExtractForm:
    defaults: dict[str, object] = {
        "source": "custom", "trait_name": "", "role_name": "", "name": "tiny shanty",
        "pos_prompts": "You are a pirate.", "neg_prompts": "You are an assistant.",
        "question_lines": "Hi?", "n_questions": 1, "max_new_tokens": 4,
    }  # fmt: skip
    return extract_handlers.ExtractForm(**{**defaults, **kw})  # type: ignore[arg-type]


def test_an_extraction_starts_by_withdrawing_the_previous_results(ctx: AppContext) -> None:
    with gr.Blocks():
        ex = extract.build(ctx, gr.State({}))
    updates = list(extract_handlers.run_extract(ctx, ex, extract_form(), None, **QUIET))
    first, last = updates[0], updates[-1]
    assert first[ex.summary] == extract_handlers.STARTING and first[ex.examples] is None
    assert all(first[b]["visible"] is False for b in (ex.try_it, ex.save, ex.download))
    assert last[ex.try_it]["visible"] is True and last[ex.save]["visible"] is True
    vec = last[ex.state][last[ex.last]]
    assert vec.strength is not None and vec.strength > 0
    assert "Recommended layer" in last[ex.summary]
    assert f"strength **{vec.strength:g}**" in last[ex.summary]


def test_a_failed_or_stopped_extraction_leaves_no_try_or_save(
    ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    with gr.Blocks():
        ex = extract.build(ctx, gr.State({}))
    hidden = (ex.try_it, ex.save, ex.download)
    run = extract_handlers.run_extract(ctx, ex, extract_form(question_lines=" "), None, **QUIET)
    first = next(run)
    assert all(first[b]["visible"] is False for b in hidden)
    with pytest.raises(gr.Error, match="at least one question"):
        next(run)

    @contextlib.contextmanager
    def stopped(owner: str | None) -> Iterator[threading.Event]:
        flag = threading.Event()
        flag.set()
        yield flag

    monkeypatch.setattr(ctx.jobs, "track", stopped)
    updates = list(extract_handlers.run_extract(ctx, ex, extract_form(), None, **QUIET))
    assert all(updates[0][b]["visible"] is False for b in hidden)
    assert updates[-1] == {ex.summary: extract_handlers.STOPPED}


def test_status_messages_escape_user_text(ctx: AppContext) -> None:
    lib = library(ctx)
    hostile = "<img src=x onerror=alert(1)> **bold** [x](javascript:y)"
    session, key = session_copy(ctx, "plain")
    renamed = library_tab.rename_vector(ctx, lib, key, hostile, session, "a" * 24)
    session = renamed[lib.state]
    new_key = renamed[lib.selected]["value"]
    saved = library_tab.save_vector(ctx, lib, new_key, session, "a" * 24)
    deleted = library_tab.delete_vector(
        ctx, lib, saved[lib.selected]["value"], saved[lib.state], "a" * 24
    )
    for out in (renamed, saved, deleted):
        status = out[lib.status]
        assert "<img" not in status and "](" not in status and "&lt;img" in status
        assert re.search(r"(?<!\\)\*\*bold", status) is None  # the user's ** stay literal


def test_compare_rows_list_new_vectors_and_keep_their_choice(ctx: AppContext) -> None:
    from persona_explorer.ui.shared.catalog import add_to_session
    from persona_explorer.ui.steer import compare as compare_panel

    with gr.Blocks():
        tab = steer.build(ctx, gr.State({}))
    assert tab.compare is not None
    vec = PersonaVector(name="fresh", vectors=torch.ones(N_LAYERS, D_MODEL), model_id="test")
    session, key = add_to_session({}, vec, limit=4)
    updates = compare_panel.list_updates(
        tab.compare, ctx.catalog.view(session), ["builtin:tiny-evil", "session:gone", None]
    )
    first, second, _third = (updates[d] for d in tab.compare.personas)
    assert key in [k for _, k in first["choices"]]
    assert first["value"] == "builtin:tiny-evil" and second["value"] == ""


@pytest.mark.parametrize(
    ("switches", "decoder", "kernel"),
    [
        ({"fast_decoder": False}, "HFDecoder", None),
        ({"decode_kernel": False}, "FastLlamaDecoder", "onednn"),
    ],
)
def test_the_app_builds_its_decoder_with_its_own_settings(
    llama: LoadedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    switches: dict[str, bool],
    decoder: str,
    kernel: str | None,
) -> None:
    """The decoder switches come from the Settings the app was built with; the environment
    says the opposite and is not read (it once was, by the engine, behind the app's back)."""
    import dataclasses

    from persona_explorer.engine import decoder_for

    monkeypatch.setenv("PERSONA_EXPLORER_FAST", "1")
    monkeypatch.setenv("PERSONA_EXPLORER_KERNEL", "1")
    model = dataclasses.replace(llama)  # a model object of its own: its own cached decoder
    settings = Settings(data_dir=tmp_path, cache_dir=tmp_path / "c", **switches)
    ctx = AppContext.create(settings, model)
    built = decoder_for(ctx.model)
    assert type(built).__name__ == decoder
    if kernel is not None:
        assert built.kernel == kernel  # type: ignore[attr-defined]
