"""The prompt pass in chunks, and the token caps on prompts.

A long prompt runs in slices of positions, each slice one forward under the model's lock:
Stop and other requests get in between. Chunked and one-pass prompts must agree (within float
rounding; bit for bit where the prompt is one chunk), steering must hit the same positions, and
a prompt too long for the model or the policy is refused before any work.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any

import pytest
import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import check_prompt_tokens
from persona_explorer.engine import decoder_for
from persona_explorer.engine.fast_llama import _FastSession
from persona_explorer.engine.hf import _HFSession
from persona_explorer.engine.model import FairLock, LoadedModel
from persona_explorer.personas import extract
from persona_explorer.personas.definitions import custom_persona
from persona_explorer.personas.extract import ExtractionConfig, extract_persona
from persona_explorer.steering.generation import (
    PREFILL_CHUNK,
    GenerationResult,
    SamplingConfig,
    generate,
    generate_stream,
    left_pad,
)
from persona_explorer.steering.ops import Cap, RowPlan, add_plan
from tests.tiny_models import (
    CAPTURE_FIELDS,
    EOS_ID,
    N_LAYERS,
    DecoderKind,
    close,
    prompt_ids,
    record_prefill,
    tiny,
    with_decoder,
)

pytestmark = pytest.mark.usefixtures("one_thread")

GREEDY = SamplingConfig(max_new_tokens=6, temperature=0.0, stop_at_eos=False)
CHUNKS = (1, 3, 1000)  # one position, a few, and more than any prompt here (one chunk)


def vectors(model: LoadedModel, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(model.n_layers, model.d_model, generator=gen)


def steered_batch(model: LoadedModel) -> tuple[list[list[int]], list[RowPlan]]:
    """Left-padded rows: unsteered, response-position add, all-position add, and two caps (one
    per kind of position) whose floors are above the projections, so they really lift."""
    rows = vectors(model)
    short, mid, long = prompt_ids(model)
    direction = vectors(model, seed=2)[2]
    caps: RowPlan = (Cap(2, direction, 5.0, "all"), Cap(1, -direction, 5.0, "response"))
    plans: list[RowPlan] = [
        (),
        add_plan(rows, [1], 3.0, "response"),
        add_plan(rows, [1, 2], 2.0, "all"),
        caps,
    ]
    return [long, short, mid, short], plans


def assert_same_generation(a: GenerationResult, b: GenerationResult, exact: bool) -> None:
    assert a.tokens == b.tokens
    assert a.finished == b.finished and a.steps == b.steps
    for name in CAPTURE_FIELDS:
        ta, tb = getattr(a.capture, name), getattr(b.capture, name)
        if exact:
            assert torch.equal(ta, tb), name
        else:
            close(ta, tb)


# ---------------------------------------------------------------------------------------------
# Chunked equals one pass


@pytest.mark.parametrize("chunk", CHUNKS)
def test_sliced_prefill_matches_one_pass(decoded_model: LoadedModel, chunk: int) -> None:
    """Every decoder, left-padded: residuals at every layer and all logits agree."""
    model = decoded_model
    prompts = prompt_ids(model)
    whole, logits, mask = record_prefill(model, prompts)
    sliced, sliced_logits, _ = record_prefill(model, prompts, chunk=chunk)
    real = mask.bool()
    assert set(sliced) == set(whole)
    for layer in whole:
        if chunk >= mask.shape[1]:
            assert torch.equal(sliced[layer], whole[layer])
        else:
            close(sliced[layer][real], whole[layer][real])
    close(sliced_logits[real], logits[real])


@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_generation_matches_one_pass(decoded_model: LoadedModel, chunk: int) -> None:
    """Same greedy tokens and captures with steering of every kind: 'response' edits hit only
    the last prompt token, 'all' edits and caps every position, chunk or not."""
    model = decoded_model
    prompts, plans = steered_batch(model)
    one = generate(model, prompts, plans, GREEDY, prefill_chunk=10_000)
    chunked = generate(model, prompts, plans, GREEDY, prefill_chunk=chunk)
    assert_same_generation(chunked, one, exact=chunk >= max(map(len, prompts)))
    # The steering really acted (else agreeing would prove little).
    plain = generate(model, prompts, [()] * len(prompts), GREEDY, prefill_chunk=chunk)
    for row in (1, 2, 3):
        assert not torch.allclose(
            chunked.capture.prompt_last[row], plain.capture.prompt_last[row], atol=1e-3
        )


@pytest.mark.parametrize("kind", ["fast", "hf"])
def test_response_edits_touch_only_the_last_prompt_token_when_chunked(
    llama: LoadedModel, kind: DecoderKind
) -> None:
    """The prompt mean moves by delta / n_tokens at the steered layer: exactly one prompt
    position got the edit, whichever chunk it fell in."""
    model = with_decoder(llama, kind)
    rows = vectors(model)
    delta = 3.0 * rows[1]
    prompts = prompt_ids(model)
    base = generate(model, prompts, [()] * 3, GREEDY, prefill_chunk=3)
    plan = add_plan(rows, [1], 3.0, "response")
    steered = generate(model, prompts, [plan] * 3, GREEDY, prefill_chunk=3)
    n_tokens = torch.tensor([float(len(p)) for p in prompts])[:, None]
    b, s = base.capture, steered.capture
    assert torch.equal(s.prompt_mean[:, :1], b.prompt_mean[:, :1])
    close(s.prompt_last[:, 1], b.prompt_last[:, 1] + delta, rel=1e-5)
    close(s.prompt_mean[:, 1], b.prompt_mean[:, 1] + delta / n_tokens, rel=1e-5)


@pytest.mark.parametrize("chunk", [1, 3])
def test_zero_strength_stays_bit_identical_when_chunked(
    decoded_model: LoadedModel, chunk: int
) -> None:
    model = decoded_model
    rows = vectors(model)
    p = prompt_ids(model)[2]
    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0, seed=5, stop_at_eos=False)
    zero = add_plan(rows, [1], 0.0) + add_plan(rows, range(N_LAYERS), 0.0, "response")
    res = generate(model, [p, p], [(), zero], cfg, prefill_chunk=chunk)
    assert res.tokens[0] == res.tokens[1]
    for name in CAPTURE_FIELDS:
        t = getattr(res.capture, name)
        assert torch.equal(t[0], t[1]), name


def test_the_default_chunk_leaves_short_prompts_one_pass(llama: LoadedModel) -> None:
    model = with_decoder(llama, "fast")
    prompts = prompt_ids(model)
    assert max(map(len, prompts)) < PREFILL_CHUNK
    default = generate(model, prompts, [()] * 3, GREEDY)
    one = generate(model, prompts, [()] * 3, GREEDY, prefill_chunk=max(map(len, prompts)))
    assert_same_generation(default, one, exact=True)


# ---------------------------------------------------------------------------------------------
# Sessions: slices in order, bounded masks


@pytest.mark.parametrize("kind", ["fast", "hf"])
def test_slices_must_come_in_order(llama: LoadedModel, kind: DecoderKind) -> None:
    model = with_decoder(llama, kind)
    ids, mask = left_pad(prompt_ids(model)[:1], model.pad_token_id)
    session = decoder_for(model).session(ids, mask, 2)
    with torch.no_grad():
        with pytest.raises(ValueError, match="does not continue"):
            session.prefill(start=2, end=4)
        session.prefill(start=0, end=3)
        with pytest.raises(RuntimeError, match="before the whole prompt"):
            session.step(torch.tensor([5]))
        with pytest.raises(ValueError, match="does not continue"):
            session.prefill(start=0, end=3)
        session.prefill(start=3)
        with pytest.raises(ValueError, match="does not continue"):
            session.prefill(start=ids.shape[1])
        session.step(torch.tensor([5]))
    session.close()


def test_fast_prefill_masks_are_chunk_by_keys(
    llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memory of the prompt pass: each attention mask is [batch, 1, chunk, keys so far],
    never [batch, 1, prompt, prompt]."""
    model = with_decoder(llama, "fast")
    prompts = prompt_ids(model)
    ids, _ = left_pad(prompts, model.pad_token_id)
    batch, width = ids.shape
    shapes: list[tuple[int, ...]] = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q: torch.Tensor, *args: Any, attn_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        shapes.append(tuple(attn_mask.shape))
        return real_sdpa(q, *args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    record_prefill(model, prompts, chunk=4)
    n_chunks = math.ceil(width / 4)
    expected = [
        (batch, 1, min(4, width - a), min(a + 4, width)) for a in range(0, width, 4)
    ]  # a last chunk of one position goes through the row-invariant decode attention
    expected = [s for s in expected if s[2] > 1]
    assert len(expected) >= n_chunks - 1 >= 2
    assert shapes == [s for s in expected for _ in range(N_LAYERS)]


# ---------------------------------------------------------------------------------------------
# Stop and other requests between chunks


def count_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts = {"prefill": 0, "step": 0}
    for cls in (_FastSession, _HFSession):
        for name in counts:
            original = getattr(cls, name)

            def counted(self: Any, *a: Any, _name: str = name, _orig: Any = original, **k: Any):
                counts[_name] += 1
                return _orig(self, *a, **k)

            monkeypatch.setattr(cls, name, counted)
    return counts


@pytest.mark.parametrize("kind", ["fast", "hf"])
def test_stop_ends_a_long_prompt_pass_between_chunks(
    llama: LoadedModel, kind: DecoderKind, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = with_decoder(llama, kind)
    prompts = prompt_ids(model)
    width = max(map(len, prompts))
    counts = count_calls(monkeypatch)
    updates = list(generate_stream(model, prompts, [()] * 3, GREEDY, prefill_chunk=3))
    assert counts == {"prefill": math.ceil(width / 3), "step": GREEDY.max_new_tokens}

    counts.update(prefill=0, step=0)
    asked: list[int] = []

    def stop_after_first_chunk() -> bool:
        asked.append(counts["prefill"])
        return True

    updates = list(
        generate_stream(
            model,
            prompts,
            [()] * 3,
            GREEDY,
            should_stop=stop_after_first_chunk,
            prefill_chunk=3,
        )
    )
    assert asked == [1]
    assert counts == {"prefill": 1, "step": 0}
    assert len(updates) == 1 and updates[0].done
    res = updates[0].result
    assert res is not None and res.steps == 0 and res.tokens == [[], [], []]
    assert res.finished == [False] * 3
    assert torch.isfinite(res.capture.prompt_mean).all()


class RecordingLock(FairLock):
    """The model's lock, logging which thread took it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []
        self.other_released = threading.Event()

    def __enter__(self) -> None:
        super().__enter__()
        self.log.append(threading.current_thread().name)

    def __exit__(self, *exc: object) -> None:
        if threading.current_thread().name == "other":
            self.other_released.set()
        super().__exit__(*exc)


@pytest.mark.parametrize("kind", ["fast", "hf"])
def test_another_request_gets_the_model_between_prompt_chunks(
    llama: LoadedModel, kind: DecoderKind
) -> None:
    lock = RecordingLock()
    model = dataclasses.replace(llama, compute_lock=lock)
    decoder_for(model, prefer_fast=kind == "fast")
    prompts = prompt_ids(model)
    width = max(map(len, prompts))
    other_result: list[GenerationResult] = []
    other = threading.Thread(
        target=lambda: other_result.append(generate(model, prompts[:1], [()], GREEDY)),
        name="other",
    )
    got_in: list[bool] = []

    def between_chunks() -> bool:
        if not got_in:  # the first stop check: one prompt chunk has run
            other.start()
            got_in.append(lock.other_released.wait(timeout=30))
        return False

    mine = generate_stream(
        model, prompts, [()] * 3, GREEDY, should_stop=between_chunks, prefill_chunk=3
    )
    result = list(mine)[-1].result
    other.join(timeout=60)
    assert got_in == [True], "the other request waited for the whole prompt pass"
    me = threading.current_thread().name
    assert lock.log[:2] == [me, "other"]
    assert lock.log.count(me) == math.ceil(width / 3) + GREEDY.max_new_tokens
    assert result is not None and other_result
    # Taking turns changes nothing in either result.
    assert result.tokens == generate(model, prompts, [()] * 3, GREEDY).tokens
    assert other_result[0].tokens == generate(model, prompts[:1], [()], GREEDY).tokens


# ---------------------------------------------------------------------------------------------
# Token caps


def test_check_prompt_tokens_messages() -> None:
    check_prompt_tokens(2048, 256, 8192, 2048)
    check_prompt_tokens(10**6, 10**6, None, None)  # nothing known, nothing refused
    with pytest.raises(
        InputError,
        match=r"^The prompt is 3,120 tokens; the limit is 2,048 "
        r"\(PERSONA_EXPLORER_MAX_PROMPT_TOKENS\)\. Shorten it",
    ):
        check_prompt_tokens(3120, 64, 8192, 2048)
    with pytest.raises(
        InputError,
        match=r"^The system prompt is 8,000 tokens and 256 new tokens are asked for; the model "
        r"reads at most 8,192 tokens \(its context length\): shorten it to at most 7,936",
    ):
        check_prompt_tokens(8000, 256, 8192, None, what="system prompt")
    with pytest.raises(InputError, match="ask for fewer new tokens"):
        check_prompt_tokens(10, 300, 256, None)
    check_prompt_tokens(7936, 256, 8192, None)  # the last generated token fits exactly


def test_generation_refuses_a_prompt_over_the_policy_limit(llama: LoadedModel) -> None:
    p = prompt_ids(llama)[2]
    n = len(p)
    over = SamplingConfig(max_new_tokens=4, max_prompt_tokens=n - 1)
    with pytest.raises(
        InputError,
        match=rf"The prompt is {n} tokens; the limit is {n - 1} "
        r"\(PERSONA_EXPLORER_MAX_PROMPT_TOKENS\)",
    ):
        generate(llama, [prompt_ids(llama)[0], p], [(), ()], over)
    at_limit = dataclasses.replace(over, max_prompt_tokens=n)
    assert len(generate(llama, [p], [()], at_limit).tokens[0]) <= 4
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        SamplingConfig(max_prompt_tokens=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generation_refuses_a_prompt_over_the_model_context(arch: str) -> None:
    """GPT-2's learned positions end at its context: a prompt that just fits really runs."""
    model = tiny(arch)  # type: ignore[arg-type]
    ctx = model.context_length
    assert ctx == 256
    cfg = SamplingConfig(max_new_tokens=4, stop_at_eos=False)
    filler = [i for i in range(5, 300) if i != EOS_ID]
    fits = (filler * 2)[: ctx - 4]
    with pytest.raises(InputError, match=r"is 253 tokens and 4 new tokens .* at most 256 tokens"):
        generate(model, [[*fits, 7]], [()], cfg)
    res = generate(model, [fits], [()], cfg)
    assert len(res.tokens[0]) == 4


def test_extraction_refuses_a_long_prompt_before_any_rollout(
    llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("generation started before every prompt was checked")

    monkeypatch.setattr(extract, "generate_stream", never)
    persona = custom_persona(
        "wordy",
        pos_prompts=["You are a pirate.", "Answer like an old sea captain. " * 30],
        neg_prompts=["You are a helpful assistant.", "Answer plainly."],
        questions=["What is the capital of France?", "How do I bake bread?"],
    )
    cfg = ExtractionConfig(n_questions=2, max_new_tokens=4, max_prompt_tokens=100)
    assert cfg.sampling(0).max_prompt_tokens == 100
    with pytest.raises(
        InputError,
        match=r"The prompt of question 1 with the pos system prompt of pair 2 is [\d,]+ tokens; "
        r"the limit is 100 \(PERSONA_EXPLORER_MAX_PROMPT_TOKENS\)",
    ):
        extract_persona(llama, persona, cfg)
    # No policy limit: the model's context (256 tokens) still refuses it.
    huge = custom_persona(
        "curious",
        pos_prompts=["You are a pirate."],
        neg_prompts=["You are a helpful assistant."],
        questions=["Why? " * 300, "How?"],
    )
    with pytest.raises(
        InputError,
        match=r"question 1 with the pos system prompt of pair 1 is [\d,]+ tokens and 4 new",
    ):
        extract_persona(llama, huge, ExtractionConfig(n_questions=2, max_new_tokens=4))


def test_context_length_comes_from_the_config(any_model: LoadedModel) -> None:
    assert any_model.context_length == 256
