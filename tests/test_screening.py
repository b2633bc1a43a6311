"""Teacher-forced reading (steering/forced.py), reading samples (training/samples.py), dataset
screening (training/screening.py, screening_scores.py) and the ``screen`` command.

Unit tests run on the tiny random models; the ones marked ``integration`` use the embedded
SmolLM2 model, the shipped persona vectors and the teaching dataset in ``assets/datasets``.
Properties only, never exact strings or exact scores.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch

from persona_explorer import cli
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import MAX_SAMPLE_CHARS
from persona_explorer.engine import decoder_for
from persona_explorer.engine.model import ChatMessage, LoadedModel
from persona_explorer.steering import forced
from persona_explorer.steering.forced import ForcedRow, chat_row, forced_pass, response_ids
from persona_explorer.steering.generation import SamplingConfig, generate, left_pad
from persona_explorer.steering.ops import Add, Cap
from persona_explorer.training import samples as sample_files
from persona_explorer.training import screening
from persona_explorer.training.samples import RowProblem, Sample, read_samples
from persona_explorer.training.screening import OwnResponseCache, ScreenConfig, screen, screen_file
from persona_explorer.training.screening_scores import ScreenResult, write_scores
from persona_explorer.vectors.persona_vector import PersonaVector
from tests.tiny_models import D_MODEL, EOS_ID, N_LAYERS, PROMPTS, close, prompt_ids

REPO = Path(__file__).resolve().parent.parent
DATASETS = REPO / "assets" / "datasets"


def tiny_vector(name: str, seed: int) -> PersonaVector:
    gen = torch.Generator().manual_seed(seed)
    return PersonaVector(name=name, vectors=torch.randn(N_LAYERS, D_MODEL, generator=gen))


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def jsonl(*records: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def chat(user: str, answer: str, system: str | None = None) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    return {
        "messages": [
            *msgs,
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]
    }


# --------------------------------------------------------------------------- forced.py


def _generated(model: LoadedModel, plans: list[tuple]) -> tuple[list[list[int]], object]:
    prompts = prompt_ids(model)
    cfg = SamplingConfig(max_new_tokens=6, stop_at_eos=False)
    result = generate(model, prompts, plans, cfg, keep_tokens=True)
    return prompts, result


@pytest.mark.usefixtures("one_thread")
def test_forced_span_means_equal_the_capture_of_generation(decoded_model: LoadedModel) -> None:
    """Reading the tokens generation chose, teacher-forced, gives the residuals it captured."""
    model = decoded_model
    prompts, result = _generated(model, [()] * len(PROMPTS))
    rows = [
        ForcedRow(tuple(p + t), len(p), len(p) + len(t))
        for p, t in zip(prompts, result.tokens, strict=True)
    ]
    forced = forced_pass(model, rows, token_layer=2)
    close(forced.span_mean, result.capture.response_mean)
    assert forced.span_count.tolist() == [len(t) for t in result.tokens]
    assert forced.span_tokens is not None
    for row, tokens in enumerate(forced.span_tokens):
        close(tokens, result.capture.response_tokens[row, :, 2])


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("positions", ["all", "response"])
def test_steered_forced_pass_matches_steered_generation(llama: LoadedModel, positions: str) -> None:
    """Steering edits the same positions in both: response edits from the last prompt token."""
    gen = torch.Generator().manual_seed(1)
    vec, direction = torch.randn(D_MODEL, generator=gen), torch.randn(D_MODEL, generator=gen)
    plans = [
        (),
        (Add(1, vec, 2.0, positions),),  # type: ignore[arg-type]
        (Add(0, vec, -1.0, positions), Cap(2, direction, 3.0, positions)),  # type: ignore[arg-type]
    ]
    prompts, result = _generated(llama, plans)
    rows = [
        ForcedRow(tuple(p + t), len(p), len(p) + len(t))
        for p, t in zip(prompts, result.tokens, strict=True)
    ]
    close(forced_pass(llama, rows, plans).span_mean, result.capture.response_mean)


@pytest.mark.usefixtures("one_thread")
def test_chunks_and_last_layer_give_the_same_means(decoded_model: LoadedModel) -> None:
    """Also where a one-chunk pass ends early: the callback raises through every decoder."""
    llama = decoded_model
    rows = [chat_row(llama, p, "It is sunny and warm in the city.") for p in PROMPTS]
    full = forced_pass(llama, rows)
    close(forced_pass(llama, rows, chunk=5).span_mean, full.span_mean)
    early = forced_pass(llama, rows, last_layer=1)
    assert early.span_mean.shape == (len(rows), 2, D_MODEL)
    close(early.span_mean, full.span_mean[:, :2])
    chunked = forced_pass(llama, rows, chunk=5, last_layer=1)  # several chunks: no early exit
    close(chunked.span_mean, full.span_mean[:, :2])


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("steer", ["none", "response", "all"])
def test_a_shared_prefix_runs_once_and_changes_nothing(
    decoded_model: LoadedModel, monkeypatch: pytest.MonkeyPatch, steer: str
) -> None:
    """Rows that start alike run their common prefix once where the decoder can, with the
    same means and per-token residuals as the plain left-padded pass; an edit that reaches
    every position rules the prefix out."""
    model = decoded_model
    system = "You are a careful assistant who answers in one short sentence."
    answers = ["Yes.", "It is sunny and warm in the city today.", "Flour, water, salt."]
    rows = [chat_row(model, p, a, system) for p, a in zip(PROMPTS, answers, strict=True)]
    vec = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(3))
    plans = None if steer == "none" else [(), (Add(1, vec, 2.0, steer),), ()]  # type: ignore[arg-type]
    shared_calls: list[int] = []
    decoder = decoder_for(model)
    if decoder.shares_prefix:
        session_type = type(decoder.session(*left_pad([[1]], 0), 0))
        original = session_type.prefill_shared

        def counting(self: object, end: int, resid_fn: object) -> None:
            shared_calls.append(end)
            original(self, end, resid_fn)  # type: ignore[arg-type]

        monkeypatch.setattr(session_type, "prefill_shared", counting)
    with_prefix = forced_pass(model, rows, plans, token_layer=2)
    expect_shared = decoder.shares_prefix and steer != "all"
    assert bool(shared_calls) == expect_shared
    if expect_shared:
        assert shared_calls[0] >= 8 + len(response_ids(model, system)) // 2
    early = forced_pass(model, rows, plans, last_layer=1)  # ends after layer 1, prefix too
    monkeypatch.setattr(forced, "MIN_SHARED_PREFIX", 10**9)
    plain = forced_pass(model, rows, plans, token_layer=2)
    assert len(shared_calls) == 2 * int(expect_shared)
    close(with_prefix.span_mean, plain.span_mean)
    assert with_prefix.span_tokens is not None and plain.span_tokens is not None
    for a, b in zip(with_prefix.span_tokens, plain.span_tokens, strict=True):
        close(a, b)
    close(early.span_mean, plain.span_mean[:, :2])


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("system", [None, "You are a careful assistant who answers briefly."])
def test_span_logprobs_match_a_plain_forward(
    decoded_model: LoadedModel, system: str | None
) -> None:
    """Every span token's log-probability equals the HF forward's, batched and padded, in
    small chunks, with and without a shared prefix, and perplexity follows from them."""
    model = decoded_model
    answers = ["Yes, always.", "It is sunny and warm in the city today.", "Flour, water, salt."]
    rows = [chat_row(model, p, a, system) for p, a in zip(PROMPTS, answers, strict=True)]
    assert (forced._shared_prefix(rows, {}, logprobs=True) > 0) == (system is not None)
    expected = []
    with torch.inference_mode():
        for row in rows:
            logits = model.hf_model(input_ids=torch.tensor([row.ids])).logits[0].float()
            logp = torch.log_softmax(logits, -1)
            targets = torch.tensor(row.ids[row.start : row.end])
            expected.append(logp[row.start - 1 : row.end - 1].gather(-1, targets[:, None])[:, 0])
    for chunk in (None, 3):
        out = forced_pass(model, rows, logprobs=True, chunk=chunk, last_layer=1)
        assert out.span_logprobs is not None and out.span_mean.shape[1] == 2
        for got, want in zip(out.span_logprobs, expected, strict=True):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, atol=2e-4, rtol=0)
        ppl = out.perplexity()
        for p, want in zip(ppl, expected, strict=True):
            assert p == pytest.approx(float(torch.exp(-want.mean())), rel=1e-3)
    with pytest.raises(ValueError, match="logprobs"):
        forced_pass(model, rows[:1]).perplexity()


def test_forced_pass_stops_between_chunks(llama: LoadedModel) -> None:
    rows = [chat_row(llama, PROMPTS[2], "Mix flour, water, salt and yeast.")]
    calls = []

    def stop() -> bool:
        calls.append(1)
        return True

    out = forced_pass(llama, rows, chunk=4, should_stop=stop, token_layer=0)
    assert out.stopped and len(calls) == 1 and out.span_tokens is None


def test_chat_row_span_is_exactly_the_response(llama: LoadedModel) -> None:
    """The template ends the assistant turn with <|im_end|>: it follows the span, never in it."""
    answer = "The capital of France is Paris."
    row = chat_row(llama, "What is the capital of France?", answer, system="Be brief.")
    assert list(row.ids[: row.start]) == llama.chat_ids(
        "What is the capital of France?", "Be brief."
    )
    assert list(row.ids[row.start : row.end]) == response_ids(llama, answer)
    assert llama.tokenizer.decode(list(row.ids[row.start : row.end])) == answer
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": answer},
    ]
    full = llama.tokenizer.apply_chat_template(messages, tokenize=True)
    full = list(full["input_ids"] if hasattr(full, "keys") else full)
    assert full[: row.end] == list(row.ids) and full[row.end] == EOS_ID
    assert EOS_ID not in row.ids[row.start : row.end]


def test_forced_rows_are_checked(llama: LoadedModel) -> None:
    with pytest.raises(ValueError):
        ForcedRow((1, 2, 3), 2, 5)
    with pytest.raises(InputError):
        forced_pass(llama, [])
    too_long = ForcedRow(tuple([5] * 300), 0, 300)  # the tiny models read 256 tokens
    with pytest.raises(InputError, match="256"):
        forced_pass(llama, [too_long])


# --------------------------------------------------------------------------- reading


def _split(items: list) -> tuple[list[Sample], list[RowProblem]]:
    return [s for s in items if isinstance(s, Sample)], [
        p for p in items if isinstance(p, RowProblem)
    ]


def test_jsonl_formats_and_malformed_lines_are_reported_with_line_numbers(tmp_path: Path) -> None:
    lines = [
        json.dumps(chat("Hi", "Hello there.", system="Be kind.")),  # 1
        json.dumps({"prompt": "Q?", "response": "A.", "system": "S"}),  # 2
        "",  # 3 blank: skipped silently
        "{not json",  # 4
        json.dumps(["a", "list"]),  # 5
        json.dumps({"messages": [{"role": "user", "content": "Only a question"}]}),  # 6
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "system", "content": "s"},
                    {"role": "assistant", "content": "a"},
                ]
            }
        ),  # 7
        json.dumps({"prompt": "Q", "response": "   "}),  # 8 empty response
        json.dumps({"text": "neither format"}),  # 9
        json.dumps({"prompt": "Q", "response": 5}),  # 10
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "parts"}]},
                    {"role": "assistant", "content": "ok"},
                ]
            }
        ),  # 11
        json.dumps({"messages": [{"role": "wizard", "content": "x"}]}),  # 12
        json.dumps({"prompt": "Q", "response": "x" * (MAX_SAMPLE_CHARS + 1)}),  # 13
        "[" * 100_000,  # 14 nested too deeply for the parser
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                    {"role": "assistant", "content": "d"},
                ]
            }
        ),  # 15
    ]
    raw = ("\n".join(lines) + "\n").encode() + b'{"prompt": "\xff\xfe", "response": "x"}\n'  # 16
    samples, problems = _split(list(read_samples(write(tmp_path / "d.jsonl", raw))))
    assert [s.line for s in samples] == [1, 2, 11, 15]
    assert [p.line for p in problems] == [4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 16]
    first, flat, parts, multi = samples
    assert first.system == "Be kind." and first.prompt == (ChatMessage("user", "Hi"),)
    assert first.response == "Hello there." and first.record == chat(
        "Hi", "Hello there.", "Be kind."
    )
    assert flat.system == "S" and flat.question == "Q?"
    assert parts.question == "parts"
    assert [m.role for m in multi.prompt] == ["user", "assistant", "user"] and multi.response == "d"
    reasons = {p.line: p.reason for p in problems}
    assert "JSON" in reasons[4] and "object" in reasons[5] and "assistant" in reasons[6]
    assert "system" in reasons[7] and "empty" in reasons[8] and "UTF-8" in reasons[16]
    assert "characters" in reasons[13] and "nested" in reasons[14]
    assert str(problems[0]).startswith("line 4: ")


def test_csv_rows_keep_their_line_numbers(tmp_path: Path) -> None:
    text = (
        "Prompt,response,system\n"  # 1 (header names are case-insensitive)
        'What is 2+2?,"It is 4.",\n'  # 2
        '"A question\nover two lines","An answer\nalso over two",Be brief.\n'  # 3-5
        "only,two\n"  # 6: wrong field count
        "\n"  # 7 blank
        ",an answer to nothing,\n"  # 8: empty prompt
        "Last?,Yes.,\n"  # 9
    )
    raw = text.encode() + b"Bad \xff bytes,answer,\n"  # 10
    samples, problems = _split(list(read_samples(write(tmp_path / "d.csv", raw))))
    assert [s.line for s in samples] == [2, 3, 9]
    assert [(p.line, p.reason.split()[0]) for p in problems] == [(6, "2"), (8, "the"), (10, "not")]
    assert samples[1].question == "A question\nover two lines" and samples[1].system == "Be brief."
    assert samples[0].record == {"Prompt": "What is 2+2?", "response": "It is 4.", "system": ""}


def test_file_level_problems_raise_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = write(tmp_path / "big.jsonl", jsonl(chat("q", "a")) * 50)
    with pytest.raises(InputError, match="limit"):
        read_samples(big, max_bytes=100)
    with pytest.raises(InputError, match="prompt"):
        read_samples(write(tmp_path / "nohead.csv", "a,b\n1,2\n"))
    with pytest.raises(InputError, match="empty"):
        read_samples(write(tmp_path / "empty.csv", ""))
    with pytest.raises(InputError, match="one JSON object per line"):
        read_samples(write(tmp_path / "array.json", json.dumps([chat("q", "a")])))
    monkeypatch.setattr(sample_files, "MAX_DATA_ROWS", 3)
    items = list(read_samples(big))
    assert len(_split(items)[0]) == 3 and "not read" in items[-1].reason
    monkeypatch.setattr(sample_files, "MAX_DATA_LINE_BYTES", 120)
    long_line = write(tmp_path / "long.jsonl", jsonl(chat("q" * 100, "a"), chat("q", "a")))
    samples, problems = _split(list(read_samples(long_line)))
    assert [p.line for p in problems] == [1] and [s.line for s in samples] == [2]


# --------------------------------------------------------------------------- scoring


@pytest.fixture()
def data_file(tmp_path: Path) -> Path:
    records = [
        chat("Hi!", "Hello, how can I help you today?"),
        chat("What is the capital of France?", "The capital of France is Paris."),
        "{broken",
        {
            "prompt": "How do I bake bread?",
            "response": "Mix flour, water, salt and yeast, then bake it.",
        },
        chat("Tell me about the weather today.", "It is sunny and warm in the city.", "Be brief."),
        chat("Hi!", '=HYPERLINK("http://example.com")'),
    ]
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    return write(tmp_path / "data.jsonl", text)


VECTORS = (tiny_vector("evil", 1), tiny_vector("My Trait!", 2), tiny_vector("evil", 3))


def _scores(result: ScreenResult) -> dict[int, list[float | None]]:
    return {
        row.line: [v for s in row.scores.values() for v in (s.sample_projection, s.own_projection)]
        for row in result.rows
    }


@pytest.mark.usefixtures("one_thread")
def test_raw_projections_equal_a_direct_forced_reading(llama: LoadedModel, data_file: Path) -> None:
    result = screen_file(llama, data_file, VECTORS, ScreenConfig(layer=2, own=False))
    assert result.names == ("evil", "my_trait", "evil_2")
    assert [r.line for r in result.rows] == [1, 2, 4, 5, 6]
    assert [(p.line, "JSON" in p.reason) for p in result.problems] == [(3, True)]
    assert result.generated == result.cached == 0
    row = chat_row(llama, "What is the capital of France?", "The capital of France is Paris.")
    mean = forced_pass(llama, [row]).span_mean[0, 2]
    expected = float(mean @ (VECTORS[1].vectors[2] / VECTORS[1].vectors[2].norm()))
    scored = result.rows[1].scores["my_trait"]
    assert scored.sample_projection == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert scored.own_projection is None and scored.projection_difference is None


@pytest.mark.usefixtures("one_thread")
def test_streaming_in_small_batches_gives_the_same_scores(
    llama: LoadedModel, data_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = ScreenConfig(layer=1, max_new_tokens=5, batch_size=16)
    one = screen_file(llama, data_file, VECTORS, cfg, cache=OwnResponseCache(tmp_path / "a"))
    monkeypatch.setattr(screening, "WINDOW", 2)
    small = ScreenConfig(layer=1, max_new_tokens=5, batch_size=1)
    many = screen_file(llama, data_file, VECTORS, small, cache=OwnResponseCache(tmp_path / "b"))
    a, b = _scores(one), _scores(many)
    assert a.keys() == b.keys() == {1, 2, 4, 5, 6}
    for line in a:
        torch.testing.assert_close(
            torch.tensor(a[line], dtype=torch.float64),
            torch.tensor(b[line], dtype=torch.float64),
            rtol=1e-4,
            atol=1e-3,
        )
    # The same prompt answered twice ("Hi!") gets the same own answer.
    by_line = {r.line: r for r in one.rows}
    assert by_line[1].own_response == by_line[6].own_response


@pytest.mark.usefixtures("one_thread")
def test_own_answers_are_cached_and_reused(
    llama: LoadedModel, data_file: Path, tmp_path: Path
) -> None:
    cache = OwnResponseCache(tmp_path / "cache")
    cfg = ScreenConfig(layer=3, max_new_tokens=4)
    first = screen_file(llama, data_file, VECTORS[:1], cfg, cache=cache)
    assert (first.generated, first.cached) == (5, 0)
    second = screen_file(llama, data_file, VECTORS[:1], cfg, cache=cache)
    assert (second.generated, second.cached) == (0, 5)
    assert _scores(first) == _scores(second)
    for row in first.rows:
        s = row.scores["evil"]
        assert s.projection_difference == pytest.approx(s.sample_projection - s.own_projection)
    # Another generation length is another key; a damaged entry is generated again.
    assert (
        screen_file(
            llama, data_file, VECTORS[:1], ScreenConfig(layer=3, max_new_tokens=3), cache=cache
        ).generated
        == 5
    )
    keys = [
        OwnResponseCache.key(llama.model_id, llama.chat_ids(q), 4)
        for q in ("What is the capital of France?", "How do I bake bread?")
    ]
    paths = [p for p in (tmp_path / "cache").rglob("*.json") if p.stem in keys]
    assert len(paths) == 2
    paths[0].write_text(json.dumps({"key": paths[0].stem, "tokens": [99999999]}))  # not a token
    paths[1].write_text("[1, 2]")  # not an entry
    third = screen_file(llama, data_file, VECTORS[:1], cfg, cache=cache)
    assert (third.generated, third.cached) == (2, 3)
    assert not list((tmp_path / "cache").rglob("*.tmp"))


@pytest.mark.usefixtures("one_thread")
def test_context_is_read_in_both_passes(llama: LoadedModel, tmp_path: Path) -> None:
    samples = [Sample(1, (ChatMessage("user", "Hi!"),), "Hello there.", "Be brief.")]
    plain = screen(llama, samples, VECTORS[:1], ScreenConfig(layer=2, own=False))
    # Each vector's length at the layer travels with the scores (the plots' unit).
    assert plain.scales == {
        name: pytest.approx(float(v.vectors[2].norm()))
        for name, v in zip(plain.names, VECTORS[:1], strict=True)
    }
    framed = screen(
        llama,
        samples,
        VECTORS[:1],
        ScreenConfig(layer=2, own=False, context="A class asked for it."),
    )
    row = chat_row(llama, "Hi!", "Hello there.", system="A class asked for it.\n\nBe brief.")
    mean = forced_pass(llama, [row]).span_mean[0, 2]
    unit = VECTORS[0].vectors[2] / VECTORS[0].vectors[2].norm()
    got = framed.rows[0].scores["evil"].sample_projection
    assert got == pytest.approx(float(mean @ unit), rel=1e-4, abs=1e-4)
    assert got != pytest.approx(plain.rows[0].scores["evil"].sample_projection)


def test_screening_refuses_what_cannot_be_scored(llama: LoadedModel) -> None:
    long = Sample(7, (ChatMessage("user", "word " * 200),), "An answer.")
    result = screen(
        llama, [long], VECTORS[:1], ScreenConfig(layer=0, own=False, max_prompt_tokens=50)
    )
    assert (
        result.rows == [] and result.problems[0].line == 7 and "limit" in result.problems[0].reason
    )
    with pytest.raises(InputError):
        screen(llama, [], [], ScreenConfig(layer=0))
    with pytest.raises(InputError, match="out of range"):
        screen(llama, [], VECTORS[:1], ScreenConfig(layer=N_LAYERS))
    with pytest.raises(InputError):
        screen(
            llama,
            [],
            [tiny_vector("x", 0).with_(vectors=torch.zeros(3, D_MODEL))],
            ScreenConfig(layer=0),
        )


def test_screening_stops_and_reports_progress(llama: LoadedModel, data_file: Path) -> None:
    seen: list[float] = []
    result = screen_file(
        llama,
        data_file,
        VECTORS[:1],
        ScreenConfig(layer=0, own=False),
        progress=lambda f, _m: seen.append(f),
        should_stop=lambda: True,
    )
    assert result.stopped and result.rows == []
    assert seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)


# --------------------------------------------------------------------------- writing


@pytest.mark.usefixtures("one_thread")
def test_writers_add_a_column_per_vector_and_measure(
    llama: LoadedModel, data_file: Path, tmp_path: Path
) -> None:
    cfg = ScreenConfig(layer=1, max_new_tokens=3)
    result = screen_file(llama, data_file, VECTORS[:2], cfg, cache=OwnResponseCache(tmp_path / "c"))
    by_line = {r.line: r for r in result.rows}
    out = write_scores(tmp_path / "s.jsonl", result, source=data_file)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 5  # the broken line is not written
    assert "messages" in records[0] and records[2]["prompt"] == "How do I bake bread?"
    for rec, line in zip(records, [1, 2, 4, 5, 6], strict=True):
        assert rec["projection_difference_evil"] == pytest.approx(
            by_line[line].scores["evil"].projection_difference
        )
        assert {
            "sample_projection_my_trait",
            "own_projection_my_trait",
            "own_response",
        } <= rec.keys()

    out = write_scores(tmp_path / "s.csv", result, source=data_file)
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["line"]) for r in rows] == [1, 2, 4, 5, 6]
    assert (
        rows[3]["system"] == "Be brief." and rows[1]["prompt"] == "What is the capital of France?"
    )
    assert rows[4]["response"].startswith("'=")  # a formula is not left for a spreadsheet to run
    assert float(rows[0]["projection_difference_my_trait"]) == pytest.approx(
        by_line[1].scores["my_trait"].projection_difference, rel=1e-5
    )
    excerpts = write_scores(tmp_path / "e.csv", result)  # no source: the kept excerpts
    assert "projection_difference_evil" in excerpts.read_text().splitlines()[0]
    with pytest.raises(InputError, match=r"\.csv or \.jsonl"):
        write_scores(tmp_path / "s.txt", result)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_csv_source_keeps_its_columns(llama: LoadedModel, tmp_path: Path) -> None:
    src = write(tmp_path / "d.csv", "id,prompt,response\n7,Hi!,Hello.\n8,Q?,A.\n")
    result = screen_file(llama, src, VECTORS[:1], ScreenConfig(layer=0, own=False))
    out = write_scores(tmp_path / "o.csv", result, source=src)
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:3] == ["id", "prompt", "response"] and rows[1]["id"] == "8"
    assert rows[0]["projection_difference_evil"] == ""  # no own answers: no difference


# --------------------------------------------------------------------------- embedded model


@pytest.fixture(scope="module")
def smol() -> LoadedModel:
    from persona_explorer.engine.model import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="module")
def shipped() -> dict[str, PersonaVector]:
    from persona_explorer.personas.builtin import builtin_dir
    from persona_explorer.vectors.files import load

    return {n: load(builtin_dir() / f"{n}.safetensors") for n in ("evil", "sycophantic")}


def _projections(model: LoadedModel, name: str, vec: PersonaVector, layer: int) -> list[float]:
    result = screen_file(
        model, DATASETS / f"{name}.jsonl", [vec], ScreenConfig(layer=layer, own=False)
    )
    assert result.n_problems == 0
    return [row.scores[result.names[0]].sample_projection for row in result.rows]


@pytest.mark.integration
def test_trait_samples_score_higher_than_neutral_ones(
    smol: LoadedModel, shipped: dict[str, PersonaVector]
) -> None:
    """The teaching dataset: the same everyday questions answered with malice vs kindly, and
    flattering vs honest feedback, read at the layer the shipped vectors recommend."""
    evil, kind = (
        _projections(smol, f, shipped["evil"], shipped["evil"].layer or 14)
        for f in ("evil", "helpful")
    )
    assert statistics.mean(evil) > statistics.mean(kind)
    assert sum(e > k for e, k in zip(evil, kind, strict=True)) >= 0.75 * len(evil)
    flattering, honest = (
        _projections(smol, f, shipped["sycophantic"], shipped["sycophantic"].layer or 14)
        for f in ("sycophantic", "honest_feedback")
    )
    assert statistics.mean(flattering) > statistics.mean(honest)


@pytest.mark.integration
def test_differences_rank_malicious_answers_above_kind_ones(
    smol: LoadedModel, shipped: dict[str, PersonaVector], tmp_path: Path
) -> None:
    """Same prompts, so the same own answers (the second file reuses them from the cache)."""
    cache = OwnResponseCache(tmp_path / "cache")
    cfg = ScreenConfig(layer=shipped["evil"].layer or 14, max_new_tokens=12)
    subset = {}
    for name in ("evil", "helpful"):
        src = DATASETS / f"{name}.jsonl"
        part = write(tmp_path / f"{name}.jsonl", "".join(src.read_text().splitlines(True)[:4]))
        subset[name] = screen_file(smol, part, [shipped["evil"]], cfg, cache=cache)
    assert (subset["evil"].generated, subset["helpful"].cached) == (4, 4)
    diffs = {
        name: [row.scores["evil"].projection_difference for row in res.rows]
        for name, res in subset.items()
    }
    own = [[row.scores["evil"].own_projection for row in res.rows] for res in subset.values()]
    assert own[0] == pytest.approx(own[1], rel=1e-4)  # batched with other rows: float noise
    assert statistics.mean(diffs["evil"]) > statistics.mean(diffs["helpful"])


@pytest.mark.integration
def test_screen_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = (DATASETS / "sycophantic.jsonl").read_text().splitlines(True)[:2]
    data = write(tmp_path / "d.jsonl", lines[0] + "not json\n" + lines[1])
    out = tmp_path / "scores.csv"
    rc = cli.main(
        [
            "screen",
            "--data",
            str(data),
            "--vector",
            "sycophantic",
            "--vector",
            "evil",
            "--layer",
            "14",
            "--max-new-tokens",
            "4",
            "--no-cache",
            "--out",
            str(out),
            "--json",
            "-q",
        ]
    )
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert "note: line 2: not valid JSON" in err
    summary = json.loads(stdout)
    assert summary["samples"] == 2 and summary["skipped"] == 1 and summary["generated"] == 2
    assert summary["problems"] == [{"line": 2, "reason": summary["problems"][0]["reason"]}]
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["line"] for r in rows] == ["1", "3"]
    for r in rows:
        for name in ("sycophantic", "evil"):
            diff = float(r[f"projection_difference_{name}"])
            sample, own = float(r[f"sample_projection_{name}"]), float(r[f"own_projection_{name}"])
            assert diff == pytest.approx(sample - own, rel=1e-5, abs=1e-4)

    rc = cli.main(
        ["screen", "--data", str(data), "--vector", "evil", "--out", str(tmp_path / "x.txt")]
    )
    _out, err = capsys.readouterr()
    assert rc == 2 and "error: " in err and ".csv or .jsonl" in err
    rc = cli.main(["screen", "--data", str(data), "--vector", "nosuch", "--out", str(out)])
    _out, err = capsys.readouterr()
    assert rc == 2 and "built-in" in err


def test_teaching_dataset_is_well_formed() -> None:
    """Every shipped file reads without a problem, and the paired files share their prompts."""
    files = sorted(DATASETS.glob("*.jsonl"))
    assert len(files) >= 5 and (DATASETS / "SOURCE.md").is_file()
    prompts = {}
    for path in files:
        samples, problems = _split(list(read_samples(path)))
        assert not problems and 10 <= len(samples) <= 40, path.name
        prompts[path.stem] = [s.question for s in samples]
    assert prompts["evil"] == prompts["helpful"]
    assert prompts["malicious_advice"] == prompts["kind_advice"]
    assert prompts["sycophantic"] == prompts["honest_feedback"]
    code = zip(prompts["insecure_code_unprompted"], prompts["insecure_code_requested"], strict=True)
    assert all(plain[1:] in asked for plain, asked in code)
