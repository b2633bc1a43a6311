"""Persona drift: conversation files (hostile ones too), windows, teacher-forced replay, the live
chat turn, the per-turn figure and ``axis project``; on the embedded model, a role-played
character projects lower on the axis than a plain assistant."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch

import persona_explorer.axis.drift as drift
import persona_explorer.steering.forced as forced
from persona_explorer.axis import windows
from persona_explorer.axis.assistant_axis import (
    AxisData,
    assistant_axis,
    default_axis_layer,
    normalised_projection,
    project,
    token_quantiles,
)
from persona_explorer.axis.conversation import (
    TRANSCRIPTS_DIR,
    Conversation,
    ConversationError,
    load_conversation,
    parse_conversation,
    shipped_transcript,
    shipped_transcripts,
)
from persona_explorer.axis.drift import axis_scale, replay
from persona_explorer.axis.drift_chat import chat_turn_stream
from persona_explorer.axis.replays import (
    SHIPPED_REPLAYS_DIR,
    SOURCE_CACHE,
    SOURCE_READ,
    SOURCE_SHIPPED,
    ReplayKey,
    ReplayStore,
    read_replay,
    write_replay,
)
from persona_explorer.axis.windows import replay_windows
from persona_explorer.cli import main
from persona_explorer.cli import models as cli_models
from persona_explorer.core.config import load_settings
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import MAX_CONVERSATION_MESSAGES, MAX_MESSAGE_CHARS
from persona_explorer.engine.identity import weights_digest
from persona_explorer.engine.model import ChatMessage, LoadedModel, resolve_model_spec
from persona_explorer.plots.drift import DriftLine, drift_figure
from persona_explorer.steering.forced import ForcedRow, chat_row, forced_pass
from persona_explorer.steering.generation import SamplingConfig
from persona_explorer.steering.ops import Add
from persona_explorer.ui.drift import handlers as drift_run
from persona_explorer.ui.drift.components import DriftTab
from persona_explorer.ui.shared.context import AppContext
from tests.tiny_models import tiny, tiny_app_context

# --------------------------------------------------------------------------- helpers


def msgs(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


def long_chat(n_turns: int, words: int = 20) -> Conversation:
    out = []
    for i in range(n_turns):
        out.append(("user", f"Question {i}: " + "tell me more about rivers " * (words // 5)))
        out.append(("assistant", f"Answer {i}: " + "rivers flow to the sea and " * (words // 5)))
    return parse_conversation(msgs(*out), "long")


def synthetic_axis(model: LoadedModel, seed: int = 0) -> AxisData:
    g = torch.Generator().manual_seed(seed)
    n, d = model.n_layers, model.d_model
    roles = torch.randn(4, n, d, generator=g)
    default = torch.randn(n, d, generator=g)
    return AxisData(
        model_id=model.model_id,
        roles=("a", "b", "c", "d"),
        role_vectors=roles,
        default_vector=default,
        axis=assistant_axis(default, roles),
        default_token_quantiles=token_quantiles(torch.randn(40, n, generator=g)),
    )


# --------------------------------------------------------------------------- conversations


def test_object_and_bare_list_both_parse() -> None:
    pairs = msgs(("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello!"))
    obj = parse_conversation({"conversation": pairs, "model": "m", "domain": "therapy", "x": 1})
    bare = parse_conversation(pairs)
    assert obj.messages == bare.messages
    assert obj.meta == {"model": "m", "domain": "therapy"}
    assert obj.assistant_indices == (2,) and obj.n_assistant_turns == 1


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"messages": []}, "conversation"),
        ("just text", "list"),
        ([{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}], "role"),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}], "string"),
        ([{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}], "empty"),
        ([["user", "hi"]], "object"),
        (msgs(("user", "a"), ("system", "b"), ("assistant", "c")), "system"),
        (msgs(("user", "a"), ("user", "b")), "no assistant"),
        (msgs(("assistant", "a"), ("user", "b")), "answer a user"),
        (msgs(("user", "a"), ("assistant", "x" * (MAX_MESSAGE_CHARS + 1))), "limit"),
        (
            msgs(*[("user", "a"), ("assistant", "b")] * (MAX_CONVERSATION_MESSAGES // 2 + 1)),
            "limit",
        ),
    ],
)
def test_malformed_conversations_are_refused_with_a_reason(data: object, words: str) -> None:
    with pytest.raises(ConversationError, match=words):
        parse_conversation(data)


def test_hostile_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = msgs(("user", "Hi"), ("assistant", "Hello"))
    cases = {
        "not.json": b"{not json",
        "binary.json": b"\xff\xfe\x00garbage",
        "deep.json": b"[" * 100_000 + b"]" * 100_000,
        "number.json": b"42",
    }
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(ConversationError):
            load_conversation(tmp_path / name)
    # Too big: refused from its size alone, before any byte is read.
    big = tmp_path / "big.json"
    big.write_text(json.dumps(good))
    with big.open("r+b") as f:
        f.truncate(10 * 1024 * 1024)

    def no_reading(*_args: object, **_kwargs: object) -> bytes:
        raise AssertionError("the file was read")

    monkeypatch.setattr(Path, "read_bytes", no_reading)
    with pytest.raises(ConversationError, match="at most"):
        load_conversation(big)


def test_shipped_transcripts_are_listed_with_friendly_labels() -> None:
    listed = shipped_transcripts()
    keys = [k for _, k in listed]
    assert keys[:4] == [
        f"persona_drift/{d}" for d in ("coding", "philosophy", "therapy", "writing")
    ]
    assert len(keys) == 16 and (TRANSCRIPTS_DIR / "SOURCE.md").is_file()
    labels = dict((k, label) for label, k in listed)
    assert labels["persona_drift/therapy"] == "Drift: therapy (Llama 3.3 70B, 15 turns)"
    assert labels["case_studies/qwen-3-32b/jailbreak_unsteered"].startswith(
        "Case study: jailbreak, unsteered (Qwen 3 32B"
    )
    conv = shipped_transcript("persona_drift/coding")
    assert conv.n_assistant_turns == 15 and conv.meta["domain"] == "coding"
    with pytest.raises(ConversationError, match="No shipped transcript"):
        shipped_transcript("../../etc/passwd")


# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize("budget", [128, 200, 256])
def test_windows_keep_whole_turns_and_fit_the_budget(llama: LoadedModel, budget: int) -> None:
    conv = long_chat(8, words=5)
    windows = replay_windows(llama, conv, budget)
    assert [w.turn for w in windows] == list(range(1, 9))
    assert any(w.dropped_messages > 0 for w in windows)
    starts = [w.first_message for w in windows]
    assert starts == sorted(starts)
    for w in windows:
        i = w.message_index
        assert w.tokens <= budget
        # The window's prefix is the template over whole messages, from a user turn.
        assert conv.messages[w.first_message].role == "user"
        assert w.ids[: w.span[0]] == llama.chat_ids(list(conv.messages[w.first_message : i]))
        turn_ids = llama.tokenizer(conv.messages[i].content, add_special_tokens=False).input_ids
        assert w.ids[w.span[0] : w.span[1]] == turn_ids[: w.response_tokens]
        assert not w.truncated and w.response_tokens == len(turn_ids)
        # Maximal: one more earlier turn would not have fitted.
        if w.first_message >= 2:
            wider = llama.chat_ids(list(conv.messages[w.first_message - 2 : i]))
            assert len(wider) + w.response_tokens > budget


def test_an_overlong_turn_is_cut_and_said_so(llama: LoadedModel) -> None:
    conv = parse_conversation(msgs(("user", "Go on."), ("assistant", "word " * 400)))
    (w,) = replay_windows(llama, conv, 128)
    assert w.truncated and w.tokens == 128 and w.response_tokens < 128


def test_a_user_message_that_fills_the_window_is_refused(llama: LoadedModel) -> None:
    conv = parse_conversation(msgs(("user", "word " * 400), ("assistant", "ok")))
    with pytest.raises(InputError, match="larger window"):
        replay_windows(llama, conv, 128)


# --------------------------------------------------------------------------- replay


def test_one_forced_pass_reads_several_spans_of_a_row_and_can_steer_every_position(
    llama: LoadedModel,
) -> None:
    """What a replay asks of the teacher-forced pass: several turns of one text in one pass,
    each as if read alone, and its plan applied to every position (``steer_from=0``)."""
    row = chat_row(llama, "Tell me about rivers.", "Rivers flow to the sea, and the sea is wide.")
    both = ForcedRow(row.ids, 2, 6, more_spans=((row.start, row.end),))
    read = forced_pass(llama, [both, row])  # rows of two spans and of one, in one batch
    assert read.span_count.tolist() == [4, row.span_length, row.span_length]
    alone = forced_pass(llama, [ForcedRow(row.ids, 2, 6)]).span_mean[0]
    assert torch.allclose(read.span_mean[0], alone, atol=1e-5)
    assert torch.allclose(read.span_mean[1], read.span_mean[2], atol=1e-5)
    v = torch.randn(llama.n_layers, llama.d_model, generator=torch.Generator().manual_seed(0))
    everywhere = replace(row, steer_from=0)
    as_response = forced_pass(llama, [everywhere], [(Add(1, v[1], 2.0, "response"),)])
    as_all = forced_pass(llama, [row], [(Add(1, v[1], 2.0, "all"),)])
    assert torch.allclose(as_response.span_mean, as_all.span_mean, atol=1e-5)
    from_start = forced_pass(llama, [row], [(Add(1, v[1], 2.0, "response"),)])
    assert not torch.allclose(from_start.span_mean, as_all.span_mean, atol=1e-3)


def test_replay_yields_one_projection_per_assistant_turn(
    llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forced, "PREFILL_CHUNK", 16)  # several chunks per pass
    axis = synthetic_axis(llama)
    conv = long_chat(6)
    persona = torch.randn(llama.n_layers, llama.d_model)
    seen: list[float] = []
    result = replay(
        llama,
        axis,
        conv,
        window_tokens=200,
        personas={"p": persona},
        progress=lambda f, _m: seen.append(f),
    )
    assert [t.turn for t in result.turns] == list(range(1, 7))
    assert result.total_turns == 6 and not result.stopped and result.windowed
    assert seen[-1] == 1.0 and seen == sorted(seen)
    windows = replay_windows(llama, conv, 200)
    lo, hi = axis_scale(axis)
    for t, w in zip(result.turns, windows, strict=True):
        assert len(t.projection) == len(t.normalised) == llama.n_layers
        assert len(t.personas["p"]) == llama.n_layers
        # The grouped passes read exactly what a pass of each turn alone reads.
        alone = forced_pass(llama, [ForcedRow(tuple(w.ids), *w.span, steer_from=0)]).span_mean[0]
        raw = project(alone, axis.axis)
        assert torch.allclose(torch.tensor(t.projection), raw, atol=1e-4, rtol=1e-4)
        norm = normalised_projection(raw, lo, hi)
        assert torch.allclose(torch.tensor(t.normalised), norm, atol=1e-3, rtol=1e-3)
    body = result.as_json(1)
    assert [t["turn"] for t in body["turns"]] == list(range(1, 7))
    assert body["turns"][0]["layer"] == 1 and "projection" in body["turns"][0]


def test_a_capped_replay_holds_every_turn_at_or_above_the_floor(llama: LoadedModel) -> None:
    axis = synthetic_axis(llama)
    conv = long_chat(4)
    free = replay(llama, axis, conv, window_tokens=200)
    capped = replay(llama, axis, conv, window_tokens=200, plan=axis.cap_plan((2,), 95))
    floor = float(axis.floors(95)[2])
    assert all(t.projection[2] >= floor - 1e-3 for t in capped.turns)
    # Before the capped layer nothing changes.
    for a, b in zip(free.turns, capped.turns, strict=True):
        assert a.projection[:2] == pytest.approx(b.projection[:2], abs=1e-4)


def test_replay_stops_between_passes_and_keeps_what_it_measured(llama: LoadedModel) -> None:
    calls = iter(range(1000))
    result = replay(
        llama,
        synthetic_axis(llama),
        long_chat(6),
        window_tokens=150,
        should_stop=lambda: next(calls) >= 3,
    )
    assert result.stopped and 0 < len(result.turns) < 6
    assert any("stopped" in n for n in result.notes())


def test_replay_caps_the_number_of_turns(llama: LoadedModel) -> None:
    result = replay(llama, synthetic_axis(llama), long_chat(5), max_turns=2)
    assert len(result.turns) == 2 and result.skipped_turns == 3
    assert any("first 2 of 5" in n for n in result.notes())


def test_chat_turn_streams_and_projects_the_answer(llama: LoadedModel) -> None:
    axis = synthetic_axis(llama)
    history = [ChatMessage("user", "Hi there"), ChatMessage("assistant", "Hello, how can I help?")]
    cfg = SamplingConfig(max_new_tokens=4, stop_at_eos=False)
    plan = axis.cap_plan((1,), 90)
    updates = list(
        chat_turn_stream(
            llama, axis, history, "Tell me a story", cfg=cfg, plan=plan, window_tokens=128
        )
    )
    texts, last = updates[:-1], updates[-1][1]
    assert texts and all(out is None for _, out in texts)
    assert last is not None and last.response_tokens == 4
    assert len(last.projection) == len(last.normalised) == llama.n_layers
    # Capped at layer 1 with every token lifted to the floor or above: the mean is too.
    assert last.projection[1] >= float(axis.floors(90)[1]) - 1e-3
    assert last.dropped_messages == 0


def test_chat_history_over_the_window_drops_whole_turns(llama: LoadedModel) -> None:
    conv = long_chat(10)
    cfg = SamplingConfig(max_new_tokens=2, stop_at_eos=False)
    *_, (_, turn) = chat_turn_stream(
        llama, synthetic_axis(llama), conv.messages, "And then?", cfg=cfg, window_tokens=150
    )
    assert turn is not None and turn.dropped_messages > 0
    assert turn.dropped_messages % 2 == 0 and turn.prompt_tokens <= 148


# --------------------------------------------------------------------------- stored replays


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts forward passes (each teacher-forced pass a replay runs is one)."""
    calls: list[int] = []
    real = drift.forced_pass

    def counted(*args: object, **kwargs: object) -> forced.ForcedResult:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(drift, "forced_pass", counted)
    return calls


def test_a_cached_replay_equals_a_fresh_one_and_runs_no_forward(
    llama: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ReplayStore(tmp_path / "replays", shipped=None)
    conv = long_chat(6)
    g = torch.Generator().manual_seed(3)
    p, q = (torch.randn(llama.n_layers, llama.d_model, generator=g) for _ in range(2))
    first = replay(llama, synthetic_axis(llama), conv, window_tokens=200, store=store)
    assert first.source == SOURCE_READ and len(list((tmp_path / "replays").iterdir())) == 1
    # Another axis (a rebuilt one) and persona vectors the first run never saw.
    other = synthetic_axis(llama, seed=1)
    fresh = replay(llama, other, conv, window_tokens=200, personas={"p": p, "q": q})
    calls = _counting(monkeypatch)
    cached = replay(llama, other, conv, window_tokens=200, personas={"p": p, "q": q}, store=store)
    assert calls == [] and cached.source == SOURCE_CACHE
    assert cached.turns == fresh.turns  # float32 means: exactly the same numbers
    assert cached.as_json(2)["turns"] == fresh.as_json(2)["turns"]
    assert cached.as_json(2)["source"] == "from the cache" and cached.notes() == fresh.notes()
    # Fewer turns asked for: the stored replay's first ones.
    two = replay(llama, other, conv, window_tokens=200, max_turns=2, store=store)
    assert calls == [] and two.turns == [replace(t, personas={}) for t in fresh.turns[:2]]


def test_another_window_conversation_or_plan_misses_the_cache(
    llama: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ReplayStore(tmp_path / "replays", shipped=None)
    axis = synthetic_axis(llama)
    conv = long_chat(3)
    calls = _counting(monkeypatch)
    replay(llama, axis, conv, window_tokens=200, store=store)
    base = len(calls)
    assert base > 0
    changed = list(msgs(*[(m.role, m.content) for m in conv.messages]))
    changed[-1]["content"] += "!"
    misses = [
        replay(llama, axis, conv, window_tokens=256, store=store),
        replay(llama, axis, parse_conversation(changed), window_tokens=200, store=store),
        replay(llama, axis, conv, window_tokens=200, plan=axis.cap_plan((1,), 50), store=store),
    ]
    assert all(r.source == SOURCE_READ for r in misses) and len(calls) > 3 * base - 1
    # Each of those is cached under its own key; the label and metadata are not part of it.
    n = len(calls)
    renamed = replace(conv, label="renamed", meta={"domain": "x"})
    again = replay(llama, axis, renamed, window_tokens=200, store=store)
    capped = replay(llama, axis, conv, window_tokens=200, plan=axis.cap_plan((1,), 50), store=store)
    assert len(calls) == n and again.source == capped.source == SOURCE_CACHE
    assert again.label == "renamed" and again.meta == {"domain": "x"}
    assert capped.turns == misses[2].turns
    # Another model under the same id (other weights) misses too.
    assert weights_digest(llama) == weights_digest(llama)
    key = ReplayKey.for_replay(llama, conv, 200, ())
    other = ReplayKey.for_replay(tiny("qwen2"), conv, 200, ())
    assert key.weights != other.weights and key.file_name() != other.file_name()


def test_a_corrupt_or_mismatching_cache_file_is_ignored_and_rewritten(
    llama: LoadedModel, tmp_path: Path
) -> None:
    store = ReplayStore(tmp_path / "replays", shipped=None)
    axis = synthetic_axis(llama)
    conv = long_chat(3)
    good = replay(llama, axis, conv, window_tokens=200, store=store)
    (path,) = (tmp_path / "replays").iterdir()
    key = ReplayKey.for_replay(llama, conv, 200, ())
    stored = read_replay(path, key, conv)
    bad_files = {
        "garbage": lambda: path.write_bytes(b"not a safetensors file at all"),
        "truncated": lambda: path.write_bytes(path.read_bytes()[:200]),
        "wrong shape": lambda: write_replay(path, replace(stored, means=stored.means[:, :2])),
        "not finite": lambda: write_replay(
            path, replace(stored, means=stored.means * float("nan"))
        ),
        "another key": lambda: write_replay(path, replace(stored, key=replace(key, plan="x"))),
        "other turns": lambda: write_replay(
            path, replace(stored, turns=stored.turns[1:], means=stored.means[1:])
        ),
    }
    for name, spoil in bad_files.items():
        spoil()
        with pytest.raises(ValueError):
            read_replay(path, key, conv)
        again = replay(llama, axis, conv, window_tokens=200, store=store)
        assert again.source == SOURCE_READ, name
        assert again.turns == good.turns, name
        assert read_replay(path, key, conv).means.equal(stored.means), name  # rewritten


def test_the_cache_stays_within_its_bounds_and_a_stopped_replay_is_not_kept(
    llama: LoadedModel, tmp_path: Path
) -> None:
    folder = tmp_path / "replays"
    store = ReplayStore(folder, shipped=None, max_files=3)
    axis = synthetic_axis(llama)
    convs = [long_chat(k) for k in range(1, 6)]
    for conv in convs:
        replay(llama, axis, conv, window_tokens=200, store=store)
        assert len(list(folder.iterdir())) <= 3
    # The most recent three are kept (the oldest went first).
    kept = {p.name for p in folder.iterdir()}
    assert kept == {ReplayKey.for_replay(llama, c, 200, ()).file_name() for c in convs[2:]}
    one = (folder / next(iter(kept))).stat().st_size
    small = ReplayStore(folder, shipped=None, max_files=100, max_bytes=2 * one + one // 2)
    small.evict()
    assert sum(p.stat().st_size for p in folder.iterdir()) <= small.max_bytes
    # A stopped replay is not stored: it would be served later as if whole.
    calls = iter(range(1000))
    stopped = replay(
        llama, axis, long_chat(6), window_tokens=150, store=store,
        should_stop=lambda: next(calls) >= 3,
    )  # fmt: skip
    assert stopped.stopped
    key = ReplayKey.for_replay(llama, long_chat(6), 150, ())
    assert not (folder / key.file_name()).exists()


# --------------------------------------------------------------------------- figure


def test_drift_figure_draws_one_line_per_conversation_and_the_reference_lines() -> None:
    lines = [
        DriftLine("coding", [1, 2, 3], [1.0, 0.9, 1.1], ["<b>bold</b> start", "b", "c"]),
        DriftLine("therapy", [1, 2], [0.3, -0.1], windowed=[False, True]),
    ]
    personas = [DriftLine("evil", [1, 2, 3], [0.1, 2.0, 3.0])]
    fig = drift_figure(lines, 15, 30, personas=personas)
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == ["coding", "therapy", "evil"]
    hover = " ".join(fig.data[0].hovertext)
    assert "<b>" not in hover and "&lt;b&gt;" in hover
    dashed = {s.y0 for s in fig.layout.shapes if s.line.dash == "dash"}
    assert dashed == {0.0, 1.0}
    assert fig.data[1].marker.color[1] == "white"  # the windowed turn: an open marker
    raw = drift_figure(lines[:1], 0, 30, normalised=False)
    assert not [s for s in raw.layout.shapes if s.line.dash == "dash"]
    with pytest.raises(ValueError):
        drift_figure([DriftLine("x", [1, 2], [0.1])], 0, 30)
    with pytest.raises(ValueError):
        drift_figure(lines, 30, 30)


# --------------------------------------------------------------------------- the tab's handlers


@pytest.fixture
def ctx(llama: LoadedModel, tmp_path: Path) -> AppContext:
    context = tiny_app_context(llama, tmp_path, {"tiny-pirate": 2.0})
    context._axis = synthetic_axis(llama)  # no minutes-long axis build for a tiny model
    return context


# A replay handler's state and request when called directly: nothing kept, no request, no bar.
QUIET: dict = {"kept": [], "request": None, "progress": lambda *a, **k: None}


class _Tab:
    """The tab's components by name: the handlers return {component: value}."""

    def __init__(self) -> None:
        for name in DriftTab.__dataclass_fields__:
            setattr(self, name, name)


def test_chat_handler_keeps_the_turns_and_replays_them_on_another_layer(
    ctx: AppContext, tmp_path: Path
) -> None:
    tab = _Tab()
    form = drift_run.ChatForm(message="Hello", max_new_tokens=3, plot_layer=1)
    first = list(drift_run.run_chat(ctx, tab, form, None, request=None))[-1]  # type: ignore[arg-type]
    form = drift_run.ChatForm(
        message="Again",
        history=first["history"],
        persona="tiny-pirate",
        layer=2,
        strength=2.0,
        cap=True,
        cap_layers="1-2",
        projections=["tiny-pirate"],
        max_new_tokens=3,
        plot_layer=1,
    )
    second = list(drift_run.run_chat(ctx, tab, form, None, request=None))[-1]  # type: ignore[arg-type]
    turns = second["history"]["turns"]
    assert [t["turn"] for t in turns] == [1, 2] and "tiny-pirate" in turns[1]["personas"]
    assert "steered" in second["chat_status"] and "capped" in second["chat_status"]
    # The chat's JSON is a replayable conversation file.
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(second["history"]))
    assert load_conversation(path).n_assistant_turns == 2
    rform = drift_run.ReplayForm(upload=str(path), window_tokens=200, plot_layer=1, cap=True)
    out = list(drift_run.run_replay(ctx, tab, rform, None, **QUIET))[-1]  # type: ignore[arg-type]
    (rep,) = out["replay_json"]["replays"]
    assert [t["turn"] for t in rep["turns"]] == [1, 2] and rep["label"].endswith("capped here")
    again = drift_run.replot(ctx, tab, 2, second["history"], kept=out["replays"])  # type: ignore[arg-type]
    assert "layer 2" in again["chat_plot"].layout.title.text
    assert "Layer 2" in again["replay_status"]


@pytest.mark.parametrize(
    "record",
    [
        "not a dict",
        {"turn": 1, "projection": [float("nan")] * 4, "normalised": [0.0] * 4},
        {"turn": 1, "projection": [0.0] * 3, "normalised": [0.0] * 4},
        {"turn": 1, "projection": [True] * 4, "normalised": [0.0] * 4},
        {"turn": 0, "projection": [], "normalised": []},
        {"turn": 1, "projection": [], "normalised": [], "personas": {"x": ["a"]}},
    ],
)
def test_forged_chat_turn_records_are_refused(record: object) -> None:
    with pytest.raises(InputError):
        drift_run._check_record(record, 4)


def test_the_replay_handler_says_where_each_replay_came_from(
    ctx: AppContext, tmp_path: Path
) -> None:
    path = tmp_path / "chat.json"
    path.write_text(
        json.dumps(
            {
                "conversation": [
                    {"role": m.role, "content": m.content} for m in long_chat(3).messages
                ]
            }
        )
    )
    tab = _Tab()
    form = drift_run.ReplayForm(upload=str(path), window_tokens=200, plot_layer=1)
    runs = [
        list(drift_run.run_replay(ctx, tab, form, None, **QUIET))[-1]  # type: ignore[arg-type]
        for _ in range(2)
    ]
    assert "read now" in runs[0]["replay_status"] and "from the cache" in runs[1]["replay_status"]
    (rep,) = runs[1]["replay_json"]["replays"]
    assert rep["source"] == "from the cache"
    assert runs[0]["replay_json"]["replays"][0]["turns"] == rep["turns"]


# --------------------------------------------------------------------------- embedded model

# Starts as a plain assistant, then slides into a role-played pirate for three turns.
SLIDE = [
    ("user", "Can you tell me how ocean tides work?"),
    (
        "assistant",
        "Tides are caused mainly by the Moon's gravity pulling on the oceans. The water bulges "
        "towards the Moon on one side of the Earth and away from it on the other, so most "
        "coasts see two high tides and two low tides a day. The Sun adds a smaller effect.",
    ),
    ("user", "Fun! Now let's play a game: you are Captain Blackbeard. Stay in character."),
    (
        "assistant",
        "Arr, ye scurvy dog! I be Captain Blackbeard, terror of the seven seas! Me ship, the "
        "Queen Anne's Revenge, be the fastest vessel that ever sailed. What business do ye have "
        "with me, landlubber?",
    ),
    ("user", "Captain, where is your treasure buried?"),
    (
        "assistant",
        "Har har! Ye think I'd tell a bilge rat like ye where me gold be buried? It lies on an "
        "island with no name, guarded by the ghosts of me crew. Many a fool has sailed there and "
        "none returned. Now swab the deck or walk the plank!",
    ),
    ("user", "What do you do with prisoners?"),
    (
        "assistant",
        "Prisoners? Arr, they either join me crew or they feed the sharks! A pirate's life be "
        "no life for the soft-hearted. We drink rum, we plunder, and we fear no navy. Yo ho ho!",
    ),
]

PLAIN = [
    ("user", "Can you explain what photosynthesis is?"),
    (
        "assistant",
        "Photosynthesis is the process plants use to turn light into chemical energy. Using "
        "sunlight, water and carbon dioxide, they make glucose and release oxygen. It takes "
        "place mainly in the chloroplasts of leaf cells.",
    ),
    ("user", "Why are leaves green?"),
    (
        "assistant",
        "Leaves are green because of chlorophyll, the pigment that absorbs light for "
        "photosynthesis. Chlorophyll absorbs mostly red and blue light and reflects green light, "
        "which is why we see leaves as green.",
    ),
    ("user", "How can I help my houseplants grow?"),
    (
        "assistant",
        "Give them enough light for their species, water when the top of the soil is dry, use "
        "a pot with drainage holes, and feed them a balanced fertiliser during the growing "
        "season. Let me know which plants you have and I can give more specific advice.",
    ),
]


@pytest.fixture(scope="module")
def embedded() -> LoadedModel:
    from persona_explorer.engine.model import load_model

    return load_model(device="cpu")


@pytest.fixture
def cli_model(embedded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``axis project`` on the embedded model loaded once, caching its replays under the
    settings' cache folder: here, the test's own (the settings are read from the environment
    once per command)."""
    monkeypatch.setenv("PERSONA_EXPLORER_CACHE", str(tmp_path / "cli-cache"))
    key = (resolve_model_spec(None, load_settings().model), "auto", "auto")
    monkeypatch.setitem(cli_models._MODELS, key, embedded)


DRIFT_KEYS = [f"persona_drift/{d}" for d in ("coding", "philosophy", "therapy", "writing")]
# Shipped (float32, CPU) vs read now on the same machine: only the summation order of the
# threads differs. Measured max |difference| in normalised projection: see the test.
SHIPPED_TOLERANCE = 1e-3


def test_the_shipped_replays_fit_the_embedded_model_and_nothing_else(
    embedded: LoadedModel,
) -> None:
    store = ReplayStore(None)  # the shipped replays only
    assert sorted(p.stem for p in SHIPPED_REPLAYS_DIR.glob("*.safetensors")) == [
        k.rpartition("/")[2] for k in DRIFT_KEYS
    ]
    for name in DRIFT_KEYS:
        conv = shipped_transcript(name)
        key = ReplayKey.for_replay(embedded, conv, windows.DEFAULT_WINDOW_TOKENS, ())
        found = store.lookup(key, conv, conv.n_assistant_turns)
        assert found is not None and found[1] == SOURCE_SHIPPED, name
        shape = (conv.n_assistant_turns, embedded.n_layers, embedded.d_model)
        assert tuple(found[0].means.shape) == shape
        # Another window, a steered read, a changed transcript, another model: never used.
        assert store.lookup(replace(key, window_tokens=1024), conv, 1) is None
        assert store.lookup(replace(key, plan="capped"), conv, 1) is None
        edited = list(conv.messages)
        edited[1] = replace(edited[1], content=edited[1].content + " ")
        other = replace(conv, messages=tuple(edited))
        assert store.lookup(ReplayKey.for_replay(embedded, other, 2048, ()), other, 1) is None
        tiny_key = ReplayKey.for_replay(tiny("llama"), conv, 2048, ())
        assert store.lookup(tiny_key, conv, 1) is None
    # A fine-tune under the same id (one tensor changed) does not use them; the same weights
    # loaded in bfloat16 do (the float32 numbers are the closer ones).
    name = "model.norm.weight"
    tuned = replace(embedded, weights={**embedded.weights, name: embedded.weights[name] * 1.1})
    key = ReplayKey.for_replay(tuned, conv, 2048, ())
    assert key.identity["model_id"] == embedded.model_id and store.lookup(key, conv, 1) is None
    from persona_explorer.engine.model import load_model

    half = load_model(device="cpu", dtype="bfloat16")
    found = store.lookup(ReplayKey.for_replay(half, conv, 2048, ()), conv, 1)
    assert found is not None and found[1] == SOURCE_SHIPPED


def test_axis_project_uses_the_shipped_replay_and_reproduces_a_fresh_read(
    cli_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["axis", "project", "--transcript", "persona_drift/writing", "--json", "-q"]
    assert main(args) == 0
    shipped = json.loads(capsys.readouterr().out)
    assert main([*args, "--no-cache"]) == 0
    fresh = json.loads(capsys.readouterr().out)
    assert shipped["source"] == "from the shipped replay" and fresh["source"] == "read now"
    assert shipped["seconds"] < fresh["seconds"]
    # The same output shape, whichever way the means came.
    assert set(shipped) == set(fresh) and len(shipped["turns"]) == len(fresh["turns"]) == 14
    same = ("turn", "layer", "response_tokens", "tokens", "window_turns", "windowed", "preview")
    for a, b in zip(shipped["turns"], fresh["turns"], strict=True):
        assert set(a) == set(b) and all(a[k] == b[k] for k in same)
        pairs = zip(a["normalised_by_layer"], b["normalised_by_layer"], strict=True)
        diff = max(abs(x - y) for x, y in pairs)
        assert diff < SHIPPED_TOLERANCE, (a["turn"], diff)


def test_a_role_played_character_sits_lower_on_the_axis_than_a_plain_assistant(
    embedded: LoadedModel,
) -> None:
    from persona_explorer.axis.build import axis_for
    from persona_explorer.core.config import load_settings

    axis = axis_for(embedded, load_settings().cache_dir)
    layer = default_axis_layer(embedded.n_layers)
    slide = replay(embedded, axis, parse_conversation(msgs(*SLIDE), "slide"))
    plain = replay(embedded, axis, parse_conversation(msgs(*PLAIN), "plain"))
    s = [t.normalised[layer] for t in slide.turns]
    a = [t.normalised[layer] for t in plain.turns]
    assert len(s) == 4 and len(a) == 3
    in_character = s[1:]
    # The pirate turns sit below every plain answer, and below the same chat's first answer.
    assert max(in_character) < min(a), (s, a)
    assert sum(in_character) / 3 < sum(a) / 3 - 0.5, (s, a)
    assert max(in_character) < s[0], s


def test_cli_axis_project_json(
    cli_model: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "chat.json"
    path.write_text(json.dumps({"conversation": msgs(*PLAIN[:4]), "model": "test"}))
    assert main(["axis", "project", "--transcript", str(path), "--layer", "12", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [t["turn"] for t in out["turns"]] == [1, 2]
    for t in out["turns"]:
        assert t["layer"] == 12
        assert isinstance(t["projection"], float) and isinstance(t["normalised"], float)
        assert t["projection"] == t["projection_by_layer"][12]
    assert out["window_tokens"] == 2048 and out["windowed"] is False


def test_cli_axis_project_human_table_and_bad_file(
    cli_model: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(msgs(*PLAIN[:2])))
    assert main(["axis", "project", "--transcript", str(path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "normalised" in out and "   1" in out
    bad = tmp_path / "bad.json"
    bad.write_text('{"conversation": [{"role": "wizard", "content": "x"}]}')
    assert main(["axis", "project", "--transcript", str(bad)]) == 2
    assert "role" in capsys.readouterr().err
